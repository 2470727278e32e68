"""The ``ra_us_rating`` MONAI bundle: layout, MONAI tooling, inference, store, training configs."""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bundle_cmd, check_bundle_layout, run_here, run_in

from annotation_tools.rating import is_valid_pair

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_us_rating"
META = ("--meta_file", "configs/metadata.json", "--bundle_root", ".")
INFERENCE = ("--config_file", "configs/inference.json", *META)
# a very small network and one epoch: these tests check the configs run, not accuracy
TINY = ("--input_size", "64", "--widen_factor", "0.125", "--hidden", "16", "--batch_size", "4")
TINY_EPOCHS = ("--finetune_epochs", "1", "--fusion_epochs", "1", "--val_interval", "1")
TINY_JIGSAW = ("--cell", "22", "--tile", "20", "--n_permutations", "10", "--jigsaw_epochs", "1")
TRAIN = "['configs/train.json','configs/quick.json']"


@pytest.fixture(scope="module")
def us_data(small_cohort, tmp_path_factory):
    from annotation_tools.export import export_dataset
    from annotation_tools.store import AnnotationStore

    out = tmp_path_factory.mktemp("us_data")
    with AnnotationStore.open(small_cohort, create=False) as store:
        export_dataset(store, "ultrasound", out, folds=3)
    return out


def test_bundle_has_the_model_zoo_layout_and_metadata():
    meta = check_bundle_layout(
        BUNDLE,
        [
            "configs/metadata.json",
            "configs/train.json",
            "configs/train_jigsaw.json",
            "configs/inference.json",
            "configs/evaluate.json",
            "configs/multi_gpu_train.json",
            "configs/quick.json",
            "configs/logging.conf",
            "models/ensemble.json",
            "models/jigsaw_permutations.json",
            "docs/README.md",
            "LICENSE",
        ],
    )
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4
    assert len(meta["network_data_format"]["outputs"]["pred"]["channel_def"]) == 9
    manifest = json.loads((BUNDLE / "models/ensemble.json").read_text())
    assert len({m["fold"] for m in manifest["members"]}) >= 2  # MULTITUDE needs several folds
    for member in manifest["members"]:
        assert (BUNDLE / "models" / member["file"]).exists()
    perms = json.loads((BUNDLE / "models/jigsaw_permutations.json").read_text())
    assert len({tuple(p) for p in perms["permutations"]}) == perms["n"]


def test_verify_net_in_out_and_torchscript_export(tmp_path):
    run_here(BUNDLE, bundle_cmd("verify_net_in_out", "network_def", *INFERENCE))
    member = json.loads((BUNDLE / "models/ensemble.json").read_text())["members"][0]["file"]
    target = tmp_path / "member.ts"
    run_here(
        BUNDLE,
        bundle_cmd(
            "ckpt_export", "network_def", "--filepath", str(target),
            "--ckpt_file", f"models/{member}", *INFERENCE,
        ),
    )  # fmt: skip
    from annotation_tools.us_rating import load_ensemble

    network = json.loads((BUNDLE / "models/ensemble.json").read_text())["network"]
    eager = load_ensemble(BUNDLE / "models", **network).members[0]
    scripted = torch.jit.load(str(target))
    x = torch.rand(2, 4, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-4)


def test_shipped_ensemble_grades_fresh_phantom_pairs():
    """Behaviour, not a number: on pairs it never saw, most grades are right, none invalid."""
    from annotation_tools.phantoms import render_ultrasound
    from annotation_tools.ultrasound import prepare_pair
    from annotation_tools.us_rating import load_ensemble

    network = json.loads((BUNDLE / "models/ensemble.json").read_text())["network"]
    ensemble = load_ensemble(BUNDLE / "models", **network)
    rng = np.random.default_rng(777)
    truth, inputs = [], []
    for sh, vasc in [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (3, 0)] * 2:
        us = render_ultrasound("L_mcp_2", sh, vasc, rng)
        inputs.append(prepare_pair(us.greyscale, us.doppler, us.roi).network_input())
        truth.append(max(sh, vasc))
    x = torch.as_tensor(np.stack(inputs), dtype=torch.float32) / 255.0
    with torch.no_grad():
        decisions = ensemble.decide(ensemble(x).numpy())
    combined = np.array([d["combined"] for d in decisions])
    assert all(is_valid_pair(d["synovial_hypertrophy"], d["vascularity"]) for d in decisions)
    assert np.mean(np.abs(combined - np.array(truth)) <= 1) >= 0.9
    assert np.mean(combined == np.array(truth)) >= 0.6


def _pairs_table_with_bad_rows(small_cohort, root):
    shutil.copytree(small_cohort / "ultrasound", root / "ultrasound")
    with open(small_cohort / "ultrasound_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    bad = [
        {**rows[0], "site": "no_roi", "roi_x0": "", "roi_y0": "", "roi_x1": "", "roi_y1": ""},
        {**rows[1], "site": "grey_as_doppler", "doppler": rows[1]["greyscale"]},
    ]
    with open(root / "ultrasound_scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + bad)
    return rows


def test_inference_grades_a_folder_explains_and_lists_bad_pairs(small_cohort, tmp_path):
    data = tmp_path / "pairs"
    rows = _pairs_table_with_bad_rows(small_cohort, data)
    out = tmp_path / "out"
    run_in(
        BUNDLE,
        bundle_cmd(
            "run", *INFERENCE, "--dataset_dir", str(data), "--output_dir", str(out),
            "--explain_steps", "4", "--explain_copies", "1", "--explain_members", "1",
        ),
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_graded"] == len(rows) and summary["n_pairs"] == len(rows) + 2
    reasons = {f["case"].split("_", 1)[1]: f["reason"] for f in summary["failed"]}
    assert "no ROI box" in reasons["no_roi"] and "grey-scale" in reasons["grey_as_doppler"]
    with open(out / "ultrasound_grades.csv", newline="") as handle:
        graded = list(csv.DictReader(handle))
    assert len(graded) == len(rows)
    for row in graded:
        sh, vasc, comb = (int(row[k]) for k in ("synovial_hypertrophy", "vascularity", "combined"))
        assert is_valid_pair(sh, vasc) and comb == max(sh, vasc) and 0 <= comb <= 3
        assert 0.0 <= float(row["uncertainty"]) < 1.0
    record = json.loads(next(p for p in out.glob("*.json") if p.name != "summary.json").read_text())
    assert set(record["votes"]) == {"synovial_hypertrophy", "vascularity"}
    heat = np.load(out / record["heatmaps"]["synovial_hypertrophy"])
    assert heat.shape == (224, 224) and heat.max() == pytest.approx(1.0) and heat.min() == 0.0
    assert (out / record["heatmaps"]["vascularity"].replace(".npy", ".png")).exists()


def test_inference_writes_model_revisions_and_evaluation_reads_them(small_cohort, tmp_path):
    from annotation_tools.store import TRAINING_SOURCES, AnnotationStore

    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    with AnnotationStore.open(project, create=False) as store:
        before = {
            p["id"]: store.us_score(p["id"], sources=TRAINING_SOURCES).value
            for p in store.us_pairs()
        }
    run_in(
        BUNDLE,
        bundle_cmd(
            "run", *INFERENCE, "--store", str(project), "--write_store", "True",
            "--explain", "False", "--output_dir", str(tmp_path / "out"),
        ),
    )  # fmt: skip
    with AnnotationStore.open(project, create=False) as store:
        for pair_id, truth in before.items():
            assert store.us_score(pair_id, sources=TRAINING_SOURCES).value == truth
            predicted = store.us_score(pair_id, sources=["model"])
            assert predicted is not None and predicted.author == "ra_us_rating"
            assert len(predicted.weights_hash) == 64
            # the shipped ensemble is calibrated: its sets live in the model revision
            assert set(predicted.grade_sets) == {"synovial_hypertrophy", "vascularity", "combined"}
            assert 0 < predicted.value["coverage"] < 1
    figures_dir = tmp_path / "eval"
    run_in(
        BUNDLE,
        bundle_cmd(
            "run", "--config_file", "['configs/inference.json','configs/evaluate.json']", *META,
            "--store", str(project), "--output_dir", str(figures_dir), "--n_resamples", "20",
        ),
    )  # fmt: skip
    figures = json.loads((figures_dir / "metrics.json").read_text())
    assert figures["n_pairs"] == len(before)
    assert 0.0 <= figures["combined"]["accuracy"]["value"] <= 1.0
    assert figures["ablations"]["multitude_invalid_pairs"] == 0
    assert set(figures["ablations"]) >= {"majority_vote", "single_model", "greyscale_only_sh"}


def test_jigsaw_and_three_training_stages_run_from_the_configs(us_data, tmp_path, monkeypatch):
    """The command lines a user types, parsed by MONAI's own entry point; run in this process
    (as the retraining runs them: annotation_tools.bundle_steps) to spare five imports of MONAI."""
    from annotation_tools.bundle_steps import run_command

    monkeypatch.chdir(BUNDLE)
    ckpt = tmp_path / "ckpt"
    common = ("--dataset_dir", str(us_data), "--ckpt_dir", str(ckpt), *TINY)
    for modality in ("greyscale", "doppler_transformed"):
        run_command(
            bundle_cmd(
                "run", "--config_file", "['configs/train_jigsaw.json','configs/quick.json']",
                *META, *common, *TINY_JIGSAW, "--modality", modality,
            )
        )  # fmt: skip
    assert json.loads((ckpt / "jigsaw_permutations.json").read_text())["n"] == 10
    jigsaw_grey = torch.load(ckpt / "jigsaw_greyscale.pt", weights_only=True)
    states = {}
    for stage in ("grey", "doppler", "fusion"):
        run_command(
            bundle_cmd(
                "run", "--config_file", TRAIN, *META, *common, *TINY_EPOCHS,
                "--stage", stage, "--jigsaw_dir", str(ckpt),
            )
        )  # fmt: skip
        state = torch.load(ckpt / "member_f0_s0_k123.pt", weights_only=True)
        states[stage] = state.get("model", state)
    grey, doppler, fusion = states["grey"], states["doppler"], states["fusion"]
    # grey stage started from the jigsaw weights and moved away from them
    assert not torch.equal(grey["grey.conv1.weight"], jigsaw_grey["conv1.weight"])
    # later stages leave what earlier stages trained untouched
    torch.testing.assert_close(doppler["grey.conv1.weight"], grey["grey.conv1.weight"])
    torch.testing.assert_close(fusion["doppler.conv1.weight"], doppler["doppler.conv1.weight"])
    assert not torch.equal(fusion["fusion_head.0.weight"], doppler["fusion_head.0.weight"])


def test_multi_gpu_config_trains_a_stage_with_two_processes(us_data, tmp_path):
    ranks = tmp_path / "ranks"
    run_in(
        BUNDLE,
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "-m", "monai.bundle", "run",
            "--config_file", TRAIN[:-1] + ",'configs/multi_gpu_train.json']",
            *META, "--dataset_dir", str(us_data), "--ckpt_dir", str(tmp_path / "ckpt"),
            *TINY, *TINY_EPOCHS, "--stage", "grey", "--pretrained", "False",
            "--rank_weights_dir", str(ranks),
        ],
    )  # fmt: skip
    a = torch.load(ranks / "rank0.pt", weights_only=True)
    b = torch.load(ranks / "rank1.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_benchmark_command_reports_ablations_and_targets(small_cohort, tmp_path, capsys):
    from annotation_tools.cli import main

    out = tmp_path / "bench" / "ultrasound.json"
    args = ["benchmark", "--task", "ultrasound", "--heldout", str(small_cohort), "--out", str(out)]
    # the shipped ensemble compared with itself: every discordance count must be zero
    extra = ["--heatmap-pairs", "0", "--resamples", "20"]
    assert main([*args, "--compare", str(BUNDLE / "models"), *extra]) == 0
    result = json.loads(out.read_text())
    assert result["heldout"]["pairs"] == 6
    names = [m["name"] for m in result["models"]]
    assert names[0].startswith("MULTITUDE") and len(names) == 5
    assert result["models"][0]["invalid_pairs"] == 0
    assert result["tests"]["shipped_vs_models"]["only_first_right"] == 0
    assert result["tests"]["shipped_vs_models"]["only_second_right"] == 0
    assert 0 < result["speed"]["seconds_per_pair_networks_median"] < 60
    assert set(result["targets"]["required"]) == set(result["targets"]) - {"required"}
    table = out.with_suffix(".md").read_text()
    assert "| plain majority vote |" in table and "Phantom figures" in table
    assert "Phantom figures" in capsys.readouterr().out


def test_predict_command_grades_a_pairs_table(small_cohort, tmp_path, capsys):
    from annotation_tools.cli import main

    data = tmp_path / "pairs"
    rows = _pairs_table_with_bad_rows(small_cohort, data)
    out = tmp_path / "out"
    args = ["predict", "--ultrasound", str(data / "ultrasound_scores.csv"), "--out", str(out)]
    assert main([*args, "--no-explain"]) == 3  # two unusable rows: reported, the rest graded
    captured = capsys.readouterr()
    assert f"graded {len(rows)} of {len(rows) + 2}" in captured.out
    assert "no ROI box" in captured.err
    with open(out / "ultrasound" / "ultrasound_grades.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert main(["predict", "--out", str(out)]) == 2
    assert "--images" in capsys.readouterr().err
