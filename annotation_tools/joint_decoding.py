"""Heatmaps -> named joints: the decoder shared by the locator and the multi-task U-Net.

A network that finds joints gives one channel per joint of both limb kinds (22 hand + 6 foot =
28 "union" channels). :func:`decode_result` turns one image's channels into a
:class:`LocatorResult`: blobs above a threshold are the candidate places, each joint takes the
place where its channel has most probability mass with no two joints on one place (Hungarian
assignment), a statistical shape prior may move or flag an implausible joint, and points are
mapped back to image pixels. A joint without evidence is flagged missing, never invented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .bundles import CLINICAL_NOTE
from .radiograph import UNREADABLE
from .shape_prior import ShapePrior
from .targets import mirror_points, scale_points
from .vocabulary import Limb, joints_for_limb, site_names

__all__ = [
    "UNION_CHANNELS",
    "JointPrediction",
    "LocatorResult",
    "assign_joints",
    "best_blob",
    "channel_blobs",
    "check_shape",
    "decode_heatmaps",
    "decode_result",
    "joint_candidates",
    "kind_slice",
    "looks_like_hand",
    "write_to_store",
]


UNION_CHANNELS: tuple[str, ...] = tuple(
    [f"hand:{s}" for s in site_names("hand")] + [f"foot:{s}" for s in site_names("foot")]
)


def kind_slice(kind: str) -> slice:
    """Channels of ``"hand"`` or ``"foot"`` in the union output."""
    n_hand = len(site_names("hand"))
    return slice(0, n_hand) if kind == "hand" else slice(n_hand, len(UNION_CHANNELS))


@dataclass
class JointPrediction:
    joint_id: str
    name: str
    x: float | None
    y: float | None
    confidence: float
    missing: bool
    radius: float | None = None  # conformal position radius in pixels (calibrated bundles)
    p_correct: float | None = None  # calibrated probability that the joint is right


@dataclass
class LocatorResult:
    path: str
    limb: str
    limb_source: str
    image_shape: tuple[int, int]
    joints: dict[str, JointPrediction]
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None

    def present(self) -> dict[str, tuple[float, float]]:
        return {k: (j.x, j.y) for k, j in self.joints.items() if not j.missing}

    def to_json(self, model: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {
            "image": self.path,
            "limb": self.limb,
            "limb_source": self.limb_source,
            "image_size": list(self.image_shape),
            "coordinates": "original image pixels, x = column, y = row",
            "model": dict(model or {}),
            "joints": {
                k: {kk: vv for kk, vv in asdict(v).items() if kk != "joint_id"}
                for k, v in self.joints.items()
            },
            "warnings": list(self.warnings),
            "note": CLINICAL_NOTE,
        }


def best_blob(channel: np.ndarray, threshold: float) -> np.ndarray | None:
    """Mask of the connected region above ``threshold`` with the most probability mass."""
    mask = channel > threshold
    if not mask.any():
        return None
    labels, n = ndimage.label(mask)
    mass = ndimage.sum_labels(channel, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(mass)) + 1


def decode_heatmaps(
    prob: np.ndarray, kind: str, threshold: float = 0.5
) -> dict[str, tuple[float, float, float] | tuple[None, None, float]]:
    """Site -> (x, y, confidence) in the grid of ``prob``; (None, None, peak) when missing.

    The blob with the largest probability mass above ``threshold`` wins; its point is the
    probability-weighted centroid (sub-pixel) and its confidence the peak probability.
    """
    out = {}
    for site, channel in zip(site_names(kind), prob[kind_slice(kind)], strict=True):
        peak = float(channel.max()) if channel.size else 0.0
        best = best_blob(channel, threshold)
        if best is None:
            out[site] = (None, None, peak)
            continue
        weights = channel * best
        total = float(weights.sum())
        ys, xs = np.indices(channel.shape)
        out[site] = (
            float((weights * xs).sum() / total),
            float((weights * ys).sum() / total),
            float(channel[best].max()),
        )
    return out


MANY_BLOBS = 64  # a trained locator has 1-3 blobs per channel


def channel_blobs(channel: np.ndarray, threshold: float) -> list[tuple[float, float, float, float]]:
    """``(mass, x, y, peak)`` of every connected region above ``threshold``, strongest first;
    ``(x, y)`` is the probability-weighted centroid (sub-pixel). Works on each region's bounding
    box: blobs are small, and whole-image label statistics dominated the decoder's time. With
    very many regions (an untrained or broken network) whole-image statistics are faster."""
    labels, n = ndimage.label(channel > threshold)
    if n > MANY_BLOBS:
        index = np.arange(1, n + 1)
        channel = channel.astype(np.float64)
        ys, xs = np.indices(channel.shape)
        mass = ndimage.sum_labels(channel, labels, index)
        cx = ndimage.sum_labels(channel * xs, labels, index) / mass
        cy = ndimage.sum_labels(channel * ys, labels, index) / mass
        peak = ndimage.maximum(channel, labels, index)
        rows = zip(mass.tolist(), cx.tolist(), cy.tolist(), np.asarray(peak).tolist(), strict=True)
        return sorted(rows, key=lambda blob: -blob[0])
    found = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        weights = np.where(labels[box] == i, channel[box], 0.0)
        mass = float(weights.sum())
        ys, xs = np.ogrid[box]
        found.append(
            (
                mass,
                float((weights * xs).sum() / mass),
                float((weights * ys).sum() / mass),
                float(weights.max()),
            )
        )
    return sorted(found, key=lambda blob: -blob[0])


def joint_candidates(channels: np.ndarray, threshold: float, merge: float = 5.0) -> np.ndarray:
    """Centroids ``(k, 2)`` of every blob above ``threshold`` in any channel, strongest first;
    centroids closer than ``merge`` grid pixels to a stronger one are the same place."""
    from scipy.spatial import cKDTree

    found = np.array(
        [blob[:3] for channel in channels for blob in channel_blobs(channel, threshold)],
        dtype=float,
    ).reshape(-1, 3)
    # strongest first (ties: larger x, then larger y), then greedy suppression: a centroid is
    # kept when no kept one lies closer than ``merge``. A KD-tree keeps this fast when a
    # barely trained network lights up thousands of blobs (a pairwise loop took minutes).
    order = np.lexsort((-found[:, 2], -found[:, 1], -found[:, 0]))
    points = found[order, 1:]
    tree = cKDTree(points)
    suppressed = np.zeros(len(points), dtype=bool)
    kept = []
    for i in range(len(points)):
        if suppressed[i]:
            continue
        kept.append(i)
        near = np.asarray(tree.query_ball_point(points[i], merge), dtype=int)
        if near.size:
            close = np.hypot(*(points[near] - points[i]).T) < merge
            suppressed[near[close]] = True
    return points[kept].reshape(-1, 2)


def _evidence(
    channels: np.ndarray, centres: np.ndarray, radius: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel and candidate: probability mass within ``radius`` (0 when the channel's peak
    there is not above ``threshold``), the channel's weighted centroid there, and that peak."""
    c, h, w = channels.shape
    mass = np.zeros((c, len(centres)))
    points = np.full((c, len(centres), 2), np.nan)
    peaks = np.zeros((c, len(centres)))
    r = int(np.ceil(radius))
    for k, (cx, cy) in enumerate(centres):
        x0, x1 = max(round(cx) - r, 0), min(round(cx) + r + 1, w)
        y0, y1 = max(round(cy) - r, 0), min(round(cy) + r + 1, h)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        disc = np.hypot(xs - cx, ys - cy) <= radius
        window = channels[:, y0:y1, x0:x1] * disc
        total = window.sum(axis=(1, 2))
        peak = window.max(axis=(1, 2))
        ok = (peak > threshold) & (total > 0)
        mass[:, k] = np.where(ok, total, 0.0)
        peaks[:, k] = peak
        with np.errstate(invalid="ignore", divide="ignore"):
            points[:, k, 0] = (window * xs).sum(axis=(1, 2)) / total
            points[:, k, 1] = (window * ys).sum(axis=(1, 2)) / total
    return mass, points, peaks


def assign_joints(
    prob: np.ndarray, kind: str, threshold: float = 0.5, radius: float = 6.0
) -> tuple[dict[str, tuple[float, float, float] | tuple[None, None, float]], list[str]]:
    """Like :func:`decode_heatmaps`, but every place goes to at most one joint.

    The places are the blobs of all channels; each joint takes the place where its channel has
    the most probability mass, under the constraint that no two joints share a place (maximum
    total mass: the Hungarian algorithm). A joint whose channel peaks above ``threshold``
    nowhere among the places is missing. When the PIP 4 channel has a blob on PIP 5 as well as
    on PIP 4, PIP 5's own, stronger claim pushes PIP 4 back onto its own joint. Returns
    ``(decoded, notes)``; a note names every joint that lost its only place to another.
    """
    channels = prob[kind_slice(kind)]
    sites = site_names(kind)
    peak_of = [float(ch.max()) if ch.size else 0.0 for ch in channels]
    centres = joint_candidates(channels, threshold)
    out: dict[str, Any] = {s: (None, None, p) for s, p in zip(sites, peak_of, strict=True)}
    notes: list[str] = []
    if not len(centres):
        return out, notes
    mass, points, peaks = _evidence(channels, centres, radius, threshold)
    rows, cols = linear_sum_assignment(-mass)
    owner = {}
    for j, k in zip(rows, cols, strict=True):
        if mass[j, k] > 0:
            out[sites[j]] = (float(points[j, k, 0]), float(points[j, k, 1]), float(peaks[j, k]))
            owner[k] = sites[j]
    for j, site in enumerate(sites):
        if out[site][0] is None and mass[j].max() > 0:
            winner = owner.get(int(np.argmax(mass[j])), "another joint")
            notes.append(
                f"{site} and {winner} claimed the same point; {site} (less evidence there) "
                "flagged missing"
            )
    return out, notes


def check_shape(
    decoded: Mapping[str, tuple[Any, Any, float]],
    prob: np.ndarray,
    kind: str,
    prior: ShapePrior,
    threshold: float = 0.5,
    max_changes: int = 4,
) -> tuple[dict[str, Any], list[str]]:
    """Move or flag joints that the shape prior finds implausible; returns (decoded, notes).

    Repeatedly takes the joint with the largest residual above the prior's ``tau``; among the
    blobs of its own channel it moves to the strongest one that the other joints find
    plausible, or is flagged missing when there is none. Limbs with fewer than half of the
    joints found are left alone (the prior would have too little to go on).
    """
    sites = site_names(kind)
    channels = prob[kind_slice(kind)]
    out = dict(decoded)
    points = np.array(
        [(np.nan, np.nan) if x is None else (x, y) for x, y, _ in decoded.values()], dtype=float
    )
    notes: list[str] = []
    if np.isnan(points).any(axis=1).sum() * 2 > len(points):
        return out, notes
    for _ in range(max_changes):
        residuals = prior.residuals(points)
        if np.all(np.isnan(residuals)) or np.nanmax(residuals) <= prior.tau:
            break
        j = int(np.nanargmax(residuals))
        best = None
        for _, x, y, peak in channel_blobs(channels[j], threshold):
            trial = points.copy()
            trial[j] = (x, y)
            if prior.residual(trial, j) <= prior.tau:
                best = (x, y, peak)
                break
        site = sites[j]
        if best is None:
            points[j] = np.nan
            out[site] = (None, None, decoded[site][2])
            notes.append(
                f"{site}: position implausible given the other joints (shape prior, "
                f"residual {residuals[j]:.1f} > {prior.tau:.1f}); flagged missing"
            )
        else:
            points[j] = best[:2]
            out[site] = best
            notes.append(
                f"{site}: position implausible given the other joints (shape prior, "
                f"residual {residuals[j]:.1f} > {prior.tau:.1f}); moved to another blob "
                "of its channel"
            )
    return out, notes


def _conflicts(
    decoded: Mapping[str, tuple[Any, Any, float]], min_separation: float
) -> list[tuple[str, str]]:
    """(less confident, more confident) pairs of sites decoded at the same place."""
    found = [(site, x, y, c) for site, (x, y, c) in decoded.items() if x is not None]
    found.sort(key=lambda item: -item[3])
    kept: list[tuple[str, float, float]] = []
    out = []
    for site, x, y, _ in found:
        clash = next((k for k, kx, ky in kept if np.hypot(x - kx, y - ky) < min_separation), None)
        if clash is None:
            kept.append((site, x, y))
        else:
            out.append((site, clash))
    return out


def looks_like_hand(prob: np.ndarray, threshold: float = 0.5, min_separation: float = 3.0) -> bool:
    """Does the image show a hand? Its hand channels must fire at distinct places.

    Toes look like fingers, so the hand channels also fire on a foot, and the foot channels on
    a hand: peak strength alone does not tell the kinds apart. Consistency does: a foot decoded
    as a hand puts several channels on one spot and leaves the wrist channels silent. With the
    locator trained on both phantom styles (0.3.0), on the 56 films of validation seed 2000
    (anatomical and schematic): hands 0-2 such pairs with all 22 channels firing, feet 2-9
    pairs with at most 77 % firing. So 2-3 pairs count as a hand only when nearly every hand
    channel fires (the 0.2.0 rule, "<= 3 pairs", refused 2 of 28 feet as hands).
    """
    return _is_hand(decode_heatmaps(prob, "hand", threshold), min_separation)


def _is_hand(hand: Mapping[str, tuple[Any, Any, float]], min_separation: float) -> bool:
    conflicts = len(_conflicts(hand, min_separation))
    firing = np.mean([x is not None for x, _, _ in hand.values()])
    # a few joints may really be missing (amputation, outside the field): half must fire
    if firing < 0.5 or conflicts > 3:
        return False
    return conflicts <= 1 or firing >= 0.9


def decode_result(
    prob: np.ndarray,
    *,
    limb: str,
    limb_source: str,
    original_shape: Sequence[int],
    mirrored: bool,
    path: str,
    warnings: Sequence[str] = (),
    threshold: float = 0.5,
    min_separation: float = 3.0,
    shape_priors: Mapping[str, ShapePrior] | None = None,
) -> LocatorResult:
    """Union heatmaps of one image -> named joints in original image pixels.

    Joints are placed by :func:`assign_joints` (no two joints on one blob), then checked
    against the limb's shape prior when there is one (:func:`check_shape`: a joint that the
    other joints place elsewhere moves to another blob of its channel or is flagged missing).
    Two joints decoded within ``min_separation`` grid pixels of each other cannot both be
    right (true joints are >= 6 px apart at 256 px): the less confident one is flagged missing
    rather than given a name that belongs elsewhere.
    """
    warnings = list(warnings)
    hand = decode_heatmaps(prob, "hand", threshold)
    is_hand = _is_hand(hand, min_separation)
    if not limb:  # kind from the image, side assumed left
        limb = "LH" if is_hand else "LF"
        limb_source = "model"
    parsed = Limb.parse(limb)
    wrong_kind = is_hand != (parsed.kind == "hand")
    if wrong_kind and parsed.kind == "foot" and len(_conflicts(hand, min_separation)) > 1:
        # weak evidence for a hand (2-3 channel pairs on one spot, as on some feet, e.g. an
        # 8-bit export): the label stands; only a clean hand decoding overrules a foot label
        wrong_kind = False
    if wrong_kind:
        warnings.append(
            f"image does not look like a {parsed.kind} radiograph but is labelled "
            f"{parsed.label}: all joints flagged missing"
        )
    # nothing to find on a tiny, unreadable or blank image: never name noise as joints
    too_small = any(
        "too small" in w or "no contrast" in w or w.startswith(UNREADABLE) for w in warnings
    )
    grid = prob.shape[-2:]
    shape = (int(original_shape[0]), int(original_shape[1]))
    decoded, notes = assign_joints(prob, parsed.kind, threshold)
    prior = (shape_priors or {}).get(parsed.kind)
    if not (wrong_kind or too_small):  # else every joint is flagged missing below anyway
        warnings.extend(notes)
        if prior is not None:
            decoded, notes = check_shape(decoded, prob, parsed.kind, prior, threshold)
            warnings.extend(notes)
    for loser, winner in _conflicts(decoded, min_separation):
        _, _, conf = decoded[loser]
        decoded[loser] = (None, None, conf)
        warnings.append(
            f"{loser} and {winner} claimed the same point; {loser} (lower confidence) "
            "flagged missing"
        )
    joints = {}
    for joint, (site, (x, y, conf)) in zip(joints_for_limb(parsed), decoded.items(), strict=True):
        assert joint.site == site
        if x is None or wrong_kind or too_small:
            joints[joint.id] = JointPrediction(joint.id, joint.name, None, None, conf, True)
            continue
        point = np.array([[x, y]])
        if mirrored:
            point = mirror_points(point, grid[1])
        point = scale_points(point, grid, shape)[0]
        joints[joint.id] = JointPrediction(
            joint.id, joint.name, float(point[0]), float(point[1]), conf, False
        )
    return LocatorResult(path, parsed.value, limb_source, shape, joints, warnings)


def write_to_store(store_path: Any, result: LocatorResult, model: Mapping[str, str]) -> int:
    """Store predicted centres as ``model`` proposals (missing joints as "not visible").

    Joints a person already placed, marked or deleted get no proposal: re-running Predict
    after a review leaves the review as it is. Phantom truth does not block proposals (they
    are what a phantom benchmark compares with it); it still wins in every view.

    ``model``: the runner's ``model_info`` (``bundle``, ``version``, ``weights_sha256``), the
    provenance every revision carries. ``store_path``: a project path or an open store.
    """
    from .store import AnnotationStore, Provenance

    if not model.get("bundle"):
        raise ValueError("a model revision needs the bundle that made it (model['bundle'])")
    prov = Provenance.model(
        model["bundle"], model.get("version", ""), model.get("weights_sha256", "")
    )
    with AnnotationStore.using(store_path) as store:
        record = store.find_image(result.path)
        if record is None:
            raise ValueError(f"{result.path} is not registered in {store.path}")
        if record.limb != result.limb:
            raise ValueError(
                f"{result.path} is stored as {record.limb} but was located as {result.limb}"
            )
        with store.transaction():
            decided = {  # a person's decision; phantom truth still gets proposals to compare
                key
                for key, res in store.resolved("centre", record.id).items()
                if res.committed is not None and res.committed.source == "human"
            }
            for joint_id, joint in result.joints.items():
                if joint_id in decided:
                    continue  # a person placed, marked or deleted this joint: no proposal
                if joint.missing:
                    store.set_centre(
                        record.id,
                        joint_id,
                        None,
                        prov,
                        confidence=joint.confidence,
                        status="not_visible",
                    )
                else:
                    store.set_centre(
                        record.id, joint_id, (joint.x, joint.y), prov, confidence=joint.confidence
                    )
        return record.id
