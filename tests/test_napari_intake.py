"""Add images… in the dock: a nested PACS-style folder becomes a new project through
``annotation_tools.intake`` in a worker; a second import adds nothing and says so; broken
files are listed with their reason; an unlabelled limb is chosen in a combo box."""

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from helpers import pacs_export  # noqa: E402


def _widget(viewer):
    from napari_ra_joints._widget import RAJointsWidget

    widget = RAJointsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RA joints")
    return widget


def _click_and_wait(qtbot, panel, button):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button, Qt.LeftButton)
    assert panel.worker is not None  # the import runs in a worker, not on the Qt thread
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)


def test_add_folder_creates_the_project_and_a_second_import_adds_nothing(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog

    from annotation_tools.store import AnnotationStore

    expected = pacs_export(tmp_path / "export")
    project = tmp_path / "new project"
    asked = []

    def folder_dialog(parent, caption, *args, **kwargs):
        asked.append(caption)
        return str(project if caption.startswith("Project") else tmp_path / "export")

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(folder_dialog))
    widget = _widget(make_napari_viewer())
    panel = widget.intake_panel
    assert widget.store is None
    _click_and_wait(qtbot, panel, panel.add_folder_button)
    assert asked == ["Folder of images to add", "Project folder (new or existing)"]
    assert widget.store is not None and widget.store.root.samefile(project)
    texts = [
        widget.project_panel.image_list.item(i).text()
        for i in range(widget.project_panel.image_list.count())
    ]
    for patient, limb in expected:
        assert any(f" {patient} {limb} " in t for t in texts), (patient, limb, texts)
    report = panel.report_text.toPlainText()
    assert f"imported {len(panel.report.imported)} image(s)" in report
    broken = next(line for line in report.splitlines() if "broken.dcm" in line)
    assert broken.startswith("skipped") and "truncated" in broken
    # the file no table, tag or name labels waits in the limb table with a combo box
    assert panel.limb_table.rowCount() == 1 and panel.limb_table.item(0, 0).text() == "scan0001.png"
    with AnnotationStore.open(project, create=False) as store:
        before = store.summary()
    # second import, with the locator asked about the unlabelled file: nothing new
    panel.decide_box.setChecked(True)
    _click_and_wait(qtbot, panel, panel.add_folder_button)
    assert asked[-1] == "Folder of images to add"  # the open project is used, not asked for
    assert panel.report.imported == []
    assert "nothing new" in panel.report_text.toPlainText()
    with AnnotationStore.open(project, create=False) as store:
        assert store.summary() == before
    # a flat grey image fits no limb: the locator's guess is only a suggestion
    [waiting] = panel.report.needs_limb
    assert waiting["confidence"] < 0.3 and "fits no hand or foot" in waiting["reason"]
    assert panel.limb_table.item(0, 1).text().startswith(waiting["suggested_limb"])
    panel.decide_box.setChecked(False)
    panel.limb_table.cellWidget(0, 2).setCurrentText("RF")
    _click_and_wait(qtbot, panel, panel.register_button)
    [record] = panel.report.imported
    assert (record["limb"], record["limb_source"]) == ("RF", "given")
    assert not panel.limb_table.isVisible()
    assert widget.project_panel.image_list.count() == len(texts) + 1


def test_add_images_reports_broken_files_with_their_reason(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog

    from annotation_tools.imageio import write_png
    from annotation_tools.phantoms import generate_patient

    good = tmp_path / "P7_LH.png"
    write_png(
        good, generate_patient(3, 0, height=256, us_pairs=0, style="schematic").limbs["LH"].image
    )
    broken = tmp_path / "P7_RH.png"
    broken.write_bytes(good.read_bytes()[:300])
    project = tmp_path / "project"
    files = staticmethod(lambda *a, **k: ([str(good), str(broken)], ""))
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", files)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a: str(project)))
    widget = _widget(make_napari_viewer())
    panel = widget.intake_panel
    _click_and_wait(qtbot, panel, panel.add_files_button)
    assert [r["limb"] for r in panel.report.imported] == ["LH"]
    [skipped] = panel.report.skipped
    assert skipped["path"] == str(broken.resolve())
    line = next(t for t in panel.report_text.toPlainText().splitlines() if "P7_RH.png" in t)
    assert line.startswith("skipped") and line.endswith(skipped["reason"])
    assert widget.project_panel.image_list.count() == 1


def test_cancel_stops_the_import_after_the_current_file(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import time

    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFileDialog

    from annotation_tools import intake

    expected = pacs_export(tmp_path / "export")
    project = tmp_path / "project"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda parent, caption, *a, **k: str(
                            project if "Project" in caption else tmp_path / "export")))  # fmt: skip
    register = intake._register

    def slow_register(*args, **kwargs):  # a slow network share: time to press Cancel
        time.sleep(0.3)
        return register(*args, **kwargs)

    monkeypatch.setattr(intake, "_register", slow_register)
    widget = _widget(make_napari_viewer())
    panel = widget.intake_panel
    assert not panel.cancel_button.isEnabled()
    qtbot.mouseClick(panel.add_folder_button, Qt.LeftButton)
    assert panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=30_000)
    qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.worker is None, timeout=30_000)
    report = panel.report
    assert report.not_reached and report.imported
    assert "not reached" in panel.report_text.toPlainText()
    assert widget.store is not None  # the project with the files imported so far is open
    assert len(widget.store.images()) == len(report.imported) < len(expected) + 4
    assert not panel.cancel_button.isEnabled()
