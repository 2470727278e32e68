"""Annotation sessions without a GUI: image status, the annotate-next queue, saving what an
editor shows back into the store as new revisions, and undo.

The napari plugin calls these; so can a script. Saving is a *diff* against the **committed**
annotations (human or phantom truth; model proposals live beside them, see
:class:`annotation_tools.store.Resolved`): only joints whose position, visibility or outline
changed get a new ``human`` revision, so opening an image and closing it again writes nothing.
Undo and redo are new revisions too - history is never deleted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .store import (
    TRAINING_SOURCES,
    AnnotationStore,
    ImageRecord,
    Provenance,
    Resolved,
    Revision,
)
from .vocabulary import joints_for_limb

__all__ = [
    "STATUSES",
    "Change",
    "ImageStatus",
    "annotation_queue",
    "change_of",
    "image_status",
    "queue_reason",
    "rename_centre",
    "restore",
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
    scores_settled: int = 0  # radiographs: grades committed by a person (or the truth)
    scores_total: int = 0
    proposals: int = 0  # model proposals still waiting for a person
    set_width: float | None = None  # mean width of the pending grades' conformal sets

    def counts_text(self) -> str:
        """``centres 7/22, scores 3/42, 15 proposals`` - what the image list shows."""
        if self.image.modality != "radiograph":
            text = f"{self.annotated}/{self.total}"
        else:
            text = (
                f"centres {self.annotated}/{self.total}, "
                f"scores {self.scores_settled}/{self.scores_total}"
            )
        return text + (f", {self.proposals} proposals" if self.proposals else "")


def image_status(store: AnnotationStore, image: ImageRecord) -> ImageStatus:
    """unannotated (nothing), predicted (only model proposals), corrected (a person has worked
    on it, something left), done (every joint of the limb placed or marked not visible *and*
    every grade of the limb committed by a person or the truth; for ultrasound: ROI box and
    grades by a person)."""
    if image.modality == "radiograph":
        joints = joints_for_limb(image.limb)
        centres = store.resolved("centre", image.id)
        scores = store.resolved("score", image.id)
        total = len(joints)
        settled = [r.committed for r in centres.values() if _settled(r.committed)]
        hidden = {
            k for k, r in centres.items() if r.committed and r.committed.status == "not_visible"
        }
        scores_total = sum(len(j.score_types) for j in joints if j.id not in hidden)
        scores_settled = sum(_settled(r.committed) for r in scores.values())
        pending = [r.pending for r in (*centres.values(), *scores.values()) if r.pending]
        touched = any(r.state != "empty" for r in (*centres.values(), *scores.values()))
        complete = len(settled) >= total and scores_settled >= scores_total
    else:
        pair = next(
            (
                p
                for p in store.us_pairs(image.patient_id)
                if image.id in (p["greyscale_image_id"], p["doppler_image_id"])
            ),
            None,
        )
        parts = list(store.resolved("roi", image.id).values())
        if pair:
            parts += list(store.resolved("us_score", pair["id"]).values())
        total, scores_total, scores_settled = 2, 0, 0
        settled = [r.committed for r in parts if _settled(r.committed)]
        pending = [r.pending for r in parts if r.pending]
        touched = any(r.state != "empty" for r in parts)
        complete = len(settled) >= total
    if not touched:
        status = "unannotated"
    elif complete:
        status = "done"
    elif settled or scores_settled:
        status = "corrected"
    else:
        status = "predicted"
    return ImageStatus(
        image,
        status,
        len(settled),
        total,
        _uncertainty(pending),
        scores_settled,
        scores_total,
        len(pending),
        _set_width(pending),
    )


def _set_width(revisions: Sequence[Revision]) -> float | None:
    """Mean width (``high - low``, in grades) of the conformal sets of pending model grades:
    how many grades the model cannot rule out - a calibrated measure, unlike the spread."""
    widths = [
        float(rev.value["set_high"] - rev.value["set_low"])
        for rev in revisions
        if rev.value.get("set_low") is not None
    ]
    return sum(widths) / len(widths) if widths else None


def _settled(rev: Revision | None) -> bool:
    return rev is not None and rev.source in HUMAN_SOURCES and rev.status != "deleted"


def _uncertainty(revisions: Sequence[Revision]) -> float | None:
    values = []
    for rev in revisions:
        if "confidence" in rev.value and rev.value["confidence"] is not None:
            values.append(1.0 - float(rev.value["confidence"]))
        elif rev.value.get("uncertainty") is not None:
            values.append(float(rev.value["uncertainty"]))
    return sum(values) / len(values) if values else None


QUEUE_STRATEGIES = ("least confident", "widest grade sets", "first unannotated", "random")


def annotation_queue(
    statuses: Iterable[ImageStatus],
    strategy: str = "least confident",
    *,
    seed: int | None = None,
) -> list[ImageStatus]:
    """What to annotate next: images not done, ordered by ``strategy``.

    ``least confident`` puts the most uncertain pending proposals first (active learning;
    images without proposals follow in list order); ``widest grade sets`` ranks by the mean
    width of the pending grades' conformal sets (calibrated: a width of 2 means the model
    cannot tell three grades apart at the run's coverage); ``first unannotated`` is list order
    with untouched images first; ``random`` shuffles (``seed`` makes it repeatable).
    """
    if strategy not in QUEUE_STRATEGIES:
        raise ValueError(f"unknown queue strategy {strategy!r}; use one of {QUEUE_STRATEGIES}")
    todo = [s for s in statuses if s.status != "done"]
    if strategy == "random":
        import random

        random.Random(seed).shuffle(todo)
        return todo
    if strategy == "first unannotated":
        return sorted(todo, key=lambda s: s.status != "unannotated")
    if strategy == "widest grade sets":
        return sorted(todo, key=lambda s: -(s.set_width if s.set_width is not None else -1))
    return sorted(todo, key=lambda s: -(s.uncertainty if s.uncertainty is not None else -1))


def queue_reason(status: ImageStatus, strategy: str) -> str:
    """Why :func:`annotation_queue` chose this image, in words for the person."""
    what = f"{status.image.patient_id} {status.image.limb or 'ultrasound'}"
    if strategy == "least confident" and status.uncertainty is not None:
        return (
            f"{what}: least confident proposals (mean uncertainty {status.uncertainty:.2f}, "
            f"{status.proposals} waiting)"
        )
    if strategy == "widest grade sets" and status.set_width is not None:
        return (
            f"{what}: widest grade sets (the model's grades span {status.set_width:.1f} "
            f"grades on average, {status.proposals} proposals waiting)"
        )
    if strategy == "random":
        return f"{what}: picked at random among the images not done ({status.status})"
    return f"{what}: first image not done ({status.status}, {status.counts_text()})"


@dataclass(frozen=True)
class Change:
    """One saved edit, enough to undo it: what the committed revision was before."""

    kind: str  # centre | polygon | score
    image_id: int
    key: dict
    before: Revision | None  # the committed revision it replaced (None: there was none)


def _committed(store: AnnotationStore, kind: str, image_id: int, key: dict) -> Revision | None:
    return Resolved.of(store.history(kind, image_id, key)).committed


def change_of(store: AnnotationStore, kind: str, image_id: int, key: dict) -> Change:
    """The :class:`Change` an edit of this annotation is about to make (for undo)."""
    return Change(kind, image_id, key, _committed(store, kind, image_id, key))


def save_centres(
    store: AnnotationStore,
    image_id: int,
    points: Mapping[str, tuple[float, float]],
    annotator: str,
    *,
    not_visible: Iterable[str] = (),
    journal: list[Change] | None = None,
) -> int:
    """Store the editor's committed joint centres of one image; returns the revisions written.

    ``points``: joint id -> (x, y) for every committed joint shown; ``not_visible``: joints the
    annotator skipped. A committed joint shown before and gone now is deleted (a ``deleted``
    revision: the history keeps it). Model proposals are not compared against: they live in
    their own layer. One transaction: all or nothing. ``journal`` collects a :class:`Change`
    per revision written, for undo.
    """
    prov = Provenance.human(annotator)
    hidden = set(not_visible)
    written = 0
    changes: list[Change] = []
    with store.transaction():
        newest = store.centres(image_id, sources=TRAINING_SOURCES)

        def record(joint_id: str) -> None:
            changes.append(change_of(store, "centre", image_id, {"joint_id": joint_id}))

        for joint_id, (x, y) in points.items():
            old = newest.get(joint_id)
            if (
                old is not None
                and old.status == "present"
                and math.hypot(float(x) - old.value["x"], float(y) - old.value["y"])
                <= MOVE_TOLERANCE_PX
            ):
                continue
            record(joint_id)
            store.set_centre(image_id, joint_id, (float(x), float(y)), prov)
            written += 1
        for joint_id in hidden - set(points):
            old = newest.get(joint_id)
            if old is None or old.status != "not_visible":
                record(joint_id)
                store.set_centre(image_id, joint_id, None, prov, status="not_visible")
                written += 1
        for joint_id, old in newest.items():
            if (
                joint_id not in points
                and joint_id not in hidden
                and old.status
                in (
                    "present",
                    "not_visible",
                )
            ):
                record(joint_id)
                store.delete_centre(image_id, joint_id, prov)
                written += 1
    if journal is not None:
        journal.extend(changes)
    return written


def restore(store: AnnotationStore, change: Change, annotator: str) -> Change:
    """Undo one change: a new human revision that restores what was committed before it (or a
    deletion when nothing was). Returns the change that redoes it."""
    current = _committed(store, change.kind, change.image_id, change.key)
    prov = Provenance.human(annotator)
    before = change.before
    if change.kind == "centre":
        joint_id = change.key["joint_id"]
        if before is None or before.status == "deleted":
            store.delete_centre(change.image_id, joint_id, prov)
        elif before.status == "not_visible":
            store.set_centre(change.image_id, joint_id, None, prov, status="not_visible")
        else:
            xy = (before.value["x"], before.value["y"])
            store.set_centre(change.image_id, joint_id, xy, prov, confidence=None)
    elif change.kind == "polygon":
        joint_id = change.key["joint_id"]
        if before is None or before.status == "deleted":
            store.delete_polygon(change.image_id, joint_id, prov)
        else:
            store.set_polygon(change.image_id, joint_id, before.value["vertices"], prov)
    elif change.kind == "score":
        if before is None or before.status == "deleted":
            store.delete_score(
                change.image_id, change.key["joint_id"], change.key["score_type"], prov
            )
        else:
            store.set_score(
                change.image_id,
                change.key["joint_id"],
                change.key["score_type"],
                before.value["value"],
                prov,
            )
    else:
        raise ValueError(f"cannot undo a {change.kind} change")
    return Change(change.kind, change.image_id, change.key, current)


def rename_centre(
    store: AnnotationStore, image_id: int, old_joint: str, new_joint: str, annotator: str
) -> list[Change]:
    """A point placed under the wrong name: the new joint gets the point, the old one a
    deletion - two revisions in one transaction (undo restores both)."""
    if old_joint == new_joint:
        return []
    current = store.centres(image_id).get(old_joint)
    if current is None or current.status != "present":
        raise ValueError(f"{old_joint} has no point on this image to rename")
    prov = Provenance.human(annotator)
    with store.transaction():
        changes = [
            change_of(store, "centre", image_id, {"joint_id": joint})
            for joint in (new_joint, old_joint)
        ]
        xy = (current.value["x"], current.value["y"])
        store.set_centre(image_id, new_joint, xy, prov)
        store.delete_centre(image_id, old_joint, prov)
    return changes


def save_polygons(
    store: AnnotationStore,
    image_id: int,
    polygons: Mapping[str, Sequence[Sequence[float]]],
    annotator: str,
    *,
    journal: list[Change] | None = None,
) -> int:
    """Store the editor's committed joint-space polygons (joint id -> [(x, y), ...]); like
    :func:`save_centres`, only changed outlines get a new revision, removed ones are deleted."""
    prov = Provenance.human(annotator)
    written = 0
    changes: list[Change] = []
    with store.transaction():
        newest = store.polygons(image_id, sources=TRAINING_SOURCES)
        for joint_id, vertices in polygons.items():
            points = [[float(x), float(y)] for x, y in vertices]
            old = newest.get(joint_id)
            if old is not None and _same_outline(old.value["vertices"], points):
                continue
            key = {"joint_id": joint_id}
            changes.append(Change("polygon", image_id, key, old))
            store.set_polygon(image_id, joint_id, points, prov)
            written += 1
        for joint_id in set(newest) - set(polygons):
            changes.append(Change("polygon", image_id, {"joint_id": joint_id}, newest[joint_id]))
            store.delete_polygon(image_id, joint_id, prov)
            written += 1
    if journal is not None:
        journal.extend(changes)
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
    it differs from the committed (person's or phantom) box - accepting a model proposal
    unchanged still commits it as the annotator's."""
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
            old = store.roi(image_id, sources=TRAINING_SOURCES)
            new = {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
            if old is not None and all(
                abs(old.value[k] - v) <= MOVE_TOLERANCE_PX for k, v in new.items()
            ):
                continue
            store.set_roi(image_id, (x0, y0, x1, y1), prov)
            written += 1
    return written
