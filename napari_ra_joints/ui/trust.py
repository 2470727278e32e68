"""Ask before the dock runs a bundle that did not come with the package.

A MONAI bundle's configs are executable code, so the library refuses a user-supplied bundle
unless the caller trusts it (:func:`annotation_tools.bundles.check_trusted`). The command line
has ``--trust-bundle``; in the dock the person is asked once, and the answer holds for the
session of that dock.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QMessageBox

from annotation_tools.bundles import BundleNotTrusted


def ask_to_trust(parent: Any, exc: BundleNotTrusted) -> bool:
    """Whether the person agrees to run the bundle named in ``exc`` (default: no)."""
    folder = exc.root or "a folder you supplied"
    answer = QMessageBox.question(
        parent,
        "Run a bundle from another folder?",
        f"The bundle in {folder} did not come with napari-ra-joints. Its configuration files "
        "are executable code: run it only if you trust where it came from.\n\nRun it?",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.No,
    )
    return answer == QMessageBox.Yes
