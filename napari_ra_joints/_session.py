"""An image of a project open in the viewer: its layers, kept in step with the annotation store.

Every edit is saved at once, in one transaction, as a ``human`` revision through
:mod:`annotation_tools.review`; there is no save button and nothing to lose when napari is
closed or killed. napari itself debounces: a drag reports "changing" while the mouse moves
(ignored here) and "changed" once when it is released (saved). Model predictions arrive as
``model`` revisions and are shown in the same editable layers; editing one writes a new
revision on top, accepting one writes a ``human`` revision that confirms it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from annotation_tools.imageio import read_image
from annotation_tools.review import save_centres, save_polygons, save_roi
from annotation_tools.store import AnnotationStore, ImageRecord, Revision
from annotation_tools.vocabulary import Joint, get_joint, joints_for_limb

from ._layers import (
    CENTRE_STYLE,
    OUTLINE_STYLE,
    ROI_STYLE,
    box_from_layer,
    box_to_layer,
    from_layer,
    image_layer_data,
    source_colour,
    to_layer,
)

ACTIONS_THAT_SAVE = ("added", "changed", "removed")


class _Saving:
    """Saving from a layer event: a refused save (locked store, bad value) is reported and the
    layer keeps what the user did, so the next edit can save it again."""

    on_change: Callable[[str], None]

    def save(self) -> int:
        raise NotImplementedError

    def _save_guarded(self) -> None:
        from annotation_tools.store import StoreError

        try:
            self.save()
        except (StoreError, ValueError) as exc:
            from napari.utils.notifications import show_error

            show_error(f"Not saved: {exc}")
            self.on_change(f"Not saved: {exc}")


class RadiographSession(_Saving):
    """A radiograph with a guided joint-centre Points layer and a joint-space Shapes layer."""

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
        self._loading = False
        data, kwargs, _ = image_layer_data(read_image(store.resolve(record)), name=self.title)
        self.image_layer = viewer.add_image(data, **kwargs)
        self.points = viewer.add_points(
            np.zeros((0, 2)),
            name=f"joint centres {self.title}",
            size=max(6, record.height // 120 if record.height else 10),
            border_width=0.2,
            **CENTRE_STYLE,
            features=_empty_features(),
            text={"string": "{label}", "size": 7, "color": "yellow", "translation": [-10, 0]},
            metadata=self.layer_metadata,
        )
        self.shapes = viewer.add_shapes(
            name=f"joint spaces {self.title}",
            **OUTLINE_STYLE,
            features={"joint_id": np.array([], dtype=object)},
            metadata=self.layer_metadata,
        )
        self.reload()
        self.points.events.data.connect(self._points_changed)
        self.shapes.events.data.connect(self._shapes_changed)
        self.points.mode = "add"
        viewer.layers.selection.active = self.points

    @property
    def title(self) -> str:
        return f"{self.record.patient_id} {self.record.limb}"

    @property
    def layer_metadata(self) -> dict[str, Any]:
        """Where the layer's annotations live: the writer saves them from the store."""
        return {"ra_joints_project": str(self.store.root), "image_id": self.record.id}

    def missing_text(self) -> str:
        """Joints the model could not find (stored as "not visible"): they have no point to
        show, so the guide names them."""
        newest = self.store.centres(self.record.id)
        missing = [
            get_joint(j).name
            for j, r in newest.items()
            if r.status == "not_visible" and r.is_model and j not in self.placed()
        ]
        return f"Not found by the model: {', '.join(missing)}" if missing else ""

    @property
    def layers(self) -> list[Any]:
        return [self.image_layer, self.shapes, self.points]

    # ------------------------------------------------------------------ store -> layers

    def reload(self) -> None:
        """Show the newest revision of every centre and outline, whoever made it."""
        self._loading = True
        try:
            newest = self.store.centres(self.record.id)
            # a person's "not visible" settles a joint; a model's does not: the guide asks for it
            self.not_visible = {
                j for j, r in newest.items() if r.status == "not_visible" and not r.is_model
            }
            scores = self.store.scores(self.record.id)
            present = [r for r in newest.values() if r.status == "present"]
            rows = [self._feature_row(r, scores) for r in present]
            self.points.data = to_layer([(r.value["x"], r.value["y"]) for r in present])
            self.points.features = _features(rows)
            self.points.border_color = [
                source_colour(r["source"], r["confidence"]) for r in rows
            ] or "red"
            self.points.refresh_text()
            polygons = self.store.polygons(self.record.id)
            self.shapes.data = []
            if polygons:
                self.shapes.add_polygons([to_layer(r.value["vertices"]) for r in polygons.values()])
                self.shapes.features = {"joint_id": np.array(list(polygons), dtype=object)}
        finally:
            self._loading = False
        self._update_guide()
        self._update_outline_guide()

    def _feature_row(self, rev: Revision, scores: dict) -> dict[str, Any]:
        joint = get_joint(rev.key)
        label = joint.name
        parts = [
            f"{t[0].upper()}{scores[(rev.key, t)].value['value']:.1f}"
            for t in ("narrowing", "erosion")
            if (rev.key, t) in scores
        ]
        if parts:
            label += " " + " ".join(parts)
        return {
            "joint_id": rev.key,
            "name": joint.name,
            "source": rev.source,
            "confidence": rev.value.get("confidence"),
            "revision": rev.revision,
            "label": label,
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

    def _update_guide(self) -> None:
        joint = self.current()
        if joint is not None:
            self.cursor = joint.index
        self.on_change(self.guide_text())

    def _apply_defaults(self) -> None:
        """The features the next added point gets: the guided joint's. Set just before each
        add, because napari resets the defaults to the last point's after adding."""
        joint = self.current()
        self.points.feature_defaults = {
            "joint_id": joint.id if joint else "",
            "name": joint.name if joint else "",
            "source": "human",
            "confidence": np.nan,
            "revision": 0,
            "label": joint.name if joint else "",
        }

    def guide_text(self) -> str:
        joint = self.current()
        done = len(self.placed() | self.not_visible)
        missing = self.missing_text()
        tail = f"\n{missing}" if missing else ""
        if joint is None:
            return f"All {len(self.joints)} joints placed or marked not visible.{tail}"
        return f"Click: {joint.name} ({done} of {len(self.joints)} done){tail}"

    def next(self) -> None:
        self.cursor = (self.cursor + 1) % len(self.joints)
        self._update_guide()

    def previous(self) -> None:
        self.cursor = (self.cursor - 1) % len(self.joints)
        done = self.placed() | self.not_visible
        for _ in range(len(self.joints)):  # step back to the previous open joint
            if self.joints[self.cursor].id not in done:
                break
            self.cursor = (self.cursor - 1) % len(self.joints)
        self._update_guide()

    def skip(self) -> None:
        """Mark the current joint "not visible" (saved at once) and move on."""
        joint = self.current()
        if joint is None:
            return
        self.not_visible.add(joint.id)
        self.save()
        self._update_guide()

    # ------------------------------------------------------------------ layers -> store

    def _points_changed(self, event: Any) -> None:
        if self._loading:
            return
        if str(getattr(event, "action", "")) == "adding":
            self._apply_defaults()
            return
        if str(getattr(event, "action", "changed")) not in ACTIONS_THAT_SAVE:
            return
        if str(event.action) == "added":
            self._label_new_points()
        self._save_guarded()

    def _label_new_points(self) -> None:
        """A click added a point: it got the guided joint's features; advance the guide. A click
        when every joint is done is undone with a message instead of inventing a joint."""
        features = self.points.features
        ids = list(features["joint_id"])
        if ids and not ids[-1]:
            self._loading = True
            try:
                last = len(ids) - 1
                self.points.selected_data = {last}
                self.points.remove_selected()
            finally:
                self._loading = False
            self.on_change("Every joint is placed or skipped; drag a point to correct it.")
            return
        self.points.features.loc[len(ids) - 1, "source"] = "human"
        self._update_guide()

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
        self._save_guarded()

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

    def save(self) -> int:
        """Write what the layers show (only changes) as human revisions; returns how many."""
        ids = [str(j) for j in self.points.features["joint_id"]]
        points = {
            j: (float(x), float(y))
            for j, (x, y) in zip(ids, from_layer(self.points.data), strict=True)
        }
        written = save_centres(
            self.store, self.record.id, points, self.annotator, not_visible=self.not_visible
        )
        outlines = {
            str(j): [(float(x), float(y)) for x, y in from_layer(shape)]
            for j, shape in zip(self.shapes.features["joint_id"], self.shapes.data, strict=True)
            if isinstance(j, str) and j
        }
        written += save_polygons(self.store, self.record.id, outlines, self.annotator)
        if written:
            self._refresh_sources()
            self.on_change(f"saved {written} change(s) - {self.guide_text()}")
        return written

    def _refresh_sources(self) -> None:
        """After saving, the edited points are human revisions: recolour them, keep the data."""
        newest = self.store.centres(self.record.id)
        self._loading = True
        try:
            features = self.points.features
            for i, joint_id in enumerate(features["joint_id"]):
                rev = newest.get(str(joint_id))
                if rev is not None:
                    features.loc[i, "source"] = rev.source
                    features.loc[i, "revision"] = rev.revision
            self.points.border_color = [
                source_colour(s, c)
                for s, c in zip(features["source"], features["confidence"], strict=True)
            ] or "red"
        finally:
            self._loading = False

    def accept(self, indices: set[int] | None = None) -> int:
        """Confirm model predictions (the selected points, or all model points): a human
        revision that points at the model revision it confirms."""
        features = self.points.features
        chosen = indices if indices else set(range(len(features)))
        accepted = 0
        for i in sorted(chosen):
            if features.loc[i, "source"] != "model":
                continue
            self.store.confirm(
                "centre",
                self.record.id,
                {"joint_id": str(features.loc[i, "joint_id"])},
                self.annotator,
            )
            accepted += 1
        self._refresh_sources()
        self.on_change(f"accepted {accepted} prediction(s)")
        return accepted

    def centre_of(self, joint_id: str) -> tuple[float, float] | None:
        """(row, column) of a joint's point, for centring the view."""
        for j, yx in zip(self.points.features["joint_id"], self.points.data, strict=True):
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
        d, dk, _ = image_layer_data(read_image(store.resolve(dop_rec)), name=f"{title} Doppler")
        self.offset = float(g.shape[1] + self.GAP)
        self.grey_layer = viewer.add_image(g, **gk)
        self.doppler_layer = viewer.add_image(d, translate=(0, self.offset), **dk)
        self.roi_grey = viewer.add_shapes(name=f"ROI {title} grey-scale", **ROI_STYLE)
        self.roi_doppler = viewer.add_shapes(
            name=f"ROI {title} Doppler", translate=(0, self.offset), **ROI_STYLE
        )
        self.reload()
        for layer in (self.roi_grey, self.roi_doppler):
            layer.events.data.connect(self._roi_changed)
        viewer.layers.selection.active = self.roi_grey
        self.roi_grey.mode = "add_rectangle"

    @property
    def layers(self) -> list[Any]:
        return [self.grey_layer, self.doppler_layer, self.roi_grey, self.roi_doppler]

    def box(self) -> tuple[float, float, float, float] | None:
        """The ROI (x0, y0, x1, y1) in image pixels, from whichever layer holds one."""
        for layer in (self.roi_grey, self.roi_doppler):
            if len(layer.data):
                return box_from_layer(layer.data[-1])
        return None

    def _show(self, box: tuple[float, float, float, float] | None) -> None:
        self._loading = True
        try:
            for layer in (self.roi_grey, self.roi_doppler):
                layer.data = []
                if box is not None:
                    layer.add_rectangles(box_to_layer(box))
        finally:
            self._loading = False

    def reload(self) -> None:
        rev = self.store.roi(self.pair["greyscale_image_id"]) or self.store.roi(
            self.pair["doppler_image_id"]
        )
        box = tuple(rev.value[k] for k in ("x0", "y0", "x1", "y1")) if rev else None
        self._show(box)

    def _roi_changed(self, event: Any) -> None:
        if self._loading or str(getattr(event, "action", "changed")) not in ACTIONS_THAT_SAVE:
            return
        source = event.source
        if len(source.data):  # keep only the newest box, mirror it onto the other image
            self._show(box_from_layer(source.data[-1]))
        self._save_guarded()

    def save(self) -> int:
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
        "label": np.array([], dtype=object),
    }


def _features(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    if not rows:
        return pd.DataFrame(_empty_features())
    frame = pd.DataFrame(rows)
    frame["confidence"] = frame["confidence"].astype(float)
    return frame
