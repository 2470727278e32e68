"""The RA joints dock: project, guided annotation, prediction, review and scores.

All data work goes through :mod:`annotation_tools` (store, review, pipeline) and the MONAI
bundles; this module only arranges Qt controls and napari layers around them. Long work runs in
a napari worker thread with a progress bar and a cancel button, so the viewer never freezes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from annotation_tools.bundles import BUNDLES_DIR
from annotation_tools.review import annotation_queue, image_status
from annotation_tools.store import AnnotationStore, Provenance, StoreError
from annotation_tools.vocabulary import get_joint

from ._session import RadiographSession, UltrasoundSession

BUNDLE_WEIGHTS = {
    "ra_joint_locator": "models/model.pt",
    "ra_joint_scorer": "models/model.pt",
    "ra_us_rating": "models/ensemble.json",
    "ra_multitask_unet": "models/ensemble.json",
}
PIPELINES = {
    "two-stage (locator + scorer + symmetry)": "two-stage",
    "multi-task U-Net (one network)": "multitask",
}
SHORTCUTS = (
    "N next joint · B previous joint · V not visible (skip) · A accept selected predictions · "
    "drag a point to correct it · Delete removes the selected points"
)


def bundle_status(name: str, bundles_dir: Path = BUNDLES_DIR) -> tuple[bool, str]:
    """(available, reason): a bundle without weights is shown as "not available"."""
    path = Path(bundles_dir) / name
    if not (path / "configs" / "inference.json").exists():
        return False, f"{name}: not available (no bundle at {path})"
    if not (path / BUNDLE_WEIGHTS[name]).exists():
        return False, f"{name}: not available (no {BUNDLE_WEIGHTS[name]}; train it first)"
    return True, f"{name}: ready"


class RAJointsWidget(QWidget):
    """Dock widget: open a project, annotate in a guided order, predict, review, correct."""

    def __init__(self, napari_viewer: Any, bundles_dir: str | Path | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.bundles_dir = Path(bundles_dir or BUNDLES_DIR)
        self.store: AnnotationStore | None = None
        self.session: RadiographSession | UltrasoundSession | None = None
        self.worker: Any = None
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._project_box(), "Project")
        annotate = QWidget()
        annotate_layout = QVBoxLayout(annotate)
        annotate_layout.addWidget(self._annotate_box())
        annotate_layout.addWidget(self._ultrasound_box())
        annotate_layout.addStretch()
        self.tabs.addTab(annotate, "Annotate")
        self.tabs.addTab(self._predict_box(), "Predict")
        self.tabs.addTab(self._scores_box(), "Scores")
        self.tabs.addTab(self._retrain_box(), "Retrain")
        layout.addWidget(self.tabs)
        self.message = QLabel("Open a project folder to start.")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self._update_enabled()

    # ------------------------------------------------------------------ building the dock

    def _project_box(self) -> QGroupBox:
        box = QGroupBox("Project")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.project_edit = QLineEdit()
        self.project_edit.setPlaceholderText("project folder (holds ra_joints.sqlite)")
        self.project_edit.setToolTip("A project folder: images plus the annotation store")
        browse = QPushButton("Open…")
        browse.setToolTip("Choose a project folder")
        browse.clicked.connect(self._browse)
        self.project_edit.returnPressed.connect(lambda: self.open_project(self.project_edit.text()))
        row.addWidget(self.project_edit)
        row.addWidget(browse)
        form.addRow(row)
        self.annotator_edit = QLineEdit("annotator")
        self.annotator_edit.setToolTip("Your id: every edit is saved under it (human provenance)")
        form.addRow("Annotator", self.annotator_edit)
        filters = QHBoxLayout()
        self.patient_filter = QLineEdit()
        self.patient_filter.setPlaceholderText("patient contains…")
        self.patient_filter.setToolTip("Show only images of matching patients")
        self.limb_filter = QComboBox()
        self.limb_filter.addItems(["all", "LH", "RH", "LF", "RF", "ultrasound"])
        self.limb_filter.setToolTip("Show only one limb, or only ultrasound pairs")
        self.patient_filter.textChanged.connect(self.refresh_list)
        self.limb_filter.currentTextChanged.connect(self.refresh_list)
        filters.addWidget(self.patient_filter)
        filters.addWidget(self.limb_filter)
        form.addRow(filters)
        self.image_list = QListWidget()
        self.image_list.setToolTip(
            "Status: unannotated / predicted / corrected / done. Double-click to open."
        )
        self.image_list.itemDoubleClicked.connect(self._open_item)
        form.addRow(self.image_list)
        self.next_button = QPushButton("Annotate next")
        self.next_button.setToolTip(
            "Open the next image that is not done: most uncertain predictions first when there "
            "are predictions (active learning), list order otherwise"
        )
        self.next_button.clicked.connect(self.annotate_next)
        form.addRow(self.next_button)
        return box

    def _annotate_box(self) -> QGroupBox:
        box = QGroupBox("Annotate")
        layout = QVBoxLayout(box)
        self.guide = QLabel("")
        self.guide.setStyleSheet("font-weight: bold")
        self.guide.setWordWrap(True)
        layout.addWidget(self.guide)
        grid = QGridLayout()
        self.buttons: dict[str, QPushButton] = {}
        for key, text, tip, slot in (
            (
                "previous",
                "Previous [B]",
                "Go back to the previous joint to place",
                self.previous_joint,
            ),
            ("next", "Next [N]", "Leave this joint for later and go to the next", self.next_joint),
            (
                "skip",
                "Not visible [V]",
                "This joint cannot be seen: mark it and move on",
                self.skip_joint,
            ),
            (
                "accept",
                "Accept [A]",
                "Confirm the selected predicted points (all if none selected)",
                self.accept,
            ),
            (
                "outline",
                "Draw joint spaces",
                "Draw one polygon per narrowing joint, in the guided order",
                self.draw_outlines,
            ),
        ):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            self.buttons[key] = button
            index = len(self.buttons) - 1
            grid.addWidget(button, index // 3, index % 3)
        layout.addLayout(grid)
        shortcuts = QLabel(SHORTCUTS)
        shortcuts.setWordWrap(True)
        shortcuts.setToolTip("Keyboard shortcuts work while the joint-centre layer is selected")
        layout.addWidget(shortcuts)
        return box

    def _ultrasound_box(self) -> QGroupBox:
        box = QGroupBox("Ultrasound grades (EULAR-OMERACT)")
        row = QHBoxLayout(box)
        self.sh_spin, self.vasc_spin = QSpinBox(), QSpinBox()
        for spin, tip in (
            (self.sh_spin, "Synovial hypertrophy 0-3"),
            (self.vasc_spin, "Doppler vascularity 0-3 (must be 0 when SH is 0)"),
        ):
            spin.setRange(0, 3)
            spin.setToolTip(tip)
        self.save_grades_button = QPushButton("Save grades")
        self.save_grades_button.setToolTip(
            "Store SH and vascularity; the combined grade is derived"
        )
        self.save_grades_button.clicked.connect(self.save_grades)
        row.addWidget(QLabel("SH"))
        row.addWidget(self.sh_spin)
        row.addWidget(QLabel("Vascularity"))
        row.addWidget(self.vasc_spin)
        row.addWidget(self.save_grades_button)
        return box

    def _predict_box(self) -> QGroupBox:
        box = QGroupBox("Predict (results come back as editable layers)")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.predict_button = QPushButton("Predict patient")
        self.predict_button.setToolTip(
            "Radiograph: locate the joints on all of this patient's radiographs, then score "
            "them (symmetry stage, SHAP); ultrasound: grade the pair with integrated gradients"
        )
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running prediction at its next step")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.predict_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.pipeline_box = QComboBox()
        self.pipeline_box.addItems(list(PIPELINES))
        self.pipeline_box.setToolTip(
            "Radiographs: the two-stage pipeline (joint locator, then the patch scorer and the "
            "symmetry stage with SHAP) or the multi-task U-Net that locates and scores in one "
            "pass (docs/benchmarks.md compares them)"
        )
        form = QFormLayout()
        form.addRow("Radiograph pipeline", self.pipeline_box)
        layout.addLayout(form)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        layout.addWidget(self.progress)
        self.bundle_label = QLabel(
            "\n".join(bundle_status(n, self.bundles_dir)[1] for n in BUNDLE_WEIGHTS)
        )
        self.bundle_label.setToolTip("A bundle without weights is skipped; the rest still runs")
        layout.addWidget(self.bundle_label)
        return box

    def _scores_box(self) -> QGroupBox:
        box = QGroupBox("Scores of the current image")
        layout = QVBoxLayout(box)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["joint", "narrowing", "erosion", "source"])
        self.table.setToolTip("Edit a score to correct it; click a row to centre the joint")
        self.table.cellClicked.connect(self._centre_on_row)
        self.table.itemChanged.connect(self._score_edited)
        layout.addWidget(self.table)
        self.totals = QLabel("")
        layout.addWidget(self.totals)
        return box

    def _retrain_box(self) -> QGroupBox:
        from annotation_tools.retrain import RETRAINABLE

        box = QGroupBox("Retrain a bundle on this project's reviewed annotations")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.retrain_bundle = QComboBox()
        self.retrain_bundle.addItems(list(RETRAINABLE))
        self.retrain_bundle.setToolTip(
            "Which bundle to train; the ultrasound bundle trains with its scripts"
        )
        self.retrain_quick = QCheckBox("quick (CPU)")
        self.retrain_quick.setChecked(True)
        self.retrain_quick.setToolTip(
            "Quick configuration (2-core CPU); untick for the full one (GPU)"
        )
        self.retrain_button = QPushButton("Export and train")
        self.retrain_button.setToolTip(
            "Export human-reviewed annotations, train with the bundle's configs in a separate "
            "process, keep the weights as a new version under PROJECT/models/<bundle>/"
        )
        self.retrain_button.clicked.connect(self.retrain)
        row.addWidget(self.retrain_bundle)
        row.addWidget(self.retrain_quick)
        row.addWidget(self.retrain_button)
        layout.addLayout(row)
        form = QFormLayout()
        self.version_boxes: dict[str, QComboBox] = {}
        for name in RETRAINABLE:
            combo = QComboBox()
            combo.setToolTip(
                f"Weights used by Predict for {name}: shipped, or a version trained here"
            )
            self.version_boxes[name] = combo
            form.addRow(f"{name} weights", combo)
        layout.addLayout(form)
        self.train_log = QPlainTextEdit()
        self.train_log.setReadOnly(True)
        self.train_log.setMaximumBlockCount(2000)
        self.train_log.setToolTip("Output of the export and of the training process")
        layout.addWidget(self.train_log)
        return box

    def _refresh_versions(self) -> None:
        from annotation_tools.retrain import model_versions

        for name, combo in self.version_boxes.items():
            current = combo.currentText()
            combo.clear()
            combo.addItem("shipped")
            if self.store is not None:
                combo.addItems([v.name for v in model_versions(self.store.root, name)])
            index = combo.findText(current)
            combo.setCurrentIndex(index if index >= 0 else combo.count() - 1)

    def chosen_weights(self) -> dict[str, Path | None]:
        """Bundle -> weights file Predict should use (None: the shipped weights)."""
        from annotation_tools.retrain import weights_for

        chosen: dict[str, Path | None] = {}
        for name, combo in self.version_boxes.items():
            version = combo.currentText()
            use_shipped = self.store is None or version in ("", "shipped")
            chosen[name] = None if use_shipped else weights_for(self.store.root, name, version)
        return chosen

    def retrain(self) -> None:
        from napari.qt.threading import create_worker

        if self.store is None:
            show_warning("Open a project first.")
            return
        bundle = self.bundles_dir / self.retrain_bundle.currentText()
        self.train_log.clear()
        self.worker = create_worker(
            _retrain_job, self.store.root, bundle, self.retrain_quick.isChecked(),
            _progress={"desc": f"retraining {bundle.name}"},
        )  # fmt: skip
        self.worker.yielded.connect(self.train_log.appendPlainText)
        self.worker.returned.connect(self._retrain_done)
        self.worker.errored.connect(lambda exc: show_error(f"Retraining failed: {exc}"))
        self.worker.finished.connect(self._worker_finished)
        self.progress.setRange(0, 0)
        self._update_enabled()
        self.worker.start()

    def _retrain_done(self, version: str) -> None:
        self._refresh_versions()
        self._say(f"New model version {version}; Predict now uses it (Retrain tab to change).")

    # ------------------------------------------------------------------ project

    @property
    def annotator(self) -> str:
        return self.annotator_edit.text().strip() or "annotator"

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder")
        if folder:
            self.open_project(folder)

    def open_project(self, folder: str | Path) -> bool:
        """Open a project's store; a locked, newer or broken store is reported, not raised."""
        try:
            store = AnnotationStore.open(folder, create=False)
            store.images()  # a locked or unreadable store fails here, not later
        except (StoreError, OSError) as exc:
            show_error(f"Cannot open project {folder}: {exc}")
            self._say(f"Not opened: {exc}")
            return False
        self.close_image()
        if self.store is not None:
            self.store.close()
        self.store = store
        self.project_edit.setText(str(store.root))
        self.refresh_list()
        self._refresh_versions()
        self._say(f"Project {store.root}: {len(store.images())} images")
        self._update_enabled()
        return True

    def _entries(self) -> list[tuple[str, int, Any]]:
        """(kind, id, status) of every radiograph and every ultrasound pair, filtered."""
        if self.store is None:
            return []
        text = self.patient_filter.text().strip().lower()
        limb = self.limb_filter.currentText()
        entries = []
        if limb != "ultrasound":
            for record in self.store.images(modality="radiograph"):
                if text and text not in record.patient_id.lower():
                    continue
                if limb not in ("all", record.limb):
                    continue
                entries.append(("radiograph", record.id, image_status(self.store, record)))
        if limb in ("all", "ultrasound"):
            for pair in self.store.us_pairs():
                if text and text not in pair["patient_id"].lower():
                    continue
                record = self.store.image(pair["greyscale_image_id"])
                entries.append(("pair", pair["id"], image_status(self.store, record)))
        return entries

    def refresh_list(self) -> None:
        self.image_list.clear()
        for kind, ident, status in self._entries():
            record = status.image
            what = record.limb if kind == "radiograph" else "ultrasound"
            text = (
                f"[{status.status}] {record.patient_id} {what} "
                f"({status.annotated}/{status.total}) {Path(record.path).name}"
            )
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, (kind, ident))
            self.image_list.addItem(item)

    def _open_item(self, item: QListWidgetItem) -> None:
        kind, ident = item.data(Qt.UserRole)
        self.open_entry(kind, ident)

    def annotate_next(self) -> None:
        entries = self._entries()
        queue = annotation_queue([s for _, _, s in entries])
        if not queue:
            show_info("Every image in the list is done.")
            return
        first = queue[0]
        for kind, ident, status in entries:
            if status.image.id == first.image.id:
                self.open_entry(kind, ident)
                return

    def open_entry(self, kind: str, ident: int) -> None:
        if self.store is None:
            return
        self.close_image()
        try:
            if kind == "radiograph":
                record = self.store.image(ident)
                self.session = RadiographSession(
                    self.viewer, self.store, record, self.annotator, on_change=self._on_session
                )
                self._bind_keys(self.session.points)
                self.guide.setText(self.session.guide_text())
                self._fill_table()
                self.tabs.setCurrentIndex(1)
            else:
                pair = next(p for p in self.store.us_pairs() if p["id"] == ident)
                self.session = UltrasoundSession(
                    self.viewer, self.store, pair, self.annotator, on_change=self._say
                )
                grades = self.store.us_score(ident)
                if grades is not None:
                    self.sh_spin.setValue(int(grades.value["synovial_hypertrophy"]))
                    self.vasc_spin.setValue(int(grades.value["vascularity"]))
                self.guide.setText(f"Ultrasound {pair['patient_id']} {pair['site']}")
                self._say("Draw the ROI box on either image; it is shown and saved on both.")
                self.tabs.setCurrentIndex(1)
        except Exception as exc:  # a broken file must not take the viewer down
            show_error(f"Cannot open this image: {exc}")
            self._say(f"Not opened: {exc}")
            self.session = None
        self._update_enabled()

    def close_image(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except StoreError as exc:
                show_error(f"Could not save the last changes: {exc}")
            self.session = None
        self.table.setRowCount(0)

    # ------------------------------------------------------------------ annotation

    def _bind_keys(self, layer: Any) -> None:
        for key, slot in (
            ("n", self.next_joint),
            ("b", self.previous_joint),
            ("v", self.skip_joint),
            ("a", self.accept),
        ):
            layer.bind_key(key, lambda _layer, slot=slot: slot(), overwrite=True)

    def _on_session(self, message: str) -> None:
        self._say(message)

    def _radiograph(self) -> RadiographSession | None:
        return self.session if isinstance(self.session, RadiographSession) else None

    def next_joint(self) -> None:
        if session := self._radiograph():
            session.next()

    def previous_joint(self) -> None:
        if session := self._radiograph():
            session.previous()

    def skip_joint(self) -> None:
        if session := self._radiograph():
            self._guarded(session.skip)

    def accept(self) -> None:
        if session := self._radiograph():
            selected = set(session.points.selected_data)
            self._guarded(lambda: session.accept(selected))
            self.refresh_list()

    def draw_outlines(self) -> None:
        if session := self._radiograph():
            self.viewer.layers.selection.active = session.shapes
            session.shapes.mode = "add_polygon"
            joint = session.outline_next()
            self._say(
                f"Draw the joint space of {get_joint(joint).name}; finish a polygon with a "
                "double-click"
                if joint
                else "Every narrowing joint has an outline."
            )

    def save_grades(self) -> None:
        if not isinstance(self.session, UltrasoundSession):
            show_warning("Open an ultrasound pair first.")
            return
        session = self.session
        self._guarded(lambda: session.set_grades(self.sh_spin.value(), self.vasc_spin.value()))
        self.refresh_list()

    def _guarded(self, action: Any) -> Any:
        """Run a store-changing action; a refusal (bad grade, locked store) is shown, not raised."""
        try:
            return action()
        except (StoreError, ValueError) as exc:
            show_error(str(exc))
            self._say(f"Not saved: {exc}")
            return None

    # ------------------------------------------------------------------ scores table

    def _fill_table(self) -> None:
        session = self._radiograph()
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(0)
            if session is None or self.store is None:
                return
            scores = self.store.scores(session.record.id)
            totals = {"narrowing": 0.0, "erosion": 0.0}
            for joint in session.joints:
                row = self.table.rowCount()
                self.table.insertRow(row)
                name = QTableWidgetItem(joint.name)
                name.setData(Qt.UserRole, joint.id)
                name.setFlags(name.flags() & ~Qt.ItemIsEditable)
                self.table.setItem(row, 0, name)
                sources = set()
                for col, score_type in ((1, "narrowing"), (2, "erosion")):
                    rev = scores.get((joint.id, score_type))
                    text = f"{rev.value['value']:.2f}".rstrip("0").rstrip(".") if rev else ""
                    if rev:
                        totals[score_type] += float(rev.value["value"])
                        sources.add(rev.source)
                    item = QTableWidgetItem(text)
                    if score_type == "narrowing" and not joint.narrowing:
                        item.setFlags(item.flags() & ~Qt.ItemIsEditable)
                    self.table.setItem(row, col, item)
                source = QTableWidgetItem(", ".join(sorted(sources)))
                source.setFlags(source.flags() & ~Qt.ItemIsEditable)
                self.table.setItem(row, 3, source)
            both = totals["narrowing"] + totals["erosion"]
            self.totals.setText(
                f"Totals: narrowing {totals['narrowing']:.1f}, erosion {totals['erosion']:.1f}, "
                f"together {both:.1f}"
            )
        finally:
            self.table.blockSignals(False)

    def _score_edited(self, item: QTableWidgetItem) -> None:
        session = self._radiograph()
        if session is None or self.store is None or item.column() not in (1, 2):
            return
        joint_id = self.table.item(item.row(), 0).data(Qt.UserRole)
        score_type = "narrowing" if item.column() == 1 else "erosion"
        try:
            value = float(item.text())
        except ValueError:
            show_error(f"{item.text()!r} is not a number")
            self._fill_table()
            return
        store = self.store
        self._guarded(
            lambda: store.set_score(
                session.record.id, joint_id, score_type, value, Provenance.human(self.annotator)
            )
        )
        self._fill_table()
        session.reload()

    def _centre_on_row(self, row: int, _column: int) -> None:
        session = self._radiograph()
        if session is None:
            return
        centre = session.centre_of(self.table.item(row, 0).data(Qt.UserRole))
        if centre is not None:
            self.viewer.camera.center = centre
            self.viewer.camera.zoom = max(self.viewer.camera.zoom, 2.0)

    # ------------------------------------------------------------------ prediction

    def predict(self) -> None:
        """Run the bundles for the open image's patient (or pair) in a worker thread."""
        from napari.qt.threading import create_worker

        if self.store is None or self.session is None:
            show_warning("Open an image first.")
            return
        project = self.store.root
        if isinstance(self.session, RadiographSession):
            job, args = (
                _predict_radiographs,
                (
                    project,
                    self.session.record.patient_id,
                    self.bundles_dir,
                    self.chosen_weights(),
                    PIPELINES[self.pipeline_box.currentText()],
                ),
            )
        else:
            chosen = self.chosen_weights().get("ra_us_rating")
            job = _predict_ultrasound
            args = (
                project,
                self.session.pair,
                self.bundles_dir,
                50,
                8,
                chosen.parent if chosen else None,
            )
        self.worker = create_worker(job, *args, _progress={"desc": "RA joints prediction"})
        self.worker.yielded.connect(self._say)
        self.worker.returned.connect(self._prediction_done)
        self.worker.errored.connect(lambda exc: show_error(f"Prediction failed: {exc}"))
        self.worker.finished.connect(self._worker_finished)
        self.progress.setRange(0, 0)  # busy
        self._update_enabled()
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self._say("Cancelling after the current step…")

    def _worker_finished(self) -> None:
        self.worker = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self._update_enabled()

    def _prediction_done(self, result: dict[str, Any]) -> None:
        for warning in result.get("skipped", []):
            show_warning(warning)
        if isinstance(self.session, RadiographSession):
            self.session.reload()
            self._fill_table()
            shap_png = result.get("shap_png")
            if shap_png:
                from annotation_tools.imageio import read_image

                pixels = read_image(shap_png).pixels
                height = self.session.image_layer.data.shape[0]
                scale = height / pixels.shape[0]
                self.viewer.add_image(
                    pixels,
                    rgb=True,
                    name=f"SHAP {self.session.record.patient_id}",
                    scale=(scale, scale),
                    translate=(0, self.session.image_layer.data.shape[1] * 1.05),
                    opacity=0.9,
                )
        elif isinstance(self.session, UltrasoundSession):
            self.session.reload()
            self._show_heatmaps(result)
        self.refresh_list()
        self._say(result.get("message", "Prediction finished."))

    def _show_heatmaps(self, result: dict[str, Any]) -> None:
        session = self.session
        record = result.get("record")
        if not isinstance(session, UltrasoundSession) or not record:
            return
        x0, y0, x1, y1 = record["roi"]
        out = Path(result["output_dir"])
        for grade, offset in (("synovial_hypertrophy", 0.0), ("vascularity", session.offset)):
            path = record.get("heatmaps", {}).get(grade)
            if not path:
                continue
            heat = np.load(out / path)
            self.viewer.add_image(
                heat,
                name=f"IG {grade.replace('_', ' ')}",
                colormap="yellow",
                blending="additive",
                opacity=0.6,
                scale=((y1 - y0) / heat.shape[0], (x1 - x0) / heat.shape[1]),
                translate=(y0, x0 + offset),
            )
        self.sh_spin.setValue(int(record["synovial_hypertrophy"]))
        self.vasc_spin.setValue(int(record["vascularity"]))

    # ------------------------------------------------------------------ helpers

    def _update_enabled(self) -> None:
        has_project = self.store is not None
        radiograph = isinstance(self.session, RadiographSession)
        busy = self.worker is not None
        self.next_button.setEnabled(has_project)
        for button in self.buttons.values():
            button.setEnabled(radiograph)
        self.save_grades_button.setEnabled(isinstance(self.session, UltrasoundSession))
        self.predict_button.setEnabled(self.session is not None and not busy)
        self.cancel_button.setEnabled(busy)
        self.retrain_button.setEnabled(has_project and not busy)

    def _say(self, message: str) -> None:
        self.message.setText(message)
        if isinstance(self.session, RadiographSession):
            self.guide.setText(self.session.guide_text())

    def closeEvent(self, event: Any) -> None:
        self.close_image()
        super().closeEvent(event)


# ---------------------------------------------------------------------- worker jobs


def _retrain_job(project: Path, bundle: Path, quick: bool) -> Any:
    """Worker: export + training in a subprocess; yields its log lines, returns the version."""
    from annotation_tools.retrain import iter_retrain, model_versions

    yield from iter_retrain(project, bundle, quick=quick)
    return model_versions(project, bundle.name)[-1].name


def _predict_radiographs(
    project: Path,
    patient_id: str,
    bundles_dir: Path,
    weights: dict[str, Path | None] | None = None,
    pipeline: str = "two-stage",
) -> Any:
    """Worker: locator + scorer (+ symmetry and SHAP) on one patient; results in the store.
    ``weights``: per bundle, a retrained version's weights instead of the shipped ones;
    ``pipeline="multitask"``: the multi-task U-Net instead (same store revisions)."""
    from annotation_tools.locator import JointLocator
    from annotation_tools.pipeline import predict_store_patient
    from annotation_tools.scoring import JointScorer
    from annotation_tools.symmetry import plot_shap

    if pipeline == "multitask":
        chosen = (weights or {}).get("ra_multitask_unet")
        return (yield from _predict_multitask(project, patient_id, bundles_dir, chosen))
    skipped = []
    loaded: dict[str, Any] = {}
    for name, runner in (("ra_joint_locator", JointLocator), ("ra_joint_scorer", JointScorer)):
        yield f"loading the {name} bundle"
        ok, reason = bundle_status(name, bundles_dir)
        if ok:
            chosen = (weights or {}).get(name)
            loaded[name] = runner.from_bundle(
                bundles_dir / name, weights=str(chosen) if chosen else None
            )
        else:
            skipped.append(reason)
    locator, scorer = loaded.get("ra_joint_locator"), loaded.get("ra_joint_scorer")
    if locator is None and scorer is None:
        return {"skipped": skipped, "message": "No radiograph bundle is available."}
    yield f"predicting patient {patient_id}"
    result = predict_store_patient(project, patient_id, locator, scorer, explain=True)
    shap_png = None
    for patient in result.patients:
        if patient.shap is not None:
            shap_png = plot_shap(
                patient.shap,
                Path(project) / "predictions" / "shap" / f"{patient.patient_id}.png",
                title=f"SHAP of the symmetry stage - {patient.patient_id}",
                note="phantom-trained weights: not for clinical use",
            )
    located = sum(len(r.present()) for r in result.located)
    return {
        "skipped": skipped + [f"{path}: {reason}" for path, reason in result.failures],
        "shap_png": str(shap_png) if shap_png else None,
        "message": f"Predicted {located} joint centres and scores for {patient_id} in "
        f"{result.seconds:.1f} s (model revisions; edit or accept them)",
    }


def _predict_multitask(
    project: Path, patient_id: str, bundles_dir: Path, weights: Path | None = None
) -> Any:
    """Worker part: the multi-task U-Net on one patient; centres and scores in the store.
    ``weights``: a version retrained in the project instead of the shipped ensemble."""
    from annotation_tools.multitask import BUNDLE_NAME, MultitaskModel
    from annotation_tools.pipeline import predict_store_patient

    ok, reason = bundle_status(BUNDLE_NAME, bundles_dir)
    if not ok:
        return {"skipped": [reason], "message": reason}
    yield f"loading the {BUNDLE_NAME} bundle"
    model = MultitaskModel.from_bundle(
        bundles_dir / BUNDLE_NAME, weights=[weights] if weights else None
    )
    yield f"predicting patient {patient_id} (one network)"
    result = predict_store_patient(project, patient_id, None, None, multitask=model)
    located = sum(len(r.present()) for r in result.located)
    return {
        "skipped": [f"{path}: {reason}" for path, reason in result.failures],
        "shap_png": None,
        "message": f"Multi-task U-Net: {located} joint centres and their scores for "
        f"{patient_id} in {result.seconds:.1f} s (model revisions; edit or accept them)",
    }


def _predict_ultrasound(
    project: Path,
    pair: dict[str, Any],
    bundles_dir: Path,
    explain_steps: int = 50,
    explain_copies: int = 8,
    models_dir: Path | None = None,
) -> Any:
    """Worker: the RATING bundle's own inference config on the pair's patient, through MONAI's
    bundle API (``monai.bundle.run``), grades written to the store as model revisions;
    heatmaps from one member (RATING's 50 steps x 8 noisy copies by default). ``models_dir``:
    a retrained ensemble instead of the shipped one."""
    import json

    from annotation_tools.us_rating import run_bundle_inference

    ok, reason = bundle_status("ra_us_rating", bundles_dir)
    if not ok:
        return {"skipped": [reason], "message": reason}
    yield "grading the ultrasound pair (integrated gradients take a few seconds)"
    out = Path(project) / "predictions" / "ultrasound" / f"pair{pair['id']}"
    summary = run_bundle_inference(
        bundles_dir / "ra_us_rating",
        out,
        store=str(project),
        patient_id=pair["patient_id"],
        write_store=True,
        explain_members=1,
        explain_steps=explain_steps,
        explain_copies=explain_copies,
        **({"models_dir": str(models_dir)} if models_dir else {}),
    )
    record = None
    for path in out.glob("*.json"):
        if path.name.endswith(f"_pair{pair['id']}.json"):
            record = json.loads(path.read_text())
    skipped = [f"{f['case']}: {f['reason']}" for f in summary["failed"]]
    if record is None:
        return {"skipped": skipped, "message": "This pair could not be graded (see the warnings)."}
    return {
        "record": record,
        "output_dir": str(out),
        "skipped": skipped,
        "message": f"SH {record['synovial_hypertrophy']}, vascularity {record['vascularity']}, "
        f"combined {record['combined']} (uncertainty {record['uncertainty']:.2f}); a model "
        "revision - save grades to correct it",
    }
