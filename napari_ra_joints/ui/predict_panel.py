"""Predict tab: run the bundles on the open patient or pair in a worker, with a progress bar
and a Cancel that stops between images; results come back as editable layers.

The work itself is :class:`annotation_tools.predict.PredictionService`; this panel only starts
its jobs in a napari worker and renders what they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from annotation_tools.bundles import registry
from annotation_tools.predict import (
    Cancelled,
    CancelToken,
    PatientPrediction,
    PredictionService,
    Progress,
    UltrasoundPrediction,
)

from .._layers import HEATMAP_STYLE

if TYPE_CHECKING:
    from .._widget import RAJointsWidget

PIPELINES = {
    "two-stage (locator + scorer + symmetry)": "two-stage",
    "multi-task U-Net (one network)": "multitask",
}


def radiograph_job(service: PredictionService, project: Path, patient_id: str, cancel: Any) -> Any:
    """Worker: the prediction service on one patient (yields its Progress, returns its result,
    or None when the person cancelled: the service stopped before an image)."""
    try:
        return (yield from service.iter_predict_patient(project, patient_id, cancel=cancel))
    except Cancelled:
        return None


def ultrasound_job(
    service: PredictionService,
    project: Path,
    pair: dict[str, Any],
    steps: int = 50,
    copies: int = 8,
) -> Any:
    """Worker: the RATING bundle on the pair's patient through the prediction service; grades
    become model revisions; heatmaps from one member (RATING's 50 steps x 8 noisy copies)."""
    yield Progress(0, 1, "grading the ultrasound pair (integrated gradients take a few seconds)")
    out = Path(project) / "predictions" / "ultrasound" / f"pair{pair['id']}"
    return service.grade_ultrasound(
        out,
        project=project,
        patient_id=pair["patient_id"],
        explain_steps=steps,
        explain_copies=copies,
        progress=False,  # the dock shows its own progress bar
    )


class PredictPanel(QGroupBox):
    """Predict / Cancel, the radiograph pipeline chooser, progress and bundle availability."""

    def __init__(self, dock: RAJointsWidget):
        super().__init__("Predict (results come back as editable layers)")
        self.dock = dock
        self.worker: Any = None
        self.cancel_token: CancelToken | None = None
        self._services: dict[tuple, PredictionService] = {}
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.predict_button = QPushButton("Predict patient")
        self.predict_button.setToolTip(
            "Radiograph: locate the joints on all of this patient's radiographs, then score "
            "them (symmetry stage, SHAP); ultrasound: grade the pair with integrated gradients"
        )
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(
            "Stop the running radiograph prediction before its next image (the images done "
            "keep their results)"
        )
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.predict_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.pipeline_box = QComboBox()
        self.pipeline_box.addItems(list(PIPELINES))
        self.pipeline_box.setToolTip(
            "Radiographs: the two-stage pipeline (joint locator, then the patch scorer and the "
            "symmetry stage with SHAP) or the multi-task U-Net that locates and scores in one "
            "pass (docs/benchmarks.md compares them)"
        )
        form = QFormLayout()
        form.addRow("Radiograph pipeline", self.pipeline_box)
        layout.addLayout(form)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        layout.addWidget(self.progress)
        self.bundle_label = QLabel(
            "\n".join(info.available()[1] for info in registry(dock.bundles_dir).values())
        )
        self.bundle_label.setToolTip("A bundle without weights is skipped; the rest still runs")
        layout.addWidget(self.bundle_label)

    @property
    def pipeline(self) -> str:
        return PIPELINES[self.pipeline_box.currentText()]

    def service(self, pipeline: str) -> PredictionService:
        """One service per pipeline and chosen weights: bundles load once, not per Predict."""
        by_task = {
            info.task: self.dock.retrain_panel.chosen_weights().get(name)
            for name, info in registry(self.dock.bundles_dir).items()
        }
        key = (pipeline, tuple(sorted((k, str(v)) for k, v in by_task.items())))
        if key not in self._services:  # other weights chosen: let the old models go
            self._services = {k: v for k, v in self._services.items() if k[0] != pipeline}
            self._services[key] = PredictionService(
                pipeline, bundles_dir=self.dock.bundles_dir, weights=by_task
            )
        return self._services[key]

    def predict(self) -> None:
        """Run the bundles for the open image's patient (or pair) in a worker thread."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        dock = self.dock
        if dock.store is None or dock.session is None:
            show_warning("Open an image first.")
            return
        project = dock.store.root
        self.cancel_token = None
        if (session := dock.radiograph_session()) is not None:
            self.cancel_token = CancelToken()
            args = (self.service(self.pipeline), project, session.record.patient_id)
            self.worker = create_worker(radiograph_job, *args, self.cancel_token)
        else:  # one pair is one step: nothing to stop between
            pair = dock.ultrasound_session().pair
            self.worker = create_worker(ultrasound_job, self.service("two-stage"), project, pair)
        self.worker.yielded.connect(self.show_progress)
        self.worker.returned.connect(self.show_result)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.progress.setRange(0, 0)  # busy until the first Progress arrives
        dock.busy = True
        dock.update_enabled()
        self.worker.start()

    def show_progress(self, event: Progress) -> None:
        self.progress.setRange(0, max(event.total, 1))
        self.progress.setValue(event.done)
        self.dock.say(event.message)

    def cancel(self) -> None:
        """The service stops before its next image; the job then returns None."""
        if self.worker is not None and self.cancel_token is not None:
            self.cancel_token.cancel()
            self.dock.say("Cancelling before the next image…")

    def _failed(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"Prediction failed: {exc}")
        self.dock.say(f"Prediction failed: {exc}")

    def _cancelled(self) -> None:
        """What was predicted before Cancel is in the store: show it."""
        if self.dock.session is not None:
            self.dock.session.reload()
        self.dock.scores_panel.fill()
        self.dock.project_panel.refresh()
        self.dock.say("Prediction cancelled; the images predicted before it keep their results.")

    def _finished(self) -> None:
        self.worker = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.dock.busy = False
        self.dock.update_enabled()

    def show_result(self, result: PatientPrediction | UltrasoundPrediction | None) -> None:
        from napari.utils.notifications import show_warning

        if result is None:
            self._cancelled()
            return
        dock = self.dock
        for warning in result.skipped:
            show_warning(warning)
        message = "Prediction finished."
        radiograph, ultrasound = dock.radiograph_session(), dock.ultrasound_session()
        if radiograph is not None and isinstance(result, PatientPrediction):
            radiograph.reload()
            dock.scores_panel.fill()
            message = result.message
            if result.shap_png:
                self._show_shap(result.shap_png)
        elif ultrasound is not None and isinstance(result, UltrasoundPrediction):
            ultrasound.reload()
            record = result.records.get(int(ultrasound.pair["id"]))
            if record is None:
                message = "This pair could not be graded (see the warnings)."
            else:
                self._show_heatmaps(record, result.output_dir)
                dock.grades_panel.show_grades(record["synovial_hypertrophy"], record["vascularity"])
                message = (
                    f"SH {record['synovial_hypertrophy']}, vascularity {record['vascularity']}, "
                    f"combined {record['combined']} (uncertainty {record['uncertainty']:.2f}); "
                    "a model revision - save grades to correct it"
                )
        dock.project_panel.refresh()
        dock.say(message)

    def _show_shap(self, png: Path) -> None:
        from annotation_tools.imageio import read_image

        session = self.dock.radiograph_session()
        pixels = read_image(png).pixels
        height, width = session.image_layer.data.shape[:2]
        scale = height / pixels.shape[0]
        self.dock.viewer.add_image(
            pixels,
            rgb=True,
            name=f"SHAP {session.record.patient_id}",
            scale=(scale, scale),
            translate=(0, width * 1.05),
            opacity=0.9,
        )

    def _show_heatmaps(self, record: dict[str, Any], out: Path) -> None:
        session = self.dock.ultrasound_session()
        x0, y0, x1, y1 = record["roi"]
        for grade, offset in (("synovial_hypertrophy", 0.0), ("vascularity", session.offset)):
            path = record.get("heatmaps", {}).get(grade)
            if not path:
                continue
            heat = np.load(Path(out) / path)
            self.dock.viewer.add_image(
                heat,
                name=f"IG {grade.replace('_', ' ')}",
                scale=((y1 - y0) / heat.shape[0], (x1 - x0) / heat.shape[1]),
                translate=(y0, x0 + offset),
                **HEATMAP_STYLE,
            )

    def update_enabled(self, state: Any) -> None:
        self.predict_button.setEnabled(state.has_image and not state.busy)
        self.cancel_button.setEnabled(self.worker is not None and self.cancel_token is not None)
