"""The ra_multitask_unet bundle through MONAI's own tooling, with the shipped ensemble.

Behaviour, not numbers: the shipped weights find the joints of held-out phantoms and grade
them in range; inference writes the two-stage pipeline's outputs; bad files are reported.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INFERENCE_CONFIG, bundle_cmd, run_here, run_in
from test_locator_bundle import METADATA_KEYS

from annotation_tools.export import export_dataset
from annotation_tools.imageio import read_image, write_dicom, write_png
from annotation_tools.multitask import MultitaskModel
from annotation_tools.phantoms import generate_cohort
from annotation_tools.store import AnnotationStore
from annotation_tools.vocabulary import get_joint

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_multitask_unet"
MEMBERS = json.loads((BUNDLE / "models" / "ensemble.json").read_text())["members"]
DREAM_COLUMNS = {"Patient_ID", "Overall_Tol", "Overall_erosion", "Overall_narrowing"}


def _run(cmd: list[str], timeout: int = 900):
    return run_in(BUNDLE, cmd, timeout)


def _infer(dataset_dir: Path, out: Path, *extra: str) -> None:
    _run(
        bundle_cmd(
            "run",
            *INFERENCE_CONFIG,
            "--dataset_dir",
            str(dataset_dir),
            "--output_dir",
            str(out),
            *extra,
        )
    )


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Two patients of a seed the shipped weights never saw (training used seed 100)."""
    out = tmp_path_factory.mktemp("mt_heldout") / "project"
    generate_cohort(out, 2, seed=778, us_pairs=1, workers=1, progress=False, style="schematic")
    return out


def test_bundle_layout_follows_the_model_zoo():
    for rel in [
        "configs/metadata.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
        "configs/quick.json",
        "configs/logging.conf",
        "models/ensemble.json",
        "scripts/train_quick.sh",
        "docs/README.md",
        "LICENSE",
    ]:
        assert (BUNDLE / rel).exists(), rel
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    assert set(meta) >= METADATA_KEYS
    assert meta["version"] in meta["changelog"]
    assert "not for clinical use" in meta["intended_use"].lower()
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 34
    assert len(MEMBERS) >= 2  # the issue asks for an ensemble of at least two quick models
    for member in MEMBERS:
        path = BUNDLE / "models" / member["file"]
        assert path.stat().st_size < 15 * 2**20
        torch.load(path, weights_only=True)  # plain tensors, no pickled code


def test_verify_net_in_out():
    run_here(BUNDLE, bundle_cmd("verify_net_in_out", "network_def", *INFERENCE_CONFIG))


def test_torchscript_export_matches_one_member(tmp_path):
    target = tmp_path / "model.ts"
    ckpt = f"models/{MEMBERS[0]['file']}"
    export = ["ckpt_export", "network_def", "--filepath", str(target), "--ckpt_file", ckpt]
    run_here(BUNDLE, bundle_cmd(*export, *INFERENCE_CONFIG))
    scripted = torch.jit.load(str(target))
    model = MultitaskModel.from_bundle(BUNDLE, device="cpu", members=1)
    x = torch.rand(1, 3, 288, 256)
    with torch.no_grad():
        member = model.network.members[0]
        np.testing.assert_allclose(scripted(x).numpy(), member(x).numpy(), atol=1e-3)


def test_inference_writes_the_two_stage_outputs_and_store_revisions(heldout, tmp_path):
    out = tmp_path / "pred"
    _infer(heldout / "radiographs", out, "--store", str(heldout))
    assert {p.name for p in out.iterdir()} >= {
        "joints",
        "scores",
        "scores_ra2dream.csv",
        "joint_scores.csv",
        "summary.json",
    }
    header = (out / "scores_ra2dream.csv").read_text().splitlines()[0].split(",")
    assert set(header) >= DREAM_COLUMNS and "LH_mcp_E__1" in header
    store = AnnotationStore.open(heldout, create=False)
    found = total = 0
    for path in sorted((out / "joints").glob("*.json")):
        located = json.loads(path.read_text())
        scored = json.loads((out / "scores" / path.name).read_text())
        record = store.find_image(located["image"])
        assert located["limb"] == record.limb == scored["limb"]
        assert "not for clinical use" in located["note"]
        truth = store.centres(record.id, sources=["phantom"])
        assert set(located["joints"]) == set(truth) == set(scored["joints"])
        diagonal = np.hypot(record.width, record.height)
        for joint_id, joint in located["joints"].items():
            score = scored["joints"][joint_id]
            total += 1
            if joint["missing"]:
                assert score["stage"] == "missing" and score["narrowing"] is None
                continue
            t = truth[joint_id].value
            found += np.hypot(joint["x"] - t["x"], joint["y"] - t["y"]) <= 0.02 * diagonal
            spec = get_joint(joint_id)
            for score_type in ("narrowing", "erosion"):
                value = score[score_type]
                if not spec.carries(score_type):
                    assert value is None
                    continue
                assert 0 <= value <= spec.max_score(score_type), (joint_id, score_type, value)
                assert score[f"{score_type}_sd"] >= 0
        # centres and scores went into the store as this bundle's proposals, beside the truth
        model = store.centres(record.id, sources=["model"])
        assert set(model) == set(truth)
        assert {r.author for r in model.values()} == {"ra_multitask_unet"}
        proposed = store.scores(record.id, sources=["model"])
        assert proposed and all(r.value["set_low"] is not None for r in proposed.values())
    store.close()
    assert found >= 0.8 * total, (found, total)  # quick model: most joints, not all
    # every grade with its conformal set (the shipped calibration fits the default member)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grade_sets"]["calibrated"] and summary["grade_sets"]["coverage"] == 0.9
    sets = (out / "joint_scores.csv").read_text().splitlines()[1:]
    assert sets and all(row.split(",")[4] != "" for row in sets)


def test_scores_follow_the_phantom_damage(heldout, tmp_path):
    """Joints the phantom damaged more get higher scores (rank correlation, all joints)."""
    from scipy.stats import spearmanr

    model = MultitaskModel.from_bundle(BUNDLE, device="cpu")
    with AnnotationStore.open(heldout, create=False) as store:
        records = store.images(modality="radiograph")
        items = [(str(store.resolve(r)), read_image(store.resolve(r)), r.limb) for r in records]
        preds = model.predict_images(items)
        truth, predicted = [], []
        for record, pred in zip(records, preds, strict=True):
            for (joint_id, score_type), rev in store.scores(record.id).items():
                value = pred.scores.get(joint_id, {}).get(score_type)
                if value is not None:
                    truth.append(rev.value["value"])
                    predicted.append(value)
    assert len(truth) > 100
    assert spearmanr(truth, predicted).statistic > 0.5


def test_evaluate_config_reports_locator_and_score_figures(heldout, tmp_path):
    out = tmp_path / "eval"
    _run(
        bundle_cmd(
            "run",
            "--config_file",
            "['configs/inference.json','configs/evaluate.json']",
            "--meta_file",
            "configs/metadata.json",
            "--bundle_root",
            ".",
            "--dataset_dir",
            str(heldout),
            "--output_dir",
            str(out),
            "--bootstrap_resamples",
            "50",
        )
    )
    report = json.loads((out / "metrics.json").read_text())
    assert report["locator"]["n_images"] == 8
    assert report["locator"]["by_region"]["all"]["within_0.02"] >= 0.8
    for score_type in ("narrowing", "erosion"):
        assert 0 <= report["scores"]["per_score"][score_type]["rmse"] < 2
    assert "phantoms" in report["note"]


def test_predict_command_runs_either_pipeline_with_bad_files_reported(
    heldout, tmp_path, rng, capsys
):
    from annotation_tools.cli import main

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = next((heldout / "radiographs").glob("*_LH.*"))
    shutil.copy(good, folder / good.name)
    (folder / "P9_LH.dcm").write_bytes(b"not a dicom at all" * 20)  # corrupt
    write_png(folder / "P8_RH.png", np.zeros((600, 500), np.uint16))  # all black
    write_png(folder / "P7_LF.png", (rng.random((24, 20)) * 255).astype(np.uint8))  # tiny
    foot = next((heldout / "radiographs").glob("*_LF.*"))
    write_dicom(
        folder / "wrong_limb.dcm",
        read_image(foot).pixels,
        patient_id="P6",
        laterality="L",
        body_part="HAND",
        bits_stored=12,
    )  # a foot labelled as a hand
    out = tmp_path / "out"
    args = ["predict", "--images", str(folder), "--out", str(out), "--quiet"]
    status = main([*args, "--pipeline", "multitask", "--members", "1"])
    assert status == 3  # the corrupt file was skipped and said so
    assert (out / "overlays" / f"{good.stem}.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(f["file"]).name: f["reason"] for f in summary["failed_files"]}
    assert set(failed) == {"P9_LH.dcm", "P7_LF.png"}  # a 24 x 20 image is no radiograph
    assert "too small" in failed["P7_LF.png"]
    assert summary["model"]["bundle"] == "ra_multitask_unet" and summary["model"]["members"] == "1"

    def joints(name):
        return json.loads((out / "joints" / f"{name}.json").read_text())

    assert not all(j["missing"] for j in joints(good.stem)["joints"].values())
    for name, reason in (
        ("P8_RH", "no contrast"),
        ("wrong_limb", "does not look like a hand"),
    ):
        result = joints(name)
        assert all(j["missing"] for j in result["joints"].values()), name
        assert any(reason in w for w in result["warnings"]), (name, result["warnings"])
    assert main([*args, "--members", "1"]) == 2  # a multitask option without the pipeline
    assert "belong to --pipeline multitask" in capsys.readouterr().err


def test_benchmark_puts_both_pipelines_in_one_table(heldout, tmp_path, capsys):
    from annotation_tools.cli import main

    out = tmp_path / "bench" / "multitask.json"
    argv = ["benchmark", "--task", "multitask", "--heldout", str(heldout), "--patients", "2"]
    assert main([*argv, "--out", str(out), "--resamples", "50", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    names = [row["name"] for row in result["pipelines"]]
    assert names[0].startswith("two-stage") and any("ensemble" in n for n in names)
    for row in result["pipelines"]:
        assert row["seconds_per_radiograph_median"] > 0 and row["peak_rss_mb"] > 100
        assert 0 <= row["narrowing"]["rmse"] < 4 and row["locator"]["n_images"] == 8
    paired = result["paired_two_stage_vs_multitask"]["narrowing"]
    assert paired["joints"] > 0 and paired["better"]
    assert result["ensemble_vs_single"] is not None
    markdown = out.with_suffix(".md").read_text()
    assert "| pipeline |" in markdown and "Better:" in markdown and "Phantom figures" in markdown


def test_two_process_training_agrees_on_the_weights(small_cohort, tmp_path):
    data = tmp_path / "data"
    with AnnotationStore.open(small_cohort, create=False) as store:
        export_dataset(store, "multitask", data, folds=3, shape=(64, 64), radius=3, ignore_radius=4)
    ranks = tmp_path / "ranks"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
        "['configs/train.json','configs/quick.json','configs/multi_gpu_train.json']",
        "--meta_file", "configs/metadata.json", "--bundle_root", ".",
        "--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "ckpt"),
        "--spatial_size", "[64,64]", "--epochs", "1", "--batch_size", "2", "--val_interval", "1",
        "--rank_weights_dir", str(ranks),
    ]  # fmt: skip
    _run(cmd, timeout=900)
    a = torch.load(ranks / "rank0.pt", weights_only=True)
    b = torch.load(ranks / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert (tmp_path / "ckpt" / "model.pt").exists()  # rank 0 saved the checkpoint
