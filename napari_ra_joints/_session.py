"""An image of a project open in the viewer: its layers, kept in step with the annotation store.

Every edit is saved at once, in one transaction, as a ``human`` revision through
:mod:`annotation_tools.review`; there is no save button and nothing to lose when napari is
closed or killed. napari itself debounces: a drag reports "changing" while the mouse moves
(ignored here) and "changed" once when it is released (saved). Model predictions arrive as
``model`` revisions - *proposals* - and are shown in their own layer beside the committed
annotations, never on top of them (the store's resolution rule, ``docs/store.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from annotation_tools.imageio import read_image
from annotation_tools.review import (
    Change,
    change_of,
    rename_centre,
    restore,
    save_centres,
    save_polygons,
    save_roi,
)
from annotation_tools.store import AnnotationStore, ImageRecord, Revision, StoreError
from annotation_tools.vocabulary import Joint, get_joint, joints_for_limb

from ._layers import (
    CENTRE_STYLE,
    HEATMAP_STYLE,
    LABEL_TEXT,
    OUTLINE_STYLE,
    PROPOSAL_STYLE,
    PROPOSED_OUTLINE_STYLE,
    PROPOSED_ROI_STYLE,
    ROI_STYLE,
    SOURCE_COLOURS,
    box_from_layer,
    box_to_layer,
    from_layer,
    grade_set_face,
    grade_sets_text,
    image_layer_data,
    point_tooltip,
    short_label,
    source_colour,
    to_layer,
)

ACTIONS_THAT_SAVE = ("added", "changed", "removed")


class _Saving:
    """Saving from a layer event: a refused save (locked store, bad value) is reported and the
    layer keeps what the user did, so the next edit can save it again.

    A save writes what the layers show that the store does not have yet, so trying it again
    later is always right: while another program holds the store's lock, ``unsaved`` is set
    and the dock retries on a timer (``_widget.RAJointsWidget``) without blocking the Qt
    thread for longer than its short lock wait.
    """

    on_change: Callable[[str], None]
    unsaved: bool = False

    def save(self) -> int:
        raise NotImplementedError

    def try_save(self) -> bool:
        """Save now; True when everything shown is in the store."""
        from annotation_tools.store import StoreError, StoreLockedError

        try:
            self.save()
        except StoreLockedError as exc:
            self.unsaved = True
            self.on_change(f"Not saved yet (retrying): {exc}")
            return False
        except (StoreError, ValueError) as exc:
            from napari.utils.notifications import show_error

            show_error(f"Not saved: {exc}")
            self.on_change(f"Not saved: {exc}")
            return False
        self.unsaved = False
        return True


class RadiographSession(_Saving):
    """A radiograph with two joint-centre layers - what is committed (a person's points, the
    truth, accepted proposals) and the model's pending proposals - and a joint-space layer.

    The committed layer is the guided one: a click places the joint the guide names. A
    proposal is accepted (A), rejected (R or Delete in the proposals layer) or dragged, which
    commits the dragged position as a person's correction. Undo/redo (Ctrl+Z / Ctrl+Shift+Z)
    write new revisions; history is never deleted.
    """

    def __init__(
        self,
        viewer: Any,
        store: AnnotationStore,
        record: ImageRecord,
        annotator: str,
        on_change: Callable[[str], None] | None = None,
    ):
        if record.modality != "radiograph":
            raise ValueError(f"{record.path} is {record.modality}, not a radiograph")
        self.viewer, self.store, self.record = viewer, store, record
        self.annotator = annotator
        self.on_change = on_change or (lambda message: None)
        self.joints: tuple[Joint, ...] = joints_for_limb(record.limb)
        self.cursor = 0
        self.not_visible: set[str] = set()
        self.model_missing: set[str] = set()
        self.undo_stack: list[list[Change]] = []
        self.redo_stack: list[list[Change]] = []
        self._ids: list[str] = []
        self._proposal_rows: list[dict[str, Any]] = []
        self.extra_layers: list[Any] = []
        self._proposed_outlines: dict[str, Any] = {}
        self._loading = False
        data, kwargs, _ = image_layer_data(read_image(store.resolve(record)), name=self.title)
        self.image_layer = viewer.add_image(data, **kwargs)
        size = max(6, record.height // 120 if record.height else 10)
        self.shapes = viewer.add_shapes(
            name=f"joint spaces {self.title}",
            **OUTLINE_STYLE,
            features={"joint_id": np.array([], dtype=object)},
            metadata=self.layer_metadata,
        )
        self.proposed_shapes = viewer.add_shapes(
            name=f"proposed joint spaces {self.title}",
            **PROPOSED_OUTLINE_STYLE,
            features={"joint_id": np.array([], dtype=object)},
            metadata=self.layer_metadata,
        )
        self.proposals = viewer.add_points(
            np.zeros((0, 2)),
            name=f"model proposals {self.title}",
            size=size,
            border_width=0.15,
            **PROPOSAL_STYLE,
            features=_empty_features(),
            text={**LABEL_TEXT, "color": SOURCE_COLOURS["model"]},
            metadata=self.layer_metadata,
        )
        self.points = viewer.add_points(
            np.zeros((0, 2)),
            name=f"joint centres {self.title}",
            size=size,
            border_width=0.2,
            **CENTRE_STYLE,
            features=_empty_features(),
            text={**LABEL_TEXT, "color": "yellow"},
            metadata=self.layer_metadata,
        )
        self.reload()
        self.points.events.data.connect(self._points_changed)
        self.proposals.events.data.connect(self._proposals_changed)
        self.shapes.events.data.connect(self._shapes_changed)
        self.proposed_shapes.events.data.connect(self._proposed_shapes_changed)
        self.points.mode = "add"
        self.proposals.mode = "select"
        viewer.layers.selection.active = self.points

    @property
    def title(self) -> str:
        return f"{self.record.patient_id} {self.record.limb}"

    @property
    def image_id(self) -> int:
        return self.record.id

    @property
    def layer_metadata(self) -> dict[str, Any]:
        """Where the layer's annotations live: the writer saves them from the store."""
        return {"ra_joints_project": str(self.store.root), "image_id": self.record.id}

    def missing_text(self) -> str:
        """Joints the model could not find (a "not visible" proposal) and nobody has placed:
        they have no point to show, so the guide names them."""
        missing = [get_joint(j).name for j in self.model_missing if j not in self.placed()]
        return f"Not found by the model: {', '.join(sorted(missing))}" if missing else ""

    @property
    def layers(self) -> list[Any]:
        return [
            self.image_layer,
            self.proposed_shapes,
            self.shapes,
            self.proposals,
            self.points,
            *self.extra_layers,
        ]

    def add_extra_layer(self, layer: Any) -> None:
        """A picture that belongs to this image (SHAP): removed with it; the joint-centre
        layer stays the active one, so the annotation keys keep working."""
        self.extra_layers.append(layer)
        self.viewer.layers.selection.active = self.points

    # ------------------------------------------------------------------ store -> layers

    def reload(self) -> None:
        """Show the committed centres and outlines, and beside them the pending proposals."""
        self._loading = True
        try:
            resolved = self.store.resolved("centre", self.record.id)
            scores = self.store.scores(self.record.id)
            committed = [r.committed for r in resolved.values() if r.committed is not None]
            self.not_visible = {r.key for r in committed if r.status == "not_visible"}
            present = [r for r in committed if r.status == "present"]
            rows = [self._feature_row(r, scores) for r in present]
            self.points.data = to_layer([(r.value["x"], r.value["y"]) for r in present])
            self.points.features = _features(rows)
            self.points.border_color = [
                source_colour(r["source"], r["confidence"]) for r in rows
            ] or "red"
            self.points.face_color = [grade_set_face(r["set_width"]) for r in rows] or (
                "transparent"
            )
            self.points.refresh_text()
            self._ids = [r["joint_id"] for r in rows]
            pending = [r.pending for r in resolved.values() if r.pending is not None]
            self.model_missing = {r.key for r in pending if r.status == "not_visible"}
            shown = [r for r in pending if r.status == "present"]
            self._proposal_rows = [self._feature_row(r, scores) for r in shown]
            self.proposals.data = to_layer([(r.value["x"], r.value["y"]) for r in shown])
            self.proposals.features = _features(self._proposal_rows)
            self.proposals.border_color = [
                source_colour("model", r["confidence"]) for r in self._proposal_rows
            ] or SOURCE_COLOURS["model"]
            self.proposals.face_color = [
                grade_set_face(r["set_width"]) for r in self._proposal_rows
            ] or "transparent"
            self.proposals.refresh_text()
            self.proposals.selected_data = set()
            outlines = self.store.resolved("polygon", self.record.id)
            committed = {
                k: r.committed
                for k, r in outlines.items()
                if r.committed is not None and r.committed.status != "deleted"
            }
            proposed = {k: r.pending for k, r in outlines.items() if r.pending is not None}
            for layer, polygons in ((self.shapes, committed), (self.proposed_shapes, proposed)):
                layer.data = []
                if polygons:
                    layer.add_polygons([to_layer(r.value["vertices"]) for r in polygons.values()])
                    layer.features = {"joint_id": np.array(list(polygons), dtype=object)}
            self._proposed_outlines = {k: r.value["vertices"] for k, r in proposed.items()}
        finally:
            self._loading = False
        self._update_guide()
        self._update_outline_guide()

    def _feature_row(self, rev: Revision, scores: dict) -> dict[str, Any]:
        joint = get_joint(rev.key)
        parts = [
            f"{t[0].upper()}{scores[(rev.key, t)].value['value']:.1f}"
            for t in ("narrowing", "erosion")
            if (rev.key, t) in scores
        ]
        confidence = rev.value.get("confidence")
        if rev.is_model:  # a proposal's grades are in the Scores tab: its label stays short
            parts = [f"?{confidence:.2f}"] if confidence is not None and confidence < 0.95 else []
        sets_text, set_width = grade_sets_text(
            {t: scores.get((rev.key, t)) for t in ("narrowing", "erosion")}
        )
        return {
            "joint_id": rev.key,
            "name": joint.name,
            "source": rev.source,
            "confidence": confidence,
            "revision": rev.revision,
            "revision_id": rev.id,
            "label": " ".join([short_label(joint), *parts]),
            "tooltip": point_tooltip(joint, rev.source, confidence, sets_text),
            "set_width": set_width,
        }

    # ------------------------------------------------------------------ guidance

    def placed(self) -> set[str]:
        return {str(j) for j in self.points.features.get("joint_id", [])}

    def current(self) -> Joint | None:
        """The joint to click next: from the cursor on, the first not placed and not skipped."""
        done = self.placed() | self.not_visible
        n = len(self.joints)
        for step in range(n):
            joint = self.joints[(self.cursor + step) % n]
            if joint.id not in done:
                return joint
        return None

    def joint_states(self) -> dict[str, str]:
        """Joint id -> ``placed``, ``not visible``, ``proposed`` or ``open``, for the picker."""
        proposed = {str(j) for j in self.proposals.features.get("joint_id", [])}
        out = {}
        for joint in self.joints:
            if joint.id in self.placed():
                out[joint.id] = "placed"
            elif joint.id in self.not_visible:
                out[joint.id] = "not visible"
            elif joint.id in proposed or joint.id in self.model_missing:
                out[joint.id] = "proposed"
            else:
                out[joint.id] = "open"
        return out

    def goto(self, joint_id: str) -> None:
        """The person chose a joint (picker, diagram): the next click places it, even if it is
        placed already (the click then moves it)."""
        self.cursor = get_joint(joint_id).index
        self.chosen_joint = joint_id
        self.on_change(self.guide_text())

    chosen_joint: str | None = None  # picked by the person; else the guide decides

    def _update_guide(self) -> None:
        joint = self.current()
        if joint is not None:
            self.cursor = joint.index
        self.on_change(self.guide_text())

    def _apply_defaults(self) -> None:
        """The features the next added point gets: the guided joint's. Set just before each
        add, because napari resets the defaults to the last point's after adding."""
        joint = get_joint(self.chosen_joint) if self.chosen_joint else self.current()
        self.points.feature_defaults = {
            "joint_id": joint.id if joint else "",
            "name": joint.name if joint else "",
            "source": "human",
            "confidence": np.nan,
            "revision": 0,
            "revision_id": 0,
            "label": short_label(joint) if joint else "",
            "tooltip": point_tooltip(joint, "human", None) if joint else "",
            "set_width": np.nan,
        }

    def guide_text(self) -> str:
        joint = get_joint(self.chosen_joint) if self.chosen_joint else self.current()
        done = len(self.placed() | self.not_visible)
        missing = self.missing_text()
        lines = []
        if joint is None:
            lines.append(f"All {len(self.joints)} joints placed or marked not visible.")
        else:
            again = " (moves its point)" if joint.id in self.placed() else ""
            lines.append(f"Click: {joint.name}{again} ({done} of {len(self.joints)} done)")
        outline = self.outline_next()
        if outline:
            lines.append(f"Next outline: {get_joint(outline).name}")
        if len(self.proposals.data):
            lines.append(
                f"{len(self.proposals.data)} model proposals to review (A accept, R reject)"
            )
        if missing:
            lines.append(missing)
        return "\n".join(lines)

    def next(self) -> None:
        self.chosen_joint = None
        self.cursor = (self.cursor + 1) % len(self.joints)
        self._update_guide()

    def previous(self) -> None:
        self.chosen_joint = None
        self.cursor = (self.cursor - 1) % len(self.joints)
        done = self.placed() | self.not_visible
        for _ in range(len(self.joints)):  # step back to the previous open joint
            if self.joints[self.cursor].id not in done:
                break
            self.cursor = (self.cursor - 1) % len(self.joints)
        self._update_guide()

    def skip(self) -> None:
        """Mark the current joint "not visible" (saved at once) and move on."""
        joint = get_joint(self.chosen_joint) if self.chosen_joint else self.current()
        if joint is None:
            return
        self.chosen_joint = None
        if joint.id in self.placed():  # "not visible" replaces a placed point
            keep = [i for i, j in enumerate(self._ids) if j != joint.id]
            self._loading = True
            try:
                self.points.selected_data = set(range(len(self._ids))) - set(keep)
                self.points.remove_selected()
            finally:
                self._loading = False
        self.not_visible.add(joint.id)
        self.save()
        self.reload()

    # ------------------------------------------------------------------ layers -> store

    def _points_changed(self, event: Any) -> None:
        if self._loading:
            return
        action = str(getattr(event, "action", "changed"))
        if action == "adding":
            self._apply_defaults()
            return
        if action not in ACTIONS_THAT_SAVE:
            return
        if action == "added":
            self._label_new_points()
        removed = [j for j in self._ids if j not in self.placed()]
        self.try_save()
        if action == "removed" and removed:
            # Delete rewinds the guide: the next click places the joint just removed
            self.cursor = get_joint(removed[0]).index
            self.chosen_joint = None
            self._update_guide()

    def _label_new_points(self) -> None:
        """A click added a point: it got the guided joint's features; advance the guide. A click
        when every joint is done is undone with a message instead of inventing a joint. A click
        for a joint placed already (chosen in the picker) moves that joint's point."""
        features = self.points.features
        ids = [str(j) for j in features["joint_id"]]
        last = len(ids) - 1
        if ids and not ids[-1]:
            self._remove_rows({last})
            self.on_change("Every joint is placed or skipped; drag a point to correct it.")
            return
        if ids and ids[-1] in ids[:-1]:  # the picker chose a placed joint: move it
            self._remove_rows({ids.index(ids[-1])})
        self.points.features.loc[len(self.points.features) - 1, "source"] = "human"
        self.chosen_joint = None
        self.not_visible.discard(ids[-1])
        self._update_guide()

    def _remove_rows(self, rows: set[int]) -> None:
        self._loading = True
        try:
            self.points.selected_data = rows
            self.points.remove_selected()
        finally:
            self._loading = False

    def _proposals_changed(self, event: Any) -> None:
        """A proposal dragged is a person's correction; one deleted is rejected."""
        if self._loading:
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ACTIONS_THAT_SAVE:
            return
        now = [str(j) for j in self.proposals.features.get("joint_id", [])]
        before = {r["joint_id"]: r for r in self._proposal_rows}
        changes: list[Change] = []
        try:
            if action == "removed":
                for joint_id in [j for j in before if j not in now]:
                    changes.append(self._change("centre", {"joint_id": joint_id}))
                    self.store.reject(
                        "centre", self.record.id, {"joint_id": joint_id}, self.annotator
                    )
                message = f"rejected {len(changes)} proposal(s)"
            else:
                xy = from_layer(self.proposals.data)
                for joint_id, (x, y) in zip(now, xy, strict=True):
                    old = self.store.centres(self.record.id, sources=["model"]).get(joint_id)
                    if old is None or (
                        abs(old.value["x"] - x) <= 0.01 and abs(old.value["y"] - y) <= 0.01
                    ):
                        continue
                    changes.append(self._change("centre", {"joint_id": joint_id}))
                    self.store.set_centre(
                        self.record.id, joint_id, (float(x), float(y)), self._human
                    )
                message = f"committed {len(changes)} corrected proposal(s)"
        except (StoreError, ValueError) as exc:
            self.on_change(f"Not saved: {exc}")
            changes = []
            message = ""
        self._push(changes)
        self.reload()
        if message:
            self.on_change(f"{message} - {self.guide_text()}")

    def _shapes_changed(self, event: Any) -> None:
        if self._loading:
            return
        if str(getattr(event, "action", "")) == "adding":
            self._update_outline_guide()
            return
        if str(getattr(event, "action", "changed")) not in ACTIONS_THAT_SAVE:
            return
        if str(event.action) == "added":
            self._label_new_shapes()
        self.try_save()

    def _proposed_shapes_changed(self, event: Any) -> None:
        """A proposed outline edited is a person's outline; one deleted is rejected."""
        if self._loading:
            return
        action = str(getattr(event, "action", "changed"))
        if action not in ACTIONS_THAT_SAVE or action == "added":
            return
        now = {
            str(j): [(float(x), float(y)) for x, y in from_layer(shape)]
            for j, shape in zip(
                self.proposed_shapes.features["joint_id"], self.proposed_shapes.data, strict=True
            )
        }
        changes: list[Change] = []
        try:
            for joint_id, vertices in self._proposed_outlines.items():
                key = {"joint_id": joint_id}
                if joint_id not in now:
                    changes.append(self._change("polygon", key))
                    self.store.reject("polygon", self.record.id, key, self.annotator)
                elif not np.allclose(now[joint_id], vertices, atol=0.01):
                    changes.append(self._change("polygon", key))
                    self.store.set_polygon(self.record.id, joint_id, now[joint_id], self._human)
        except (StoreError, ValueError) as exc:
            self.on_change(f"Not saved: {exc}")
        self._push(changes)
        self.reload()
        if changes:
            self.on_change(f"committed {len(changes)} outline(s) - {self.guide_text()}")

    def _label_new_shapes(self) -> None:
        """A new outline got the guided narrowing joint as its feature; with none left, the
        outline is taken back with a message."""
        ids = [j if isinstance(j, str) else "" for j in self.shapes.features["joint_id"]]
        if ids and not ids[-1]:
            self._loading = True
            try:
                self.shapes.selected_data = {len(ids) - 1}
                self.shapes.remove_selected()
            finally:
                self._loading = False
            self.on_change("Every narrowing joint has an outline; edit a vertex to correct one.")
            return
        self._update_outline_guide()

    def outline_next(self) -> str | None:
        """The first narrowing joint (guided order) without a joint-space outline."""
        have = {j for j in self.shapes.features["joint_id"] if isinstance(j, str) and j}
        return next((j.id for j in self.joints if j.narrowing and j.id not in have), None)

    def _update_outline_guide(self) -> None:
        joint_id = self.outline_next()
        self.shapes.feature_defaults = {"joint_id": joint_id or ""}

    @property
    def _human(self) -> Any:
        from annotation_tools.store import Provenance

        return Provenance.human(self.annotator)

    def _change(self, kind: str, key: dict[str, Any]) -> Change:
        return change_of(self.store, kind, self.record.id, key)

    def _push(self, changes: list[Change]) -> None:
        if changes:
            self.undo_stack.append(changes)
            self.redo_stack.clear()

    def save(self) -> int:
        """Write what the committed layers show (only changes) as human revisions."""
        ids = [str(j) for j in self.points.features["joint_id"]]
        points = {
            j: (float(x), float(y))
            for j, (x, y) in zip(ids, from_layer(self.points.data), strict=True)
        }
        journal: list[Change] = []
        written = save_centres(
            self.store,
            self.record.id,
            points,
            self.annotator,
            not_visible=self.not_visible - set(points),
            journal=journal,
        )
        outlines = {
            str(j): [(float(x), float(y)) for x, y in from_layer(shape)]
            for j, shape in zip(self.shapes.features["joint_id"], self.shapes.data, strict=True)
            if isinstance(j, str) and j
        }
        written += save_polygons(
            self.store, self.record.id, outlines, self.annotator, journal=journal
        )
        self._push(journal)
        self._ids = ids
        if written:
            self._refresh_sources()
            self.on_change(f"saved {written} change(s) - {self.guide_text()}")
        return written

    def _refresh_sources(self) -> None:
        """After saving, the edited points are human revisions: recolour them, keep the data;
        proposals a person has now decided on leave the proposals layer."""
        resolved = self.store.resolved("centre", self.record.id)
        self._loading = True
        try:
            features = self.points.features
            for i, joint_id in enumerate(features["joint_id"]):
                rev = resolved.get(str(joint_id))
                if rev is not None and rev.committed is not None:
                    features.loc[i, "source"] = rev.committed.source
                    features.loc[i, "revision"] = rev.committed.revision
            self.points.border_color = [
                source_colour(s, c)
                for s, c in zip(features["source"], features["confidence"], strict=True)
            ] or "red"
            decided = [
                i
                for i, row in enumerate(self._proposal_rows)
                if resolved[row["joint_id"]].pending is None
            ]
            if decided:
                self.proposals.selected_data = set(decided)
                self.proposals.remove_selected()
                keep = [r for i, r in enumerate(self._proposal_rows) if i not in decided]
                self._proposal_rows = keep
        finally:
            self._loading = False

    # ------------------------------------------------------------------ review

    def _chosen_proposals(self, indices: set[int] | None) -> list[dict[str, Any]]:
        rows = self._proposal_rows
        chosen = indices if indices else set(range(len(rows)))
        return [rows[i] for i in sorted(chosen) if i < len(rows)]

    def accept(self, indices: set[int] | None = None) -> int:
        """Accept proposals (the selected ones, or all): a human revision confirming each, with
        the outline proposed for the same joint. One transaction: all or nothing."""
        if indices is None:
            indices = set(self.proposals.selected_data)
        rows = self._chosen_proposals(indices)
        changes = []
        with self.store.transaction():
            pending = self.store.resolved("centre", self.record.id)
            outlines = set(self.store.proposals("polygon", self.record.id))
            for row in rows:
                key = {"joint_id": row["joint_id"]}
                if pending[row["joint_id"]].pending is None:
                    continue  # decided meanwhile (a drag, an undo)
                changes.append(self._change("centre", key))
                self.store.confirm(
                    "centre",
                    self.record.id,
                    key,
                    self.annotator,
                    revision_id=int(row["revision_id"]),
                )
            chosen = {row["joint_id"] for row in rows} if indices else outlines
            for joint_id in sorted(chosen & outlines):
                key = {"joint_id": joint_id}
                changes.append(self._change("polygon", key))
                self.store.confirm("polygon", self.record.id, key, self.annotator)
            for joint_id in sorted(self.model_missing) if not indices else []:
                key = {"joint_id": joint_id}  # "not found by the model", accepted as not visible
                changes.append(self._change("centre", key))
                self.store.confirm("centre", self.record.id, key, self.annotator)
        self._push(changes)
        self.reload()
        self.on_change(f"accepted {len(changes)} proposal(s) - {self.guide_text()}")
        return len(changes)

    def reject(self, indices: set[int] | None = None) -> int:
        """Reject the selected proposals (a person's decision; the history keeps them)."""
        if indices is None:
            indices = set(self.proposals.selected_data)
        if not indices:
            self.on_change("Select proposals to reject (click them in the proposals layer).")
            return 0
        changes = []
        for row in self._chosen_proposals(indices):
            key = {"joint_id": row["joint_id"]}
            changes.append(self._change("centre", key))
            self.store.reject("centre", self.record.id, key, self.annotator)
        self._push(changes)
        self.reload()
        self.on_change(f"rejected {len(changes)} proposal(s)")
        return len(changes)

    def rename(self, joint_id: str) -> bool:
        """The selected committed point belongs to ``joint_id``: move the name, keep the point."""
        selected = sorted(self.points.selected_data)
        if len(selected) != 1:
            self.on_change("Select exactly one point to rename.")
            return False
        old = str(self.points.features["joint_id"][selected[0]])
        changes = rename_centre(self.store, self.record.id, old, joint_id, self.annotator)
        self._push(changes)
        self.reload()
        self.on_change(f"renamed {get_joint(old).name} to {get_joint(joint_id).name}")
        return True

    def set_score(self, joint_id: str, score_type: str, value: float) -> None:
        """A grade typed by the person (undoable)."""
        key = {"joint_id": joint_id, "score_type": score_type}
        change = self._change("score", key)
        self.store.set_score(self.record.id, joint_id, score_type, value, self._human)
        self._push([change])

    def review_score(self, joint_id: str, score_type: str, accept: bool) -> None:
        """Accept or reject the model's pending grade of one joint."""
        key = {"joint_id": joint_id, "score_type": score_type}
        change = self._change("score", key)
        if accept:
            self.store.confirm("score", self.record.id, key, self.annotator)
        else:
            self.store.reject("score", self.record.id, key, self.annotator)
        self._push([change])

    def accept_all_scores(self) -> int:
        pending = self.store.proposals("score", self.record.id)
        changes = []
        for joint_id, score_type in pending:
            key = {"joint_id": joint_id, "score_type": score_type}
            changes.append(self._change("score", key))
            self.store.confirm("score", self.record.id, key, self.annotator)
        self._push(changes)
        return len(changes)

    def undo(self) -> bool:
        return self._replay(self.undo_stack, self.redo_stack, "undone")

    def redo(self) -> bool:
        return self._replay(self.redo_stack, self.undo_stack, "redone")

    def _replay(self, source: list, target: list, what: str) -> bool:
        if not source:
            self.on_change(f"Nothing to be {what}.")
            return False
        changes = source.pop()
        with self.store.transaction():
            inverse = [restore(self.store, c, self.annotator) for c in reversed(changes)]
        target.append(inverse)
        self.reload()
        self.on_change(f"{what} {len(changes)} change(s) - {self.guide_text()}")
        return True

    def centre_of(self, joint_id: str) -> tuple[float, float] | None:
        """(row, column) of a joint's point (committed, else proposed), for centring the view."""
        for layer in (self.points, self.proposals):
            for j, yx in zip(layer.features.get("joint_id", []), layer.data, strict=True):
                if j == joint_id:
                    return float(yx[0]), float(yx[1])
        return None

    def close(self) -> None:
        for layer in self.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)


class UltrasoundSession(_Saving):
    """A grey-scale/Doppler pair side by side; one ROI box shown and editable on both."""

    GAP = 20  # px between the two images

    def __init__(
        self,
        viewer: Any,
        store: AnnotationStore,
        pair: dict[str, Any],
        annotator: str,
        on_change: Callable[[str], None] | None = None,
    ):
        self.viewer, self.store, self.pair, self.annotator = viewer, store, pair, annotator
        self.on_change = on_change or (lambda message: None)
        self._loading = False
        grey_rec = store.image(pair["greyscale_image_id"])
        dop_rec = store.image(pair["doppler_image_id"])
        title = f"{pair['patient_id']} {pair['site']}"
        g, gk, _ = image_layer_data(read_image(store.resolve(grey_rec)), name=f"{title} grey-scale")
        self._grey_pixels = g
        self.proposal: tuple[float, float, float, float] | None = None  # shown, not committed
        d, dk, _ = image_layer_data(read_image(store.resolve(dop_rec)), name=f"{title} Doppler")
        self.offset = float(g.shape[1] + self.GAP)
        self.grey_layer = viewer.add_image(g, **gk)
        self.doppler_layer = viewer.add_image(d, translate=(0, self.offset), **dk)
        self.roi_grey = viewer.add_shapes(
            name=f"ROI {title} grey-scale", metadata=self.layer_metadata, **ROI_STYLE
        )
        self.roi_doppler = viewer.add_shapes(
            name=f"ROI {title} Doppler",
            translate=(0, self.offset),
            metadata=self.layer_metadata,
            **ROI_STYLE,
        )
        self.heatmap_layers: list[Any] = []
        self.reload()
        for layer in (self.roi_grey, self.roi_doppler):
            layer.events.data.connect(self._roi_changed)
        viewer.reset_view()  # both images in view (one canvas: zoom and pan move both)
        record = self.latest_prediction()
        if record is not None:
            self.show_heatmaps(record, self.prediction_dir)
        viewer.layers.selection.active = self.roi_grey
        self.roi_grey.mode = "add_rectangle"

    @property
    def layers(self) -> list[Any]:
        return [
            self.grey_layer,
            self.doppler_layer,
            self.roi_grey,
            self.roi_doppler,
            *self.heatmap_layers,
        ]

    @property
    def image_id(self) -> int:
        """The grey-scale image stands for the pair in the image list."""
        return int(self.pair["greyscale_image_id"])

    @property
    def layer_metadata(self) -> dict[str, Any]:
        """Where the ROI layers' annotations live: the writer saves the pair's document (boxes
        and grades) from the store, under the grey-scale image that stands for the pair."""
        return {"ra_joints_project": str(self.store.root), "image_id": self.image_id}

    @property
    def prediction_dir(self) -> Path:
        """Where the dock keeps this pair's RATING output (grades, votes, heatmaps)."""
        return self.store.root / "predictions" / "ultrasound" / f"pair{self.pair['id']}"

    def latest_prediction(self) -> dict[str, Any] | None:
        """The RATING record of this pair from its last prediction (votes, heatmap files)."""
        import json

        found = sorted(self.prediction_dir.glob(f"*_pair{self.pair['id']}.json"))
        if not found:
            return None
        try:
            return json.loads(found[-1].read_text())
        except (OSError, ValueError):
            return None

    def grades(self) -> Any:
        """The pair's grades as :class:`~annotation_tools.store.Resolved` (committed and
        model proposal side by side)."""
        from annotation_tools.store import Resolved

        return self.store.resolved("us_score", self.pair["id"]).get(None, Resolved(None, None))

    def show_heatmaps(self, record: dict[str, Any], out: Path) -> None:
        """The integrated-gradients heatmaps over the ROI, each on the image of the input it
        explains: SH on the grey-scale image, vascularity and (hidden at first) SH's Doppler
        attribution on the Doppler image; the previous ones of this pair are replaced."""
        for layer in self.heatmap_layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.heatmap_layers = []
        x0, y0, x1, y1 = record["roi"]
        shown = (
            ("synovial_hypertrophy", 0.0, True),
            ("synovial_hypertrophy_doppler", self.offset, False),
            ("vascularity", self.offset, True),
        )
        for grade, offset, visible in shown:
            path = record.get("heatmaps", {}).get(grade)
            if not path or not (Path(out) / path).exists():
                continue
            heat = np.load(Path(out) / path)
            self.heatmap_layers.append(
                self.viewer.add_image(
                    heat,
                    name=f"IG {grade.replace('_', ' ')} {self.pair['patient_id']} "
                    f"{self.pair['site']}",
                    scale=((y1 - y0) / heat.shape[0], (x1 - x0) / heat.shape[1]),
                    translate=(y0, x0 + offset),
                    visible=visible,
                    **HEATMAP_STYLE,
                )
            )
        self.viewer.layers.selection.active = self.roi_grey

    def accept_grades(self) -> None:
        """Accept the model's grades of this pair as the person's."""
        self.store.confirm("us_score", self.pair["id"], {}, self.annotator)
        self.on_change("model grades accepted")

    def box(self) -> tuple[float, float, float, float] | None:
        """The ROI (x0, y0, x1, y1) in image pixels, from whichever layer holds one."""
        for layer in (self.roi_grey, self.roi_doppler):
            if len(layer.data):
                return box_from_layer(layer.data[-1])
        return None

    def _show(
        self, box: tuple[float, float, float, float] | None, *, proposed: bool = False
    ) -> None:
        """Show one box on both images: committed (yellow) or a proposal (the model's colour)."""
        style = PROPOSED_ROI_STYLE if proposed else ROI_STYLE
        self._loading = True
        try:
            for layer in (self.roi_grey, self.roi_doppler):
                layer.data = []
                if box is not None:
                    layer.add_rectangles(
                        box_to_layer(box),
                        edge_color=style["edge_color"],
                        edge_width=style["edge_width"],
                    )
                # a box the person draws next is theirs: it looks committed
                layer.current_edge_color = ROI_STYLE["edge_color"]
                layer.current_edge_width = ROI_STYLE["edge_width"]
        finally:
            self._loading = False
        self.proposal = box if proposed else None

    def committed_roi(self) -> Any:
        """The person's (or phantom truth) ROI revision of the pair, or None."""
        from annotation_tools.store import TRAINING_SOURCES

        return self.store.roi(self.pair["greyscale_image_id"], sources=TRAINING_SOURCES) or (
            self.store.roi(self.pair["doppler_image_id"], sources=TRAINING_SOURCES)
        )

    def proposed_roi(self) -> tuple[float, float, float, float] | None:
        """The proposal for a pair with no committed ROI: the newest model ROI revision (a
        ``--auto-roi`` run), else the joint-recess box found from the bone profile now."""
        rev = self.store.roi(self.pair["greyscale_image_id"], sources=("model",))
        if rev is not None:
            return tuple(rev.value[k] for k in ("x0", "y0", "x1", "y1"))
        from annotation_tools.us_roi import propose_roi

        try:
            return propose_roi(self._grey_pixels, self.pair["site"])
        except (ValueError, FileNotFoundError):  # no proposal: the person draws the box
            return None

    def reload(self) -> None:
        rev = self.committed_roi()
        if rev is not None and rev.status != "deleted":
            self._show(tuple(rev.value[k] for k in ("x0", "y0", "x1", "y1")))
        else:
            self._show(self.proposed_roi(), proposed=True)

    def accept_roi(self) -> int:
        """Commit the shown proposal, unchanged, as the annotator's ROI on both images."""
        if self.proposal is None:
            return 0
        box = self.proposal
        written = save_roi(self.store, self.pair["id"], box, self.annotator)
        self._show(box)
        self.on_change("proposed ROI accepted for both images")
        return written

    def _roi_changed(self, event: Any) -> None:
        if self._loading or str(getattr(event, "action", "changed")) not in ACTIONS_THAT_SAVE:
            return
        source = event.source
        if len(source.data):  # keep only the newest box, mirror it onto the other image
            self._show(box_from_layer(source.data[-1]))  # edited or drawn: the person's now
        elif self.proposal is not None:  # the proposal deleted: nothing to accept any more
            self._show(None)
        self.try_save()

    def save(self) -> int:
        if self.proposal is not None:  # an untouched proposal is not the person's box
            return 0
        box = self.box()
        if box is None:
            return 0
        written = save_roi(self.store, self.pair["id"], box, self.annotator)
        if written:
            self.on_change("ROI saved for both images")
        return written

    def set_grades(self, synovial_hypertrophy: int, vascularity: int) -> None:
        from annotation_tools.store import Provenance

        self.store.set_us_score(
            self.pair["id"], synovial_hypertrophy, vascularity, Provenance.human(self.annotator)
        )
        self.on_change(
            f"grades saved: SH {synovial_hypertrophy}, vascularity {vascularity}, combined "
            f"{max(synovial_hypertrophy, vascularity)}"
        )

    def close(self) -> None:
        for layer in self.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)


def _empty_features() -> dict[str, Any]:
    return {
        "joint_id": np.array([], dtype=object),
        "name": np.array([], dtype=object),
        "source": np.array([], dtype=object),
        "confidence": np.array([], dtype=float),
        "revision": np.array([], dtype=int),
        "revision_id": np.array([], dtype=int),
        "label": np.array([], dtype=object),
        "tooltip": np.array([], dtype=object),
        "set_width": np.array([], dtype=float),
    }


def _features(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    if not rows:
        return pd.DataFrame(_empty_features())
    frame = pd.DataFrame(rows)
    frame["confidence"] = frame["confidence"].astype(float)
    frame["set_width"] = frame["set_width"].astype(float)
    return frame
