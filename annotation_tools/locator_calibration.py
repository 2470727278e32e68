"""Calibrated uncertainty for the joint locator: a position radius and a probability of being
right, per joint (issue #24).

The locator's own confidence (the peak of its heatmap) is about 0.999 for nearly every joint
and says little. Two things are calibrated on a validation project with known centres:

- **radius**: split conformal prediction of the position error (distance to the true centre
  divided by the image diagonal), Mondrian by region (finger, thumb, wrist, toe: the wrist's
  crowded sites miss by more), with ``crepes`` as for the grade sets. At coverage 0.9 the true
  centre lies within the radius of 90 % of fresh joints of that region.
- **p_correct**: the probability that a found joint is the named joint and within
  ``tolerance`` of its true centre, an isotonic regression of that event on the confidence
  (scikit-learn): monotone, and equal to the observed rate on the calibration joints.

Both belong to one set of weights (the file records its sha256; other weights get none). The
file is plain JSON: numbers only, nothing executable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .conformal import read_json_document, write_json_document
from .vocabulary import get_joint

__all__ = [
    "LOCATOR_CALIBRATION_FILE",
    "LocatorCalibration",
    "calibrate_locator",
    "calibration_joints",
    "fit_locator_calibration",
    "locate_project",
    "radius_coverage",
]

LOCATOR_CALIBRATION_FILE = "locator_calibration.json"
FORMAT = "napari-ra-joints/locator-calibration-v1"
REGIONS = ("finger", "thumb", "wrist", "toe")
MIN_PER_REGION = 30  # fewer errors than this: the region is pooled with the others


@dataclass(frozen=True)
class CalibrationJoint:
    """One located joint of a calibration image, against its true centre."""

    region: str
    error: float  # distance to the true centre / image diagonal
    confidence: float
    correct: bool  # within tolerance of its own true centre


@dataclass
class LocatorCalibration:
    errors: dict[str, list[float]]  # region (or "pooled") -> calibration errors
    iso_x: list[float]  # isotonic regression knots: confidence ...
    iso_y: list[float]  # ... -> probability of being right
    tolerance: float = 0.02
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from crepes import ConformalRegressor

        self._bin = {
            r: r if len(self.errors.get(r, [])) >= MIN_PER_REGION else "pooled" for r in REGIONS
        }
        pooled = [e for r in REGIONS if self._bin[r] == "pooled" for e in self.errors.get(r, [])]
        residuals, bins = [], []
        for name in {*self._bin.values()}:
            values = pooled if name == "pooled" else self.errors[name]
            if not values:
                continue
            residuals += list(values)
            bins += [name] * len(values)
        if not residuals:
            raise ValueError("no located joints to calibrate the radius on")
        self._regressor = ConformalRegressor().fit(np.asarray(residuals), bins=np.array(bins))
        self._known = set(bins)

    def radius(self, regions: Sequence[str], coverage: float = 0.9) -> np.ndarray:
        """Conformal radii (in units of the image diagonal) of joints of these regions."""
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must be between 0 and 1 (exclusive), got {coverage}")
        bins = [self._bin.get(r, "pooled") for r in regions]
        bins = [b if b in self._known else next(iter(self._known)) for b in bins]
        if not bins:
            return np.zeros(0)
        half = self._regressor.predict_int(
            np.zeros(len(bins)), bins=np.array(bins), confidence=coverage
        )[:, 1]  # fmt: skip
        return np.where(np.isfinite(half), half, np.inf)

    def p_correct(self, confidence: Sequence[float]) -> np.ndarray:
        """Calibrated probability that a found joint is right (isotonic: a linear
        interpolation between the fitted knots, clipped at the ends, as scikit-learn's)."""
        return np.interp(np.asarray(confidence, float), self.iso_x, self.iso_y)

    def annotate(self, result: Any, coverage: float = 0.9) -> None:
        """Add ``radius`` (pixels) and ``p_correct`` to every found joint of a
        :class:`~annotation_tools.joint_decoding.LocatorResult`."""
        found = [j for j in result.joints.values() if not j.missing]
        if not found:
            return
        diagonal = math.hypot(*result.image_shape)
        radii = self.radius([get_joint(j.joint_id).region for j in found], coverage)
        probs = self.p_correct([j.confidence for j in found])
        for joint, r, p in zip(found, radii, probs, strict=True):
            joint.radius = round(float(r * diagonal), 2) if np.isfinite(r) else None
            joint.p_correct = round(float(p), 4)

    def save(self, path: str | Path) -> Path:
        body = {
            "tolerance": self.tolerance,
            "source": self.source,
            "errors": {r: [round(float(e), 6) for e in v] for r, v in self.errors.items()},
            "isotonic": {"confidence": self.iso_x, "p_correct": self.iso_y},
        }
        return write_json_document(path, FORMAT, body)

    @classmethod
    def load(cls, path: str | Path) -> LocatorCalibration:
        """Read a calibration file (plain JSON: numbers only, nothing executable)."""
        doc = read_json_document(path, FORMAT, "locator calibration")
        return cls(
            {str(r): [float(e) for e in v] for r, v in doc["errors"].items()},
            [float(x) for x in doc["isotonic"]["confidence"]],
            [float(y) for y in doc["isotonic"]["p_correct"]],
            tolerance=float(doc["tolerance"]),
            source=dict(doc.get("source", {})),
        )


def calibration_joints(
    cases: Iterable[tuple[Mapping[str, Sequence[float]], Any]], tolerance: float = 0.02
) -> list[CalibrationJoint]:
    """``(true centres, LocatorResult)`` pairs -> one entry per joint the locator found and the
    reference has (joints it flagged missing have no position to be uncertain about)."""
    out = []
    for truth, result in cases:
        diagonal = math.hypot(*result.image_shape)
        for joint_id, joint in result.joints.items():
            if joint.missing or joint_id not in truth:
                continue
            tx, ty = truth[joint_id]
            error = math.hypot(joint.x - tx, joint.y - ty) / diagonal
            out.append(
                CalibrationJoint(
                    get_joint(joint_id).region, error, float(joint.confidence), error <= tolerance
                )
            )
    return out


def fit_locator_calibration(
    joints: Sequence[CalibrationJoint],
    *,
    tolerance: float = 0.02,
    source: Mapping[str, Any] | None = None,
) -> LocatorCalibration:
    """Radius residuals per region and the isotonic map confidence -> probability right."""
    from sklearn.isotonic import IsotonicRegression

    if len(joints) < MIN_PER_REGION:
        raise ValueError(
            f"{len(joints)} located joints are too few to calibrate on (need {MIN_PER_REGION})"
        )
    errors: dict[str, list[float]] = {}
    for joint in joints:
        errors.setdefault(joint.region, []).append(joint.error)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        [j.confidence for j in joints], [float(j.correct) for j in joints]
    )
    return LocatorCalibration(
        errors,
        [float(x) for x in iso.X_thresholds_],
        [float(y) for y in iso.y_thresholds_],
        tolerance=tolerance,
        source=dict(source or {}),
    )


def locate_project(
    locator: Any,
    project: str | Path,
    tolerance: float = 0.02,
    patients: Collection[str] | None = None,
) -> tuple[list[CalibrationJoint], int, list[tuple[str, str]], int]:
    """Run ``locator`` on a project's radiographs (limbs as the store knows them) and pair
    every found joint with the project's centres (the truth on phantoms, a person's on real
    data): ``(joints, films located, films not located, patients)``. Both the calibration and
    the coverage benchmark measure through this. ``patients``: only these patients' films
    (the ones a retrained version held out), else every film of the project."""
    from .evaluation import present_centres
    from .store import TRAINING_SOURCES, AnnotationStore

    with AnnotationStore.open(project, create=False) as store:
        images = [
            im
            for im in store.images(modality="radiograph")
            if patients is None or im.patient_id in patients
        ]
        limbs = {str(store.resolve(im)): im.limb for im in images}
        truth = {
            str(store.resolve(im)): present_centres(store.centres(im.id, sources=TRAINING_SOURCES))
            for im in images
        }
        if patients is None:
            n_patients = len(store.patients())
        else:
            n_patients = len({im.patient_id for im in images})
    results, failed = locator.predict_files(list(truth), limbs)
    joints = calibration_joints([(truth[r.path], r) for r in results], tolerance)
    return joints, len(results), failed, n_patients


def calibrate_locator(
    locator: Any,
    projects: str | Path | Sequence[str | Path],
    tolerance: float = 0.02,
    *,
    patients: Collection[str] | None = None,
    held_out: Mapping[str, Any] | None = None,
) -> LocatorCalibration:
    """Calibrate ``locator`` on one or more projects nobody reports figures on.

    Several projects are pooled (e.g. the anatomical and the schematic phantoms of one
    validation seed, for a locator trained on both styles): the radius then covers films of
    every kind it was calibrated on, not only the easiest. ``patients``: only these patients
    (a retrained version's held-out ones, :mod:`annotation_tools.recalibrate`), described by
    ``held_out`` in the file's ``source``.
    """
    folders = [Path(projects)] if isinstance(projects, str | Path) else [Path(p) for p in projects]
    if not folders:
        raise ValueError("give at least one calibration project")
    joints: list[CalibrationJoint] = []
    located = n_patients = 0
    failed: list[tuple[str, str]] = []
    described, seeds, styles = [], [], []
    for folder in folders:
        found, n_located, not_located, in_folder = locate_project(
            locator, folder, tolerance, patients
        )
        joints += found
        located, n_patients = located + n_located, n_patients + in_folder
        failed = failed + not_located
        cohort = folder / "cohort.json"
        info = json.loads(cohort.read_text()) if cohort.is_file() else {}
        style = info.get("style", "schematic") if "seed" in info else None
        described.append(
            f"phantom cohort seed {info['seed']}, style {style}" if "seed" in info else str(folder)
        )
        seeds.append(info.get("seed"))
        styles.append(style)
    source = {
        "project": "; ".join(described),
        "seed": seeds[0] if len(set(seeds)) == 1 else seeds,
        "style": styles[0] if len(set(styles)) == 1 else "+".join(str(s) for s in styles),
        "patients": n_patients,
        "radiographs": located,
        "not_located": len(failed),
        "weights_sha256": locator.model_info.get("weights_sha256", ""),
    }
    if held_out is not None:
        source["held_out"] = dict(held_out)
    return fit_locator_calibration(joints, tolerance=tolerance, source=source)


def radius_coverage(
    calibration: LocatorCalibration,
    joints: Sequence[CalibrationJoint],
    coverages: Sequence[float] = (0.8, 0.9, 0.95),
) -> dict[str, Any]:
    """Empirical coverage and mean radius per region on fresh joints, and how well
    ``p_correct`` matches the observed rate (Brier score; mean predicted vs observed)."""
    regions = np.array([j.region for j in joints])
    errors = np.array([j.error for j in joints])
    out: dict[str, Any] = {}
    for coverage in coverages:
        radii = calibration.radius(list(regions), coverage)
        per = {}
        for region in ("all", *REGIONS):
            idx = np.ones(len(joints), bool) if region == "all" else regions == region
            if idx.any():
                per[region] = {
                    "coverage": float(np.mean(errors[idx] <= radii[idx])),
                    "mean_radius": float(np.mean(radii[idx])),
                    "n": int(idx.sum()),
                }
        out[f"{coverage:g}"] = per
    probs = calibration.p_correct([j.confidence for j in joints])
    correct = np.array([j.correct for j in joints], float)
    out["p_correct"] = {
        "brier": float(np.mean((probs - correct) ** 2)),
        "mean_predicted": float(np.mean(probs)),
        "observed": float(np.mean(correct)),
        "n": len(joints),
    }
    return out
