"""Pixel facts of ultrasound screens that both the Doppler segmentation
(:mod:`annotation_tools.ultrasound`) and the automatic colour box and ROI
(:mod:`annotation_tools.us_roi`) build on: colour strength, the scan area, 8-bit pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["UltrasoundInputError", "chroma", "scan_area", "to_uint8"]


class UltrasoundInputError(ValueError):
    """A grey-scale/Doppler pair or its ROI cannot be used; the message says why."""


def chroma(rgb: np.ndarray) -> np.ndarray:
    """max - min over the colour channels: 0 for grey, large for Doppler colours."""
    rgb = rgb.astype(np.int16)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)).astype(np.int16)


def scan_area(rgb: np.ndarray, *, dark: int = 12, close: int = 7) -> np.ndarray:
    """The image sector of a screenshot: the largest connected non-black region, holes filled."""
    grey = rgb.max(axis=-1) if rgb.ndim == 3 else rgb
    lit = grey > dark
    lit = ndimage.binary_closing(lit, structure=np.ones((close, close)), iterations=1)
    labels, n = ndimage.label(lit)
    if n == 0:
        return np.zeros(lit.shape, bool)
    sizes = ndimage.sum_labels(lit, labels, index=np.arange(1, n + 1))
    area = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(area)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Screenshots are 8-bit; a 16-bit DICOM export of one is rescaled, never wrapped."""
    if pixels.dtype == np.uint8:
        return pixels
    values = pixels.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if top > 255:
        values = values * (255.0 / top)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
