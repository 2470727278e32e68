"""Annotation sessions without a GUI: image status, the annotate-next queue, and saving what an
editor shows back into the store as new revisions.

The napari plugin calls these; so can a script. Saving is a *diff*: only joints whose position,
visibility or outline changed get a new ``human`` revision, so opening an image and closing it
again writes nothing, and a model's revision is never overwritten - a correction is a new
revision on top of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .store import AnnotationStore, ImageRecord, Provenance, Revision
from .vocabulary import joints_for_limb

__all__ = [
    "STATUSES",
    "ImageStatus",
    "annotation_queue",
    "image_status",
    "save_centres",
    "save_polygons",
    "save_roi",
]

STATUSES = ("unannotated", "predicted", "corrected", "done")
HUMAN_SOURCES = ("human", "phantom")  # what counts as annotated (phantom = ground truth)
MOVE_TOLERANCE_PX = 0.01  # smaller moves are float noise from the editor, not a correction


@dataclass(frozen=True)
class ImageStatus:
    image: ImageRecord
    status: str  # one of STATUSES
    annotated: int  # joints (or ROI/grades) settled by a person
    total: int
    uncertainty: float | None  # mean model uncertainty of what is not yet settled


def _settled(rev: Revision) -> bool:
    return rev.source in HUMAN_SOURCES


def image_status(store: AnnotationStore, image: ImageRecord) -> ImageStatus:
    """unannotated (nothing), predicted (only model revisions), corrected (a person has worked
    on it, joints left), done (every joint of the limb placed or marked not visible by a person;
    for ultrasound: ROI box and grades by a person)."""
    if image.modality == "radiograph":
        newest = store.centres(image.id)
        total = len(joints_for_limb(image.limb))
        settled = [r for r in newest.values() if _settled(r)]
        open_model = [r for r in newest.values() if r.is_model]
    else:
        pair = next(
            (
                p
                for p in store.us_pairs(image.patient_id)
                if image.id in (p["greyscale_image_id"], p["doppler_image_id"])
            ),
            None,
        )
        roi = store.roi(image.id)
        grades = store.us_score(pair["id"]) if pair else None
        newest = {k: r for k, r in (("roi", roi), ("grades", grades)) if r is not None}
        total = 2
        settled = [r for r in newest.values() if _settled(r)]
        open_model = [r for r in newest.values() if r.is_model]
    if not newest:
        status = "unannotated"
    elif len(settled) >= total:
        status = "done"
    elif settled:
        status = "corrected"
    else:
        status = "predicted"
    return ImageStatus(image, status, len(settled), total, _uncertainty(open_model))


def _uncertainty(revisions: Sequence[Revision]) -> float | None:
    values = []
    for rev in revisions:
        if "confidence" in rev.value and rev.value["confidence"] is not None:
            values.append(1.0 - float(rev.value["confidence"]))
        elif rev.value.get("uncertainty") is not None:
            values.append(float(rev.value["uncertainty"]))
    return sum(values) / len(values) if values else None


def annotation_queue(statuses: Iterable[ImageStatus]) -> list[ImageStatus]:
    """What to annotate next: images not done; the most uncertain predictions first (active
    learning) when there are predictions, in list order otherwise."""
    todo = [s for s in statuses if s.status != "done"]
    if any(s.uncertainty is not None for s in todo):
        return sorted(todo, key=lambda s: -(s.uncertainty if s.uncertainty is not None else -1))
    return todo


def save_centres(
    store: AnnotationStore,
    image_id: int,
    points: Mapping[str, tuple[float, float]],
    annotator: str,
    *,
    not_visible: Iterable[str] = (),
) -> int:
    """Store the editor's joint centres of one image; returns the revisions written.

    ``points``: joint id -> (x, y) for every joint shown; ``not_visible``: joints the annotator
    skipped as "not visible". A joint shown before and gone now is deleted (a ``deleted``
    revision: the history keeps it). One transaction: all or nothing.
    """
    prov = Provenance.human(annotator)
    hidden = set(not_visible)
    written = 0
    with store.transaction():
        newest = store.centres(image_id)
        for joint_id, (x, y) in points.items():
            old = newest.get(joint_id)
            if (
                old is not None
                and old.status == "present"
                and math.hypot(float(x) - old.value["x"], float(y) - old.value["y"])
                <= MOVE_TOLERANCE_PX
            ):
                continue
            store.set_centre(image_id, joint_id, (float(x), float(y)), prov)
            written += 1
        for joint_id in hidden - set(points):
            old = newest.get(joint_id)
            if old is None or old.status != "not_visible" or old.is_model:
                store.set_centre(image_id, joint_id, None, prov, status="not_visible")
                written += 1
        for joint_id, old in newest.items():
            if joint_id not in points and joint_id not in hidden and old.status == "present":
                store.delete_centre(image_id, joint_id, prov)
                written += 1
    return written


def save_polygons(
    store: AnnotationStore,
    image_id: int,
    polygons: Mapping[str, Sequence[Sequence[float]]],
    annotator: str,
) -> int:
    """Store the editor's joint-space polygons (joint id -> [(x, y), ...]); like
    :func:`save_centres`, only changed outlines get a new revision, removed ones are deleted."""
    prov = Provenance.human(annotator)
    written = 0
    with store.transaction():
        newest = store.polygons(image_id)
        for joint_id, vertices in polygons.items():
            points = [[float(x), float(y)] for x, y in vertices]
            old = newest.get(joint_id)
            if old is not None and _same_outline(old.value["vertices"], points):
                continue
            store.set_polygon(image_id, joint_id, points, prov)
            written += 1
        for joint_id in set(newest) - set(polygons):
            store.delete_polygon(image_id, joint_id, prov)
            written += 1
    return written


def _same_outline(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> bool:
    return len(a) == len(b) and all(
        math.hypot(p[0] - q[0], p[1] - q[1]) <= MOVE_TOLERANCE_PX for p, q in zip(a, b, strict=True)
    )


def save_roi(
    store: AnnotationStore,
    pair_id: int,
    box: tuple[float, float, float, float],
    annotator: str,
) -> int:
    """One ROI box for both images of a pair (drawn once, shown on both); written only when
    it changed."""
    pair = next((p for p in store.us_pairs() if p["id"] == pair_id), None)
    if pair is None:
        raise ValueError(f"no ultrasound pair {pair_id} in {store.path}")
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"ROI box {box} has zero area")
    prov = Provenance.human(annotator)
    written = 0
    with store.transaction():
        for image_id in (pair["greyscale_image_id"], pair["doppler_image_id"]):
            old = store.roi(image_id)
            new = {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
            if old is not None and all(
                abs(old.value[k] - v) <= MOVE_TOLERANCE_PX for k, v in new.items()
            ):
                continue
            store.set_roi(image_id, (x0, y0, x1, y1), prov)
            written += 1
    return written
