"""The one place for (x, y) <-> (row, column) and for how each kind of layer looks.

annotation_tools records points as ``(x, y)`` image pixels (x = column); napari layers hold
``(row, column)``. Every conversion in the plugin goes through :func:`to_layer` and
:func:`from_layer` (and their box forms), and every layer style lives here, so that the reader,
the sample data, the dock and the writers cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from annotation_tools.imageio import ImageData
from annotation_tools.vocabulary import get_joint

__all__ = [
    "CENTRE_STYLE",
    "HEATMAP_STYLE",
    "LABEL_TEXT",
    "LOW_CONFIDENCE",
    "OUTLINE_STYLE",
    "PROPOSAL_STYLE",
    "PROPOSED_OUTLINE_STYLE",
    "PROPOSED_ROI_STYLE",
    "ROI_STYLE",
    "SOURCE_COLOURS",
    "box_from_layer",
    "box_to_layer",
    "centres_layer_data",
    "from_layer",
    "grade_set_face",
    "grade_sets_text",
    "image_layer_data",
    "point_tooltip",
    "polygons_layer_data",
    "short_label",
    "source_colour",
    "to_layer",
]

LOW_CONFIDENCE = 0.5  # model points below this are shown in the "low" colour
SOURCE_COLOURS = {"human": "red", "phantom": "red", "model": "cyan", "low": "orange"}
CENTRE_STYLE: dict[str, Any] = {"face_color": "transparent", "border_color": "red"}
# a proposal is a different shape and colour from a committed point, so nobody mistakes one
PROPOSAL_STYLE: dict[str, Any] = {
    "face_color": "transparent",
    "border_color": SOURCE_COLOURS["model"],
    "symbol": "diamond",
}
# short labels (MCP2, CMC3, nav) set above the point: the wrist's long names overlapped
LABEL_TEXT: dict[str, Any] = {"string": "{label}", "size": 7, "translation": [-10, 0]}
OUTLINE_STYLE: dict[str, Any] = {
    "shape_type": "polygon",
    "edge_color": "lime",
    "face_color": [0, 1, 0, 0.15],
    "edge_width": 1,
}
PROPOSED_OUTLINE_STYLE: dict[str, Any] = {  # a proposed outline: the model's colour, unfilled
    "shape_type": "polygon",
    "edge_color": SOURCE_COLOURS["model"],
    "face_color": "transparent",
    "edge_width": 1,
}
ROI_STYLE: dict[str, Any] = {"edge_color": "yellow", "face_color": "transparent", "edge_width": 2}
# a proposed ROI (found from the bone profile, or a model revision): the model's colour and a
# thinner line, until a person accepts or edits it
PROPOSED_ROI_STYLE: dict[str, Any] = {
    "edge_color": SOURCE_COLOURS["model"],
    "face_color": "transparent",
    "edge_width": 1,
}
HEATMAP_STYLE: dict[str, Any] = {"colormap": "yellow", "blending": "additive", "opacity": 0.6}


def to_layer(points_xy: Any) -> np.ndarray:
    """``(x, y)`` image points -> napari ``(row, column)``, shape ``(n, 2)``."""
    return np.asarray(points_xy, dtype=float).reshape(-1, 2)[:, ::-1].copy()


def from_layer(points_rc: Any) -> np.ndarray:
    """napari ``(row, column)`` (the last two axes of each point) -> ``(x, y)`` image points."""
    pts = np.asarray(points_rc, dtype=float)
    pts = pts.reshape(-1, pts.shape[-1])[:, -2:]
    return pts[:, ::-1].copy()


def box_to_layer(box: Sequence[float]) -> np.ndarray:
    """An ``(x0, y0, x1, y1)`` box -> the two ``(row, column)`` corners napari takes."""
    x0, y0, x1, y1 = box
    return to_layer([(x0, y0), (x1, y1)])


def box_from_layer(corners: Any) -> tuple[float, float, float, float]:
    """A rectangle's ``(row, column)`` corners -> an ``(x0, y0, x1, y1)`` box."""
    xy = from_layer(corners)
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def source_colour(source: str, confidence: float | None = None) -> str:
    """Who made a point, as its border colour (a doubtful model point stands out)."""
    if source == "model" and confidence is not None and confidence < LOW_CONFIDENCE:
        return SOURCE_COLOURS["low"]
    return SOURCE_COLOURS.get(source, "red")


def short_label(joint: Any) -> str:
    """``MCP2``, ``PIP3``, ``IP``, ``CMC3``, ``nav``: short enough that neighbours do not
    overlap; the full name is in the tooltip and the guide."""
    site = joint.id.split("_", 1)[1].removeprefix("wrist_")
    kind, _, number = site.partition("_")
    if number:
        return f"{kind.upper()}{number}"
    if kind[-1].isdigit():
        return kind.upper()
    return kind.upper() if kind in ("ip",) else kind


def point_tooltip(joint: Any, source: str, confidence: float | None, grade_sets: str = "") -> str:
    """What hovering a point tells: the joint, who placed it, how sure the model was, and
    the conformal sets of the model's grades (which grades it cannot rule out)."""
    text = f"{joint.name} ({joint.id}) - {source}"
    if confidence is not None and confidence == confidence:
        flag = "  LOW CONFIDENCE" if confidence < LOW_CONFIDENCE else ""
        text += f", confidence {confidence:.2f}{flag}"
    return text + (f"\n{grade_sets}" if grade_sets else "")


# A point's fill says how wide the model's grade sets are (its border says who placed it):
# none for a single grade or a person's grade, yellow for two grades, orange for three or more.
GRADE_SET_FACES: dict[int, list[float]] = {
    0: [0.0, 0.0, 0.0, 0.0],
    1: [1.0, 0.85, 0.0, 0.45],
    2: [1.0, 0.45, 0.0, 0.6],
}


def grade_set_face(width: int | None) -> list[float]:
    """Fill colour of a joint whose widest conformal grade set spans ``width + 1`` grades."""
    if width is None or width != width:  # no set (a person's grade) or NaN from a frame
        return GRADE_SET_FACES[0]
    return GRADE_SET_FACES[min(int(width), 2)]


def grade_sets_text(revisions: Mapping[str, Any]) -> tuple[str, int | None]:
    """``score type -> newest score revision`` of one joint -> the tooltip line of its model
    grade sets (``90 % sets: narrowing 1-3, erosion 0``) and the widest set's width."""
    parts, widths, coverage = [], [], None
    for score_type, rev in revisions.items():
        if rev is None or rev.value.get("set_low") is None:
            continue
        low, high = int(rev.value["set_low"]), int(rev.value["set_high"])
        coverage = rev.value.get("coverage")
        widths.append(high - low)
        parts.append(f"{score_type} {low}" if low == high else f"{score_type} {low}-{high}")
    if not parts:
        return "", None
    level = f"{coverage:.0%} " if coverage else ""
    return f"model grade sets ({level}coverage): {', '.join(parts)}", max(widths)


def image_layer_data(image: ImageData, name: str | None = None) -> tuple[Any, dict, str]:
    """An Image layer tuple that shows a radiograph or ultrasound frame the right way."""
    meta = {
        "path": str(image.path),
        "format": image.format,
        "photometric": image.photometric,
        "laterality": image.laterality,
        "body_part": image.body_part,
        "patient_id": image.patient_id,
        "spacing_mm": image.spacing,
    }
    kwargs: dict[str, Any] = {"name": name or image.path.stem, "metadata": meta}
    if image.is_colour:
        kwargs["rgb"] = True
    else:
        lo, hi = np.percentile(image.pixels, (0.5, 99.5))
        kwargs.update(colormap="gray", contrast_limits=(float(lo), float(max(hi, lo + 1))))
    return image.pixels, kwargs, "image"


def centres_layer_data(
    centres: Mapping[str, Sequence[float]],
    *,
    name: str = "joint centres",
    source: str | Mapping[str, str] = "phantom",
) -> tuple[Any, dict, str]:
    """A Points layer tuple of named joint centres; features carry id, name and source (one for
    all points, or one per joint id)."""
    ids = list(centres)
    features = {
        "joint_id": ids,
        "name": [get_joint(j).name for j in ids],
        "source": [source if isinstance(source, str) else source[j] for j in ids],
    }
    kwargs = {
        "name": name,
        "features": features,
        "text": {"string": "{name}", "size": 8, "color": "yellow", "translation": [-8, 0]},
        "size": 10,
        **CENTRE_STYLE,
    }
    return to_layer([centres[j] for j in ids]), kwargs, "points"


def polygons_layer_data(
    polygons: Mapping[str, Sequence[Sequence[float]]], *, name: str = "joint spaces"
) -> tuple[Any, dict, str]:
    """A Shapes layer tuple with one polygon per joint (vertices given as ``(x, y)``)."""
    ids = list(polygons)
    kwargs = {"name": name, "features": {"joint_id": ids}, **OUTLINE_STYLE}
    return [to_layer(polygons[j]) for j in ids], kwargs, "shapes"
