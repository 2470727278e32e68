"""Calibrated grade sets for the RATING ensemble's ultrasound grades (issue #24).

MULTITUDE returns one grade per output and an ``uncertainty`` (one minus the winning pair's
vote share): neither is a probability of being right. As for the scorer
(:mod:`annotation_tools.conformal`), split conformal prediction turns the ensemble's output
into sets of grades with a marginal coverage guarantee on pairs exchangeable with a
calibration cohort nobody reports figures on:

* **prediction**: the *expected grade* ``P(>=1) + P(>=2) + P(>=3)`` of the members' mean
  split probabilities (a real number in 0..3). It is what the ordinal code words estimate
  (``E[g] = sum_k P(g >= k)``) and, unlike the MULTITUDE grade, it varies smoothly, so the
  residuals carry the ensemble's doubt between two grades.
* **combined**: ``max(expected SH, expected vascularity)``, the EOSS max rule applied to the
  two expected grades, the same rule the truth follows (``combined = max(SH, vascularity)``).
  The expected value of the max would need the joint distribution of the two grades, which
  the split probabilities do not give; the conformal quantile corrects whatever bias the max
  of expectations has, since it is calibrated on the combined residuals themselves.
* **nonconformity**: ``|truth - prediction|``, optionally divided by ``spread + beta`` where
  the spread is the folds' disagreement (standard deviation of their expected grades), as
  the scorer's sets do with its tree spread. Normalising pays only if the spread tracks the
  error, so :func:`calibrate_us_grades` (``beta="auto"``) keeps it only when it gives
  narrower sets on held-out halves of the calibration patients at the same coverage.
* **Mondrian bins**: one per output (synovial hypertrophy, vascularity, combined): their
  error sizes differ. The quantiles come from crepes via
  :class:`~annotation_tools.conformal.MondrianQuantiles`, the set from
  :func:`~annotation_tools.conformal.interval_grade_set` (integers inside the interval,
  clipped to 0..3, never empty).

A calibration belongs to one ensemble: the file (``models/us_conformal.json``, plain JSON,
numbers only) records :func:`annotation_tools.us_rating.ensemble_hash`; other weights get no
sets. What it is not: a per-pair or per-patient guarantee, or a clinical one (phantoms).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .conformal import (
    GradeSet,
    MondrianQuantiles,
    check_coverage,
    coverage_figures,
    interval_grade_set,
)
from .paths import write_text_atomic
from .rating import GRADE_KEYS, GRADES

__all__ = [
    "US_CALIBRATION_FILE",
    "UsGradeCalibration",
    "calibrate_us_grades",
    "expected_grades",
    "set_columns",
    "us_calibration_for",
    "us_coverage_figures",
]

US_CALIBRATION_FILE = "us_conformal.json"  # in the RATING bundle's models/, next to ensemble.json
FORMAT = "ra_joints.us_conformal_grades/1"
TOP = GRADES - 1  # every ultrasound grade is 0-3
BETAS = (0.1, 0.25, 0.5, 1.0)  # normalisations beta="auto" tries against the unnormalised sets
AUTO_LEVEL = 0.9  # the coverage at which "auto" compares widths


def expected_grades(decision: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Output -> (expected grade, spread over the folds) of one
    :meth:`~annotation_tools.us_rating.RatingEnsemble.decide` result (module docstring)."""
    try:
        probs = decision["split_probabilities"]
        folds = decision.get("fold_expected_grades")
        sh = float(np.sum(probs["synovial_hypertrophy"]))
        vasc = float(np.sum(probs["vascularity"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"a RATING decision needs split_probabilities for SH and vascularity: {exc}"
        ) from exc
    if folds:  # each fold's expected grade; combined by the same max rule, fold by fold
        f_sh = np.asarray(folds["synovial_hypertrophy"], float)
        f_v = np.asarray(folds["vascularity"], float)
        spreads = (float(f_sh.std()), float(f_v.std()), float(np.maximum(f_sh, f_v).std()))
    else:  # an older record without the folds: no spread
        spreads = (0.0, 0.0, 0.0)
    predictions = (sh, vasc, max(sh, vasc))
    return {
        k: (p, s) for k, p, s in zip(GRADE_KEYS, predictions, spreads, strict=True)
    }  # fmt: skip


def _sigma(spread: float, beta: float | None) -> float:
    return 1.0 if beta is None else float(beta) + float(spread)


@dataclass
class UsGradeCalibration:
    """Calibration residuals per output (``beta``: ``None`` for absolute residuals, else they
    were divided by ``spread + beta``) and where they came from (``source``: the cohort and the
    ``ensemble_sha256`` they belong to)."""

    residuals: dict[str, list[float]]
    beta: float | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"beta must be > 0 or None (unnormalised), got {self.beta}")
        self._quantiles = MondrianQuantiles(self.residuals, GRADE_KEYS)

    @property
    def ensemble_sha256(self) -> str | None:
        return self.source.get("ensemble_sha256")

    def grade_sets(
        self, decisions: Sequence[Mapping[str, Any]], coverage: float = 0.9
    ) -> list[dict[str, GradeSet]]:
        """One ``{output: GradeSet}`` per decided pair, at ``coverage``."""
        check_coverage(coverage)
        if not decisions:
            return []
        predicted = [expected_grades(d) for d in decisions]
        half = {k: self._quantiles.half_widths([k] * len(predicted), coverage) for k in GRADE_KEYS}
        return [
            {
                k: interval_grade_set(
                    p[k][0], half[k][i] * _sigma(p[k][1], self.beta), TOP, coverage
                )
                for k in GRADE_KEYS
            }
            for i, p in enumerate(predicted)
        ]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        doc = {
            "format": FORMAT,
            "beta": self.beta,
            "source": self.source,
            "residuals": {k: [round(float(r), 5) for r in v] for k, v in self.residuals.items()},
        }
        return write_text_atomic(path, json.dumps(doc, indent=1))  # never half a file

    @classmethod
    def load(cls, path: str | Path) -> UsGradeCalibration:
        """Read a calibration file (plain JSON: numbers only, nothing executable)."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the ultrasound grade calibration {path}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path} is not an ultrasound grade calibration ({FORMAT})")
        beta = doc.get("beta")
        return cls(
            {str(k): [float(r) for r in v] for k, v in doc["residuals"].items()},
            beta=None if beta is None else float(beta),
            source=dict(doc.get("source", {})),
        )


def us_calibration_for(models_dir: str | Path, ensemble_sha256: str) -> UsGradeCalibration | None:
    """The ensemble folder's calibration when it was made with exactly these weights
    (``ensemble_sha256``: :func:`annotation_tools.us_rating.ensemble_hash` of the folder);
    other weights (a retrained ensemble) get no sets rather than wrong ones."""
    path = Path(models_dir) / US_CALIBRATION_FILE
    if not path.is_file():
        return None
    calibration = UsGradeCalibration.load(path)
    if calibration.ensemble_sha256 != ensemble_sha256:
        return None
    return calibration


def _residuals(
    predicted: Sequence[Mapping[str, tuple[float, float]]],
    truths: Sequence[Mapping[str, int]],
    beta: float | None,
) -> dict[str, list[float]]:
    return {
        k: [abs(float(t[k]) - p[k][0]) / _sigma(p[k][1], beta)
            for p, t in zip(predicted, truths, strict=True)]
        for k in GRADE_KEYS
    }  # fmt: skip


def _choose_beta(
    predicted: Sequence[Mapping[str, tuple[float, float]]],
    truths: Sequence[Mapping[str, int]],
    patients: Sequence[str],
    decisions: Sequence[Mapping[str, Any]],
) -> tuple[float | None, dict[str, Any]]:
    """Unnormalised or ``spread + beta``: the narrowest mean set width at 90 % on held-out
    halves of the calibration patients (each half calibrates, the other measures), among the
    candidates whose held-out coverage stays within 3 points of nominal. Ties and too few
    patients keep the unnormalised sets (the simpler choice)."""
    ids = sorted(set(patients))
    rng = np.random.default_rng(0)
    halves = [set(ids[i] for i in rng.permutation(len(ids))[: len(ids) // 2]) for _ in range(5)]
    report: dict[str, Any] = {"level": AUTO_LEVEL, "repeats": len(halves), "candidates": {}}
    best: tuple[float, float | None] | None = None
    for beta in (None, *BETAS):
        widths, covers = [], []
        try:
            for half in halves:
                for cal_side in (True, False):
                    idx = [i for i, p in enumerate(patients) if (p in half) == cal_side]
                    out = [i for i, p in enumerate(patients) if (p in half) != cal_side]
                    cal = UsGradeCalibration(
                        _residuals([predicted[i] for i in idx], [truths[i] for i in idx], beta),
                        beta=beta,
                    )
                    sets = cal.grade_sets([decisions[i] for i in out], AUTO_LEVEL)
                    for i, s in zip(out, sets, strict=True):
                        widths += [s[k].width for k in GRADE_KEYS]
                        covers += [truths[i][k] in s[k] for k in GRADE_KEYS]
        except ValueError as exc:  # a half with too few pairs: no choice to be made
            report["note"] = f"unnormalised: halves too small to compare ({exc})"
            return None, report
        width, coverage = float(np.mean(widths)), float(np.mean(covers))
        report["candidates"]["none" if beta is None else str(beta)] = {
            "mean_width": round(width, 4),
            "coverage": round(coverage, 4),
        }
        if coverage >= AUTO_LEVEL - 0.03 and (best is None or width < best[0] - 1e-9):
            best = (width, beta)
    return (None if best is None else best[1]), report


def calibrate_us_grades(
    decisions: Sequence[Mapping[str, Any]],
    truths: Sequence[Mapping[str, int] | None],
    *,
    patients: Sequence[str] | None = None,
    beta: float | str | None = "auto",
    source: Mapping[str, Any] | None = None,
) -> UsGradeCalibration:
    """Decided pairs of a calibration cohort and their true grades -> a calibration.

    ``beta``: ``None`` (absolute residuals), a number (normalised by ``spread + beta``) or
    ``"auto"`` (:func:`_choose_beta` on the calibration cohort's own patients, a choice made on
    validation data). Pairs without a truth are skipped; a cohort with none is refused. The
    cohort must be one the ensemble never trained on and that no reported figure uses.
    """
    if len(decisions) != len(truths):
        raise ValueError(f"{len(decisions)} decisions but {len(truths)} truths")
    if patients is not None and len(patients) != len(decisions):
        raise ValueError(f"{len(patients)} patient ids for {len(decisions)} decisions")
    keep = [i for i, t in enumerate(truths) if t]
    if not keep:
        raise ValueError(
            "no ultrasound pair of the calibration cohort has true grades (synovial "
            "hypertrophy and vascularity): calibrate on a project with graded pairs"
        )
    decisions = [decisions[i] for i in keep]
    truths_kept: list[Mapping[str, int]] = [truths[i] for i in keep]  # type: ignore[misc]
    truths_kept = [{**t, "combined": t.get("combined", max(t["synovial_hypertrophy"],
                    t["vascularity"]))} for t in truths_kept]  # fmt: skip
    who = [str(patients[i]) for i in keep] if patients is not None else [str(i) for i in keep]
    predicted = [expected_grades(d) for d in decisions]
    info = dict(source or {})
    if beta == "auto":
        beta, info["beta_choice"] = _choose_beta(predicted, truths_kept, who, decisions)
    elif isinstance(beta, str):
        raise ValueError(f"beta must be a number, None or 'auto', got {beta!r}")
    info.setdefault("pairs", len(decisions))
    info.setdefault("patients", len(set(who)))
    return UsGradeCalibration(
        _residuals(predicted, truths_kept, None if beta is None else float(beta)),
        beta=None if beta is None else float(beta),
        source=info,
    )


def set_columns() -> list[str]:
    """The columns ``ultrasound_grades.csv`` gains when the ensemble is calibrated."""
    return [f"{k}_set_{end}" for k in GRADE_KEYS for end in ("low", "high")] + ["set_coverage"]


def us_coverage_figures(
    sets: Sequence[Mapping[str, GradeSet]], truths: Sequence[Mapping[str, int]]
) -> dict[str, dict[str, float]]:
    """Coverage and mean width per output (and ``all``) of decided pairs' sets
    (:func:`annotation_tools.conformal.coverage_figures` with the outputs as bins)."""
    flat = [s[k] for s in sets for k in GRADE_KEYS]
    values = [t[k] for t in truths for k in GRADE_KEYS]
    return coverage_figures(flat, values, list(GRADE_KEYS) * len(sets))
