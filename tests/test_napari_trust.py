"""The dock asks before it runs a bundle that did not ship with the package (its configs are
executable code), for Predict and for Retrain, and does nothing when the person says no."""

import shutil

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from helpers import unannotated_project  # noqa: E402


def _copied_bundles(tmp_path):
    """The shipped bundles' configs in a folder of the person's (no weights: none is needed to
    be refused, and copying them would be slow)."""
    from annotation_tools.bundles import registry

    root = tmp_path / "my_bundles"
    for name, info in registry().items():
        shutil.copytree(info.root, root / name, ignore=shutil.ignore_patterns("*.pt", "*.ts"))
    return root


def test_the_dock_asks_before_running_a_users_bundle(make_napari_viewer, small_cohort, tmp_path,
                                                    monkeypatch, qtbot):  # fmt: skip
    from qtpy.QtWidgets import QMessageBox

    from napari_ra_joints._widget import RAJointsWidget

    asked = []
    answer = {"value": QMessageBox.No}

    def question(parent, title, text, buttons, default):
        asked.append(text)
        return answer["value"]

    monkeypatch.setattr(QMessageBox, "question", question)
    viewer = make_napari_viewer()
    widget = RAJointsWidget(viewer, bundles_dir=_copied_bundles(tmp_path))
    viewer.window.add_dock_widget(widget)
    assert widget.open_project(unannotated_project(small_cohort, tmp_path / "project"))
    record = next(r for r in widget.store.images(modality="radiograph") if r.limb == "LH")
    widget.open_entry("radiograph", record.id)
    panel = widget.predict_panel

    panel.predict()  # the person says no: nothing runs, nothing is trusted
    assert len(asked) == 1 and "my_bundles" in asked[0] and "executable code" in asked[0]
    assert panel.worker is None and not widget.trusted_bundles
    assert "not trusted" in widget.message.text()

    answer["value"] = QMessageBox.Yes  # yes: the worker starts with a service that may run it
    panel.predict()
    assert widget.trusted_bundles and panel.worker is not None
    assert all(s.trusted for s in panel._services.values())
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)
    panel.predict()  # asked once per dock
    assert len(asked) == 2
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)

    # Retrain: a fresh dock, the person says no -> no job; the library refuses without a yes
    from annotation_tools.bundles import BundleNotTrusted
    from annotation_tools.jobs import jobs, start_retrain

    other = RAJointsWidget(viewer, bundles_dir=widget.bundles_dir)
    assert other.open_project(widget.store.root)
    answer["value"] = QMessageBox.No
    assert other.retrain_panel.retrain() is None
    assert len(asked) == 3 and not jobs(widget.store.root)
    with pytest.raises(BundleNotTrusted, match="--trust-bundle"):
        start_retrain(widget.store.root, widget.bundles_dir / "ra_joint_locator")
