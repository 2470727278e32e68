"""Statistical shape prior of a limb's joints: is a decoded joint where the others say it is?

The locator's heatmaps occasionally give one finger's channel a blob on the neighbouring finger
(PIP 4 on PIP 5): the point is on a real joint, so no per-channel threshold can catch it. The
other 21 joints of the hand still say where PIP 4 must be. This module fits a Gaussian point
distribution model (generalised Procrustes alignment, then a Ledoit-Wolf covariance of the
aligned coordinates) to annotated joint centres and, for a decoded set of points, predicts each
joint from all the others (Gaussian conditioning in the aligned frame). The residual is a
Mahalanobis distance: a wrongly named joint stands out far beyond every correct one.

The prior lives in the locator's grid (``spatial_size``, right limbs mirrored to left) and is
stored as JSON (``models/shape_prior.json``), never as a pickle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import estimate_transform
from sklearn.covariance import LedoitWolf

from .vocabulary import Limb, site_names

__all__ = [
    "SHAPE_PRIOR_FILE",
    "ShapePrior",
    "fit_shape_priors",
    "fit_shape_priors_from_datalists",
    "load_shape_priors",
    "save_shape_priors",
]

FORMAT = 1
SHAPE_PRIOR_FILE = "shape_prior.json"  # kept next to the weights it was fitted with
MIN_SHAPES = 10  # fewer complete limbs than this do not give a usable covariance
TAU_FACTOR = 1.5  # implausible = beyond 1.5 x the largest residual of a training shape


@dataclass(frozen=True)
class ShapePrior:
    """Gaussian shape model of one limb kind's joints (sites in vocabulary order)."""

    kind: str
    mean: np.ndarray  # (n, 2), centred, in the aligned frame
    cov: np.ndarray  # (2n, 2n) of the aligned, interleaved x/y coordinates
    tau: float  # residual above which a joint is implausible
    n_shapes: int

    @property
    def sites(self) -> tuple[str, ...]:
        return site_names(self.kind)

    @classmethod
    def fit(cls, kind: str, shapes: np.ndarray, iterations: int = 5) -> ShapePrior:
        """Fit on ``shapes`` ``(m, n, 2)`` (NaN = joint not annotated; such limbs are skipped)."""
        shapes = np.asarray(shapes, dtype=float)
        n = len(site_names(kind))
        if shapes.ndim != 3 or shapes.shape[1:] != (n, 2):
            raise ValueError(f"{kind} shapes must be (limbs, {n}, 2), got {shapes.shape}")
        complete = shapes[~np.isnan(shapes).any(axis=(1, 2))]
        if len(complete) < MIN_SHAPES:
            raise ValueError(
                f"a {kind} shape prior needs >= {MIN_SHAPES} limbs with every joint annotated, "
                f"got {len(complete)}"
            )
        mean = complete[0] - complete[0].mean(axis=0)
        for _ in range(iterations):  # generalised Procrustes alignment
            aligned = np.stack([_similarity(x, mean)(x) for x in complete])
            mean = aligned.mean(axis=0)
            mean -= mean.mean(axis=0)
        cov = LedoitWolf().fit(aligned.reshape(len(aligned), -1)).covariance_
        prior = cls(kind, mean, cov, tau=np.inf, n_shapes=len(complete))
        worst = max(float(np.max(prior.residuals(x))) for x in complete)
        return cls(kind, mean, cov, tau=TAU_FACTOR * worst, n_shapes=len(complete))

    def predict(self, points: np.ndarray, joint: int) -> tuple[np.ndarray, np.ndarray]:
        """Where ``joint`` should be given the other present points: ``(xy, 2x2 covariance)``."""
        points = np.asarray(points, dtype=float)
        observed = [i for i in range(len(points)) if i != joint and not np.isnan(points[i]).any()]
        if len(observed) < 3:
            raise ValueError("the shape prior needs at least 3 other joints to predict one")
        to_mean = _similarity(points[observed], self.mean[observed])
        aligned = to_mean(points[observed]).ravel()
        io = np.ravel([[2 * i, 2 * i + 1] for i in observed])
        ij = [2 * joint, 2 * joint + 1]
        mu = self.mean.ravel()
        gain = self.cov[np.ix_(ij, io)] @ np.linalg.inv(self.cov[np.ix_(io, io)])
        xy = mu[ij] + gain @ (aligned - mu[io])
        cov = self.cov[np.ix_(ij, ij)] - gain @ self.cov[np.ix_(io, ij)]
        # back to the image frame: x_img = R^T (x_aligned - t) / s
        linear = to_mean.params[:2, :2]  # s R
        back = np.linalg.inv(linear)
        return back @ (xy - to_mean.params[:2, 2]), back @ cov @ back.T

    def residual(self, points: np.ndarray, joint: int) -> float:
        """Mahalanobis distance of ``points[joint]`` from where the other joints put it."""
        xy, cov = self.predict(points, joint)
        d = np.asarray(points[joint], dtype=float) - xy
        return float(np.sqrt(d @ np.linalg.solve(cov, d)))

    def residuals(self, points: np.ndarray) -> np.ndarray:
        """Residual of every present joint (NaN for missing ones)."""
        points = np.asarray(points, dtype=float)
        return np.array(
            [
                np.nan if np.isnan(p).any() else self.residual(points, j)
                for j, p in enumerate(points)
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sites": list(self.sites),
            "mean": self.mean.round(6).tolist(),
            "cov": self.cov.round(8).tolist(),
            "tau": float(self.tau),
            "n_shapes": int(self.n_shapes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapePrior:
        kind = str(data["kind"])
        if list(data["sites"]) != list(site_names(kind)):
            raise ValueError(f"shape prior sites do not match the {kind} vocabulary")
        n = len(site_names(kind))
        mean = np.asarray(data["mean"], dtype=float)
        cov = np.asarray(data["cov"], dtype=float)
        if mean.shape != (n, 2) or cov.shape != (2 * n, 2 * n):
            raise ValueError(f"shape prior for {kind}: mean {mean.shape} / cov {cov.shape}")
        return cls(kind, mean, cov, float(data["tau"]), int(data["n_shapes"]))


def _similarity(src: np.ndarray, dst: np.ndarray):
    """Least-squares similarity transform (Umeyama, no reflection) taking ``src`` to ``dst``."""
    return estimate_transform("similarity", np.asarray(src, float), np.asarray(dst, float))


def fit_shape_priors(
    shapes: Mapping[str, Iterable[Mapping[str, Sequence[float] | None]]],
) -> dict[str, ShapePrior]:
    """Kind -> prior from kind -> limbs given as ``{site: (x, y) or None}`` in the grid."""
    out = {}
    for kind, limbs in shapes.items():
        sites = site_names(kind)
        array = np.array(
            [
                [limb.get(s) if limb.get(s) is not None else (np.nan, np.nan) for s in sites]
                for limb in limbs
            ],
            dtype=float,
        ).reshape(-1, len(sites), 2)
        out[kind] = ShapePrior.fit(kind, array)
    return out


def fit_shape_priors_from_datalists(
    datalists: Sequence[str | Path], val_fold: int | None, output: str | Path
) -> dict[str, ShapePrior]:
    """Fit on the ``centres`` of a locator export (validation fold left out) and save.

    Called by the locator's ``train.json`` so that a retrained model ships a prior of the
    same cohort and the same grid.
    """
    limbs: dict[str, list[Mapping[str, Any]]] = {}
    for path in datalists:
        items = json.loads(Path(path).read_text()).get("training", [])
        for item in items:
            if val_fold is not None and int(item.get("fold", -1)) == int(val_fold):
                continue
            if "centres" not in item:
                raise ValueError(f"{path}: items have no 'centres'; re-export with ra-joints")
            limbs.setdefault(Limb.parse(item["limb"]).kind, []).append(item["centres"])
    priors = {}
    for kind, kind_limbs in limbs.items():
        try:
            priors.update(fit_shape_priors({kind: kind_limbs}))
        except ValueError as exc:  # a small cohort: the decoder simply runs without a prior
            logging.getLogger(__name__).warning("no %s shape prior: %s", kind, exc)
    save_shape_priors(priors, output)
    return priors


def save_shape_priors(priors: Mapping[str, ShapePrior], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "priors": {k: p.to_dict() for k, p in priors.items()}}
    path.write_text(json.dumps(payload))
    return path


def load_shape_priors(path: str | Path | None) -> dict[str, ShapePrior]:
    """Kind -> prior; an empty dict when ``path`` is None or does not exist (no prior)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT}")
        return {k: ShapePrior.from_dict(v) for k, v in payload["priors"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid shape prior ({exc})") from exc
