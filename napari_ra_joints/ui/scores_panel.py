"""Scores tab: every joint's narrowing and erosion for the open radiograph, editable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout

from annotation_tools.store import Provenance

if TYPE_CHECKING:
    from .._widget import RAJointsWidget


def _grade_text(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


class ScoresPanel(QGroupBox):
    """The scores table; an edited cell is a human revision, a clicked row centres the joint."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Scores of the current image")
        self.dock = dock
        layout = QVBoxLayout(self)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["joint", "narrowing", "erosion", "source"])
        self.table.setToolTip("Edit a score to correct it; click a row to centre the joint")
        self.table.cellClicked.connect(self._centre_on_row)
        self.table.itemChanged.connect(self._score_edited)
        layout.addWidget(self.table)
        self.totals = QLabel("")
        layout.addWidget(self.totals)

    def clear(self) -> None:
        self.table.setRowCount(0)

    def fill(self) -> None:
        session, store = self.dock.radiograph_session(), self.dock.store
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(0)
            if session is None or store is None:
                return
            scores = store.scores(session.record.id)
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
                    text = _grade_text(rev.value["value"]) if rev else ""
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
        from napari.utils.notifications import show_error

        session, store = self.dock.radiograph_session(), self.dock.store
        if session is None or store is None or item.column() not in (1, 2):
            return
        joint_id = self.table.item(item.row(), 0).data(Qt.UserRole)
        score_type = "narrowing" if item.column() == 1 else "erosion"
        try:
            value = float(item.text())
        except ValueError:
            show_error(f"{item.text()!r} is not a number")
            self.fill()
            return
        author = Provenance.human(self.dock.annotator)
        self.dock.guarded(
            lambda: store.set_score(session.record.id, joint_id, score_type, value, author)
        )
        self.fill()
        session.reload()

    def _centre_on_row(self, row: int, _column: int) -> None:
        session = self.dock.radiograph_session()
        if session is None:
            return
        centre = session.centre_of(self.table.item(row, 0).data(Qt.UserRole))
        if centre is not None:
            camera = self.dock.viewer.camera
            camera.center = centre
            camera.zoom = max(camera.zoom, 2.0)
