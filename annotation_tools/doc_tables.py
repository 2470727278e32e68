"""``ra-joints benchmark --task docs``: one command regenerates the benchmark tables of the docs.

Why: tables pasted by hand drift from the code and forget how they were made. Every table the
command owns is one row of :data:`DOC_TABLES`: the benchmark task and its options, the phantom
cohort it is measured on, the bundles whose weights make it, and where it goes (a document and
a marker name). For each row the command makes the cohort (``ra-joints phantoms``, only when
the folder is missing), runs the task in this process (:func:`benchmark.run_benchmark`, what
``ra-joints benchmark --task <task>`` runs), writes ``results/docs/<name>.json`` and ``.md``,
and replaces the text between ``<!-- benchmark:<name> -->`` and ``<!-- /benchmark:<name> -->``
in the document with that markdown and one provenance line (the command, the seeds, the
weights' short sha256, the date, the seconds). Text outside the markers is never touched.

Every marker is checked before anything runs; one failing entry does not stop the others
(:func:`isolation.isolated`), and the summary says which failed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .benchmark import run_benchmark
from .bundles import bundle_for
from .isolation import isolated
from .seeds import RADIOGRAPH, ULTRASOUND, purpose_of

__all__ = [
    "DOC_TABLES",
    "Cohort",
    "DocTable",
    "MarkerError",
    "as_doc_block",
    "check_markers",
    "check_registry",
    "ensure_cohort",
    "markers",
    "provenance_line",
    "run_doc_tables",
    "select",
    "splice",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path("runs") / "docs"
DEFAULT_RESULTS = Path("results") / "docs"
COMMAND = "ra-joints benchmark --task docs"
SHORT_HASH = 12  # hex digits of a sha256 shown in a provenance line
# keyword argument of a benchmark function -> the ``ra-joints benchmark`` flag that sets it
OPTION_FLAGS = {"n_resamples": "--resamples", "heatmap_pairs": "--heatmap-pairs"}


@dataclass(frozen=True)
class Cohort:
    """A phantom cohort as ``ra-joints phantoms`` makes it (the same seed is the same data)."""

    seed: int
    patients: int
    style: str
    height: int = 1200  # radiograph height, the phantoms' default
    us_pairs: int = 0  # ultrasound pairs per patient
    modality: str = RADIOGRAPH  # what the benchmarks measure on it (for the seed's purpose)

    @property
    def name(self) -> str:
        """Its folder under the work folder: ``<seed>_<style>``."""
        return f"{self.seed}_{self.style}"

    def settings(self) -> dict[str, Any]:
        """What the cohort's ``cohort.json`` must record for a folder to be reused."""
        return {
            "seed": self.seed,
            "style": self.style,
            "patients": self.patients,
            "height": self.height,
            "ultrasound_pairs_per_patient": self.us_pairs,
        }

    def phantoms_command(self, folder: Path) -> str:
        return (
            f"ra-joints phantoms --out {folder} --patients {self.patients} --seed {self.seed} "
            f"--height {self.height} --us-pairs {self.us_pairs} --style {self.style}"
        )


@dataclass(frozen=True)
class DocTable:
    """One table of the docs that ``ra-joints benchmark --task docs`` owns."""

    name: str  # also the results file's stem and the default marker
    task: str  # an ``ra-joints benchmark --task``
    cohort: Cohort
    bundles: tuple[str, ...]  # bundle tasks whose weights make the figures (hashes shown)
    targets: tuple[tuple[str, str], ...]  # (document relative to the repository, marker)
    options: Mapping[str, Any] = field(default_factory=dict)  # the task function's keywords


BENCHMARKS_MD = "docs/benchmarks.md"
UNCERTAINTY_MD = "docs/uncertainty.md"
LOCATOR_README = "monai_bundles/ra_joint_locator/docs/README.md"

# The cohorts the reported figures use (docs/benchmarks.md, "Seeds by purpose"): test seed 5002
# schematic, 20 patients; 5001 anatomical, 10 patients (5000 was retired for the locator);
# ultrasound test seed 5100, 40 patients x 4 pairs at 256 px.
TEST_5002 = Cohort(seed=5002, patients=20, style="schematic")
TEST_5001A = Cohort(seed=5001, patients=10, style="anatomical")
TEST_5100 = Cohort(
    seed=5100, patients=40, style="schematic", height=256, us_pairs=4, modality=ULTRASOUND
)
RESAMPLES = {"n_resamples": 1000}

DOC_TABLES: tuple[DocTable, ...] = (
    DocTable(
        "locator_5002",
        "locator",
        TEST_5002,
        ("locator",),
        ((BENCHMARKS_MD, "locator_5002"), (LOCATOR_README, "locator_5002")),
    ),
    DocTable(
        "locator_5001a",
        "locator",
        TEST_5001A,
        ("locator",),
        ((BENCHMARKS_MD, "locator_5001a"), (LOCATOR_README, "locator_5001a")),
    ),
    DocTable(  # patch stage, symmetry, end to end and the human-upper-limit rows
        "scorer_5002",
        "scorer",
        TEST_5002,
        ("scorer", "locator"),
        ((BENCHMARKS_MD, "scorer_5002"),),
        RESAMPLES,
    ),
    DocTable(  # the scorer's grade sets end to end, and the locator's radii on the same films
        "coverage_5002",
        "coverage",
        TEST_5002,
        ("scorer", "locator"),
        ((UNCERTAINTY_MD, "coverage_5002"),),
        RESAMPLES,
    ),
    DocTable(  # the same on anatomical films: the schematic-trained scorer does not transfer
        "scorer_5001a",
        "scorer",
        TEST_5001A,
        ("scorer", "locator"),
        ((BENCHMARKS_MD, "scorer_5001a"),),
        RESAMPLES,
    ),
    DocTable(
        "coverage_5001a",
        "coverage",
        TEST_5001A,
        ("scorer", "locator"),
        ((UNCERTAINTY_MD, "coverage_5001a"),),
        RESAMPLES,
    ),
    DocTable(  # two-stage vs the multi-task U-Net (one member and the 2-member ensemble)
        "pipelines_5002",
        "multitask",
        TEST_5002,
        ("locator", "scorer", "multitask"),
        ((BENCHMARKS_MD, "pipelines_5002"),),
    ),
    DocTable(
        "rating_5100",
        "ultrasound",
        TEST_5100,
        ("ultrasound",),
        ((BENCHMARKS_MD, "rating_5100"),),
        {**RESAMPLES, "heatmap_pairs": 3},
    ),
    DocTable(
        "us_coverage_5100",
        "us-coverage",
        TEST_5100,
        ("ultrasound",),
        ((UNCERTAINTY_MD, "us_coverage_5100"),),
        RESAMPLES,
    ),
)


class MarkerError(ValueError):
    """A document lacks the marker pair of a table, or holds it more than once or reversed."""


def check_registry(entries: Sequence[DocTable]) -> None:
    """Names unique, each (document, marker) written by one entry, one cohort per folder name."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"doc tables: duplicate names in {names}")
    seen: dict[tuple[str, str], str] = {}
    cohorts: dict[str, Cohort] = {}
    for entry in entries:
        for target in entry.targets:
            if target in seen:
                raise ValueError(
                    f"doc tables: {entry.name} and {seen[target]} both write marker "
                    f"{target[1]!r} of {target[0]}"
                )
            seen[target] = entry.name
        known = cohorts.setdefault(entry.cohort.name, entry.cohort)
        if known != entry.cohort:
            raise ValueError(
                f"doc tables: two cohorts share the folder {entry.cohort.name!r} with different "
                f"settings ({known} vs {entry.cohort}); give them different seeds or styles"
            )
        unknown = set(entry.options) - set(OPTION_FLAGS)
        if unknown:
            raise ValueError(
                f"doc tables: {entry.name} has options {sorted(unknown)} with no "
                f"ra-joints benchmark flag (known: {sorted(OPTION_FLAGS)})"
            )


def select(names: Sequence[str] | None, entries: Sequence[DocTable] = DOC_TABLES) -> list[DocTable]:
    """The entries named (all when ``names`` is empty), in registry order."""
    if not names:
        return list(entries)
    known = {e.name for e in entries}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--only: no doc table named {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [e for e in entries if e.name in names]


def markers(marker: str) -> tuple[str, str]:
    """The opening and closing comment of a marked block."""
    return f"<!-- benchmark:{marker} -->", f"<!-- /benchmark:{marker} -->"


def _marker_problem(text: str, marker: str) -> str | None:
    opening, closing = markers(marker)
    n_open, n_close = text.count(opening), text.count(closing)
    if n_open == 0 or n_close == 0:
        return f"has no {opening} ... {closing} pair"
    if n_open > 1 or n_close > 1:
        return f"holds {opening} {n_open} times and {closing} {n_close} times (one pair expected)"
    if text.index(closing) < text.index(opening):
        return f"has {closing} before {opening}"
    return None


def check_markers(entries: Sequence[DocTable], docs_root: Path = REPO_ROOT) -> None:
    """Raise :class:`MarkerError` naming every document and marker that is missing or broken,
    so nothing runs for an hour to find nowhere to write."""
    problems = []
    for entry in entries:
        for doc, marker in entry.targets:
            path = Path(docs_root) / doc
            if not path.is_file():
                problems.append(f"{doc}: no such document (entry {entry.name})")
                continue
            problem = _marker_problem(path.read_text(), marker)
            if problem:
                problems.append(f"{doc} {problem} (entry {entry.name})")
    if problems:
        raise MarkerError(
            "cannot place the tables: "
            + "; ".join(problems)
            + ". Put the two comment lines around the table each entry replaces"
        )


def splice(text: str, marker: str, block: str, doc: str = "document") -> str:
    """``text`` with everything between the marker pair replaced by ``block``; nothing else
    changes, and splicing the same block again gives the same text."""
    problem = _marker_problem(text, marker)
    if problem:
        raise MarkerError(f"{doc} {problem}")
    opening, closing = markers(marker)
    start = text.index(opening) + len(opening)
    end = text.index(closing)
    return f"{text[:start]}\n{block.strip(chr(10))}\n{text[end:]}"


_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def as_doc_block(markdown: str) -> str:
    """A benchmark's markdown ready to sit inside a document: its headings become bold lines,
    so the document's own outline is unchanged."""
    lines = []
    for line in markdown.strip("\n").splitlines():
        match = _HEADING.match(line)
        lines.append(f"**{match.group(1)}**" if match else line)
    return "\n".join(lines)


def _seed_label(cohort: Cohort) -> str:
    purpose = purpose_of(cohort.seed, cohort.modality)
    return f"{purpose} seed {cohort.seed}" if purpose else f"unregistered seed {cohort.seed}"


def task_command(entry: DocTable, folder: Path, json_path: Path) -> str:
    """The single-task ``ra-joints benchmark`` that makes the same table from the cohort."""
    flags = "".join(f" {OPTION_FLAGS[k]} {v}" for k, v in entry.options.items())
    return f"ra-joints benchmark --task {entry.task} --heldout {folder} --out {json_path}{flags}"


def docs_command(entry: DocTable, work: Path = DEFAULT_WORK) -> str:
    extra = "" if Path(work) == DEFAULT_WORK else f" --work {work}"
    return f"{COMMAND}{extra} --only {entry.name}"


def provenance_line(
    entry: DocTable,
    *,
    folder: Path,
    json_path: Path,
    hashes: Mapping[str, str],
    seconds: float,
    date: str,
    work: Path = DEFAULT_WORK,
) -> str:
    """One italic line under a table: how to make it again, from which seeds and weights."""
    cohort = entry.cohort
    weights = ", ".join(f"{name} {digest[:SHORT_HASH]}" for name, digest in hashes.items())
    return (
        f"_Generated by `{docs_command(entry, work)}` on {date} in {seconds:.0f} s: "
        f"{_seed_label(cohort)} ({cohort.style}, {cohort.patients} patients; "
        f"`{cohort.phantoms_command(folder)}`), the same as "
        f"`{task_command(entry, folder, json_path)}`; weights sha256 {weights}._"
    )


def ensure_cohort(cohort: Cohort, folder: Path) -> float:
    """Generate the cohort in ``folder`` unless it is there; seconds spent generating (0 when
    reused). A folder holding another cohort is refused: its figures would be another table's."""
    from .phantoms import generate_cohort

    folder = Path(folder)
    info_file = folder / "cohort.json"
    if info_file.is_file():
        recorded = json.loads(info_file.read_text())
        wrong = {
            key: (recorded.get(key), wanted)
            for key, wanted in cohort.settings().items()
            if recorded.get(key) != wanted
        }
        if wrong:
            said = ", ".join(f"{k} {got!r} (needed {want!r})" for k, (got, want) in wrong.items())
            raise ValueError(
                f"{folder} holds another cohort than the table needs: {said}; remove it or "
                f"give the right folder with --cohort {cohort.name}=FOLDER"
            )
        return 0.0
    started = time.perf_counter()
    generate_cohort(
        folder,
        cohort.patients,
        cohort.seed,
        height=cohort.height,
        us_pairs=cohort.us_pairs,
        progress=False,
        style=cohort.style,
    )
    return time.perf_counter() - started


def _weights_hashes(entry: DocTable) -> dict[str, str]:
    infos = [bundle_for(task) for task in entry.bundles]
    return {info.name: info.weights_sha256() for info in infos}


def _plan(
    entries: Sequence[DocTable], work: Path, results: Path, cohorts: Mapping[str, Path]
) -> list[dict[str, Any]]:
    plan = []
    made_by: dict[Path, str] = {}  # a cohort folder the run generates for an earlier entry
    for entry in entries:
        folder = Path(cohorts.get(entry.cohort.name, Path(work) / entry.cohort.name))
        json_path = Path(results) / f"{entry.name}.json"
        plan.append(
            {
                "name": entry.name,
                "cohort": str(folder),
                "cohort_exists": (folder / "cohort.json").is_file(),
                "cohort_made_by": made_by.setdefault(folder, entry.name),
                "phantoms": entry.cohort.phantoms_command(folder),
                "benchmark": task_command(entry, folder, json_path),
                "results": str(json_path),
                "targets": [f"{doc} <!-- benchmark:{m} -->" for doc, m in entry.targets],
            }
        )
    return plan


def _print_plan(plan: Sequence[Mapping[str, Any]]) -> None:
    for step in plan:
        if step["cohort_exists"]:
            cohort = "reuse"
        elif step["cohort_made_by"] != step["name"]:
            cohort = f"generated for {step['cohort_made_by']}"
        else:
            cohort = "generate: " + step["phantoms"]
        print(
            f"{step['name']}\n  cohort {step['cohort']} ({cohort})\n  run    {step['benchmark']}"
            f"\n  write  {step['results']} (+ .md) into " + ", ".join(step["targets"])
        )


def _print_timing(rows: Sequence[Mapping[str, Any]], total: float) -> None:
    print(f"\n{'entry':<18} {'cohort s':>9} {'benchmark s':>12} {'total s':>8}  status")
    for row in rows:
        status = "ok" if row["status"] == "ok" else f"FAILED: {row['reason']}"
        print(
            f"{row['name']:<18} {row['cohort_seconds']:>9.1f} {row['benchmark_seconds']:>12.1f} "
            f"{row['seconds']:>8.1f}  {status}"
        )
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    state = f"{len(rows) - len(failed)} ok" + (f", failed: {', '.join(failed)}" if failed else "")
    print(f"{'total':<18} {'':>9} {'':>12} {total:>8.1f}  {state}")


def run_doc_tables(
    names: Sequence[str] | None = None,
    *,
    work: Path = DEFAULT_WORK,
    results: Path = DEFAULT_RESULTS,
    cohorts: Mapping[str, Path] | None = None,
    dry_run: bool = False,
    device: str | None = None,
    docs_root: Path = REPO_ROOT,
    entries: Sequence[DocTable] = DOC_TABLES,
    date: str | None = None,
) -> dict[str, Any]:
    """Regenerate the selected tables (all by default) and splice them into their documents.

    ``cohorts`` maps a cohort name (``5002_schematic``) to an existing folder to reuse instead
    of ``work/<name>``. Returns the timing summary (also ``results/timing.json``); ``failed``
    lists the entries that did not finish, whose documents were left as they were.
    """
    check_registry(entries)
    chosen = select(names, entries)
    cohorts = dict(cohorts or {})
    unknown = set(cohorts) - {e.cohort.name for e in entries}
    if unknown:
        known = sorted({e.cohort.name for e in entries})
        raise ValueError(f"--cohort: no table uses {sorted(unknown)}; cohorts: {known}")
    check_markers(chosen, docs_root)  # before anything runs
    plan = _plan(chosen, work, results, cohorts)
    if dry_run:
        _print_plan(plan)
        return {"dry_run": True, "plan": plan, "failed": []}
    date = date or datetime.now(timezone.utc).date().isoformat()
    started = time.perf_counter()
    failures: list[tuple[str, str]] = []
    rows = []
    for entry, step in zip(chosen, plan, strict=True):
        print(f"docs: {entry.name} ({entry.task} on {step['cohort']})", flush=True)
        row: dict[str, Any] = {"name": entry.name, "task": entry.task, "cohort": step["cohort"]}
        row.update(status="failed", reason="", cohort_seconds=0.0, benchmark_seconds=0.0)
        entry_started = time.perf_counter()
        before = len(failures)
        with isolated(failures, entry.name):
            folder, json_path = Path(step["cohort"]), Path(step["results"])
            row["cohort_seconds"] = ensure_cohort(entry.cohort, folder)
            hashes = _weights_hashes(entry)
            bench_started = time.perf_counter()
            run_benchmark(
                entry.task,
                json_path,
                heldout=folder,
                patients=entry.cohort.patients,
                seed=entry.cohort.seed,
                device=device,
                **entry.options,
            )
            row["benchmark_seconds"] = time.perf_counter() - bench_started
            block = "\n\n".join(
                [
                    as_doc_block(json_path.with_suffix(".md").read_text()),
                    provenance_line(
                        entry,
                        folder=folder,
                        json_path=json_path,
                        hashes=hashes,
                        seconds=row["benchmark_seconds"],
                        date=date,
                        work=work,
                    ),
                ]
            )
            for doc, marker in entry.targets:
                path = Path(docs_root) / doc
                path.write_text(splice(path.read_text(), marker, block, doc))
            row.update(status="ok", weights_sha256=hashes, results=str(json_path))
        if len(failures) > before:
            row["reason"] = failures[-1][1]
        row["seconds"] = time.perf_counter() - entry_started
        rows.append(row)
    total = time.perf_counter() - started
    _print_timing(rows, total)
    summary = {
        "command": COMMAND,
        "date": date,
        "total_seconds": round(total, 1),
        "entries": rows,
        "failed": [r["name"] for r in rows if r["status"] != "ok"],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    Path(results).mkdir(parents=True, exist_ok=True)
    (Path(results) / "timing.json").write_text(json.dumps(summary, indent=2))
    return summary
