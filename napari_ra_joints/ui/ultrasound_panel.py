"""Annotate tab, ultrasound part: EULAR-OMERACT grades of the open pair."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox

if TYPE_CHECKING:
    from .._widget import RAJointsWidget


class GradesPanel(QGroupBox):
    """Synovial hypertrophy and Doppler vascularity (0-3); the combined grade is derived."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Ultrasound grades (EULAR-OMERACT)")
        self.dock = dock
        row = QHBoxLayout(self)
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
        self.dock.project_panel.refresh()

    def update_enabled(self, state: Any) -> None:
        self.save_grades_button.setEnabled(state.ultrasound)
