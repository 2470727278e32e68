"""A small reference diagram of the hand or foot with its joints, for picking a joint.

The layout is the mean joint configuration of the locator bundle's shape prior (learned from
annotated radiographs, left limbs; right limbs are its mirror image), so the diagram matches
what the locator expects to see. Clicking a joint picks it, as the joint list does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

from annotation_tools.vocabulary import Limb, joints_for_limb

from .._layers import SOURCE_COLOURS

STATE_FILL = {
    "placed": QColor("red"),
    "proposed": QColor(SOURCE_COLOURS["model"]),
    "not visible": QColor("gray"),
    "open": QColor(0, 0, 0, 0),
}


@cache
def _mean_layouts() -> dict[str, np.ndarray]:
    """Kind (hand / foot) -> mean (x, y) of its joints, guided order; empty without a prior."""
    from annotation_tools.bundles import BundleNotFound, bundle_for
    from annotation_tools.locator import shape_prior_path
    from annotation_tools.shape_prior import load_shape_priors

    try:
        priors = load_shape_priors(shape_prior_path(bundle_for("locator").weights_path))
    except (BundleNotFound, ValueError, OSError):
        return {}
    return {kind: np.asarray(prior.mean, dtype=float) for kind, prior in priors.items()}


def layout(limb: str) -> dict[str, tuple[float, float]]:
    """Joint id -> (x, y) of the reference diagram of ``limb`` (mirrored for a right limb)."""
    parsed = Limb.parse(limb)
    mean = _mean_layouts().get(parsed.kind)
    joints = joints_for_limb(limb)
    if mean is None or len(mean) != len(joints):
        return {}
    sign = -1.0 if parsed.side == "right" else 1.0
    return {j.id: (sign * float(x), float(y)) for j, (x, y) in zip(joints, mean, strict=True)}


class JointDiagram(QWidget):
    """Dots where the joints are; the guided joint ringed; a click picks a joint."""

    def __init__(self, on_pick: Callable[[str], None]):
        super().__init__()
        self.on_pick = on_pick
        self.points: dict[str, tuple[float, float]] = {}
        self.states: Mapping[str, str] = {}
        self.current: str | None = None
        self.setMinimumSize(150, 150)
        self.setMaximumHeight(190)
        self.setToolTip("Joints of this limb: click one to place it next")

    def show_limb(self, limb: str | None, states: Mapping[str, str], current: str | None) -> None:
        self.points = layout(limb) if limb else {}
        self.states, self.current = states, current
        self.setVisible(bool(self.points))
        self.update()

    def _screen(self) -> dict[str, QPointF]:
        if not self.points:
            return {}
        xy = np.array(list(self.points.values()))
        lo, hi = xy.min(0), xy.max(0)
        margin = 12.0
        scale = min(
            (self.width() - 2 * margin) / max(hi[0] - lo[0], 1e-6),
            (self.height() - 2 * margin) / max(hi[1] - lo[1], 1e-6),
        )
        offset = (np.array([self.width(), self.height()]) - (hi - lo) * scale) / 2
        return {j: QPointF(*((np.array(p) - lo) * scale + offset)) for j, p in self.points.items()}

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        for joint_id, point in self._screen().items():
            state = self.states.get(joint_id, "open")
            painter.setBrush(STATE_FILL.get(state, STATE_FILL["open"]))
            painter.setPen(QPen(QColor("white"), 1))
            painter.drawEllipse(point, 4, 4)
            if joint_id == self.current:
                painter.setBrush(Qt.NoBrush)
                painter.setPen(QPen(QColor("yellow"), 2))
                painter.drawEllipse(point, 8, 8)
        painter.end()

    def joint_at(self, x: float, y: float) -> str | None:
        """The joint nearest a click (within 12 px)."""
        best, best_d = None, 12.0
        for joint_id, point in self._screen().items():
            d = float(np.hypot(point.x() - x, point.y() - y))
            if d < best_d:
                best, best_d = joint_id, d
        return best

    def mousePressEvent(self, event: object) -> None:
        pos = event.pos()  # type: ignore[attr-defined]
        joint_id = self.joint_at(pos.x(), pos.y())
        if joint_id is not None:
            self.on_pick(joint_id)
