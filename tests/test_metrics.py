"""Metrics against scipy/scikit-learn on random data, and their behaviour on degenerate input."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from annotation_tools import metrics as m


@pytest.fixture
def grades(rng):
    truth = rng.integers(0, 5, size=200)
    pred = np.clip(truth + rng.normal(0, 0.8, size=200), 0, 4)
    return truth.astype(float), pred


def test_regression_metrics_match_references(grades):
    t, p = grades
    assert m.rmse(t, p) == pytest.approx(np.sqrt(skm.mean_squared_error(t, p)), abs=1e-9)
    assert m.pearson_r(t, p) == pytest.approx(stats.pearsonr(t, p).statistic, abs=1e-9)


def test_agreement_metrics_match_confusion_matrix(grades):
    t, p = grades
    ti, pi = t.astype(int), np.floor(p + 0.5).astype(int)  # grades: halves rounded up
    cm = skm.confusion_matrix(ti, pi, labels=range(5))
    assert m.exact_agreement(t, p) == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-9)
    near = sum(cm[i, j] for i in range(5) for j in range(5) if abs(i - j) <= 1)
    assert m.within_one_agreement(t, p) == pytest.approx(near / cm.sum(), abs=1e-9)
    assert m.accuracy(t, p) == pytest.approx(skm.accuracy_score(ti, pi), abs=1e-9)
    assert m.linear_weighted_kappa(t, p) == pytest.approx(
        skm.cohen_kappa_score(ti, pi, weights="linear"), abs=1e-9
    )
    sens, spec = m.any_damage_sensitivity_specificity(t, p)
    tn, fp, fn, tp = skm.confusion_matrix(ti >= 1, pi >= 1).ravel()
    assert sens == pytest.approx(tp / (tp + fn), abs=1e-9)
    assert spec == pytest.approx(tn / (tn + fp), abs=1e-9)
    assert sens == pytest.approx(skm.recall_score(ti >= 1, pi >= 1), abs=1e-9)


def test_binary_split_metrics_match_roc(rng):
    y = rng.integers(0, 2, size=300)
    score = y * 0.6 + rng.random(300)
    assert m.auc(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-9)
    j, threshold = m.youden(y, score)
    fpr, tpr, _ = skm.roc_curve(y, score)
    assert j == pytest.approx((tpr - fpr).max(), abs=1e-9)
    call = score >= threshold
    sens = (call & (y == 1)).sum() / (y == 1).sum()
    spec = (~call & (y == 0)).sum() / (y == 0).sum()
    assert sens + spec - 1 == pytest.approx(j, abs=1e-9)


def test_wilcoxon_one_sided_matches_scipy(rng):
    a = rng.random(40)
    b = a + rng.normal(0.1, 0.1, 40)
    result = m.wilcoxon_one_sided(a, b)
    assert result["p_value"] == pytest.approx(
        stats.wilcoxon(a, b, alternative="less").pvalue, abs=1e-9
    )
    assert result["p_value"] < 0.05 and result["median_diff"] < 0
    assert m.wilcoxon_one_sided(b, a)["p_value"] > 0.5


def test_locator_errors_and_shares():
    true = [[0, 0], [10, 0], [0, 0]]
    pred = [[3, 4], [10, 0], [np.nan, np.nan]]
    err = m.normalised_errors(true, pred, (300, 400))  # (H, W): dx / 400, dy / 300
    np.testing.assert_allclose(err[:2], [np.hypot(3 / 400, 4 / 300), 0.0], atol=1e-12)
    assert np.isinf(err[2])  # a missed joint is wrong at every threshold
    assert m.share_within(err, 0.02) == pytest.approx(2 / 3)
    assert m.share_within(err, 0.01) == pytest.approx(1 / 3)  # 0.0153 > 0.01
    summary = m.locator_summary(err, ["finger", "finger", "wrist"])
    assert summary["finger"]["within_0.02"] == 1.0 and summary["wrist"]["within_0.03"] == 0.0
    assert summary["all"]["n"] == 3
    assert m.detection_sensitivity([True, True, False], [True, False, False]) == 0.5


def test_grades_round_half_up_everywhere():
    np.testing.assert_array_equal(
        m.round_grade([0.5, 1.5, 2.5, 3.49, 3.5, 0.49]), [1, 2, 3, 3, 4, 0]
    )
    assert m.round_grade(2.5) == 3 and np.rint(2.5) == 2  # np.rint goes to the even grade
    # PEA (Hirano): exact after rounding half up; 0.5 and 2.5 are the next grade up
    assert m.exact_agreement([1, 3], [0.5, 2.5]) == 1.0
    assert m.exact_agreement([0, 2], [0.5, 2.5]) == 0.0
    assert m.accuracy([1, 3], [0.5, 2.5]) == 1.0
    # PCA: within one grade after rounding, so a raw error of 1.5 (0 -> 1.5 -> 2) is outside,
    # one of 1.49 inside, and 2.5 from 1 (rounded to 3) is outside too
    assert m.within_one_agreement([0, 0, 1], [1.5, 1.49, 2.5]) == pytest.approx(1 / 3)
    assert m.within_one_agreement([2], [0.5]) == 1.0  # 0.5 -> 1, one grade from 2


def test_weighted_kappa_counts_a_missing_grade_as_a_step():
    """Grade 2 given by nobody: scikit-learn without labels= weighs 1 vs 3 as one step."""
    t = [0, 1, 3, 3, 1, 0, 3, 1]
    p = [0, 3, 1, 3, 1, 0, 3, 0]
    full = skm.cohen_kappa_score(t, p, labels=range(4), weights="linear")
    assert m.linear_weighted_kappa(t, p) == pytest.approx(full, abs=1e-12)
    assert m.linear_weighted_kappa(t, p, labels=range(4)) == pytest.approx(full, abs=1e-12)
    seen_only = skm.cohen_kappa_score(t, p, weights="linear")
    assert abs(seen_only - full) > 0.01  # the bug the default labels fix
    # a grade missing at the top of the scale changes nothing (linear weights scale out)
    assert m.linear_weighted_kappa(t, p, labels=range(6)) == pytest.approx(full, abs=1e-12)
    # sparse 0-10 foot erosion: the default scale is 0..max, not the grades seen
    t10, p10 = [0, 2, 6, 10, 10, 2, 0, 6], [0, 6, 2, 10, 6, 2, 2, 10]
    assert m.linear_weighted_kappa(t10, p10) == pytest.approx(
        skm.cohen_kappa_score(t10, p10, labels=range(11), weights="linear"), abs=1e-12
    )


def test_locator_headline_error_scales_x_by_width_and_y_by_height():
    """Li & Guan: positions as fractions of width and height; the diagonal is secondary."""
    h, w = 1200, 900  # a portrait radiograph
    diag = np.hypot(h, w)
    true = [[300.0, 400.0], [300.0, 400.0]]
    pred = [[300.0 + 0.01 * w, 400.0], [300.0, 400.0 + 0.01 * h]]
    np.testing.assert_allclose(m.normalised_errors(true, pred, (h, w)), [0.01, 0.01])
    np.testing.assert_allclose(
        m.diagonal_errors(true, pred, (h, w)), [0.01 * w / diag, 0.01 * h / diag]
    )
    # one shape per point; a missing prediction is infinitely wrong in both
    per_point = m.normalised_errors(true, [pred[0], [np.nan, np.nan]], [(h, w), (w, h)])
    assert per_point[0] == pytest.approx(0.01) and np.isinf(per_point[1])
    assert np.isinf(m.diagonal_errors(true, [pred[0], [np.nan, np.nan]], (h, w))[1])
    with pytest.raises(ValueError, match="one image shape"):
        m.normalised_errors(true, pred, [(h, w)] * 3)


def test_bootstrap_is_seeded_and_brackets_the_value(grades):
    t, p = grades
    a = m.bootstrap_ci(m.rmse, t, p, n_resamples=300, seed=7)
    b = m.bootstrap_ci(m.rmse, t, p, n_resamples=300, seed=7)
    assert a == b
    assert a.low <= a.value <= a.high and a.high - a.low < 0.3
    wider = m.bootstrap_ci(m.rmse, t[:20], p[:20], n_resamples=300, seed=7)
    assert wider.high - wider.low > a.high - a.low


def test_bootstrap_skips_undefined_resamples():
    t = np.array([0] * 19 + [1])
    p = np.array([0] * 19 + [1])
    ci = m.bootstrap_ci(m.auc, t, p, n_resamples=200, seed=0)
    assert ci.n_undefined > 0 and np.isfinite(ci.low)  # resamples without a positive skipped


def test_patient_folds_never_split_a_patient(rng):
    patients = [f"P{i // 3}" for i in range(60)]  # 20 patients, 3 cases each
    splits = m.patient_kfold(patients, 5, seed=1)
    groups = np.array(patients)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    folds = m.patient_folds(patients, 5, seed=1)
    assert set(folds.values()) == set(range(5)) and len(folds) == 20
    assert folds == m.patient_folds(patients, 5, seed=1)
    assert folds != m.patient_folds(patients, 5, seed=2)
    with pytest.raises(ValueError, match="at least 5 patients"):
        m.patient_kfold(["a", "b"], 5)


# ------------------------------------------------------------------ degenerate input


@pytest.mark.parametrize(
    "fn",
    [
        m.rmse,
        m.pearson_r,
        m.exact_agreement,
        m.within_one_agreement,
        m.accuracy,
        m.linear_weighted_kappa,
        m.auc,
    ],
)
def test_empty_input_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="empty input"):
        fn([], [])


def test_mismatched_lengths_and_nans_are_clear_errors():
    with pytest.raises(ValueError, match="3 values but y_pred has 2"):
        m.rmse([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="nan"):
        m.rmse([1, np.nan], [1, 2])


def test_constant_predictions_give_nan_with_a_warning():
    with pytest.warns(m.MetricWarning, match="constant"):
        assert np.isnan(m.pearson_r([1, 2, 3], [2, 2, 2]))
    assert m.rmse([1, 2, 3], [2, 2, 2]) == pytest.approx(np.sqrt(2 / 3))


def test_single_class_gives_nan_with_a_warning():
    with pytest.warns(m.MetricWarning, match="one class"):
        assert np.isnan(m.auc([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.warns(m.MetricWarning, match="same"):
        assert np.isnan(m.linear_weighted_kappa([2, 2], [2, 2]))
    with pytest.warns(m.MetricWarning, match="no case with damage"):
        sens, spec = m.any_damage_sensitivity_specificity([0, 0], [0, 1])
    assert np.isnan(sens) and spec == 0.5
    with pytest.warns(m.MetricWarning, match="identical"):
        m.wilcoxon_one_sided([1, 2], [1, 2])


def test_score_summary_has_every_figure(grades):
    t, p = grades
    summary = m.score_summary(t, p)
    assert set(summary) >= {
        "rmse",
        "pearson_r",
        "exact_agreement",
        "within_one_agreement",
        "any_damage_sensitivity",
        "any_damage_specificity",
        "linear_weighted_kappa",
    }
    assert 0 <= summary["exact_agreement"] <= summary["within_one_agreement"] <= 1


# ------------------------------------------------------------------ patient-level statistics


def test_cluster_bootstrap_draws_whole_patients():
    # patient A has 1 case, B has 9: drawing cases keeps 10 per resample, drawing patients not
    ids = ["A"] + ["B"] * 9
    values = np.arange(10.0)
    by_case = m.bootstrap_ci(len, values, n_resamples=200, seed=0)
    by_patient = m.bootstrap_ci(len, values, n_resamples=200, seed=0, groups=ids)
    assert by_case.low == by_case.high == 10
    assert by_patient.low == 2 and by_patient.high == 18  # A twice .. B twice
    assert by_patient.method == "95 % percentile bootstrap over 2 patients"
    assert by_patient.as_dict()["ci_method"] == by_patient.method
    with pytest.raises(ValueError, match="one id per case"):
        m.bootstrap_ci(len, values, groups=ids[:5])


def _shared_patient_effect() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 patients x 50 joints; A is far better on 4 patients, a little worse on 6."""
    effects = np.array([-0.5, -0.45, -0.4, -0.35, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3])
    noise = np.random.default_rng(3).normal(0, 0.02, 500)
    ids = np.repeat([f"P{i}" for i in range(10)], 50)
    b = np.ones(500)
    a = b + np.repeat(effects, 50) + noise
    return a, b, ids


def test_patient_comparison_is_not_fooled_by_many_joints_of_few_patients():
    a, b, ids = _shared_patient_effect()
    assert m.wilcoxon_one_sided(a, b)["p_value"] < 1e-6  # 500 "independent" joints
    result = m.paired_patient_comparison(a, b, ids, n_resamples=1000)
    pa = np.array([a[ids == p].mean() for p in np.unique(ids)])
    pb = np.array([b[ids == p].mean() for p in np.unique(ids)])
    assert result["p_value"] == pytest.approx(
        stats.wilcoxon(pa, pb, alternative="less").pvalue, abs=1e-12
    )
    assert result["p_value"] > 0.1 and result["n_patients"] == 10 and result["n_cases"] == 500
    assert result["effect"] == pytest.approx(np.mean(pa - pb), abs=1e-12)
    low, high = result["ci"]
    assert low < 0 < high  # the CI over patients says "no evidence" too
    joints = m.bootstrap_ci(np.mean, a - b, n_resamples=1000, seed=0)
    assert joints.high < 0  # resampling joints: a "clear" win
    assert high - low > 3 * (joints.high - joints.low)
    assert "10 patients" in result["ci_method"] and "Wilcoxon" in result["test"]


def test_patient_comparison_losses_and_a_real_difference():
    ids = np.repeat(np.arange(12), 5)
    err_b = np.random.default_rng(0).normal(0, 1.0, 60)
    err_a = 0.5 * err_b  # A halves every error
    sq = m.paired_patient_comparison(err_a, err_b, ids, loss="squared", n_resamples=300)
    per = [np.mean(err_a[ids == p] ** 2) - np.mean(err_b[ids == p] ** 2) for p in range(12)]
    assert sq["effect"] == pytest.approx(np.mean(per), abs=1e-12)
    assert sq["p_value"] == pytest.approx(0.5**12, rel=1e-6) and sq["ci"][1] < 0
    ab = m.paired_patient_comparison(err_a, err_b, ids, loss="absolute", n_resamples=300)
    assert ab["mean_a"] == pytest.approx(np.mean(np.abs(err_a)), abs=1e-12)
    assert m.paired_patient_comparison(err_b, err_a, ids, n_resamples=50)["p_value"] > 0.99
    with pytest.raises(ValueError, match="loss must be"):
        m.paired_patient_comparison(err_a, err_b, ids, loss="median")


def test_fold_comparison_needs_every_fold_of_five():
    a, b = [0.40, 0.42, 0.38, 0.45, 0.41], [0.50, 0.47, 0.49, 0.52, 0.46]
    result = m.paired_fold_comparison(a, b)
    assert result["p_value"] == pytest.approx(1 / 32) and result["folds_a_better"] == 5
    assert m.paired_fold_comparison(a, b, higher_is_better=True)["p_value"] == pytest.approx(1.0)
    mixed = m.paired_fold_comparison([0.4, 0.5, 0.38, 0.45, 0.41], b)
    assert mixed["folds_a_better"] == 4 and mixed["p_value"] > 1 / 32


def test_a_comparison_without_a_test_says_why_rather_than_p_nan():
    """Two models wrong on exactly the same pairs have identical per-patient losses: there is
    no p-value, and the report line says so instead of printing ``p = nan``."""
    import warnings

    from annotation_tools.metrics import MetricWarning, format_p_value, paired_patient_comparison

    errors = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    ids = ["p1", "p1", "p2", "p2", "p3", "p3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        same = paired_patient_comparison(errors, errors, ids, loss="raw")
    assert format_p_value(same) == "no test: identical per-patient losses"
    better = paired_patient_comparison(errors * 0, errors + 1, ids, loss="raw")
    assert format_p_value(better).startswith("p = ") and "nan" not in format_p_value(better)
