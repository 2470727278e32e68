"""Annotate tab, radiograph part: the guide and the buttons that drive the guided order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout

from annotation_tools.vocabulary import get_joint

from .._keybindings import shortcuts_text

if TYPE_CHECKING:
    from .._session import RadiographSession
    from .._widget import RAJointsWidget


class AnnotatePanel(QGroupBox):
    """Which joint to click next, and previous / next / not visible / accept / outlines."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Annotate")
        self.dock = dock
        layout = QVBoxLayout(self)
        self.guide = QLabel("")
        self.guide.setStyleSheet("font-weight: bold")
        self.guide.setWordWrap(True)
        layout.addWidget(self.guide)
        grid = QGridLayout()
        self.buttons: dict[str, QPushButton] = {}
        for key, text, tip, slot in (
            ("previous", "Previous [B]", "Go back to the previous joint to place",
             self.previous_joint),
            ("next", "Next [N]", "Leave this joint for later and go to the next",
             self.next_joint),
            ("skip", "Not visible [V]", "This joint cannot be seen: mark it and move on",
             self.skip_joint),
            ("accept", "Accept [A]",
             "Confirm the selected predicted points (all if none selected)", self.accept),
            ("outline", "Draw joint spaces",
             "Draw one polygon per narrowing joint, in the guided order", self.draw_outlines),
        ):  # fmt: skip
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            self.buttons[key] = button
            index = len(self.buttons) - 1
            grid.addWidget(button, index // 3, index % 3)
        layout.addLayout(grid)
        shortcuts = QLabel(shortcuts_text())
        shortcuts.setWordWrap(True)
        shortcuts.setToolTip("Keyboard shortcuts work while the joint-centre layer is selected")
        layout.addWidget(shortcuts)

    def actions(self) -> dict[str, Any]:
        """Action name -> callable, for the key-binding registry."""
        return {
            "next_joint": self.next_joint,
            "previous_joint": self.previous_joint,
            "skip_joint": self.skip_joint,
            "accept": self.accept,
        }

    def _session(self) -> RadiographSession | None:
        return self.dock.radiograph_session()

    def next_joint(self) -> None:
        if session := self._session():
            session.next()

    def previous_joint(self) -> None:
        if session := self._session():
            session.previous()

    def skip_joint(self) -> None:
        if session := self._session():
            self.dock.guarded(session.skip)

    def accept(self) -> None:
        if session := self._session():
            selected = set(session.points.selected_data)
            self.dock.guarded(lambda: session.accept(selected))
            self.dock.project_panel.refresh()

    def draw_outlines(self) -> None:
        if session := self._session():
            self.dock.viewer.layers.selection.active = session.shapes
            session.shapes.mode = "add_polygon"
            joint = session.outline_next()
            self.dock.say(
                f"Draw the joint space of {get_joint(joint).name}; finish a polygon with a "
                "double-click"
                if joint
                else "Every narrowing joint has an outline."
            )

    def update_enabled(self, state: Any) -> None:
        for button in self.buttons.values():
            button.setEnabled(state.radiograph)
