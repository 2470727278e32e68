"""Ultrasound inputs of the RATING design: ROI crops, Doppler signal mask, transformed Doppler.

ROI boxes use slice semantics: ``(x0, y0, x1, y1)`` with ``(x0, y0)`` the top-left corner of the
first pixel, so an integer box crops exactly ``image[y0:y1, x0:x1]``.

The Doppler mask must hold up on scanner screenshots: colour pixels are those with a large
chroma (max - min over RGB), and only inside the scan area (the largest connected region of
non-black screen), so colour bars, coloured text and icons in the screen margins are ignored.
Giving the colour box (or the ROI) as ``region`` restricts it further; with no region the
colour box is found on the screen (:func:`annotation_tools.us_roi.find_colour_box`), so a bar
or icon that touches the scan area is not counted as flow either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .us_pixels import UltrasoundInputError, chroma, scan_area, to_uint8

__all__ = [
    "RATING_SIZE",
    "PreparedPair",
    "UltrasoundInputError",
    "check_pair",
    "crop_roi",
    "doppler_mask",
    "prepare_pair",
    "scan_area",
    "transformed_doppler",
]

RATING_SIZE = 224
SIGNAL_COLOUR = (255, 0, 0)


def _box(box: Sequence[float], shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise UltrasoundInputError(f"an ROI box needs 4 numbers (x0, y0, x1, y1), got {box}")
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise UltrasoundInputError(f"ROI box {box} has zero area")
    h, w = shape[:2]
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise UltrasoundInputError(f"ROI box {box} lies outside the {w}x{h} image")
    return x0, y0, x1, y1


def crop_roi(image: np.ndarray, box: Sequence[float], size: int = RATING_SIZE) -> np.ndarray:
    """Resample the ROI to ``size`` x ``size`` (bilinear; nearest for bool masks)."""
    x0, y0, x1, y1 = _box(box, image.shape)
    u = np.arange(size, dtype=np.float64)
    xs = x0 + (u + 0.5) * (x1 - x0) / size - 0.5
    ys = y0 + (u + 0.5) * (y1 - y0) / size - 0.5
    rows, cols = np.meshgrid(ys, xs, indexing="ij")
    order = 0 if image.dtype == bool else 1
    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    out = [
        ndimage.map_coordinates(c.astype(np.float32), [rows, cols], order=order, mode="nearest")
        for c in channels
    ]
    stacked = out[0] if image.ndim == 2 else np.stack(out, axis=-1)
    if image.dtype == bool:
        return stacked > 0.5
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(stacked), info.min, info.max).astype(image.dtype)
    return stacked.astype(image.dtype)


def doppler_mask(
    rgb: np.ndarray,
    region: Sequence[float] | None = None,
    *,
    min_chroma: int = 50,
    min_pixels: int = 3,
    restrict_to_scan: bool = True,
) -> np.ndarray:
    """Boolean mask of Doppler colour signal in an RGB screenshot.

    ``region`` is the colour box or ROI ``(x0, y0, x1, y1)``; outside it nothing counts.
    Without one the colour box is found on the screen (its outline, else the extent of the
    colour pixels in the scan area with colour bars removed); a screen with neither has no
    Doppler signal and gives an all-False mask. Specks smaller than ``min_pixels`` are dropped
    (JPEG colour noise).
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise UltrasoundInputError(f"a Doppler image must be RGB, got shape {rgb.shape}")
    mask = chroma(rgb[..., :3]) >= min_chroma
    if restrict_to_scan:
        mask &= scan_area(rgb[..., :3])
    if region is None and mask.any():
        from .us_roi import colour_pixels, find_colour_box

        found = find_colour_box(rgb, min_chroma=min_chroma)
        if found is None:
            return np.zeros(mask.shape, bool)
        # inside the outline: a coloured (yellow, green) outline is not flow
        region = (found[0] + 1, found[1] + 1, found[2] - 1, found[3] - 1)
        mask &= colour_pixels(rgb, min_chroma=min_chroma, restrict_to_scan=restrict_to_scan)
    if region is not None:
        x0, y0, x1, y1 = _box(region, rgb.shape)
        keep = np.zeros_like(mask)
        keep[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
        mask &= keep
    if min_pixels > 1 and mask.any():
        labels, n = ndimage.label(mask)
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        small = np.isin(labels, np.nonzero(sizes < min_pixels)[0] + 1)
        mask &= ~small
    return mask


def transformed_doppler(
    rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int] = SIGNAL_COLOUR
) -> np.ndarray:
    """RATING's transformed Doppler: grey-scale background, every signal pixel one colour.

    It removes scanner-specific colour maps (red-yellow vs blue-red), so the network sees
    only where the flow is.
    """
    rgb = rgb[..., :3].astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    # under signal pixels the grey-scale is unknown: fill from the neighbourhood's median
    if mask.any():
        filled = ndimage.median_filter(np.where(mask, np.nan, grey), size=5, mode="nearest")
        grey = np.where(mask, np.nan_to_num(filled, nan=float(np.median(grey))), grey)
    out = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    out[mask] = np.asarray(colour, np.uint8)
    return out


def check_pair(greyscale: np.ndarray, doppler: np.ndarray, *, min_chroma: int = 50) -> list[str]:
    """Problems that make a grey-scale/Doppler pair unusable (empty list when fine)."""
    problems = []
    if doppler.ndim != 3:
        problems.append(
            "the Doppler image is grey-scale (no colour channels): was the "
            "grey-scale image given as Doppler?"
        )
    elif not (chroma(doppler[..., :3]) >= min_chroma).any():
        problems.append("the Doppler image has no colour pixels at all (no colour box?)")
    if greyscale.shape[:2] != doppler.shape[:2]:
        problems.append(
            f"grey-scale {greyscale.shape[1]}x{greyscale.shape[0]} and Doppler "
            f"{doppler.shape[1]}x{doppler.shape[0]} images differ in size"
        )
    return problems


@dataclass
class PreparedPair:
    """The RATING inputs of one pair: ROI crops resampled to ``size`` x ``size``."""

    greyscale: np.ndarray  # uint8 (S, S)
    doppler: np.ndarray  # uint8 (S, S, 3) as on screen
    doppler_mask: np.ndarray  # bool (S, S)
    doppler_transformed: np.ndarray  # uint8 (S, S, 3)

    def network_input(self) -> np.ndarray:
        """(4, S, S) uint8: grey-scale, then the transformed Doppler's RGB channels."""
        return np.concatenate(
            [self.greyscale[None], np.moveaxis(self.doppler_transformed, -1, 0)], axis=0
        )


def prepare_pair(
    greyscale: np.ndarray,
    doppler: np.ndarray,
    roi: Sequence[float] | None,
    doppler_roi: Sequence[float] | None = None,
    size: int = RATING_SIZE,
    *,
    site: str | None = None,
) -> PreparedPair:
    """Check a pair and cut out its RATING inputs; raises :class:`UltrasoundInputError` with
    every problem found (grey-scale as Doppler, no colour, sizes differ, bad ROI).

    ``roi=None`` takes the proposed ROI over the joint recess
    (:func:`annotation_tools.us_roi.propose_roi`, with ``site`` when known). Export and
    inference both go through here, so a model sees the same crops it learnt from.
    """
    problems = check_pair(greyscale, doppler)
    if problems:
        raise UltrasoundInputError("; ".join(problems))
    if greyscale.ndim == 3:  # an RGB screenshot of a grey-scale scan
        greyscale = np.rint(greyscale[..., :3].astype(np.float32).mean(-1)).astype(np.uint8)
    greyscale = to_uint8(greyscale)
    dop_rgb = to_uint8(doppler[..., :3])
    if roi is None:
        from .us_roi import propose_roi

        roi = propose_roi(greyscale, site)
    dop_box = roi if doppler_roi is None else doppler_roi
    grey_crop = crop_roi(greyscale, roi, size)
    mask_crop = crop_roi(doppler_mask(dop_rgb, dop_box), dop_box, size)
    dop_crop = crop_roi(dop_rgb, dop_box, size)
    return PreparedPair(grey_crop, dop_crop, mask_crop, transformed_doppler(dop_crop, mask_crop))
