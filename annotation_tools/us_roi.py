"""Boxes a sonographer would otherwise draw: the Doppler colour box and the joint-recess ROI.

RATING cropped both images with boxes drawn by radiologists; this module finds them on the
screen so a pair without a drawn box can still be graded (and the box offered for editing).

* :func:`find_colour_box`: the Doppler colour box of a scanner screen - from its outline (two
  long thin horizontal lines joined by two vertical ones), else from the extent of the colour
  pixels inside the scan area. Colour bars (tall, solid, graded strips), coloured text and
  icons are not colour-box pixels: they lie outside the scan area or are dropped by shape.
* :func:`propose_roi`: the ROI over the joint recess from the bone profile. A bone surface is
  a bright line with an acoustic shadow below it; the joint is the gap where that signature
  breaks between two bone ends. The box is placed relative to the gap and the line joining
  the bone tops with a small linear calibration (``roi_calibration.json``, fitted on a
  training seed of phantoms by :func:`fit_roi_calibration`, chosen on a validation seed).

Boxes use the slice semantics of :mod:`annotation_tools.ultrasound`: ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "BoneProfile",
    "bone_profile",
    "box_iou",
    "find_colour_box",
    "fit_roi_calibration",
    "load_roi_calibration",
    "propose_roi",
    "scan_box",
]

CALIBRATION_FILE = Path(__file__).with_name("roi_calibration.json")
Box = tuple[float, float, float, float]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        from .us_pixels import UltrasoundInputError

        raise UltrasoundInputError(f"a Doppler screen must be RGB (H, W, 3), got {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        from .us_pixels import to_uint8

        rgb = to_uint8(rgb)
    return rgb


# ------------------------------------------------------------------------ colour box


def _thin_lines(bright: np.ndarray, axis: int, contrast: float) -> np.ndarray:
    """Pixels on a thin line along ``axis`` (1: horizontal, 0: vertical): brighter, or darker,
    than the pixels two away on both sides across the line (an outline drawn over bright
    tendon is a dark line there)."""
    b = bright.astype(np.float32)
    across = 0 if axis == 1 else 1
    d1 = b - np.roll(b, 2, axis=across)
    d2 = b - np.roll(b, -2, axis=across)
    return ((d1 > contrast) & (d2 > contrast)) | ((d1 < -contrast) & (d2 < -contrast))


def _positions(lines: np.ndarray, axis: int, min_len: int) -> list[tuple[float, int, int]]:
    """Straight runs of ``lines`` at least ``min_len`` long (short speckle ridges are opened
    away, dashes up to 8 px bridged): ``(position across, start, end)``."""
    along = (1, 15) if axis == 1 else (15, 1)
    runs = ndimage.binary_opening(lines, structure=np.ones(along, bool))
    bridge = (1, 9) if axis == 1 else (9, 1)
    runs = ndimage.binary_closing(runs, structure=np.ones(bridge, bool))
    labels, _ = ndimage.label(runs)
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        rows, cols = sl
        length = (cols.stop - cols.start) if axis == 1 else (rows.stop - rows.start)
        thick = (rows.stop - rows.start) if axis == 1 else (cols.stop - cols.start)
        if length < min_len or thick > 5:
            continue
        idx = np.nonzero(labels[sl] == i)
        if axis == 1:
            out.append((float(np.median(idx[0] + rows.start)), cols.start, cols.stop))
        else:
            out.append((float(np.median(idx[1] + cols.start)), rows.start, rows.stop))
    return out


def _merge(values: Iterable[float], tol: float = 2.0) -> list[int]:
    out: list[int] = []
    for v in sorted(values):
        if not out or v - out[-1] > tol:
            out.append(round(v))
    return out


def _outline_box(
    rgb: np.ndarray, *, contrast: float = 20.0, min_side: int = 24, min_support: float = 0.55
) -> Box | None:
    """The rectangle of thin lines best supported on all four sides, or None.

    Candidate sides come from long straight line runs; every pair of vertical candidates and
    of horizontal candidates (run positions and the ends of the vertical runs) is scored by the
    share of each side covered by line pixels (1 px tolerance). Tendon fibrils and the skin are
    horizontal lines too, but no pair of vertical lines joins them.
    """
    bright = rgb.max(axis=-1)
    h, w = bright.shape
    hl = _thin_lines(bright, 1, contrast)
    vl = _thin_lines(bright, 0, contrast)
    vert = _positions(vl, 0, min_side)
    if len(vert) < 2:
        return None
    horiz = _positions(hl, 1, min_side)
    xs = _merge(v[0] for v in vert)
    ys = _merge([s[0] for s in horiz] + [v[1] for v in vert] + [v[2] - 1 for v in vert])
    if len(ys) < 2:
        return None
    hd = ndimage.binary_dilation(hl, structure=np.ones((3, 1), bool))
    vd = ndimage.binary_dilation(vl, structure=np.ones((1, 3), bool))
    along_x = np.concatenate([np.zeros((h, 1)), np.cumsum(hd, axis=1)], axis=1)
    along_y = np.concatenate([np.zeros((1, w)), np.cumsum(vd, axis=0)], axis=0)
    ya = np.array(ys)
    top, bottom = np.meshgrid(ya, ya, indexing="ij")
    ok_y = bottom - top >= min_side
    if not ok_y.any():
        return None
    top, bottom = top[ok_y], bottom[ok_y]
    best, best_score = None, 0.0
    for i, xl in enumerate(xs):
        for xr in xs[i + 1 :]:
            if xr - xl < min_side:
                continue
            span = float(xr - xl + 1)
            s_top = (along_x[top, xr + 1] - along_x[top, xl]) / span
            s_bot = (along_x[bottom, xr + 1] - along_x[bottom, xl]) / span
            height = (bottom - top + 1).astype(np.float64)
            s_left = (along_y[bottom + 1, xl] - along_y[top, xl]) / height
            s_right = (along_y[bottom + 1, xr] - along_y[top, xr]) / height
            sides = np.stack([s_top, s_bot, s_left, s_right])
            good = sides.min(axis=0) >= min_support
            if not good.any():
                continue
            evidence = (s_top + s_bot) * span + (s_left + s_right) * height
            evidence = np.where(good, evidence, 0)
            k = int(np.argmax(evidence))
            if evidence[k] > best_score:
                best_score = float(evidence[k])
                best = (float(xl), float(top[k]), float(xr + 1), float(bottom[k] + 1))
    return best


def _is_bar(component: np.ndarray) -> bool:
    """A colour bar: a tall, narrow, solid strip (or a wide flat one lying on its side)."""
    rows = np.nonzero(component.any(axis=1))[0]
    cols = np.nonzero(component.any(axis=0))[0]
    bh, bw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    fill = component.sum() / float(bh * bw)
    long_, short = max(bh, bw), min(bh, bw)
    return long_ >= 40 and long_ >= 4 * short and fill > 0.85


def _is_flat(colours: np.ndarray) -> bool:
    """Icons are filled with one colour; flow follows a colour map of velocity or power, so its
    pixels spread over the map (anti-aliased text is not flat: it is told by the scan area).
    A saturated flow blob can be flat too, so an icon must also fill its bounding box."""
    if len(colours) < 30:  # a few flow pixels can share one colour; an icon is larger
        return False
    centre = np.median(colours, axis=0)
    return float(np.mean(np.abs(colours - centre).max(axis=1) <= 3)) >= 0.9


def colour_pixels(rgb: np.ndarray, *, min_chroma: int = 50, restrict_to_scan: bool = True):
    """Colour pixels that could be flow: in the scan area, not a colour bar, not one-colour
    text or an icon."""
    from .us_pixels import chroma, scan_area

    rgb = _as_rgb(rgb)
    mask = chroma(rgb) >= min_chroma
    if not mask.any():
        return mask
    if restrict_to_scan:  # text and icons in the screen margins; a bar touching the image
        mask &= scan_area(rgb)  # is dropped by its shape below
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        part = labels[sl] == i
        icon = part.mean() >= 0.75 and _is_flat(rgb[sl][part].astype(np.int16))
        if icon or _is_bar(part):
            mask[sl] &= ~part
    return mask


def find_colour_box(
    rgb: np.ndarray, *, min_chroma: int = 50, min_pixels: int = 3, pad: int = 4
) -> Box | None:
    """The Doppler colour box of a screen ``(x0, y0, x1, y1)``, or None when it has none.

    First its outline (the thin rectangle scanners draw); without one, the extent of the colour
    pixels inside the scan area (``pad`` px wider), bars removed. None means: no outline and no
    colour signal in the scan area - a grey-scale frame, or a colour box with no flow and no
    outline (nothing on the screen says where it is).
    """
    rgb = _as_rgb(rgb)
    box = _outline_box(rgb)
    if box is not None:
        return box
    mask = colour_pixels(rgb, min_chroma=min_chroma)
    if mask.sum() < min_pixels:
        return None
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask &= np.isin(labels, np.nonzero(sizes >= min_pixels)[0] + 1)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        float(max(0, xs.min() - pad)),
        float(max(0, ys.min() - pad)),
        float(min(w, xs.max() + 1 + pad)),
        float(min(h, ys.max() + 1 + pad)),
    )


# ------------------------------------------------------------------------ bone profile


@dataclass(frozen=True)
class BoneProfile:
    """What the bone surfaces say about where the joint is (image pixels)."""

    scan: Box  # the scan area's bounding box
    gap_x: float  # centre of the joint gap (where the bone signature breaks)
    gap_width: float  # width of that break
    bone_y: float  # the line joining the bone tops, at the gap
    found: bool  # False: no gap between two bone ends was seen (the centre is a guess)

    def features(self) -> np.ndarray:
        """The regressors of the ROI calibration: relative to the scan area."""
        x0, y0, x1, _ = self.scan
        w = x1 - x0  # one unit for both axes: the image's bottom is often lost in shadow
        # the gap's position is not a regressor: the box is placed relative to it (slope 1),
        # so it follows the joint wherever it lies on the screen
        return np.array([1.0, self.gap_width / w, (self.bone_y - y0) / w], np.float64)


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].astype(np.float32).mean(-1)
    if np.issubdtype(image.dtype, np.floating) and (image.size == 0 or image.max() <= 1.0):
        return image.astype(np.float32)  # already scaled to [0, 1]
    image = image.astype(np.float32)
    top = float(image.max()) if image.size else 0.0
    return image / (top if top > 255 else 255.0)


def scan_box(greyscale: np.ndarray, *, dark: int = 12) -> Box:
    """The image rectangle of a screen: the union of the large lit regions that share columns
    with the largest one, trimmed to the rows lit across a third of its width.

    The acoustic shadow under a bone can be black across the whole width and split the image
    into the tissue above it and the far field below; both are the image. A marker or text
    touching the image top is trimmed away by the row test.
    """
    g = _grey(greyscale)
    h, w = g.shape
    u8 = (g * 255).astype(np.uint8)
    lit = ndimage.binary_closing(u8 > dark, structure=np.ones((7, 7), bool))
    labels, n = ndimage.label(lit)
    if n == 0:
        return (0.0, 0.0, float(w), float(h))
    sizes = ndimage.sum_labels(lit, labels, index=np.arange(1, n + 1))
    main = int(np.argmax(sizes))
    if sizes[main] < 0.02 * lit.size:
        return (0.0, 0.0, float(w), float(h))
    slices = ndimage.find_objects(labels)
    mx = slices[main][1]
    keep = [
        sl
        for i, sl in enumerate(slices)
        if sizes[i] >= 0.2 * sizes[main]
        and min(sl[1].stop, mx.stop) - max(sl[1].start, mx.start) > 0.5 * (mx.stop - mx.start)
    ]
    x0, x1 = mx.start, mx.stop
    y0 = min(sl[0].start for sl in keep)
    y1 = max(sl[0].stop for sl in keep)
    rows = np.nonzero((u8[y0:y1, x0:x1] > dark).mean(axis=1) > 1 / 3)[0]
    if rows.size and rows[0] < y1 - y0 - 16:
        y0 += int(rows[0])
    return (float(x0), float(y0), float(x1), float(y1))


def bone_profile(greyscale: np.ndarray, *, shadow: float = 0.15) -> BoneProfile:
    """The bone line and the joint gap of a grey-scale scan (a screen or the bare image).

    Per column, the cortex is the depth that maximises brightness minus 1.5 x the mean of the
    ``shadow`` x scan height below it (a specular line over an acoustic shadow). The joint is
    the widest, deepest break of that signature flanked by bone on both sides.
    """
    g = _grey(greyscale)
    if g.ndim != 2 or min(g.shape) < 16:
        from .us_pixels import UltrasoundInputError

        raise UltrasoundInputError(f"a grey-scale scan must be 2-D and >= 16 px, got {g.shape}")
    x0, y0, x1, y1 = (int(v) for v in scan_box(g))
    # below the lit image the screen is black: a shadow to the end of the screen, so the
    # shadow window may reach past the image's (lit) bottom
    scan = ndimage.gaussian_filter(g[y0:, x0:x1], (1.5, 3))
    h, w = y1 - y0, x1 - x0
    depth = max(4, int(shadow * h))
    pad = np.zeros((max(0, h + depth + 4 - scan.shape[0]), w), np.float32)
    c = np.cumsum(np.vstack([np.zeros((1, w), np.float32), scan, pad]), axis=0)
    ys = np.arange(max(1, h - 4))
    below = (c[ys + 4 + depth] - c[ys + 4]) / depth
    score = scan[ys] - 1.5 * below
    strength = ndimage.median_filter(score.max(axis=0), size=max(3, w // 40) | 1)
    surface = score.argmax(axis=0).astype(np.float64)
    margin = max(2, int(0.04 * w))
    inner = slice(margin, w - margin)
    plateau = float(np.percentile(strength[inner], 80))
    deficit = np.zeros(w)
    if plateau > 0.05:
        deficit[inner] = np.clip(1 - strength[inner] / plateau, 0, 1)
    weak = deficit > 0.3
    bone = deficit < 0.15
    labels, n = ndimage.label(weak)
    best, best_mass = None, 0.0
    for i in range(1, n + 1):
        run = np.nonzero(labels == i)[0]
        left, right = bone[: run[0]], bone[run[-1] + 1 :]
        if left.sum() < 0.05 * w or right.sum() < 0.05 * w:
            continue  # a break must lie between two bone ends
        mass = float(deficit[run].sum())
        if mass > best_mass:
            best, best_mass = run, mass
    if best is None:
        cx, width, found = w / 2.0, 0.05 * w, False
    else:
        d = deficit[best]
        cx = float((best * d).sum() / d.sum())
        width, found = float(len(best)), True
    # the bone tops: the shallowest strong cortex on either side, within a shaft's length
    reach = 0.3 * w
    tops = []
    for side in (
        (np.arange(w) < cx - width / 2) & (np.arange(w) > cx - reach),
        (np.arange(w) > cx + width / 2) & (np.arange(w) < cx + reach),
    ):
        keep = side & bone
        if keep.any():
            tops.append(float(np.percentile(surface[keep], 20)))
    bone_y = float(np.mean(tops)) if tops else float(np.median(surface[inner]))
    return BoneProfile(
        scan=(float(x0), float(y0), float(x1), float(y1)),
        gap_x=x0 + cx,
        gap_width=width,
        bone_y=y0 + bone_y,
        found=found,
    )


# ------------------------------------------------------------------------ ROI proposal

# the targets of the calibration: box centre offset from the joint, and size (scan widths)
_TARGETS = ("cx - gap_x", "cy - bone_y", "w", "h")


def _targets(box: Sequence[float], prof: BoneProfile) -> np.ndarray:
    """The box relative to the joint: centre offset from the gap and the bone line, and size,
    in scan widths. Regressing the offset (not the centre) keeps the box on the joint when the
    gap is found far from where it usually is: a noisy gap would otherwise pull the centre's
    slope below 1 and the box back towards the middle of the screen."""
    sx0, _, sx1, _ = prof.scan
    sw = sx1 - sx0
    x0, y0, x1, y1 = box
    return np.array(
        [
            ((x0 + x1) / 2 - prof.gap_x) / sw,
            ((y0 + y1) / 2 - prof.bone_y) / sw,
            (x1 - x0) / sw,
            (y1 - y0) / sw,
        ]
    )


def fit_roi_calibration(
    items: Iterable[tuple[np.ndarray, Sequence[float], str | None]],
    *,
    shadow: float = 0.15,
    per_site: bool = True,
    ridge: float = 1e-3,
) -> dict[str, Any]:
    """Least-squares map from bone-profile features to the ROI, per site kind and overall.

    ``items``: (grey-scale, truth ROI, site). Returns a JSON-able dict
    ``{"profile": {"shadow": ...}, "features": [...], "targets": [...], "coef": {kind: 4 x 3}}``;
    without ``per_site``, or for a kind with fewer than 12 examples, ``"any"`` is used.
    """
    rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for grey, roi, site in items:  # a precomputed BoneProfile may stand for the image
        prof = grey if isinstance(grey, BoneProfile) else bone_profile(grey, shadow=shadow)
        pair = (prof.features(), _targets(roi, prof))
        rows.setdefault("any", []).append(pair)
        if per_site:
            rows.setdefault(_site_kind(site), []).append(pair)
    coef = {}
    for kind, pairs in rows.items():
        if kind != "any" and len(pairs) < 12:
            continue
        x = np.stack([p[0] for p in pairs])
        y = np.stack([p[1] for p in pairs])
        a = x.T @ x + ridge * np.eye(x.shape[1])
        coef[kind] = np.linalg.solve(a, x.T @ y).T.round(6).tolist()
    return {
        "profile": {"shadow": shadow},
        "features": ["1", "gap_width", "bone_y"],
        "targets": list(_TARGETS),
        "coef": coef,
    }


def _site_kind(site: str | None) -> str:
    """``L_mcp2`` -> ``mcp``; ``R_wrist`` -> ``wrist``; None -> ``any``."""
    if not site:
        return "any"
    name = str(site).split("_", 1)[-1].lower()
    for kind in ("mcp", "pip", "mtp", "wrist"):
        if name.startswith(kind):
            return kind
    return "any"


@lru_cache(maxsize=4)
def _cached_calibration(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_roi_calibration(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped calibration (``annotation_tools/roi_calibration.json``) or another file."""
    path = Path(path) if path is not None else CALIBRATION_FILE
    if not path.exists():
        raise FileNotFoundError(f"no ROI calibration at {path}")
    return _cached_calibration(str(path))


def propose_roi(
    greyscale: np.ndarray,
    site: str | None = None,
    *,
    calibration: dict[str, Any] | None = None,
    profile: BoneProfile | None = None,
) -> Box:
    """A proposed ROI ``(x0, y0, x1, y1)`` over the joint recess of a grey-scale scan.

    The bone profile gives the gap and the bone line; the calibration (per site kind when it
    has one, else ``"any"``) turns them into a box, clipped to the scan area. Always a box: when
    no gap is seen the box is centred on the scan (a proposal to correct, never a finding).
    """
    cal = calibration if calibration is not None else load_roi_calibration()
    prof = profile if profile is not None else bone_profile(greyscale, **cal.get("profile", {}))
    coef = cal["coef"].get(_site_kind(site)) or cal["coef"]["any"]
    cx, cy, bw, bh = np.asarray(coef) @ prof.features()
    sx0, sy0, sx1, sy1 = prof.scan
    sw = sx1 - sx0
    bw, bh = max(bw, 0.02) * sw, max(bh, 0.02) * sw
    cx, cy = prof.gap_x + cx * sw, prof.bone_y + cy * sw
    sy1 = max(sy1, float(np.asarray(greyscale).shape[0]))  # the far field may be black
    x0, x1 = max(sx0, cx - bw / 2), min(sx1, cx + bw / 2)
    y0, y1 = max(sy0, cy - bh / 2), min(sy1, cy + bh / 2)
    return (round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1))


def profile_dict(profile: BoneProfile) -> dict[str, Any]:
    return asdict(profile)
