"""Sample data: phantoms with their ground truth as overlay layers, generated on the fly."""

from __future__ import annotations

from typing import Any

import numpy as np

from annotation_tools.phantoms import render_limb, render_ultrasound, sample_patient_scores

from ._layers import ROI_STYLE, centres_layer_data, polygons_layer_data, to_layer

LayerData = tuple[Any, dict, str]
_SEED = 2024
_HEIGHT = 900


def _radiograph(limb: str) -> list[LayerData]:
    rng = np.random.default_rng(_SEED)
    grades = sample_patient_scores(rng)
    phantom = render_limb(limb, grades, rng, height=_HEIGHT)
    image = (
        phantom.image,
        {
            "name": f"phantom {limb}",
            "colormap": "gray",
            "contrast_limits": (0, 4095),
            "metadata": {"phantom": True, "limb": limb, "grades": phantom.grades},
        },
        "image",
    )
    return [
        image,
        polygons_layer_data(phantom.polygons, name=f"joint spaces {limb}"),
        centres_layer_data(phantom.centres, name=f"joint centres {limb}"),
    ]


def phantom_hand() -> list[LayerData]:
    return _radiograph("LH")


def phantom_foot() -> list[LayerData]:
    return _radiograph("RF")


def phantom_ultrasound() -> list[LayerData]:
    pair = render_ultrasound("R_mcp_2", 2, 2, np.random.default_rng(_SEED))
    x0, y0, x1, y1 = pair.roi
    box = to_layer([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    offset = (0, pair.greyscale.shape[1] + 20)  # side by side
    meta = {"phantom": True, "synovial_hypertrophy": 2, "vascularity": 2}
    return [
        (
            pair.greyscale,
            {"name": "ultrasound grey-scale", "colormap": "gray", "metadata": meta},
            "image",
        ),
        (
            pair.doppler,
            {"name": "ultrasound Doppler", "rgb": True, "translate": offset, "metadata": meta},
            "image",
        ),
        (
            [box, box + np.array(offset)],
            {"name": "ROI", "shape_type": "rectangle", **ROI_STYLE},
            "shapes",
        ),
    ]
