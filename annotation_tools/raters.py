"""Simulated raters: readers who disagree with each other the way trained readers do.

Training on the phantom truth alone leaves no "clinical upper limit": nothing says how well a
second reader would agree with the first. This module turns the truth grades of a phantom
cohort into the grades of two simulated readers, ``rater_a`` and ``rater_b``, from a confusion
model whose parameters were fitted so that the agreement *between the two readers* matches
published figures for trained readers (``docs/phantoms.md``, "Simulated raters"):

* per joint, narrowing: exact 55.5 %, within one grade 67.6 %; erosion: 70.6 % / 88.0 %
  (Hirano et al., clinician 1 vs clinician 2);
* Pearson r of the per-patient totals: narrowing 0.88, erosion 0.78 (Li & Guan, two trained
  readers; see :data:`TARGETS` for why per-patient totals);
* ultrasound (EULAR-OMERACT): inter-reader kappa SH 0.87, power Doppler 0.79, combined 0.86
  (Terslev et al. 2017, EULAR-OMERACT taskforce part 2, MCP joints with a standardised scan),
  taken here as linearly weighted kappa - an assumption, the abstract does not say which.

**The model** (per scale: narrowing 0-4, erosion 0-5 hands and 0-10 feet; grade units):

* Each joint has an *appearance* ``a`` on a latent axis, shared by both readers (a joint that
  looks borderline does so to everyone): a grade ``0 < g < K`` sits uniformly in
  ``[g - 0.5, g + 0.5)``, a healthy joint at ``0.5 - zero_depth * Exp(1)``, a top-grade joint
  at ``K - 0.5 + 0.5 * Exp(1)``.
* A reader sees ``x = a + offset + bias + u + e``: ``bias`` is the reader's systematic shift
  (``rater_b`` over-calls narrowing), ``u ~ N(0, patient_sd)`` a per-patient leniency of that
  reader (shared by all joints of one patient and score type, so totals drift together), and
  ``e`` the reading error of that joint: ``N(0, sigma)``, or with probability ``lapse`` a gross
  misread ``N(0, K / 2)`` (the wrong joint, an overlap taken for a gap, a gap for none). The
  grade is ``x`` rounded to the scale and clipped to ``0..K``.
* Ultrasound: the same construction on SH (0-3) and Doppler (0-3), no lapses and no patient
  effect; a reader who sees no synovial hypertrophy records Doppler 0; combined = the EOSS
  rule (the higher of the two, 0 when SH is 0).

Per scale, ``sigma``, ``lapse``, ``offset`` (a shift of both readers' thresholds) and
``zero_depth`` are fitted so that the two readers meet the per-joint exact and within-one
figures and ``rater_a`` is unbiased (its mean grade is the truth's);
per score type, ``patient_sd`` is then the value whose per-patient totals come nearest the
published Pearson r while the per-joint figures are still met. The fit
(:func:`fit_rater_model`, ``python -m annotation_tools.raters``) uses expected agreement (the
reading noise integrated out analytically given the appearances), which is smooth in the
parameters, on grade tables from :func:`~annotation_tools.phantoms.sample_patient_scores`.

What the fit found (``docs/phantoms.md`` has the table): erosion readers are plausible (sd 0.14-
0.22 grade, 15-22 % gross misreads) and meet 70.6 % / 88.0 %, but their per-patient totals
correlate at r 0.99, not 0.78 - no per-patient leniency large enough for 0.78 leaves the
per-joint figures intact on this cohort. Narrowing meets 54.9 % / 68.5 % / r 0.876 only with
readers who nearly always agree on a healthy joint and read a damaged one with an error of sd 3
grades (the fit's bound): with 45 % healthy joints, 32 % of grades two or more apart (Hirano)
leave no other way. Both are stated, not hidden.

Raters draw from their own random streams, seeded from the cohort seed, so adding them changes
no image and no truth value of a cohort.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any

import numpy as np
from scipy.special import ndtr

from .vocabulary import LIMBS, joints_for_limb

__all__ = [
    "FITTED",
    "RATERS",
    "TARGETS",
    "US_TARGETS",
    "RaterModel",
    "ScaleNoise",
    "UsNoise",
    "fit_rater_model",
    "read_patient",
    "read_ultrasound",
    "simulate_tables",
]

RATERS = ("rater_a", "rater_b")
FIT_SEED = 20260
# sd of a gross misread, as a share of the scale (0-4: 2 grades)
LAPSE_SD = 0.5
FIT_PATIENTS = 1000
# Random streams of the raters (np.random.default_rng([seed, patient index, stream, k])):
# k = 0 is the joints' appearance (shared by the readers), k = 1.. one per reader.
RADIOGRAPH_STREAM = 4201
ULTRASOUND_STREAM = 4202

# Scales: (limb kind, score type) -> top grade. Order fixes the order of random draws.
SCALES: dict[str, tuple[str, str, int]] = {
    "hand_narrowing": ("hand", "narrowing", 4),
    "foot_narrowing": ("foot", "narrowing", 4),
    "hand_erosion": ("hand", "erosion", 5),
    "foot_erosion": ("foot", "erosion", 10),
}
# The per-patient reader effect is given in grades of the hand scale; foot erosion (two
# surfaces, 0-10) gets twice the shift.
_PATIENT_SD_FACTOR = {"hand_narrowing": 1.0, "foot_narrowing": 1.0, "hand_erosion": 1.0}
_PATIENT_SD_FACTOR["foot_erosion"] = 2.0

# Published agreement between two trained readers (docs/phantoms.md, "Simulated raters").
# Pearson r refers to per-patient totals (all narrowing, all erosion joints of both hands and
# feet): Li & Guan worked on RA2-DREAM, which scores and ranks per patient; per-joint Pearson
# on 0-4 grades with only 55 % exact agreement cannot reach 0.88, and Hirano's per-joint
# figures are given as exact / within-one, not r. Per-joint and per-image r are reported too.
TARGETS: dict[str, dict[str, float]] = {
    "narrowing": {"exact": 0.555, "within_one": 0.676, "pearson_patient_total": 0.88},
    "erosion": {"exact": 0.706, "within_one": 0.880, "pearson_patient_total": 0.78},
}
US_TARGETS = {"synovial_hypertrophy": 0.87, "vascularity": 0.79, "combined": 0.86}


@dataclass(frozen=True)
class ScaleNoise:
    """Reading error of one scale, in grades."""

    sigma: float  # sd of the everyday misjudgement
    lapse: float  # share of joints misread grossly (error sd: half the scale)
    offset: float  # shift of both readers' thresholds: keeps rater_a unbiased
    zero_depth: float = 1.0  # mean distance of a healthy joint below the grade-1 threshold


@dataclass(frozen=True)
class UsNoise:
    """Reading error of the EULAR-OMERACT grades (SH and Doppler, 0-3)."""

    sigma_sh: float
    sigma_vascularity: float
    zero_depth: float = 0.5


@dataclass(frozen=True)
class RaterModel:
    scales: dict[str, ScaleNoise]
    patient_sd: dict[str, float]  # score type -> sd of a reader's per-patient leniency
    biases: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"rater_a": {}, "rater_b": {"narrowing": 0.35}}
    )
    ultrasound: UsNoise = UsNoise(0.45, 0.6)

    @property
    def raters(self) -> tuple[str, ...]:
        return tuple(self.biases)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fitted by `python -m annotation_tools.raters` (fit_rater_model(FIT_PATIENTS, FIT_SEED));
# docs/phantoms.md lists what they give.
FITTED = RaterModel(
    scales={
        "hand_narrowing": ScaleNoise(sigma=3.0, lapse=0.0009, offset=-0.1245, zero_depth=13.7366),
        "foot_narrowing": ScaleNoise(sigma=3.0, lapse=0.0009, offset=-0.0383, zero_depth=14.9557),
        "hand_erosion": ScaleNoise(sigma=0.1402, lapse=0.2157, offset=-0.1191, zero_depth=1.5007),
        "foot_erosion": ScaleNoise(sigma=0.2185, lapse=0.1545, offset=-0.0518, zero_depth=8.0283),
    },
    patient_sd={"narrowing": 0.9, "erosion": 0.1},
    biases={"rater_a": {}, "rater_b": {"narrowing": 0.35}},
    ultrasound=UsNoise(sigma_sh=0.1845, sigma_vascularity=0.3184),
)


# ============================================================================ the model


def _appearance(grades: np.ndarray, top: int, u: np.ndarray, e: np.ndarray, zero_depth: float):
    """Latent position of each joint given its grade and two standard draws (shared by readers)."""
    g = grades.astype(float)
    a = g + u - 0.5
    a = np.where(grades == 0, 0.5 - zero_depth * e, a)
    return np.where(grades == top, top - 0.5 + 0.5 * e, a)


def _round_to_scale(x: np.ndarray, top: int) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, top).astype(int)


def _category_probabilities(
    mean: np.ndarray, top: int, sigma: float, lapse: float = 0.0
) -> np.ndarray:
    """P(grade = k) for each case, reading noise integrated out: shape (n, top + 1)."""
    edges = np.arange(top) + 0.5  # thresholds between k and k + 1
    out = np.zeros((mean.size, top + 1))
    for weight, sd in ((1.0 - lapse, sigma), (lapse, top * LAPSE_SD)):
        if weight > 0:
            cdf = ndtr((edges[None, :] - mean[:, None]) / max(sd, 1e-6))
            cdf = np.concatenate([np.zeros((mean.size, 1)), cdf, np.ones((mean.size, 1))], 1)
            out += weight * np.diff(cdf, axis=1)
    return out


@cache
def _scale_joints(kind: str, score_type: str) -> tuple[str, ...]:
    """Joint ids carrying one scale, all limbs of that kind, vocabulary order."""
    return tuple(
        j.id
        for limb in LIMBS
        if limb.kind == kind
        for j in joints_for_limb(limb)
        if any(t.value == score_type for t in j.score_types)
    )


def read_patient(
    truth: Mapping[str, Mapping[str, int]],
    seed: int,
    index: int,
    model: RaterModel = FITTED,
) -> dict[str, dict[str, dict[str, int]]]:
    """The readers' grades of one patient: ``{rater: {joint_id: {score_type: grade}}}``.

    ``truth`` is ``{joint_id: {score_type: grade}}`` (a patient of ``sample_patient_scores``
    or a cohort record); joints absent from it are not read. The random streams depend only
    on ``(seed, index)``, never on the images.
    """
    shared = np.random.default_rng([int(seed), int(index), RADIOGRAPH_STREAM, 0])
    readers = {
        name: np.random.default_rng([int(seed), int(index), RADIOGRAPH_STREAM, k + 1])
        for k, name in enumerate(model.raters)
    }
    effects = {name: rng.standard_normal(2) for name, rng in readers.items()}
    out: dict[str, dict[str, dict[str, int]]] = {name: {} for name in model.raters}
    for key, (kind, score_type, top) in SCALES.items():
        joints = [j for j in _scale_joints(kind, score_type) if score_type in truth.get(j, {})]
        noise = model.scales[key]
        grades = np.array([int(truth[j][score_type]) for j in joints], dtype=int)
        if np.any((grades < 0) | (grades > top)):
            raise ValueError(f"{key} grades must lie in 0-{top}, got {sorted(set(grades))}")
        u, e = shared.random(len(joints)), shared.exponential(size=len(joints))
        a = _appearance(grades, top, u, e, noise.zero_depth)
        t = 0 if score_type == "narrowing" else 1
        for name, rng in readers.items():
            lapse = rng.random(len(joints)) < noise.lapse
            err = rng.standard_normal(len(joints)) * np.where(lapse, top * LAPSE_SD, noise.sigma)
            shift = noise.offset + model.biases[name].get(score_type, 0.0)
            shift += effects[name][t] * model.patient_sd[score_type] * _PATIENT_SD_FACTOR[key]
            called = _round_to_scale(a + shift + err, top)
            for joint_id, grade in zip(joints, called, strict=True):
                out[name].setdefault(joint_id, {})[score_type] = int(grade)
    return out


def read_ultrasound(
    pairs: Sequence[tuple[int, int]], seed: int, index: int, model: RaterModel = FITTED
) -> dict[str, list[tuple[int, int]]]:
    """The readers' (SH, vascularity) of one patient's ultrasound pairs, in the given order."""
    shared = np.random.default_rng([int(seed), int(index), ULTRASOUND_STREAM, 0])
    readers = {
        name: np.random.default_rng([int(seed), int(index), ULTRASOUND_STREAM, k + 1])
        for k, name in enumerate(model.raters)
    }
    us = model.ultrasound
    truth = np.asarray(pairs, dtype=int).reshape(-1, 2)
    if np.any((truth < 0) | (truth > 3)):
        raise ValueError("ultrasound grades must lie in 0-3")
    n = len(truth)
    a_sh = _appearance(truth[:, 0], 3, shared.random(n), shared.exponential(size=n), us.zero_depth)
    a_v = _appearance(truth[:, 1], 3, shared.random(n), shared.exponential(size=n), us.zero_depth)
    out = {}
    for name, rng in readers.items():
        sh = _round_to_scale(a_sh + us.sigma_sh * rng.standard_normal(n), 3)
        vasc = _round_to_scale(a_v + us.sigma_vascularity * rng.standard_normal(n), 3)
        vasc = np.where(sh == 0, 0, vasc)  # no synovium seen: no synovial Doppler (EOSS)
        out[name] = [(int(s), int(v)) for s, v in zip(sh, vasc, strict=True)]
    return out


def simulate_tables(
    n_patients: int, seed: int = FIT_SEED, model: RaterModel = FITTED
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Truth and reader grade tables of ``n_patients`` phantom patients (no images).

    Truth comes from :func:`~annotation_tools.phantoms.sample_patient_scores` with the
    cohort's patient streams, readers from :func:`read_patient`: the same tables a cohort of
    that seed would hold.
    """
    from .phantom_grades import patient_rng, sample_patient_scores

    truth = [sample_patient_scores(patient_rng(seed, i)) for i in range(n_patients)]
    reads: dict[str, list[dict]] = {name: [] for name in model.raters}
    for i, patient in enumerate(truth):
        for name, grades in read_patient(patient, seed, i, model).items():
            reads[name].append(grades)
    return truth, reads


def _us_truth(n_patients: int, seed: int) -> np.ndarray:
    """(SH, vascularity) pairs drawn as a cohort draws them (two sites per patient)."""
    from .phantom_grades import patient_rng, sample_patient_scores, sample_us_grades

    pairs = []
    for i in range(n_patients):
        rng = patient_rng(seed, i)
        grades = sample_patient_scores(rng)
        severity = np.mean(
            [g.get("erosion", 0) / 5 + g.get("narrowing", 0) / 4 for g in grades.values()]
        )
        for _ in range(2):
            pairs.append(
                sample_us_grades(rng, float(np.clip(severity * 1.3 + rng.normal(0, 0.1), 0, 1)))
            )
    return np.asarray(pairs, dtype=int)


# ============================================================================ measuring


def _as_table(patients: Sequence[Mapping[str, Mapping[str, int]]]) -> dict[str, dict]:
    return {
        f"{i:06d}": {(j, t): float(g) for j, grades in p.items() for t, g in grades.items()}
        for i, p in enumerate(patients)
    }


def table_agreement(
    truth: Sequence[Mapping[str, Mapping[str, int]]],
    a: Sequence[Mapping[str, Mapping[str, int]]],
    b: Sequence[Mapping[str, Mapping[str, int]]],
) -> dict[str, Any]:
    """Agreement of reader ``a`` with reader ``b``, and of each with the truth (the same
    figures as ``ra-joints agreement``: :func:`annotation_tools.evaluation.reader_agreement`)."""
    from .evaluation import reader_agreement

    ta, tb, tt = _as_table(a), _as_table(b), _as_table(truth)
    return {
        "a_vs_b": reader_agreement(ta, tb),
        "a_vs_truth": reader_agreement(ta, tt),
        "b_vs_truth": reader_agreement(tb, tt),
    }


def us_agreement(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, dict[str, float]]:
    """SH, vascularity and combined agreement of two ultrasound readers (and with the truth)."""
    from .metrics import rater_agreement

    out = {}
    for k, name in enumerate(("synovial_hypertrophy", "vascularity", "combined")):
        pick = (lambda x: x.max(1)) if k == 2 else (lambda x, k=k: x[:, k])
        res = rater_agreement(pick(a), pick(b), labels=[0, 1, 2, 3])
        res["a_vs_truth_accuracy"] = float(np.mean(pick(a) == pick(truth)))
        res["b_vs_truth_accuracy"] = float(np.mean(pick(b) == pick(truth)))
        out[name] = res
    return out


# ============================================================================ fitting


def _expected_scale(
    grades: np.ndarray,
    patient: np.ndarray,
    top: int,
    noise: ScaleNoise,
    draws: dict[str, np.ndarray],
    shift_a: np.ndarray,
    shift_b: np.ndarray,
) -> dict[str, np.ndarray]:
    """Expected agreement terms of one scale with the reading noise integrated out."""
    a = _appearance(grades, top, draws["u"], draws["e"], noise.zero_depth) + noise.offset
    pa = _category_probabilities(a + shift_a[patient], top, noise.sigma, noise.lapse)
    pb = _category_probabilities(a + shift_b[patient], top, noise.sigma, noise.lapse)
    k = np.arange(top + 1, dtype=float)
    near = pb.copy()
    near[:, 1:] += pb[:, :-1]
    near[:, :-1] += pb[:, 1:]
    ea, eb = pa @ k, pb @ k
    return {
        "exact": np.sum(pa * pb, axis=1),
        "within_one": np.sum(pa * near, axis=1),
        "ea": ea,
        "eb": eb,
        "va": pa @ k**2 - ea**2,
        "vb": pb @ k**2 - eb**2,
    }


def _fit_data(n_patients: int, seed: int) -> dict[str, Any]:
    from .phantom_grades import patient_rng, sample_patient_scores

    rng = np.random.default_rng([int(seed), 99])
    truth = [sample_patient_scores(patient_rng(seed, i)) for i in range(n_patients)]
    data: dict[str, Any] = {"n": n_patients, "z": rng.standard_normal((2, 2, n_patients))}
    for key, (kind, score_type, _top) in SCALES.items():
        joints = _scale_joints(kind, score_type)
        grades = np.array([[p[j][score_type] for j in joints] for p in truth], dtype=int)
        data[key] = {
            "grades": grades.ravel(),
            "patient": np.repeat(np.arange(n_patients), len(joints)),
            "u": rng.random(grades.size),
            "e": rng.exponential(size=grades.size),
        }
    return data


def _expected_agreement(
    model: RaterModel, data: dict[str, Any], keys: Sequence[str] = tuple(SCALES)
) -> dict[str, dict[str, float]]:
    """What the model gives on the fit cohort, in expectation (smooth in the parameters)."""
    out: dict[str, dict[str, float]] = {}
    (name_a, name_b) = model.raters[:2]
    per_type: dict[str, list[dict[str, np.ndarray]]] = {}
    for key in keys:
        _kind, score_type, top = SCALES[key]
        t = 0 if score_type == "narrowing" else 1
        sd = model.patient_sd[score_type] * _PATIENT_SD_FACTOR[key]
        shift_a = model.biases[name_a].get(score_type, 0.0) + sd * data["z"][0, t]
        shift_b = model.biases[name_b].get(score_type, 0.0) + sd * data["z"][1, t]
        d = data[key]
        terms = _expected_scale(
            d["grades"], d["patient"], top, model.scales[key], d, shift_a, shift_b
        )
        out[key] = {
            "exact": float(terms["exact"].mean()),
            "within_one": float(terms["within_one"].mean()),
            "mean_a": float(terms["ea"].mean()),
            "truth_mean": float(d["grades"].mean()),
        }
        per_type.setdefault(score_type, []).append({**terms, "patient": d["patient"]})
    n = data["n"]
    for score_type, parts in per_type.items():
        mu_a, mu_b, v_a, v_b = (np.zeros(n) for _ in range(4))
        for p in parts:
            mu_a += np.bincount(p["patient"], p["ea"], n)
            mu_b += np.bincount(p["patient"], p["eb"], n)
            v_a += np.bincount(p["patient"], p["va"], n)
            v_b += np.bincount(p["patient"], p["vb"], n)
        cov = np.cov(mu_a, mu_b, bias=True)[0, 1]
        var_a, var_b = mu_a.var() + v_a.mean(), mu_b.var() + v_b.mean()
        out[score_type] = {"pearson_patient_total": float(cov / math.sqrt(var_a * var_b))}
    return out


# Fit ranges: sigma 0.1-3 grades, lapses 0.1-50 %, offset +-1 grade, zero_depth 0.25-20.
_LO = np.array([math.log(0.1), -7.0, -1.0, math.log(0.25)])
_HI = np.array([math.log(3.0), 0.0, 1.0, math.log(20.0)])
# Residual weights: exact, within one, mean grade of rater_a minus the truth's (in grades).
_WEIGHTS = np.array([1.0, 1.0, 0.5])


def _noise(x: np.ndarray) -> ScaleNoise:
    return ScaleNoise(
        sigma=float(math.exp(x[0])),
        lapse=float(1 / (1 + math.exp(-x[1]))),
        offset=float(x[2]),
        zero_depth=float(math.exp(x[3])),
    )


def _packed(noise: ScaleNoise) -> np.ndarray:
    lapse = min(max(noise.lapse, 1e-3), 0.49)
    x = [
        math.log(noise.sigma),
        math.log(lapse / (1 - lapse)),
        noise.offset,
        math.log(noise.zero_depth),
    ]
    return np.clip(np.array(x), _LO + 1e-6, _HI - 1e-6)


def _fit_scale(
    model: RaterModel, key: str, data: dict[str, Any], start: ScaleNoise
) -> tuple[ScaleNoise, float]:
    """sigma, lapse, offset and zero_depth of one scale meeting its per-joint targets (the rest
    of the model given); returns them and the largest remaining miss (0 when all are met)."""
    from scipy.optimize import least_squares

    target = TARGETS[SCALES[key][1]]

    def residuals(x: np.ndarray) -> np.ndarray:
        m = replace(model, scales={**model.scales, key: _noise(x)})
        got = _expected_agreement(m, data, keys=(key,))[key]
        return _WEIGHTS * np.array(
            [
                got["exact"] - target["exact"],
                got["within_one"] - target["within_one"],
                got["mean_a"] - got["truth_mean"],
            ]
        )

    fit = least_squares(residuals, _packed(start), bounds=(_LO, _HI), diff_step=1e-3)
    return _noise(fit.x), float(np.max(np.abs(fit.fun)))


def _fit_ultrasound(model: RaterModel, n_patients: int, seed: int) -> UsNoise:
    """SH and Doppler noise so that the readers' expected kappas meet :data:`US_TARGETS`."""
    from scipy.optimize import brentq

    truth = _us_truth(n_patients, seed)
    rng = np.random.default_rng([int(seed), 98])
    n = len(truth)
    draws = [rng.random(n), rng.exponential(size=n), rng.random(n), rng.exponential(size=n)]
    zd = model.ultrasound.zero_depth

    def probs(sigma_sh: float, sigma_v: float) -> tuple[np.ndarray, np.ndarray]:
        a_sh = _appearance(truth[:, 0], 3, draws[0], draws[1], zd)
        a_v = _appearance(truth[:, 1], 3, draws[2], draws[3], zd)
        p_sh = _category_probabilities(a_sh, 3, sigma_sh)
        p_v = _category_probabilities(a_v, 3, sigma_v)
        # vascularity is 0 when the reader calls SH 0
        p_vr = p_v * (1 - p_sh[:, :1])
        p_vr[:, 0] += p_sh[:, 0]
        return p_sh, p_vr

    def kappa(pa: np.ndarray, pb: np.ndarray) -> float:
        k = np.arange(pa.shape[1])
        w = np.abs(k[:, None] - k[None, :]).astype(float)
        observed = np.einsum("ni,nj->ij", pa, pb) / len(pa)
        expected = np.outer(pa.mean(0), pb.mean(0))
        return float(1 - (w * observed).sum() / (w * expected).sum())

    sigma_sh = brentq(
        lambda s: kappa(*(probs(s, 0.5)[0],) * 2) - US_TARGETS["synovial_hypertrophy"], 0.02, 3.0
    )
    sigma_v = brentq(
        lambda s: kappa(*(probs(sigma_sh, s)[1],) * 2) - US_TARGETS["vascularity"], 0.02, 3.0
    )
    return UsNoise(sigma_sh=round(sigma_sh, 4), sigma_vascularity=round(sigma_v, 4), zero_depth=zd)


def fit_rater_model(
    n_patients: int = FIT_PATIENTS,
    seed: int = FIT_SEED,
    start: RaterModel = FITTED,
    patient_sds: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
) -> tuple[RaterModel, dict[str, Any]]:
    """Refit the reading-noise parameters to :data:`TARGETS` and :data:`US_TARGETS`.

    Per score type and candidate ``patient_sd``, each scale's (sigma, lapse, offset,
    zero_depth) is fitted to the per-joint targets; the ``patient_sd`` kept is the one whose
    expected per-patient totals r is nearest the target among those that meet the per-joint
    targets as well as any candidate does (largest miss within 0.002 of the best). Returns the
    model (rounded to 4 digits, as kept in :data:`FITTED`) and a report: the expected agreement
    on the fit cohort and the search. The biases are kept as given.
    """
    if n_patients < 50:
        raise ValueError(f"fitting needs at least 50 patients, got {n_patients}")
    data = _fit_data(n_patients, seed)
    model = start
    search: dict[str, list[dict[str, float]]] = {}
    for score_type, target in TARGETS.items():
        keys = [k for k, v in SCALES.items() if v[1] == score_type]
        trials: list[tuple[float, float, RaterModel]] = []
        search[score_type] = []
        current = dict(model.scales)
        for sd in patient_sds:
            trial = replace(model, patient_sd={**model.patient_sd, score_type: float(sd)})
            miss = 0.0
            for key in keys:
                noise, m = _fit_scale(trial, key, data, current[key])
                current[key] = noise
                trial = replace(trial, scales={**trial.scales, key: noise})
                miss = max(miss, m)
            r = _expected_agreement(trial, data, keys=keys)[score_type]["pearson_patient_total"]
            search[score_type].append({"patient_sd": float(sd), "pearson": r, "miss": miss})
            trials.append((miss, abs(r - target["pearson_patient_total"]), trial))
        best_miss = min(t[0] for t in trials)
        model = min((t for t in trials if t[0] <= best_miss + 0.002), key=lambda t: t[1])[2]
    model = replace(
        model,
        scales={
            k: ScaleNoise(*(round(v, 4) for v in (s.sigma, s.lapse, s.offset, s.zero_depth)))
            for k, s in model.scales.items()
        },
        patient_sd={k: round(v, 4) for k, v in model.patient_sd.items()},
    )
    model = replace(model, ultrasound=_fit_ultrasound(model, n_patients, seed))
    return model, {"expected": _expected_agreement(model, data), "search": search}


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m annotation_tools.raters",
        description="Refit the simulated raters (prints the FITTED constants) or measure them.",
    )
    parser.add_argument("action", choices=["fit", "measure"])
    parser.add_argument("--patients", type=int, default=FIT_PATIENTS)
    parser.add_argument("--seed", type=int, default=FIT_SEED)
    parser.add_argument("--json", action="store_true", help="measure: everything as JSON")
    args = parser.parse_args(argv)
    if args.action == "fit":
        model, report = fit_rater_model(args.patients, args.seed)
        print(json.dumps({"model": model.as_dict(), **report}, indent=2))
        return 0
    truth, reads = simulate_tables(args.patients, args.seed)
    a, b = (reads[name] for name in FITTED.raters[:2])
    result = {"radiographs": table_agreement(truth, a, b)}
    us_truth = _us_truth(args.patients, args.seed)
    us_reads = [
        read_ultrasound(us_truth[2 * i : 2 * i + 2], args.seed, i) for i in range(args.patients)
    ]
    result["ultrasound"] = us_agreement(
        us_truth,
        np.array([p for r in us_reads for p in r[FITTED.raters[0]]]),
        np.array([p for r in us_reads for p in r[FITTED.raters[1]]]),
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from .evaluation import agreement_lines

    print(f"seed {args.seed}, {args.patients} patients (grade tables, no images)")
    for name in ("a_vs_b", "a_vs_truth", "b_vs_truth"):
        print(f"\n== {name}")
        print(agreement_lines({"kind": "radiograph", **result["radiographs"][name]}))
    print("\n== ultrasound, rater_a vs rater_b (accuracy vs truth: a, b)")
    for grade, res in result["ultrasound"].items():
        print(
            f"{grade:<22} exact {res['exact']:.1%}  kappa_lin {res['linear_weighted_kappa']:.3f}"
            f"  accuracy {res['a_vs_truth_accuracy']:.1%}, {res['b_vs_truth_accuracy']:.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
