"""The multi-task U-Net's grade sets (#24): calibrated by the scorer's conformal code on a
cohort of its own, filled into joint_scores.csv and the store by predict and the dock, and
refused for weights the calibration was not made with.

A copy of the shipped bundle (member 0, no calibration file) is calibrated on the small
session cohort, so the repository's models/ folder is never written.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest

from annotation_tools.conformal import CALIBRATION_FILE
from annotation_tools.metrics import round_grade
from annotation_tools.multitask import MultitaskModel
from annotation_tools.predict import PredictionService
from annotation_tools.store import AnnotationStore

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_multitask_unet"


def _bundle_copy(folder: Path) -> Path:
    """The shipped bundle with its default member only and no conformal.json."""
    copy = folder / "ra_multitask_unet"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("member_1.pt", CALIBRATION_FILE))
    return copy


def _project(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "cohort.json").write_text(json.dumps({"seed": seed}))
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "joint_scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def calibrated(small_cohort, tmp_path_factory):
    """``ra-joints calibrate --task multitask`` on the small cohort, into a bundle copy."""
    from annotation_tools.cli import main

    copy = _bundle_copy(tmp_path_factory.mktemp("mt_calibrated"))
    argv = ["calibrate", "--task", "multitask", "--project", str(small_cohort)]
    assert main([*argv, "--bundle", str(copy), "--trust-bundle", "--device", "cpu"]) == 0
    return copy


@pytest.fixture(scope="module")
def one_patient(small_cohort, tmp_path_factory):
    """One patient's four films of the small cohort (a short predict run)."""
    folder = tmp_path_factory.mktemp("mt_one_patient")
    films = sorted((small_cohort / "radiographs").iterdir())
    patient = films[0].name.split("_")[0]
    for film in films:
        if film.name.startswith(f"{patient}_"):
            shutil.copy(film, folder / film.name)
    return folder


def test_calibration_is_written_next_to_the_members_and_tied_to_their_hash(calibrated):
    path = calibrated / "models" / CALIBRATION_FILE
    doc = json.loads(path.read_text())
    model = MultitaskModel.from_bundle(calibrated, device="cpu")
    assert doc["source"]["weights_sha256"] == model.model_info["weights_sha256"]
    assert doc["source"]["seed"] == 11 and doc["source"]["patients"] == 3
    assert doc["source"]["bundle"] == "ra_multitask_unet" and doc["source"]["members"] == "1"
    assert sum(len(v) for v in doc["residuals"].values()) == doc["source"]["scores"] > 100
    assert "candidates" in doc["source"]["beta_choice"]  # beta chosen on these patients
    assert model.calibration is not None and model.calibration_note == ""


def test_predict_fills_every_set_and_each_holds_the_rounded_grade(
    calibrated, small_cohort, tmp_path
):
    """CLI predict (with --store) and the dock's Predict of one patient: every multi-task
    grade gets a set, in joint_scores.csv and in its model revision."""
    from annotation_tools.cli import main

    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    out = tmp_path / "pred"
    argv = ["predict", "--images", str(project / "radiographs"), "--out", str(out)]
    argv += ["--pipeline", "multitask", "--multitask-bundle", str(calibrated), "--trust-bundle"]
    argv += ["--store", str(project), "--no-explain", "--no-overlays", "--quiet"]
    assert main([*argv, "--coverage", "0.8", "--device", "cpu"]) == 0
    rows = _rows(out)
    assert len(rows) > 100
    assert all(r["set_low"] != "" and r["set_high"] != "" for r in rows)  # none left empty
    for r in rows:
        assert int(r["set_low"]) <= round_grade(float(r["prediction"])) <= int(r["set_high"]), r
    sets = json.loads((out / "summary.json").read_text())["grade_sets"]
    assert sets["calibrated"] and sets["coverage"] == 0.8 and sets["calibration"]["seed"] == 11

    def model_grades(store):
        revs = [
            rev
            for record in store.images(modality="radiograph")
            for rev in store.scores(record.id, sources=["model"]).values()
        ]
        assert revs and {r.author for r in revs} == {"ra_multitask_unet"}
        return revs

    with AnnotationStore.open(project, create=False) as store:
        for rev in model_grades(store):
            value = rev.value
            assert value["coverage"] == 0.8
            assert value["set_low"] <= round_grade(value["value"]) <= value["set_high"]
        patient = store.images(modality="radiograph")[0].patient_id
    # the dock: one patient through the same service, the sets in its new revisions
    service = PredictionService("multitask", bundles={"multitask": calibrated}, trusted=True)
    service.predict_patient(project, patient, explain=False)
    with AnnotationStore.open(project, create=False) as store:
        mine = [
            rev.value
            for record in store.images(modality="radiograph")
            if record.patient_id == patient
            for rev in store.scores(record.id, sources=["model"]).values()
        ]
    assert mine and all(v["coverage"] == 0.9 for v in mine)  # the dock's default coverage
    assert all(v["set_low"] <= round_grade(v["value"]) <= v["set_high"] for v in mine)


def test_without_a_calibration_or_with_one_for_other_weights_the_sets_stay_empty(
    calibrated, one_patient, tmp_path
):
    copy = _bundle_copy(tmp_path)
    for case in ("absent", "other weights"):
        model = MultitaskModel.from_bundle(copy, device="cpu")
        assert model.calibration is None and case in model.calibration_note
        out = tmp_path / case
        PredictionService.from_models(multitask=model).predict_folder(
            one_patient, out, explain=False, overlays=False
        )
        rows = _rows(out)
        assert rows and all(r["set_low"] == r["set_high"] == "" for r in rows)
        sets = json.loads((out / "summary.json").read_text())["grade_sets"]
        assert not sets["calibrated"] and case in sets["note"]
        assert "ra-joints calibrate --task multitask" in sets["note"]
        # next round: a calibration made for other members (here: a retrained ensemble)
        doc = json.loads((calibrated / "models" / CALIBRATION_FILE).read_text())
        doc["source"]["weights_sha256"] = "0" * 64
        (copy / "models" / CALIBRATION_FILE).write_text(json.dumps(doc))


def test_calibration_refuses_test_and_training_seeds_before_running(tmp_path):
    from annotation_tools.calibration import calibrate_pipeline

    service = PredictionService("multitask")
    with pytest.raises(ValueError, match="test seed.*calibrate on a validation seed"):
        calibrate_pipeline([_project(tmp_path / "test", 5002)], service)
    with pytest.raises(ValueError, match="training seed"):
        calibrate_pipeline(
            [_project(tmp_path / "val", 3300), _project(tmp_path / "tr", 100)], service
        )
    assert service._models is None  # refused before any weights were loaded


def test_coverage_benchmark_measures_the_multitask_sets(calibrated, small_cohort, tmp_path):
    from annotation_tools.cli import main
    from annotation_tools.phantoms import generate_cohort

    heldout = tmp_path / "heldout"
    generate_cohort(
        heldout, 1, seed=12, height=512, us_pairs=0, workers=1, progress=False, style="schematic"
    )
    out = tmp_path / "coverage.json"
    argv = [
        "benchmark",
        "--task",
        "coverage",
        "--pipeline",
        "multitask",
        "--bundle",
        str(calibrated),
    ]
    argv += ["--trust-bundle", "--resamples", "20", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--heldout", str(heldout)]) == 0
    result = json.loads(out.read_text())
    assert result["pipeline"] == "multitask" and result["test_cohort"]["seed"] == 12
    assert result["calibration"]["seed"] == 11 and result["locator"] is None
    assert set(result["levels"]) == {"0.8", "0.9", "0.95"}
    for figures in result["levels"].values():
        assert figures["all"]["n"] > 50 and 0 <= figures["all"]["coverage"] <= 1
    assert "multi-task U-Net" in out.with_suffix(".md").read_text()
    # the calibration cohort's own seed cannot measure its coverage
    assert main([*argv, "--heldout", str(small_cohort)]) == 2


def test_the_shipped_calibration_fits_the_shipped_default_member(tmp_path):
    """models/conformal.json is the default member's (seed 3300), and the bundle's own
    inference.json writer finds it; another member count would not."""
    from annotation_tools.bundles import bundle_parser

    writer = bundle_parser(BUNDLE, overrides={"output_dir": str(tmp_path)}).get_parsed_content(
        "writer"
    )
    assert writer.calibration is not None, writer.calibration_note
    source = writer.calibration.source
    assert source["seed"] == 3300 and source["members"] == "1" and source["style"] == "schematic"
    both = bundle_parser(BUNDLE, overrides={"output_dir": str(tmp_path), "members": 2})
    other = both.get_parsed_content("writer")
    assert other.calibration is None and "other weights" in other.calibration_note


def test_a_retrained_version_is_calibrated_next_to_its_weights(small_cohort, tmp_path):
    """--weights: the calibration lands beside that file, where prediction with it looks (not
    in the bundle's models/)."""
    from annotation_tools.cli import main

    version = tmp_path / "project_models" / "ra_multitask_unet" / "v1"
    version.mkdir(parents=True)
    shutil.copy(BUNDLE / "models" / "member_0.pt", version / "model.pt")
    copy = _bundle_copy(tmp_path)
    argv = ["calibrate", "--task", "multitask", "--project", str(small_cohort), "--beta", "0.5"]
    argv += ["--bundle", str(copy), "--trust-bundle", "--weights", str(version / "model.pt")]
    assert main([*argv, "--device", "cpu"]) == 0
    assert (version / CALIBRATION_FILE).is_file() and not (
        copy / "models" / CALIBRATION_FILE
    ).exists()
    model = MultitaskModel.from_bundle(copy, device="cpu", weights=[version / "model.pt"])
    assert model.calibration is not None and model.calibration.beta == 0.5
    assert main(["calibrate", "--task", "scorer", "--project", str(small_cohort), *argv[-2:]]) == 2
