"""Deliverables 3 and 4 of issue 20: one bad image or patient costs only its own result, and
no patient id, site or stem writes outside the output folder or over another image's output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from annotation_tools.cli import main
from annotation_tools.paths import path_name, path_names, safe_name, unique_name


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["Patient_ID"]: row for row in csv.DictReader(handle)}


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("../../x", "____x"), ("/abs/id", "_abs_id"), ("siteA/1", "siteA_1"), ("CON", "_CON"),
     ("com1.txt", "_com1.txt"), ("..", "__"), ("", "unnamed"), ("a\x00b\nc", "a_b_c"),
     ("P001", "P001"), (".hidden", "_.hidden"), ("Müller", "Müller")],
)  # fmt: skip
def test_safe_name_is_one_harmless_component(text, expected):
    name = safe_name(text)
    assert name == expected
    assert "/" not in name and "\\" not in name and ".." not in name
    assert Path(name).name == name and not Path(name).is_absolute()


def test_long_names_are_cut_but_stay_different_and_collisions_get_a_suffix():
    a, b = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert len(a) <= 120 and a != b
    taken: set[str] = set()
    assert [unique_name("P1", taken) for _ in range(3)] == ["P1", "P1_2", "P1_3"]
    assert unique_name("p1", taken, key="k") not in {"P1", "P1_2", "P1_3", "p1"}  # no case clash


def test_output_names_are_unique_per_image_even_when_stems_repeat(tmp_path):
    paths = [tmp_path / "siteA" / "X_LH.dcm", tmp_path / "siteB" / "X_LH.png",
             tmp_path / "siteA" / "X_LH.png", tmp_path / "P1_RH.png"]  # fmt: skip
    names = path_names(paths, tmp_path)
    assert len(set(names.values())) == 4
    assert names[str(tmp_path / "P1_RH.png")] == "P1_RH"  # a flat folder keeps its stems
    assert names[str(tmp_path / "siteB" / "X_LH.png")] == "siteB__X_LH"
    assert path_name("v1/P1_LH.dcm") != path_name("v2/P1_LH.png")
    assert path_names(paths, tmp_path) == names  # the same every run


@pytest.fixture(scope="module")
def clean_run(small_cohort, tmp_path_factory):
    """The small cohort's radiographs predicted as they are (the reference)."""
    from annotation_tools.predict import PredictionService

    root = tmp_path_factory.mktemp("clean")
    images = root / "images"
    shutil.copytree(small_cohort / "radiographs", images)
    PredictionService("two-stage").predict_folder(
        images, root / "out", explain=False, overlays=False
    )
    return images, root / "out"


def test_an_odd_image_and_a_broken_file_cost_only_themselves(
    clean_run, tmp_path, monkeypatch, capsys
):
    """The shape prior's ValueError (an image that is no hand or foot) and an unreadable file:
    both listed with their reason, every other patient written as in the clean run; exit 3."""
    import annotation_tools.locator as locator_module

    images, clean_out = clean_run
    dirty = tmp_path / "images"
    shutil.copytree(images, dirty)
    source = next(p for p in sorted(dirty.iterdir()) if p.suffix == ".png")
    odd = dirty / "S99-P0099_LH.png"  # a patient of its own, whose one image is "odd"
    shutil.copy(source, odd)
    (dirty / "S98-P0098_RH.dcm").write_bytes(b"DICM half a file")
    real_decode = locator_module.decode_result

    def decode(prob, **kwargs):
        if Path(kwargs["path"]).name == odd.name:
            raise ValueError("the shape prior needs at least 3 other joints")
        return real_decode(prob, **kwargs)

    monkeypatch.setattr(locator_module, "decode_result", decode)
    out = tmp_path / "out"
    status = main(["predict", "--images", str(dirty), "--out", str(out), "--no-explain",
                   "--no-overlays", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 3
    assert f"skipped {odd}: ValueError: the shape prior needs at least 3 other joints" in err
    assert "S98-P0098_RH.dcm" in err
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(f["file"]).name: f["reason"] for f in summary["failed_files"]}
    assert set(failed) == {odd.name, "S98-P0098_RH.dcm"}
    assert "shape prior" in failed[odd.name]
    assert _rows(out / "scores_ra2dream.csv") == _rows(clean_out / "scores_ra2dream.csv")
    assert sorted(p.name for p in (out / "scores").iterdir()) == sorted(
        p.name for p in (clean_out / "scores").iterdir()
    )


def test_a_patient_whose_symmetry_stage_fails_keeps_patch_scores(clean_run, tmp_path, monkeypatch):
    import annotation_tools.scoring as scoring_module
    from annotation_tools.predict import PredictionService

    images, _ = clean_run
    real = scoring_module._symmetry_of_patient
    victim = sorted({p.name.rsplit("_", 1)[0] for p in images.iterdir()})[0]

    def symmetry(patient, model, explain):
        if patient.patient_id == victim:
            raise RuntimeError("boom")
        return real(patient, model, explain)

    monkeypatch.setattr(scoring_module, "_symmetry_of_patient", symmetry)
    result = PredictionService("two-stage").predict_folder(
        images, tmp_path / "out", explain=False, overlays=False
    )
    notes = {p.patient_id: p.note for p in result.patients}
    assert notes[victim] == "symmetry stage failed (RuntimeError: boom); patch scores"
    assert all(n == "symmetry stage applied" for pid, n in notes.items() if pid != victim)
    assert result.failures == [(f"patient {victim}", notes[victim])]


def test_hostile_ids_and_repeated_stems_write_only_inside_out(clean_run, tmp_path):
    """A PatientID of ../../x, an absolute one, and the same stem in two site folders."""
    import pydicom

    images, _ = clean_run
    cohort = tmp_path / "deep" / "er" / "cohort"
    dicoms = sorted(p for p in images.iterdir() if p.suffix == ".dcm")[:2]
    (cohort / "siteA").mkdir(parents=True)
    (cohort / "siteB").mkdir()
    for folder, pid, source in (("siteA", "../../x", dicoms[0]), ("siteB", "/tmp/abs", dicoms[1])):
        ds = pydicom.dcmread(source)
        ds.PatientID = pid
        ds.save_as(cohort / folder / "X_LH.dcm")
    before = _files(tmp_path)
    out = tmp_path / "deep" / "er" / "cohort_out"
    status = main(["predict", "--images", str(cohort), "--out", str(out), "--no-explain",
                   "--quiet"])  # fmt: skip
    assert status == 0
    written = _files(tmp_path) - before
    assert written and all(out in p.parents for p in written)
    assert not Path("/tmp/abs.png").exists()
    assert sorted(p.name for p in (out / "joints").iterdir()) == [
        "siteA__X_LH.json",
        "siteB__X_LH.json",
    ]
    assert len(list((out / "overlays").iterdir())) == 2
    assert set(_rows(out / "scores_ra2dream.csv")) == {"../../x", "/tmp/abs"}  # data kept as is
