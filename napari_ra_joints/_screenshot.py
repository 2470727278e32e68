"""``python -m napari_ra_joints._screenshot PROJECT OUT.png``: the RA joints dock on a
project's first radiograph, with whatever predictions and annotations the store holds, saved
as a PNG for the demo report. Needs a display (the demo runs it under ``xvfb-run``)."""

from __future__ import annotations

import sys
from pathlib import Path


def take(project: str | Path, target: str | Path, size: tuple[int, int] = (1500, 950)) -> Path:
    import napari
    from qtpy.QtWidgets import QApplication

    from ._widget import TABS, RAJointsWidget

    viewer = napari.Viewer(show=True)
    try:
        widget = RAJointsWidget(viewer)
        viewer.window.add_dock_widget(widget, name="RA joints")
        viewer.window.resize(*size)
        if not widget.open_project(project):
            raise SystemExit(f"cannot open {project}")
        record = widget.store.images(modality="radiograph")[0]
        widget.open_entry("radiograph", record.id)
        widget.tabs.setCurrentIndex(TABS.index("Scores"))
        viewer.reset_view()
        for _ in range(5):
            QApplication.processEvents()
        viewer.screenshot(str(target), canvas_only=False, flash=False)
    finally:
        viewer.close()
    return Path(target)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m napari_ra_joints._screenshot PROJECT OUT.png")
    print(take(sys.argv[1], sys.argv[2]))
