"""Retrain tab: train a bundle on the project's reviewed annotations as a job that keeps
its log, and choose which version (shipped or retrained) Predict uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from annotation_tools.bundles import registry
from annotation_tools.retrain import model_versions, retrainable, weights_for

if TYPE_CHECKING:
    from .._widget import RAJointsWidget


def retrain_job(project: Path, bundle: Path, quick: bool) -> Any:
    """Worker: export + training in a subprocess; yields its log lines, returns the version."""
    from annotation_tools.retrain import iter_retrain

    yield from iter_retrain(project, bundle, quick=quick)
    return model_versions(project, bundle.name)[-1].name


class RetrainPanel(QGroupBox):
    """Export and train one bundle; per bundle, the weights Predict should use."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Retrain a bundle on this project's reviewed annotations")
        self.dock = dock
        self.worker: Any = None
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
            "Export human-reviewed annotations, train with the bundle's configs in a separate "
            "process, keep the weights as a new version under PROJECT/models/<bundle>/"
        )
        self.retrain_button.clicked.connect(self.retrain)
        row.addWidget(self.retrain_bundle)
        row.addWidget(self.retrain_quick)
        row.addWidget(self.retrain_button)
        layout.addLayout(row)
        form = QFormLayout()
        self.version_boxes: dict[str, QComboBox] = {}
        for name in retrainable(dock.bundles_dir):
            combo = QComboBox()
            combo.setToolTip(
                f"Weights used by Predict for {name}: shipped, or a version trained here"
            )
            self.version_boxes[name] = combo
            form.addRow(f"{name} weights", combo)
        layout.addLayout(form)
        self.train_log = QPlainTextEdit()
        self.train_log.setReadOnly(True)
        self.train_log.setMaximumBlockCount(2000)
        self.train_log.setToolTip("Output of the export and of the training process")
        layout.addWidget(self.train_log)

    def refresh_versions(self) -> None:
        store = self.dock.store
        for name, combo in self.version_boxes.items():
            current = combo.currentText()
            combo.clear()
            combo.addItem("shipped")
            if store is not None:
                combo.addItems([v.name for v in model_versions(store.root, name)])
            index = combo.findText(current)
            combo.setCurrentIndex(index if index >= 0 else combo.count() - 1)

    def chosen_weights(self) -> dict[str, Path | None]:
        """Bundle -> weights file Predict should use (None: the shipped weights)."""
        store = self.dock.store
        chosen: dict[str, Path | None] = {}
        for name, combo in self.version_boxes.items():
            version = combo.currentText()
            use_shipped = store is None or version in ("", "shipped")
            chosen[name] = None if use_shipped else weights_for(store.root, name, version)
        return chosen

    def retrain(self) -> None:
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error, show_warning

        dock = self.dock
        if dock.store is None:
            show_warning("Open a project first.")
            return
        bundle = registry(dock.bundles_dir)[self.retrain_bundle.currentText()].root
        self.train_log.clear()
        self.worker = create_worker(
            retrain_job, dock.store.root, bundle, self.retrain_quick.isChecked(),
            _progress={"desc": f"retraining {bundle.name}"},
        )  # fmt: skip
        self.worker.yielded.connect(self.train_log.appendPlainText)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(lambda exc: show_error(f"Retraining failed: {exc}"))
        self.worker.finished.connect(self._finished)
        dock.busy = True
        dock.update_enabled()
        self.worker.start()

    def _done(self, version: str) -> None:
        self.refresh_versions()
        self.dock.say(f"New model version {version}; Predict now uses it (Retrain tab to change).")

    def _finished(self) -> None:
        self.worker = None
        self.dock.busy = False
        self.dock.update_enabled()

    def update_enabled(self, state: Any) -> None:
        self.retrain_button.setEnabled(state.has_project and not state.busy)
