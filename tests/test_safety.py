"""Issue 20 deliverables 6, 8, 9, 10: content checked, strict store opening, trusted bundles
only, validated devices, refused bad tables and phantom options - each with a clear message."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from annotation_tools.cli import main
from annotation_tools.store import AnnotationStore, StoreError, StoreVersionError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_false_never_initialises_an_empty_or_foreign_file(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="empty.sqlite is an empty file"):
        AnnotationStore(empty, create=False)
    assert empty.read_bytes() == b""
    foreign = tmp_path / "other.sqlite"
    conn = sqlite3.connect(foreign, isolation_level=None)
    conn.execute("CREATE TABLE patients (name TEXT)")
    conn.close()
    before = _digest(foreign)
    for create in (False, True):  # someone else's database is never written into
        with pytest.raises(StoreError, match="other.sqlite is an SQLite database but not"):
            AnnotationStore(foreign, create=create)
    assert _digest(foreign) == before
    text = tmp_path / "notes.sqlite"
    text.write_text("hello")
    with pytest.raises(StoreError, match="not an SQLite file"):
        AnnotationStore(text, create=False)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_newer_store_is_refused_byte_identical(tmp_path, journal):
    path = tmp_path / "ra_joints.sqlite"
    AnnotationStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (99, 'future')")
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.close()
    before = _digest(path)
    with pytest.raises(StoreVersionError, match="schema version 99.*not changed"):
        AnnotationStore(path, create=False)
    assert _digest(path) == before
    conn = sqlite3.connect(path)  # still in its own journal mode
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    conn.close()


def test_a_damaged_store_gives_one_line_in_every_command(small_cohort, tmp_path, capsys):
    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    store_file = project / "ra_joints.sqlite"
    conn = sqlite3.connect(store_file, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    data = bytearray(store_file.read_bytes())
    for n in range(2, pages):  # every page but the schema page: a corrupt table
        data[n * page : n * page + 64] = b"\xff" * 64
    store_file.write_bytes(bytes(data))
    for argv in (
        ["summary", "--project", str(project)],
        ["export-dream", "--project", str(project), "--out", str(tmp_path / "t.csv")],
        ["metrics", "locator", "--project", str(project)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "ra_joints.sqlite" in err, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1


def test_synchronous_can_be_full_and_is_validated(tmp_path, monkeypatch):
    with AnnotationStore(tmp_path / "a.sqlite", synchronous="FULL") as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    monkeypatch.setenv("RA_JOINTS_SYNCHRONOUS", "sometimes")
    with pytest.raises(StoreError, match="RA_JOINTS_SYNCHRONOUS"):
        AnnotationStore(tmp_path / "b.sqlite")


def test_a_changed_image_is_left_out_of_export_until_reregistered(small_cohort, tmp_path):
    from annotation_tools.export import export_dataset

    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    with AnnotationStore.open(project, create=False) as store:
        victim, other = store.images(modality="radiograph")[:2]
        shutil.copy(store.resolve(other), store.resolve(victim))  # another patient's pixels
        problem = store.content_problem(victim)
        assert problem and str(store.resolve(victim)) in problem and "re-registered" in problem
        report = export_dataset(store, "scorer", tmp_path / "ex", folds=3, progress=False)
        assert any(p.image == victim.path and "changed" in p.reason for p in report.problems)
        assert main(["reregister", "--project", str(project), "--image", victim.path]) == 0
    with AnnotationStore.open(project, create=False) as store:
        assert store.content_problem(victim.id) is None


def test_predict_store_from_elsewhere_resolves_images_and_refuses_storing_nothing(
    small_cohort, tmp_path, monkeypatch, capsys
):
    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(project / "radiographs", elsewhere / "copies")
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    status = main(["predict", "--images", "copies", "--out", str(out), "--store", str(project),
                   "--quiet"])  # fmt: skip
    assert status == 2
    assert "nothing would be stored" in capsys.readouterr().err
    assert not out.exists() or not any((out / "joints").iterdir())  # said before writing


def test_user_bundles_need_trust_and_devices_are_validated(tmp_path, capsys):
    from annotation_tools.bundles import BundleNotTrusted, bundle_for
    from annotation_tools.predict import PredictionService

    copy = tmp_path / "ra_joint_locator"
    shutil.copytree(bundle_for("locator").root, copy)
    service = PredictionService("two-stage", bundles={"locator": copy})
    with pytest.raises(BundleNotTrusted, match="executable code"):
        service.bundle("locator")
    assert (
        PredictionService("two-stage", bundles={"locator": copy}, trusted=True)
        .bundle("locator")
        .root
        == copy
    )
    assert PredictionService("two-stage").bundle("locator").name == "ra_joint_locator"
    status = main(["predict", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--locator-bundle", str(copy), "--quiet"])  # fmt: skip
    assert status == 2 and "--trust-bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--images", ".", "--out", "o", "--device", "cpu'); import os; ('"])
    assert "device must be cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    with pytest.raises(ValueError, match="device must be"):
        PredictionService(device="cuda:x")


def test_refused_weights_are_one_line_naming_the_file(tmp_path):
    import argparse

    import torch

    from annotation_tools.bundles import WeightsRefused, load_weights

    bad = tmp_path / "model.pt"
    torch.save({"thing": argparse.Namespace(a=1)}, bad)  # an object: refused
    with pytest.raises(WeightsRefused) as info:
        load_weights(bad)
    text = str(info.value)
    assert str(bad) in text and "not a plain weights file" in text
    assert "weights_only=False" not in text and "\n" not in text


def _table(path: Path, rows: list[dict[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Patient_ID", "LH_mcp_E__ip"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_metrics_refuses_out_of_range_grades_and_duplicate_patients(tmp_path, capsys):
    good = _table(tmp_path / "good.csv", [{"Patient_ID": "P1", "LH_mcp_E__ip": "1"}])
    high = _table(tmp_path / "high.csv", [{"Patient_ID": "P1", "LH_mcp_E__ip": "99"}])
    twice = _table(tmp_path / "twice.csv", [{"Patient_ID": "P1", "LH_mcp_E__ip": "1"},
                                            {"Patient_ID": "P1", "LH_mcp_E__ip": "2"}])  # fmt: skip
    assert main(["metrics", "scores", "--truth", str(good), "--pred", str(high)]) == 2
    err = capsys.readouterr().err
    assert "high.csv:2 LH_mcp_E__ip" in err and "outside 0-" in err
    assert main(["metrics", "scores", "--truth", str(twice), "--pred", str(good)]) == 2
    assert "twice.csv:3: Patient_ID 'P1' appears again (first on line 2)" in capsys.readouterr().err


def test_phantoms_refuses_a_file_out_and_huge_sizes(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert main(["phantoms", "--out", str(target), "--patients", "1"]) == 2
    assert "is an existing file" in capsys.readouterr().err and target.read_text() == "keep me"
    assert main(["phantoms", "--out", str(tmp_path / "c"), "--height", "100000"]) == 2
    assert "--height must be" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_benchmark_and_retrain_refuse_an_untrusted_bundle_before_reading_it(
    tmp_path, capsys, monkeypatch
):
    from annotation_tools.bundles import BUNDLES_ENV, bundle_for

    monkeypatch.setenv(BUNDLES_ENV, "")  # --bundles below sets it: restored after the test

    mine = tmp_path / "mine"
    shutil.copytree(bundle_for("locator").root, mine / "ra_joint_locator",
                    ignore=shutil.ignore_patterns("*.pt", "*.ts"))  # fmt: skip
    status = main(["benchmark", "--task", "locator", "--bundle", str(mine / "ra_joint_locator"),
                   "--out", str(tmp_path / "b.json")])  # fmt: skip
    assert status == 2 and "--trust-bundle" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
    project = tmp_path / "project"
    project.mkdir()
    status = main(["--bundles", str(mine), "retrain", "--project", str(project),
                   "--bundle", "ra_joint_locator"])  # fmt: skip
    assert status == 2 and "executable code" in capsys.readouterr().err
    assert not (project / "training").exists()  # no job was written
