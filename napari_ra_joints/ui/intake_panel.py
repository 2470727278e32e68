"""Add images… on the Project tab: bring files or a folder into the project (created when the
dock has none yet) through :mod:`annotation_tools.intake`, in a napari worker thread.

The panel only starts ``iter_import_sources`` in a worker, moves its progress bar, shows the
report a person can read and copy, and lists the files whose limb nothing says with a combo
box each (the locator's suggestion preselected when it was asked); registering them is a
second intake call with those limbs. It never reimplements the intake.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from annotation_tools.intake import ImportReport, describe, iter_import_sources
from annotation_tools.progress import CancelToken, Progress

if TYPE_CHECKING:
    from .._widget import RAJointsWidget

CHOOSE = "choose…"
LIMBS = ("LH", "RH", "LF", "RF")
IMAGE_FILTER = "Images (*.dcm *.dicom *.png *.jpg *.jpeg *.tif *.tiff);;All files (*)"


class IntakePanel(QGroupBox):
    """Add images… / Add folder…, an optional cases table, progress, report, limb choices."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Bring images in")
        self.dock = dock
        self.worker: Any = None
        self.cancel_token: CancelToken | None = None
        self.report: ImportReport | None = None
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.add_files_button = QPushButton("Add images…")
        self.add_files_button.setToolTip(
            "Register DICOM (with or without extension), PNG, JPEG or TIFF files in the project "
            "(a new one if none is open); files are referenced, not copied"
        )
        self.add_files_button.clicked.connect(self.add_files)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.setToolTip(
            "Register every image under a folder (searched recursively, e.g. a PACS export "
            "with a DICOMDIR); a second import of the same folder adds nothing"
        )
        self.add_folder_button.clicked.connect(self.add_folder)
        row.addWidget(self.add_files_button)
        row.addWidget(self.add_folder_button)
        layout.addLayout(row)
        cases_row = QHBoxLayout()
        self.cases_edit = QLineEdit()
        self.cases_edit.setPlaceholderText("cases table (optional CSV)")
        self.cases_edit.setToolTip(
            "CSV with path (or file) and any of patient_id, limb, visit, modality, site, pair; "
            "it wins over DICOM tags and file names"
        )
        cases_button = QPushButton("Table…")
        cases_button.clicked.connect(self._browse_cases)
        cases_row.addWidget(self.cases_edit)
        cases_row.addWidget(cases_button)
        layout.addLayout(cases_row)
        self.decide_box = QCheckBox("Let the locator decide limbs nothing else labels")
        self.decide_box.setToolTip(
            "Runs the joint locator twice on each such file (as given and mirrored); unsure "
            "calls are listed below with the suggestion for you to confirm"
        )
        layout.addWidget(self.decide_box)
        progress_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(
            "Stop after the current file; the files imported so far stay in the project"
        )
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        progress_row.addWidget(self.progress)
        progress_row.addWidget(self.cancel_button)
        layout.addLayout(progress_row)
        self.report_text = QPlainTextEdit()
        self.report_text.setReadOnly(True)  # selectable and copyable
        self.report_text.setPlaceholderText("The import report appears here.")
        self.report_text.setToolTip("What was imported, already there, skipped and why")
        self.report_text.setMaximumHeight(140)  # the image list above keeps its room
        layout.addWidget(self.report_text)
        self.limb_table = QTableWidget(0, 3)
        self.limb_table.setHorizontalHeaderLabels(["file", "locator suggests", "limb"])
        self.limb_table.setToolTip("Files whose limb no table, tag or name says: choose it")
        self.limb_table.setMaximumHeight(140)
        self.limb_table.setVisible(False)
        layout.addWidget(self.limb_table)
        self.register_button = QPushButton("Register with the chosen limbs")
        self.register_button.clicked.connect(self.register_chosen)
        self.register_button.setVisible(False)
        layout.addWidget(self.register_button)

    # ------------------------------------------------------------------ choosing what to add

    def add_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Images to add", "", IMAGE_FILTER)
        if paths:
            self.import_images(paths)

    def add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to add")
        if folder:
            self.import_images([folder])

    def _browse_cases(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cases table", "", "CSV (*.csv)")
        if path:
            self.cases_edit.setText(path)

    def _project_folder(self) -> Path | None:
        """The open project's folder, or one the person chooses for a new project."""
        if self.dock.store is not None:
            return Path(self.dock.store.root)
        folder = QFileDialog.getExistingDirectory(self, "Project folder (new or existing)")
        return Path(folder) if folder else None

    # ------------------------------------------------------------------ the worker

    def import_images(
        self, paths: Sequence[str | Path], limbs: dict[str, str] | None = None
    ) -> bool:
        """Start the intake of ``paths`` in a worker; False when nothing was started."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        if self.dock.busy:
            show_warning("Wait for the running job to finish.")
            return False
        project = self._project_folder()
        if project is None:
            self.dock.say("Import cancelled: no project folder chosen.")
            return False
        cases = self.cases_edit.text().strip() or None
        decide = None
        if self.decide_box.isChecked():  # the dock's service: the locator loads once
            decide = self.dock.predict_panel.service("two-stage")
        self.cancel_token = CancelToken()
        self.worker = create_worker(
            iter_import_sources,
            project,
            [str(p) for p in paths],
            cases=cases,
            limbs=limbs,
            decide=decide,
            cancel=self.cancel_token,
        )
        self.worker.yielded.connect(self.show_progress)
        self.worker.returned.connect(self.show_report)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.progress.setRange(0, 0)  # busy until the walk has counted the files
        self.dock.busy = True
        self.dock.update_enabled()
        self.dock.say(f"Importing into {project}…")
        self.cancel_button.setEnabled(True)
        self.worker.start()
        return True

    def cancel(self) -> None:
        """Stop after the current file (the worker checks before each one)."""
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.cancel_button.setEnabled(False)
            self.dock.say("Cancelling the import after the current file…")

    def show_progress(self, event: Progress) -> None:
        if event.total:
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
        self.dock.say(event.message)

    def show_report(self, report: ImportReport) -> None:
        self.report = report
        self.report_text.setPlainText(describe(report, details=True))
        self._fill_limb_table(report)
        root = Path(report.project)
        if self.dock.store is None or Path(self.dock.store.root).resolve() != root.resolve():
            self.dock.open_project(root)
        else:
            self.dock.project_panel.refresh()
        self.dock.say(describe(report).splitlines()[0])

    def _failed(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"Import failed: {exc}")
        self.report_text.setPlainText(f"Import failed: {exc}")
        self.dock.say(f"Import failed: {exc}")

    def _finished(self) -> None:
        self.worker = None
        self.cancel_token = None
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.dock.busy = False
        self.dock.update_enabled()

    # ------------------------------------------------------------------ limb decisions

    def _fill_limb_table(self, report: ImportReport) -> None:
        waiting = report.needs_limb
        self.limb_table.setRowCount(len(waiting))
        for row, item in enumerate(waiting):
            name = QTableWidgetItem(Path(item["path"]).name)
            name.setToolTip(item["path"])
            self.limb_table.setItem(row, 0, name)
            suggested = item.get("suggested_limb")
            text = f"{suggested} ({item['confidence']:.2f})" if suggested else "not asked"
            hint = QTableWidgetItem(text)
            hint.setToolTip(item["reason"])
            self.limb_table.setItem(row, 1, hint)
            box = QComboBox()
            box.addItems([CHOOSE, *LIMBS])
            if suggested:
                box.setCurrentText(suggested)
            self.limb_table.setCellWidget(row, 2, box)
        self.limb_table.setVisible(bool(waiting))
        self.register_button.setVisible(bool(waiting))

    def chosen_limbs(self) -> dict[str, str]:
        """File -> limb the person chose (rows left at "choose…" are not registered)."""
        chosen = {}
        for row in range(self.limb_table.rowCount()):
            limb = self.limb_table.cellWidget(row, 2).currentText()
            if limb in LIMBS:
                chosen[self.limb_table.item(row, 0).toolTip()] = limb
        return chosen

    def register_chosen(self) -> bool:
        """Register the files whose limb was chosen (a second intake call on them only)."""
        chosen = self.chosen_limbs()
        if not chosen:
            self.dock.say("Choose a limb for at least one file first.")
            return False
        return self.import_images(list(chosen), limbs=chosen)

    def update_enabled(self, state: Any) -> None:
        for button in (self.add_files_button, self.add_folder_button, self.register_button):
            button.setEnabled(not state.busy)
