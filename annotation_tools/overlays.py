"""Overlay pictures of predictions on a radiograph (PNG): what ``ra-joints predict`` writes
next to its JSON and what the demo report shows, drawn by one function."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .imageio import read_image
from .vocabulary import get_joint

__all__ = ["PRED_COLOUR", "TRUE_COLOUR", "radiograph_overlay"]

PRED_COLOUR, TRUE_COLOUR = "#00d0ff", "#ff3030"


def radiograph_overlay(
    image_path: str | Path,
    out: str | Path,
    *,
    centres: Mapping[str, Sequence[float]],
    joints: Mapping[str, Mapping[str, Any]] | None = None,
    truth: Mapping[str, Any] | None = None,
    title: str = "",
    labels: bool = False,
) -> Path:
    """Predicted centres (cyan dots) and joint-space outlines; with ``truth`` (``centres``,
    ``polygons``) the true ones in red; with ``labels`` each joint's name and scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = read_image(image_path).grey()
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    h, w = pixels.shape
    side = 7.0 if labels else 4.2
    fig, ax = plt.subplots(figsize=(side, side * h / w))
    ax.imshow(pixels, cmap="gray", vmin=lo, vmax=hi)
    for vertices in (truth or {}).get("polygons", {}).values():
        v = np.asarray([*vertices, vertices[0]])
        ax.plot(v[:, 0], v[:, 1], color=TRUE_COLOUR, lw=0.6)
    for joint in (joints or {}).values():
        if joint.get("polygon"):
            v = np.asarray([*joint["polygon"], joint["polygon"][0]])
            ax.plot(v[:, 0], v[:, 1], color=PRED_COLOUR, lw=0.6)
    if truth and truth.get("centres"):
        t = np.array(list(truth["centres"].values()))
        ax.scatter(t[:, 0], t[:, 1], s=14, facecolors="none", edgecolors=TRUE_COLOUR, lw=0.8)
    if centres:
        p = np.array([centres[k] for k in centres])
        ax.scatter(p[:, 0], p[:, 1], s=5, c=PRED_COLOUR)
        if labels:
            for joint_id, (x, y) in centres.items():
                text = get_joint(joint_id).name
                scores = (joints or {}).get(joint_id, {})
                for key, letter in (("narrowing", "N"), ("erosion", "E")):
                    if scores.get(key) is not None:
                        text += f" {letter}{scores[key]:.1f}"
                ax.annotate(
                    text,
                    (x, y),
                    color="yellow",
                    fontsize=3,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110 if labels else 90, bbox_inches="tight")
    plt.close(fig)
    return out
