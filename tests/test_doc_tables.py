"""``ra-joints benchmark --task docs``: registry, splice, provenance and the batch guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotation_tools import doc_tables
from annotation_tools.bundles import bundle_for
from annotation_tools.doc_tables import (
    DOC_TABLES,
    Cohort,
    DocTable,
    MarkerError,
    check_registry,
    ensure_cohort,
    markers,
    run_doc_tables,
    splice,
)

TINY = Cohort(seed=11, patients=3, style="schematic", height=512, us_pairs=2)  # = small_cohort


def _doc(root: Path, name: str, *marker_names: str) -> Path:
    """A document with prose around one marked block per name."""
    parts = ["# Title", "", "Prose before, kept.", ""]
    for marker in marker_names:
        opening, closing = markers(marker)
        parts += [opening, f"old table of {marker}", closing, "", f"Prose after {marker}.", ""]
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def _fake_cohort(folder: Path, cohort: Cohort) -> Path:
    """A folder whose cohort.json records exactly the entry's settings (nothing generated)."""
    folder.mkdir(parents=True)
    (folder / "cohort.json").write_text(json.dumps(cohort.settings()))
    return folder


def test_splice_replaces_only_the_marked_block_and_is_idempotent(tmp_path):
    text = _doc(tmp_path, "d.md", "first", "second").read_text()
    once = splice(text, "first", "| a | b |\n| --- | --- |\n| 1 | 2 |\n\n_line_")
    assert "old table of first" not in once and "| 1 | 2 |" in once
    assert "old table of second" in once  # the other block is untouched
    opening, closing = markers("first")
    before, after = text.split(opening)[0], text.split(closing)[1]
    assert once.startswith(before + opening) and once.endswith(closing + after)
    assert splice(once, "first", "| a | b |\n| --- | --- |\n| 1 | 2 |\n\n_line_") == once
    with pytest.raises(MarkerError, match="no <!-- benchmark:third -->"):
        splice(text, "third", "x", "d.md")


def test_headings_of_a_benchmark_become_bold_lines():
    block = doc_tables.as_doc_block("## Grade sets (split)\n\n| a |\n### Sub ###\n")
    assert block.splitlines() == ["**Grade sets (split)**", "", "| a |", "**Sub**"]


def test_missing_marker_is_a_clear_error_before_anything_runs(tmp_path, monkeypatch):
    _doc(tmp_path, "docs/a.md", "a")
    _doc(tmp_path, "docs/b.md", "something_else")
    entries = [
        DocTable("a", "locator", TINY, ("locator",), (("docs/a.md", "a"),)),
        DocTable("b", "locator", TINY, ("locator",), (("docs/b.md", "b"),)),
    ]
    ran = []
    monkeypatch.setattr(doc_tables, "run_benchmark", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(doc_tables, "ensure_cohort", lambda *a, **k: ran.append(a))
    with pytest.raises(MarkerError) as info:
        run_doc_tables(entries=entries, docs_root=tmp_path, work=tmp_path / "w")
    message = str(info.value)
    assert "docs/b.md" in message and "<!-- benchmark:b -->" in message and "entry b" in message
    assert "docs/a.md" not in message
    assert ran == []  # not even entry a ran


def test_one_failing_entry_is_reported_and_the_others_are_written(tmp_path, monkeypatch):
    docs = [_doc(tmp_path, f"docs/{n}.md", n) for n in ("ok1", "bad", "ok2")]
    originals = [d.read_text() for d in docs]
    entries = [
        DocTable(n, "locator", TINY, ("locator",), ((f"docs/{n}.md", n),), {"n_resamples": 7})
        for n in ("ok1", "bad", "ok2")
    ]
    folder = _fake_cohort(tmp_path / "cohorts" / "tiny", TINY)
    calls = []

    def fake_run(task, out, **kwargs):
        calls.append((Path(out).stem, kwargs))
        if Path(out).stem == "bad":
            raise RuntimeError("the network fell over")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("{}")
        Path(out).with_suffix(".md").write_text(f"### {Path(out).stem}\n\n| x |\n| --- |\n| 1 |\n")
        return {}

    monkeypatch.setattr(doc_tables, "run_benchmark", fake_run)
    results = tmp_path / "results"
    summary = run_doc_tables(
        entries=entries,
        docs_root=tmp_path,
        results=results,
        cohorts={TINY.name: folder},
        date="2026-12-02",
    )
    assert [name for name, _ in calls] == ["ok1", "bad", "ok2"]  # the failure did not stop ok2
    assert calls[0][1]["heldout"] == folder and calls[0][1]["n_resamples"] == 7
    assert summary["failed"] == ["bad"]
    assert docs[1].read_text() == originals[1]  # a failed entry leaves its table as it was
    for doc, name in ((docs[0], "ok1"), (docs[2], "ok2")):
        text = doc.read_text()
        assert f"**{name}**" in text and f"old table of {name}" not in text
        assert "Prose before, kept." in text and f"Prose after {name}." in text
    timing = json.loads((results / "timing.json").read_text())
    status = {row["name"]: row["status"] for row in timing["entries"]}
    assert status == {"ok1": "ok", "bad": "failed", "ok2": "ok"}
    bad = next(row for row in timing["entries"] if row["name"] == "bad")
    assert "the network fell over" in bad["reason"]


def test_ensure_cohort_reuses_only_the_same_cohort(tmp_path):
    folder = _fake_cohort(tmp_path / "c", TINY)
    assert ensure_cohort(TINY, folder) == 0.0  # reused, nothing generated
    other = Cohort(seed=12, patients=3, style="schematic", height=512, us_pairs=2)
    with pytest.raises(ValueError, match=r"seed 11 \(needed 12\)"):
        ensure_cohort(other, folder)


def test_ensure_cohort_generates_a_missing_cohort_once(tmp_path):
    cohort = Cohort(seed=13, patients=1, style="schematic", height=256, us_pairs=0)
    folder = tmp_path / "runs" / cohort.name
    assert ensure_cohort(cohort, folder) > 0
    recorded = json.loads((folder / "cohort.json").read_text())
    assert {k: recorded[k] for k in cohort.settings()} == cohort.settings()
    assert ensure_cohort(cohort, folder) == 0.0


def test_shipped_registry_is_consistent_and_every_marker_is_in_its_doc(capsys, tmp_path):
    from annotation_tools.cli import main

    check_registry(DOC_TABLES)
    names = {e.name for e in DOC_TABLES}
    assert {"locator_5002", "locator_5001a", "scorer_5002", "coverage_5002"} <= names
    assert {"rating_5100", "us_coverage_5100"} <= names
    # an empty work folder (a developer's runs/docs would be reused, not generated)
    argv = ["benchmark", "--task", "docs", "--dry-run", "--work", str(tmp_path / "docs")]
    assert main(argv) == 0  # checks every marker
    out = capsys.readouterr().out
    assert all(name in out for name in names)
    assert "--seed 5002" in out and "--style anatomical" in out and "--seed 5100" in out


def test_docs_task_refuses_single_task_options_and_unknown_names(capsys):
    from annotation_tools.cli import main

    assert main(["benchmark", "--task", "docs", "--heldout", "x", "--dry-run"]) == 2
    assert "drop --heldout" in capsys.readouterr().err
    assert main(["benchmark", "--task", "docs", "--only", "nope", "--dry-run"]) == 2
    assert "no doc table named nope" in capsys.readouterr().err
    assert main(["benchmark", "--task", "locator", "--dry-run"]) == 2
    assert "belong to --task docs" in capsys.readouterr().err


def test_a_real_entry_end_to_end_on_a_tiny_cohort(small_cohort, tmp_path):
    """The shipped locator on the 3-patient fixture: results files, spliced table, provenance."""
    doc = _doc(tmp_path, "docs/bench.md", "tiny_locator")
    entry = DocTable(
        "tiny_locator", "locator", TINY, ("locator",), (("docs/bench.md", "tiny_locator"),)
    )
    results = tmp_path / "results"
    summary = run_doc_tables(
        entries=[entry],
        docs_root=tmp_path,
        results=results,
        cohorts={TINY.name: small_cohort},
        device="cpu",
        date="2026-12-02",
    )
    assert summary["failed"] == []
    result = json.loads((results / "tiny_locator.json").read_text())
    assert result["heldout"]["seed"] == 11 and result["heldout"]["radiographs"] == 12
    text = doc.read_text()
    assert "| wrist |" in text and "old table of tiny_locator" not in text
    block = text.split(markers("tiny_locator")[0])[1].split(markers("tiny_locator")[1])[0]
    provenance = block.strip().splitlines()[-1]
    digest = bundle_for("locator").weights_sha256()
    assert digest == result["model"]["weights_sha256"]  # the hash of the weights that ran
    assert "`ra-joints benchmark --task docs --only tiny_locator`" in provenance
    assert "seed 11" in provenance and f"ra_joint_locator {digest[:12]}" in provenance
    assert "2026-12-02" in provenance and f"--heldout {small_cohort}" in provenance
    assert summary["entries"][0]["benchmark_seconds"] > 0
    assert json.loads((results / "timing.json").read_text())["entries"][0]["status"] == "ok"
    # a second run splices the same place again: one block, prose untouched
    run_doc_tables(
        entries=[entry],
        docs_root=tmp_path,
        results=results,
        cohorts={TINY.name: small_cohort},
        device="cpu",
        date="2026-12-02",
    )
    again = doc.read_text()
    assert again.count(markers("tiny_locator")[0]) == 1 and "Prose before, kept." in again


def test_an_ensembles_weights_hash_is_the_one_its_predictions_record():
    from annotation_tools.us_rating import ensemble_hash

    info = bundle_for("ultrasound")
    assert info.ensemble
    assert info.weights_sha256() == ensemble_hash(info.root / "models")
