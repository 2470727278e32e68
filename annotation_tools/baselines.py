"""Baselines a learned model must beat, and broken variants that must lose.

A benchmark that cannot tell a broken model from a good one is itself a failed test, so every
learned figure is reported next to:

* Li & Guan's trivial radiograph baselines: every score 0, and the training cohort's mean of
  each joint and score type;
* pixel-feature baselines that know where to look but not what a grade is: for ultrasound the
  share of dark (anechoic/hypoechoic, as synovial hypertrophy is) and of coloured (Doppler
  flow) pixels in the ROI, fed to a logistic regression; for radiographs an intensity profile
  along the bone axis through the annotated joint centre (the width and depth of the dark gap,
  a few profile statistics) fed to a random forest - fine for narrowing, poor for erosion, as
  it should be;
* the same pixel baselines trained on patient-shuffled labels, which must fall to chance.

:func:`beats_baseline` is the margin check: a learned loss at least ``margin`` below the best
baseline's *and* a patient-level CI of the difference that excludes 0.

Seeds are parameters (defaults below: the shipped bundles' training cohorts, and validation
cohorts that no bundle trained on and no documented test figure uses).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .us_pixels import chroma
from .vocabulary import DREAM_TOTAL_COLUMNS, parse_dream_column

__all__ = [
    "DARK_LEVELS",
    "GAP_FEATURES",
    "TRAIN_SEEDS",
    "VALIDATION_SEEDS",
    "PixelBaseline",
    "all_zeros_table",
    "beats_baseline",
    "bone_axis",
    "falls_to_chance",
    "gap_profile_features",
    "patient_shuffled",
    "training_mean_table",
    "training_means",
    "us_pixel_features",
]

# Training cohorts of the shipped weights (scripts/train_quick.sh of the scorer and RATING
# bundles: phantoms seed 100 and seed 400, schematic style) and validation cohorts of the
# baselines. The seed registry (deliverable 1 of issue 23) may replace these defaults.
TRAIN_SEEDS = {"radiograph": 100, "ultrasound": 400}
VALIDATION_SEEDS = {"radiograph": 1000, "ultrasound": 1100}

# grey levels (0-255) under which an ultrasound pixel counts as dark: synovial hypertrophy is
# anechoic to hypoechoic; three levels so the classifier, not the author, picks the cut
DARK_LEVELS = (40, 70, 100)


# ------------------------------------------------------------------ trivial (Li & Guan)


def _score_cells(
    table: Mapping[str, Mapping[str, float]],
) -> list[tuple[str, str, float]]:
    return [
        (pid, column, float(value))
        for pid, row in table.items()
        for column, value in row.items()
        if column not in DREAM_TOTAL_COLUMNS
    ]


def training_means(train: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of every RA2-DREAM joint column (joint x score type) over the training patients,
    and under ``"narrowing"`` / ``"erosion"`` the mean of each score type (for a column the
    training cohort never graded)."""
    cells = _score_cells(train)
    if not cells:
        raise ValueError("the training table has no joint score: no means to learn")
    by_column: dict[str, list[float]] = defaultdict(list)
    by_type: dict[str, list[float]] = defaultdict(list)
    for _, column, value in cells:
        by_column[column].append(value)
        by_type[parse_dream_column(column)[1].value].append(value)
    return {
        **{k: float(np.mean(v)) for k, v in by_column.items()},
        **{k: float(np.mean(v)) for k, v in by_type.items()},
    }


def all_zeros_table(truth: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Every joint score of ``truth``'s patients predicted 0 (no damage anywhere)."""
    return {pid: {c: 0.0 for _, c, _ in _score_cells({pid: row})} for pid, row in truth.items()}


def training_mean_table(
    truth: Mapping[str, Mapping[str, float]], means: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Every joint score of ``truth``'s patients predicted as the training mean of its column
    (:func:`training_means`); the truth gives only which scores to predict."""
    out: dict[str, dict[str, float]] = {}
    for pid, row in truth.items():
        out[pid] = {}
        for _, column, _ in _score_cells({pid: row}):
            if column in means:
                out[pid][column] = means[column]
            else:
                out[pid][column] = means[parse_dream_column(column)[1].value]
    return out


# ------------------------------------------------------------------ pixel features


def us_pixel_features(
    image: np.ndarray, *, dark_levels: Sequence[int] = DARK_LEVELS, min_chroma: int = 50
) -> np.ndarray:
    """Dark-pixel shares and the coloured-pixel share of a RATING input.

    ``image``: (4, S, S) uint8 as :meth:`UsCase.image` (channel 0 the grey-scale ROI crop,
    1-3 the transformed Doppler, grey with every flow pixel in one colour). Returns
    ``[share of grey < level for each level, share of coloured pixels]``.
    """
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[0] != 4:
        raise ValueError(f"expected a (4, S, S) RATING input, got shape {x.shape}")
    grey = x[0].astype(np.int16)
    colour = chroma(np.moveaxis(x[1:4], 0, -1)) >= min_chroma
    return np.array([*(float(np.mean(grey < lv)) for lv in dark_levels), float(colour.mean())])


def bone_axis(patch: np.ndarray) -> np.ndarray:
    """Unit (dy, dx) of the long axis of the bright (bone) pixels of a joint patch.

    The principal axis of the intensity-weighted bright pixels: the two bone ends either
    side of the joint lie along it. A patch without structure gives the vertical.
    """
    p = np.asarray(patch, dtype=float)
    weights = np.clip(p - np.median(p), 0, None)
    if weights.sum() <= 0:
        return np.array([1.0, 0.0])
    rows, cols = np.indices(p.shape)
    coords = np.stack([rows.ravel(), cols.ravel()], 1).astype(float)
    w = weights.ravel()
    mean = (coords * w[:, None]).sum(0) / w.sum()
    centred = coords - mean
    cov = (centred * w[:, None]).T @ centred / w.sum()
    _, vectors = np.linalg.eigh(cov)
    axis = vectors[:, -1]
    return axis if axis[0] >= 0 else -axis


GAP_FEATURES = (
    "gap_width",
    "gap_depth",
    "gap_min",
    "bone_level",
    "profile_mean",
    "profile_std",
    "gap_offset",
    "roughness",
)


def gap_profile_features(patch: np.ndarray, *, linewidth: int = 5) -> np.ndarray:
    """The joint-space profile of a joint patch centred on the annotated joint.

    An intensity profile (``skimage.measure.profile_line``, ``linewidth`` pixels wide)
    along :func:`bone_axis` through the patch centre; its dark dip in the central half is the
    joint space. Returns :data:`GAP_FEATURES`: the dip's width at half depth (in patch pixels),
    its depth below the bone level (median of the outer quarters), its minimum, the bone level,
    the profile's mean and standard deviation, the dip's offset from the centre, and the mean
    absolute second difference (cortical irregularity).
    """
    from skimage.measure import profile_line

    p = np.asarray(patch, dtype=float)
    if p.ndim != 2 or min(p.shape) < 8:
        raise ValueError(f"expected a 2D joint patch of at least 8 x 8 pixels, got {p.shape}")
    size = p.shape[0]
    centre = np.array([(p.shape[0] - 1) / 2, (p.shape[1] - 1) / 2])
    half = 0.45 * size * bone_axis(p)
    prof = profile_line(
        p, centre - half, centre + half, linewidth=linewidth, mode="reflect", reduce_func=np.mean
    )
    n = prof.size
    q = n // 4
    bone = float(np.median(np.concatenate([prof[:q], prof[-q:]])))
    middle = prof[q : n - q]
    k = int(np.argmin(middle))
    low = float(middle[k])
    depth = bone - low
    width = 0.0
    if depth > 0:
        below = middle < low + depth / 2
        left = k
        while left > 0 and below[left - 1]:
            left -= 1
        right = k
        while right < below.size - 1 and below[right + 1]:
            right += 1
        width = float(right - left + 1) * (2 * np.linalg.norm(half)) / max(n - 1, 1)
    return np.array(
        [
            width,
            depth,
            low,
            bone,
            float(prof.mean()),
            float(prof.std()),
            float(k + q - (n - 1) / 2),
            float(np.mean(np.abs(np.diff(prof, 2)))) if n > 2 else 0.0,
        ]
    )


# ------------------------------------------------------------------ broken variants


def patient_shuffled(
    labels: Sequence[Any], patient_ids: Sequence[Any], keys: Sequence[Any], seed: int = 0
) -> np.ndarray:
    """Labels moved to other patients: each case gets the label of the same ``key`` (joint,
    ultrasound site) of another patient, the same other patient for all its cases.

    Patients are cycled through a seeded random order (a derangement: no patient keeps its
    own labels), so the label distribution per key stays and only the image-label link is
    broken. A key the other patient lacks (or has fewer cases of) takes a random label of
    that key from any other patient.
    """
    y = np.asarray(labels)
    ids = np.asarray(patient_ids)
    ks = np.asarray(keys)
    if not (y.shape[0] == ids.shape[0] == ks.shape[0]):
        raise ValueError("labels, patient_ids and keys need one value per case")
    patients = np.unique(ids)
    if patients.size < 2:
        raise ValueError("shuffling labels across patients needs at least 2 patients")
    rng = np.random.default_rng(seed)
    order = rng.permutation(patients)
    donor = {order[i]: order[(i + 1) % order.size] for i in range(order.size)}
    # a patient may have several cases of one key (left and right MCP 2): matched in order
    cells: dict[tuple[Any, Any], list[int]] = defaultdict(list)
    by_key: dict[Any, list[int]] = defaultdict(list)
    rank = []
    for i, (p, k) in enumerate(zip(ids.tolist(), ks.tolist(), strict=True)):
        rank.append(len(cells[(p, k)]))
        cells[(p, k)].append(i)
        by_key[k].append(i)
    out = y.copy()
    for i, (p, k) in enumerate(zip(ids.tolist(), ks.tolist(), strict=True)):
        other = cells.get((donor[p], k), [])
        if rank[i] < len(other):
            j = other[rank[i]]
        else:  # never the patient's own label: that would leak the truth back
            pool = [c for c in by_key[k] if ids[c] != p] or by_key[k]
            j = int(rng.choice(pool))
        out[i] = y[j]
    return out


class PixelBaseline:
    """A scikit-learn model on pixel features: a classifier (ultrasound grades) or a regressor
    (radiograph scores), optionally trained on patient-shuffled labels (the broken variant).

    ``kind="classifier"``: standardised features -> multinomial logistic regression (the
    grades are few and ordered; a linear model on two or four shares is all a baseline needs).
    ``kind="regressor"``: a random forest (gap features interact with the joint type).
    ``categories``: per-case category (joint site) one-hot encoded next to the features.
    """

    def __init__(self, kind: str, *, shuffled: bool = False, seed: int = 0, trees: int = 200):
        if kind not in ("classifier", "regressor"):
            raise ValueError(f"kind must be 'classifier' or 'regressor', not {kind!r}")
        self.kind, self.shuffled, self.seed, self.trees = kind, shuffled, seed, trees
        self._model: Any = None
        self._categories: list[Any] = []

    def _design(self, features: np.ndarray, categories: Sequence[Any] | None) -> np.ndarray:
        x = np.asarray(features, dtype=float)
        if x.ndim != 2:
            raise ValueError(f"features must be (cases, features), got shape {x.shape}")
        if not self._categories:
            return x
        if categories is None:
            raise ValueError("this baseline was fitted with categories: give them to predict")
        cats = np.asarray(categories)
        onehot = np.stack([cats == c for c in self._categories], 1).astype(float)
        return np.concatenate([x, onehot], 1)

    def fit(
        self,
        features: np.ndarray,
        labels: Sequence[float],
        patient_ids: Sequence[Any],
        categories: Sequence[Any] | None = None,
        *,
        keys: Sequence[Any] | None = None,
    ) -> PixelBaseline:
        """``keys``: what a shuffled label must keep (the joint or site of the case; default
        ``categories``): the label of the same key of another patient."""
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(labels, dtype=float)
        if len(y) != len(features):
            raise ValueError(f"{len(features)} feature rows but {len(y)} labels")
        if self.shuffled:
            if keys is None:
                keys = categories if categories is not None else np.zeros(len(y))
            y = patient_shuffled(y, patient_ids, keys, seed=self.seed)
        self._categories = sorted(set(categories)) if categories is not None else []
        x = self._design(features, categories)
        if self.kind == "classifier":
            self._model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            self._model.fit(x, y.astype(int))
        else:
            self._model = RandomForestRegressor(
                n_estimators=self.trees, min_samples_leaf=5, random_state=self.seed, n_jobs=1
            )
            self._model.fit(x, y)
        return self

    def predict(self, features: np.ndarray, categories: Sequence[Any] | None = None) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("fit the baseline before predicting")
        return np.asarray(self._model.predict(self._design(features, categories)), dtype=float)


# ------------------------------------------------------------------ verdicts


def beats_baseline(
    model_fig: float,
    baseline_fig: float,
    margin: float = 0.10,
    *,
    ci: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Does a learned model beat a baseline by a clear margin? Losses: lower is better (RMSE,
    error rate = 1 - accuracy).

    Passes when ``model_fig <= (1 - margin) * baseline_fig`` and, when given, the patient-level
    ``ci`` of the difference (model - baseline) lies entirely below 0. ``reason`` says which
    condition failed, in words for the report.
    """
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    if not (np.isfinite(model_fig) and np.isfinite(baseline_fig)):
        return {"beats": False, "reason": "a figure is not finite", "required": float("nan")}
    required = (1 - margin) * baseline_fig
    improvement = 1 - model_fig / baseline_fig if baseline_fig > 0 else float("nan")
    out: dict[str, Any] = {
        "model": float(model_fig),
        "baseline": float(baseline_fig),
        "margin": margin,
        "required": float(required),
        "relative_improvement": float(improvement),
    }
    if baseline_fig <= 0:
        out["beats"] = False
        out["reason"] = (
            f"NOT beaten: the baseline is already perfect (loss {baseline_fig:.4g}); nothing is "
            "left to beat on these data - they are too easy to tell the model from the baseline"
        )
    elif model_fig > required:
        out["beats"] = False
        out["reason"] = (
            f"NOT beaten: {model_fig:.4g} is not {margin:.0%} below the baseline's "
            f"{baseline_fig:.4g} (needs <= {required:.4g}; improvement {improvement:.1%})"
        )
    elif ci is not None and not ci[1] < 0:
        out["beats"] = False
        out["reason"] = (
            f"NOT beaten: {improvement:.1%} better but the patient-level CI of the difference "
            f"({ci[0]:+.4g} to {ci[1]:+.4g}) does not exclude 0"
        )
    else:
        out["beats"] = True
        out["reason"] = (
            f"beaten: {model_fig:.4g} vs {baseline_fig:.4g} ({improvement:.1%} better, margin "
            f"{margin:.0%}"
            + (f", CI of the difference {ci[0]:+.4g} to {ci[1]:+.4g})" if ci else ")")
        )
    return out


def falls_to_chance(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """Is a broken variant no better than chance? ``comparison``: a
    :func:`metrics.paired_patient_comparison` of the broken variant (A) against the chance
    reference (B: the training mean, or the majority grade). It falls to chance when the
    patient CI of its advantage does not exclude 0 on the better side or it is worse."""
    low, high = comparison["ci"]
    ok = bool(high >= 0)
    return {
        "falls_to_chance": ok,
        "reason": (
            "at chance: no better than the chance reference"
            if ok
            else f"ABOVE chance: better than the chance reference (CI {low:+.4g} to {high:+.4g}) "
            "- the shuffled variant still learns something; the benchmark has a leak"
        ),
    }
