"""npe2 writers: a joint-centre Points layer as 3D Slicer Markups JSON (``.mrk.json``), and the
layers of an image open in the RA joints dock as the store's per-image JSON.

The store stays the place annotations live (the dock saves every edit there); these writers are
for handing annotations to Slicer, another project or another tool. They use
:mod:`annotation_tools.slicer` and :meth:`AnnotationStore.export_image_json`, the same code as
``ra-joints markups`` and ``ra-joints image-json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotation_tools.slicer import write_markups

from ._layers import from_layer


def write_joint_markups(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Points with a ``joint_id`` feature -> Markups JSON in image pixels (x, y)."""
    features = meta.get("features")
    ids = list(features["joint_id"]) if features is not None and "joint_id" in features else []
    if len(ids) != len(data):
        raise ValueError(
            "this Points layer has no joint_id for every point; only joint-centre layers "
            "(from the RA joints dock, the reader's sample data or a prediction) can be saved"
        )
    centres = {
        str(j): (float(x), float(y)) for j, (x, y) in zip(ids, from_layer(data), strict=True)
    }
    target = Path(path)
    if not target.name.endswith(".mrk.json"):
        target = target.with_name(target.name.split(".")[0] + ".mrk.json")
    return [str(write_markups(target, centres, name=str(meta.get("name", "joint centres"))))]


def write_image_annotations(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Points/Shapes layers of an image (or the ROI layers of an ultrasound pair) opened from
    a project -> the store's image JSON (every annotation with its provenance and revision; a
    pair's boxes and grades, a model's with its grade sets), readable by
    ``ra-joints image-json --import`` or :meth:`AnnotationStore.import_image_json`."""
    import json

    from annotation_tools.store import AnnotationStore

    sources = {
        (meta.get("metadata") or {}).get("ra_joints_project"): (meta.get("metadata") or {}).get(
            "image_id"
        )
        for _, meta, _ in layer_data
    }
    sources.pop(None, None)
    if len(sources) != 1:
        raise ValueError(
            "save the joint-centre and joint-space layers of one image (or the ROI layers of "
            "one ultrasound pair) opened in the RA joints dock (they know their project); "
            "other Points layers can be saved as .mrk.json"
        )
    ((project, image_id),) = sources.items()
    with AnnotationStore.open(project, create=False) as store:
        document = store.export_image_json(int(image_id))
    target = Path(path)
    if target.suffix != ".json":
        target = target.with_suffix(".json")
    target.write_text(json.dumps(document, indent=1))
    return [str(target)]
