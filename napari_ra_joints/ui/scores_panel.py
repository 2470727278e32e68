"""Scores tab: every joint's narrowing and erosion for the open radiograph - the committed
grade (a person's, the truth's or an accepted proposal) and the model's proposal beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from annotation_tools.vocabulary import patient_totals

from .._layers import SOURCE_COLOURS, grade_set_face, grade_sets_text

if TYPE_CHECKING:
    from .._widget import RAJointsWidget

# column -> (score type, what it shows)
COLUMNS = (
    ("joint", None, None),
    ("narrowing", "narrowing", "committed"),
    ("model N", "narrowing", "proposal"),
    ("erosion", "erosion", "committed"),
    ("model E", "erosion", "proposal"),
)


def _grade_text(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _cell_text(rev: Any) -> str:
    """``2.3`` or, for a model grade with a conformal set, ``2.3 [1-3]``."""
    text = _grade_text(rev.value["value"])
    if rev.value.get("set_low") is not None:
        low, high = rev.value["set_low"], rev.value["set_high"]
        text += f" [{low}]" if low == high else f" [{low}-{high}]"
    return text


class ScoresPanel(QGroupBox):
    """The scores table: type a grade in a committed column to set it (a human revision);
    double-click a model cell to accept that proposal; a clicked row centres the joint."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Scores of the current image")
        self.dock = dock
        layout = QVBoxLayout(self)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        self.table.setToolTip(
            "narrowing / erosion: the committed grade (type a whole number to set it); model "
            "N / model E: the model's pending proposal (double-click to accept it) and, in "
            "brackets, its conformal grade set (the grades it cannot rule out; yellow: two "
            "grades, orange: three or more)"
        )
        self.table.cellClicked.connect(self._centre_on_row)
        self.table.cellDoubleClicked.connect(self._accept_cell)
        self.table.itemChanged.connect(self._score_edited)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        self.accept_all_button = QPushButton("Accept all model grades")
        self.accept_all_button.setToolTip("Every pending model grade becomes your grade")
        self.accept_all_button.clicked.connect(self.accept_all)
        self.reject_button = QPushButton("Reject selected")
        self.reject_button.setToolTip("Turn down the model grades of the selected cells")
        self.reject_button.clicked.connect(self.reject_selected)
        row.addWidget(self.accept_all_button)
        row.addWidget(self.reject_button)
        layout.addLayout(row)
        self.totals = QLabel("")
        self.totals.setWordWrap(True)
        layout.addWidget(self.totals)

    def clear(self) -> None:
        self.table.setRowCount(0)
        self.totals.setText("")

    def fill(self) -> None:
        session, store = self.dock.radiograph_session(), self.dock.store
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(0)
            if session is None or store is None:
                return
            resolved = store.resolved("score", session.record.id)
            shown: dict[tuple[str, str], float] = {}
            for joint in session.joints:
                row = self.table.rowCount()
                self.table.insertRow(row)
                name = QTableWidgetItem(joint.name)
                name.setData(Qt.UserRole, joint.id)
                name.setFlags(name.flags() & ~Qt.ItemIsEditable)
                self.table.setItem(row, 0, name)
                for col, (_, score_type, what) in enumerate(COLUMNS[1:], start=1):
                    res = resolved.get((joint.id, score_type))
                    rev = None
                    if res is not None:
                        rev = res.committed if what == "committed" else res.pending
                    if rev is not None and rev.status == "deleted":
                        rev = None
                    item = QTableWidgetItem(_cell_text(rev) if rev else "")
                    if res is not None and res.current is not None:
                        shown[(joint.id, score_type)] = float(res.current.value["value"])
                    carries = joint.carries(score_type)
                    if what == "proposal" or not carries:
                        item.setFlags(item.flags() & ~Qt.ItemIsEditable)
                    if what == "proposal":
                        item.setForeground(QColor(SOURCE_COLOURS["model"]))
                        if rev is not None:
                            sets, width = grade_sets_text({score_type: rev})
                            item.setToolTip(
                                f"model {rev.author} {rev.version}: double-click to accept"
                                + (f"\n{sets}" if sets else "")
                            )
                            if width:
                                item.setBackground(QColor.fromRgbF(*grade_set_face(width)))
                    elif rev is not None:
                        item.setToolTip(f"{rev.source} {rev.author}, revision {rev.revision}")
                    if not carries:
                        item.setBackground(QColor(60, 60, 60))
                    self.table.setItem(row, col, item)
            totals = patient_totals(shown)
            self.totals.setText(
                f"Totals of what counts (committed, else the proposal): narrowing "
                f"{totals['Overall_narrowing']:.1f}, erosion {totals['Overall_erosion']:.1f}, "
                f"together {totals['Overall_Tol']:.1f}. Pending model grades: "
                f"{sum(r.pending is not None for r in resolved.values())}"
            )
        finally:
            self.table.blockSignals(False)

    def _cell(self, row: int, column: int) -> tuple[str, str, str] | None:
        if column == 0 or row < 0:
            return None
        _, score_type, what = COLUMNS[column]
        return self.table.item(row, 0).data(Qt.UserRole), score_type, what

    def _score_edited(self, item: QTableWidgetItem) -> None:
        from napari.utils.notifications import show_error

        session = self.dock.radiograph_session()
        cell = self._cell(item.row(), item.column())
        if session is None or cell is None or cell[2] != "committed":
            return
        joint_id, score_type, _ = cell
        text = item.text().strip()
        try:
            value = float(text)
        except ValueError:
            show_error(f"{text!r} is not a grade")
            self.fill()
            return
        if value != int(value):  # Sharp/van der Heijde grades are whole numbers
            show_error(f"{text}: Sharp/van der Heijde grades are whole numbers")
            self.fill()
            return
        self.dock.guarded(lambda: session.set_score(joint_id, score_type, int(value)))
        self.fill()
        session.reload()

    def _accept_cell(self, row: int, column: int) -> None:
        session = self.dock.radiograph_session()
        cell = self._cell(row, column)
        if session is None or cell is None or cell[2] != "proposal":
            return
        if not self.table.item(row, column).text():
            return
        joint_id, score_type, _ = cell
        self.dock.guarded(lambda: session.review_score(joint_id, score_type, accept=True))
        self.refresh_after_review()

    def accept_all(self) -> None:
        if (session := self.dock.radiograph_session()) is not None:
            count = self.dock.guarded(session.accept_all_scores)
            self.refresh_after_review()
            self.dock.say(f"accepted {count or 0} model grade(s)")

    def reject_selected(self) -> None:
        session = self.dock.radiograph_session()
        if session is None:
            return
        rejected = 0
        for index in self.table.selectedIndexes():
            cell = self._cell(index.row(), index.column())
            if cell is None or cell[2] != "proposal":
                continue
            if not self.table.item(index.row(), index.column()).text():
                continue
            joint_id, score_type, _ = cell
            self.dock.guarded(lambda j=joint_id, t=score_type: session.review_score(j, t, False))
            rejected += 1
        self.refresh_after_review()
        self.dock.say(f"rejected {rejected} model grade(s)")

    def refresh_after_review(self) -> None:
        self.fill()
        if (session := self.dock.radiograph_session()) is not None:
            session.reload()
        self.dock.project_panel.refresh_open()

    def _centre_on_row(self, row: int, _column: int) -> None:
        session = self.dock.radiograph_session()
        if session is None:
            return
        centre = session.centre_of(self.table.item(row, 0).data(Qt.UserRole))
        if centre is not None:
            camera = self.dock.viewer.camera
            camera.center = centre
            camera.zoom = max(camera.zoom, 2.0)
