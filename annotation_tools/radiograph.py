"""Radiograph preparation: the one definition that training export and inference share.

A network sees a radiograph as grey pixels, optionally cropped to the limb's Canny edges
(multi-task U-Net), percentile-windowed to [0, 1], resized to its grid and, for right limbs,
mirrored to look like a left one. :func:`prepare_radiograph` does exactly that and returns the
:class:`GridGeometry` that maps joint centres between image pixels and the grid, so that the
exported training input of an image and the inference input of the same image are the same
pixels (``tests/test_radiograph.py`` checks it) and targets land where the network looks.

Also here: which limb a radiograph shows (given > DICOM tags > file name), which files of a
folder are images, and the MONAI transform :class:`LoadRadiographd` that reads and prepares a
radiograph for the locator and the multi-task U-Net (with the facts their decoder needs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .imageio import IMAGE_EXTENSIONS, ImageData, ImageReadError, read_image
from .targets import (
    CropBox,
    edge_crop_box,
    mirror_image,
    mirror_points,
    normalise_intensity,
    resize_image,
    scale_points,
)
from .vocabulary import Limb

__all__ = [
    "LIMB_TOKEN",
    "MIN_SIDE",
    "UNREADABLE",
    "GridGeometry",
    "LoadRadiographd",
    "PreparedRadiograph",
    "decoder_args",
    "image_files",
    "limb_from_dicom",
    "limb_from_filename",
    "network_input",
    "prepare_input",
    "prepare_radiograph",
    "resolve_limb",
    "unreadable",
]

MIN_SIDE = 64  # below this a radiograph holds too little to find joints in
LIMB_TOKEN = re.compile(r"(?:^|[^A-Za-z])(LH|RH|LF|RF)(?:$|[^A-Za-z])", re.IGNORECASE)


def limb_from_filename(path: str | Path) -> Limb | None:
    """``P001_LH.dcm``, ``p001-rf.png``: a limb token between separators in the file name."""
    match = LIMB_TOKEN.search(Path(path).stem)
    return Limb.parse(match.group(1)) if match else None


def limb_from_dicom(image: ImageData) -> Limb | None:
    """The limb from DICOM BodyPartExamined and (Image)Laterality, when both say it."""
    part = (image.body_part or "").upper()
    kind = "H" if "HAND" in part else "F" if "FOOT" in part else None
    if kind and image.laterality in ("L", "R"):
        return Limb(image.laterality + kind)
    return None


def resolve_limb(path: str | Path, image: ImageData, given: str | None) -> tuple[Limb | None, str]:
    """The limb of a radiograph and where that came from (given > DICOM tags > file name)."""
    if given:
        return Limb.parse(given), "given"
    from_tags = limb_from_dicom(image)
    if from_tags:
        return from_tags, "dicom"
    from_name = limb_from_filename(path)
    if from_name:
        return from_name, "filename"
    return None, "unknown"


def image_files(folder: str | Path) -> list[Path]:
    """Radiograph files of a folder (sorted; hidden files and non-images left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


@dataclass(frozen=True)
class GridGeometry:
    """How an image's pixels became a network grid: crop, resize, mirror (and back)."""

    image_shape: tuple[int, int]  # (rows, columns) of the original image
    crop: CropBox  # the part of the image that was kept
    grid: tuple[int, int]  # (rows, columns) of the network input
    mirrored: bool  # right limb flipped to look like a left one

    def to_grid(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """``(x, y)`` image pixels -> ``(x, y)`` grid pixels."""
        grid_points = scale_points(self.crop.to_crop(points), self.crop.shape, self.grid)
        return mirror_points(grid_points, self.grid[1]) if self.mirrored else grid_points

    def to_image(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """``(x, y)`` grid pixels -> ``(x, y)`` image pixels (the inverse of :meth:`to_grid`)."""
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        if self.mirrored:
            pts = mirror_points(pts, self.grid[1])
        pts = scale_points(pts, self.grid, self.crop.shape)
        return pts + np.array([self.crop.x0, self.crop.y0], dtype=float)


@dataclass
class PreparedRadiograph:
    """Network input pixels ``(rows, columns)`` float32 in [0, 1], their geometry, and what
    a reader should be told about the image (colour, too small, no contrast)."""

    pixels: np.ndarray
    geometry: GridGeometry
    warnings: list[str] = field(default_factory=list)


def prepare_radiograph(
    image: ImageData,
    grid: Sequence[int],
    *,
    mirror: bool,
    crop_edges: bool = False,
) -> PreparedRadiograph:
    """Grey, (edge-cropped,) windowed, resized and (mirrored) pixels of one radiograph.

    ``mirror``: flip left-right (right limbs, so that every limb looks like a left one);
    ``crop_edges``: crop to the Canny-edge bounding box first (the multi-task U-Net).
    """
    grid = (int(grid[0]), int(grid[1]))
    warnings = []
    if image.is_colour:
        warnings.append("colour image converted to grey-scale")
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        warnings.append(f"image is {w}x{h} px: too small for the locator (needs >= {MIN_SIDE} px)")
    grey = image.grey()
    box = edge_crop_box(grey) if crop_edges and min(h, w) >= MIN_SIDE else CropBox(0, h, 0, w)
    windowed = normalise_intensity(box.crop(grey))
    if not windowed.any():
        warnings.append("image has no contrast (blank?)")
    pixels = resize_image(windowed, grid)
    if mirror:
        pixels = mirror_image(pixels)
    geometry = GridGeometry((int(h), int(w)), box, grid, bool(mirror))
    return PreparedRadiograph(pixels.astype(np.float32), geometry, warnings)


class LoadRadiographd(MapTransform):
    """Read a radiograph through annotation_tools.imageio and prepare it for the locator.

    Output: ``image`` (1, S, S) float32 in [0, 1], left orientation; plus ``original_shape``,
    ``mirrored``, ``limb``, ``limb_source``, ``path`` and ``warnings`` for the decoder.
    An unreadable file raises (the batch runner reports it and goes on).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] = (256, 256),
        limb_key: str = "limb",
        crop_edges: bool = False,
    ):
        super().__init__(keys)
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.limb_key = limb_key
        self.crop_edges = crop_edges

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                image = read_image(path)
            except ImageReadError as exc:  # report it in the output, keep the batch going
                prepared = unreadable(path, exc.reason, self.spatial_size)
                if self.crop_edges:
                    prepared["crop_box"] = [0, 1, 0, 1]
            else:
                prepared = prepare_input(
                    image, d.get(self.limb_key), self.spatial_size, path, crop_edges=self.crop_edges
                )
            d[key] = torch.from_numpy(prepared.pop("pixels"))[None]
            d.update(prepared)
        return d


UNREADABLE = "unreadable: "


def unreadable(path: str | Path, reason: str, spatial_size: tuple[int, int]) -> dict[str, Any]:
    """Placeholder input for a file that could not be read; the decoder flags every joint."""
    limb = limb_from_filename(path)
    return {
        "pixels": np.zeros(spatial_size, np.float32),
        "original_shape": [1, 1],
        "mirrored": False,
        "limb": limb.value if limb else "LH",
        "limb_source": "filename" if limb else "unknown",
        "path": str(path),
        "warnings": json.dumps([UNREADABLE + reason]),
    }


def prepare_input(
    image: ImageData,
    limb: str | None,
    spatial_size: tuple[int, int],
    path: str | Path,
    *,
    crop_edges: bool = False,
) -> dict[str, Any]:
    """The locator's (or multi-task network's) input and what its decoder needs.

    Pixels come from :func:`annotation_tools.radiograph.prepare_radiograph` - the same
    preparation as the training export. ``crop_edges`` (the multi-task network) crops to the
    Canny-edge bounding box first and returns it as ``crop_box`` ``[y0, y1, x0, x1]``.
    """
    resolved, source = resolve_limb(path, image, limb)
    mirrored = resolved is not None and resolved.side == "right"
    prepared = prepare_radiograph(image, spatial_size, mirror=mirrored, crop_edges=crop_edges)
    warnings = prepared.warnings
    if resolved is None:
        warnings.append(
            "limb unknown (no DICOM laterality/body part, no LH/RH/LF/RF in the file name): "
            "limb kind decided from the image, side assumed left"
        )
    box = prepared.geometry.crop
    h, w = image.shape
    return {
        "pixels": prepared.pixels,
        "original_shape": [int(h), int(w)],
        "mirrored": bool(mirrored),
        "limb": resolved.value if resolved else "",
        "limb_source": source,
        "path": str(path),
        "warnings": json.dumps(warnings),
        **({"crop_box": [box.y0, box.y1, box.x0, box.x1]} if crop_edges else {}),
    }


def _value(item: Any) -> Any:
    """A decollated value may come wrapped in a one-element list or tensor."""
    if isinstance(item, torch.Tensor):
        item = item.tolist()
    if isinstance(item, list | tuple) and len(item) == 1 and not isinstance(item[0], int | float):
        return item[0]
    return item


def decoder_args(d: Mapping[Hashable, Any]) -> dict[str, Any]:
    """What :class:`LoadRadiographd` put into a (decollated) item, as decoder arguments."""
    return {
        "limb": _value(d.get("limb", "")),
        "limb_source": _value(d.get("limb_source", "")),
        "original_shape": [int(v) for v in torch.as_tensor(d["original_shape"]).flatten()],
        "mirrored": bool(_value(d.get("mirrored", False))),
        "path": _value(d.get("path", "")),
        "warnings": json.loads(_value(d.get("warnings", "[]"))),
    }


def network_input(pixels: np.ndarray, coordconv: bool) -> torch.Tensor:
    """Prepared pixels ``(H, W)`` -> the network's input ``(C, H, W)`` (+ CoordConv x/y)."""
    x = torch.from_numpy(pixels)[None]
    if coordconv:
        from monai.transforms import AddCoordinateChannels

        x = AddCoordinateChannels(spatial_dims=(0, 1))(x)
    return torch.as_tensor(x, dtype=torch.float32)
