"""Annotate tab, ultrasound part: EULAR-OMERACT grades of the open pair - the person's, and
the model's proposal beside them with the ensemble's votes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QSpinBox

from .._layers import SOURCE_COLOURS

if TYPE_CHECKING:
    from .._widget import RAJointsWidget


def _grades_text(value: dict[str, Any]) -> str:
    return (
        f"SH {value['synovial_hypertrophy']}, vascularity {value['vascularity']}, "
        f"combined {value['combined']}"
    )


def votes_text(record: dict[str, Any] | None) -> str:
    """The members' votes and the MULTITUDE decision of RATING's last prediction."""
    if not record or "votes" not in record:
        return ""
    votes = record["votes"]
    return (
        f"votes SH {votes['synovial_hypertrophy']}, vascularity {votes['vascularity']} -> "
        f"MULTITUDE SH {record['synovial_hypertrophy']}, vascularity {record['vascularity']}"
    )


class GradesPanel(QGroupBox):
    """Synovial hypertrophy and Doppler vascularity (0-3); the combined grade is derived."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Ultrasound grades (EULAR-OMERACT)")
        self.dock = dock
        grid = QGridLayout(self)
        self.sh_spin, self.vasc_spin = QSpinBox(), QSpinBox()
        for spin, tip in (
            (self.sh_spin, "Synovial hypertrophy 0-3"),
            (self.vasc_spin, "Doppler vascularity 0-3 (must be 0 when SH is 0)"),
        ):
            spin.setRange(0, 3)
            spin.setToolTip(tip)
        self.save_grades_button = QPushButton("Save grades")
        self.save_grades_button.setToolTip(
            "Store SH and vascularity as your grades; the combined grade is derived"
        )
        self.save_grades_button.clicked.connect(self.save_grades)
        grid.addWidget(QLabel("SH"), 0, 0)
        grid.addWidget(self.sh_spin, 0, 1)
        grid.addWidget(QLabel("Vascularity"), 0, 2)
        grid.addWidget(self.vasc_spin, 0, 3)
        grid.addWidget(self.save_grades_button, 0, 4)
        self.committed_label = QLabel("")
        self.committed_label.setWordWrap(True)
        grid.addWidget(self.committed_label, 1, 0, 1, 5)
        self.proposal_label = QLabel("")
        self.proposal_label.setWordWrap(True)
        self.proposal_label.setStyleSheet(f"color: {SOURCE_COLOURS['model']}")
        grid.addWidget(self.proposal_label, 2, 0, 1, 4)
        self.accept_button = QPushButton("Accept model grades")
        self.accept_button.setToolTip("Take the model's proposal as your grades")
        self.accept_button.clicked.connect(self.accept)
        grid.addWidget(self.accept_button, 2, 4)
        self.roi_label = QLabel("")
        self.roi_label.setWordWrap(True)
        grid.addWidget(self.roi_label, 3, 0, 1, 4)
        self.accept_roi_button = QPushButton("Accept proposed ROI")
        self.accept_roi_button.setToolTip(
            "Take the proposed box over the joint recess (thin, model colour) as your ROI; "
            "moving or redrawing it saves your box instead"
        )
        self.accept_roi_button.clicked.connect(self.accept_roi)
        grid.addWidget(self.accept_roi_button, 3, 4)

    def load(self) -> None:
        """Fill the boxes from the open pair's committed grades, or reset them: the previous
        pair's grades must never be one Save away from this pair."""
        session = self.dock.ultrasound_session()
        self.sh_spin.setValue(0)
        self.vasc_spin.setValue(0)
        self.committed_label.setText("")
        self.proposal_label.setText("")
        self.accept_button.setEnabled(False)
        self.load_roi()
        if session is None:
            return
        grades = session.grades()
        if grades.committed is not None and grades.committed.status != "deleted":
            value = grades.committed.value
            self.show_grades(value["synovial_hypertrophy"], value["vascularity"])
            self.committed_label.setText(
                f"Committed ({grades.committed.source} {grades.committed.author}): "
                f"{_grades_text(value)}"
            )
        else:
            self.committed_label.setText("No grades by a person yet for this pair.")
        proposal = grades.proposal
        if proposal is not None:
            state = "waiting for you" if grades.pending is not None else "reviewed"
            uncertainty = proposal.value.get("uncertainty")
            extra = f", uncertainty {uncertainty:.2f}" if uncertainty is not None else ""
            votes = votes_text(session.latest_prediction())
            self.proposal_label.setText(
                f"Model proposal ({state}): {_grades_text(proposal.value)}{extra}"
                + (f"\n{votes}" if votes else "")
            )
            self.accept_button.setEnabled(grades.pending is not None)

    def load_roi(self) -> None:
        """Say whether the ROI shown is the person's or a proposal waiting for them."""
        session = self.dock.ultrasound_session()
        proposed = session is not None and session.proposal is not None
        self.accept_roi_button.setEnabled(proposed)
        if session is None:
            self.roi_label.setText("")
        elif proposed:
            self.roi_label.setText(
                "ROI: proposed over the joint recess (model colour) - accept it, or move or "
                "redraw it to save your own."
            )
            self.roi_label.setStyleSheet(f"color: {SOURCE_COLOURS['model']}")
        else:
            self.roi_label.setText("ROI: yours" if session.box() else "ROI: none - draw one.")
            self.roi_label.setStyleSheet("")

    def accept_roi(self) -> None:
        if (session := self.dock.ultrasound_session()) is not None:
            self.dock.guarded(session.accept_roi)
            self.load_roi()
            self.dock.project_panel.refresh()

    def show_grades(self, synovial_hypertrophy: int, vascularity: int) -> None:
        self.sh_spin.setValue(int(synovial_hypertrophy))
        self.vasc_spin.setValue(int(vascularity))

    def save_grades(self) -> None:
        from napari.utils.notifications import show_warning

        session = self.dock.ultrasound_session()
        if session is None:
            show_warning("Open an ultrasound pair first.")
            return
        sh, vasc = self.sh_spin.value(), self.vasc_spin.value()
        self.dock.guarded(lambda: session.set_grades(sh, vasc))
        self.load()
        self.dock.project_panel.refresh_open()

    def accept(self) -> None:
        if (session := self.dock.ultrasound_session()) is not None:
            self.dock.guarded(session.accept_grades)
            self.load()
            self.dock.project_panel.refresh_open()

    def update_enabled(self, state: Any) -> None:
        self.save_grades_button.setEnabled(state.ultrasound)
        if not state.ultrasound:
            self.accept_button.setEnabled(False)
            self.accept_roi_button.setEnabled(False)
