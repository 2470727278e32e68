"""The RA joints dock: the panels of :mod:`napari_ra_joints.ui` around one open project.

This module holds what the panels share - the open project (its store), the open image (a
:class:`~napari_ra_joints._session.RadiographSession` or
:class:`~napari_ra_joints._session.UltrasoundSession`), whether a job is running - and the
actions that change it (open a project, open an image). Everything else is in a panel; all
data work is :mod:`annotation_tools` and the MONAI bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from annotation_tools.bundles import BundleNotFound, bundle_for
from annotation_tools.store import AnnotationStore, StoreError

from ._keybindings import bind_keys
from ._session import RadiographSession, UltrasoundSession
from .ui.annotate_panel import AnnotatePanel
from .ui.intake_panel import IntakePanel
from .ui.predict_panel import PIPELINES, PredictPanel
from .ui.project_panel import ProjectPanel
from .ui.retrain_panel import RetrainPanel
from .ui.scores_panel import ScoresPanel
from .ui.ultrasound_panel import GradesPanel

__all__ = ["PIPELINES", "RAJointsWidget", "bundle_status"]

TABS = ("Project", "Annotate", "Predict", "Scores", "Retrain")
LOCK_WAIT_S = 0.25  # the longest a save blocks the Qt thread when another program writes
RETRY_MS = 2000  # then the dock retries the save this often, saying so


def bundle_status(task: str, bundles_dir: str | Path | None = None) -> tuple[bool, str]:
    """(available, reason) of the bundle of a task: without weights it is "not available"."""
    try:
        return bundle_for(task, bundles_dir).available()
    except BundleNotFound as exc:
        return False, f"{task}: not available ({exc})"


@dataclass(frozen=True)
class DockState:
    """What the panels' buttons depend on."""

    has_project: bool
    has_image: bool
    radiograph: bool
    ultrasound: bool
    busy: bool


class RAJointsWidget(QWidget):
    """Dock widget: open a project, annotate in a guided order, predict, review, correct."""

    def __init__(self, napari_viewer: Any, bundles_dir: str | Path | None = None):
        super().__init__()
        self.viewer = napari_viewer
        # a folder of bundles instead of the shipped ones (as RA_JOINTS_BUNDLES would)
        self.bundles_dir = Path(bundles_dir) if bundles_dir else None
        # Bundles that did not ship with the package run only after the person agreed
        # (ui/trust.py); the answer holds while this dock lives.
        self.trusted_bundles = False
        # A locked store (another program writing): saves wait LOCK_WAIT_S at most on the Qt
        # thread, then retry on this timer; what the layers show is never dropped.
        self.save_retry = QTimer(self)
        self.save_retry.setInterval(RETRY_MS)
        self.save_retry.timeout.connect(self._retry_save)
        self.store: AnnotationStore | None = None
        self.session: RadiographSession | UltrasoundSession | None = None
        self.busy = False
        self.project_panel = ProjectPanel(self)
        self.intake_panel = IntakePanel(self)
        self.annotate_panel = AnnotatePanel(self)
        self.grades_panel = GradesPanel(self)
        self.predict_panel = PredictPanel(self)
        self.scores_panel = ScoresPanel(self)
        self.retrain_panel = RetrainPanel(self)
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        annotate = QWidget()
        annotate_layout = QVBoxLayout(annotate)
        annotate_layout.addWidget(self.annotate_panel)
        annotate_layout.addWidget(self.grades_panel)
        annotate_layout.addStretch()
        project = QWidget()
        project_layout = QVBoxLayout(project)
        project_layout.addWidget(self.project_panel)
        project_layout.addWidget(self.intake_panel)
        for name, page in zip(
            TABS,
            (
                project,
                annotate,
                self.predict_panel,
                self.scores_panel,
                self.retrain_panel,
            ),
            strict=True,
        ):
            self.tabs.addTab(page, name)
        layout.addWidget(self.tabs)
        self.message = QLabel("Open a project folder, or Add images… to start a new one.")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self.update_enabled()

    # ------------------------------------------------------------------ shared state

    @property
    def annotator(self) -> str:
        return self.project_panel.annotator

    def radiograph_session(self) -> RadiographSession | None:
        return self.session if isinstance(self.session, RadiographSession) else None

    def ultrasound_session(self) -> UltrasoundSession | None:
        return self.session if isinstance(self.session, UltrasoundSession) else None

    def state(self) -> DockState:
        return DockState(
            has_project=self.store is not None,
            has_image=self.session is not None,
            radiograph=self.radiograph_session() is not None,
            ultrasound=self.ultrasound_session() is not None,
            busy=self.busy,
        )

    def update_enabled(self) -> None:
        state = self.state()
        for panel in (
            self.project_panel,
            self.intake_panel,
            self.annotate_panel,
            self.grades_panel,
            self.predict_panel,
            self.retrain_panel,
        ):
            panel.update_enabled(state)

    def say(self, message: str) -> None:
        self.message.setText(message)
        if session := self.radiograph_session():
            self.annotate_panel.guide.setText(session.guide_text())
            self.annotate_panel.refresh_picker()

    def changed(self, message: str) -> None:
        """A session saved something: the message, and the lists that show status."""
        self.say(message)
        if self.session is not None and self.session.unsaved and not self.save_retry.isActive():
            self.save_retry.start()
        if message.startswith(("saved", "accepted", "rejected", "committed", "undone",
                               "redone", "renamed")):  # fmt: skip
            self.project_panel.refresh_open()
            if self.radiograph_session() is not None:
                self.scores_panel.fill()
        if self.ultrasound_session() is not None:  # a proposal edited becomes the person's
            self.grades_panel.load_roi()

    def guarded(self, action: Any) -> Any:
        """Run a store-changing action; a refusal (bad grade, locked store) is shown, not raised."""
        try:
            return action()
        except (StoreError, ValueError) as exc:
            show_error(str(exc))
            self.say(f"Not saved: {exc}")
            return None

    # ------------------------------------------------------------------ project and images

    def open_project(self, folder: str | Path) -> bool:
        """Open a project's store; a locked, newer or broken store is reported, not raised."""
        try:
            store = AnnotationStore.open(folder, create=False, timeout=LOCK_WAIT_S)
            store.images()  # a locked or unreadable store fails here, not later
        except (StoreError, OSError) as exc:
            show_error(f"Cannot open project {folder}: {exc}")
            self.say(f"Not opened: {exc}")
            return False
        if not self.close_image():
            store.close()
            return False
        if self.store is not None:
            self.store.close()
        self.store = store
        self.project_panel.project_edit.setText(str(store.root))
        self.project_panel.refresh()
        self.retrain_panel.refresh_versions()
        self.say(f"Project {store.root}: {len(store.images())} images")
        self.update_enabled()
        return True

    def open_entry(self, kind: str, ident: int) -> None:
        """Open a radiograph (``kind="radiograph"``, image id) or an ultrasound pair (pair id)."""
        if self.store is None or not self.close_image():
            return
        try:
            if kind == "radiograph":
                record = self.store.image(ident)
                self.session = RadiographSession(
                    self.viewer, self.store, record, self.annotator, on_change=self.changed
                )
                for layer in (self.session.points, self.session.proposals):
                    bind_keys(layer, self.annotate_panel.actions())
                self.annotate_panel.load(self.session)
                self.scores_panel.fill()
            else:
                pair = next(p for p in self.store.us_pairs() if p["id"] == ident)
                self.session = UltrasoundSession(
                    self.viewer, self.store, pair, self.annotator, on_change=self.changed
                )
                self.grades_panel.load()
                self.annotate_panel.guide.setText(f"Ultrasound {pair['patient_id']} {pair['site']}")
                self.say("Draw the ROI box on either image; it is shown and saved on both.")
            self.tabs.setCurrentIndex(TABS.index("Annotate"))
        except Exception as exc:  # a broken file must not take the viewer down
            show_error(f"Cannot open this image: {exc}")
            self.say(f"Not opened: {exc}")
            self.session = None
        self.update_enabled()

    def _retry_save(self) -> None:
        """Timer tick while the store is locked: save again what the layers show."""
        session = self.session
        if session is None or not session.unsaved:
            self.save_retry.stop()
            return
        if session.try_save():
            self.save_retry.stop()
            self.say("Saved: the store is free again; nothing was lost.")

    def close_image(self) -> bool:
        """Close the open image; refused (False) while its last edits could not be saved."""
        if self.session is not None:
            if self.session.unsaved and not self.session.try_save():
                show_error(
                    "Your last edits on this image are not saved yet: another program holds "
                    "the project's store. They are kept on screen and retried; close the "
                    "other program, then open the next image."
                )
                return False
            self.save_retry.stop()
            try:
                self.session.close()
            except StoreError as exc:
                show_error(f"Could not save the last changes: {exc}")
            self.session = None
        self.scores_panel.clear()
        self.grades_panel.load()
        return True

    def closeEvent(self, event: Any) -> None:
        if self.session is not None and self.session.unsaved and self.store is not None:
            self.store.set_lock_wait(10.0)  # closing: worth waiting for the lock once more
        if not self.close_image() and self.session is not None:
            self.session.close()  # napari is closing: the error above said what was lost
            self.session = None
        super().closeEvent(event)
