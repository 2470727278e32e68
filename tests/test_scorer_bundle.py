"""The ra_joint_scorer bundle through MONAI's own tooling, with the shipped weights."""

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    INFERENCE_CONFIG,
    bundle_cmd,
    check_bundle_layout,
    export_torchscript,
    inside_or_near,
    run_here,
    run_in,
)

from annotation_tools.cli import main
from annotation_tools.export import export_dataset
from annotation_tools.imageio import read_image
from annotation_tools.scorer import build_scorer
from annotation_tools.scoring import JointScorer, load_patch_set
from annotation_tools.store import TRAINING_SOURCES, AnnotationStore
from annotation_tools.symmetry import SymmetryModel
from annotation_tools.vocabulary import dream_columns, get_joint

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_joint_scorer"
LOCATOR = BUNDLE.parent / "ra_joint_locator"
# a one-epoch run of a very small network: checks the configs, not the model
TINY_TRAINING = (
    "--patch_size",
    "32",
    "--epochs",
    "1",
    "--val_interval",
    "1",
    "--unet_channels",
    "[8, 16, 16, 16]",
    "--encoder_channels",
    "[8, 16]",
)


def _run(cmd: list[str], cwd: Path = BUNDLE, timeout: int = 600):
    return run_in(cwd, cmd, timeout)


def _infer(*args: str, config: str = "configs/inference.json") -> None:
    """The bundle's inference (or evaluation) through MONAI's runner, as a user calls it."""
    _run(
        bundle_cmd(
            "run",
            "--config_file",
            config,
            "--meta_file",
            "configs/metadata.json",
            "--bundle_root",
            ".",
            *args,
        )
    )


def _truth(project: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(image stem, joint id) -> true grades of a phantom project."""
    out = {}
    with AnnotationStore.open(project, create=False) as store:
        for image in store.images(modality="radiograph"):
            for (joint_id, score_type), rev in store.scores(image.id).items():
                out.setdefault((Path(image.path).stem, joint_id), {})[score_type] = rev.value[
                    "value"
                ]
    return out


@pytest.fixture(scope="module")
def scored_pair(full_res_pair, tmp_path_factory):
    """The bundle's inference.json on two full-resolution phantom patients (store centres)."""
    out = tmp_path_factory.mktemp("scored")
    _infer("--store", str(full_res_pair), "--output_dir", str(out))
    return out


def test_bundle_layout_follows_the_model_zoo():
    meta = check_bundle_layout(
        BUNDLE,
        [
            "configs/metadata.json",
            "configs/train.json",
            "configs/evaluate.json",
            "configs/inference.json",
            "configs/multi_gpu_train.json",
            "configs/train_symmetry.json",
            "configs/quick.json",
            "configs/logging.conf",
            "models/model.pt",
            "models/symmetry.skops",
            "docs/README.md",
            "LICENSE",
        ],
    )
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    torch.load(BUNDLE / "models/model.pt", weights_only=True)  # tensors only, no code
    assert SymmetryModel.load(BUNDLE / "models/symmetry.skops").fitted_keys


def test_verify_net_in_out_for_every_variant():
    for variant in ("seg_guided", "plain", "hirano"):
        run_here(
            BUNDLE,
            bundle_cmd(
                "verify_net_in_out",
                "network_def",
                *INFERENCE_CONFIG,
                "--variant",
                variant,
            ),
        )


def test_torchscript_export_matches_the_network(tmp_path):
    target = tmp_path / "model.ts"
    export_torchscript(BUNDLE, target)
    scripted = torch.jit.load(str(target))
    scorer = JointScorer.from_bundle(BUNDLE, device="cpu")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), scorer.network(x), atol=1e-4, rtol=1e-4)


def test_inference_scores_are_named_in_range_and_close_to_truth(scored_pair, full_res_pair):
    truth = _truth(full_res_pair)
    files = sorted((scored_pair / "scores").glob("*.json"))
    assert len(files) == 8
    errors = {"narrowing": [], "erosion": []}
    for path in files:
        doc = json.loads(path.read_text())
        assert "not for clinical use" in doc["note"]
        for joint_id, js in doc["joints"].items():
            joint = get_joint(joint_id)
            assert joint.limb.value == doc["limb"]
            assert js["stage"] == "symmetry"  # both patients have all four limbs
            for score_type in ("narrowing", "erosion"):
                value = js[score_type]
                if not joint.carries(score_type):
                    assert value is None
                    continue
                assert 0 <= value <= joint.max_score(score_type)
                assert js[f"{score_type}_sd"] >= 0
                errors[score_type].append(abs(value - truth[(path.stem, joint_id)][score_type]))
    # behaviour, not a pinned number: phantom grades are learned (mostly exact, rarely off by 2)
    for score_type, err in errors.items():
        err = np.asarray(err)
        assert np.mean(np.round(err) == 0) > 0.6, score_type
        assert np.mean(err < 1.5) > 0.9, score_type


def test_inference_writes_dream_csv_summary_and_shap(scored_pair, full_res_pair):
    with open(scored_pair / "scores_ra2dream.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Patient_ID"] for r in rows] == ["S21-P0001", "S21-P0002"]
    assert list(rows[0]) == list(dream_columns())
    for row in rows:
        joints = [float(row[c]) for c in dream_columns()[4:]]
        assert float(row["Overall_Tol"]) == pytest.approx(sum(joints), abs=0.01)
    summary = json.loads((scored_pair / "summary.json").read_text())
    assert all(p["symmetry"] for p in summary["patients"]) and not summary["failed_files"]
    # every grade with its conformal set (the shipped calibration fits the shipped weights)
    assert summary["grade_sets"]["calibrated"] and summary["grade_sets"]["coverage"] == 0.9
    with open(scored_pair / "joint_scores.csv", newline="") as handle:
        sets = list(csv.DictReader(handle))
    assert {r["patient_id"] for r in sets} == {"S21-P0001", "S21-P0002"}
    assert len(sets) == 2 * 86  # every joint and score type of four limbs, per patient
    for r in sets:
        top = get_joint(r["joint_id"]).max_score(r["score_type"])
        assert 0 <= int(r["set_low"]) <= int(r["set_high"]) <= top
        assert int(r["set_low"]) - 0.5 <= float(r["prediction"]) <= int(r["set_high"]) + 0.5
    for p in summary["patients"]:
        png = scored_pair / p["shap_png"]
        from skimage.io import imread

        assert imread(png).std() > 0  # a drawn figure, not an empty canvas


def test_predicted_joint_space_outlines_overlap_the_drawn_ones(scored_pair, full_res_pair):
    with AnnotationStore.open(full_res_pair, create=False) as store:
        hits = []
        for image in store.images(modality="radiograph"):
            doc = json.loads((scored_pair / "scores" / f"{Path(image.path).stem}.json").read_text())
            for joint_id, rev in store.polygons(image.id).items():
                predicted = doc["joints"][joint_id]["polygon"]
                if predicted is None:
                    hits.append(False)
                    continue
                centre = np.mean(np.asarray(predicted), axis=0, keepdims=True)
                hits.append(bool(inside_or_near(np.asarray(rev.value["vertices"]), centre, 4)[0]))
    assert np.mean(hits) > 0.8


def test_store_gets_model_revisions_and_keeps_the_truth(full_res_pair, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(full_res_pair, project)
    with AnnotationStore.open(project, create=False) as store:
        image = store.images(modality="radiograph")[0]
        truth_before = store.scores(image.id, sources=TRAINING_SOURCES)
    _infer(
        "--store",
        str(project),
        "--write_store",
        "true",
        "--explain",
        "false",
        "--output_dir",
        str(tmp_path / "out"),
    )
    with AnnotationStore.open(project, create=False) as store:
        model = store.scores(image.id, sources=["model"])
        assert model and all(r.author == "ra_joint_scorer" for r in model.values())
        assert all(r.weights_hash for r in model.values())
        assert store.scores(image.id, sources=TRAINING_SOURCES) == truth_before
        polygons = store.polygons(image.id, sources=["model"])
        assert polygons  # editable joint-space outlines for the plugin


def test_missing_joints_limbs_and_border_centres(full_res_pair, tmp_path):
    """Flagged joints get no score, a lone limb keeps patch scores, border joints are padded."""
    scorer = JointScorer.from_bundle(BUNDLE, device="cpu")
    centres_dir = tmp_path / "joints"
    centres_dir.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    with AnnotationStore.open(full_res_pair, create=False) as store:
        record = store.images(patient_id="S21-P0001", limb="LH")[0]
        shutil.copy(store.resolve(record), images)
        centres = store.centres(record.id)
    src = images / Path(record.path).name
    shape = read_image(src).shape
    joints = {
        k: {"x": r.value["x"], "y": r.value["y"], "missing": False} for k, r in centres.items()
    }
    joints["LH_mcp_3"] = {"x": None, "y": None, "missing": True}
    joints["LH_pip_5"] = {"x": 2.0, "y": float(shape[0] - 3), "missing": False}  # at the border
    (centres_dir / f"{src.stem}.json").write_text(
        json.dumps({"image": str(src), "limb": "LH", "joints": joints})
    )
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    patch_set = load_patch_set(images, centres_dir=centres_dir, patch_size=scorer.patch_size)
    assert [Path(f).name for f, _ in patch_set.failures] == ["broken.png"]
    (patient,) = scorer.score(patch_set)
    assert not patient.symmetry and "all four limbs" in patient.note
    (image,) = patient.images
    assert image.joints["LH_mcp_3"].stage == "missing"
    assert image.joints["LH_mcp_3"].narrowing is None
    assert image.joints["LH_pip_5"].stage == "patch"
    assert image.joints["LH_pip_5"].narrowing is not None


def test_evaluate_config_reports_patch_and_symmetry_figures(full_res_pair, tmp_path):
    _infer(
        "--store",
        str(full_res_pair),
        "--output_dir",
        str(tmp_path),
        config="['configs/inference.json','configs/evaluate.json']",
    )
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["symmetry_applied"] == 2
    for stage in ("patch", "final"):
        narrowing = report[stage]["per_score"]["narrowing"]
        assert narrowing["n"] == 2 * (2 * 15 + 2 * 6)
        assert 0 <= narrowing["exact_agreement"] <= 1
    assert "phantoms" in report["note"]


@pytest.fixture(scope="module")
def patch_data(small_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("patches")
    export_dataset(
        AnnotationStore.open(small_cohort, create=False), "scorer", out, folds=3, patch_size=32
    )
    return out


def _tiny_training_run(configs: str, patch_data: Path, *extra: str) -> list[str]:
    """``monai.bundle run`` arguments of a one-epoch training of a very small network."""
    return [
        "run",
        "--config_file",
        configs,
        "--meta_file",
        "configs/metadata.json",
        "--bundle_root",
        ".",
        "--dataset_dir",
        str(patch_data),
        *extra,
        *TINY_TRAINING,
    ]


def test_training_config_runs_and_saves_weights(patch_data, tmp_path):
    train = "['configs/train.json','configs/quick.json']"
    _run(bundle_cmd(*_tiny_training_run(train, patch_data, "--ckpt_dir", str(tmp_path))))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert any(k.startswith("unet.") for k in state)


def test_symmetry_config_fits_on_a_project_with_its_parameters(small_cohort, tmp_path, monkeypatch):
    """train_symmetry.json's run step (in process: the same ConfigParser as monai.bundle run):
    too few patients are refused; the config's target and max_features (the RA2-DREAM forests:
    target "score") end up in the fitted model - they used to stop at fit_symmetry_from_bundle."""
    from annotation_tools.bundles import bundle_parser

    out = tmp_path / "symmetry.skops"
    scored: dict[str, Any] = {}
    real = JointScorer.score_patches

    def score_once(self, patch_set, *args, **kwargs):  # the same patches are scored once
        key = repr(patch_set.meta)
        if key not in scored:
            scored[key] = real(self, patch_set, *args, **kwargs)
        return scored[key]

    monkeypatch.setattr(JointScorer, "score_patches", score_once)

    def run(stores: list[str]) -> None:
        overrides = {"tree_store": stores, "symmetry_file": str(out), "n_estimators": 3}
        overrides |= {"max_depth": 2, "target": "score", "max_features": 0.5}
        bundle_parser(BUNDLE, ["configs/train_symmetry.json"], overrides).get_parsed_content("run")

    with pytest.raises(Exception) as failed:  # three patients are too few
        run([str(small_cohort)])
    assert "at least 5" in str(failed.value.__cause__ or failed.value.__context__)
    assert not out.exists()
    run([str(small_cohort)] * 2)  # the fixture twice: 6 rows, enough for the minimum of 5
    model = SymmetryModel.load(out)
    assert (model.target, model.max_features, model.n_estimators) == ("score", 0.5, 3)
    assert model.info["patients"] == 6 and model.fitted_keys
    # the old call dropped both: the model came back as ("residual", 1.0) whatever the config
    assert model.info["projects"] == [str(small_cohort)] * 2


def test_multi_gpu_config_trains_with_two_processes(patch_data, tmp_path):
    ranks = tmp_path / "ranks"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "monai.bundle",
            *_tiny_training_run(
                "['configs/train.json','configs/quick.json','configs/multi_gpu_train.json']",
                patch_data,
                "--ckpt_dir",
                str(tmp_path / "ckpt"),
                "--rank_weights_dir",
                str(ranks),
            ),
        ]
    )
    a = torch.load(ranks / "rank0.pt", weights_only=True)
    b = torch.load(ranks / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])  # DDP kept the ranks in step


def test_predict_cli_runs_the_whole_pipeline(full_res_pair, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    with AnnotationStore.open(full_res_pair, create=False) as store:
        for record in store.images(patient_id="S21-P0002"):
            if record.modality == "radiograph":
                shutil.copy(store.resolve(record), images)
    (images / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", "--images", str(images), "--out", str(out), "--quiet"])
    assert code == 3  # one file could not be used: said, the rest is scored
    assert "notes.png" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    (patient,) = summary["patients"]
    assert patient["patient_id"] == "S21-P0002" and patient["symmetry"]
    assert len(list((out / "joints").glob("*.json"))) == 4
    assert (out / patient["shap_png"]).exists()
    assert summary["failed_files"][0]["file"].endswith("notes.png")


def test_benchmark_compares_variants_and_times_a_patient(full_res_pair, tmp_path, capsys):
    variant = tmp_path / "plain"
    variant.mkdir()
    torch.save(
        {"model": build_scorer("plain", "regression").state_dict()}, variant / "model.pt"
    )  # an untrained variant: the table must still list it
    (variant / "config.json").write_text(json.dumps({"variant": "plain", "head": "regression"}))
    out = tmp_path / "bench.json"
    code = main(
        [
            "benchmark",
            "--task",
            "scorer",
            "--heldout",
            str(full_res_pair),
            "--compare",
            str(variant),
            "--out",
            str(out),
            "--resamples",
            "100",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    names = [v["name"] for v in result["variants"]]
    assert names[1] == "plain / regression" and "symmetry" in names[-1]
    shipped, untrained = result["variants"][0], result["variants"][1]
    assert shipped["narrowing"]["rmse"] < untrained["narrowing"]["rmse"]
    assert result["speed"]["seconds_per_patient_median"] > 0
    assert "seg_guided_vs_plain_narrowing" in result["tests"]
    # the human upper limit: the model and reader A, each against reader B (Li & Guan Fig. 10)
    readers = result["readers"]
    assert list(readers["rows"]) == [
        "model vs rater B", "rater A vs rater B", "model vs rater A", "model vs truth",
        "rater A vs truth",
    ]  # fmt: skip
    assert readers["rows"]["rater A vs rater B"]["narrowing"]["exact_agreement"] < 0.95
    assert readers["rows"]["model vs truth"]["narrowing"] == result["end_to_end"]["narrowing"]
    paired = readers["model_vs_rater_a_against_rater_b"]["narrowing"]
    assert 0 <= paired["p_value"] <= 1 and paired["rmse_a"] != paired["rmse_b"]
    out_text = capsys.readouterr().out
    assert "Phantom figures" in out_text and "Human upper limit" in out_text


def test_predict_splits_a_cohort_across_two_torchrun_processes(
    small_cohort, small_cohort_predicted, tmp_path
):
    """Each rank takes whole patients; rank 0 merges; the result equals one process's."""
    # one process's result: the session's `predict --images --no-explain` of the same folder
    # (the report test reads it too, so the suite predicts the small cohort once)
    single, sharded = small_cohort_predicted, tmp_path / "sharded"
    images = str(small_cohort / "radiographs")
    _run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "annotation_tools.cli", "predict", "--images", images, "--out", str(sharded),
            "--no-explain", "--quiet",
        ]
    )  # fmt: skip
    assert not list(sharded.glob("*.rank*"))  # merged and cleaned up
    with (
        open(single / "scores_ra2dream.csv", newline="") as a,
        open(sharded / "scores_ra2dream.csv", newline="") as b,
    ):
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["Patient_ID"] for r in rows_a] == [r["Patient_ID"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ra:
            if key != "Patient_ID" and ra[key]:
                assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-4)
    with (
        open(single / "joint_scores.csv", newline="") as a,
        open(sharded / "joint_scores.csv", newline="") as b,
    ):
        sets_a, sets_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [(r["patient_id"], r["joint_id"], r["score_type"], r["set_low"], r["set_high"])
            for r in sets_a] == [(r["patient_id"], r["joint_id"], r["score_type"],
            r["set_low"], r["set_high"]) for r in sets_b]  # fmt: skip
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["ranks"] == 2 and len(summary["patients"]) == 3
    assert summary["grade_sets"]["calibrated"]
    assert len(list((sharded / "scores").glob("*.json"))) == 12


def test_patients_are_dealt_whole_to_ranks(small_cohort):
    from annotation_tools.cases import patient_of_file, shard_by_patient
    from annotation_tools.radiograph import image_files

    paths = image_files(small_cohort / "radiographs")
    shards = [shard_by_patient(paths, r, 2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(paths)
    patients = [{patient_of_file(p) for p in shard} for shard in shards]
    assert not patients[0] & patients[1] and len(patients[0] | patients[1]) == 3
    with pytest.raises(ValueError, match="rank 2"):
        shard_by_patient(paths, 2, 2)
