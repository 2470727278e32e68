"""Annotate tab, radiograph part: the guide, the joint picker, and the buttons that drive the
guided order and the review of model proposals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from annotation_tools.vocabulary import get_joint

from .._keybindings import shortcuts_text
from .._layers import SOURCE_COLOURS
from .joint_diagram import JointDiagram

if TYPE_CHECKING:
    from .._session import RadiographSession
    from .._widget import RAJointsWidget

STATE_MARKS = {"placed": "✓", "not visible": "✗", "proposed": "◇", "open": "·"}
STATE_COLOURS = {"proposed": SOURCE_COLOURS["model"], "not visible": "gray"}


class AnnotatePanel(QGroupBox):
    """Which joint to click next (the guide, or the person's choice in the picker), and the
    buttons for the guided order, proposals, undo and outlines."""

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
             "Accept the selected model proposals (all if none selected)", self.accept),
            ("reject", "Reject [R]", "Reject the selected model proposals", self.reject),
            ("rename", "Rename point", "Give the selected point the joint chosen in the list",
             self.rename),
            ("undo", "Undo [Ctrl+Z]", "Undo the last change (a new revision)", self.undo),
            ("redo", "Redo [Ctrl+Shift+Z]", "Redo what was undone", self.redo),
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
        self.picker = QListWidget()
        self.picker.setToolTip(
            "Joints of this limb: ✓ placed, ◇ model proposal, ✗ not visible, · open. Click one "
            "and the next click on the image places it (or moves its point)."
        )
        self.picker.setMaximumHeight(170)
        self.picker.itemClicked.connect(self._picked)
        self.picker_label = QLabel("Joints (click one to place it next)")
        layout.addWidget(self.picker_label)
        picking = QHBoxLayout()
        picking.addWidget(self.picker, 3)
        self.diagram = JointDiagram(self.pick)
        picking.addWidget(self.diagram, 2)
        layout.addLayout(picking)
        self.shortcuts = QLabel(shortcuts_text())
        self.shortcuts.setWordWrap(True)
        self.shortcuts.setToolTip("Keyboard shortcuts work while a joint-centre layer is selected")
        layout.addWidget(self.shortcuts)

    def actions(self) -> dict[str, Any]:
        """Action name -> callable, for the key-binding registry."""
        return {
            "next_joint": self.next_joint,
            "previous_joint": self.previous_joint,
            "skip_joint": self.skip_joint,
            "accept": self.accept,
            "reject": self.reject,
            "undo": self.undo,
            "redo": self.redo,
        }

    def _session(self) -> RadiographSession | None:
        return self.dock.radiograph_session()

    def load(self, session: RadiographSession) -> None:
        self.guide.setText(session.guide_text())
        self.refresh_picker(session)

    def refresh_picker(self, session: RadiographSession | None = None) -> None:
        """One row per joint with its state; the guided joint is selected."""
        session = session or self._session()
        self.picker.blockSignals(True)
        try:
            self.picker.clear()
            if session is None:
                self.diagram.show_limb(None, {}, None)
                return
            current = session.chosen_joint or (j.id if (j := session.current()) else None)
            states = session.joint_states()
            self.diagram.show_limb(session.record.limb, states, current)
            for joint_id, state in states.items():
                item = QListWidgetItem(f"{STATE_MARKS[state]} {get_joint(joint_id).name}")
                item.setData(Qt.UserRole, joint_id)
                item.setToolTip(f"{joint_id}: {state}")
                if state in STATE_COLOURS:
                    item.setForeground(QColor(STATE_COLOURS[state]))
                self.picker.addItem(item)
                if joint_id == current:
                    self.picker.setCurrentItem(item)
        finally:
            self.picker.blockSignals(False)

    def _picked(self, item: QListWidgetItem) -> None:
        self.pick(item.data(Qt.UserRole))

    def pick(self, joint_id: str) -> None:
        """The person chose a joint (list or diagram): the next click on the image places it."""
        if session := self._session():
            session.goto(joint_id)
            self.dock.viewer.layers.selection.active = session.points
            session.points.mode = "add"
            self.refresh_picker(session)

    def picked_joint(self) -> str | None:
        item = self.picker.currentItem()
        return item.data(Qt.UserRole) if item is not None else None

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
            selected = set(session.proposals.selected_data)
            self.dock.guarded(lambda: session.accept(selected))

    def reject(self) -> None:
        if session := self._session():
            selected = set(session.proposals.selected_data)
            self.dock.guarded(lambda: session.reject(selected))

    def rename(self) -> None:
        session, joint_id = self._session(), self.picked_joint()
        if session is not None and joint_id is not None:
            self.dock.guarded(lambda: session.rename(joint_id))

    def undo(self) -> None:
        if session := self._session():
            self.dock.guarded(session.undo)

    def redo(self) -> None:
        if session := self._session():
            self.dock.guarded(session.redo)

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
            button.setVisible(not state.ultrasound)  # an ultrasound pair has no joints to place
        self.picker.setEnabled(state.radiograph)
        self.picker.setVisible(not state.ultrasound)
        self.picker_label.setVisible(not state.ultrasound)
        self.shortcuts.setVisible(not state.ultrasound)
        if not state.radiograph:
            self.picker.clear()
            self.diagram.show_limb(None, {}, None)
