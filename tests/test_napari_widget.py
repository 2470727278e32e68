"""The RA joints dock in a real viewer: guided annotation, autosave, predictions as editable
layers, human-in-the-loop provenance, export of corrections, bad input."""

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from helpers import unannotated_project  # noqa: E402


def _truth(cohort: Path, patient: str, limb: str) -> dict[str, tuple[float, float]]:
    from annotation_tools.store import AnnotationStore

    with AnnotationStore.open(cohort, create=False) as store:
        record = next(
            r
            for r in store.images(modality="radiograph")
            if (r.patient_id, r.limb) == (patient, limb)
        )
        return {
            k: (r.value["x"], r.value["y"])
            for k, r in store.centres(record.id).items()
            if r.status == "present"
        }


def _truth_roi(cohort: Path, pair: dict) -> tuple[float, float, float, float]:
    from annotation_tools.store import AnnotationStore

    with AnnotationStore.open(cohort, create=False) as store:
        source = next(p for p in store.us_pairs(pair["patient_id"]) if p["site"] == pair["site"])
        roi = store.roi(source["greyscale_image_id"]).value
    return roi["x0"], roi["y0"], roi["x1"], roi["y1"]


def _widget(viewer, **kwargs):
    from napari_ra_joints._widget import RAJointsWidget

    widget = RAJointsWidget(viewer, **kwargs)
    viewer.window.add_dock_widget(widget, name="RA joints")
    return widget


def _open(widget, limb: str):
    for i in range(widget.project_panel.image_list.count()):
        kind, ident = widget.project_panel.image_list.item(i).data(0x0100)  # Qt.UserRole
        if kind == "radiograph" and widget.store.image(ident).limb == limb:
            widget.open_entry(kind, ident)
            return widget.session
    raise AssertionError(f"no {limb} radiograph in the list")


def _noise_us_pair(store, folder, rng):
    """A grey-scale/Doppler pair of noise images of patient P1 at R_mcp_2, registered in
    ``store``: the smallest ultrasound pair the dock opens. Returns (pair, grey-scale image,
    Doppler image) ids."""
    from annotation_tools.imageio import write_png

    ids = []
    for name, modality in (("P1_gs.png", "us_greyscale"), ("P1_dp.png", "us_doppler")):
        path = write_png(folder / name, (rng.random((64, 80)) * 255).astype(np.uint8))
        ids.append(store.add_image(path, patient_id="P1", modality=modality))
    return store.add_us_pair(*ids, site="R_mcp_2"), *ids


def test_widget_is_in_the_manifest():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("napari-ra-joints")
    assert [w.display_name for w in manifest.contributions.widgets] == ["RA joints"]


def test_guided_session_saves_everything_and_reopens_it(make_napari_viewer, small_cohort, tmp_path):
    from annotation_tools.store import AnnotationStore
    from annotation_tools.vocabulary import joints_for_limb

    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    assert widget.open_project(project)
    assert widget.project_panel.image_list.item(0).text().startswith("[unannotated]")
    widget.project_panel.annotator_edit.setText("ann1")
    session = _open(widget, "LH")
    patient = session.record.patient_id
    truth = _truth(small_cohort, patient, "LH")
    order = [j.id for j in joints_for_limb("LH")]
    assert widget.annotate_panel.guide.text().startswith(f"Click: {session.current().name}")
    # click every joint in the guided order, except one marked "not visible"
    for joint_id in order:
        assert session.current().id == joint_id
        if joint_id == order[5]:
            widget.annotate_panel.skip_joint()
            continue
        x, y = truth[joint_id]
        session.points.add([[y, x]])
    assert session.current() is None and "All 22" in widget.annotate_panel.guide.text()
    # one joint-space polygon, drawn after "Draw joint spaces"
    widget.annotate_panel.draw_outlines()
    first_outline = session.outline_next()
    x, y = truth[first_outline]
    session.shapes.add_polygons(
        [np.array([[y - 4, x - 6], [y - 4, x + 6], [y + 4, x + 6], [y + 4, x - 6]])]
    )
    # an ROI pair
    widget.open_entry("pair", widget.store.us_pairs()[0]["id"])
    us = widget.session
    us.roi_doppler.add_rectangles(np.array([[100, 200], [300, 420]]))  # drawn on the Doppler side
    assert len(us.roi_grey.data) == 1  # ... and shown on the grey-scale image too
    widget.grades_panel.sh_spin.setValue(2)
    widget.grades_panel.vasc_spin.setValue(1)
    widget.grades_panel.save_grades()
    viewer.close()  # every edit was saved when it was made
    with AnnotationStore.open(project, create=False) as store:
        record = next(r for r in store.images(modality="radiograph") if r.limb == "LH")
        centres = store.centres(record.id)
        assert len(centres) == 22 and centres[order[5]].status == "not_visible"
        for joint_id, rev in centres.items():
            assert rev.source == "human" and rev.author == "ann1"
            if rev.status == "present":
                np.testing.assert_allclose(
                    (rev.value["x"], rev.value["y"]), truth[joint_id], atol=1e-6
                )
        (polygon,) = store.polygons(record.id).values()
        assert polygon.key == first_outline
        pair = store.us_pairs()[0]
        for image_id in (pair["greyscale_image_id"], pair["doppler_image_id"]):
            roi = store.roi(image_id).value
            assert (roi["x0"], roi["y0"], roi["x1"], roi["y1"]) == (200, 100, 420, 300)
        assert store.us_score(pair["id"]).value["combined"] == 2
    # reopen: everything comes back from the store
    viewer2 = make_napari_viewer()
    widget2 = _widget(viewer2)
    widget2.open_project(project)
    texts = [
        widget2.project_panel.image_list.item(i).text()
        for i in range(widget2.project_panel.image_list.count())
    ]
    # every joint settled, but no grades yet: not done (done counts the scores too)
    assert any(t.startswith("[corrected]") and " LH " in t and "centres 22/22" in t for t in texts)
    session2 = _open(widget2, "LH")
    assert len(session2.points.data) == 21 and session2.not_visible == {order[5]}
    assert list(session2.shapes.features["joint_id"]) == [first_outline]


def test_predictions_are_editable_model_revisions_and_export_takes_the_corrections(
    make_napari_viewer, small_cohort, tmp_path
):
    from annotation_tools.export import export_dataset
    from annotation_tools.store import AnnotationStore
    from annotation_tools.vocabulary import get_joint
    from napari_ra_joints._widget import bundle_status

    project = unannotated_project(small_cohort, tmp_path / "project", patients=2)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    session = _open(widget, "LH")
    result = _predict_patient(widget)
    widget.predict_panel.show_result(result)
    # proposals come back in their own layer; nothing is committed yet
    assert len(session.proposals.data) >= 20 and len(session.points.data) == 0
    assert set(session.proposals.features["source"]) == {"model"}
    assert any(layer.name.startswith("SHAP") for layer in viewer.layers)
    assert viewer.layers.selection.active is session.points  # the keys still work
    assert (
        widget.scores_panel.table.rowCount() == 22 and "Totals" in widget.scores_panel.totals.text()
    )
    # every model grade keeps its conformal set in its own revision (#24), and the dock shows
    # it: in the Scores table, in the point's tooltip, and as the point's fill
    model_grades = [r for r in widget.store.scores(session.record.id).values() if r.is_model]
    assert model_grades and all(r.value["set_low"] <= r.value["set_high"] for r in model_grades)
    assert {r.value["coverage"] for r in model_grades} == {0.9}
    cells = [
        widget.scores_panel.table.item(row, col).text()
        for row in range(22)
        for col in (2, 4)
        if widget.scores_panel.table.item(row, col).text()
    ]
    assert cells and all("[" in text for text in cells)
    features = session.proposals.features
    assert all("model grade sets (90% coverage)" in t for t in features["tooltip"])
    filled = np.asarray(session.proposals.face_color)[:, 3] > 0
    assert list(filled) == [w >= 1 for w in features["set_width"]]
    moved, accepted = session.proposals.features["joint_id"][:2]
    # drag one proposal 6 px (a correction), accept another
    data = session.proposals.data.copy()
    data[0] += 6
    session.proposals.data = data
    index = list(session.proposals.features["joint_id"]).index(accepted)
    session.proposals.selected_data = {index}
    widget.annotate_panel.accept()
    assert {moved, accepted} == set(session.points.features["joint_id"])
    assert moved not in set(session.proposals.features["joint_id"])
    with AnnotationStore.open(project, create=False) as store:
        history = store.centre_history(session.record.id, moved)
        assert [r.source for r in history] == ["model", "human"]
        assert history[1].value["x"] == pytest.approx(history[0].value["x"] + 6)
        confirmed = store.centre_history(session.record.id, accepted)
        assert [r.source for r in confirmed] == ["model", "human"]
        assert confirmed[1].confirms == confirmed[0].id
        export = export_dataset(store, "locator", tmp_path / "export", folds=2)
    # the dock's layers save as the store's image JSON (napari's File > Save Layers)
    import napari

    (saved,) = napari.save_layers(
        str(tmp_path / "lh.json"), [session.points, session.shapes], plugin="napari-ra-joints"
    )
    document = json.loads(Path(saved).read_text())
    assert document["format"] == "napari-ra-joints/image-annotations"
    by_joint = {e["joint_id"]: e for e in document["joint_centres"]}
    assert by_joint[moved]["provenance"]["source"] == "human"
    assert {e["provenance"]["source"] for e in by_joint.values()} == {"human", "model"}
    items = json.loads(Path(export.datalists[0]).read_text())["training"]
    (item,) = [i for i in items if i["limb"] == "LH"]
    # the corrected and the accepted joint only: no prediction nobody reviewed
    assert set(item["centres"]) == {get_joint(moved).site, get_joint(accepted).site}
    # ultrasound: every bundle that exists is covered
    if bundle_status("ultrasound")[0]:
        pair = widget.store.us_pairs()[0]
        widget.open_entry("pair", pair["id"])
        x0, y0, x1, y1 = _truth_roi(small_cohort, pair)
        widget.session.roi_grey.add_rectangles(np.array([[y0, x0], [y1, x1]]))  # the annotator
        us_result = _predict_pair(widget, pair, 4, 1)
        widget.predict_panel.show_result(us_result)
        assert any(layer.name.startswith("IG") for layer in viewer.layers)
        with AnnotationStore.open(project, create=False) as store:
            assert store.us_score(pair["id"], sources=["model"]) is not None
            assert store.us_score(pair["id"], sources=["human"]) is None


def _run_job(generator):
    """Run a worker job to its end in this thread (the GUI runs it in a napari worker)."""
    from annotation_tools.predict import Progress

    events = []
    try:
        while True:
            events.append(next(generator))
    except StopIteration as stop:
        assert events and all(isinstance(e, Progress) for e in events)
        assert all(0 <= e.done <= e.total for e in events)  # determinate progress
        return stop.value


def _predict_patient(widget, pipeline="two-stage"):
    """The dock's Predict job for the open radiograph's patient, run in this thread."""
    from napari_ra_joints.ui.predict_panel import radiograph_job

    job = radiograph_job(
        widget.predict_panel.service(pipeline),
        widget.store.root,
        widget.session.record.patient_id,
        None,
    )
    return _run_job(job)


def _predict_pair(widget, pair, steps, copies):
    """The dock's Predict job for an ultrasound pair, run in this thread."""
    from napari_ra_joints.ui.predict_panel import ultrasound_job

    service = widget.predict_panel.service("two-stage")
    return _run_job(ultrasound_job(service, widget.store.root, pair, steps, copies))


def test_prediction_runs_in_a_worker_with_progress(
    make_napari_viewer, small_cohort, tmp_path, qtbot
):
    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    session = _open(widget, "RF")
    widget.predict_panel.predict()
    assert (
        widget.predict_panel.worker is not None
        and not widget.predict_panel.predict_button.isEnabled()
    )
    qtbot.waitUntil(lambda: widget.predict_panel.worker is None, timeout=120_000)
    assert widget.predict_panel.predict_button.isEnabled()
    assert len(session.proposals.data) >= 5 and "Predicted" in widget.message.text()


def test_screenshot_shows_the_overlays(make_napari_viewer, small_cohort, tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    widget.open_project(small_cohort)
    _open(widget, "LH")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    assert shot.std() > 10
    red = (shot[..., 0] > 150) & (shot[..., 1] < 100) & (shot[..., 2] < 100)
    green = (shot[..., 1] > 120) & (shot[..., 0] < 100)
    assert red.sum() > 20 and green.sum() > 20  # joint markers and joint-space outlines


def test_bad_input_is_reported_and_changes_nothing(
    make_napari_viewer, small_cohort, tmp_path, monkeypatch
):
    from annotation_tools.store import AnnotationStore
    from napari_ra_joints import _widget as widget_module

    errors = []
    monkeypatch.setattr(widget_module, "show_error", errors.append)
    viewer = make_napari_viewer()
    widget = _widget(viewer, bundles_dir=tmp_path / "no_bundles")
    # a project from a newer schema
    newer = tmp_path / "newer"
    shutil.copytree(small_cohort, newer)
    with sqlite3.connect(newer / "ra_joints.sqlite") as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future')")
    assert not widget.open_project(newer) and "upgrade napari-ra-joints" in errors[-1]
    # a locked store
    locked = tmp_path / "locked"
    shutil.copytree(small_cohort, locked)
    holder = sqlite3.connect(locked / "ra_joints.sqlite", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        monkeypatch.setattr(AnnotationStore, "__init__", _short_timeout(AnnotationStore.__init__))
        assert not widget.open_project(locked)
        assert "lock" in errors[-1].lower() or "busy" in errors[-1].lower()
    finally:
        holder.rollback()
        holder.close()
    # a corrupt image in a good project
    project = unannotated_project(small_cohort, tmp_path / "project")
    assert widget.open_project(project)
    record = next(r for r in widget.store.images(modality="radiograph") if r.limb == "LH")
    (project / record.path).write_bytes(b"\x00" * 64)
    widget.open_entry("radiograph", record.id)
    assert widget.session is None and "cannot open" in errors[-1].lower()
    # predicting with no bundle weights: "not available", the store is untouched
    _open(widget, "RH")
    before = (project / "ra_joints.sqlite").stat().st_size, _count_revisions(project)
    result = _predict_patient(widget)
    assert any("not available" in s for s in result.skipped)
    widget.predict_panel.show_result(result)
    assert _count_revisions(project) == before[1]
    # a grade the scale forbids is refused with a message
    widget.open_entry("pair", widget.store.us_pairs()[0]["id"])
    widget.grades_panel.sh_spin.setValue(0)
    widget.grades_panel.vasc_spin.setValue(2)
    widget.grades_panel.save_grades()
    assert "not a valid" in errors[-1]
    assert _count_revisions(project) == before[1]
    assert len(viewer.layers) > 0  # the viewer keeps working


def _short_timeout(init):
    def wrapped(self, path, *, timeout=10.0, **options):
        init(self, path, timeout=0.2, **options)

    return wrapped


def _count_revisions(project: Path) -> int:
    with sqlite3.connect(project / "ra_joints.sqlite") as conn:
        tables = ("joint_centres", "joint_space_polygons", "joint_scores", "us_rois", "us_scores")
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)


def test_writer_saves_joint_centres_as_slicer_markups(make_napari_viewer, tmp_path):
    import napari

    from annotation_tools.slicer import read_markups
    from napari_ra_joints._writer import write_joint_markups

    viewer = make_napari_viewer()
    viewer.open_sample("napari-ra-joints", "phantom_hand")
    points = viewer.layers[-1]
    (path,) = napari.save_layers(
        str(tmp_path / "hand.mrk.json"), [points], plugin="napari-ra-joints"
    )
    centres, problems = read_markups(path)
    assert not problems and len(centres) == len(points.data)
    first = points.features["joint_id"][0]
    np.testing.assert_allclose(centres[first], (points.data[0][1], points.data[0][0]))
    with pytest.raises(ValueError, match="joint_id"):
        write_joint_markups(str(tmp_path / "x.mrk.json"), np.zeros((2, 2)), {"features": None})


def test_writer_saves_an_ultrasound_pairs_boxes_and_grades_as_the_store_json(
    make_napari_viewer, tmp_path
):
    """The ROI layers of a pair know their project: saved, they give the pair's document (both
    boxes, the model's grades with their sets), which another project imports."""
    import napari

    from annotation_tools.store import AnnotationStore, Provenance

    rng = np.random.default_rng(11)
    model = Provenance.model("ra_us_rating", "0.1.0", "abc")
    with AnnotationStore.open(tmp_path) as store:
        pair, greyscale, _ = _noise_us_pair(store, tmp_path, rng)
        store.set_roi(greyscale, (10, 5, 40, 30), Provenance.human("alice"))
        sets = {"synovial_hypertrophy": (1, 2), "vascularity": (1, 1), "combined": (1, 2)}
        store.set_us_score(pair, 2, 1, model, grade_sets=sets, coverage=0.9)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(tmp_path)
    widget.open_entry("pair", pair)
    session = widget.session
    (saved,) = napari.save_layers(
        str(tmp_path / "pair.json"),
        [session.roi_grey, session.roi_doppler],
        plugin="napari-ra-joints",
    )
    document = json.loads(Path(saved).read_text())
    assert document["image"]["path"] == "P1_gs.png" and document["roi"]["x1"] == 40
    assert document["us_pair"]["doppler"]["image"]["path"] == "P1_dp.png"
    assert document["us_pair"]["us_score"]["combined_set_high"] == 2
    other = tmp_path / "other"
    other.mkdir()
    for name in ("P1_gs.png", "P1_dp.png"):
        (other / name).write_bytes((tmp_path / name).read_bytes())
    with AnnotationStore.open(other) as copy:
        copy.import_image_json(saved)
        (copied,) = copy.us_pairs()
        assert copy.us_score(copied["id"]).grade_sets == sets


def test_multitask_pipeline_from_the_dock_gives_the_same_editable_layers(
    make_napari_viewer, small_cohort, tmp_path
):
    from annotation_tools.store import AnnotationStore
    from napari_ra_joints._widget import PIPELINES

    assert set(PIPELINES.values()) == {"two-stage", "multitask"}
    project = unannotated_project(small_cohort, tmp_path / "project", patients=1)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    assert widget.predict_panel.pipeline_box.count() == 2
    widget.open_project(project)
    session = _open(widget, "LH")
    result = _predict_patient(widget, "multitask")
    assert "Multi-task U-Net" in result.message
    widget.predict_panel.show_result(result)
    assert len(session.proposals.data) >= 15
    assert set(session.proposals.features["source"]) == {"model"}
    assert not any(layer.name.startswith("SHAP") for layer in viewer.layers)
    assert (
        widget.scores_panel.table.rowCount() == 22 and "Totals" in widget.scores_panel.totals.text()
    )
    with AnnotationStore.open(project, create=False) as store:
        centres = store.centres(session.record.id, sources=["model"])
        scores = store.scores(session.record.id, sources=["model"])
    assert {r.author for r in centres.values()} == {"ra_multitask_unet"}
    assert scores and {r.author for r in scores.values()} == {"ra_multitask_unet"}


def test_guide_screenshots(make_napari_viewer, small_cohort, tmp_path, qtbot):
    """The screenshots of docs/annotator_guide.md and docs/clinician_guide.md, taken from a
    shown window. ``RA_JOINTS_SCREENSHOTS=docs/images`` writes them there."""
    import os

    from napari_ra_joints._widget import bundle_status

    out = Path(os.environ.get("RA_JOINTS_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    viewer.window.resize(1500, 950)
    widget.open_project(project)
    session = _open(widget, "LH")
    truth = _truth(small_cohort, session.record.patient_id, "LH")
    for joint in list(session.joints)[:7]:
        x, y = truth[joint.id]
        session.points.add([[y, x]])
    viewer.reset_view()
    qtbot.wait(200)  # let Qt lay out the dock before grabbing the window
    assert widget.isVisible()
    shots = {
        "annotate_guided.png": viewer.screenshot(
            str(out / "annotate_guided.png"), canvas_only=False, flash=False
        )
    }
    centre, zoom = viewer.camera.center, viewer.camera.zoom  # fitted to the radiograph
    result = _predict_patient(widget)
    widget.predict_panel.show_result(result)
    widget.tabs.setCurrentIndex(3)
    viewer.camera.center, viewer.camera.zoom = centre, zoom * 1.6  # the hand, SHAP beside it
    qtbot.wait(200)
    shots["review_predictions.png"] = viewer.screenshot(
        str(out / "review_predictions.png"), canvas_only=False, flash=False
    )
    if bundle_status("ultrasound")[0]:
        pair = widget.store.us_pairs()[0]
        widget.open_entry("pair", pair["id"])
        x0, y0, x1, y1 = _truth_roi(small_cohort, pair)
        widget.session.roi_grey.add_rectangles(np.array([[y0, x0], [y1, x1]]))
        for layer in list(viewer.layers):
            if layer.name.startswith("SHAP"):
                viewer.layers.remove(layer)
        steps = (50, 8) if os.environ.get("RA_JOINTS_SCREENSHOTS") else (4, 1)  # docs: RATING's
        widget.predict_panel.show_result(_predict_pair(widget, pair, *steps))
        viewer.reset_view()
        qtbot.wait(200)
        shots["ultrasound_review.png"] = viewer.screenshot(
            str(out / "ultrasound_review.png"), canvas_only=False, flash=False
        )
    for name, shot in shots.items():
        assert (out / name).exists()
        assert shot[..., :3].astype(float).std() > 10, name


def test_predict_uses_the_chosen_model_version(make_napari_viewer, small_cohort, tmp_path):
    from annotation_tools.bundles import bundle_for
    from annotation_tools.imageio import file_sha256
    from annotation_tools.store import AnnotationStore

    project = unannotated_project(small_cohort, tmp_path / "project")
    version = project / "models" / "ra_joint_locator" / "20260101T000000Z"
    version.mkdir(parents=True)
    shipped = bundle_for("locator").weights_path
    state = torch.load(shipped, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] * 1.001  # a "retrained" version: other bytes, same network
    torch.save(state, version / "model.pt")
    (version / "train_info.json").write_text("{}")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    combo = widget.retrain_panel.version_boxes["ra_joint_locator"]
    assert [combo.itemText(i) for i in range(combo.count())] == ["shipped", version.name]
    assert combo.currentText() == "shipped"  # a new version waits until a person chooses it
    assert widget.retrain_panel.chosen_weights()["ra_joint_locator"] is None
    combo.setCurrentText(version.name)
    combo.activated.emit(combo.currentIndex())  # the person's choice is kept in the project
    assert widget.retrain_panel.chosen_weights()["ra_joint_locator"] == version / "model.pt"
    widget.open_project(project)  # reopened: still the chosen version
    combo = widget.retrain_panel.version_boxes["ra_joint_locator"]
    assert combo.currentText() == version.name
    session = _open(widget, "LF")
    widget.retrain_panel.version_boxes["ra_joint_scorer"].setCurrentText("shipped")
    _predict_patient(widget)
    with AnnotationStore.open(project, create=False) as store:
        hashes = {
            r.weights_hash for r in store.centres(session.record.id, sources=["model"]).values()
        }
    assert hashes == {file_sha256(version / "model.pt")} != {file_sha256(shipped)}


def test_joints_the_model_could_not_find_are_named(make_napari_viewer, small_cohort, tmp_path):
    from annotation_tools.store import Provenance

    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    session = _open(widget, "LF")
    model = Provenance.model("ra_joint_locator", "0.1.0", "x" * 64)
    widget.store.set_centre(session.record.id, "LF_mtp_3", None, model, status="not_visible")
    session.reload()
    assert "Not found by the model: MTP 3" in session.guide_text()
    assert "LF_mtp_3" not in session.not_visible  # the guide still asks a person for it...
    widget.store.set_centre(session.record.id, "LF_mtp_3", (10.0, 20.0), Provenance.human("a"))
    session.reload()
    assert "Not found" not in session.guide_text()  # ... until a person places it


def test_manifest_puts_the_dock_in_the_layers_annotate_menu():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("napari-ra-joints")
    items = manifest.contributions.menus["napari/layers/annotate"]
    assert [item.command for item in items] == ["napari-ra-joints.annotate"]


def test_registered_keys_drive_the_guide_with_real_key_presses(
    make_napari_viewer, small_cohort, tmp_path, qtbot
):
    """N, B and V pressed on the canvas (real Qt key events) do what the help text says."""
    from qtpy.QtCore import Qt

    from annotation_tools.store import AnnotationStore
    from napari_ra_joints._keybindings import KEYBINDINGS, key_text, shortcuts_text

    assert all(key_text(b.key) in shortcuts_text() for b in KEYBINDINGS)
    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    widget.open_project(project)
    session = _open(widget, "LH")
    canvas = viewer.window._qt_viewer.canvas.native  # where a person's key press lands
    canvas.setFocus()
    first, second = session.joints[0], session.joints[1]
    assert session.current() == first
    qtbot.keyClick(canvas, Qt.Key_N)
    assert session.current() == second
    qtbot.keyClick(canvas, Qt.Key_B)
    assert session.current() == first
    qtbot.keyClick(canvas, Qt.Key_V)  # "not visible": saved at once, the guide moves on
    assert session.current() == second
    assert widget.annotate_panel.guide.text().startswith(f"Click: {second.name}")
    with AnnotationStore.open(project, create=False) as store:
        assert store.centres(session.record.id)[first.id].status == "not_visible"


def test_cancel_from_the_dock_stops_and_shows_what_was_done(
    make_napari_viewer, small_cohort, tmp_path, qtbot
):
    """Cancel pressed while Predict runs: the worker ends before the next image, the buttons
    come back and nothing is half-written (test_predict.py checks that images predicted
    before a cancel keep their revisions)."""
    from qtpy.QtCore import Qt

    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    _open(widget, "LH")
    panel = widget.predict_panel
    seen = []
    panel_show = panel.show_progress

    def cancel_at_second_image(event):
        panel_show(event)
        seen.append(event)
        if len(seen) == 1:  # while the bundles load: cancelled before the first image
            qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)

    panel.show_progress = cancel_at_second_image
    qtbot.mouseClick(panel.predict_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.worker is None, timeout=120_000)
    assert "cancelled" in widget.message.text().lower()
    assert panel.predict_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert max(e.done for e in seen) < max(e.total for e in seen)  # it did not run to the end
    assert _count_revisions(project) == 0  # nothing half-written


def test_predict_never_hides_the_annotators_work(make_napari_viewer, small_cohort, tmp_path):
    """6 joints clicked, one marked not visible, grades typed -> Predict: the person's values
    are what the layer, the Scores tab, the store and export-dream show; the model's
    proposals wait beside them; re-predicting after a review changes none of it."""
    import csv

    from annotation_tools.cli import main
    from annotation_tools.store import AnnotationStore

    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    widget.project_panel.annotator_edit.setText("ann1")
    session = _open(widget, "LH")
    truth = _truth(small_cohort, session.record.patient_id, "LH")
    clicked = [j.id for j in session.joints[:6]]
    for joint_id in clicked:
        x, y = truth[joint_id]
        session.points.add([[y + 2, x + 2]])
    widget.annotate_panel.skip_joint()  # the 7th joint: not visible
    hidden = session.joints[6].id
    table = widget.scores_panel.table
    row = next(r for r in range(table.rowCount()) if table.item(r, 0).data(0x0100) == clicked[1])
    table.item(row, 1).setText("2")  # narrowing of MCP 1
    table.item(row, 3).setText("3")  # erosion of MCP 1
    status_before = widget.project_panel.image_list.item(0).text()
    for _ in range(2):  # predict, then predict again after the review
        widget.predict_panel.show_result(_predict_patient(widget))
        assert sorted(session.points.features["joint_id"]) == sorted(clicked)
        assert set(session.points.features["source"]) == {"human"}
        assert hidden in session.not_visible
        proposed = set(session.proposals.features["joint_id"])
        assert proposed and not proposed & {*clicked, hidden}  # beside, never over
        np.testing.assert_allclose(
            session.points.data[list(session.points.features["joint_id"]).index(clicked[0])],
            [truth[clicked[0]][1] + 2, truth[clicked[0]][0] + 2],
        )
        assert table.item(row, 1).text() == "2" and table.item(row, 3).text() == "3"
        assert table.item(row, 2).text() != "" or table.item(row, 4).text() != ""
        status = next(
            widget.project_panel.image_list.item(i).text()
            for i in range(widget.project_panel.image_list.count())
            if " LH " in widget.project_panel.image_list.item(i).text()
        )
        assert status.startswith("[corrected]") and "centres 7/22" in status, status
    assert status_before.startswith("[corrected]")
    # the model's outlines are proposals in their own layer: drawing one outline commits one
    proposed_outlines = len(session.proposed_shapes.data)
    assert proposed_outlines > 5 and len(session.shapes.data) == 0
    widget.annotate_panel.draw_outlines()
    joint = session.outline_next()
    x, y = truth[joint]
    session.shapes.add_polygons([np.array([[y - 4, x - 6], [y - 4, x + 6], [y + 4, x + 6]])])
    with AnnotationStore.open(project, create=False) as store:
        human = store.polygons(session.record.id, sources=["human"])
        assert list(human) == [joint]
    assert len(session.proposed_shapes.data) >= proposed_outlines - 1
    # accepting all proposals takes their outlines too
    widget.annotate_panel.accept()
    assert len(session.proposals.data) == 0 and len(session.proposed_shapes.data) == 0
    with AnnotationStore.open(project, create=False) as store:
        scores = store.scores(session.record.id)
        assert scores[(clicked[1], "narrowing")].value["value"] == 2
        assert scores[(clicked[1], "erosion")].source == "human"
    out = tmp_path / "all.csv"
    assert main(["export-dream", "--project", str(project), "--out", str(out),
                 "--all-sources"]) == 0  # fmt: skip
    with open(out, newline="") as handle:
        exported = next(csv.DictReader(handle))
    assert float(exported["LH_mcp_J__1"]) == 2 and float(exported["LH_mcp_E__1"]) == 3


def test_delete_rewinds_the_guide_undo_restores_and_the_picker_chooses(
    make_napari_viewer, small_cohort, tmp_path, qtbot
):
    from qtpy.QtCore import Qt

    from annotation_tools.store import AnnotationStore

    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    widget.open_project(project)
    session = _open(widget, "LH")
    truth = _truth(small_cohort, session.record.patient_id, "LH")
    joints = [j.id for j in session.joints]
    for joint_id in joints[:3]:
        x, y = truth[joint_id]
        session.points.add([[y, x]])
    # delete the second point: the guide goes back to it and the next click is named for it
    session.points.selected_data = {1}
    session.points.remove_selected()
    assert session.current().id == joints[1]
    x, y = truth[joints[1]]
    session.points.add([[y, x]])
    assert sorted(session.points.features["joint_id"]) == sorted(joints[:3])
    # Ctrl+Z (a real key press on the canvas) takes the click back, as a new revision
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier)
    assert joints[1] not in set(session.points.features["joint_id"])
    qtbot.keyClick(canvas, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)  # redo
    assert joints[1] in set(session.points.features["joint_id"])
    # the picker: choose a joint further on, the next click places it
    picker = widget.annotate_panel.picker
    target = next(i for i in range(picker.count()) if picker.item(i).data(0x0100) == joints[9])
    picker.itemClicked.emit(picker.item(target))
    assert "MCP 5" in widget.annotate_panel.guide.text()
    x, y = truth[joints[9]]
    session.points.add([[y, x]])
    assert joints[9] in set(session.points.features["joint_id"])
    assert picker.item(target).text().startswith("✓")
    # rename: the point of joints[9] really belongs to joints[8]
    session.points.selected_data = {list(session.points.features["joint_id"]).index(joints[9])}
    picker.setCurrentRow(next(i for i in range(picker.count())
                              if picker.item(i).data(0x0100) == joints[8]))  # fmt: skip
    widget.annotate_panel.rename()
    assert joints[8] in set(session.points.features["joint_id"])
    assert joints[9] not in set(session.points.features["joint_id"])
    with AnnotationStore.open(project, create=False) as store:
        history = store.centre_history(session.record.id, joints[1])
        assert [r.status for r in history] == ["present", "deleted", "present", "deleted",
                                               "present"]  # fmt: skip


def test_each_ultrasound_pair_opens_with_its_own_grades(make_napari_viewer, small_cohort, tmp_path):
    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    first, second = widget.store.us_pairs()[:2]
    widget.open_entry("pair", first["id"])
    panel = widget.grades_panel
    panel.sh_spin.setValue(3)
    panel.vasc_spin.setValue(2)
    panel.save_grades()
    assert "Committed" in panel.committed_label.text()
    widget.open_entry("pair", second["id"])
    assert (panel.sh_spin.value(), panel.vasc_spin.value()) == (0, 0)
    assert "No grades" in panel.committed_label.text()
    # both images are in view
    grey, doppler = widget.session.grey_layer, widget.session.doppler_layer
    left, right = viewer.camera.center[-1] - 1, viewer.camera.center[-1] + 1
    assert left < doppler.translate[-1] + doppler.data.shape[1] and right > grey.translate[-1]
    widget.open_entry("pair", first["id"])
    assert (panel.sh_spin.value(), panel.vasc_spin.value()) == (3, 2)


def _quick_jobs(monkeypatch):
    """The dock's retraining, one epoch long (the quick recipe trains 30)."""
    import napari_ra_joints.ui.retrain_panel as panel_module

    real = panel_module.start_retrain

    def one_epoch(*args, **kwargs):
        return real(*args, overrides=["--epochs", "1", "--val_interval", "1"], folds=3, **kwargs)

    monkeypatch.setattr(panel_module, "start_retrain", one_epoch)


def test_retraining_outlives_the_viewer_and_its_version_is_listed_next_time(
    make_napari_viewer, small_cohort, tmp_path, qtbot, monkeypatch
):
    from qtpy.QtCore import Qt

    from annotation_tools.bundles import bundle_for
    from annotation_tools.imageio import file_sha256
    from annotation_tools.jobs import jobs

    _quick_jobs(monkeypatch)
    shipped = file_sha256(bundle_for("locator").weights_path)
    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    panel = widget.retrain_panel
    panel.retrain_bundle.setCurrentText("ra_joint_locator")
    qtbot.mouseClick(panel.retrain_button, Qt.LeftButton)
    assert panel.job is not None and panel.job.active
    viewer.close()  # the person closes napari while it trains
    (job,) = jobs(project)
    job = job.wait(timeout=300)
    assert job.state == "done" and job.version, job.summary()
    assert job.steps == job.step == 2  # the training, then the new version's calibration
    assert job.metric_name == "val_hit_rate"
    assert any("Epoch: 1/1" in line for line in job.tail())  # one epoch (the step now: none)
    assert "has no position radius and p_correct: only 1 patient held out" in job.calibration
    assert not any("Warning" in line for line in job.tail())  # library chatter filtered
    viewer2 = make_napari_viewer()
    widget2 = _widget(viewer2)
    widget2.open_project(project)
    combo = widget2.retrain_panel.version_boxes["ra_joint_locator"]
    assert [combo.itemText(i) for i in range(combo.count())] == ["shipped", job.version]
    assert combo.currentText() == "shipped"  # listed, not switched to
    assert "done" in widget2.retrain_panel.job_label.text()
    assert "ra-joints calibrate --task locator --weights" in widget2.retrain_panel.job_label.text()
    # the version is a new folder next to the shipped weights, which stay as they were
    from annotation_tools.bundles import bundle_for
    from annotation_tools.imageio import file_sha256
    from annotation_tools.predict import PredictionService
    from annotation_tools.retrain import model_versions, weights_for
    from annotation_tools.store import AnnotationStore

    (version,) = model_versions(project, "ra_joint_locator")
    assert weights_for(project, "ra_joint_locator") == version / "model.pt"
    assert file_sha256(bundle_for("locator").weights_path) == shipped
    assert "validation" in json.loads((version / "train_info.json").read_text())
    # ... and it predicts: the proposals carry its weights' hash
    service = PredictionService("two-stage", weights={"locator": version / "model.pt"})
    with AnnotationStore.open(project, create=False) as store:
        patient = store.patients()[0]
    service.predict_patient(project, patient, explain=False)
    with AnnotationStore.open(project, create=False) as store:
        record = store.images(modality="radiograph")[0]
        revisions = store.centres(record.id, sources=["model"]).values()
        assert {r.weights_hash for r in revisions} == {file_sha256(version / "model.pt")}


def test_cancelled_retraining_leaves_no_process_behind(
    make_napari_viewer, small_cohort, tmp_path, qtbot, monkeypatch
):
    import os
    import time

    from annotation_tools.jobs import jobs

    _quick_jobs(monkeypatch)
    project = tmp_path / "project"
    shutil.copytree(small_cohort, project)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(project)
    panel = widget.retrain_panel
    panel.retrain_bundle.setCurrentText("ra_joint_locator")
    job = panel.retrain()
    deadline = time.monotonic() + 120
    while job.refresh().step < 1 and time.monotonic() < deadline:  # monai.bundle run started
        time.sleep(0.2)
    group = os.getpgid(job.pid)
    panel.cancel()
    job = job.wait(timeout=30)
    assert job.state == "cancelled"
    time.sleep(0.5)
    alive = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == group and stat[0] != "Z":  # process group, not a zombie
                alive.append(pid)
    assert alive == []  # the training processes went with the job
    assert [j.state for j in jobs(project)] == ["cancelled"]
    assert not (project / "models" / "ra_joint_locator").exists()


def test_the_joint_diagram_picks_the_joint_clicked(
    make_napari_viewer, small_cohort, tmp_path, qtbot
):
    from qtpy.QtCore import QPoint, Qt

    from napari_ra_joints.ui.joint_diagram import layout

    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer(show=True)
    widget = _widget(viewer)
    widget.open_project(project)
    session = _open(widget, "RH")
    assert set(layout("RH")) == {j.id for j in session.joints}
    assert layout("RH")["RH_ip"][0] == -layout("LH")["LH_ip"][0]  # the right hand is mirrored
    diagram = widget.annotate_panel.diagram
    widget.tabs.setCurrentIndex(1)
    qtbot.waitUntil(diagram.isVisible)
    target = "RH_mcp_4"
    point = diagram._screen()[target]
    qtbot.mouseClick(diagram, Qt.LeftButton, pos=QPoint(int(point.x()), int(point.y())))
    assert session.chosen_joint == target
    assert "MCP 4" in widget.annotate_panel.guide.text()


def test_a_model_ultrasound_proposal_shows_its_grade_sets(make_napari_viewer, tmp_path):
    """The model's conformal set beside each grade (``SH 2 [1-2]``), coloured by width and
    explained in the tooltip; a person's grades and a model without sets show none."""
    from annotation_tools.store import AnnotationStore, Provenance

    rng = np.random.default_rng(7)
    model = Provenance.model("ra_us_rating", "0.1.0", "abc")
    with AnnotationStore.open(tmp_path) as store:
        with_sets, *_ = _noise_us_pair(store, tmp_path, rng)
        store.set_us_score(
            with_sets,
            2,
            1,
            model,
            uncertainty=0.2,
            grade_sets={"synovial_hypertrophy": (1, 2), "vascularity": (1, 1), "combined": (1, 2)},
            coverage=0.9,
        )
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    widget.open_project(tmp_path)
    widget.open_entry("pair", with_sets)
    panel = widget.grades_panel
    text, tip = panel.proposal_label.text(), panel.proposal_label.toolTip()
    assert "SH 2 [1-2], vascularity 1 [1], combined 2 [1-2]" in text
    assert "90% coverage" in tip and "phantoms" in tip
    assert "background-color" in panel.proposal_label.styleSheet()  # a two-grade set
    # the person corrects: their grades carry no set; the model's proposal keeps its own
    panel.sh_spin.setValue(3)
    panel.vasc_spin.setValue(2)
    panel.save_grades()
    assert "[" not in panel.committed_label.text()
    assert "SH 2 [1-2]" in panel.proposal_label.text()
    # a model revision without a calibration: the grades alone, no tooltip
    widget.store.set_us_score(with_sets, 1, 0, model, uncertainty=0.1)
    panel.load()
    assert "SH 1, vascularity 0, combined 1" in panel.proposal_label.text()
    assert "[" not in panel.proposal_label.text() and panel.proposal_label.toolTip() == ""
    assert "background-color" not in panel.proposal_label.styleSheet()
