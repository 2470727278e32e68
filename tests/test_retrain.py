"""Retraining a bundle from a project's reviewed annotations, as a new version."""

import json
import shutil
from pathlib import Path

import pytest

from annotation_tools.bundles import BundleNotFound
from annotation_tools.imageio import file_sha256
from annotation_tools.retrain import model_versions, retrain, weights_for

LOCATOR = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_joint_locator"
RATING = LOCATOR.parent / "ra_us_rating"


def test_retraining_without_reviewed_annotations_says_so(small_cohort, tmp_path):
    from annotation_tools.store import AnnotationStore

    project = tmp_path / "empty"
    with (
        AnnotationStore.open(small_cohort, create=False) as source,
        AnnotationStore.open(project) as store,
    ):
        for record in source.images(modality="radiograph"):
            target = project / record.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(small_cohort / record.path, target)
            store.add_image(target, patient_id=record.patient_id, limb=record.limb)
    with pytest.raises(ValueError, match="no reviewed locator annotations"):
        retrain(project, LOCATOR, folds=3, log=lambda line: None)
    with pytest.raises(BundleNotFound, match="not a napari-ra-joints bundle"):
        retrain(project, LOCATOR.parent / "no_such_bundle", log=lambda line: None)
    assert model_versions(project, "ra_joint_locator") == []


def test_retrained_ultrasound_ensemble_is_a_version_that_grades(small_cohort, tmp_path):
    """Jigsaw x 2 and 3 stages x 2 folds of a very small network, packed, then used."""
    from annotation_tools.store import AnnotationStore
    from annotation_tools.us_rating import ensemble_hash, run_bundle_inference

    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    tiny = [
        "--widen_factor", "0.125", "--hidden", "16", "--batch_size", "4", "--input_size", "64",
        "--finetune_epochs", "1", "--fusion_epochs", "1", "--jigsaw_epochs", "1",
        "--cell", "22", "--tile", "20", "--val_interval", "1",
    ]  # fmt: skip
    lines: list[str] = []
    version = retrain(project, RATING, folds=2, overrides=tiny, log=lines.append)
    assert weights_for(project, "ra_us_rating") == version / "ensemble.json"
    # no patient is held out from a whole ensemble: no grade sets, said with the way out
    assert not (version / "us_conformal.json").exists()
    assert "has no grade sets" in lines[-1] and "no patient of the project is held out" in lines[-1]
    assert f"ra-joints calibrate --task ultrasound --weights {version}" in lines[-1]
    members = json.loads((version / "ensemble.json").read_text())["members"]
    assert sorted(m["fold"] for m in members) == [0, 1]
    assert json.loads((version / "ensemble.json").read_text())["network"]["widen_factor"] == 0.125
    summary = run_bundle_inference(
        RATING, tmp_path / "out", store=str(project), write_store=True, explain=False,
        models_dir=str(version),
    )  # fmt: skip
    assert summary["n_graded"] == 6
    with AnnotationStore.open(project, create=False) as store:
        pair = store.us_pairs()[0]
        assert store.us_score(pair["id"], sources=["model"]).weights_hash == ensemble_hash(version)


def test_retrained_multitask_unet_is_a_version_that_locates_and_scores(small_cohort, tmp_path):
    from annotation_tools.multitask import MultitaskModel
    from annotation_tools.predict import predict_store_patient
    from annotation_tools.store import AnnotationStore

    bundle = LOCATOR.parent / "ra_multitask_unet"
    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    lines: list[str] = []
    version = retrain(
        project,
        bundle,
        folds=3,
        overrides=["--epochs", "1", "--val_interval", "1", "--spatial_size", "[96,96]"],
        log=lines.append,
    )
    assert any(line.startswith("exported 12 items") for line in lines)
    assert not any("calibrat" in line for line in lines)  # the multi-task U-Net has no sets
    assert weights_for(project, "ra_multitask_unet") == version / "model.pt"
    model = MultitaskModel.from_bundle(
        bundle, weights=[version / "model.pt"], overrides={"spatial_size": [96, 96]}
    )
    with AnnotationStore.open(project, create=False) as store:
        patient = store.patients()[0]
    result = predict_store_patient(project, patient, None, None, multitask=model)
    assert len(result.located) == 4 and len(result.patients) == 1
    with AnnotationStore.open(project, create=False) as store:
        record = store.images(modality="radiograph")[0]
        revisions = store.centres(record.id, sources=["model"]).values()
        # one revision per joint (found, or "not visible" when a 1-epoch model misses it)
        assert len(revisions) == len(store.centres(record.id, sources=["phantom"]))
        assert {r.weights_hash for r in revisions} == {file_sha256(version / "model.pt")}
        assert {r.author for r in revisions} == {"ra_multitask_unet"}


def test_bundle_steps_stop_at_the_first_failing_step_and_say_which(tmp_path, capsys):
    """The one-process runner of the retraining: a step that fails ends the run, non-zero."""
    import sys

    from annotation_tools.bundle_steps import main

    missing = tmp_path / "no_such_config.json"
    never = tmp_path / "never.json"
    steps = [
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(missing)],
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(never)],
    ]
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    assert main([str(tmp_path / "steps.json")]) == 1
    out = capsys.readouterr().out
    assert out.count("running: ") == 1 and "step failed" in out and str(missing) in out
    (tmp_path / "bad.json").write_text(json.dumps([["python", "train.py"]]))
    assert main([str(tmp_path / "bad.json")]) == 1
    assert "not a 'python -m monai.bundle' command line" in capsys.readouterr().err
