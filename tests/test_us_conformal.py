"""Conformal grade sets for the RATING ensemble's ultrasound grades (issue #24)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from annotation_tools.rating import GRADE_KEYS
from annotation_tools.us_conformal import (
    US_CALIBRATION_FILE,
    UsGradeCalibration,
    calibrate_us_grades,
    expected_grades,
    set_columns,
    us_calibration_for,
    us_coverage_figures,
)


def _uncalibrated_models(dest):
    """The shipped RATING weights linked into ``dest`` without the shipped calibration: a
    calibration written there must never go through a link into the bundle itself."""
    from annotation_tools.bundles import bundle_for

    dest.mkdir(parents=True)
    for path in (bundle_for("ultrasound").root / "models").iterdir():
        if path.name != US_CALIBRATION_FILE:
            (dest / path.name).symlink_to(path)
    return dest


def _synthetic(n: int, rng: np.random.Generator, sd_sh: float = 0.5, sd_v: float = 0.5):
    """Decisions shaped like ``RatingEnsemble.decide``'s, with the noise given per output:
    expected grade = truth + noise (clipped to 0..3), each fold near it."""
    sh = rng.integers(0, 4, n)
    vasc = np.where(sh == 0, 0, rng.integers(0, 4, n))
    decisions, truths = [], []
    for s, v in zip(sh, vasc, strict=True):
        e_sh = float(np.clip(s + rng.normal(0, sd_sh), 0, 3))
        e_v = float(np.clip(v + rng.normal(0, sd_v), 0, 3))
        decisions.append(
            {
                "split_probabilities": {
                    "synovial_hypertrophy": [e_sh / 3] * 3,
                    "vascularity": [e_v / 3] * 3,
                },
                "fold_expected_grades": {
                    "synovial_hypertrophy": list(e_sh + rng.normal(0, 0.1, 3)),
                    "vascularity": list(e_v + rng.normal(0, 0.1, 3)),
                },
            }
        )
        truths.append({"synovial_hypertrophy": int(s), "vascularity": int(v)})
    for t in truths:
        t["combined"] = max(t.values())
    return decisions, truths


def test_expected_grade_is_the_sum_of_the_split_probabilities_and_combined_the_max():
    decision = {
        "split_probabilities": {
            "synovial_hypertrophy": [0.9, 0.6, 0.1],
            "vascularity": [0.5, 0.2, 0.0],
        },
        "fold_expected_grades": {
            "synovial_hypertrophy": [1.4, 1.6, 1.8],
            "vascularity": [0.7, 0.7, 0.7],
        },
    }
    got = expected_grades(decision)
    assert got["synovial_hypertrophy"][0] == pytest.approx(1.6)
    assert got["vascularity"] == pytest.approx((0.7, 0.0))
    assert got["combined"][0] == pytest.approx(1.6)
    assert got["synovial_hypertrophy"][1] == pytest.approx(np.std([1.4, 1.6, 1.8]))
    with pytest.raises(ValueError, match="split_probabilities"):
        expected_grades({"synovial_hypertrophy": 1})


def test_sets_cover_exchangeable_pairs_at_the_nominal_rate(rng):
    decisions, truths = _synthetic(2000, rng)
    calibration = calibrate_us_grades(decisions, truths, beta=None)
    fresh, fresh_truths = _synthetic(2000, rng)
    for level in (0.8, 0.9, 0.95):
        sets = calibration.grade_sets(fresh, level)
        figures = us_coverage_figures(sets, fresh_truths)
        assert set(figures) == {"all", *GRADE_KEYS}
        for name, fig in figures.items():
            assert abs(fig["coverage"] - level) < 0.035, (level, name, fig)
        # never empty, always within 0..3
        assert all(0 <= s[k].low <= s[k].high <= 3 for s in sets for k in GRADE_KEYS)
    wide = calibration.grade_sets(fresh, 0.95)
    narrow = calibration.grade_sets(fresh, 0.8)
    assert np.mean([s["combined"].width for s in wide]) > np.mean(
        [s["combined"].width for s in narrow]
    )


def test_a_worse_output_and_a_less_sure_pair_get_wider_sets(rng):
    # Mondrian bins: vascularity is predicted worse than SH, so its sets are wider
    decisions, truths = _synthetic(1500, rng, sd_sh=0.2, sd_v=0.8)
    calibration = calibrate_us_grades(decisions, truths, beta=None)
    sets = calibration.grade_sets(decisions[:300], 0.9)
    widths = {k: np.mean([s[k].width for s in sets]) for k in GRADE_KEYS}
    assert widths["vascularity"] > widths["synovial_hypertrophy"] + 0.5
    # normalised: the error follows the folds' disagreement, so a pair whose folds disagree
    # more gets a wider set, and "auto" finds that normalising pays
    n = 1500
    spread = rng.uniform(0.05, 0.8, n)
    sh = rng.integers(0, 4, n)
    expected = np.clip(sh + rng.normal(0, 1, n) * spread, 0, 3)
    decisions = [
        {
            "split_probabilities": {"synovial_hypertrophy": [e / 3] * 3, "vascularity": [0, 0, 0]},
            "fold_expected_grades": {
                "synovial_hypertrophy": [e - s * 1.2247, e, e + s * 1.2247],  # std = s
                "vascularity": [0.0, 0.0, 0.0],
            },
        }
        for e, s in zip(expected, spread, strict=True)
    ]
    truths = [{"synovial_hypertrophy": int(s), "vascularity": 0} for s in sh]
    patients = [f"P{i // 4}" for i in range(n)]
    auto = calibrate_us_grades(decisions, truths, patients=patients, beta="auto")
    choice = auto.source["beta_choice"]
    assert auto.beta is not None, choice
    widths = {name: c["mean_width"] for name, c in choice["candidates"].items()}
    assert min(widths.values()) < widths["none"]
    sure = {**decisions[0], "split_probabilities": {"synovial_hypertrophy": [0.5] * 3,
            "vascularity": [0, 0, 0]}}  # fmt: skip
    unsure = json.loads(json.dumps(sure))
    sure["fold_expected_grades"]["synovial_hypertrophy"] = [1.5, 1.5, 1.5]
    unsure["fold_expected_grades"]["synovial_hypertrophy"] = [0.5, 1.5, 2.5]
    a, b = auto.grade_sets([sure, unsure], 0.9)
    assert b["synovial_hypertrophy"].width > a["synovial_hypertrophy"].width


def test_files_round_trip_and_other_weights_get_no_sets(tmp_path, rng):
    decisions, truths = _synthetic(200, rng)
    calibration = calibrate_us_grades(
        decisions, truths, beta=0.25, source={"ensemble_sha256": "abc", "seed": 3500}
    )
    assert us_calibration_for(tmp_path, "abc") is None  # no file: no sets
    calibration.save(tmp_path / US_CALIBRATION_FILE)
    loaded = us_calibration_for(tmp_path, "abc")
    assert loaded is not None and loaded.beta == 0.25 and loaded.source["seed"] == 3500
    assert [s["combined"] for s in loaded.grade_sets(decisions[:20])] == [
        s["combined"] for s in calibration.grade_sets(decisions[:20])
    ]
    assert us_calibration_for(tmp_path, "other weights") is None
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an ultrasound grade calibration"):
        UsGradeCalibration.load(tmp_path / "bad.json")


def test_bad_calibration_input_is_refused_with_its_reason(rng):
    decisions, truths = _synthetic(30, rng)
    with pytest.raises(ValueError, match="no ultrasound pair .* true grades"):
        calibrate_us_grades(decisions, [None] * len(decisions))
    with pytest.raises(ValueError, match="too few"):
        calibrate_us_grades(decisions[:5], truths[:5], beta=None)
    with pytest.raises(ValueError, match="30 decisions but 2 truths"):
        calibrate_us_grades(decisions, truths[:2])
    with pytest.raises(ValueError, match="beta must be"):
        UsGradeCalibration({k: [0.1] * 30 for k in GRADE_KEYS}, beta=0.0)
    calibration = calibrate_us_grades(decisions, truths, beta=None)
    with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
        calibration.grade_sets(decisions, 90)


def test_calibrate_refuses_a_test_seed_and_a_cohort_without_enough_pairs(
    tmp_path, small_cohort, capsys
):
    from annotation_tools.bundles import bundle_for
    from annotation_tools.calibration import calibrate_ultrasound
    from annotation_tools.cli import main

    models = bundle_for("ultrasound").root / "models"
    project = tmp_path / "test_cohort"
    project.mkdir()
    (project / "cohort.json").write_text(json.dumps({"seed": 5150}))
    with pytest.raises(ValueError, match="seed 5150 is a test seed.*calibrate on a validation"):
        calibrate_ultrasound(project, models)
    out = tmp_path / "us_conformal.json"
    status = main(
        ["calibrate", "--task", "ultrasound", "--project", str(project), "--out", str(out)]
    )
    assert status == 2 and "test seed" in capsys.readouterr().err
    (project / "cohort.json").write_text(json.dumps({"seed": 400}))  # RATING's training seed
    with pytest.raises(ValueError, match="seed 400 is a training seed"):
        calibrate_ultrasound(project, models)
    assert not out.exists()
    # the small cohort's 6 pairs are graded, but 18 residuals are too few for a set
    with pytest.raises(ValueError, match="too few"):
        calibrate_ultrasound(small_cohort, models)


def test_ultrasound_grades_csv_gets_the_set_columns_at_the_coverage_asked(
    tmp_path, small_cohort, rng
):
    from annotation_tools.predict import PredictionService
    from annotation_tools.us_rating import ensemble_hash

    models = _uncalibrated_models(tmp_path / "models")  # with a calibration of their own
    assert not (models / US_CALIBRATION_FILE).exists()
    residuals = {k: list(rng.uniform(0, 1, 60)) for k in GRADE_KEYS}
    UsGradeCalibration(
        residuals, source={"ensemble_sha256": ensemble_hash(models), "seed": 3500}
    ).save(models / US_CALIBRATION_FILE)
    out = tmp_path / "graded"
    service = PredictionService(weights={"ultrasound": models / "ensemble.json"})
    graded = service.grade_ultrasound(
        out,
        pairs_table=small_cohort / "ultrasound_scores.csv",
        explain=False,
        progress=False,
        coverage=0.8,
    )
    with open(out / "ultrasound_grades.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    old = ["patient_id", "site", "greyscale", "doppler", *GRADE_KEYS, "uncertainty", "roi_source"]
    assert header == old + set_columns()  # the old columns first, unchanged
    assert len(rows) == graded.summary["n_graded"] == 6
    sets = graded.summary["grade_sets"]
    assert sets["calibrated"] and sets["coverage"] == 0.8 and sets["calibration"]["seed"] == 3500
    for row in rows:
        record = json.loads((out / f"{row['patient_id']}_{row['site']}.json").read_text())
        assert float(row["set_coverage"]) == 0.8
        for k in GRADE_KEYS:
            low, high = int(row[f"{k}_set_low"]), int(row[f"{k}_set_high"])
            assert 0 <= low <= high <= 3
            # the half-width at 80 % of U(0, 1) residuals is about 0.8: the nearest grade
            # to the expected grade is always inside
            expected = record["grade_sets"][k]["expected_grade"]
            assert low <= round(expected) <= high, (k, expected, low, high)
            assert expected == pytest.approx(expected_grades(record)[k][0], abs=1e-3)


def test_an_uncalibrated_ensemble_writes_the_old_columns_only(tmp_path, small_cohort):
    from annotation_tools.us_rating import (
        RatingCollector,
        RatingWriter,
        load_ensemble,
        load_us_cases,
    )

    models = _uncalibrated_models(tmp_path / "models")  # the shipped weights, no calibration
    ensemble = load_ensemble(models)
    cases = load_us_cases(pairs_table=small_cohort / "ultrasound_scores.csv")
    cases.cases = cases.cases[:2]
    collector = RatingCollector(len(cases.cases))
    import torch

    with torch.no_grad():
        for i, case in enumerate(cases.cases):
            x = torch.as_tensor(case.image[None], dtype=torch.float32) / 255.0
            collector.add(ensemble(x)[0], i)
    written = RatingWriter(tmp_path, models, explain=False, progress=False).write(
        cases, ensemble, collector
    )
    with open(tmp_path / "ultrasound_grades.csv", newline="") as handle:
        header = csv.DictReader(handle).fieldnames
    assert not any("set_" in c for c in header)
    assert written["summary"]["grade_sets"]["calibrated"] is False


def test_us_coverage_benchmark_reports_each_output_with_patient_cis(tmp_path, small_cohort, rng):
    from annotation_tools.benchmark_coverage import benchmark_us_coverage, us_coverage_markdown
    from annotation_tools.us_rating import ensemble_hash

    bundle = tmp_path / "ra_us_rating"
    _uncalibrated_models(bundle / "models")
    with pytest.raises(FileNotFoundError, match="calibrate --task ultrasound"):
        benchmark_us_coverage(bundle, small_cohort, n_resamples=20)
    UsGradeCalibration(
        {k: list(rng.uniform(0, 1.5, 60)) for k in GRADE_KEYS},
        source={"ensemble_sha256": ensemble_hash(bundle / "models"), "seed": 3500},
    ).save(bundle / "models" / US_CALIBRATION_FILE)
    result = benchmark_us_coverage(bundle, small_cohort, n_resamples=20)
    assert result["calibration"]["seed"] == 3500 and result["test_cohort"]["pairs"] == 6
    assert set(result["levels"]) == {"0.8", "0.9", "0.95"}
    for figures in result["levels"].values():
        assert set(figures) == {"all", *GRADE_KEYS}
        assert figures["all"]["n"] == 18 and figures["combined"]["n"] == 6
        for fig in figures.values():
            lo, hi = fig["coverage_ci"]
            assert 0 <= lo <= fig["coverage"] <= hi <= 1
    table = us_coverage_markdown(result)
    assert "Calibrated on phantom seed 3500" in table and "| 90% | vascularity |" in table


def test_a_coverage_beyond_what_the_residuals_resolve_gives_the_whole_scale(rng):
    decisions, truths = _synthetic(25, rng)  # 25 residuals per output: 99 % needs more
    calibration = calibrate_us_grades(decisions, truths, beta=None)
    for s in calibration.grade_sets(decisions[:3], 0.99):
        assert all((s[k].low, s[k].high) == (0, 3) for k in GRADE_KEYS)


def test_calibrate_command_then_predict_writes_the_sets(tmp_path, capsys):
    """End to end through the CLI: a (tiny, unregistered-seed) cohort calibrates a copy of the
    shipped bundle, and ``predict --ultrasound`` with that bundle writes the set columns."""
    import shutil

    from annotation_tools.bundles import bundle_for
    from annotation_tools.cli import main
    from annotation_tools.phantoms import generate_cohort

    project = tmp_path / "cohort"
    generate_cohort(
        project, 7, seed=12, height=256, us_pairs=4, workers=1, progress=False, style="schematic"
    )
    shipped = bundle_for("ultrasound").root
    bundle = tmp_path / "ra_us_rating"
    shutil.copytree(shipped, bundle, ignore=shutil.ignore_patterns("models"))
    _uncalibrated_models(bundle / "models")
    cal = bundle / "models" / US_CALIBRATION_FILE
    assert main(["calibrate", "--task", "ultrasound", "--project", str(project),
                 "--out", str(cal)]) == 0  # fmt: skip
    assert "7 patients, 28 pairs" in capsys.readouterr().out
    made = UsGradeCalibration.load(cal)
    assert made.source["seed"] == 12 and "beta_choice" in made.source
    assert {k: len(v) for k, v in made.residuals.items()} == dict.fromkeys(GRADE_KEYS, 28)
    out = tmp_path / "pred"
    status = main(
        ["predict", "--ultrasound", str(project / "ultrasound_scores.csv"), "--out", str(out),
         "--us-bundle", str(bundle), "--trust-bundle", "--coverage", "0.8", "--no-explain",
         "--quiet"]
    )  # fmt: skip
    assert status == 0
    with open(out / "ultrasound" / "ultrasound_grades.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 28 and all(float(r["set_coverage"]) == 0.8 for r in rows)
    summary = json.loads((out / "ultrasound" / "summary.json").read_text())
    sets = summary["grade_sets"]
    assert sets["calibrated"] and sets["calibration"]["seed"] == 12


def test_the_writer_keeps_a_calibrated_pairs_sets_in_its_model_revision(tmp_path, rng, monkeypatch):
    """``RatingWriter`` stores each pair's sets (and the coverage) with the model's grades when
    the ensemble is calibrated, and grades alone when it is not."""
    from types import SimpleNamespace

    from annotation_tools import us_rating
    from annotation_tools.imageio import write_png
    from annotation_tools.store import AnnotationStore

    monkeypatch.setattr(us_rating, "ensemble_hash", lambda models_dir: "abc")
    with AnnotationStore.open(tmp_path) as store:
        ids = []
        for i, modality in enumerate(("us_greyscale", "us_doppler", "us_greyscale", "us_doppler")):
            path = write_png(tmp_path / f"{i}.png", (rng.random((32, 40)) * 255).astype(np.uint8))
            ids.append(store.add_image(path, patient_id="P1", modality=modality))
        calibrated = store.add_us_pair(ids[0], ids[1], site="R_mcp_2")
        plain = store.add_us_pair(ids[2], ids[3], site="L_mcp_2")
    sets = {
        "synovial_hypertrophy": {"low": 1, "high": 2, "expected_grade": 1.6},
        "vascularity": {"low": 0, "high": 1, "expected_grade": 0.4},
        "combined": {"low": 1, "high": 2, "expected_grade": 1.6},
    }
    row = {"synovial_hypertrophy": 2, "vascularity": 0, "uncertainty": 0.3}
    cases = [SimpleNamespace(pair_id=p, roi_source="drawn", roi=None) for p in (calibrated, plain)]
    writer = us_rating.RatingWriter(tmp_path / "out", tmp_path, store=tmp_path)
    writer._write_store(
        SimpleNamespace(cases=cases), [{**row, "grade_sets": sets, "set_coverage": 0.8}, row]
    )
    with AnnotationStore.open(tmp_path, create=False) as store:
        rev = store.us_score(calibrated)
        assert rev.is_model and rev.weights_hash == "abc" and rev.value["coverage"] == 0.8
        assert rev.grade_sets == {k: (s["low"], s["high"]) for k, s in sets.items()}
        other = store.us_score(plain)
        assert other.is_model and other.grade_sets == {} and other.value["coverage"] is None
