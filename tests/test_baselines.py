"""Baselines the learned models must beat, and the broken variants that must lose."""

import numpy as np
import pytest

from annotation_tools import baselines as bl
from annotation_tools import metrics
from annotation_tools.ultrasound import SIGNAL_COLOUR
from annotation_tools.vocabulary import dream_column

MCP2_N = dream_column("LH_mcp_2", "narrowing")
MCP2_E = dream_column("LH_mcp_2", "erosion")
PIP3_N = dream_column("LH_pip_3", "narrowing")


def test_trivial_baselines_on_a_hand_made_table():
    train = {
        "A": {MCP2_N: 2.0, MCP2_E: 1.0, "Overall_Tol": 3.0},
        "B": {MCP2_N: 4.0, MCP2_E: 3.0},
    }
    means = bl.training_means(train)
    assert means[MCP2_N] == 3.0 and means[MCP2_E] == 2.0
    assert means["narrowing"] == 3.0 and "Overall_Tol" not in means
    truth = {"C": {MCP2_N: 1.0, MCP2_E: 0.0, PIP3_N: 2.0, "Overall_Tol": 3.0}}
    zeros = bl.all_zeros_table(truth)
    assert zeros == {"C": {MCP2_N: 0.0, MCP2_E: 0.0, PIP3_N: 0.0}}
    mean = bl.training_mean_table(truth, means)
    # PIP 3 was never graded in training: the narrowing mean stands in
    assert mean == {"C": {MCP2_N: 3.0, MCP2_E: 2.0, PIP3_N: 3.0}}
    with pytest.raises(ValueError, match="no joint score"):
        bl.training_means({"A": {"Overall_Tol": 3.0}})


def _rating_input(dark_rows: int, flow_pixels: int) -> np.ndarray:
    x = np.full((4, 32, 32), 150, np.uint8)
    x[0, :dark_rows] = 20  # anechoic band
    flat = x[1:4].reshape(3, -1)
    flat[:, :flow_pixels] = np.asarray(SIGNAL_COLOUR, np.uint8)[:, None]
    return x


def test_us_pixel_features_respond_to_dark_and_colour_pixels():
    few = bl.us_pixel_features(_rating_input(4, 10))
    many = bl.us_pixel_features(_rating_input(16, 300))
    assert few[0] == pytest.approx(4 / 32) and many[0] == pytest.approx(16 / 32)
    assert few[-1] == pytest.approx(10 / 1024) and many[-1] == pytest.approx(300 / 1024)
    with pytest.raises(ValueError, match=r"\(4, S, S\)"):
        bl.us_pixel_features(np.zeros((3, 8, 8), np.uint8))


def _joint_patch(gap: int, horizontal: bool = False) -> np.ndarray:
    """Two bright bone ends along the vertical with a dark joint space of ``gap`` rows."""
    p = np.zeros((64, 64), np.float32)
    p[:, 24:40] = 0.9
    p[32 - gap // 2 : 32 - gap // 2 + gap, 24:40] = 0.1
    return p.T.copy() if horizontal else p


def test_gap_profile_measures_the_joint_space_along_the_bone():
    narrow, wide = (bl.gap_profile_features(_joint_patch(g)) for g in (4, 12))
    width = bl.GAP_FEATURES.index("gap_width")
    assert wide[width] > narrow[width] + 6 and narrow[width] == pytest.approx(4, abs=1.5)
    assert wide[bl.GAP_FEATURES.index("gap_depth")] == pytest.approx(0.8, abs=0.05)
    # the same joint lying sideways: the profile follows the bone axis, not the image rows
    sideways = bl.gap_profile_features(_joint_patch(12, horizontal=True))
    assert sideways[width] == pytest.approx(wide[width], abs=1.0)
    np.testing.assert_allclose(np.abs(bl.bone_axis(_joint_patch(4, True))), [0, 1], atol=0.05)


def test_patient_shuffled_labels_come_from_other_patients():
    ids = np.repeat(np.arange(6), 4)
    keys = np.tile([0, 0, 1, 2], 6)  # two cases of key 0 per patient (left and right)
    labels = ids * 10 + np.tile([0, 1, 2, 3], 6)
    out = bl.patient_shuffled(labels, ids, keys, seed=1)
    donors = out // 10
    assert np.all(donors != ids)  # nobody keeps their own labels
    for p in range(6):  # one donor per patient, the same joint (and side) of that donor
        assert len(set(donors[ids == p])) == 1
    np.testing.assert_array_equal(out % 10, labels % 10)
    assert not np.array_equal(out, bl.patient_shuffled(labels, ids, keys, seed=2))


def test_shuffled_labels_fall_to_chance_where_real_labels_do_not():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 6)
    y = rng.integers(0, 3, ids.size)
    x = np.stack([y + rng.normal(0, 0.3, y.size), rng.normal(0, 1, y.size)], 1)
    train, test = ids < 30, ids >= 30
    scores = {}
    for shuffled in (False, True):
        model = bl.PixelBaseline("classifier", shuffled=shuffled, seed=0)
        model.fit(x[train], y[train], ids[train])
        scores[shuffled] = metrics.accuracy(y[test], model.predict(x[test]))
    assert scores[False] > 0.9 and scores[True] < 0.55  # chance is 1/3
    reg = bl.PixelBaseline("regressor", shuffled=True, trees=20).fit(x[train], y[train], ids[train])
    assert abs(metrics.pearson_r(y[test], reg.predict(x[test]))) < 0.3


def test_beats_baseline_needs_the_margin_and_a_ci_below_zero():
    assert bl.beats_baseline(0.85, 1.0, 0.10)["beats"]
    short = bl.beats_baseline(0.95, 1.0, 0.10)
    assert not short["beats"] and "NOT beaten" in short["reason"] and short["required"] == 0.9
    unsure = bl.beats_baseline(0.80, 1.0, 0.10, ci=[-0.3, 0.02])
    assert not unsure["beats"] and "does not exclude 0" in unsure["reason"]
    assert bl.beats_baseline(0.80, 1.0, 0.10, ci=[-0.3, -0.05])["beats"]
    perfect = bl.beats_baseline(0.0, 0.0, 0.10, ci=[0.0, 0.0])
    assert not perfect["beats"] and "already perfect" in perfect["reason"]
    assert bl.falls_to_chance({"ci": [-0.1, 0.05]})["falls_to_chance"]
    assert not bl.falls_to_chance({"ci": [-0.3, -0.1]})["falls_to_chance"]


def test_baselines_task_reports_every_row_and_verdict(small_cohort):
    from annotation_tools.benchmark import _task
    from annotation_tools.benchmark_baselines import baselines_markdown, benchmark_baselines

    assert _task("baselines") == (benchmark_baselines, baselines_markdown)
    same = {k: small_cohort for k in ("radiograph", "ultrasound")}
    cohorts = {f"{k}_{part}": v for k, v in same.items() for part in ("train", "validation")}
    # the shipped models' rows are left out here (learned=False): loading them costs the suite
    result = benchmark_baselines(
        cohorts=cohorts, n_resamples=5, patients=3, us_patients=3, learned=False, trees=5
    )
    rad = [r["name"] for r in result["radiograph"]["rows"]]
    assert rad[:2] == ["all zeros (Li & Guan)", "training mean per joint (Li & Guan)"]
    assert len(rad) == 4 and "shuffled" in rad[3]
    us = result["ultrasound"]
    assert len(us["rows"]) == 3 and "shuffled" in us["rows"][2]["name"]
    assert us["validation"]["pairs"] == 6
    shuffled = result["radiograph"]["verdicts"]["narrowing"]["shuffled_vs_training_mean"]
    assert shuffled["n_patients"] == 3 and "falls_to_chance" in shuffled
    assert set(us["verdicts"]) == {"synovial_hypertrophy", "vascularity", "combined"}
    table = baselines_markdown(result)
    assert "bootstrap over 3 patients" in table and "Phantom figures" in table


def test_patient_shuffled_fallback_never_returns_the_own_label():
    ids = np.array([0, 1, 2, 3])
    keys = np.array(["a", "a", "b", "b"])  # a donor often lacks the key: the fallback is used
    for seed in range(20):
        assert np.all(bl.patient_shuffled(ids, ids, keys, seed=seed) != ids)
