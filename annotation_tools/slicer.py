"""3D Slicer interchange: joint centres as Markups JSON, joint spaces as a ``.seg.nrrd``.

Sites that annotate in Slicer and sites that annotate in napari can then share work. Slicer
places a 2D image at ``position = origin + index * spacing`` in LPS millimetres (column along
L, row along P); the same mapping is used here both ways, so a round trip is exact.
Segmentations are written with ``slicerio`` (maintained by the Slicer developers).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .store import TRAINING_SOURCES, AnnotationStore, Provenance
from .vocabulary import get_joint

__all__ = [
    "MARKUPS_SCHEMA",
    "export_store_markups",
    "import_store_markups",
    "read_markups",
    "read_segmentation_masks",
    "write_markups",
    "write_polygon_segmentation",
]

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
_MISSING_STATUS = ("undefined", "missing")


def _geometry(spacing: Sequence[float] | None, origin: Sequence[float] | None):
    sy, sx = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    ox, oy = (float(origin[0]), float(origin[1])) if origin else (0.0, 0.0)
    if sx <= 0 or sy <= 0:
        raise ValueError(f"pixel spacing must be positive, got {spacing}")
    return sx, sy, ox, oy


def centres_to_markups(
    centres: Mapping[str, Sequence[float] | None],
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    name: str = "joint centres",
) -> dict[str, Any]:
    """A Markups JSON document: one control point per joint, labelled with the joint id.

    A ``None`` centre ("not visible") becomes a control point with ``positionStatus``
    ``"undefined"``, which Slicer shows as a point still to place.
    """
    sx, sy, ox, oy = _geometry(spacing, origin)
    points = []
    for k, (joint_id, xy) in enumerate(centres.items(), start=1):
        joint = get_joint(joint_id)
        point = {
            "id": str(k),
            "label": joint_id,
            "description": joint.label,
            "associatedNodeID": "",
            "position": [0.0, 0.0, 0.0],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": xy is not None,
            "positionStatus": "undefined" if xy is None else "defined",
        }
        if xy is not None:
            point["position"] = [ox + float(xy[0]) * sx, oy + float(xy[1]) * sy, 0.0]
        points.append(point)
    return {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "labelFormat": "%N-%d",
                "name": name,
                "controlPoints": points,
                "measurements": [],
            }
        ],
    }


def markups_to_centres(
    document: Mapping[str, Any],
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
) -> tuple[dict[str, tuple[float, float] | None], list[str]]:
    """Joint id -> ``(x, y)`` (or None for an unplaced point), plus the problems found."""
    sx, sy, ox, oy = _geometry(spacing, origin)
    centres: dict[str, tuple[float, float] | None] = {}
    problems = []
    markups = document.get("markups")
    if not isinstance(markups, list) or not markups:
        raise ValueError("not a Slicer Markups JSON document (no 'markups' list)")
    for markup in markups:
        if markup.get("coordinateSystem", "LPS") not in ("LPS", "RAS"):
            raise ValueError(f"unsupported coordinate system {markup.get('coordinateSystem')!r}")
        flip = -1.0 if markup.get("coordinateSystem") == "RAS" else 1.0
        for point in markup.get("controlPoints", []):
            label = str(point.get("label", ""))
            try:
                get_joint(label)
            except KeyError:
                problems.append(f"control point {label!r} is not a joint id; skipped")
                continue
            if point.get("positionStatus", "defined") in _MISSING_STATUS:
                centres[label] = None
                continue
            px, py = float(point["position"][0]) * flip, float(point["position"][1]) * flip
            centres[label] = ((px - ox) / sx, (py - oy) / sy)
    return centres, problems


def write_markups(
    path: str | Path, centres: Mapping[str, Sequence[float] | None], **kw: Any
) -> Path:
    path = Path(path)
    path.write_text(json.dumps(centres_to_markups(centres, **kw), indent=2))
    return path


def read_markups(
    path: str | Path, **kw: Any
) -> tuple[dict[str, tuple[float, float] | None], list[str]]:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read markups {path}: {exc}") from exc
    return markups_to_centres(document, **kw)


def _image_spacing(store: AnnotationStore, image_id: int) -> tuple[float, float] | None:
    """Pixel spacing from the image file: what Slicer uses to place the image."""
    from .imageio import read_image

    return read_image(store.resolve(store.image(image_id))).spacing


def export_store_markups(
    store: AnnotationStore,
    image_id: int,
    path: str | Path,
    *,
    sources: Iterable[str] | None = TRAINING_SOURCES,
) -> Path:
    """Newest centres of one radiograph as ``.mrk.json`` (pixel spacing from the image file)."""
    spacing = _image_spacing(store, image_id)
    centres = {
        joint_id: (None if rev.status == "not_visible" else (rev.value["x"], rev.value["y"]))
        for joint_id, rev in store.centres(image_id, sources=sources).items()
    }
    return write_markups(path, centres, spacing=spacing, name=Path(store.image(image_id).path).stem)


def import_store_markups(
    store: AnnotationStore, image_id: int, path: str | Path, provenance: Provenance
) -> list[str]:
    """Add the control points of a ``.mrk.json`` as new centre revisions; returns problems."""
    spacing = _image_spacing(store, image_id)
    centres, problems = read_markups(path, spacing=spacing)
    limb = store.image(image_id).limb
    with store.transaction():
        for joint_id, xy in centres.items():
            if get_joint(joint_id).limb.value != limb:
                problems.append(f"{joint_id} is not a joint of this {limb} image; skipped")
                continue
            if xy is None:
                store.set_centre(image_id, joint_id, None, provenance, status="not_visible")
            else:
                store.set_centre(image_id, joint_id, xy, provenance)
    return problems


def write_polygon_segmentation(
    path: str | Path,
    polygons: Mapping[str, Sequence[Sequence[float]]],
    shape: tuple[int, int],
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
) -> Path:
    """Joint-space polygons as a Slicer ``.seg.nrrd``: one named segment per joint."""
    import slicerio
    from skimage.draw import polygon2mask

    sx, sy, ox, oy = _geometry(spacing, origin)
    ijk_to_lps = np.array([[sx, 0, 0, ox], [0, sy, 0, oy], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    h, w = shape
    segmentation = slicerio.create_segmentation((w, h, 1), ijk_to_lps)
    rng = np.random.default_rng(0)
    for joint_id, vertices in polygons.items():
        pts = np.asarray(vertices, dtype=float)
        mask = polygon2mask((h, w), pts[:, ::-1])
        slicerio.add_segment(
            segmentation,
            mask.T[:, :, None],  # slicerio voxels are indexed (i, j, k) = (column, row, slice)
            {"id": joint_id, "name": joint_id, "color": rng.uniform(0.3, 1.0, 3).tolist()},
        )
    path = Path(path)
    slicerio.write_segmentation(str(path), segmentation)
    return path


def read_segmentation_masks(path: str | Path) -> dict[str, np.ndarray]:
    """Segment name -> boolean ``(H, W)`` mask of a 2D ``.seg.nrrd``."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    masks = {}
    for segment in segmentation["segments"]:
        extracted = slicerio.extract_segments(segmentation, [(segment["name"], 1)])
        voxels = np.asarray(extracted["voxels"])
        masks[segment["name"]] = voxels[..., 0].T > 0 if voxels.ndim == 3 else voxels.T > 0
    return masks
