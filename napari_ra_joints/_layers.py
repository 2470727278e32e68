"""Conversions between annotation_tools' (x, y) records and napari's (row, column) layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from annotation_tools.imageio import ImageData
from annotation_tools.vocabulary import get_joint


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
    coords = np.array([[centres[j][1], centres[j][0]] for j in ids], float).reshape(-1, 2)
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
        "face_color": "transparent",
        "border_color": "red",
    }
    return coords, kwargs, "points"


def polygons_layer_data(
    polygons: Mapping[str, Sequence[Sequence[float]]], *, name: str = "joint spaces"
) -> tuple[Any, dict, str]:
    """A Shapes layer tuple with one polygon per joint, vertices as (row, column)."""
    ids = list(polygons)
    shapes = [np.array([[y, x] for x, y in polygons[j]], float) for j in ids]
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "features": {"joint_id": ids},
        "edge_color": "lime",
        "face_color": [0, 1, 0, 0.15],
        "edge_width": 1,
    }
    return shapes, kwargs, "shapes"
