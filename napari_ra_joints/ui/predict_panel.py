"""Predict tab: run the bundles on the open patient or pair in a worker, with a progress bar
and a Cancel that stops between images; results come back as editable layers.

The work itself is :class:`annotation_tools.predict.PredictionService`; this panel only starts
its jobs in a napari worker and renders what they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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

from annotation_tools.bundles import BundleNotTrusted, registry
from annotation_tools.predict import (
    Cancelled,
    CancelToken,
    PatientPrediction,
    PredictionService,
    Progress,
    UltrasoundPrediction,
)

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
    steps: int | None = None,
    copies: int | None = None,
    whole_patient: bool = False,
    cancel: CancelToken | None = None,
) -> Any:
    """Worker: the RATING bundle on the open pair (or all the patient's pairs) through the
    prediction service; grades become model proposals; heatmaps from one member (the bundle's
    explanation settings unless ``steps`` / ``copies`` are given). Each pair's output goes to
    its own folder, so that reopening a pair shows its own heatmaps and votes."""
    pairs = [pair]
    if whole_patient:
        from annotation_tools.store import AnnotationStore

        with AnnotationStore.open(project, create=False) as store:
            pairs = store.us_pairs(pair["patient_id"])
    result = None
    for done, one in enumerate(pairs):
        if cancel is not None and cancel.cancelled:
            return None  # the pairs graded so far keep their proposals
        yield Progress(done, len(pairs), f"grading {one['patient_id']} {one['site']} "
                       "(integrated gradients take a few seconds)")  # fmt: skip
        out = Path(project) / "predictions" / "ultrasound" / f"pair{one['id']}"
        graded = service.grade_ultrasound(
            out,
            project=project,
            pair_id=int(one["id"]),
            explain_steps=steps,
            explain_copies=copies,
            progress=False,  # the dock shows its own progress bar
            auto_roi=True,  # a pair with no drawn box is graded on the proposal it shows
        )
        if int(one["id"]) == int(pair["id"]):
            result = graded
    yield Progress(len(pairs), len(pairs), "done")
    return result


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
        self.patient_pairs_button = QPushButton("Grade all pairs of the patient")
        self.patient_pairs_button.setToolTip(
            "Ultrasound: grade every pair of this patient (Predict grades the open pair only)"
        )
        self.patient_pairs_button.clicked.connect(lambda: self.predict(whole_patient=True))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(
            "Stop the running radiograph prediction before its next image (the images done "
            "keep their results)"
        )
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.predict_button)
        row.addWidget(self.patient_pairs_button)
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
        trusted = self.dock.trusted_bundles
        key = (pipeline, trusted, tuple(sorted((k, str(v)) for k, v in by_task.items())))
        if key not in self._services:  # other weights chosen: let the old models go
            self._services = {k: v for k, v in self._services.items() if k[0] != pipeline}
            self._services[key] = PredictionService(
                pipeline, bundles_dir=self.dock.bundles_dir, weights=by_task, trusted=trusted
            )
        return self._services[key]

    def trusts_bundles(self, pipeline: str, radiograph: bool) -> bool:
        """Ask (once per dock) before a bundle that did not ship with the package runs.

        Checked here on the Qt thread, before the worker starts: in the worker an untrusted
        bundle would only be skipped.
        """
        from annotation_tools.bundles import BundleNotFound

        from .trust import ask_to_trust

        service = self.service(pipeline)
        for task in service.radiograph_tasks if radiograph else ("ultrasound",):
            try:
                service.bundle(task)
            except BundleNotTrusted as exc:
                if not ask_to_trust(self.dock, exc):
                    return False
                self.dock.trusted_bundles = True
                service = self.service(pipeline)  # a service that may run it
            except BundleNotFound:
                pass  # reported as skipped by the job, like any missing bundle
        return True

    def predict(self, whole_patient: bool = False) -> None:
        """Run the bundles for the open image's patient (or the open pair, or all the patient's
        pairs) in a worker thread."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        dock = self.dock
        if dock.store is None or dock.session is None:
            show_warning("Open an image first.")
            return
        project = dock.store.root
        self.cancel_token = None
        radiograph = dock.radiograph_session() is not None
        pipeline = self.pipeline if radiograph else "two-stage"
        if not self.trusts_bundles(pipeline, radiograph):
            dock.say("Prediction not run: the bundle is not trusted.")
            return
        if (session := dock.radiograph_session()) is not None:
            self.cancel_token = CancelToken()
            args = (self.service(self.pipeline), project, session.record.patient_id)
            self.worker = create_worker(radiograph_job, *args, self.cancel_token)
        else:
            self.cancel_token = CancelToken() if whole_patient else None
            pair = dock.ultrasound_session().pair
            self.worker = create_worker(
                ultrasound_job,
                self.service("two-stage"),
                project,
                pair,
                whole_patient=whole_patient,
            )
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
            shap = result.shap_limbs.get(radiograph.record.limb) or result.shap_png
            if shap:
                self._show_shap(shap)
            dock.annotate_panel.load(radiograph)
        elif ultrasound is not None and isinstance(result, UltrasoundPrediction):
            ultrasound.reload()
            record = result.records.get(int(ultrasound.pair["id"]))
            if record is None:
                message = "This pair could not be graded (see the warnings)."
            else:
                ultrasound.show_heatmaps(record, result.output_dir)
                dock.grades_panel.load()
                message = (
                    f"Model proposal: SH {record['synovial_hypertrophy']}, vascularity "
                    f"{record['vascularity']}, combined {record['combined']} (uncertainty "
                    f"{record['uncertainty']:.2f}); accept it or save your own grades"
                )
        dock.project_panel.refresh()
        dock.say(message)

    def _show_shap(self, png: Path) -> None:
        from annotation_tools.imageio import read_image

        session = self.dock.radiograph_session()
        pixels = read_image(png).pixels
        height, width = session.image_layer.data.shape[:2]
        scale = height / pixels.shape[0]
        layer = self.dock.viewer.add_image(
            pixels,
            rgb=True,
            name=f"SHAP {session.record.patient_id}",
            scale=(scale, scale),
            translate=(0, width * 1.05),
            opacity=0.9,
        )
        session.add_extra_layer(layer)  # removed with the image; keys stay on the centres

    def update_enabled(self, state: Any) -> None:
        self.predict_button.setEnabled(state.has_image and not state.busy)
        self.predict_button.setText("Grade this pair" if state.ultrasound else "Predict patient")
        self.patient_pairs_button.setVisible(state.ultrasound)
        self.patient_pairs_button.setEnabled(state.ultrasound and not state.busy)
        self.cancel_button.setEnabled(self.worker is not None and self.cancel_token is not None)
