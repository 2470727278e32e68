"""The joint locator: one U-Net for hands and feet, its loss, transforms and decoder.

Shared by the ``ra_joint_locator`` MONAI bundle (its configs reference these names), by
``ra-joints predict``/``benchmark`` and by the napari plugin, so that training, inference and
review see the same geometry.

Design (see the bundle's docs/README.md): one network whose output has one channel per joint
of *both* limb kinds (22 hand + 6 foot = 28 "union" channels). Training sets the other kind's
channels to 0, so the network also learns which limb it is looking at: a foot given as a hand
is caught instead of getting hand joint names. Right limbs are mirrored to look like left ones.
A joint's point is the probability-weighted centroid of its strongest blob above a threshold;
no blob means "missing", never an invented point.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.metrics import CumulativeIterationMetric
from monai.transforms import MapTransform
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .imageio import IMAGE_EXTENSIONS, ImageData, ImageReadError, file_sha256, read_image
from .shape_prior import SHAPE_PRIOR_FILE, ShapePrior, load_shape_priors
from .targets import (
    IGNORE,
    CropBox,
    edge_crop_box,
    mirror_image,
    mirror_points,
    normalise_intensity,
    resize_image,
    scale_points,
)
from .vocabulary import Limb, joints_for_limb, site_names

__all__ = [
    "BUNDLE_NAME",
    "UNION_CHANNELS",
    "DecodeJointsd",
    "JointHitRate",
    "JointLocator",
    "LoadRadiographd",
    "LocatorLoss",
    "LocatorResult",
    "ResultCollector",
    "SaveJointsJSONd",
    "UnionLabeld",
    "assign_joints",
    "build_network",
    "channel_blobs",
    "check_shape",
    "decode_heatmaps",
    "image_files",
    "limb_from_filename",
    "shape_prior_path",
]

BUNDLE_NAME = "ra_joint_locator"
UNION_CHANNELS: tuple[str, ...] = tuple(
    [f"hand:{s}" for s in site_names("hand")] + [f"foot:{s}" for s in site_names("foot")]
)
MIN_SIDE = 64
CLINICAL_NOTE = "phantom-trained weights: not for clinical use"


def kind_slice(kind: str) -> slice:
    """Channels of ``"hand"`` or ``"foot"`` in the union output."""
    n_hand = len(site_names("hand"))
    return slice(0, n_hand) if kind == "hand" else slice(n_hand, len(UNION_CHANNELS))


def build_network(
    channels: Sequence[int] = (16, 32, 64, 128, 128, 128, 128),
    strides: Sequence[int] = (2, 2, 2, 2, 2, 2),
    kernel_size: int = 3,
    num_res_units: int = 0,
    coordconv: bool = True,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """MONAI U-Net with one output channel per union joint (logits; sigmoid outside).

    Naming a joint needs context from the whole limb (MCP 2 and MCP 3 look alike), so the
    default has six down-sampling levels: its receptive field (~380 px) covers a 256-px input.
    With four levels (~60 px) the quick model fired at joints but named them wrongly.
    """
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=3 if coordconv else 1,
        out_channels=len(UNION_CHANNELS),
        channels=tuple(channels),
        strides=tuple(strides),
        kernel_size=kernel_size,
        up_kernel_size=kernel_size,
        num_res_units=num_res_units,
        norm="batch",
        dropout=dropout,
    )


class LocatorLoss(torch.nn.Module):
    """Per-pixel binary cross-entropy + per-channel spatial cross-entropy, skipping -1 pixels.

    * BCE (the RA2-DREAM choice) makes each pixel's sigmoid a calibrated "joint here"
      probability, which the decoder thresholds to find blobs and missing joints.
    * The spatial term is a cross-entropy between each channel's softmax over *pixels* and its
      normalised target square: a channel can only do well by putting its mass on one place,
      so it must learn *which* joint it stands for. Without it (BCE alone, or BCE with a large
      positive weight and Dice) the quick model lit every channel up at all 15 finger joints.

    The fused BCE kernel is used whenever nothing is ignored; a pixel mask only for batches
    with ignored pixels. ``dice_weight`` adds an optional soft Dice term.
    """

    def __init__(
        self, pos_weight: float = 3.0, spatial_weight: float = 0.2, dice_weight: float = 0.0
    ):
        super().__init__()
        self.pos_weight = float(pos_weight)
        self.spatial_weight = float(spatial_weight)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = torch.as_tensor(target, dtype=logits.dtype, device=logits.device)
        ignore = target == IGNORE
        y = target.clamp(min=0)
        pos_weight = torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        bce_loss = torch.nn.functional.binary_cross_entropy_with_logits
        valid = None
        if bool(ignore.any()):
            valid = (~ignore).to(logits.dtype)
            loss = bce_loss(logits, y, weight=valid, pos_weight=pos_weight, reduction="sum")
            loss = loss / valid.sum().clamp(min=1)
        else:
            loss = bce_loss(logits, y, pos_weight=pos_weight)
        mass = y.sum((2, 3))
        has_target = (mass > 0).to(logits.dtype)
        n_targets = has_target.sum().clamp(min=1)
        if self.spatial_weight:
            flat = logits.flatten(2)
            if valid is not None:  # ignored pixels take no part in the softmax
                flat = flat.masked_fill(valid.flatten(2) == 0, -1e4)
            log_p = torch.log_softmax(flat, dim=-1)
            ce = -(y.flatten(2) * log_p).sum(-1) / mass.clamp(min=1)
            loss = loss + self.spatial_weight * (ce * has_target).sum() / n_targets
        if self.dice_weight:
            prob = torch.sigmoid(logits) if valid is None else torch.sigmoid(logits) * valid
            inter = (prob * y).sum((2, 3))
            total = prob.sum((2, 3)) + mass
            dice = ((1 - (2 * inter + 1) / (total + 1)) * has_target).sum()
            loss = loss + self.dice_weight * dice / n_targets
        return loss


# ------------------------------------------------------------------------------ transforms


class UnionLabeld(MapTransform):
    """Place a limb kind's target channels into the 28 union channels (the others 0)."""

    def __init__(self, keys: KeysCollection, limb_key: str = "limb"):
        super().__init__(keys)
        self.limb_key = limb_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        kind = Limb.parse(d[self.limb_key]).kind
        for key in self.key_iterator(d):
            label = d[key]
            shape = (len(UNION_CHANNELS), *label.shape[-2:])
            out = (
                torch.zeros(shape, dtype=torch.float32)
                if isinstance(label, torch.Tensor)
                else (np.zeros(shape, np.float32))
            )
            out[kind_slice(kind)] = label
            d[key] = out
        return d


_LIMB_TOKEN = re.compile(r"(?:^|[^A-Za-z])(LH|RH|LF|RF)(?:$|[^A-Za-z])", re.IGNORECASE)


def limb_from_filename(path: str | Path) -> Limb | None:
    """``P001_LH.dcm``, ``p001-rf.png``: a limb token between separators in the file name."""
    match = _LIMB_TOKEN.search(Path(path).stem)
    return Limb.parse(match.group(1)) if match else None


def limb_from_dicom(image: ImageData) -> Limb | None:
    part = (image.body_part or "").upper()
    kind = "H" if "HAND" in part else "F" if "FOOT" in part else None
    if kind and image.laterality in ("L", "R"):
        return Limb(image.laterality + kind)
    return None


def resolve_limb(path: str | Path, image: ImageData, given: str | None) -> tuple[Limb | None, str]:
    """The limb of a radiograph and where that came from (given > DICOM tags > file name)."""
    if given:
        return Limb.parse(given), "given"
    from_tags = limb_from_dicom(image)
    if from_tags:
        return from_tags, "dicom"
    from_name = limb_from_filename(path)
    if from_name:
        return from_name, "filename"
    return None, "unknown"


class LoadRadiographd(MapTransform):
    """Read a radiograph through annotation_tools.imageio and prepare it for the locator.

    Output: ``image`` (1, S, S) float32 in [0, 1], left orientation; plus ``original_shape``,
    ``mirrored``, ``limb``, ``limb_source``, ``path`` and ``warnings`` for the decoder.
    An unreadable file raises (the batch runner reports it and goes on).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] = (256, 256),
        limb_key: str = "limb",
        crop_edges: bool = False,
    ):
        super().__init__(keys)
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.limb_key = limb_key
        self.crop_edges = crop_edges

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                image = read_image(path)
            except ImageReadError as exc:  # report it in the output, keep the batch going
                prepared = unreadable(path, exc.reason, self.spatial_size)
                if self.crop_edges:
                    prepared["crop_box"] = [0, 1, 0, 1]
            else:
                prepared = prepare_radiograph(
                    image, d.get(self.limb_key), self.spatial_size, path, crop_edges=self.crop_edges
                )
            d[key] = torch.from_numpy(prepared.pop("pixels"))[None]
            d.update(prepared)
        return d


UNREADABLE = "unreadable: "


def unreadable(path: str | Path, reason: str, spatial_size: tuple[int, int]) -> dict[str, Any]:
    """Placeholder input for a file that could not be read; the decoder flags every joint."""
    limb = limb_from_filename(path)
    return {
        "pixels": np.zeros(spatial_size, np.float32),
        "original_shape": [1, 1],
        "mirrored": False,
        "limb": limb.value if limb else "LH",
        "limb_source": "filename" if limb else "unknown",
        "path": str(path),
        "warnings": json.dumps([UNREADABLE + reason]),
    }


def prepare_radiograph(
    image: ImageData,
    limb: str | None,
    spatial_size: tuple[int, int],
    path: str | Path,
    *,
    crop_edges: bool = False,
) -> dict[str, Any]:
    """Grey, windowed, mirrored-to-left and resized pixels plus what the decoder needs.

    ``crop_edges`` (the multi-task network) first crops to the Canny-edge bounding box and
    returns it as ``crop_box`` ``[y0, y1, x0, x1]``.
    """
    warnings = []
    resolved, source = resolve_limb(path, image, limb)
    if image.is_colour:
        warnings.append("colour image converted to grey-scale")
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        warnings.append(f"image is {w}x{h} px: too small for the locator (needs >= {MIN_SIDE} px)")
    grey = image.grey()
    box = edge_crop_box(grey) if crop_edges and min(h, w) >= MIN_SIDE else CropBox(0, h, 0, w)
    pixels = normalise_intensity(box.crop(grey))
    if not pixels.any():
        warnings.append("image has no contrast (blank?)")
    mirrored = resolved is not None and resolved.side == "right"
    if resolved is None:
        warnings.append(
            "limb unknown (no DICOM laterality/body part, no LH/RH/LF/RF in the file name): "
            "limb kind decided from the image, side assumed left"
        )
    resized = resize_image(pixels, spatial_size)
    if mirrored:
        resized = mirror_image(resized)
    return {
        "pixels": resized.astype(np.float32),
        "original_shape": [int(h), int(w)],
        "mirrored": bool(mirrored),
        "limb": resolved.value if resolved else "",
        "limb_source": source,
        "path": str(path),
        "warnings": json.dumps(warnings),
        **({"crop_box": [box.y0, box.y1, box.x0, box.x1]} if crop_edges else {}),
    }


# ------------------------------------------------------------------------------ decoding


@dataclass
class JointPrediction:
    joint_id: str
    name: str
    x: float | None
    y: float | None
    confidence: float
    missing: bool


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


def channel_blobs(channel: np.ndarray, threshold: float) -> list[tuple[float, float, float, float]]:
    """``(mass, x, y, peak)`` of every connected region above ``threshold``, strongest first;
    ``(x, y)`` is the probability-weighted centroid (sub-pixel). Works on each region's bounding
    box: blobs are small, and whole-image label statistics dominated the decoder's time."""
    labels, _ = ndimage.label(channel > threshold)
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
    found = [blob[:3] for channel in channels for blob in channel_blobs(channel, threshold)]
    kept: list[tuple[float, float]] = []
    for _, x, y in sorted(found, reverse=True):
        if all(np.hypot(x - kx, y - ky) >= merge for kx, ky in kept):
            kept.append((x, y))
    return np.array(kept, dtype=float).reshape(-1, 2)


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
    a hand: peak strength alone does not tell the kinds apart. Consistency does. On 60 held-out
    phantom radiographs a hand decoded as a hand gave at most 1 pair of channels on the same
    spot, a foot decoded as a hand at least 11.
    """
    return _is_hand(decode_heatmaps(prob, "hand", threshold), min_separation)


def _is_hand(hand: Mapping[str, tuple[Any, Any, float]], min_separation: float) -> bool:
    conflicts = len(_conflicts(hand, min_separation))
    firing = np.mean([x is not None for x, _, _ in hand.values()])
    # a few joints may really be missing (amputation, outside the field): half must fire
    return conflicts <= 3 and firing >= 0.5


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


def _value(item: Any) -> Any:
    """A decollated value may come wrapped in a one-element list or tensor."""
    if isinstance(item, torch.Tensor):
        item = item.tolist()
    if isinstance(item, list | tuple) and len(item) == 1 and not isinstance(item[0], int | float):
        return item[0]
    return item


class DecodeJointsd(MapTransform):
    """Post-processing: sigmoid heatmaps in ``pred`` -> a :class:`LocatorResult` in ``joints``."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_key: str = "joints",
        threshold: float = 0.5,
        shape_priors: Mapping[str, ShapePrior] | None = None,
    ):
        super().__init__(keys)
        self.output_key = output_key
        self.threshold = threshold
        self.shape_priors = dict(shape_priors or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = torch.as_tensor(d[key]).detach().float().cpu().numpy()
            d[self.output_key] = decode_result(
                prob, **decoder_args(d), threshold=self.threshold, shape_priors=self.shape_priors
            )
        return d


def decoder_args(d: Mapping[Hashable, Any]) -> dict[str, Any]:
    """What :class:`LoadRadiographd` put into a (decollated) item, as decoder arguments."""
    return {
        "limb": _value(d.get("limb", "")),
        "limb_source": _value(d.get("limb_source", "")),
        "original_shape": [int(v) for v in torch.as_tensor(d["original_shape"]).flatten()],
        "mirrored": bool(_value(d.get("mirrored", False))),
        "path": _value(d.get("path", "")),
        "warnings": json.loads(_value(d.get("warnings", "[]"))),
    }


def network_input(pixels: np.ndarray, coordconv: bool) -> torch.Tensor:
    """Prepared pixels ``(H, W)`` -> the network's input ``(C, H, W)`` (+ CoordConv x/y)."""
    x = torch.from_numpy(pixels)[None]
    if coordconv:
        from monai.transforms import AddCoordinateChannels

        x = AddCoordinateChannels(spatial_dims=(0, 1))(x)
    return torch.as_tensor(x, dtype=torch.float32)


class SaveJointsJSONd(MapTransform):
    """Write one ``<stem>.json`` per image, and optionally the centres into a project store."""

    def __init__(
        self,
        keys: KeysCollection = "joints",
        output_dir: str | Path = "out",
        bundle_version: str = "",
        weights_file: str | Path | None = None,
        store: str | Path | None = None,
    ):
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.model = {"bundle": BUNDLE_NAME, "version": bundle_version}
        if weights_file and Path(weights_file).exists():
            self.model["weights_sha256"] = file_sha256(weights_file)
        self.store = store

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for key in self.key_iterator(d):
            result: LocatorResult = d[key]
            if self.store:
                try:
                    write_to_store(self.store, result, self.model)
                except (ValueError, KeyError) as exc:  # say so in the output, keep going
                    result.warnings.append(f"not written to the store: {exc}")
            path = self.output_dir / f"{Path(result.path).stem}.json"
            path.write_text(json.dumps(result.to_json(self.model), indent=1))
        return d


def write_to_store(store_path: str | Path, result: LocatorResult, model: Mapping[str, str]) -> int:
    """Store predicted centres as ``model`` revisions (missing joints as "not visible")."""
    from .store import AnnotationStore, Provenance

    prov = Provenance.model(
        model.get("bundle", BUNDLE_NAME), model.get("version", ""), model.get("weights_sha256", "")
    )
    with AnnotationStore.open(store_path, create=False) as store:
        record = store.find_image(result.path)
        if record is None:
            raise ValueError(f"{result.path} is not registered in {store.path}")
        if record.limb != result.limb:
            raise ValueError(
                f"{result.path} is stored as {record.limb} but was located as {result.limb}"
            )
        with store.transaction():
            for joint_id, joint in result.joints.items():
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


# ------------------------------------------------------------------------------ metric


class JointHitRate(CumulativeIterationMetric):
    """Share of annotated joints whose decoded point lies within ``tolerance`` x grid diagonal.

    Works on union heatmaps (logits or probabilities) and union targets in the training grid;
    used as the validation key metric.
    """

    def __init__(self, tolerance: float = 0.02, threshold: float = 0.5, logits: bool = True):
        super().__init__()
        self.tolerance = tolerance
        self.threshold = threshold
        self.logits = logits

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(y_pred) if self.logits else y_pred
        prob = prob.detach().float().cpu().numpy()
        target = torch.as_tensor(y).detach().float().cpu().numpy()
        hits = np.full(prob.shape[:2], np.nan, np.float32)
        diag = float(np.hypot(*prob.shape[-2:]))
        for b in range(prob.shape[0]):
            decoded = {}
            for kind in ("hand", "foot"):
                if (target[b, kind_slice(kind)] == 1).any():
                    decoded.update(
                        {
                            f"{kind}:{k}": v
                            for k, v in decode_heatmaps(prob[b], kind, self.threshold).items()
                        }
                    )
            for c, name in enumerate(UNION_CHANNELS):
                square = target[b, c] == 1
                if not square.any():
                    continue
                ys, xs = np.nonzero(square)
                x, y, _ = decoded[name]
                if x is None:
                    hits[b, c] = 0.0
                else:
                    err = np.hypot(x - xs.mean(), y - ys.mean()) / diag
                    hits[b, c] = float(err <= self.tolerance)
        return torch.from_numpy(hits)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        values = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        return torch.tensor(float(np.nanmean(values)) if np.isfinite(values).any() else 0.0)


# ------------------------------------------------------------------------------ runtime


def image_files(folder: str | Path) -> list[Path]:
    """Radiograph files of a folder (sorted; hidden files and non-images left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def shape_prior_path(weights_path: str | Path) -> Path | None:
    """The shape prior fitted with these weights (kept next to them), or None: a prior of
    another cohort would judge the joints by the wrong anatomy."""
    path = Path(weights_path).parent / SHAPE_PRIOR_FILE
    return path if path.is_file() else None


class JointLocator:
    """Run the locator bundle in-process, with the bundle's own inference config.

    ``JointLocator.from_bundle(path)`` parses ``configs/inference.json`` (plus overrides) with
    MONAI's ``ConfigParser``, builds ``network_def`` and loads ``models/model.pt`` with
    ``weights_only=True``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        spatial_size: Sequence[int],
        coordconv: bool,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        model_info: Mapping[str, str] | None = None,
        shape_priors: Mapping[str, ShapePrior] | None = None,
    ):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.coordconv = coordconv
        self.threshold = threshold
        self.model_info = dict(model_info or {})
        self.shape_priors = dict(shape_priors or {})

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | Path,
        *,
        device: str | None = None,
        config_files: Sequence[str] = ("configs/inference.json",),
        weights: str | None = None,
    ) -> JointLocator:
        from .bundles import load_bundle_network

        parser, network, weights_path = load_bundle_network(
            bundle_root, config_files=config_files, weights=weights
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        info = {
            "bundle": BUNDLE_NAME,
            "version": str(parser.get("_meta_#version", "")),
            "weights_sha256": file_sha256(weights_path),
        }
        return cls(
            network,
            parser.get_parsed_content("spatial_size"),
            bool(parser.get_parsed_content("coordconv")),
            device=device,
            threshold=float(parser.get_parsed_content("threshold")),
            model_info=info,
            shape_priors=load_shape_priors(shape_prior_path(weights_path)),
        )

    @torch.no_grad()
    def predict_images(
        self, items: Iterable[tuple[str | Path, ImageData, str | None]], batch_size: int = 8
    ) -> list[LocatorResult]:
        """``(path, image, limb or None)`` triples -> one result each, in order."""
        results: list[LocatorResult] = []
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            if not batch:
                return
            started = time.perf_counter()
            inputs = [network_input(b["pixels"], self.coordconv) for b in batch]
            x = torch.stack(inputs).to(self.device)
            prob = torch.sigmoid(self.network(x)).float().cpu().numpy()
            per_item = (time.perf_counter() - started) / len(batch)
            for b, p in zip(batch, prob, strict=True):
                res = decode_result(
                    p,
                    limb=b["limb"],
                    limb_source=b["limb_source"],
                    original_shape=b["original_shape"],
                    mirrored=b["mirrored"],
                    path=b["path"],
                    warnings=json.loads(b["warnings"]),
                    threshold=self.threshold,
                    shape_priors=self.shape_priors,
                )
                res.seconds = b["prep_seconds"] + per_item
                results.append(res)
            batch.clear()

        for path, image, limb in items:
            started = time.perf_counter()
            prepared = prepare_radiograph(image, limb, self.spatial_size, path)
            prepared["prep_seconds"] = (
                time.perf_counter() - started + float(image.metadata.get("read_seconds", 0.0))
            )
            batch.append(prepared)
            if len(batch) >= batch_size:
                flush()
        flush()
        return results

    def predict_files(
        self,
        paths: Iterable[str | Path],
        limbs: Mapping[str, str] | None = None,
        batch_size: int = 8,
    ) -> tuple[list[LocatorResult], list[tuple[str, str]]]:
        """Locate joints in files; unreadable files are returned as ``(path, reason)``."""
        limbs = limbs or {}
        failed: list[tuple[str, str]] = []

        def readable() -> Iterable[tuple[str, ImageData, str | None]]:
            for p in paths:
                started = time.perf_counter()
                try:
                    image = read_image(p)
                except ImageReadError as exc:
                    failed.append((str(p), exc.reason))
                    continue
                image.metadata["read_seconds"] = time.perf_counter() - started
                yield str(p), image, limbs.get(str(p))

        results = self.predict_images(readable(), batch_size=batch_size)
        return results, failed


class ResultCollector(MapTransform):
    """Post-processing step of ``evaluate.json``: keep every decoded result for the report."""

    def __init__(self, key: str = "joints"):
        super().__init__(key)
        self.results: list[LocatorResult] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            self.results.append(data[key])
        return dict(data)


def project_datalist(project: str | Path) -> list[dict[str, str]]:
    """Every radiograph of a project with the limb the store knows (for evaluate.json)."""
    from .store import AnnotationStore

    with AnnotationStore.open(project, create=False) as store:
        return [
            {"image": str(store.resolve(im)), "limb": im.limb}
            for im in store.images(modality="radiograph")
        ]


def evaluate_results(
    results: Sequence[LocatorResult], project: str | Path, tolerance: float = 0.02
) -> dict[str, Any]:
    """Locator figures of results against a project's human/phantom centres.

    The figures come from :func:`annotation_tools.evaluation.locator_figures`; a result located
    as another limb than the stored one counts as a wrong name too.
    """
    from .evaluation import PHANTOM_NOTE, locator_figures, present_centres
    from .store import TRAINING_SOURCES, AnnotationStore

    cases, wrong = [], []
    with AnnotationStore.open(project, create=False) as store:
        for result in results:
            record = store.find_image(result.path)
            if record is None:
                raise ValueError(f"{result.path} is not registered in {store.path}")
            if result.limb != record.limb:
                wrong.append(f"{record.path}: located as {result.limb}, is {record.limb}")
            truth = present_centres(store.centres(record.id, sources=TRAINING_SOURCES))
            cases.append((record.path, truth, result.present(), result.image_shape))
    report = locator_figures(cases, tolerance=tolerance, wrong=wrong)
    seconds = [r.seconds for r in results if r.seconds is not None]
    report["conflicts_flagged_missing"] = sum(
        1 for r in results for w in r.warnings if "claimed the same point" in w
    )
    report["seconds_per_image_mean"] = float(np.mean(seconds)) if seconds else None
    report["note"] = PHANTOM_NOTE
    return report


def write_evaluation(
    results: Sequence[LocatorResult], project: str | Path, output: str | Path
) -> dict[str, Any]:
    report = evaluate_results(results, project)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    return report


def save_rank_weights(network: torch.nn.Module, folder: str | Path | None) -> None:
    """Multi-process test hook: each rank writes its final weights (DDP keeps them equal)."""
    if not folder:
        return
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    module = getattr(network, "module", network)
    Path(folder).mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), Path(folder) / f"rank{rank}.pt")
