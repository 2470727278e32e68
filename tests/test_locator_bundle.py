"""The ra_joint_locator bundle through MONAI's own tooling, with the shipped weights."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INFERENCE_CONFIG, bundle_cmd, export_torchscript, run_here, run_in

from annotation_tools.evaluation import evaluate_locator_store
from annotation_tools.export import export_dataset
from annotation_tools.imageio import read_image, write_dicom, write_png
from annotation_tools.locator import JointLocator, evaluate_results
from annotation_tools.phantoms import generate_cohort
from annotation_tools.store import AnnotationStore

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_joint_locator"
WEIGHTS = BUNDLE / "models" / "model.pt"
METADATA_KEYS = {
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "name",
    "task",
    "description",
    "authors",
    "copyright",
    "data_source",
    "data_type",
    "image_classes",
    "label_classes",
    "pred_classes",
    "eval_metrics",
    "references",
    "intended_use",
    "network_data_format",
}


def _infer(dataset_dir: str | Path, out: Path, *extra: str) -> None:
    """The bundle's inference through MONAI's runner, as a user would call it."""
    _run(
        bundle_cmd(
            "run",
            "--config_file",
            "configs/inference.json",
            "--meta_file",
            "configs/metadata.json",
            "--bundle_root",
            ".",
            "--dataset_dir",
            str(dataset_dir),
            "--output_dir",
            str(out),
            *extra,
        )
    )


def _run(cmd: list[str], cwd: Path = BUNDLE, timeout: int = 600):
    return run_in(cwd, cmd, timeout)


def test_bundle_layout_follows_the_model_zoo():
    for rel in [
        "configs/metadata.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
        "configs/quick.json",
        "configs/logging.conf",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
    ]:
        assert (BUNDLE / rel).exists(), rel
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    assert set(meta) >= METADATA_KEYS
    assert meta["version"] in meta["changelog"]
    assert "not for clinical use" in meta["intended_use"].lower()
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["num_channels"] == 28
    assert WEIGHTS.stat().st_size < 10 * 2**20  # a few MB
    torch.load(WEIGHTS, weights_only=True)  # plain tensors, no pickled code


def test_verify_net_in_out():
    run_here(
        BUNDLE,
        bundle_cmd(
            "verify_net_in_out",
            "network_def",
            *INFERENCE_CONFIG,
        ),
    )


def test_torchscript_export_matches_the_network(tmp_path):
    target = tmp_path / "model.ts"
    export_torchscript(BUNDLE, target)
    scripted = torch.jit.load(str(target))
    locator = JointLocator.from_bundle(BUNDLE, device="cpu")
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), locator.network(x).numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Two patients of a seed the shipped weights never saw (training used seed 100)."""
    out = tmp_path_factory.mktemp("heldout") / "project"
    generate_cohort(out, 2, seed=777, us_pairs=1, workers=1, progress=False, style="schematic")
    return out


def test_inference_through_monai_bundle_run(heldout, tmp_path):
    out = tmp_path / "pred"
    _infer(str(heldout / "radiographs"), out, "--store", str(heldout))
    files = sorted(out.glob("*.json"))
    assert len(files) == 8
    store = AnnotationStore.open(heldout, create=False)
    for path in files:
        data = json.loads(path.read_text())
        record = store.find_image(data["image"])
        assert data["limb"] == record.limb  # named for the right limb, from tags or file name
        assert data["model"]["weights_sha256"] and "not for clinical use" in data["note"]
        truth = store.centres(record.id, sources=["phantom"])
        assert set(data["joints"]) == set(truth)
        hits = 0
        for joint_id, joint in data["joints"].items():
            assert 0 <= joint["confidence"] <= 1
            if joint["missing"]:
                continue
            t = truth[joint_id].value
            hits += np.hypot(joint["x"] - t["x"], joint["y"] - t["y"]) <= 0.02 * np.hypot(
                record.width, record.height
            )
        assert hits >= 0.9 * len(truth), (path.name, hits)
        # the prediction went into the store as a model revision, next to the phantom truth
        model = store.centres(record.id, sources=["model"])
        assert set(model) == set(truth)
        assert next(iter(model.values())).author == "ra_joint_locator"
    store.close()
    # the store's model revisions give the same figures through `ra-joints metrics locator`
    report = evaluate_locator_store(heldout)
    assert report["n_images"] == 8 and report["n_joints"] == 8 * 14
    assert report["by_region"]["all"]["within_0.02"] >= 0.9 and report["wrong_names"] == 0


def test_evaluate_config_reports_the_metrics_module_figures(heldout, tmp_path):
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
        )
    )
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_images"] == 8
    assert report["by_region"]["all"]["within_0.02"] >= 0.9
    assert report["wrong_names"] == 0
    assert "phantoms" in report["note"]


def test_in_process_locator_matches_the_runner_figures(heldout):
    store = AnnotationStore.open(heldout, create=False)
    paths = [str(store.resolve(im)) for im in store.images(modality="radiograph")]
    store.close()
    locator = JointLocator.from_bundle(BUNDLE, device="cpu")
    results, failed = locator.predict_files(paths)  # limb from DICOM tags or file names
    assert failed == []
    report = evaluate_results(results, heldout)
    assert report["by_region"]["all"]["within_0.02"] >= 0.9 and report["wrong_names"] == 0


def test_a_film_that_cannot_be_located_costs_only_itself(heldout, monkeypatch):
    """One film the decoder gives up on (the shape prior refuses it, as on a film unlike the
    training data) is listed with its reason, the rest are located, and the figures count its
    joints as missed instead of leaving them out."""
    import annotation_tools.locator as locator_module

    store = AnnotationStore.open(heldout, create=False)
    paths = [str(store.resolve(im)) for im in store.images(modality="radiograph")]
    store.close()
    real = locator_module.decode_result

    def refuse_first(prob, **kw):
        if kw["path"] == paths[0]:
            raise ValueError("the shape prior needs at least 3 other joints to predict one")
        return real(prob, **kw)

    monkeypatch.setattr(locator_module, "decode_result", refuse_first)
    locator = JointLocator.from_bundle(BUNDLE, device="cpu")
    results, failed = locator.predict_files(paths)
    assert [r.path for r in results] == paths[1:]
    assert failed == [
        (paths[0], "ValueError: the shape prior needs at least 3 other joints to predict one")
    ]
    located = evaluate_results(results, heldout)
    counted = evaluate_results(results, heldout, failed=failed)
    assert counted["by_region"]["all"]["n"] > located["by_region"]["all"]["n"]
    assert counted["detection_sensitivity"] < located["detection_sensitivity"]
    assert counted["not_located"] == [f"{paths[0]}: {failed[0][1]}"]
    # the whole pipeline too: the patient's other films are still scored
    from annotation_tools.predict import predict_images
    from annotation_tools.scoring import JointScorer

    scorer = JointScorer.from_bundle(BUNDLE.parent / "ra_joint_scorer", device="cpu")
    same_patient = [p for p in paths if Path(p).name.split("_")[0] in Path(paths[0]).name]
    result = predict_images([(p, read_image(p)) for p in same_patient], locator, scorer)
    assert [path for path, _ in result.failures] == [paths[0]]
    scored = {im.case.path for patient in result.patients for im in patient.images}
    assert scored == set(same_patient[1:]) and len(scored) >= 1


def test_bad_inputs_in_a_folder_are_reported_and_the_rest_runs(heldout, tmp_path, rng):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = next((heldout / "radiographs").glob("*_LH.*"))
    shutil.copy(good, folder / good.name)
    (folder / "P9_LH.dcm").write_bytes(b"not a dicom at all" * 20)  # corrupt
    write_png(folder / "P8_RH.png", np.zeros((600, 500), np.uint16))  # all black
    write_png(folder / "P7_LF.png", (rng.random((24, 20)) * 255).astype(np.uint8))  # tiny
    foot = next((heldout / "radiographs").glob("*_LF.*"))
    foot_pixels = read_image(foot).pixels
    write_dicom(
        folder / "wrong_limb.dcm",
        foot_pixels,
        patient_id="P6",
        laterality="L",
        body_part="HAND",
        bits_stored=12,
    )  # a foot labelled as a hand
    grey8 = (foot_pixels / 16).astype(np.uint8)
    write_png(
        folder / "P5_RF_colour.png",
        np.repeat(grey8[..., None], 3, 2) + np.array([0, 0, 1], np.uint8),
    )  # an RGB export of a foot radiograph
    out = tmp_path / "pred"
    _infer(str(folder), out)
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert len(results) == 6  # every file got an answer

    def missing(name):
        return all(j["missing"] for j in results[name]["joints"].values())

    assert not missing(good.stem)
    assert missing("P9_LH") and "unreadable" in results["P9_LH"]["warnings"][0]
    assert missing("P8_RH") and any("no contrast" in w for w in results["P8_RH"]["warnings"])
    assert missing("P7_LF") and any("too small" in w for w in results["P7_LF"]["warnings"])
    assert missing("wrong_limb") and any(
        "does not look like a hand" in w for w in results["wrong_limb"]["warnings"]
    )
    colour = results["P5_RF_colour"]
    assert any("colour image" in w for w in colour["warnings"]) and not missing("P5_RF_colour")


def test_two_process_training_agrees_on_the_weights(small_cohort, tmp_path):
    data = tmp_path / "data"
    with AnnotationStore.open(small_cohort, create=False) as store:
        export_dataset(store, "locator", data, folds=3, size=64)
    ranks = tmp_path / "ranks"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/train.json','configs/quick.json','configs/multi_gpu_train.json']",
        "--meta_file",
        "configs/metadata.json",
        "--bundle_root",
        ".",
        "--dataset_dir",
        str(data),
        "--ckpt_dir",
        str(tmp_path / "ckpt"),
        "--spatial_size",
        "[64,64]",
        "--network_channels",
        "[4,8,16,32,32]",
        "--network_strides",
        "[2,2,2,2]",
        "--epochs",
        "1",
        "--batch_size",
        "2",
        "--val_interval",
        "1",
        "--rank_weights_dir",
        str(ranks),
    ]
    _run(cmd, timeout=900)
    a = torch.load(ranks / "rank0.pt", weights_only=True)
    b = torch.load(ranks / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert (tmp_path / "ckpt" / "model.pt").exists()  # rank 0 saved the checkpoint


def test_benchmark_command_writes_json_and_markdown(heldout, tmp_path, capsys):
    from annotation_tools.cli import main

    out = tmp_path / "bench" / "locator.json"
    assert (
        main(
            [
                "benchmark",
                "--task",
                "locator",
                "--heldout",
                str(heldout),
                "--patients",
                "2",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["heldout"]["radiographs"] == 8
    assert result["heldout"]["seed"] == 777  # the project's own seed, not --seed's default
    assert {"finger", "wrist", "thumb", "toe", "all"} <= set(result["accuracy"]["by_region"])
    assert set(result["accuracy"]["by_region_diagonal"]) == set(result["accuracy"]["by_region"])
    assert result["speed"]["seconds_per_radiograph_wall"] > 0
    assert result["speed"]["peak_rss_mb"] > 0
    assert "clinical" in result["note"]
    table = out.with_suffix(".md").read_text()
    assert "| wrist |" in table and "wrongly named joints" in table
    assert "x / image width, y / image height" in table and "/ diagonal" in table
    assert "Phantom figures" in capsys.readouterr().out
