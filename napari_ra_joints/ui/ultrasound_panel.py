"""Annotate tab, ultrasound part: EULAR-OMERACT grades of the open pair - the person's, and
the model's proposal beside them with the ensemble's votes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QSpinBox

from .._layers import SOURCE_COLOURS, grade_set_face

if TYPE_CHECKING:
    from .._widget import RAJointsWidget


US_NAMES = (
    ("synovial_hypertrophy", "SH"),
    ("vascularity", "vascularity"),
    ("combined", "combined"),
)


def _set_text(grade_set: tuple[int, int] | None) -> str:
    """`` [1-2]`` (or `` [2]``) after a grade, as the radiograph Scores tab writes its sets."""
    if grade_set is None:
        return ""
    low, high = grade_set
    return f" [{low}]" if low == high else f" [{low}-{high}]"


def _grades_text(value: dict[str, Any], sets: dict[str, tuple[int, int]] | None = None) -> str:
    """``SH 2, vascularity 1, combined 2``; with a model's conformal ``sets``, each grade's
    set beside it (``SH 2 [1-2]``) so the reader sees what the model cannot rule out."""
    sets = sets or {}
    return ", ".join(f"{label} {value[k]}{_set_text(sets.get(k))}" for k, label in US_NAMES)


def sets_tooltip(rev: Any) -> tuple[str, int | None]:
    """The tooltip of a model revision's ultrasound grade sets (coverage, and that it is
    calibrated on phantoms) and the widest set's width; ``("", None)`` without sets (a
    person's grades, or an ensemble without a calibration)."""
    sets = rev.grade_sets if rev is not None and rev.is_model else {}
    if not sets:
        return "", None
    coverage = rev.value.get("coverage")
    level = f"{coverage:.0%} " if coverage else ""
    parts = ", ".join(
        f"{label} {sets[k][0]}" + (f"-{sets[k][1]}" if sets[k][1] != sets[k][0] else "")
        for k, label in US_NAMES
        if k in sets
    )
    text = (
        f"model grade sets ({level}coverage): {parts}\nA conformal set holds the grades the "
        "model cannot rule out; calibrated on phantoms (marginal coverage over pairs like the "
        "calibration cohort's), not a clinical guarantee."
    )
    return text, max(high - low for low, high in sets.values())


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
        self.proposal_label.setToolTip("")
        self.proposal_label.setStyleSheet(f"color: {SOURCE_COLOURS['model']}")
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
            sets = proposal.grade_sets if proposal.is_model else {}
            self.proposal_label.setText(
                f"Model proposal ({state}): {_grades_text(proposal.value, sets)}{extra}"
                + (f"\n{votes}" if votes else "")
            )
            tooltip, width = sets_tooltip(proposal)
            self.proposal_label.setToolTip(tooltip)
            if width:  # yellow for two grades, orange for three or more, as the Scores tab
                r, g, b, a = grade_set_face(width)
                self.proposal_label.setStyleSheet(
                    f"color: {SOURCE_COLOURS['model']}; background-color: "
                    f"rgba({int(r * 255)}, {int(g * 255)}, {int(b * 255)}, {int(a * 255)})"
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
