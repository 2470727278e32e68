"""Read radiographs and ultrasound frames the same way everywhere (plugin, export, bundles).

``read_image`` returns pixels in display orientation (MONOCHROME1 inverted, colour converted to
RGB, palette colour expanded), the pixel spacing and the metadata that decides what the image is
(laterality, body part, photometric interpretation). It reads the whole file or fails with one
:class:`ImageReadError` naming the file and the reason: nothing half-read is returned.

DICOM goes through pydicom (with pylibjpeg/openjpeg for compressed transfer syntaxes) and falls
back to SimpleITK/GDCM for compressed data pydicom cannot decode. GDCM applies its own display
conversion (MONOCHROME1 inverted, rescale slope/intercept, YBR and palette to RGB); the fallback
undoes the grey-scale part so that the one conversion below is applied exactly once, and it
refuses what it cannot give back exactly (colour above 8 bits). Before anything is decoded the
PixelData length is checked against Rows x Columns x frames x samples x bits (native data) or
the last JPEG fragment's end-of-image marker (compressed data): a file cut short gives one clear
error, never a half-black image. ``tests/test_imageio_corpus.py`` runs pydicom's own test files
through both paths and compares with pydicom's decoded arrays.

PNG, JPEG and TIFF go through Pillow: the EXIF orientation is applied (``ImageOps.exif_transpose``)
and the size is read from the header first.

**Size limit.** An image of more than :data:`MAX_PIXELS` pixels (50 megapixels; the
``RA_JOINTS_MAX_PIXELS`` environment variable or the ``max_pixels`` argument change it) is
*refused* with a reason before its pixels are decoded (header size for PNG/JPEG/TIFF, Rows x
Columns for DICOM). Refusing rather than downsampling keeps one rule for coordinates: every
point in the store is a pixel of the original file, and no reader has to carry a scale factor.
A hand radiograph at 0.1 mm/pixel is about 6 megapixels; 50 is far above any real one.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "ImageData",
    "ImageReadError",
    "file_sha256",
    "is_dicomdir",
    "looks_like_image_file",
    "max_pixels",
    "read_image",
    "sniff_format",
    "write_dicom",
    "write_png",
]

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_EXTENSIONS = DICOM_EXTENSIONS + RASTER_EXTENSIONS
MAX_PIXELS = 50_000_000  # default size limit (pixels); see the module docstring
MAX_PIXELS_ENV = "RA_JOINTS_MAX_PIXELS"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_COLOUR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")

_SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "PALETTE COLOR",
}


class ImageReadError(OSError):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


@dataclass
class ImageData:
    """Pixels plus what the rest of the project needs to know about them.

    ``pixels`` is ``(H, W)`` for grey-scale or ``(H, W, 3)`` uint8 RGB for colour, in display
    orientation (bright = dense bone). ``spacing`` is ``(row, column)`` in millimetres, or
    ``None`` when the file does not say.
    """

    pixels: np.ndarray
    path: Path
    format: str  # "dicom" | "png" | "jpeg" | "tiff"
    spacing: tuple[float, float] | None = None
    photometric: str = "MONOCHROME2"
    laterality: str | None = None  # "L" | "R" | None
    body_part: str | None = None
    modality: str | None = None
    patient_id: str | None = None
    bits_stored: int | None = None
    n_frames: int = 1
    frame: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. "frame 0 of 30 shown"

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[:2])  # type: ignore[return-value]

    def grey(self) -> np.ndarray:
        """A float32 grey-scale view (luma for colour images)."""
        if not self.is_colour:
            return self.pixels.astype(np.float32, copy=False)
        rgb = self.pixels.astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash used by the annotation store to notice a changed or moved image."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
)


def sniff_format(path: str | Path) -> str | None:
    """The format a file's bytes say it is (``dicom``/``png``/``jpeg``/``tiff``), or None."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def is_dicomdir(path: str | Path) -> bool:
    """A DICOMDIR is the index of a DICOM folder (no pixels); read the folder instead."""
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return True
    if sniff_format(path) != "dicom":
        return False
    import pydicom

    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return False
    return str(meta.file_meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def looks_like_image_file(path: str | Path) -> bool:
    """An image by its extension, or a DICOM without one (the ``DICM`` preamble); never a
    DICOMDIR or a hidden file. Reads at most 132 bytes of files with another extension."""
    path = Path(path)
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    if not path.is_file():
        return False
    try:
        return sniff_format(path) == "dicom"
    except OSError:
        return False


def max_pixels(given: int | None = None) -> int:
    """The size limit in pixels: the argument, else ``RA_JOINTS_MAX_PIXELS``, else 50 M."""
    if given is not None:
        return int(given)
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if env:
        try:
            return int(float(env))
        except ValueError as exc:
            raise ValueError(f"{MAX_PIXELS_ENV}={env!r} is not a number of pixels") from exc
    return MAX_PIXELS


def _check_size(path: Path, rows: int, cols: int, limit: int) -> None:
    if rows * cols > limit:
        raise ImageReadError(
            path,
            f"image is {cols}x{rows} px ({rows * cols / 1e6:.0f} megapixels), above the limit "
            f"of {limit / 1e6:.0f} megapixels; refused before decoding (raise {MAX_PIXELS_ENV} "
            "or pass max_pixels if this is really one radiograph)",
        )


def _format_from_extension(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return "dicom"
    return {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}.get(
        suffix
    )


def read_image(path: str | Path, frame: int = 0, *, max_pixels: int | None = None) -> ImageData:
    """Read one radiograph or ultrasound frame.

    Parameters
    ----------
    path:
        A DICOM (with or without extension), PNG, JPEG or TIFF file. The content must agree with
        the extension: a PNG named ``.dcm`` is refused, because such a file usually means a
        mix-up in the data export. A DICOMDIR is refused (it is an index, not an image).
    frame:
        For multi-frame (cine) DICOM or multi-page TIFF, the frame to return (0 = first); the
        count is in ``n_frames`` and a note in ``warnings``.
    max_pixels:
        Refuse larger images before decoding (default :func:`max_pixels`: 50 megapixels or
        ``RA_JOINTS_MAX_PIXELS``).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    claimed = _format_from_extension(path)
    actual = sniff_format(path)
    if claimed is None and actual is None:
        raise ImageReadError(
            path,
            f"unsupported file type {path.suffix!r}; expected one of {', '.join(IMAGE_EXTENSIONS)}",
        )
    if claimed == "dicom" and actual not in (None, "dicom"):
        raise ImageReadError(
            path, f"named as DICOM but the file content is {actual.upper()}; rename or re-export it"
        )
    if claimed not in (None, "dicom") and actual is not None and actual != claimed:
        raise ImageReadError(
            path, f"named as {claimed.upper()} but the file content is {actual.upper()}"
        )
    kind = actual or claimed
    limit = globals()["max_pixels"](max_pixels)
    try:
        if kind == "dicom":
            return _read_dicom(path, frame, limit)
        return _read_raster(path, kind, frame, limit)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder failure becomes one clear error
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------ DICOM


def _read_dicom(path: Path, frame: int, limit: int = MAX_PIXELS) -> ImageData:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise ImageReadError(path, f"corrupt or truncated DICOM ({exc})") from exc
    meta = getattr(ds, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise ImageReadError(
            path, "is a DICOMDIR (the index of a DICOM folder), not an image; read the folder"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (is it a report or a DICOMDIR?)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise ImageReadError(
            path,
            f"unsupported photometric interpretation {photometric or '(missing)'!r}; "
            f"supported: {', '.join(sorted(_SUPPORTED_PHOTOMETRIC))}",
        )
    try:
        n_frames = int(str(ds.get("NumberOfFrames", 1) or 1).strip())
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, ValueError, TypeError) as exc:
        raise ImageReadError(path, f"DICOM header is inconsistent ({exc})") from exc
    if not 0 <= frame < n_frames:
        raise ImageReadError(path, f"frame {frame} requested but the file has {n_frames} frame(s)")
    _check_size(path, rows, cols, limit)
    _check_pixel_data_length(ds, path, n_frames)
    pixels = _dicom_pixels(ds, path, frame, n_frames)
    notes = [f"multi-frame DICOM: frame {frame} of {n_frames} shown"] if n_frames > 1 else []
    return ImageData(
        pixels=pixels,
        path=path,
        format="dicom",
        spacing=_dicom_spacing(ds),
        photometric=photometric,
        laterality=_dicom_laterality(ds),
        body_part=(str(ds.get("BodyPartExamined", "")).strip() or None),
        modality=(str(ds.get("Modality", "")).strip() or None),
        patient_id=(str(ds.get("PatientID", "")).strip() or None),
        bits_stored=int(ds.get("BitsStored", 8)),
        n_frames=n_frames,
        frame=frame,
        metadata={
            "transfer_syntax": str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
            "series_description": str(ds.get("SeriesDescription", "")),
            "series_uid": str(ds.get("SeriesInstanceUID", "")),
            "view_position": str(ds.get("ViewPosition", "")),
            "study_date": str(ds.get("StudyDate", "")),
            "accession_number": str(ds.get("AccessionNumber", "")),
            "n_frames": n_frames,
        },
        warnings=notes,
    )


_JPEG_FAMILY = ("1.2.840.10008.1.2.4.",)  # JPEG, JPEG-LS, JPEG 2000: codestreams end in FFD9


def _check_pixel_data_length(ds: Any, path: Path, n_frames: int) -> None:
    """A file cut short (a copy still being written) is refused before anything decodes it.

    Native data: ``len(PixelData)`` against Rows x Columns x frames x samples x bits (pydicom's
    own ``get_expected_length``, which knows YBR_FULL_422 and 1-bit data). Compressed data: the
    last fragment must end with the end-of-image marker.
    """
    from pydicom.pixels.utils import get_expected_length

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds:
        return
    data = ds.PixelData
    if syntax is not None and syntax.is_encapsulated:
        if not str(syntax).startswith(_JPEG_FAMILY):
            return
        from pydicom.encaps import generate_fragments

        try:
            fragments = list(generate_fragments(data))
        except Exception as exc:
            raise ImageReadError(path, f"compressed pixel data is damaged ({exc})") from exc
        if not fragments or b"\xff\xd9" not in bytes(fragments[-1][-8:]):
            raise ImageReadError(
                path,
                "compressed pixel data is truncated (the last fragment has no end-of-image "
                "marker); the file was cut short or is still being written",
            )
        return
    try:
        expected = int(get_expected_length(ds, "bytes"))
    except Exception as exc:
        raise ImageReadError(path, f"DICOM header is inconsistent ({exc})") from exc
    if len(data) < expected:
        raise ImageReadError(
            path,
            f"pixel data is truncated: {len(data)} of {expected} bytes "
            f"({ds.Rows} rows x {ds.Columns} columns x {n_frames} frame(s) x "
            f"{ds.get('SamplesPerPixel', 1)} sample(s) x {ds.BitsAllocated} bits); the file "
            "was cut short or is still being written",
        )


def _dicom_pixels(ds: Any, path: Path, frame: int, n_frames: int) -> np.ndarray:
    """Decode one frame in display form, with GDCM (through SimpleITK) as a second chance for
    compressed data pydicom cannot decode. Either way the display conversion runs once."""
    from pydicom.pixels import pixel_array

    photometric = str(ds.PhotometricInterpretation).strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # raw=False: pydicom converts YBR to RGB itself (JPEG's own YBR included)
            arr = pixel_array(ds, index=frame if n_frames > 1 else None)
    except Exception as first:
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        if syntax is None or not syntax.is_encapsulated:  # native data pydicom refuses is broken
            raise ImageReadError(
                path, f"pixel data cannot be decoded ({_last_line(first)})"
            ) from first
        try:
            return _gdcm_display(ds, path, frame, n_frames)
        except ImageReadError:
            raise
        except Exception as second:
            raise ImageReadError(
                path,
                f"pixel data cannot be decoded ({_last_line(first)}); "
                f"SimpleITK/GDCM also failed ({_last_line(second)})",
            ) from second
    _check_shape(arr, ds, path)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return _rgb_to_uint8(apply_color_lut(arr, ds), 16)
    if arr.ndim == 3:
        return _rgb_to_uint8(arr, int(ds.get("BitsStored", 8)))
    return _grey_display(arr, ds, photometric)


def _check_shape(arr: np.ndarray, ds: Any, path: Path) -> None:
    expected_rows, expected_cols = int(ds.Rows), int(ds.Columns)
    if arr.shape[0] != expected_rows or arr.shape[1] != expected_cols:
        raise ImageReadError(
            path, f"decoded {arr.shape} but the header says {expected_rows}x{expected_cols}"
        )


def _last_line(exc: BaseException) -> str:
    """SimpleITK errors span several lines of C++ context; the last one is the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _gdcm_display(ds: Any, path: Path, frame: int, n_frames: int) -> np.ndarray:
    """GDCM's pixels brought back to pydicom's, then the one display conversion.

    GDCM (ITK's GDCMImageIO) gives ``slope * (2**BitsStored - 1 - stored) + intercept`` for
    MONOCHROME1 and ``slope * stored + intercept`` otherwise, and RGB for YBR and palette
    colour (measured on pydicom's test files). The grey-scale mapping is undone exactly;
    colour above 8 bits does not survive GDCM's RLE path and is refused.
    """
    import SimpleITK as sitk

    photometric = str(ds.PhotometricInterpretation).strip().upper()
    bits_allocated = int(ds.get("BitsAllocated", 8))
    if photometric in _COLOUR_PHOTOMETRIC and photometric != "PALETTE COLOR" and bits_allocated > 8:
        raise ImageReadError(
            path,
            f"{bits_allocated}-bit colour in a transfer syntax pydicom cannot decode; the GDCM "
            "fallback cannot decode it exactly, so it is refused",
        )
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    rows, cols = int(ds.Rows), int(ds.Columns)
    colour = photometric in _COLOUR_PHOTOMETRIC
    per_frame = rows * cols * (3 if colour else 1)
    if arr.size != per_frame * n_frames:
        raise ImageReadError(
            path, f"GDCM decoded {arr.shape} but the header says {n_frames} x {rows} x {cols}"
        )
    arr = arr.reshape((n_frames, rows, cols, 3) if colour else (n_frames, rows, cols))[frame]
    if colour:
        return _rgb_to_uint8(arr, 8)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    stored = (arr.astype(np.float64) - intercept) / slope
    if photometric == "MONOCHROME1":
        stored = ((1 << int(ds.get("BitsStored", bits_allocated))) - 1) - stored
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{max(1, bits_allocated // 8)}")
    info = np.iinfo(dtype)
    rounded = np.rint(stored)
    if np.abs(stored - rounded).max(initial=0) > 1e-3 or rounded.min(initial=0) < info.min:
        raise ImageReadError(path, "GDCM's pixels do not map back to stored values; refused")
    return _grey_display(rounded.clip(info.min, info.max).astype(dtype), ds, photometric)


def _grey_display(arr: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """Stored grey values -> display: the modality LUT (rescale) once, then MONOCHROME1 inverted
    once over the range the stored bits can hold (a fixed mapping, not the image's min/max)."""
    from pydicom.pixels import apply_modality_lut

    has_lut = "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
    out = apply_modality_lut(arr, ds) if has_lut else arr
    if photometric != "MONOCHROME1":
        return out
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if has_lut:
        ends = apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds).astype(np.float64)
        lo, hi = float(ends.min()), float(ends.max())
        return (lo + hi) - out.astype(np.float64)
    return (lo + hi - arr.astype(np.int64)).astype(arr.dtype)


def _rgb_to_uint8(rgb: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Colour to uint8 by the bit depth the file declares (not by the image's own maximum)."""
    if rgb.dtype == np.uint8:
        return rgb
    if bits is None or bits <= 8:
        bits = 8 if float(rgb.max(initial=0)) <= 255 else 8 * rgb.dtype.itemsize
    scale = 255.0 / float((1 << bits) - 1)
    return np.clip(np.rint(rgb.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _dicom_spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None


def _dicom_laterality(ds: Any) -> str | None:
    for keyword in ("ImageLaterality", "Laterality", "FrameLaterality"):
        value = str(ds.get(keyword, "")).strip().upper()
        if value in ("L", "R"):
            return value
    return None


# ------------------------------------------------------------------------------ raster


def _read_raster(path: Path, kind: str, frame: int = 0, limit: int = MAX_PIXELS) -> ImageData:
    """PNG/JPEG/TIFF through Pillow: size checked from the header, EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # our own limit (checked below) replaces Pillow's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except Image.DecompressionBombError as exc:  # Pillow's own guard (2 x MAX_IMAGE_PIXELS)
        raise ImageReadError(path, size_refusal_reason(exc, limit)) from exc
    except OSError as exc:
        raise ImageReadError(path, f"corrupt or not a {kind.upper()} file ({exc})") from exc
    with handle as image:
        cols, rows = image.size
        _check_size(path, rows, cols, limit)
        n_frames = int(getattr(image, "n_frames", 1) or 1)
        if not 0 <= frame < n_frames:
            raise ImageReadError(path, f"frame {frame} requested but the file has {n_frames}")
        if n_frames > 1:
            image.seek(frame)
        orientation = int(image.getexif().get(0x0112, 1) or 1)
        dpi = image.info.get("dpi")
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image) if orientation != 1 else image
            arr = _pillow_array(oriented, path)
        except ImageReadError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(path, f"corrupt or truncated {kind.upper()} ({exc})") from exc
    if arr.ndim == 3:
        arr = _rgb_to_uint8(arr)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]  # an RGB file of a grey image
    spacing = None
    if dpi and all(float(d) > 0 for d in dpi[:2]):
        spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))
        if np.allclose(spacing, (1.0, 1.0), atol=1e-3):
            spacing = None  # "1 mm" is what writers put when they know nothing
    notes = [f"multi-page {kind.upper()}: page {frame} of {n_frames} shown"] if n_frames > 1 else []
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied")
    return ImageData(
        pixels=np.ascontiguousarray(arr),
        path=path,
        format=kind,
        spacing=spacing,
        photometric="RGB" if arr.ndim == 3 else "MONOCHROME2",
        bits_stored=8 * arr.dtype.itemsize,
        n_frames=n_frames,
        frame=frame,
        metadata={"exif_orientation": orientation, "n_frames": n_frames},
        warnings=notes,
    )


def size_refusal_reason(exc: Exception, limit: int) -> str:
    """Pillow refuses very large images at open, before we see the size; keep its count."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "far too many pixels"
    return (
        f"image has {size}, above the limit of {limit / 1e6:.0f} megapixels; refused before "
        f"decoding ({MAX_PIXELS_ENV} raises the limit up to Pillow's own guard)"
    )


def _pillow_array(image: Any, path: Path) -> np.ndarray:
    """Pillow modes -> grey ``(H, W)`` (uint8/uint16/float32) or ``(H, W, 3)`` uint8."""
    mode = image.mode
    if mode in ("1", "L", "RGB"):
        return np.asarray(image.convert("L") if mode == "1" else image)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))
    if mode in ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(image.convert("RGB"))
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(image)
        if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.float32)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    raise ImageReadError(path, f"unsupported pixel mode {mode!r}")


# ------------------------------------------------------------------------------ writers


def write_png(path: str | Path, pixels: np.ndarray) -> Path:
    """Write a uint8/uint16 grey-scale or uint8 RGB image as PNG."""
    import SimpleITK as sitk

    path = Path(path)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16 pixels, got {pixels.dtype}")
    image = sitk.GetImageFromArray(pixels, isVector=pixels.ndim == 3)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    laterality: str | None = None,
    body_part: str | None = None,
    spacing: tuple[float, float] | None = None,
    bits_stored: int | None = None,
    uid_seed: str | None = None,
    series_description: str = "",
) -> Path:
    """Write a single-frame DICOM (secondary-capture style) for phantoms and tests.

    ``pixels`` are given in display orientation; with ``photometric="MONOCHROME1"`` they are
    inverted on the way out so that a conforming reader shows them the same way.
    Colour (``(H, W, 3)`` uint8) is written as ``photometric="RGB"`` (native, exact) or
    ``"YBR_FULL_422"``: JPEG baseline with 4:2:2 chroma, the way ultrasound scanners export
    their screens (lossy). ``modality="US"`` uses the Ultrasound Image Storage SOP class.
    ``uid_seed`` makes the UIDs deterministic.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        UltrasoundImageStorage,
        generate_uid,
    )

    path = Path(path)
    jpeg = pixels.ndim == 3 and photometric == "YBR_FULL_422"
    if pixels.ndim == 3 and photometric not in ("RGB", "YBR_FULL_422", "MONOCHROME2"):
        raise ValueError(f"colour DICOM photometric must be RGB or YBR_FULL_422, got {photometric}")
    seeds = [uid_seed] if uid_seed else None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        UltrasoundImageStorage if modality == "US" else SecondaryCaptureImageStorage
    )
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=seeds and [*seeds, "sop"])
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=seeds and [*seeds, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=seeds and [*seeds, "series"])
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = modality
    ds.SeriesDescription = series_description
    if laterality:
        ds.ImageLaterality = laterality
    if body_part:
        ds.BodyPartExamined = body_part
    if spacing:
        ds.PixelSpacing = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.ndim == 3:
        if pixels.dtype != np.uint8:
            raise ValueError("colour DICOM pixels must be uint8 RGB")
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422" if jpeg else "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        out = pixels
    else:
        if pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"grey-scale DICOM pixels must be uint8/uint16, got {pixels.dtype}")
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 8 * pixels.dtype.itemsize
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        top = (1 << ds.BitsStored) - 1
        if int(pixels.max(initial=0)) > top:
            raise ValueError(f"pixel values exceed {ds.BitsStored} bits")
        out = (top - pixels).astype(pixels.dtype) if photometric == "MONOCHROME1" else pixels
    ds.PixelRepresentation = 0
    if jpeg:
        import io

        from PIL import Image
        from pydicom.encaps import encapsulate

        buffer = io.BytesIO()
        # quality 95, 4:2:2 (Pillow's subsampling=1); Pillow stores YCbCr (= YBR_FULL)
        Image.fromarray(np.ascontiguousarray(out)).save(
            buffer, format="JPEG", quality=95, subsampling=1
        )
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PixelData = np.ascontiguousarray(out).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
