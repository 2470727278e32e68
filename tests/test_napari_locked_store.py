"""Another program holds the project's store while a person annotates: the dock's Qt thread
waits only briefly, the edit stays on screen, the dock says it is retrying, and the edit
lands when the lock goes - nothing is lost, and the image cannot be left unsaved."""

import sqlite3
import time

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from helpers import unannotated_project  # noqa: E402


def test_a_locked_store_delays_the_save_but_loses_nothing(
    make_napari_viewer, small_cohort, tmp_path, qtbot, monkeypatch
):
    from annotation_tools.store import AnnotationStore
    from napari_ra_joints import _widget as widget_module
    from napari_ra_joints._widget import LOCK_WAIT_S, RAJointsWidget

    errors = []
    monkeypatch.setattr(widget_module, "show_error", errors.append)
    project = unannotated_project(small_cohort, tmp_path / "project")
    viewer = make_napari_viewer()
    widget = RAJointsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.save_retry.setInterval(200)  # the test need not wait two seconds per retry
    assert widget.open_project(project)
    record = next(r for r in widget.store.images(modality="radiograph") if r.limb == "LH")
    widget.open_entry("radiograph", record.id)
    session = widget.session
    joint = session.current()

    other = sqlite3.connect(project / "ra_joints.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program writing: it holds the write lock
    try:
        started = time.perf_counter()
        session.points.add([[200.0, 150.0]])  # the person clicks the joint
        blocked = time.perf_counter() - started
        assert blocked < LOCK_WAIT_S + 1.0  # not the store's usual 10 s wait
        assert session.unsaved and widget.save_retry.isActive()
        assert "retrying" in widget.message.text() and "locked" in widget.message.text()
        assert len(session.points.data) == 1  # the click stays on screen
        # leaving the image now would lose the click: refused, with the reason
        other_image = next(r for r in widget.store.images(modality="radiograph") if r.limb == "RH")
        widget.open_entry("radiograph", other_image.id)
        assert widget.session is session and "not saved yet" in errors[-1]
    finally:
        other.rollback()  # the other program is done
        other.close()
    qtbot.waitUntil(lambda: not session.unsaved, timeout=10_000)
    assert not widget.save_retry.isActive() and "nothing was lost" in widget.message.text()
    with AnnotationStore.open(project, create=False) as store:
        saved = store.centres(record.id)[joint.id]
    assert saved.source == "human" and saved.value["x"] == pytest.approx(150.0)
    lines = widget.project_panel.image_list
    texts = [lines.item(i).text() for i in range(lines.count())]
    mine = [t for t in texts if record.patient_id in t and " LH " in t]
    assert mine and "[corrected]" in mine[0] and "centres 1/" in mine[0]  # its line updated
    widget.open_entry("radiograph", other_image.id)  # now it may go
    assert widget.session is not session
