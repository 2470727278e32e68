"""Training targets from annotations: locator heatmaps and joint patches.

One function per target, each used by the exporter (ground-truth centres) and by the bundles at
inference (predicted centres), so training and prediction see exactly the same geometry.

Coordinate convention: points are ``(x, y)`` = (column, row) with pixel centres on integers.
Resizing an image from ``(H0, W0)`` to ``(H1, W1)`` maps ``x -> (x + 0.5) * W1 / W0 - 0.5``
(the convention of MONAI's ``Resize`` and scikit-image's ``resize``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .vocabulary import Joint, Limb, joints_for_limb, site_names

__all__ = [
    "FOOT_TYPE_OF",
    "IGNORE",
    "JOINT_TYPES",
    "MASK_IGNORE",
    "CropBox",
    "Patch",
    "edge_crop_box",
    "extract_patch",
    "joint_patch",
    "joint_type",
    "locator_targets",
    "mirror_image",
    "mirror_points",
    "multitask_targets",
    "normalise_intensity",
    "patch_side",
    "patch_to_image",
    "resize_image",
    "scale_points",
]

IGNORE = -1  # locator target value the loss skips (unannotated joint, disc ignore band)
MASK_IGNORE = 255  # joint-space mask value the loss skips (no or invalid polygon)
SQUARE_SIZE = 30  # RA2-DREAM winner: 30x30 square at full resolution
PATCH_FRACTION = 0.094  # RA2-DREAM winner: 384-px patches at a 4096-px reference height
PATCH_FACTORS = {"LF_mtp_1": 1.4, "RF_mtp_1": 1.4, "LF_ip": 1.5, "RF_ip": 1.5}


def scale_points(
    points: np.ndarray | Sequence[Sequence[float]],
    from_shape: tuple[int, int],
    to_shape: tuple[int, int],
) -> np.ndarray:
    """Map ``(x, y)`` points from an image of ``from_shape`` to the same image resized."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    sy = to_shape[0] / from_shape[0]
    sx = to_shape[1] / from_shape[1]
    return np.stack([(pts[:, 0] + 0.5) * sx - 0.5, (pts[:, 1] + 0.5) * sy - 0.5], axis=1)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear, anti-aliased resize of a 2D image (pixel-centre convention as above)."""
    from skimage.transform import resize

    return resize(
        image.astype(np.float32), shape, order=1, anti_aliasing=True, preserve_range=True
    ).astype(np.float32)


def normalise_intensity(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile window to [0, 1]: removes exposure differences between scanners."""
    grey = image.astype(np.float32)
    lo, hi = np.percentile(grey, (low, high))
    if hi <= lo:
        return np.zeros_like(grey)
    return np.clip((grey - lo) / (hi - lo), 0.0, 1.0)


def mirror_points(points: np.ndarray | Sequence[Sequence[float]], width: int) -> np.ndarray:
    """Flip ``(x, y)`` points left-right in an image of ``width`` (its own inverse)."""
    pts = np.array(points, dtype=float).reshape(-1, 2)
    pts[:, 0] = width - 1 - pts[:, 0]
    return pts


def mirror_image(image: np.ndarray) -> np.ndarray:
    """Flip an image (H, W[, C]) left-right; right limbs then look like left ones."""
    return np.ascontiguousarray(image[:, ::-1])


def locator_targets(
    centres: Mapping[str, Sequence[float] | None],
    limb: Limb | str,
    shape: tuple[int, int],
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    mode: str = "square",
    square: float = SQUARE_SIZE,
    radius: float = 32.0,
    ignore_radius: float = 40.0,
) -> np.ndarray:
    """One channel per joint of the limb, in vocabulary order: ``(C, H, W)`` int8.

    Parameters
    ----------
    centres:
        Joint id (or site id) -> ``(x, y)`` in the target grid, or ``None`` for a joint that
        an annotator marked "not visible". Joints absent from the mapping were not annotated.
    scale:
        ``(sy, sx)`` from the original image to the target grid: the ``square`` side is given in
        original pixels (30 in the RA2-DREAM locator) and shrinks with the image.
    mode:
        ``"square"``: 1 inside the square, 0 elsewhere. ``"disc"``: 1 within ``radius``,
        :data:`IGNORE` from ``radius`` to ``ignore_radius``, 0 elsewhere (Maziarz et al.:
        r = 32, R = 40 at an 864x928 input; both radii are in target-grid pixels).

    Channel states: present -> a square/disc; "not visible" -> all 0 (the network must not fire);
    not annotated -> all :data:`IGNORE` (the loss skips it).
    """
    if mode not in ("square", "disc"):
        raise ValueError(f"mode must be 'square' or 'disc', got {mode!r}")
    if mode == "disc" and not 0 < radius <= ignore_radius:
        raise ValueError("disc targets need 0 < radius <= ignore_radius")
    joints = joints_for_limb(limb)
    h, w = shape
    out = np.full((len(joints), h, w), IGNORE, dtype=np.int8)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    half_y, half_x = square * scale[0] / 2.0, square * scale[1] / 2.0
    for channel, joint in enumerate(joints):
        key = joint.id if joint.id in centres else joint.site
        if key not in centres:
            continue
        point = centres[key]
        out[channel] = 0
        if point is None:
            continue
        cx, cy = float(point[0]), float(point[1])
        if mode == "square":
            inside = (np.abs(yy - cy) <= half_y) & (np.abs(xx - cx) <= half_x)
            out[channel][inside] = 1
        else:
            dist = np.hypot(yy - cy, xx - cx)
            out[channel][dist <= ignore_radius] = IGNORE
            out[channel][dist <= radius] = 1
    return out


@dataclass(frozen=True)
class CropBox:
    """Rows ``y0:y1`` and columns ``x0:x1`` of an image kept by :func:`edge_crop_box`."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y1, self.x0 : self.x1]

    def to_crop(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        return np.asarray(points, dtype=float).reshape(-1, 2) - np.array([self.x0, self.y0])

    def to_image(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        return np.asarray(points, dtype=float).reshape(-1, 2) + np.array([self.x0, self.y0])


def edge_crop_box(
    grey: np.ndarray, *, sigma: float = 2.0, margin: float = 0.03, work_side: int = 256
) -> CropBox:
    """Bounding box of the Canny edges of a radiograph, widened by ``margin`` of each side.

    Maziarz et al. crop to the edges so that the limb, not the empty film around it, fills the
    network input. Edges are found on a copy at most ``work_side`` pixels high (fast, and
    detector noise does not count as an edge); with no edge at all the whole image is kept.
    """
    from skimage.feature import canny

    h, w = grey.shape
    factor = min(1.0, work_side / max(h, w))
    small = resize_image(
        normalise_intensity(grey), (max(1, round(h * factor)), max(1, round(w * factor)))
    )
    edges = canny(small, sigma=sigma) if min(small.shape) >= 8 else np.zeros_like(small, bool)
    if not edges.any():
        return CropBox(0, h, 0, w)
    rows = np.flatnonzero(edges.any(axis=1))
    cols = np.flatnonzero(edges.any(axis=0))
    pad_y, pad_x = margin * h, margin * w
    y0 = max(0, int(np.floor(rows[0] / factor - pad_y)))
    y1 = min(h, int(np.ceil((rows[-1] + 1) / factor + pad_y)))
    x0 = max(0, int(np.floor(cols[0] / factor - pad_x)))
    x1 = min(w, int(np.ceil((cols[-1] + 1) / factor + pad_x)))
    return CropBox(y0, y1, x0, x1)


def _disc_owner(
    points: Sequence[tuple[float, float]],
    shape: tuple[int, int],
    radius: float,
    ignore_radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest point and whether it is labelled (<= r) or ignored.

    Returns ``owner`` (-1 outside every ring) and ``state`` (1 disc, IGNORE ring, 0 elsewhere).
    Overlapping discs (the crowded wrist) are split between their centres by distance.
    """
    h, w = shape
    owner = np.full(shape, -1, dtype=np.int16)
    state = np.zeros(shape, dtype=np.int8)
    if not points:
        return owner, state
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    nearest = np.full(shape, np.inf, dtype=np.float32)
    for index, (cx, cy) in enumerate(points):
        dist = np.hypot(yy - cy, xx - cx)
        closer = dist < nearest
        owner[closer] = index
        nearest[closer] = dist[closer]
    owner[nearest > ignore_radius] = -1
    state[nearest <= ignore_radius] = IGNORE
    state[nearest <= radius] = 1
    return owner, state


def multitask_targets(
    centres: Mapping[str, Sequence[float] | None],
    scores: Mapping[str, Mapping[str, float]],
    limb: Limb | str,
    shape: tuple[int, int],
    *,
    radius: float = 32.0,
    ignore_radius: float = 40.0,
) -> np.ndarray:
    """Per-pixel targets of the multi-task U-Net (Maziarz et al.): ``(3, H, W)`` float32.

    Channel 0 is the joint type (0 background, ``1 + index`` of the joint's hand site; foot
    joints take the finger type they resemble, see :data:`FOOT_TYPE_OF`); channels 1 and 2 are
    the narrowing and erosion grades on the joint's disc (foot erosion halved: 0-10 -> 0-5, a
    half grade is split between its neighbours by the loss). :data:`IGNORE` marks pixels the
    loss skips: the ring ``radius..ignore_radius`` in every channel, and the grade channels
    outside the discs or where a joint carries no such score.

    ``centres`` and ``radius`` are in target-grid pixels; joints absent from ``centres`` or
    ``None`` there ("not visible") get no disc.
    """
    limb = Limb.parse(limb)
    joints = [j for j in joints_for_limb(limb) if centres.get(j.id if j.id in centres else j.site)]
    points = [tuple(map(float, centres[j.id if j.id in centres else j.site])) for j in joints]
    owner, state = _disc_owner(points, shape, radius, ignore_radius)
    out = np.full((3, *shape), IGNORE, dtype=np.float32)
    out[0] = np.where(state == 0, 0, IGNORE)
    for index, joint in enumerate(joints):
        disc = (owner == index) & (state == 1)
        out[0][disc] = joint_type(joint.site, limb.kind)
        graded = scores.get(joint.id, {})
        for channel, score_type in ((1, "narrowing"), (2, "erosion")):
            value = graded.get(score_type)
            if value is None or value < 0:
                continue
            if score_type == "erosion" and limb.kind == "foot":
                value = value / 2.0
            out[channel][disc] = float(value)
    return out


# Maziarz et al. map foot joints onto the finger joints they resemble, so that one joint-type
# head serves both limbs: the hallux IP is the thumb IP, MTP k the MCP k.
FOOT_TYPE_OF = {"ip": "ip", **{f"mtp_{k}": f"mcp_{k}" for k in range(1, 6)}}
JOINT_TYPES: tuple[str, ...] = ("background", *site_names("hand"))


def joint_type(site: str, kind: str) -> int:
    """Class index of a site in the joint-type head (0 is background)."""
    return JOINT_TYPES.index(FOOT_TYPE_OF[site] if kind == "foot" else site)


def patch_side(joint: Joint, image_height: int, fraction: float = PATCH_FRACTION) -> float:
    """Side of a joint's patch in image pixels: a fraction of the radiograph's height.

    The hallux joints are larger, so their patches are too (x1.4 MTP 1, x1.5 IP, as in the
    RA2-DREAM winner).
    """
    return float(image_height) * fraction * PATCH_FACTORS.get(joint.id, 1.0)


@dataclass
class Patch:
    """A square patch around a joint plus what maps it back to the image."""

    image: np.ndarray  # (S, S) float32
    centre: tuple[float, float]  # patch centre in image pixels (after any shift)
    side: float  # patch side in image pixels
    mask: np.ndarray | None = None  # (S, S) uint8: 1 joint space, 0 not, MASK_IGNORE unknown
    problems: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def to_image(self, uv: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Patch pixel ``(u, v)`` (column, row) -> image ``(x, y)``."""
        uv = np.asarray(uv, dtype=float).reshape(-1, 2)
        step = self.side / self.size
        origin = np.array(self.centre) - self.side / 2.0
        return origin + (uv + 0.5) * step

    def to_patch(self, xy: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Image ``(x, y)`` -> patch pixel ``(u, v)``."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        step = self.side / self.size
        origin = np.array(self.centre) - self.side / 2.0
        return (xy - origin) / step - 0.5


def extract_patch(
    image: np.ndarray,
    centre: Sequence[float],
    side: float,
    *,
    size: int = 128,
    shift: float = 0.0,
    rng: np.random.Generator | None = None,
    polygon: Sequence[Sequence[float]] | None = None,
) -> Patch:
    """Resample a ``side``-pixel square around ``centre`` to ``size`` x ``size``.

    Parts outside the image are padded with the image minimum (a joint at the border is kept,
    not dropped). ``shift`` moves the centre by up to that many image pixels per axis (training
    augmentation; needs ``rng``). A ``polygon`` (joint space, image ``(x, y)``) is rasterised
    into the patch as a mask; a polygon that is not a valid simple polygon gives an ignore mask
    and a message in ``problems``.
    """
    if image.ndim != 2:
        raise ValueError(f"patches are cut from 2D grey-scale images, got shape {image.shape}")
    if side <= 0 or size <= 0:
        raise ValueError("patch side and size must be positive")
    cx, cy = float(centre[0]), float(centre[1])
    if shift:
        if rng is None:
            raise ValueError("a random shift needs rng")
        cx += float(rng.uniform(-shift, shift))
        cy += float(rng.uniform(-shift, shift))
    patch = Patch(np.empty((size, size), np.float32), (cx, cy), float(side))
    grid = patch.to_image(
        np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2)
    )
    values = ndimage.map_coordinates(
        image.astype(np.float32),
        [grid[:, 1], grid[:, 0]],
        order=1,
        mode="constant",
        cval=float(image.min()),
    )
    patch.image = values.reshape(size, size).astype(np.float32)
    if polygon is not None:
        patch.mask, problem = _polygon_mask(patch, polygon)
        if problem:
            patch.problems.append(problem)
    return patch


def _polygon_mask(patch: Patch, polygon: Sequence[Sequence[float]]) -> tuple[np.ndarray, str]:
    from skimage.draw import polygon2mask

    problem = polygon_problem(polygon)
    if problem:
        return np.full((patch.size, patch.size), MASK_IGNORE, np.uint8), problem
    uv = patch.to_patch(polygon)
    mask = polygon2mask((patch.size, patch.size), uv[:, ::-1])
    return mask.astype(np.uint8), ""


def polygon_problem(polygon: Sequence[Sequence[float]]) -> str:
    """Why a joint-space polygon cannot be used ('' when it can)."""
    pts = np.asarray(polygon, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        return "polygon vertices must be (x, y) pairs"
    if len(pts) < 3:
        return f"polygon has {len(pts)} point(s); at least 3 are needed"
    if not np.isfinite(pts).all():
        return "polygon has non-finite vertices"
    if _self_intersects(pts):
        return "polygon is self-intersecting"
    area = 0.5 * abs(
        np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))
    )
    if area <= 0:
        return "polygon has zero area"
    return ""


def _self_intersects(pts: np.ndarray) -> bool:
    """True when two non-adjacent edges cross (joint-space polygons have tens of vertices)."""
    n = len(pts)
    edges = [(pts[i], pts[(i + 1) % n]) for i in range(n)]

    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a vertex
            (p1, p2), (q1, q2) = edges[i], edges[j]
            d1, d2 = orient(q1, q2, p1), orient(q1, q2, p2)
            d3, d4 = orient(p1, p2, q1), orient(p1, p2, q2)
            if d1 * d2 < 0 and d3 * d4 < 0:
                return True
    return False


def joint_patch(
    pixels: np.ndarray,
    joint: Joint,
    centre: Sequence[float],
    *,
    size: int,
    mirror: bool,
    polygon: Sequence[Sequence[float]] | None = None,
    shift: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Patch:
    """The scorer's patch of one joint: side from the radiograph height, right limbs mirrored.

    ``pixels`` is the intensity-normalised radiograph. With ``mirror`` the patch (and its mask)
    is flipped left-right, so the scorer only ever sees left-limb anatomy; :func:`Patch.to_image`
    then needs the flip undone first (see :func:`patch_to_image`).
    """
    patch = extract_patch(
        pixels,
        centre,
        patch_side(joint, pixels.shape[0]),
        size=size,
        polygon=polygon,
        shift=shift,
        rng=rng,
    )
    if mirror:
        patch.image = mirror_image(patch.image)
        if patch.mask is not None:
            patch.mask = mirror_image(patch.mask)
    return patch


def patch_to_image(
    patch: Patch, uv: np.ndarray | Sequence[Sequence[float]], mirrored: bool
) -> np.ndarray:
    """Pixel ``(u, v)`` of a (possibly mirrored) joint patch -> image ``(x, y)``."""
    uv = np.array(uv, dtype=float).reshape(-1, 2)
    if mirrored:
        uv[:, 0] = patch.size - 1 - uv[:, 0]
    return patch.to_image(uv)
