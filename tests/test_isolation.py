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


CORPUS_ODD = ("examples_ybr_color.dcm", "JPEG2000.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm",
              "GDCMJ2K_TextGBR.dcm")  # fmt: skip


def _run_cli_measured(args: list[str], cwd: Path) -> tuple[int, float]:
    """``ra-joints ARGS`` in a child process of its own: (exit code, its peak RSS in MB).

    ``os.wait4`` gives that one child's resource usage (the test process's own peak, or the
    maximum over all children of the session, would say nothing about this run)."""
    import os
    import subprocess
    import sys

    import annotation_tools

    root = Path(annotation_tools.__file__).resolve().parents[1]  # this checkout, not another
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root),
           os.environ.get("PYTHONPATH")]))}  # fmt: skip
    code = "import sys; from annotation_tools.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 1024.0  # kB on Linux


def test_acceptance_a_real_cohort_folder_gives_the_clean_rows_lists_every_odd_file(
    clean_run, small_cohort, tmp_path
):
    """Issue 20's "done when" (predict side): good radiographs + ultrasound frames + a
    truncated DICOM with a good patient's PatientID + five odd files of pydicom's corpus + a
    20000 x 20000 PNG. The good patients' rows are the clean run's, every odd file is listed
    with its reason, exit 3, nothing is written outside --out, peak memory under 3 GB."""
    from helpers import huge_png
    from pydicom.data import get_testdata_file

    images, clean_out = clean_run
    work = tmp_path / "site"
    cohort = work / "cohort"
    shutil.copytree(images, cohort / "radiographs")
    shutil.copytree(small_cohort / "ultrasound", cohort / "ultrasound")
    odd = [cohort / "ultrasound" / p.name for p in sorted((small_cohort / "ultrasound").iterdir())]
    dicom = sorted((cohort / "radiographs").glob("*.dcm"))[0]
    data = dicom.read_bytes()
    truncated = cohort / "radiographs" / f"resent_{dicom.name}"
    truncated.write_bytes(data[: len(data) // 2 + 1000])  # same PatientID, half the pixels
    odd.append(truncated)
    (cohort / "corpus").mkdir()
    for name in CORPUS_ODD:
        odd.append(Path(shutil.copy(get_testdata_file(name), cohort / "corpus" / name)))
    odd.append(huge_png(cohort / "radiographs" / "Z9_LH.png"))
    before = _files(tmp_path)
    out = work / "out"
    status, peak_mb = _run_cli_measured(
        ["predict", "--images", str(cohort), "--out", str(out), "--no-explain", "--quiet"], work
    )
    assert status == 3  # some files skipped, the rest done
    assert _rows(out / "scores_ra2dream.csv") == _rows(clean_out / "scores_ra2dream.csv")
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(f["file"]).resolve(): f["reason"] for f in summary["failed_files"]}
    assert set(failed) == {p.resolve() for p in odd}, "every odd file listed, nothing else"
    assert all(reason.strip() for reason in failed.values())
    assert all("ultrasound" in failed[p.resolve()] for p in odd if p.parent.name == "ultrasound")
    assert "truncated" in failed[truncated.resolve()]
    assert "too large" in failed[(cohort / "radiographs" / "Z9_LH.png").resolve()]
    assert {p["patient_id"] for p in summary["patients"]} == set(
        _rows(clean_out / "scores_ra2dream.csv")
    )
    written = _files(tmp_path) - before
    assert written and all(out in p.parents for p in written), "written outside --out"
    assert peak_mb < 3 * 1024, f"peak memory {peak_mb:.0f} MB"
