"""Every evaluation number of the project, computed in one place.

Bundle evaluations and benchmarks call these functions; they wrap scipy/scikit-learn where those
have the statistic, so the numbers agree with the references, and add what RA papers report
(normalised locator error, exact/within-one agreement, "any damage" sensitivity).

Degenerate inputs never crash deep inside: empty input raises a ``ValueError`` that says so;
a statistic that is undefined for the data (Pearson r of a constant, AUC with one class) is
``nan`` with a :class:`MetricWarning` saying why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MetricWarning",
    "accuracy",
    "any_damage_sensitivity_specificity",
    "auc",
    "bootstrap_ci",
    "detection_sensitivity",
    "diagonal_errors",
    "exact_agreement",
    "format_p_value",
    "linear_weighted_kappa",
    "locator_summary",
    "normalised_errors",
    "paired_fold_comparison",
    "paired_mean_test",
    "paired_patient_comparison",
    "patient_folds",
    "patient_kfold",
    "pearson_r",
    "per_patient_means",
    "rater_agreement",
    "rmse",
    "round_grade",
    "score_summary",
    "share_within",
    "wilcoxon_one_sided",
    "within_one_agreement",
    "youden",
]


class MetricWarning(UserWarning):
    """A statistic is undefined for the given data and was returned as nan."""


def _pair(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y_true, dtype=float).ravel()
    b = np.asarray(y_pred, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y_true has {a.size} values but y_pred has {b.size}")
    if a.size == 0:
        raise ValueError("no cases to evaluate (empty input)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("inputs contain nan or inf; drop missing cases before evaluating")
    return a, b


def _nan(reason: str) -> float:
    warnings.warn(reason, MetricWarning, stacklevel=3)
    return float("nan")


# ------------------------------------------------------------------------------ scores


def format_p_value(test: Mapping[str, Any]) -> str:
    """``p = 0.0021`` for a report line, or why there is no p (``no test: identical
    per-patient losses``) rather than a bare ``p = nan`` a reader takes for a bug."""
    p = test.get("p_value")
    if p is None or not np.isfinite(p):
        return f"no test: {test.get('p_note', 'p undefined')}"
    return f"p = {p:.3g}"


def rmse(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    from sklearn.metrics import root_mean_squared_error

    a, b = _pair(y_true, y_pred)
    return float(root_mean_squared_error(a, b))


def pearson_r(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    a, b = _pair(y_true, y_pred)
    if a.size < 2:
        return _nan("Pearson r needs at least 2 cases")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return _nan("Pearson r is undefined when one input is constant")
    return float(pearsonr(a, b).statistic)


def round_grade(values: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Scores -> whole grades, halves rounded **up** (2.5 -> 3, 0.5 -> 1).

    The one rounding of the project wherever a score becomes a grade (agreement, accuracy,
    kappa, validation metrics, grade sets). ``np.rint``/``round`` round halves to the even
    grade (2.5 -> 2, 3.5 -> 4), so a score halfway between two grades went up or down
    depending on the grade. Grades are >= 0; negative input is rounded the same way
    (``floor(x + 0.5)``). Returns floats (nan stays nan); ``.astype(int)`` for labels.
    """
    return np.floor(np.asarray(values, dtype=float) + 0.5)


def exact_agreement(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """PEA (Hirano et al.): share of cases whose prediction, rounded half up to a whole grade
    (:func:`round_grade`), equals the grade."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean(round_grade(b) == round_grade(a)))


def within_one_agreement(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """PCA (Hirano et al.): share of cases whose rounded (half up) prediction is within one
    grade of the grade: a raw error of 1.5 (truth 0, prediction 1.5 -> 2) is outside, one
    just under 1.5 inside."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean(np.abs(round_grade(b) - round_grade(a)) <= 1))


def any_damage_sensitivity_specificity(
    y_true: Sequence[float], y_pred: Sequence[float], threshold: float = 0.5
) -> tuple[float, float]:
    """Sensitivity and specificity for "any damage" (grade >= 1 vs 0)."""
    a, b = _pair(y_true, y_pred)
    truth, call = a >= threshold, b >= threshold
    positives, negatives = truth.sum(), (~truth).sum()
    sens = (
        float((call & truth).sum() / positives)
        if positives
        else _nan("sensitivity is undefined: no case with damage")
    )
    spec = (
        float((~call & ~truth).sum() / negatives)
        if negatives
        else _nan("specificity is undefined: no case without damage")
    )
    return sens, spec


def accuracy(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    from sklearn.metrics import accuracy_score

    a, b = _pair(y_true, y_pred)
    return float(accuracy_score(round_grade(a).astype(int), round_grade(b).astype(int)))


def linear_weighted_kappa(
    y_true: Sequence[float], y_pred: Sequence[float], labels: Sequence[int] | None = None
) -> float:
    """Cohen's kappa with linear weights, as RATING reports for EULAR-OMERACT grades.

    ``labels``: the grades of the scale (e.g. ``range(4)``). Give them: without, scikit-learn
    weighs by the position among the grades *seen*, so with a grade missing from both inputs
    (0, 1 and 3 seen) a 1-vs-3 disagreement costs one step instead of two. Without
    ``labels`` the scale is taken as ``0..max`` of the grades seen (``range(max + 1)``), so a
    missing grade inside the scale still counts as a step; give ``labels`` for the scale's
    true top grade. Scores are rounded half up (:func:`round_grade`).
    """
    from sklearn.metrics import cohen_kappa_score

    a, b = _pair(y_true, y_pred)
    ia, ib = round_grade(a).astype(int), round_grade(b).astype(int)
    if np.unique(np.concatenate([ia, ib])).size < 2:
        return _nan("kappa is undefined when every grade, true and predicted, is the same")
    if labels is None:
        if min(ia.min(), ib.min()) < 0:
            raise ValueError("grades must be >= 0 (or give labels= for another scale)")
        labels = list(range(int(max(ia.max(), ib.max())) + 1))
    labels = [int(v) for v in labels]
    outside = set(np.unique(np.concatenate([ia, ib])).tolist()) - set(labels)
    if outside:
        raise ValueError(f"grades {sorted(outside)} are not among labels {labels}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = cohen_kappa_score(ia, ib, labels=labels, weights="linear")
    return float(value) if math.isfinite(value) else _nan("kappa is undefined for these data")


def rater_agreement(
    grades_a: Sequence[float], grades_b: Sequence[float], labels: Sequence[int] | None = None
) -> dict[str, float]:
    """Agreement of two readers on the same cases (neither is the truth): exact, within one
    grade, Pearson r, linearly weighted kappa (over ``labels``, the grades of the scale), the
    two means and their difference (``a - b``: a systematic over-call shows here).

    The "second reader" reference of a benchmark: a model that agrees with a reader as well
    as another reader does has reached the clinical limit of that figure.
    """
    a, b = _pair(grades_a, grades_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        r = pearson_r(a, b)
        kappa = linear_weighted_kappa(a, b, labels=labels) if labels is not None else float("nan")
    return {
        "n": int(a.size),
        "exact": exact_agreement(a, b),
        "within_one": within_one_agreement(a, b),
        "pearson_r": r,
        "linear_weighted_kappa": kappa,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_difference": float(a.mean() - b.mean()),
    }


def auc(y_true: Sequence[float], y_score: Sequence[float]) -> float:
    """ROC AUC of a binary split (``y_true`` 0/1)."""
    from sklearn.metrics import roc_auc_score

    a, b = _pair(y_true, y_score)
    if np.unique(a).size < 2:
        return _nan("AUC is undefined when only one class is present")
    return float(roc_auc_score(a.astype(int), b))


def youden(y_true: Sequence[float], y_score: Sequence[float]) -> tuple[float, float]:
    """Youden index J = max(sensitivity + specificity - 1) and the threshold reaching it."""
    from sklearn.metrics import roc_curve

    a, b = _pair(y_true, y_score)
    if np.unique(a).size < 2:
        return _nan("Youden index is undefined when only one class is present"), float("nan")
    fpr, tpr, thresholds = roc_curve(a.astype(int), b)
    best = int(np.argmax(tpr - fpr))
    return float(tpr[best] - fpr[best]), float(thresholds[best])


# ------------------------------------------------------------------------------ locator


def _points(
    true_xy: np.ndarray | Sequence[Sequence[float]],
    pred_xy: np.ndarray | Sequence[Sequence[float]],
    image_shape: tuple[int, int] | Sequence[tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(true_xy, dtype=float).reshape(-1, 2)
    p = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} true points but {len(p)} predicted")
    if t.size == 0:
        raise ValueError("no joints to evaluate (empty input)")
    shapes = np.asarray(image_shape, dtype=float).reshape(-1, 2)  # (H, W)
    if shapes.shape[0] not in (1, len(t)):
        raise ValueError(f"give one image shape or one per point; got {len(shapes)} for {len(t)}")
    return t, p, shapes


def normalised_errors(
    true_xy: np.ndarray | Sequence[Sequence[float]],
    pred_xy: np.ndarray | Sequence[Sequence[float]],
    image_shape: tuple[int, int] | Sequence[tuple[int, int]],
) -> np.ndarray:
    """The headline locator error, as the RA2-DREAM winner measured it: x divided by the image
    width, y by the image height, then the Euclidean distance of the normalised points.

    Li & Guan keep joint positions as fractions of the width and height (GuanLab/Mandora,
    ``code_location/pred_consensus.py``) and report the share of joints beyond 0.01, 0.015 and
    0.03 of that distance. On a portrait radiograph (H > W) this is stricter than dividing by
    the diagonal (:func:`diagonal_errors`, the secondary figure): 1 % of the width is 1 % here
    but only ``0.01 * W / diagonal`` there.

    ``image_shape`` is one ``(H, W)`` for all points or one per point. A missing prediction
    (nan) gives an infinite error, so it counts as a miss at every threshold.
    """
    t, p, shapes = _points(true_xy, pred_xy, image_shape)
    scaled = (p - t) / shapes[:, ::-1]  # (dx / W, dy / H)
    err = np.hypot(scaled[:, 0], scaled[:, 1])
    return np.where(np.isnan(err), np.inf, err)


def diagonal_errors(
    true_xy: np.ndarray | Sequence[Sequence[float]],
    pred_xy: np.ndarray | Sequence[Sequence[float]],
    image_shape: tuple[int, int] | Sequence[tuple[int, int]],
) -> np.ndarray:
    """Secondary locator error: Euclidean pixel distance divided by the image diagonal (the
    project's headline before issue 23; more lenient than :func:`normalised_errors`)."""
    t, p, shapes = _points(true_xy, pred_xy, image_shape)
    err = np.hypot(*(p - t).T) / np.hypot(shapes[:, 0], shapes[:, 1])
    return np.where(np.isnan(err), np.inf, err)


def share_within(errors: Sequence[float], threshold: float) -> float:
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        raise ValueError("no joints to evaluate (empty input)")
    return float(np.mean(e <= threshold))


def detection_sensitivity(present: Sequence[bool], detected: Sequence[bool]) -> float:
    """Share of joints that are there (annotated) and that the locator did not flag missing."""
    pres = np.asarray(present, bool)
    det = np.asarray(detected, bool)
    if pres.shape != det.shape or pres.size == 0:
        raise ValueError("present and detected must be non-empty and the same length")
    if not pres.any():
        return _nan("detection sensitivity is undefined: no joint is present")
    return float((det & pres).sum() / pres.sum())


def locator_summary(
    errors: Sequence[float],
    regions: Sequence[str],
    thresholds: Sequence[float] = (0.01, 0.02, 0.03),
) -> dict[str, dict[str, float]]:
    """Share within each threshold, overall and per region (finger, thumb, wrist, toe), of
    errors from :func:`normalised_errors` (or :func:`diagonal_errors`)."""
    e = np.asarray(errors, dtype=float)
    reg = np.asarray(regions)
    if e.shape != reg.shape:
        raise ValueError("one region per error is needed")
    out = {}
    for name in ["all", *sorted(set(reg.tolist()))]:
        sel = e if name == "all" else e[reg == name]
        out[name] = {f"within_{t:g}": share_within(sel, t) for t in thresholds}
        finite = sel[np.isfinite(sel)]
        out[name]["median_error"] = float(np.median(finite)) if finite.size else float("nan")
        out[name]["n"] = int(sel.size)
    return out


# ------------------------------------------------------------------------------ summaries


def score_summary(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """The per-joint score figures of the RA literature in one dict."""
    sens, spec = any_damage_sensitivity_specificity(y_true, y_pred)
    return {
        "n": int(np.asarray(y_true).size),
        "rmse": rmse(y_true, y_pred),
        "pearson_r": pearson_r(y_true, y_pred),
        "exact_agreement": exact_agreement(y_true, y_pred),
        "within_one_agreement": within_one_agreement(y_true, y_pred),
        "any_damage_sensitivity": sens,
        "any_damage_specificity": spec,
        "linear_weighted_kappa": linear_weighted_kappa(y_true, y_pred),
    }


@dataclass(frozen=True)
class ConfidenceInterval:
    value: float
    low: float
    high: float
    n_resamples: int
    n_undefined: int  # resamples where the statistic was nan (e.g. a single class drawn)
    unit: str = "cases"  # what was resampled: "patients" (cluster bootstrap) or "cases"
    n_units: int = 0  # how many of them

    confidence_percent: float = 95.0

    @property
    def method(self) -> str:
        """The sentence a report prints next to the interval."""
        return f"{self.confidence_percent:g} % percentile bootstrap over {self.n_units} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "ci_method": self.method,
        }


def _resample_indices(
    n: int, groups: Sequence[Any] | None, n_resamples: int, rng: np.random.Generator
) -> tuple[Iterator[np.ndarray], str, int]:
    """Index arrays of the resamples: cases drawn with replacement, or (``groups``) whole
    patients drawn with replacement, each bringing all its cases (a cluster bootstrap)."""
    if groups is None:
        return iter(rng.integers(0, n, size=(n_resamples, n))), "cases", n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has {g.size} values but there are {n} cases; one id per case")
    _, codes = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(codes == k) for k in range(codes.max() + 1)]
    draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
    return (np.concatenate([members[k] for k in d]) for d in draws), "patients", len(members)


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of ``metric(*arrays)``, resampling cases (paired) with a seed.

    ``groups``: the patient of every case. Then whole patients are drawn with replacement
    (a cluster bootstrap), so the joints of one patient, which share that patient's image
    quality and disease, are not counted as independent evidence; give them for every
    figure of a cohort (the benchmarks do).

    Written here rather than with ``scipy.stats.bootstrap`` because resamples where a metric is
    undefined (kappa or AUC on a single drawn class) must be skipped and counted, not turn the
    whole interval into nan.
    """
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if n == 0:
        raise ValueError("no cases to bootstrap (empty input)")
    if any(len(d) != n for d in data):
        raise ValueError("all arrays must have one value per case")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    indices, unit, n_units = _resample_indices(n, groups, n_resamples, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        value = float(metric(*data))
        stats = np.array([float(metric(*(d[idx] for d in data))) for idx in indices])
    common = {"unit": unit, "n_units": n_units, "confidence_percent": 100 * confidence}
    defined = stats[np.isfinite(stats)]
    if defined.size == 0:
        nan = float("nan")
        return ConfidenceInterval(value, nan, nan, n_resamples, n_resamples, **common)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(defined, [alpha, 1 - alpha])
    return ConfidenceInterval(
        value, float(low), float(high), n_resamples, int(n_resamples - defined.size), **common
    )


def wilcoxon_one_sided(errors_a: Sequence[float], errors_b: Sequence[float]) -> dict[str, float]:
    """Is model A better (smaller errors) than model B on the same cases? One-sided, paired.

    The cases must be independent: per-patient values, not the joints of a few patients
    (:func:`paired_patient_comparison` reduces joints to patients first and is what the
    benchmarks report). Returns the statistic, the p-value and the median difference (A - B).
    """
    from scipy.stats import wilcoxon

    a, b = _pair(errors_a, errors_b)
    diff = a - b
    if not np.any(diff):
        return {
            "statistic": float("nan"),
            "p_value": _nan("Wilcoxon test is undefined: the two models have identical errors"),
            "median_diff": 0.0,
        }
    result = wilcoxon(a, b, alternative="less")
    return {
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "median_diff": float(np.median(diff)),
    }


# ------------------------------------------------------------------------------ folds


def patient_kfold(
    patient_ids: Sequence[str], n_splits: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits of cases with no patient in both train and test (shuffled, seeded)."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(patient_ids)
    n_patients = np.unique(groups).size
    if n_splits < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if n_patients < n_splits:
        raise ValueError(f"{n_splits} folds need at least {n_splits} patients, got {n_patients}")
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def patient_folds(patient_ids: Sequence[str], n_splits: int, seed: int = 0) -> dict[str, int]:
    """Fold number of every patient (the test fold of its cases)."""
    folds: dict[str, int] = {}
    groups = np.asarray(patient_ids)
    for k, (_, test) in enumerate(patient_kfold(groups, n_splits, seed)):
        for pid in np.unique(groups[test]):
            folds[str(pid)] = k
    return folds


def paired_mean_test(
    errors_a: Sequence[float], errors_b: Sequence[float], n_resamples: int = 9999, seed: int = 0
) -> dict[str, float]:
    """Is the *mean* error of A below B's? One-sided paired sign-flip permutation test.

    RMSE is a mean of squared errors, so a test of the mean difference matches the claim
    "A has the lower RMSE"; the Wilcoxon test above is about the median difference.
    """
    from scipy.stats import permutation_test

    a, b = _pair(errors_a, errors_b)
    if not np.any(a - b):
        return {"p_value": _nan("identical errors: no test"), "mean_diff": 0.0}
    result = permutation_test(
        (a, b),
        lambda x, y: np.mean(x - y),
        permutation_type="samples",
        alternative="less",
        n_resamples=n_resamples,
        random_state=seed,
    )
    return {"p_value": float(result.pvalue), "mean_diff": float(np.mean(a - b))}


# ------------------------------------------------------------------ patient-level comparisons

LOSSES = ("absolute", "squared", "raw")


def per_patient_means(
    values: Sequence[float], patient_ids: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids sorted, mean of ``values`` per patient): the unit of a patient-level test."""
    v = np.asarray(values, dtype=float).ravel()
    g = np.asarray(patient_ids)
    if g.shape != v.shape:
        raise ValueError(f"{v.size} values but {g.size} patient ids; one id per case")
    ids, codes = np.unique(g, return_inverse=True)
    return ids, np.bincount(codes, weights=v) / np.bincount(codes)


def paired_patient_comparison(
    errors_a: Sequence[float],
    errors_b: Sequence[float],
    patient_ids: Sequence[Any],
    *,
    loss: str = "absolute",
    alternative: str = "less",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Is A better than B, with the *patient* as the unit? The comparison every report uses.

    ``errors_a`` and ``errors_b`` are per-case errors of two models on the same cases
    (prediction - truth, or 1/0 for wrong/right), ``patient_ids`` the patient of each case.
    Each patient's cases are reduced to one loss per model (``loss``: mean absolute error,
    mean squared error, or the ``raw`` mean, e.g. an error rate), and the per-patient losses
    are compared with the one-sided Wilcoxon signed-rank test (``alternative="less"``: A has
    the smaller loss), the test the RA2-DREAM winner used. Joints of one patient share that
    patient, so a test over joints counts one patient's luck many times over.

    Returns ``effect`` (mean over patients of A's loss minus B's; negative = A better), its
    ``ci`` from a bootstrap over patients, ``p_value``, ``n_patients``, ``n_cases`` and
    ``test`` / ``ci_method`` sentences for the report.
    """
    from scipy.stats import wilcoxon

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if alternative not in ("less", "greater", "two-sided"):
        raise ValueError(
            f"alternative must be 'less', 'greater' or 'two-sided', not {alternative!r}"
        )
    a, b = _pair(errors_a, errors_b)
    transform = {"absolute": np.abs, "squared": np.square, "raw": np.asarray}[loss]
    ids, pa = per_patient_means(transform(a), patient_ids)
    _, pb = per_patient_means(transform(b), patient_ids)
    diff = pa - pb
    n = int(ids.size)
    name = {"absolute": "mean absolute error", "squared": "mean squared error", "raw": "mean"}
    sided = {"less": "one-sided (A < B)", "greater": "one-sided (A > B)"}.get(
        alternative, "two-sided"
    )
    out: dict[str, Any] = {
        "effect": float(diff.mean()),
        "mean_a": float(pa.mean()),
        "mean_b": float(pb.mean()),
        "n_patients": n,
        "n_cases": int(a.size),
        "loss": loss,
        "test": f"{sided} Wilcoxon signed-rank over {n} per-patient {name[loss]}s",
    }
    if n < 2 or not np.any(diff):
        why = "one patient" if n < 2 else "identical per-patient losses"
        out.update(
            p_value=_nan(f"no patient-level test: {why}"), statistic=float("nan"), p_note=why
        )
    else:
        result = wilcoxon(pa, pb, alternative=alternative)
        out.update(p_value=float(result.pvalue), statistic=float(result.statistic))
    # one value per patient: resampling them is the patient (cluster) bootstrap
    ci = bootstrap_ci(
        np.mean, diff, n_resamples=n_resamples, confidence=confidence, seed=seed, groups=ids
    )
    out["ci"] = [ci.low, ci.high]
    out["ci_method"] = ci.method
    return out


def paired_fold_comparison(
    fold_metric_a: Sequence[float],
    fold_metric_b: Sequence[float],
    *,
    higher_is_better: bool = False,
) -> dict[str, Any]:
    """Is A better than B over the same cross-validation folds? One-sided paired Wilcoxon.

    For ablations trained per patient-level fold (5 folds as the RA2-DREAM winner and RATING
    did): one metric per fold and model, e.g. the fold's RMSE. With 5 folds the smallest
    possible one-sided p is 1/32 = 0.031 (every fold in favour), so 5 folds can show a
    difference at 0.05 only when all of them agree; the report says how many did.
    """
    from scipy.stats import wilcoxon

    a, b = _pair(fold_metric_a, fold_metric_b)
    alternative = "greater" if higher_is_better else "less"
    diff = a - b
    better = int(np.sum(diff > 0) if higher_is_better else np.sum(diff < 0))
    out: dict[str, Any] = {
        "effect": float(diff.mean()),
        "folds": int(a.size),
        "folds_a_better": better,
        "test": f"one-sided Wilcoxon signed-rank over {a.size} paired fold metrics "
        f"(A {'>' if higher_is_better else '<'} B)",
    }
    if a.size < 2 or not np.any(diff):
        out["p_value"] = _nan("no fold-level test: fewer than 2 folds or identical metrics")
    else:
        out["p_value"] = float(wilcoxon(a, b, alternative=alternative).pvalue)
    return out
