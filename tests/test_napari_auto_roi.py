"""The dock's proposed ROI: shown as a proposal when a pair has none, Accept (a real button
click) commits it as the annotator's, editing it commits the edit, a person's box is never
replaced."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from helpers import unannotated_project  # noqa: E402


def _colour(layer):
    return tuple(np.round(np.asarray(layer.edge_color)[0][:3], 2))


def _committed(store, image_id):
    from annotation_tools.store import TRAINING_SOURCES

    rev = store.roi(image_id, sources=TRAINING_SOURCES)
    return None if rev is None else (rev, tuple(rev.value[k] for k in ("x0", "y0", "x1", "y1")))


def test_proposed_roi_is_accepted_or_edited_and_never_hides_a_persons_box(
    make_napari_viewer, small_cohort, tmp_path, qtbot
):
    from napari.utils.colormaps.standardize_color import transform_color
    from qtpy.QtCore import Qt

    from annotation_tools.store import AnnotationStore
    from annotation_tools.us_rating import record_proposed_roi
    from annotation_tools.us_roi import box_iou
    from napari_ra_joints._layers import PROPOSED_ROI_STYLE, ROI_STYLE
    from napari_ra_joints._widget import RAJointsWidget

    cyan = tuple(np.round(transform_color(PROPOSED_ROI_STYLE["edge_color"])[0][:3], 2))
    yellow = tuple(np.round(transform_color(ROI_STYLE["edge_color"])[0][:3], 2))
    project = unannotated_project(small_cohort, tmp_path / "project")
    with AnnotationStore.open(small_cohort, create=False) as truth_store:
        truth = {
            (p["patient_id"], p["site"]): tuple(
                truth_store.roi(p["greyscale_image_id"]).value[k] for k in ("x0", "y0", "x1", "y1")
            )
            for p in truth_store.us_pairs()
        }
    viewer = make_napari_viewer()
    widget = RAJointsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RA joints")
    widget.open_project(project)
    store = widget.store
    first, second = store.us_pairs()[:2]
    # an earlier --auto-roi run left a model proposal on the second pair
    earlier = (120.0, 110.0, 400.0, 320.0)
    record_proposed_roi(store, second["id"], earlier)

    # 1. no ROI: the box found from the bone profile, styled as a proposal, nothing written
    widget.open_entry("pair", first["id"])
    session, panel = widget.session, widget.grades_panel
    proposal = session.proposal
    assert proposal is not None and len(session.roi_grey.data) == len(session.roi_doppler.data) == 1
    assert _colour(session.roi_grey) == cyan != yellow
    assert box_iou(proposal, truth[(first["patient_id"], first["site"])]) >= 0.5
    assert _committed(store, first["greyscale_image_id"]) is None
    assert panel.accept_roi_button.isEnabled() and "proposed" in panel.roi_label.text()

    # 2. Accept (a real click) commits it unchanged as the annotator's, on both images
    qtbot.mouseClick(panel.accept_roi_button, Qt.LeftButton)
    for image_id in (first["greyscale_image_id"], first["doppler_image_id"]):
        rev, box = _committed(store, image_id)
        assert (rev.source, rev.author) == ("human", widget.annotator)
        assert box == pytest.approx(proposal)
    assert _colour(session.roi_grey) == yellow and session.proposal is None
    assert not panel.accept_roi_button.isEnabled()

    # 3. the model's earlier proposal is shown for the second pair; moving it saves the edit
    widget.open_entry("pair", second["id"])
    session = widget.session
    assert session.proposal == pytest.approx(earlier) and _colour(session.roi_grey) == cyan
    moved = np.asarray(session.roi_grey.data[0]) + np.array([10.0, 25.0])  # (row, column)
    session.roi_grey.data = [moved]  # what a drag in select mode does to the layer
    rev, box = _committed(store, second["greyscale_image_id"])
    assert rev.source == "human"
    assert box == pytest.approx(
        (earlier[0] + 25, earlier[1] + 10, earlier[2] + 25, earlier[3] + 10)
    )
    assert _committed(store, second["doppler_image_id"])[1] == pytest.approx(box)
    assert _colour(session.roi_grey) == yellow and session.proposal is None

    # 4. a later proposal never replaces the person's box: reopening shows theirs
    record_proposed_roi(store, first["id"], earlier)
    widget.open_entry("pair", first["id"])
    session = widget.session
    assert session.proposal is None and session.box() == pytest.approx(proposal)
    assert _colour(session.roi_grey) == yellow
    assert not widget.grades_panel.accept_roi_button.isEnabled()
