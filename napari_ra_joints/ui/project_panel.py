"""Project tab: open a project, filter its images and pairs, open the next one to annotate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from annotation_tools.review import (
    QUEUE_STRATEGIES,
    ImageStatus,
    annotation_queue,
    image_status,
    queue_reason,
)

if TYPE_CHECKING:
    from .._widget import RAJointsWidget


class ProjectPanel(QGroupBox):
    """Project folder, annotator id, filters and the list of images with their status."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Project")
        self.dock = dock
        form = QFormLayout(self)
        row = QHBoxLayout()
        self.project_edit = QLineEdit()
        self.project_edit.setPlaceholderText("project folder (holds ra_joints.sqlite)")
        self.project_edit.setToolTip("A project folder: images plus the annotation store")
        browse = QPushButton("Open…")
        browse.setToolTip("Choose a project folder")
        browse.clicked.connect(self._browse)
        self.project_edit.returnPressed.connect(lambda: dock.open_project(self.project_edit.text()))
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
        self.patient_filter.textChanged.connect(self.refresh)
        self.limb_filter.currentTextChanged.connect(self.refresh)
        filters.addWidget(self.patient_filter)
        filters.addWidget(self.limb_filter)
        form.addRow(filters)
        self.image_list = QListWidget()
        self.image_list.setToolTip(
            "Status: unannotated / predicted / corrected / done. Double-click to open."
        )
        self.image_list.itemDoubleClicked.connect(self._open_item)
        form.addRow(self.image_list)
        next_row = QHBoxLayout()
        self.strategy_box = QComboBox()
        self.strategy_box.addItems(list(QUEUE_STRATEGIES))
        self.strategy_box.setToolTip(
            "How Annotate next chooses: least confident model proposals first (active "
            "learning), the first image not done, or at random"
        )
        self.next_button = QPushButton("Annotate next")
        self.next_button.setToolTip(
            "Open the next image that is not done (never the one already open), by the chosen "
            "strategy; the message says why it was chosen"
        )
        self.next_button.clicked.connect(self.annotate_next)
        next_row.addWidget(self.strategy_box)
        next_row.addWidget(self.next_button)
        form.addRow(next_row)

    @property
    def annotator(self) -> str:
        return self.annotator_edit.text().strip() or "annotator"

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder")
        if folder:
            self.dock.open_project(folder)

    def entries(self) -> list[tuple[str, int, ImageStatus]]:
        """(kind, id, status) of every radiograph and every ultrasound pair, filtered."""
        store = self.dock.store
        if store is None:
            return []
        text = self.patient_filter.text().strip().lower()
        limb = self.limb_filter.currentText()
        entries = []
        if limb != "ultrasound":
            for record in store.images(modality="radiograph"):
                if text and text not in record.patient_id.lower():
                    continue
                if limb not in ("all", record.limb):
                    continue
                entries.append(("radiograph", record.id, image_status(store, record)))
        if limb in ("all", "ultrasound"):
            for pair in store.us_pairs():
                if text and text not in pair["patient_id"].lower():
                    continue
                record = store.image(pair["greyscale_image_id"])
                entries.append(("pair", pair["id"], image_status(store, record)))
        return entries

    def refresh(self) -> None:
        """Rebuild the whole list (a project opened, a patient predicted, filters changed)."""
        self.image_list.clear()
        for kind, ident, status in self.entries():
            item = QListWidgetItem(_entry_text(kind, status))
            item.setData(Qt.UserRole, (kind, ident))
            self.image_list.addItem(item)

    def refresh_open(self) -> None:
        """Update only the open image's line: an edit changes one image's status, and
        rebuilding every line per click grows with the cohort (about 1-3 ms per image)."""
        store, session = self.dock.store, self.dock.session
        if store is None or session is None:
            return
        if (radiograph := self.dock.radiograph_session()) is not None:
            key, record = ("radiograph", radiograph.record.id), radiograph.record
        else:
            key, record = ("pair", session.pair["id"]), store.image(session.image_id)
        for i in range(self.image_list.count()):
            item = self.image_list.item(i)
            if tuple(item.data(Qt.UserRole)) == key:
                item.setText(_entry_text(key[0], image_status(store, record)))
                return

    def _open_item(self, item: QListWidgetItem) -> None:
        kind, ident = item.data(Qt.UserRole)
        self.dock.open_entry(kind, ident)

    def annotate_next(self) -> str | None:
        """Open the next image by the chosen strategy and say why; returns that reason."""
        from napari.utils.notifications import show_info

        entries = self.entries()
        strategy = self.strategy_box.currentText()
        open_now = self.dock.session.image_id if self.dock.session is not None else None
        queue = annotation_queue([s for _, _, s in entries], strategy)
        others = [s for s in queue if s.image.id != open_now]
        if not others:
            show_info(
                "Every image in the list is done."
                if not queue
                else "The open image is the only one not done."
            )
            return None
        first = others[0]
        reason = queue_reason(first, strategy)
        for kind, ident, status in entries:
            if status.image.id == first.image.id:
                self.dock.open_entry(kind, ident)
                self.dock.say(f"Annotate next ({strategy}): {reason}")
                return reason
        return None

    def update_enabled(self, state: Any) -> None:
        self.next_button.setEnabled(state.has_project)


def _entry_text(kind: str, status: ImageStatus) -> str:
    record = status.image
    what = record.limb if kind == "radiograph" else "ultrasound"
    return (
        f"[{status.status}] {record.patient_id} {what} "
        f"({status.counts_text()}) {Path(record.path).name}"
    )
