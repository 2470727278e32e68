"""The locator's calibrated uncertainty: conformal radii that cover fresh joints at the nominal
rate and are wider where the locator misses by more (the wrist), a probability of being right
that matches the observed rate (unlike the raw confidence), files that refuse what they are not
and no calibration for other weights."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from annotation_tools.joint_decoding import JointPrediction, LocatorResult
from annotation_tools.locator import _calibration_for
from annotation_tools.locator_calibration import (
    CalibrationJoint,
    LocatorCalibration,
    fit_locator_calibration,
    radius_coverage,
)

SCALE = {"finger": 0.004, "thumb": 0.005, "wrist": 0.012, "toe": 0.006}


def _joints(rng, n, wrong_rate=0.03):
    """Locator-like joints: error scale by region, a few wrongly named (far off); the raw
    confidence is over-confident (right with probability confidence ** 6)."""
    out = []
    regions = list(SCALE)
    for _ in range(n):
        region = regions[rng.integers(0, 4)]
        confidence = float(rng.uniform(0.5, 1.0))
        error = float(rng.exponential(SCALE[region]) + (0.1 if rng.random() < wrong_rate else 0))
        right = rng.random() < confidence**6
        out.append(CalibrationJoint(region, error, confidence, bool(right)))
    return out


def test_radii_cover_fresh_joints_at_the_nominal_rate_and_are_wider_at_the_wrist():
    calibration = fit_locator_calibration(_joints(np.random.default_rng(0), 4000))
    figures = radius_coverage(calibration, _joints(np.random.default_rng(1), 4000))
    for coverage in (0.8, 0.9, 0.95):
        per = figures[f"{coverage:g}"]
        for region in ("all", "finger", "wrist"):
            assert abs(per[region]["coverage"] - coverage) < 0.03, (coverage, region, per)
    assert figures["0.9"]["wrist"]["mean_radius"] > 2 * figures["0.9"]["finger"]["mean_radius"]
    assert figures["0.8"]["all"]["mean_radius"] < figures["0.95"]["all"]["mean_radius"]


def test_p_correct_matches_the_observed_rate_where_the_confidence_does_not():
    calibration = fit_locator_calibration(_joints(np.random.default_rng(2), 4000))
    fresh = _joints(np.random.default_rng(3), 4000)
    figures = radius_coverage(calibration, fresh)["p_correct"]
    assert abs(figures["mean_predicted"] - figures["observed"]) < 0.03
    correct = np.array([j.correct for j in fresh], float)
    raw_brier = float(np.mean((np.array([j.confidence for j in fresh]) - correct) ** 2))
    assert figures["brier"] < raw_brier - 0.02
    probs = calibration.p_correct([0.5, 0.7, 0.9, 0.99])
    assert np.all(np.diff(probs) >= 0) and probs[0] < 0.3 < probs[-1]


def test_annotate_gives_pixels_and_files_round_trip(tmp_path):
    calibration = fit_locator_calibration(
        _joints(np.random.default_rng(4), 500), source={"weights_sha256": "abc"}
    )
    result = LocatorResult(
        "x.png",
        "LH",
        "given",
        (300, 400),
        {
            "LH_mcp_2": JointPrediction("LH_mcp_2", "MCP 2", 10.0, 20.0, 0.99, False),
            "LH_wrist_lunate": JointPrediction("LH_wrist_lunate", "lunate", 5.0, 5.0, 0.6, False),
            "LH_mcp_3": JointPrediction("LH_mcp_3", "MCP 3", None, None, 0.1, True),
        },
    )
    calibration.annotate(result, coverage=0.9)
    mcp, lunate, missing = result.joints.values()
    assert mcp.radius == pytest.approx(calibration.radius(["finger"], 0.9)[0] * 500, abs=0.01)
    assert lunate.radius > mcp.radius and lunate.p_correct < mcp.p_correct
    assert missing.radius is None and missing.p_correct is None
    assert json.loads(json.dumps(result.to_json()))["joints"]["LH_mcp_2"]["radius"] == mcp.radius
    path = calibration.save(tmp_path / "locator_calibration.json")
    again = LocatorCalibration.load(path)
    assert again.radius(["wrist"], 0.9)[0] == pytest.approx(
        calibration.radius(["wrist"], 0.9)[0], rel=1e-3
    )
    assert _calibration_for(tmp_path, {"weights_sha256": "abc"}) is not None
    assert _calibration_for(tmp_path, {"weights_sha256": "other"}) is None  # other weights
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a locator calibration"):
        LocatorCalibration.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="too few"):
        fit_locator_calibration(_joints(np.random.default_rng(5), 5))
    assert math.isfinite(calibration.radius(["toe"], 0.95)[0])


def test_calibration_pools_several_projects_as_one(small_cohort, tmp_path, capsys):
    """``ra-joints calibrate --task locator`` with two projects fits on the joints of both
    (a locator trained on two phantom styles is calibrated on both)."""
    import shutil

    from annotation_tools.cli import main
    from annotation_tools.locator import JointLocator
    from annotation_tools.locator_calibration import locate_project

    twin = tmp_path / "twin"
    shutil.copytree(small_cohort, twin)
    out = tmp_path / "locator_calibration.json"
    argv = ["calibrate", "--task", "locator", "--project", str(small_cohort)]
    assert main([*argv, "--project", str(twin), "--out", str(out), "--device", "cpu"]) == 0
    pooled = LocatorCalibration.load(out)
    bundle = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_joint_locator"
    locator = JointLocator.from_bundle(bundle, device="cpu")
    joints, located, _, patients = locate_project(locator, small_cohort)
    assert pooled.source["patients"] == 2 * patients and pooled.source["radiographs"] == 2 * located
    single: dict[str, int] = {}
    for joint in joints:
        single[joint.region] = single.get(joint.region, 0) + 1
    assert {r: len(e) for r, e in pooled.errors.items()} == {r: 2 * n for r, n in single.items()}
    assert "wrote" in capsys.readouterr().out
    argv = ["calibrate", "--task", "ultrasound", "--project", str(small_cohort)]
    assert main([*argv, "--project", str(twin)]) != 0
    assert "the ultrasound ensemble calibrates on one project" in capsys.readouterr().err
