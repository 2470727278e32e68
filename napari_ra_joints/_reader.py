"""npe2 reader: radiographs and ultrasound frames through annotation_tools.imageio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from annotation_tools.imageio import IMAGE_EXTENSIONS, read_image

from ._layers import image_layer_data

LayerData = tuple[Any, dict, str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Claim the file types annotation_tools can read; leave everything else to other readers."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or any(Path(p).suffix.lower() not in IMAGE_EXTENSIONS for p in paths):
        return None
    return read_images


def read_images(path: str | list[str]) -> list[LayerData]:
    """Read every path; one unreadable file raises an error that names it and says why."""
    paths = [path] if isinstance(path, str) else list(path)
    return [image_layer_data(read_image(p)) for p in paths]
