"""npe2 writer: a joint-centre Points layer as 3D Slicer Markups JSON (``.mrk.json``).

The store stays the place annotations live (the dock saves every edit there); this writer is
for handing points to Slicer or another tool. It uses :mod:`annotation_tools.slicer`, the same
code as ``ra-joints markups``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotation_tools.slicer import write_markups


def write_joint_markups(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Points with a ``joint_id`` feature -> Markups JSON in image pixels (x, y)."""
    features = meta.get("features")
    ids = list(features["joint_id"]) if features is not None and "joint_id" in features else []
    if len(ids) != len(data):
        raise ValueError(
            "this Points layer has no joint_id for every point; only joint-centre layers "
            "(from the RA joints dock, the reader's sample data or a prediction) can be saved"
        )
    centres = {str(j): (float(yx[-1]), float(yx[-2])) for j, yx in zip(ids, data, strict=True)}
    target = Path(path)
    if not target.name.endswith(".mrk.json"):
        target = target.with_name(target.name.split(".")[0] + ".mrk.json")
    return [str(write_markups(target, centres, name=str(meta.get("name", "joint centres"))))]
