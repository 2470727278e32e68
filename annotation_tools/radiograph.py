"""Radiograph preparation: the one definition that training export and inference share.

A network sees a radiograph as grey pixels, optionally cropped to the limb's Canny edges
(multi-task U-Net), percentile-windowed to [0, 1], resized to its grid and, for right limbs,
mirrored to look like a left one. :func:`prepare_radiograph` does exactly that and returns the
:class:`GridGeometry` that maps joint centres between image pixels and the grid, so that the
exported training input of an image and the inference input of the same image are the same
pixels (``tests/test_radiograph.py`` checks it) and targets land where the network looks.

Also here: which limb a radiograph shows (given > DICOM tags > file name), which files of a
folder are images, which of them cannot be a hand or foot radiograph and why
(:func:`radiograph_refusal`, :func:`radiograph_files`), and the MONAI transform
:class:`LoadRadiographd` that reads and prepares a radiograph for the locator and the
multi-task U-Net (with the facts their decoder needs).
"""

from __future__ import annotations

import json
import re
import warnings as _warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .imageio import (
    ImageData,
    ImageReadError,
    looks_like_image_file,
    max_pixels,
    read_image,
    sniff_format,
)
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
    "RADIOGRAPH_MODALITIES",
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
    "radiograph_files",
    "radiograph_refusal",
    "resolve_limb",
    "ultrasound_hint",
    "unreadable",
]

MIN_SIDE = 64  # below this a radiograph holds too little to find joints in
LIMB_TOKEN = re.compile(r"(?:^|[^A-Za-z])(LH|RH|LF|RF)(?:$|[^A-Za-z])", re.IGNORECASE)
# DICOM Modality values a hand/foot radiograph can carry ("" = not said; OT = secondary capture,
# e.g. a scanned film): anything else (US, CT, MR, NM, ...) is refused with its name.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "OT", "")
# How ultrasound frames are named (the phantoms write <patient>_US<k>_<site>_gs.png and
# ..._doppler.png into an "ultrasound" folder; exports name B-mode/Doppler frames likewise):
# a token between separators in the file name, or the file's own folder being "ultrasound"/"us".
US_TOKEN = re.compile(
    r"(?:^|[^A-Za-z0-9])(US\d*|doppler|greyscale|grayscale|gs|b-?mode|cdi|pdi)(?:$|[^A-Za-z0-9])",
    re.IGNORECASE,
)
US_FOLDERS = ("ultrasound", "us", "sonography")
_COLOUR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


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
    """Image files under a folder, recursively (sorted): by extension, plus DICOM files without
    one (the ``DICM`` preamble); hidden files, DICOMDIR and non-images left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and looks_like_image_file(p))


def ultrasound_hint(path: str | Path) -> str | None:
    """Why a file's name says it is an ultrasound frame (see ``US_TOKEN``), or None."""
    path = Path(path)
    match = US_TOKEN.search(path.stem)
    if match:
        return f"file name token {match.group(1)!r}"
    if path.parent.name.lower() in US_FOLDERS:
        return f"in a folder named {path.parent.name!r}"
    return None


def radiograph_refusal(path: str | Path, *, limit: int | None = None) -> str | None:
    """Why a file cannot be a hand or foot radiograph, or None when it can.

    Decided from the header wherever possible (DICOM without pixels, Pillow's lazy open), so a
    folder is sorted without decoding it: DICOM Modality not in ``RADIOGRAPH_MODALITIES``;
    colour (RGB/YBR/palette; a raster in a colour mode is decoded once to see whether its
    channels differ - a grey image saved as RGB is fine); multi-frame; smaller than
    ``MIN_SIDE``; above the size limit; a DICOMDIR; unreadable header; named like an
    ultrasound frame (``ultrasound_hint``). The aspect ratio is not used: foot radiographs are
    often landscape, like ultrasound frames.
    """
    path = Path(path)
    limit = max_pixels(limit)
    try:
        kind = sniff_format(path)
    except OSError as exc:
        return f"unreadable ({exc})"
    if kind == "dicom" or (kind is None and path.suffix.lower() in (".dcm", ".dicom", ".dic")):
        return _dicom_refusal(path, limit)
    if kind is None:
        return "not an image file (no DICOM, PNG, JPEG or TIFF signature)"
    hint = ultrasound_hint(path)
    if hint:
        return f"ultrasound frame ({hint}), not a radiograph"
    return _raster_refusal(path, limit)


def _dicom_refusal(path: Path, limit: int) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        return f"unreadable DICOM header ({type(exc).__name__}: {exc})"
    meta = getattr(ds, "file_meta", None)
    if (
        path.name.upper() == "DICOMDIR"
        or "DirectoryRecordSequence" in ds
        or (
            meta is not None
            and str(meta.get("MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10"
        )
    ):
        return "a DICOMDIR (the index of a DICOM folder), not an image"
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality not in RADIOGRAPH_MODALITIES:
        what = "ultrasound" if modality == "US" else "not a radiograph"
        return f"DICOM Modality {modality} ({what}); a radiograph is CR, DX or DR"
    if not modality:
        hint = ultrasound_hint(path)
        if hint:
            return f"ultrasound frame ({hint}; no DICOM Modality), not a radiograph"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in _COLOUR_PHOTOMETRIC:
        return f"colour image ({photometric}); a radiograph is grey-scale"
    try:
        frames = int(str(ds.get("NumberOfFrames", 1) or 1).strip())
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, ValueError, TypeError) as exc:
        return f"DICOM header without a usable image size ({exc})"
    if frames > 1:
        return f"multi-frame DICOM ({frames} frames, a cine loop); a radiograph has one frame"
    return _size_refusal(rows, cols, limit)


def _size_refusal(rows: int, cols: int, limit: int) -> str | None:
    if min(rows, cols) < MIN_SIDE:
        return f"too small ({cols}x{rows} px; a radiograph needs >= {MIN_SIDE} px a side)"
    if rows * cols > limit:
        return (
            f"too large ({cols}x{rows} px, {rows * cols / 1e6:.0f} megapixels; the limit is "
            f"{limit / 1e6:.0f}, RA_JOINTS_MAX_PIXELS)"
        )
    return None


def _raster_refusal(path: Path, limit: int) -> str | None:
    from PIL import Image

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except Image.DecompressionBombError as exc:
        from .imageio import size_refusal_reason

        return f"too large: {size_refusal_reason(exc, limit)}"
    except OSError as exc:
        return f"unreadable ({exc})"
    with handle as image:
        cols, rows = image.size
        frames = int(getattr(image, "n_frames", 1) or 1)
        mode = image.mode
    if frames > 1:
        return f"{frames} pages/frames in one file; a radiograph has one"
    refusal = _size_refusal(rows, cols, limit)
    if refusal or mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16"):
        return refusal
    try:
        image = read_image(path, max_pixels=limit)
    except ImageReadError as exc:
        return f"unreadable ({exc.reason})"
    return f"colour image ({mode}); a radiograph is grey-scale" if image.is_colour else None


def radiograph_files(
    folder: str | Path, *, limit: int | None = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files under ``folder`` that can be radiographs, and every other image file with the
    reason it was left out (``ra-joints predict --images`` lists them; no patient is formed
    from a skipped file)."""
    accepted: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for path in image_files(folder):
        reason = radiograph_refusal(path, limit=limit)
        if reason is None:
            accepted.append(path)
        else:
            skipped.append((str(path), reason))
    return accepted, skipped


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
