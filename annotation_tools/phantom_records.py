"""What a phantom renderer returns, whatever its style: one radiograph or one ultrasound pair
with its ground truth. Kept apart from the renderers so that each style's module can build
them without importing another style's."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .vocabulary import Limb

__all__ = ["LimbPhantom", "UltrasoundPhantom"]


@dataclass
class LimbPhantom:
    """One rendered radiograph and its ground truth (pixel coordinates, (x, y))."""

    limb: Limb
    image: np.ndarray  # uint16, 12-bit, display orientation
    centres: dict[str, tuple[float, float]]
    polygons: dict[str, list[tuple[float, float]]]
    axes: dict[str, tuple[float, float]]  # joint axis (unit vector) of two-bone sites
    gap_widths: dict[str, float]  # rendered joint-space width in pixels (negative = overlap)
    bone_radius: dict[str, float]  # radius in pixels of the bone ends at each site
    grades: dict[str, dict[str, int]]
    spacing_mm: float
    bites: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


@dataclass
class UltrasoundPhantom:
    """A grey-scale/Doppler screenshot pair of one joint with its EULAR-OMERACT grades."""

    site: str
    greyscale: np.ndarray  # uint8 (H, W)
    doppler: np.ndarray  # uint8 (H, W, 3)
    roi: tuple[float, float, float, float]  # x0, y0, x1, y1 (same on both images)
    colour_box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the Doppler colour box
    synovial_hypertrophy: int
    vascularity: int
    flow_mask: np.ndarray  # bool (H, W): where the rendered Doppler signal is
    synovium_mask: np.ndarray | None = None  # bool (H, W) on the screen, when kept

    def screen_mask(self, name: str) -> np.ndarray:
        """A ground-truth mask on the screen's pixels (``synovium``, ``effusion``,
        ``synovial_flow``: the vessel signal that sets the Doppler grade), to be cut with
        ``roi`` like the images. The schematic style draws its flow inside the synovium only
        and no effusion."""
        empty = np.zeros(self.greyscale.shape[:2], bool)
        masks = {
            "synovium": empty if self.synovium_mask is None else self.synovium_mask,
            "effusion": empty,
            "synovial_flow": self.flow_mask,
        }
        if name not in masks:
            raise ValueError(f"no mask {name!r}; choose one of {sorted(masks)}")
        return masks[name]

    @property
    def combined(self) -> int:
        return max(self.synovial_hypertrophy, self.vascularity)
