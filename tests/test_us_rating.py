"""RATING training pieces, ensemble decoding, cases and evaluation (no bundle process)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from annotation_tools.rating import (
    OUTPUTS,
    RatingMember,
    is_valid_pair,
    split_member_output,
    stage_branch,
    stage_grade_key,
)
from annotation_tools.ultrasound import UltrasoundInputError, prepare_pair
from annotation_tools.us_rating import RatingEnsemble, load_us_cases, rating_figures
from annotation_tools.us_training import (
    EcocTargetd,
    JigsawPuzzled,
    SplitAccuracy,
    balanced_weights,
    initialise_member,
    network_settings,
    pack_members,
    permutation_set,
)


def _member(splits=(1, 2, 3)):
    return RatingMember(splits, widen_factor=0.125, hidden=16).eval()


def test_member_outputs_three_groups_of_split_logits():
    member = _member()
    with torch.no_grad():
        logits = member(torch.rand(2, 4, 64, 64))
    assert logits.shape == (2, 9)
    groups = split_member_output(logits, 3)
    assert list(groups) == list(OUTPUTS)
    assert all(g.shape == (2, 3) and ((g >= 0) & (g <= 1)).all() for g in groups.values())
    with pytest.raises(ValueError, match="splits must be drawn"):
        RatingMember((0, 1))


def test_stage_branches_train_only_their_part():
    member = _member()
    x = torch.rand(2, 4, 64, 64)
    grey = stage_branch(member, "grey")
    grey(x).sum().backward()
    assert member.grey.conv1.weight.grad is not None and member.doppler.conv1.weight.grad is None
    # the grey-scale branch ignores the Doppler channels
    y = x.clone()
    y[:, 1:] = 0
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(x), grey(y))
    fusion = stage_branch(_member(), "fusion").train()
    assert not fusion.member.grey.training and not fusion.member.doppler.training
    trainable = {n for n, p in fusion.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("member.fusion_head.") for n in trainable)
    assert (
        stage_grade_key("doppler") == "vascularity" and stage_grade_key("fusion") != "vascularity"
    )
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_branch(member, "head")


def test_ecoc_targets_and_balanced_sampling():
    out = EcocTargetd("vascularity", splits=(1, 2, 3))({"vascularity": 2})
    assert out["label"].tolist() == [1.0, 1.0, 0.0]
    assert EcocTargetd("sh", splits=(3,))({"sh": 3})["label"].tolist() == [1.0]
    items = [{"g": 0}] * 6 + [{"g": 1}] * 2 + [{"g": 3}]
    weights = np.array(balanced_weights(items, "g"))
    grades = np.array([i["g"] for i in items])
    totals = [weights[grades == g].sum() for g in (0, 1, 3)]
    np.testing.assert_allclose(totals, 1.0)  # every present grade drawn equally often
    with pytest.raises(ValueError, match="no training items"):
        balanced_weights([], "g")


def test_jigsaw_transform_normalises_tiles_and_labels_them(tmp_path):
    perms = permutation_set(tmp_path / "perms.json", 12, seed=1)
    again = permutation_set(tmp_path / "perms.json", 12, seed=1)
    np.testing.assert_array_equal(perms, again)
    stored = json.loads((tmp_path / "perms.json").read_text())
    assert stored["min_hamming_distance"] >= 6 and len(stored["permutations"]) == 12
    with pytest.raises(ValueError, match="holds 12 permutations"):
        permutation_set(tmp_path / "perms.json", 30)
    puzzle = JigsawPuzzled("image", perms, cell=20, tile=16)
    puzzle.set_random_state(0)
    out = puzzle({"image": torch.rand(3, 60, 60) * 5 + 2})
    assert out["image"].shape == (9, 3, 16, 16) and 0 <= int(out["label"]) < 12
    means = out["image"].mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.zeros(9), atol=1e-4)


def test_split_accuracy_counts_binary_decisions():
    metric = SplitAccuracy()
    metric.reset()
    metric.update(
        (torch.tensor([[2.0, -1.0, -3.0], [1.0, 1.0, -1.0]]), torch.tensor([[1, 0, 0], [1, 0, 0]]))
    )
    assert metric.compute() == pytest.approx(5 / 6)


def test_stages_start_where_the_previous_stage_ended(tmp_path):
    member = _member()
    with pytest.raises(FileNotFoundError, match="run stage 'grey' first"):
        initialise_member(_member(), "doppler", tmp_path / "member_f0_s0_k123.pt")
    with pytest.raises(FileNotFoundError, match="train_jigsaw"):
        initialise_member(_member(), "grey", tmp_path / "m.pt", jigsaw_dir=tmp_path)
    torch.save({"model": member.state_dict()}, tmp_path / "member_f0_s0_k123.pt")
    torch.save({"model": member.doppler.state_dict()}, tmp_path / "jigsaw_doppler_transformed.pt")
    resumed = initialise_member(_member(), "doppler", tmp_path / "member_f0_s0_k123.pt", tmp_path)
    for key, value in member.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
    manifest = pack_members(tmp_path, tmp_path / "packed")
    document = json.loads(manifest.read_text())
    assert document["members"] == [
        {"file": "member_f0_s0_k123.pt", "fold": 0, "seed": 0, "splits": [1, 2, 3]}
    ]
    assert document["network"] == {"widen_factor": 0.125, "hidden": 16}
    packed = torch.load(tmp_path / "packed" / "member_f0_s0_k123.pt", weights_only=True)
    assert packed["grey.conv1.weight"].dtype == torch.float16
    with pytest.raises(ValueError, match="not a RatingMember"):
        network_settings({"w": torch.zeros(1)})


def _logits(prob_rows):
    p = np.clip(np.asarray(prob_rows, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def test_ensemble_votes_per_fold_and_multitude_stays_valid():
    members = [_member() for _ in range(3)]
    info = [{"fold": f, "seed": 0, "splits": [1, 2, 3]} for f in range(3)]
    ensemble = RatingEnsemble(members, info)
    # one case; per member [sh(3), vascularity(3), sh_grey(3)] probabilities
    sh0 = [0.1, 0.1, 0.1]  # SH 0
    sh1 = [0.9, 0.1, 0.1]  # SH 1
    v1 = [0.9, 0.1, 0.1]  # vascularity 1
    v0 = [0.1, 0.1, 0.1]
    rows = [sh0 + v1 + sh0, sh0 + v1 + sh0, sh1 + v0 + sh1]  # majority: SH 0, vasc 1 (invalid)
    (decision,) = ensemble.decide(_logits(rows)[None])
    assert decision["votes"] == {"synovial_hypertrophy": [0, 0, 1], "vascularity": [1, 1, 0]}
    assert is_valid_pair(decision["synovial_hypertrophy"], decision["vascularity"])
    assert decision["combined"] == max(decision["synovial_hypertrophy"], decision["vascularity"])
    assert not decision["ablations"]["majority_vote"]["valid"]
    assert decision["ablations"]["single_model"]["synovial_hypertrophy"] == 0
    assert 0 < decision["uncertainty"] < 1
    assert len(decision["split_probabilities"]["vascularity"]) == 3


def test_ensemble_decodes_one_network_per_split_and_seed():
    """The paper's layout: per fold, 3 single-split networks x 2 seeds (6 per score)."""
    info = [{"fold": 0, "seed": s, "splits": [k]} for k in (1, 2, 3) for s in (0, 1)]
    ensemble = RatingEnsemble([_member((i["splits"][0],)) for i in info], info)
    # split >=1 and >=2 say yes (both seeds), >=3 says no -> grade 2 for every output group
    rows = [[p, p, p] for p in (0.9, 0.8, 0.9, 0.7, 0.2, 0.1)]
    (decision,) = ensemble.decide(_logits(rows)[None])
    assert decision["synovial_hypertrophy"] == 2 and decision["vascularity"] == 2
    bad = RatingEnsemble([_member((1,)), _member((2,))], [info[0], info[2]])
    with pytest.raises(ValueError, match="does not cover the splits"):
        bad.decide(np.zeros((1, 2, 3)))


def test_rating_figures_report_grades_splits_and_ablations():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        sh = int(rng.integers(0, 4))
        v = 0 if sh == 0 else int(rng.integers(0, 4))
        truth = {"synovial_hypertrophy": sh, "vascularity": v, "combined": max(sh, v)}
        probs = [float(sh >= k) * 0.8 + 0.1 for k in (1, 2, 3)]
        vprobs = [float(v >= k) * 0.8 + 0.1 for k in (1, 2, 3)]
        bad = {"synovial_hypertrophy": 0, "vascularity": 1, "combined": 1, "valid": False}
        rows.append(
            {
                **truth,
                "truth": truth,
                "split_probabilities": {"synovial_hypertrophy": probs, "vascularity": vprobs},
                "ablations": {
                    "majority_vote": bad,
                    "single_model": {**truth, "valid": True},
                    "greyscale_only_sh": {**truth, "valid": True},
                },
            }
        )
    figures = rating_figures(rows, n_resamples=50)
    assert figures["combined"]["accuracy"]["value"] == 1.0
    assert figures["combined"]["linear_weighted_kappa"]["ci_low"] <= 1.0
    assert figures["synovial_hypertrophy"]["splits"][">=1"]["auc"] == 1.0
    assert figures["vascularity"]["per_grade"]["0"]["sensitivity"] == 1.0
    assert figures["ablations"]["majority_vote"]["invalid_pairs"] == 40
    assert figures["ablations"]["multitude_invalid_pairs"] == 0
    assert "phantom" in figures["note"].lower()
    with pytest.raises(ValueError, match="no graded case has true grades"):
        rating_figures([{"truth": None}])


def test_prepare_pair_rejects_each_bad_input_with_its_reason(rng):
    from annotation_tools.phantoms import render_ultrasound

    us = render_ultrasound("L_mcp_2", 2, 1, rng)
    ok = prepare_pair(us.greyscale, us.doppler, us.roi, size=64)
    assert ok.network_input().shape == (4, 64, 64) and ok.network_input().dtype == np.uint8
    cases = {
        "grey-scale": (us.greyscale, us.greyscale, us.roi),
        "no colour pixels": (us.greyscale, np.repeat(us.greyscale[..., None], 3, 2), us.roi),
        "differ in size": (us.greyscale[:-10], us.doppler, us.roi),
        "zero area": (us.greyscale, us.doppler, (5, 5, 5, 40)),
        "outside": (us.greyscale, us.doppler, (5000, 5000, 5100, 5100)),
    }
    for reason, (grey, dop, roi) in cases.items():
        with pytest.raises(UltrasoundInputError, match=reason):
            prepare_pair(grey, dop, roi)


def test_pairs_table_cases_skip_bad_rows_with_reasons(small_cohort, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(small_cohort / "ultrasound", project / "ultrasound")
    with open(small_cohort / "ultrasound_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (project / "ultrasound" / "broken.png").write_bytes(b"not a png")
    bad = [
        {**rows[0], "site": "no_roi", "roi_x0": "", "roi_y0": "", "roi_x1": "", "roi_y1": ""},
        {**rows[0], "site": "grey_as_doppler", "doppler": rows[0]["greyscale"]},
        {**rows[0], "site": "corrupt", "doppler": "ultrasound/broken.png"},
        {**rows[0], "site": "missing", "greyscale": "ultrasound/nothing.png"},
    ]
    with open(project / "ultrasound_scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + bad)
    cases = load_us_cases(project, size=64)
    assert len(cases.cases) == len(rows)
    reasons = {f["case"].split("_", 1)[1]: f["reason"] for f in cases.failed}
    assert "no ROI box" in reasons["no_roi"]
    assert "grey-scale" in reasons["grey_as_doppler"]
    assert "broken.png" in reasons["corrupt"] or "read" in reasons["corrupt"]
    assert "does not exist" in reasons["missing"]
    first = cases.cases[0]
    assert first.image.shape == (4, 64, 64) and first.truth["combined"] == int(rows[0]["combined"])
    with pytest.raises(FileNotFoundError, match="no pairs table"):
        load_us_cases(tmp_path / "empty")


def test_pairs_json_gives_the_same_cases_as_the_csv(small_cohort, tmp_path):
    with open(small_cohort / "ultrasound_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs = [
        {
            "patient_id": r["patient_id"],
            "site": r["site"],
            "greyscale": r["greyscale"],
            "doppler": r["doppler"],
            "roi": [float(r[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1")],
        }
        for r in rows
    ]
    pairs.append({**pairs[0], "site": "empty_roi", "roi": None})
    shutil.copytree(small_cohort / "ultrasound", tmp_path / "ultrasound")
    (tmp_path / "ultrasound_pairs.json").write_text(json.dumps({"pairs": pairs}))
    from_json = load_us_cases(tmp_path, size=32)  # found by its default name
    from_csv = load_us_cases(pairs_table=small_cohort / "ultrasound_scores.csv", size=32)
    assert [c.case_id for c in from_json.cases] == [c.case_id for c in from_csv.cases]
    np.testing.assert_array_equal(from_json.cases[0].image, from_csv.cases[0].image)
    assert from_json.cases[0].truth is None  # no grades given in the JSON
    (failed,) = from_json.failed
    assert "no ROI box" in failed["reason"] and "pairs[" in failed["file"]
