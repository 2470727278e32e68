"""Retrain tab: train a bundle on the project's reviewed annotations as a job of its own
(:mod:`annotation_tools.jobs`: a separate process that survives closing napari and registers
its version when it ends), follow it, and choose which version Predict uses.

A new version is listed when its training ends, but Predict switches to it only when the
person chooses it; the choice is kept in the project.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from annotation_tools.bundles import registry
from annotation_tools.jobs import RetrainJob, jobs, start_retrain
from annotation_tools.retrain import (
    choose_version,
    chosen_version,
    model_versions,
    retrainable,
    validation_figure,
    weights_for,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .._widget import RAJointsWidget

POLL_MS = 1000


class RetrainPanel(QGroupBox):
    """Start and follow a retraining job; per bundle, the weights Predict should use."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Retrain a bundle on this project's reviewed annotations")
        self.dock = dock
        self.job: RetrainJob | None = None
        self._shown_lines = 0
        self._announced: set[str] = set()
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.retrain_bundle = QComboBox()
        self.retrain_bundle.addItems(list(retrainable(dock.bundles_dir)))
        self.retrain_bundle.setToolTip("Which bundle to train on the reviewed annotations")
        self.retrain_quick = QCheckBox("quick (CPU)")
        self.retrain_quick.setChecked(True)
        self.retrain_quick.setToolTip(
            "Quick configuration (2-core CPU); untick for the full one (GPU)"
        )
        self.retrain_button = QPushButton("Export and train")
        self.retrain_button.setToolTip(
            "Export the reviewed annotations and train in a separate process (it goes on when "
            "napari is closed); the weights become a new version under PROJECT/models/<bundle>/"
        )
        self.retrain_button.clicked.connect(self.retrain)
        row.addWidget(self.retrain_bundle)
        row.addWidget(self.retrain_quick)
        row.addWidget(self.retrain_button)
        layout.addLayout(row)
        progress_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.setToolTip("Stop the job and its training processes")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        progress_row.addWidget(self.progress)
        progress_row.addWidget(self.cancel_button)
        layout.addLayout(progress_row)
        self.job_label = QLabel("No retraining job in this project.")
        self.job_label.setWordWrap(True)
        layout.addWidget(self.job_label)
        form = QFormLayout()
        self.version_boxes: dict[str, QComboBox] = {}
        for name in retrainable(dock.bundles_dir):
            combo = QComboBox()
            combo.setToolTip(
                f"Weights used by Predict for {name}: shipped, or a version trained here "
                "(kept in the project; a new version is used only once you choose it)"
            )
            combo.activated.connect(lambda _i, n=name: self._chose(n))
            self.version_boxes[name] = combo
            form.addRow(f"{name} weights", combo)
        layout.addLayout(form)
        self.train_log = QPlainTextEdit()
        self.train_log.setReadOnly(True)
        self.train_log.setMaximumBlockCount(2000)
        self.train_log.setToolTip(
            "The job's log without library warnings (the full log is in training/jobs/)"
        )
        layout.addWidget(self.train_log)
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)

    # ------------------------------------------------------------------ versions

    def refresh_versions(self) -> None:
        """List every version; select what the project says Predict uses (never the newest
        by itself). Then pick up the project's jobs."""
        store = self.dock.store
        self._list_versions(
            {n: chosen_version(store.root, n) if store else "shipped" for n in self.version_boxes}
        )
        if store is not None:
            found = jobs(store.root)
            self._announced = {j.id for j in found if not j.active}
            active = [j for j in found if j.active]
            self.follow(active[-1] if active else (found[-1] if found else None))

    def _list_versions(self, selected: dict[str, str]) -> None:
        """Fill every weights box with shipped + the project's versions, then select."""
        store = self.dock.store
        for name, combo in self.version_boxes.items():
            combo.clear()
            combo.addItem("shipped")
            if store is not None:
                combo.addItems([v.name for v in model_versions(store.root, name)])
            combo.setCurrentText(selected[name])

    def _chose(self, bundle: str) -> None:
        store = self.dock.store
        if store is None:
            return
        version = self.version_boxes[bundle].currentText()
        self.dock.guarded(lambda: choose_version(store.root, bundle, version))
        self.dock.say(f"Predict now uses {bundle} {version}.")

    def chosen_weights(self) -> dict[str, Path | None]:
        """Bundle -> weights file Predict should use (None: the shipped weights)."""
        store = self.dock.store
        chosen: dict[str, Path | None] = {}
        for name, combo in self.version_boxes.items():
            version = combo.currentText()
            use_shipped = store is None or version in ("", "shipped")
            chosen[name] = None if use_shipped else weights_for(store.root, name, version)
        return chosen

    # ------------------------------------------------------------------ jobs

    def retrain(self) -> RetrainJob | None:
        from napari.utils.notifications import show_error, show_warning

        dock = self.dock
        if dock.store is None:
            show_warning("Open a project first.")
            return None
        name = self.retrain_bundle.currentText()
        bundle = registry(dock.bundles_dir)[name].root
        in_use = self.version_boxes[name].currentText() or "shipped"
        baseline = {
            "version": in_use,
            "metric": validation_figure(dock.store.root, name, in_use),
        }
        try:
            job = self._start(bundle, baseline)
        except (RuntimeError, ValueError, OSError, LookupError) as exc:
            show_error(f"Retraining not started: {exc}")
            return None
        self.train_log.clear()
        self.follow(job)
        dock.say(f"Retraining {name} as job {job.id}; it goes on if napari is closed.")
        return job

    def _start(self, bundle: Any, baseline: dict[str, Any]) -> RetrainJob:
        """Start the job; a bundle that did not ship with the package needs the person's yes."""
        from annotation_tools.bundles import BundleNotTrusted

        from .trust import ask_to_trust

        dock = self.dock
        quick = self.retrain_quick.isChecked()
        try:
            return start_retrain(
                dock.store.root,
                bundle,
                quick=quick,
                baseline=baseline,
                trusted=dock.trusted_bundles,
            )
        except BundleNotTrusted as exc:
            if not ask_to_trust(dock, exc):
                raise
            dock.trusted_bundles = True
            return start_retrain(
                dock.store.root, bundle, quick=quick, baseline=baseline, trusted=True
            )

    def follow(self, job: RetrainJob | None) -> None:
        self.job = job
        self._shown_lines = 0
        self.train_log.clear()
        if job is None:
            self.job_label.setText("No retraining job in this project.")
            self.timer.stop()
            return
        self.poll()
        if job.active:
            self.timer.start()

    def poll(self) -> None:
        """Read the job file and the log (both written by the job process)."""
        if self.job is None:
            return
        self.job = job = self.job.refresh()
        self.progress.setValue(int(job.fraction() * 1000) if job.state != "done" else 1000)
        self.job_label.setText(job.summary())
        lines = job.tail(2000)
        new = lines[self._shown_lines :] if len(lines) >= self._shown_lines else lines
        for line in new:
            self.train_log.appendPlainText(line)
        self._shown_lines = len(lines)
        bar = self.train_log.verticalScrollBar()
        bar.setValue(bar.maximum())  # follow the newest line
        self.cancel_button.setEnabled(job.active)
        if not job.active:
            self.timer.stop()
            if job.id not in self._announced:
                self._announced.add(job.id)
                self._finished(job)

    def _finished(self, job: RetrainJob) -> None:
        # the new version is listed, not switched to
        self._list_versions({n: c.currentText() for n, c in self.version_boxes.items()})
        if job.finished_ok:
            # whether its predictions carry grade sets / radii: said, never left to guess
            calibration = f" {job.calibration}" if job.calibration else ""
            self.dock.say(
                f"New {job.bundle} version {job.version} is ready; choose it in the weights "
                f"box to predict with it.{calibration}"
            )
        else:
            self.dock.say(f"Retraining {job.state}: {job.error}")

    def cancel(self) -> None:
        if self.job is not None and self.job.active:
            self.job.cancel()
            self.dock.say("Cancelling the retraining job…")

    def update_enabled(self, state: Any) -> None:
        self.retrain_button.setEnabled(state.has_project)
        self.cancel_button.setEnabled(self.job is not None and self.job.active)
