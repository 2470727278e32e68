"""Conformal grade sets: coverage near nominal on fresh data, wider where the scorer is less
sure (normalised by its spread) and where a scale is harder (Mondrian bins), files that refuse
what they are not, and no sets for weights the calibration was not made with."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from annotation_tools.conformal import (
    GradeCalibration,
    JointSetsCsv,
    bin_of,
    calibrate_grades,
    coverage_figures,
)
from annotation_tools.vocabulary import joints_for_limb


def _rows(rng, n, *, foot_noise=1.0):
    """Scorer-like rows: an integer truth, a prediction off by noise whose size the reported
    sd tracks (as the scorer's spread does), feet noisier than hands."""
    hand = [j.id for j in joints_for_limb("LH") if j.carries("narrowing")]
    foot = [j.id for j in joints_for_limb("LF") if j.carries("erosion")]
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            joint, st, top, scale = rng.choice(hand), "narrowing", 4, 1.0
        else:
            joint, st, top, scale = rng.choice(foot), "erosion", 10, foot_noise
        truth = int(rng.integers(0, top + 1))
        sd = float(rng.uniform(0.05, 0.8))
        pred = float(np.clip(truth + rng.normal(0, (0.2 + sd) * scale), 0, top))
        rows.append((str(joint), st, pred, sd, truth))
    return rows


def _evaluate(calibration, rows, coverage):
    sets = calibration.grade_sets([r[:4] for r in rows], coverage)
    return sets, coverage_figures(sets, [r[4] for r in rows], [bin_of(r[0], r[1]) for r in rows])


def test_sets_cover_fresh_joints_at_the_nominal_rate_and_grow_with_coverage():
    calibration = calibrate_grades(_rows(np.random.default_rng(0), 4000))
    test = _rows(np.random.default_rng(1), 4000)
    widths = []
    for coverage in (0.8, 0.9, 0.95):
        sets, figures = _evaluate(calibration, test, coverage)
        assert abs(figures["all"]["coverage"] - coverage) < 0.03, (coverage, figures["all"])
        widths.append(figures["all"]["mean_width"])
        assert all(s.low <= s.high for s in sets)
    assert widths[0] < widths[1] < widths[2]


def test_a_less_sure_joint_and_a_harder_scale_get_wider_sets():
    calibration = calibrate_grades(_rows(np.random.default_rng(2), 4000, foot_noise=2.5))
    sure, unsure = calibration.grade_sets(
        [("LH_mcp_2", "narrowing", 2.0, 0.05), ("LH_mcp_2", "narrowing", 2.0, 0.8)], 0.9
    )
    assert sure.width < unsure.width and 2 in sure and 2 in unsure
    hand, foot = calibration.grade_sets(
        [("LH_mcp_2", "narrowing", 2.0, 0.4), ("LF_mtp_1", "erosion", 5.0, 0.4)], 0.9
    )
    assert foot.width > hand.width  # Mondrian: the noisier bin has its own, larger quantile
    top = calibration.grade_sets([("LH_mcp_2", "narrowing", 3.9, 0.8)], 0.95)[0]
    assert top.high == 4  # clipped to the joint's scale


def test_files_round_trip_and_refuse_what_they_are_not(tmp_path):
    calibration = calibrate_grades(_rows(np.random.default_rng(3), 500), source={"seed": 7})
    path = calibration.save(tmp_path / "conformal.json")
    again = GradeCalibration.load(path)
    row = [("LH_pip_3", "narrowing", 1.4, 0.3)]
    assert again.grade_sets(row)[0] == calibration.grade_sets(row)[0]
    assert again.source == {"seed": 7}
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a grade calibration"):
        GradeCalibration.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="too few"):
        calibrate_grades(_rows(np.random.default_rng(4), 5))
    with pytest.raises(ValueError, match="coverage"):
        calibration.grade_sets(row, 90)


def test_weights_other_than_the_calibrated_ones_get_no_sets(tmp_path):
    from annotation_tools.conformal import matching_calibration

    keys = ("weights_sha256", "symmetry_sha256")
    made = {"weights_sha256": "abc", "symmetry_sha256": "def"}
    calibrate_grades(_rows(np.random.default_rng(5), 500), source=made).save(
        tmp_path / "conformal.json"
    )
    assert matching_calibration(tmp_path, made, keys)[0] is not None
    other, why = matching_calibration(tmp_path, {**made, "weights_sha256": "retrained"}, keys)
    assert other is None and "other weights" in why


def test_joint_scores_csv_leaves_the_set_empty_without_a_calibration(tmp_path):
    from types import SimpleNamespace

    from annotation_tools.scoring import JointScore

    image = SimpleNamespace(joints={"LH_mcp_2": JointScore("LH_mcp_2", "MCP 2", 1.2, 0.4, 0.3)})
    patient = SimpleNamespace(patient_id="P1", images=[image])
    calibration = calibrate_grades(_rows(np.random.default_rng(6), 500))
    for cal, name in ((None, "none.csv"), (calibration, "cal.csv")):
        table = JointSetsCsv(tmp_path / name, cal, 0.9)
        table.write(patient)
        table.close()
    with open(tmp_path / "none.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["joint_id"], r["score_type"], r["set_low"]) for r in rows] == [
        ("LH_mcp_2", "narrowing", ""),
        ("LH_mcp_2", "erosion", ""),
    ]
    with open(tmp_path / "cal.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(
        int(r["set_low"]) <= round(float(r["prediction"])) <= int(r["set_high"]) for r in rows
    )


def _calibration_loaders():
    """The three calibration classes, with their shipped file and the kind their errors name."""
    from annotation_tools.locator_calibration import LocatorCalibration
    from annotation_tools.us_conformal import UsGradeCalibration

    root = Path(__file__).resolve().parents[1] / "monai_bundles"
    return [
        (GradeCalibration, "a grade calibration", root / "ra_joint_scorer/models/conformal.json"),
        (
            UsGradeCalibration,
            "an ultrasound grade calibration",
            root / "ra_us_rating/models/us_conformal.json",
        ),
        (
            LocatorCalibration,
            "a locator calibration",
            root / "ra_joint_locator/models/locator_calibration.json",
        ),
    ]


@pytest.mark.parametrize(("loader", "kind", "shipped"), _calibration_loaders())
def test_every_calibration_file_refuses_a_wrong_or_corrupt_file_naming_its_path(
    tmp_path, loader, kind, shipped
):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "ra_joints.something_else/1", "beta": 0.25}))
    with pytest.raises(ValueError, match=f"{re.escape(str(wrong))} is not {kind} \\("):
        loader.load(wrong)
    wrong.write_text(json.dumps([1, 2, 3]))  # JSON, but not a document at all
    with pytest.raises(ValueError, match=f"{re.escape(str(wrong))} is not {kind} \\("):
        loader.load(wrong)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": ')  # cut short: not JSON
    with pytest.raises(ValueError, match=f"cannot read the {kind[kind.index(' ') + 1 :]} "):
        loader.load(corrupt)
    with pytest.raises(ValueError, match=re.escape(str(corrupt))):
        loader.load(corrupt)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")  # not even text
    with pytest.raises(ValueError, match=re.escape(str(binary))):
        loader.load(binary)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "absent.json"))):
        loader.load(tmp_path / "absent.json")


@pytest.mark.parametrize(("loader", "kind", "shipped"), _calibration_loaders())
def test_a_shipped_calibration_loads_and_saves_back_byte_for_byte(tmp_path, loader, kind, shipped):
    """One writer for all three files: what it writes is what the bundles ship."""
    again = loader.load(shipped).save(tmp_path / shipped.name)
    assert again.read_bytes() == shipped.read_bytes()


def test_scorer_calibration_pools_projects_and_refuses_a_test_seed_among_them(
    small_cohort, tmp_path, monkeypatch
):
    """Two calibration projects (e.g. one validation seed drawn in both styles, for a scorer
    trained on both) give one calibration holding the residuals of both; one test-seed project
    among them stops the run before any model runs."""
    import json
    import shutil

    import annotation_tools.calibration as calibration
    from annotation_tools.predict import PredictionService

    def cohort(folder, seed, style):
        shutil.copytree(small_cohort, folder)
        info = json.loads((folder / "cohort.json").read_text())
        (folder / "cohort.json").write_text(json.dumps({**info, "seed": seed, "style": style}))
        return folder

    schematic = cohort(tmp_path / "s", 3300, "schematic")
    anatomical = cohort(tmp_path / "a", 3300, "anatomical")
    calls = []

    def rows(project, service, images=None):  # the pipeline's rows, without running it
        calls.append(Path(project))
        made = _rows(np.random.default_rng(len(calls)), 40 * len(calls))
        return [(f"p{i % 8}", *r) for i, r in enumerate(made)]

    monkeypatch.setattr(calibration, "predicted_rows", rows)
    service = PredictionService("two-stage", device="cpu")
    pooled = calibration.calibrate_scorer([schematic, anatomical], service=service)
    assert calls == [schematic, anatomical]
    assert sum(len(v) for v in pooled.residuals.values()) == 40 + 80
    assert pooled.source["style"] == "anatomical+schematic"
    assert pooled.source["cohort_seeds"] == [3300, 3300]
    calls.clear()
    with pytest.raises(ValueError, match="test"):
        calibration.calibrate_scorer([schematic, cohort(tmp_path / "t", 5002, "schematic")])
    assert calls == []


def test_auto_beta_is_chosen_on_the_calibration_patients_alone(monkeypatch):
    from annotation_tools import conformal

    rows = _rows(np.random.default_rng(7), 800)
    patients = [f"P{i % 40}" for i in range(len(rows))]  # 40 patients of 20 scores each
    beta, report = conformal.choose_beta(rows, patients, betas=(0.05, 1.0, 100.0), repeats=3)
    assert set(report["candidates"]) == {"0.05", "1.0", "100.0"}
    # the chosen one is the narrowest candidate that kept 90 % on the held-out halves
    kept = {b: c for b, c in report["candidates"].items() if c["coverage"] >= 0.9}
    assert kept and str(beta) == min(kept, key=lambda b: kept[b]["mean_width"])
    # too few patients to halve: the default beta, and the reason on file
    few = calibrate_grades(rows[:30], beta="auto", patients=patients[:30])
    assert few.beta == 0.25 and "too small" in few.source["beta_choice"]["note"]
    with pytest.raises(ValueError, match="patients"):
        calibrate_grades(rows, beta="auto")
    # calibrate_grades keeps what the choice said, and records it
    monkeypatch.setattr(conformal, "choose_beta", lambda r, p: (3.0, {"candidates": {}}))
    chosen = calibrate_grades(rows, beta="auto", patients=patients)
    assert chosen.beta == 3.0 and chosen.source["beta_choice"] == {"candidates": {}}


def test_a_calibration_for_other_weights_is_refused_with_its_reason(tmp_path):
    from annotation_tools.conformal import matching_calibration

    made = {"weights_sha256": "abc"}
    found, why = matching_calibration(tmp_path, made, how="ra-joints calibrate --task multitask")
    assert found is None and "absent" in why and "--task multitask" in why
    calibrate_grades(_rows(np.random.default_rng(9), 500), source=made).save(
        tmp_path / "conformal.json"
    )
    found, why = matching_calibration(tmp_path, made)
    assert found is not None and why == ""
    found, why = matching_calibration(tmp_path, {"weights_sha256": "retrained"})
    assert found is None and "other weights" in why and "weights_sha256" in why
