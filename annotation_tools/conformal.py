"""Calibrated grade sets: split conformal prediction around the scorer's per-joint grades.

The scorer regresses a grade per joint and score type and reports a spread (``*_sd``: the
class spread of the patch head, the tree spread of the symmetry stage). Neither is a
probability. A **split-conformal regressor** turns them into sets with a coverage guarantee:
on a calibration cohort the scorer never trained on, the normalised residuals
``|truth - prediction| / (sd + beta)`` are collected per *bin* (hand or foot, narrowing or
erosion: a Mondrian calibration, because the scales and the error sizes differ); for a new
joint the interval ``prediction +- q * (sd + beta)`` with ``q`` the bin's finite-sample
quantile covers the truth with probability >= the chosen coverage, *marginally* over joints
exchangeable with the calibration ones. The grade set is the integers inside that interval,
clipped to the joint's scale (the truth is an integer, so this keeps the guarantee).

The multi-task U-Net (:mod:`annotation_tools.multitask`) reports the same rows (its spread is
the weighted grade spread over a joint's pixels), so its sets are made here too: the same
bins, file format and weights check (:func:`matching_calibration`), its own file next to its
weights.

The quantile bookkeeping is `crepes <https://github.com/henrikbostrom/crepes>`_
(``ConformalRegressor`` with ``bins`` and ``sigmas``: a kept, scikit-learn-style library for
exactly this); this module only chooses the bins, the grade rounding and the file format.

What it is not: the guarantee is marginal (over the joints of patients like the calibration
ones), on phantoms here, and not per patient or per joint; see ``docs/uncertainty.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import round_grade
from .paths import write_text_atomic
from .vocabulary import get_joint

__all__ = [
    "CALIBRATION_FILE",
    "GradeCalibration",
    "GradeSet",
    "JointSetsCsv",
    "MondrianQuantiles",
    "bin_of",
    "calibrate_grades",
    "check_coverage",
    "choose_beta",
    "coverage_figures",
    "interval_grade_set",
    "matching_calibration",
    "read_json_document",
    "write_json_document",
]

# in a radiograph bundle's models/ (scorer, multi-task U-Net), or next to its weights
CALIBRATION_FILE = "conformal.json"
FORMAT = "ra_joints.conformal_grades/1"
BINS = ("hand_narrowing", "hand_erosion", "foot_narrowing", "foot_erosion")
MIN_PER_BIN = 20  # fewer calibration residuals than this: the bin borrows the pooled ones
# beta="auto" picks among these on the calibration cohort alone (the range the scorer's
# shipped beta was chosen from, docs/uncertainty.md)
BETAS = (0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 10.0, 100.0)
AUTO_LEVEL = 0.9  # the coverage at which beta="auto" compares widths
AUTO_REPEATS = 20  # random patient halves beta="auto" compares on


def bin_of(joint_id: str, score_type: str) -> str:
    """The calibration bin of a joint's score: limb kind and score type."""
    return f"{get_joint(joint_id).limb.kind}_{score_type}"


@dataclass(frozen=True)
class GradeSet:
    """The integers ``low..high`` (a set of consecutive grades) at ``coverage``."""

    prediction: float
    low: int
    high: int
    coverage: float

    @property
    def width(self) -> int:
        """Number of grades in the set minus one (0: a single grade)."""
        return self.high - self.low

    def __contains__(self, grade: object) -> bool:
        return isinstance(grade, int | float) and self.low <= grade <= self.high


@dataclass
class GradeCalibration:
    """Normalised calibration residuals per bin, and where they came from."""

    residuals: dict[str, list[float]]
    beta: float = 0.25  # added to the spread so a joint with sd 0 still gets a width
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        self._quantiles = MondrianQuantiles(self.residuals, BINS)

    def grade_sets(
        self,
        rows: Sequence[tuple[str, str, float, float | None]],
        coverage: float = 0.9,
    ) -> list[GradeSet]:
        """``(joint_id, score_type, prediction, sd)`` rows -> one grade set each."""
        check_coverage(coverage)
        if not rows:
            return []
        sigmas = np.array([_sigma(r[3], self.beta) for r in rows])
        # residuals were divided by sigma, so the interval is pred +- q * sigma
        half = self._quantiles.half_widths([bin_of(r[0], r[1]) for r in rows], coverage) * sigmas
        return [
            interval_grade_set(
                float(pred), float(h), get_joint(joint_id).max_score(score_type), coverage
            )
            for (joint_id, score_type, pred, _), h in zip(rows, half, strict=True)
        ]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        residuals = {b: [round(float(r), 5) for r in v] for b, v in self.residuals.items()}
        body = {"beta": self.beta, "source": self.source, "residuals": residuals}
        return write_json_document(path, FORMAT, body)

    @classmethod
    def load(cls, path: str | Path) -> GradeCalibration:
        """Read a calibration file (plain JSON: numbers only, nothing executable)."""
        doc = read_json_document(path, FORMAT, "grade calibration")
        return cls(
            {str(b): [float(r) for r in v] for b, v in doc["residuals"].items()},
            beta=float(doc["beta"]),
            source=dict(doc.get("source", {})),
        )


def write_json_document(path: str | Path, format: str, body: Mapping[str, Any]) -> Path:
    """Write ``{"format": format, **body}`` as indented JSON: the one writer of the calibration
    files (grade, ultrasound grade and locator), so they stay plain data with a format tag.
    Written atomically: a job killed mid-write leaves the old file whole, never half a file."""
    return write_text_atomic(path, json.dumps({"format": format, **body}, indent=1))


def read_json_document(path: str | Path, format: str, what: str) -> dict[str, Any]:
    """Read a JSON document written by :func:`write_json_document` and check its ``format``.

    ``what`` names the kind of file for the error (``"grade calibration"``): a missing or
    unreadable file, a file that is not JSON and a file of another format each raise a
    ``ValueError`` naming the path, so a wrong file never half-loads.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != format:
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise ValueError(f"{path} is not {article} {what} ({format})")
    return doc


def matching_calibration(
    folder: str | Path,
    model_info: Mapping[str, Any],
    keys: Sequence[str] = ("weights_sha256",),
    how: str = "ra-joints calibrate",
) -> tuple[GradeCalibration | None, str]:
    """``(calibration, "")`` when ``folder``'s calibration file was made with exactly these
    weights (every ``keys`` entry of ``model_info`` equals the one its source records), else
    ``(None, why not)``: other weights (a retrained version, another member count) get no
    grade sets rather than sets that were never checked. ``how`` is the command that makes
    one, for the message."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None, (
            f"no conformal calibration for these weights ({path} absent): set columns empty; "
            f"{how} makes one"
        )
    calibration = GradeCalibration.load(path)
    made_with = calibration.source
    differ = [k for k in keys if made_with.get(k) != model_info.get(k)]
    if differ:
        shown = ", ".join(
            f"{k} {str(made_with.get(k))[:12]} in the file vs {str(model_info.get(k))[:12]} in use"
            for k in differ
        )
        return None, (
            f"{path} was calibrated for other weights ({shown}): not used, set columns "
            f"empty; {how} calibrates these"
        )
    return calibration, ""


def check_coverage(coverage: float) -> None:
    """A coverage is a probability strictly between 0 and 1 (say so otherwise)."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")


def interval_grade_set(prediction: float, half_width: float, top: int, coverage: float) -> GradeSet:
    """The integers inside ``prediction +- half_width``, clipped to ``0..top``.

    The truth is an integer, so cutting a conformal interval down to the integers inside it
    keeps its guarantee. When no integer lies inside, the nearest grade (only adds coverage):
    a set is never empty. An infinite half-width (too few calibration residuals for that
    coverage) is the whole scale: the honest answer.
    """
    if not math.isfinite(half_width):
        return GradeSet(float(prediction), 0, int(top), float(coverage))
    low = max(0, math.ceil(prediction - half_width - 1e-9))
    high = min(int(top), math.floor(prediction + half_width + 1e-9))
    if low > high:
        low = high = int(np.clip(round_grade(prediction), 0, top))
    return GradeSet(float(prediction), int(low), int(high), float(coverage))


class MondrianQuantiles:
    """Split-conformal quantiles of nonnegative residuals, one per bin (Mondrian), by crepes.

    ``residuals``: bin -> calibration residuals; ``bins``: every bin a prediction may ask for.
    A bin with fewer than ``min_per_bin`` residuals uses the quantile of all bins' residuals
    pooled (its own would be too coarse); fewer than ``min_per_bin`` in all is refused.
    Shared by the scorer's and RATING's grade sets so the bookkeeping lives in one place.
    """

    def __init__(
        self,
        residuals: Mapping[str, Sequence[float]],
        bins: Sequence[str],
        min_per_bin: int = MIN_PER_BIN,
    ):
        from crepes import ConformalRegressor

        unknown = set(residuals) - set(bins)
        if unknown:
            raise ValueError(f"unknown calibration bins {sorted(unknown)}; expected {tuple(bins)}")
        pooled = [float(r) for values in residuals.values() for r in values]
        if len(pooled) < min_per_bin:
            raise ValueError(
                f"{len(pooled)} calibration residuals are too few for a grade set "
                f"(need at least {min_per_bin}); calibrate on more patients"
            )
        self.labels = {b: b if len(residuals.get(b, ())) >= min_per_bin else "pooled"
                       for b in bins}  # fmt: skip
        own = [b for b in bins if self.labels[b] == b]
        values = [np.asarray(residuals[b], float) for b in own]
        labels = [np.full(len(v), b, dtype=object) for b, v in zip(own, values, strict=True)]
        if "pooled" in self.labels.values():
            values.append(np.asarray(pooled, float))
            labels.append(np.full(len(pooled), "pooled", dtype=object))
        self._regressor = ConformalRegressor().fit(
            np.concatenate(values), bins=np.concatenate(labels)
        )

    def half_widths(self, bins: Sequence[str], coverage: float) -> np.ndarray:
        """The conformal quantile of each requested bin at ``coverage`` (``inf`` when the
        bin has too few residuals for that coverage, as crepes says)."""
        check_coverage(coverage)
        if not len(bins):
            return np.zeros(0)
        labels = np.array([self.labels[b] for b in bins], dtype=object)
        return self._regressor.predict_int(
            np.zeros(len(labels)), bins=labels, confidence=coverage
        )[:, 1]  # fmt: skip


def _sigma(sd: float | None, beta: float) -> float:
    return beta + (float(sd) if sd is not None and np.isfinite(sd) else 0.0)


def _residuals(
    rows: Sequence[tuple[str, str, float, float | None, float]], beta: float
) -> dict[str, list[float]]:
    residuals: dict[str, list[float]] = {}
    for joint_id, score_type, pred, sd, truth in rows:
        residuals.setdefault(bin_of(joint_id, score_type), []).append(
            abs(float(truth) - float(pred)) / _sigma(sd, beta)
        )
    return residuals


def choose_beta(
    rows: Sequence[tuple[str, str, float, float | None, float]],
    patients: Sequence[str],
    betas: Sequence[float] = BETAS,
    *,
    level: float = AUTO_LEVEL,
    repeats: int = AUTO_REPEATS,
) -> tuple[float | None, dict[str, Any]]:
    """The ``beta`` with the narrowest mean set width at ``level`` whose coverage stays at or
    above ``level``, over ``repeats`` random halves of the calibration *patients* (one half
    calibrates, the other measures, and the other way round): a choice made on the
    calibration cohort alone, so no reported figure takes part.

    Returns ``(None, report)`` when no candidate qualifies or the halves are too small to
    calibrate (the caller keeps its default and records why).
    """
    ids = sorted(set(patients))
    if len(patients) != len(rows):
        raise ValueError(f"{len(patients)} patient ids for {len(rows)} calibration rows")
    rng = np.random.default_rng(0)
    halves = [set(ids[i] for i in rng.permutation(len(ids))[: len(ids) // 2])
              for _ in range(repeats)]  # fmt: skip
    report: dict[str, Any] = {"level": level, "repeats": repeats, "candidates": {}}
    best: tuple[float, float] | None = None
    for beta in betas:
        widths: list[int] = []
        covers: list[bool] = []
        try:
            for half in halves:
                inside = [p in half for p in patients]
                for cal_side in (True, False):
                    fit = [r for r, i in zip(rows, inside, strict=True) if i == cal_side]
                    held = [r for r, i in zip(rows, inside, strict=True) if i != cal_side]
                    sets = GradeCalibration(_residuals(fit, beta), beta=beta).grade_sets(
                        [r[:4] for r in held], level
                    )
                    widths += [s.width for s in sets]
                    covers += [r[4] in s for r, s in zip(held, sets, strict=True)]
        except ValueError as exc:  # a half with too few residuals: no choice to be made
            report["note"] = f"halves too small to compare ({exc})"
            return None, report
        width, coverage = float(np.mean(widths)), float(np.mean(covers))
        report["candidates"][str(beta)] = {
            "mean_width": round(width, 4),
            "coverage": round(coverage, 4),
        }
        if coverage >= level and (best is None or width < best[0] - 1e-9):
            best = (width, float(beta))
    if best is None:
        report["note"] = f"no candidate kept {level:.0%} coverage on the held-out halves"
        return None, report
    return best[1], report


def calibrate_grades(
    rows: Iterable[tuple[str, str, float, float | None, float]],
    *,
    beta: float | str = 0.25,
    patients: Sequence[str] | None = None,
    source: Mapping[str, Any] | None = None,
) -> GradeCalibration:
    """``(joint_id, score_type, prediction, sd, truth)`` of a calibration cohort -> calibration.

    ``beta``: a number, or ``"auto"`` (:func:`choose_beta` over the ``patients`` of the rows,
    one id per row; 0.25 when it cannot choose, with the reason under ``source.beta_choice``).
    The cohort must be one the model never trained on and that no reported figure uses.
    """
    rows = list(rows)
    ids = [None] * len(rows) if patients is None else list(patients)
    if len(ids) != len(rows):
        raise ValueError(f"{len(ids)} patient ids for {len(rows)} calibration rows")
    kept = [(r, p) for r, p in zip(rows, ids, strict=True)
            if r[2] is not None and r[4] is not None and np.isfinite(r[2])]  # fmt: skip
    usable = [r for r, _ in kept]
    info = dict(source or {})
    if beta == "auto":
        if patients is None:
            raise ValueError('beta="auto" chooses over patients: give patients (one per row)')
        chosen, info["beta_choice"] = choose_beta(usable, [str(p) for _, p in kept])
        beta = 0.25 if chosen is None else chosen
    elif isinstance(beta, str):
        raise ValueError(f'beta must be a number or "auto", got {beta!r}')
    return GradeCalibration(_residuals(usable, float(beta)), beta=float(beta), source=info)


def coverage_figures(
    sets: Sequence[GradeSet],
    truths: Sequence[float],
    bins: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Empirical coverage and mean set width (in grades, ``high - low``) per bin and overall."""
    out: dict[str, dict[str, float]] = {}
    groups: dict[str, list[int]] = {"all": list(range(len(sets)))}
    for i, b in enumerate(bins):
        groups.setdefault(b, []).append(i)
    for name, idx in groups.items():
        if not idx:
            continue
        covered = [truths[i] in sets[i] for i in idx]
        out[name] = {
            "coverage": float(np.mean(covered)),
            "mean_width": float(np.mean([sets[i].width for i in idx])),
            "single_grade": float(np.mean([sets[i].width == 0 for i in idx])),
            "n": len(idx),
        }
    return out


def score_rows(patients: Iterable[Any]) -> list[tuple[str, str, str, float, float | None]]:
    """``(patient_id, joint_id, score_type, prediction, sd)`` of scored patients
    (:class:`~annotation_tools.scoring.PatientScores`), final stage, joints with a score."""
    rows = []
    for patient in patients:
        for image in patient.images:
            for joint_id, js in image.joints.items():
                for st in get_joint(joint_id).score_types:
                    value = getattr(js, st.value)
                    if value is None or not np.isfinite(value):
                        continue
                    sd = getattr(js, f"{st.value}_sd")
                    rows.append((patient.patient_id, joint_id, st.value, float(value), sd))
    return rows


class JointSetsCsv:
    """``joint_scores.csv``: one row per patient, joint and score type with the grade set at
    the run's coverage (``set_low..set_high``); empty set columns when the model (scorer or
    multi-task U-Net) has no calibration for its weights (``summary.json`` says why, from
    ``missing_note``, rather than invent one)."""

    FIELDS = ("patient_id", "joint_id", "score_type", "prediction", "set_low", "set_high")

    def __init__(
        self,
        path: str | Path,
        calibration: GradeCalibration | None,
        coverage: float,
        missing_note: str = "",
    ):
        import csv

        check_coverage(coverage)
        self.path = Path(path)
        self.calibration = calibration
        self.missing_note = missing_note  # why there is no calibration (summary.json)
        self.coverage = float(coverage)
        self._handle = open(self.path, "w", newline="")  # noqa: SIM115 - closed by close()
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self.FIELDS)
        self.widths: list[int] = []

    def write(self, patient: Any) -> None:
        rows = score_rows([patient])
        sets: list[GradeSet | None] = [None] * len(rows)
        if self.calibration is not None:
            sets = list(
                self.calibration.grade_sets([r[1:] for r in rows], self.coverage)
            )  # fmt: skip
        for (pid, joint_id, st, pred, _), grade_set in zip(rows, sets, strict=True):
            low = high = ""
            if grade_set is not None:
                low, high = grade_set.low, grade_set.high
                self.widths.append(grade_set.width)
            self._writer.writerow([pid, joint_id, st, round(pred, 3), low, high])
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def describe(self) -> dict[str, Any]:
        """What summary.json says about the sets."""
        if self.calibration is None:
            return {
                "coverage": self.coverage,
                "calibrated": False,
                "note": self.missing_note
                or "no conformal calibration for these weights: set columns empty "
                "(ra-joints calibrate makes one)",
            }
        return {
            "coverage": self.coverage,
            "calibrated": True,
            "calibration": self.calibration.source,
            "mean_width": float(np.mean(self.widths)) if self.widths else None,
            "note": "marginal coverage over joints like the calibration cohort's (phantoms), "
            "not a per-joint or clinical guarantee",
        }
