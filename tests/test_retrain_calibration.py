"""A retrained version is calibrated on its project's held-out patients (issue #24), or says
plainly that it has no grade sets and how to calibrate it."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from annotation_tools.conformal import CALIBRATION_FILE, GradeCalibration
from annotation_tools.imageio import file_sha256
from annotation_tools.recalibrate import MIN_CALIBRATION_PATIENTS
from annotation_tools.retrain import retrain

SCORER = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_joint_scorer"
ONE_EPOCH = ["--epochs", "1", "--val_interval", "1"]


@pytest.fixture(scope="module")
def retrained_scorer(cohort20, tmp_path_factory):
    """The scorer retrained for one epoch on the 20-patient phantom project, 2 folds: fold 0
    (10 patients) validates and calibrates. Trained once for the module."""
    project = tmp_path_factory.mktemp("recalibrated") / "project"
    shutil.copytree(cohort20, project)
    lines: list[str] = []
    version = retrain(project, SCORER, folds=2, overrides=ONE_EPOCH, log=lines.append)
    return project, version, lines


def test_retrained_scorer_is_calibrated_for_its_own_weights_and_predicts_grade_sets(
    retrained_scorer, tmp_path
):
    from annotation_tools.predict import PredictionService

    project, version, lines = retrained_scorer
    info = json.loads((version / "train_info.json").read_text())
    held = info["held_out"]
    assert held["fold"] == 0 and len(held["patients"]) == MIN_CALIBRATION_PATIENTS == 10
    assert held["trained_patients"] == 10
    # the step shows like the training's, then what came of it
    steps = [line for line in lines if line.startswith("running: ")]
    assert len(steps) == 2 and steps[1].startswith(
        f"running: ra-joints calibrate --task scorer --weights {version}"
    )
    assert info["calibration"]["path"] == str(version / CALIBRATION_FILE)
    assert lines[-1] == "calibration: " + info["calibration"]["message"]
    assert "calibrated on 10 held-out patients" in lines[-1]
    calibration = GradeCalibration.load(version / CALIBRATION_FILE)
    assert calibration.source["weights_sha256"] == file_sha256(version / "model.pt")
    assert calibration.source["patients"] == 10 and calibration.source["scores"] > 100
    assert "early stopping" in calibration.source["held_out"]["note"]
    assert calibration.source["held_out"]["fold"] == 0
    # Predict with that version finds the file next to its weights and writes grade sets
    patient = sorted(held["patients"])[0]
    films = tmp_path / "films"
    films.mkdir()
    for film in (project / "radiographs").glob(f"{patient}_*"):
        shutil.copy(film, films / film.name)
    service = PredictionService("two-stage", weights={"scorer": version / "model.pt"})
    assert service.models()["scorer"].calibration is not None
    service.predict_folder(films, tmp_path / "out", explain=False, overlays=False)
    with open(tmp_path / "out" / "joint_scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["set_low"] != "" and r["set_high"] != "" for r in rows)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["grade_sets"]["calibrated"] is True


def _locator_version(project: Path, name: str, held_out: list[str]) -> Path:
    """A locator "version" of the project without training: the shipped weights (they never saw
    this cohort) with a train_info.json that holds out ``held_out``."""
    from annotation_tools.bundles import bundle_for
    from annotation_tools.recalibrate import HELD_OUT_NOTE

    shipped = bundle_for("locator").root / "models"
    version = project / "models" / "ra_joint_locator" / name
    version.mkdir(parents=True)
    for kept in ("model.pt", "shape_prior.json"):
        shutil.copy(shipped / kept, version / kept)
    held = {"fold": 0, "patients": held_out, "note": HELD_OUT_NOTE}
    (version / "train_info.json").write_text(json.dumps({"seeds": [4], "held_out": held}))
    return version


def test_a_locator_version_is_calibrated_on_its_held_out_patients_only(retrained_scorer):
    from annotation_tools.locator import JointLocator
    from annotation_tools.locator_calibration import LOCATOR_CALIBRATION_FILE, LocatorCalibration
    from annotation_tools.recalibrate import calibrate_version

    project, scorer_version, _ = retrained_scorer
    held = json.loads((scorer_version / "train_info.json").read_text())["held_out"]["patients"]
    version = _locator_version(project, "v_located", held)
    outcome = calibrate_version(version)  # its own project (seed 4 in its train_info: allowed)
    assert outcome.calibrated and outcome.patients == 10, outcome.message()
    calibration = LocatorCalibration.load(version / LOCATOR_CALIBRATION_FILE)
    assert calibration.source["radiographs"] == 40 and calibration.source["patients"] == 10
    assert calibration.source["weights_sha256"] == file_sha256(version / "model.pt")
    assert "early stopping" in calibration.source["held_out"]["note"]
    # the locator finds it next to the version's weights
    bundle = SCORER.parent / "ra_joint_locator"
    locator = JointLocator.from_bundle(bundle, device="cpu", weights=str(version / "model.pt"))
    assert locator.calibration is not None
    assert locator.calibration.source["weights_sha256"] == locator.model_info["weights_sha256"]


def test_the_scorer_calibrates_only_on_patients_its_locator_held_out_too(retrained_scorer):
    """The locator Predict uses was retrained here on 5 of the scorer's held-out patients: only
    the other 5 are held out from both, too few - no file, and why."""
    from annotation_tools.recalibrate import calibrate_version

    project, scorer_version, _ = retrained_scorer
    held = json.loads((scorer_version / "train_info.json").read_text())["held_out"]["patients"]
    locator = _locator_version(project, "v_half", sorted(held)[:5])
    before = (scorer_version / CALIBRATION_FILE).read_bytes()
    outcome = calibrate_version(scorer_version, locator_weights=locator / "model.pt")
    assert not outcome.calibrated and "only 5 patients held out" in outcome.reason
    assert (scorer_version / CALIBRATION_FILE).read_bytes() == before  # the old file stays


def test_calibrate_weights_refuses_a_version_of_another_task(retrained_scorer, capsys):
    from annotation_tools.cli import main

    _, version, _ = retrained_scorer
    assert main(["calibrate", "--task", "locator", "--weights", str(version)]) == 2
    assert "give --task scorer" in capsys.readouterr().err
    assert main(["calibrate", "--weights", str(version.parent)]) == 2  # the bundle folder
    assert "not a retrained version" in capsys.readouterr().err


def test_too_few_held_out_patients_leave_no_calibration_and_say_how_to_make_one(
    small_cohort, tmp_path, capsys
):
    """3 patients in 3 folds: one held out. The job counts the calibration as a step, writes
    no file and its summary says why and what to run; so does calibrate --weights by hand."""
    from annotation_tools.cli import main
    from annotation_tools.jobs import start_retrain
    from annotation_tools.predict import PredictionService

    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    job = start_retrain(project, SCORER, folds=3, overrides=ONE_EPOCH).wait(timeout=600)
    assert job.state == "done", job.summary()
    assert job.steps == job.step == 2  # training, then the calibration
    version = project / "models" / "ra_joint_scorer" / job.version
    assert not (version / CALIBRATION_FILE).exists()
    assert not list(version.glob(".*tmp"))
    for said in (job.calibration, job.summary(), "\n".join(job.tail())):
        assert "has no grade sets" in said and "only 1 patient held out" in said
        assert f"ra-joints calibrate --task scorer --weights {version}" in said
    info = json.loads((version / "train_info.json").read_text())
    assert info["calibration"]["path"] is None and info["calibration"]["patients"] == 1
    scorer = PredictionService("two-stage", weights={"scorer": version / "model.pt"})
    assert scorer.models()["scorer"].calibration is None
    # by hand: the same answer, exit status 1, still no file
    assert main(["calibrate", "--weights", str(version)]) == 1
    assert "only 1 patient held out" in capsys.readouterr().out
    assert not (version / CALIBRATION_FILE).exists()


def test_a_calibration_save_interrupted_before_the_rename_leaves_the_old_file(
    tmp_path, monkeypatch
):
    """A killed job (SIGTERM -> KeyboardInterrupt) between writing and renaming."""
    import annotation_tools.paths as paths
    from annotation_tools.conformal import calibrate_grades

    rows = [("LH_mcp_2", "narrowing", 1.0, 0.1, 1.0 + (i % 3) / 4) for i in range(40)]
    old = calibrate_grades(rows, source={"weights_sha256": "old"}).save(tmp_path / "c.json")
    before = old.read_text()

    def killed(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(paths.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        calibrate_grades(rows, source={"weights_sha256": "new"}).save(old)
    assert old.read_text() == before and GradeCalibration.load(old).source["weights_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind
