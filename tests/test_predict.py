"""The prediction service: determinate progress, a cancel that stops between images, the
store opened once and each image decoded once; the CLI and the dock call it."""

from __future__ import annotations

import shutil

import pytest
from helpers import unannotated_project

from annotation_tools.predict import Cancelled, CancelToken, PredictionService, Progress


@pytest.fixture(scope="module")
def service() -> PredictionService:
    return PredictionService("two-stage")


def _project(small_cohort, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    return project


def _model_centres(project, patient):
    from annotation_tools.store import AnnotationStore

    with AnnotationStore.open(project, create=False) as store:
        records = [r for r in store.images(modality="radiograph") if r.patient_id == patient]
        return {r.limb: len(store.centres(r.id, sources=["model"])) for r in records}


def test_one_patient_reads_each_image_once_and_opens_the_store_once(
    service, small_cohort, tmp_path, monkeypatch
):
    import annotation_tools.predict as predict_module
    import annotation_tools.scoring as scoring_module
    from annotation_tools.store import AnnotationStore

    project = _project(small_cohort, tmp_path)
    with AnnotationStore.open(project, create=False) as store:
        patient = store.patients()[0]
    reads, opens = [], []
    real_read, real_open = predict_module.read_image, AnnotationStore.open.__func__
    monkeypatch.setattr(predict_module, "read_image", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(scoring_module, "read_image", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(
        AnnotationStore,
        "open",
        classmethod(lambda cls, *a, **k: opens.append(a) or real_open(cls, *a, **k)),
    )
    events: list[Progress] = []
    prediction = service.predict_patient(project, patient, on_progress=events.append)
    assert len(reads) == 4 == len(set(map(str, reads)))  # four radiographs, each read once
    assert len(opens) == 1
    assert events[-1].done == events[-1].total == 5  # 4 radiographs + the scoring step
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert prediction.patient_id == patient and len(prediction.result.located) == 4
    assert prediction.shap_png is not None and prediction.shap_png.exists()
    assert set(prediction.shap_limbs) == {"LH", "RH", "LF", "RF"}  # one named figure per limb
    assert all(png.exists() for png in prediction.shap_limbs.values())
    assert "joint centres" in prediction.message
    # proposals beside the phantom truth (a person's centre would block them, the truth not)
    assert all(n > 0 for n in _model_centres(project, patient).values())


def test_cancel_stops_between_images_and_keeps_what_was_written(service, small_cohort, tmp_path):
    from annotation_tools.store import AnnotationStore

    project = unannotated_project(small_cohort, tmp_path / "project", patients=2)
    with AnnotationStore.open(project, create=False) as store:
        patient = store.patients()[1]
    token = CancelToken()

    def cancel_after_first_image(event: Progress) -> None:
        if event.done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        service.predict_patient(
            project, patient, on_progress=cancel_after_first_image, cancel=token
        )
    done = _model_centres(project, patient)
    assert sorted(n > 0 for n in done.values()) == [False, False, False, True]
    with AnnotationStore.open(project, create=False) as store:  # no scores: scoring never ran
        records = [r for r in store.images(modality="radiograph") if r.patient_id == patient]
        assert not any(store.scores(r.id, sources=["model"]) for r in records)


def test_folder_prediction_reports_progress_and_lists_bad_files(service, small_cohort, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(small_cohort / "radiographs", images)
    first = sorted(images.iterdir())[0]
    (images / f"broken_{first.name}").write_bytes(b"not an image")
    events: list[Progress] = []
    result = service.predict_folder(
        images, tmp_path / "out", explain=False, overlays=False, on_progress=events.append
    )
    assert [path for path, _ in result.failures] == [str(images / f"broken_{first.name}")]
    assert len(result.patients) == 3
    assert events[-1].done == events[-1].total and events[-1].message == "done"
    assert (tmp_path / "out" / "scores_ra2dream.csv").exists()


def test_folder_goes_patient_by_patient_and_a_cancel_keeps_the_finished_ones(
    service, small_cohort, tmp_path, monkeypatch
):
    """Each patient is read, scored and written before the next is read (no pixels of a
    finished patient are kept); progress counts images; a cancel heard at the second patient
    leaves the first one's row in the table and in summary.json."""
    import csv
    import json

    import annotation_tools.predict as predict_module

    images = tmp_path / "images"
    shutil.copytree(small_cohort / "radiographs", images)
    order: list[str] = []
    real_read = predict_module.read_image

    def read(path, *args, **kwargs):
        order.append(path.name.rsplit("_", 1)[0])
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(predict_module, "read_image", read)
    token = CancelToken()
    events: list[Progress] = []

    def on_progress(event: Progress) -> None:
        events.append(event)
        if event.message.startswith("S11-P0002: reading"):
            token.cancel()

    with pytest.raises(Cancelled):
        service.predict_folder(
            images, tmp_path / "out", explain=False, overlays=False,
            on_progress=on_progress, cancel=token,
        )  # fmt: skip
    assert order == ["S11-P0001"] * 4  # the second patient was never read
    assert [e.done for e in events if "reading" in e.message] == [0, 1, 2, 3, 4]
    assert {e.total for e in events} == {12}
    with open(tmp_path / "out" / "scores_ra2dream.csv", newline="") as handle:
        assert [row["Patient_ID"] for row in csv.DictReader(handle)] == ["S11-P0001"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [p["patient_id"] for p in summary["patients"]] == ["S11-P0001"]


def test_a_missing_bundle_is_named_not_fatal(small_cohort, tmp_path):
    project = _project(small_cohort, tmp_path)
    service = PredictionService("two-stage", bundles_dir=tmp_path / "nothing_here")
    prediction = service.predict_patient(project, "S11-P0001")
    assert {s.split(":")[0] for s in prediction.skipped} == {"locator", "scorer"}
    assert all("not available" in s for s in prediction.skipped)
    assert prediction.message == "No radiograph bundle is available."
    with pytest.raises(ValueError, match="pipeline must be one of"):
        PredictionService("three-stage")
