"""Read radiographs and ultrasound frames the same way everywhere (plugin, export, bundles).

``read_image`` returns pixels in display orientation (MONOCHROME1 inverted, colour converted to
RGB, palette colour expanded), the pixel spacing and the metadata that decides what the image is
(laterality, body part, photometric interpretation). It reads the whole file or fails with one
:class:`ImageReadError` naming the file and the reason: nothing half-read is returned.

DICOM goes through pydicom (with pylibjpeg/openjpeg for compressed transfer syntaxes) and falls
back to SimpleITK/GDCM for syntaxes pydicom cannot decode; PNG, JPEG and TIFF go through
SimpleITK.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "ImageReadError",
    "file_sha256",
    "read_image",
    "sniff_format",
    "write_dicom",
    "write_png",
]

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_EXTENSIONS = DICOM_EXTENSIONS + RASTER_EXTENSIONS

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


def _format_from_extension(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return "dicom"
    return {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}.get(
        suffix
    )


def read_image(path: str | Path, frame: int = 0) -> ImageData:
    """Read one radiograph or ultrasound frame.

    Parameters
    ----------
    path:
        A DICOM, PNG, JPEG or TIFF file. The content must agree with the extension: a PNG named
        ``.dcm`` is refused, because such a file usually means a mix-up in the data export.
    frame:
        For multi-frame (cine) DICOM, the frame to return (0 = first).
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
    try:
        if kind == "dicom":
            return _read_dicom(path, frame)
        return _read_raster(path, kind)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder failure becomes one clear error
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------ DICOM


def _read_dicom(path: Path, frame: int) -> ImageData:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise ImageReadError(path, f"corrupt or truncated DICOM ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (is it a report or a DICOMDIR?)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise ImageReadError(
            path,
            f"unsupported photometric interpretation {photometric or '(missing)'!r}; "
            f"supported: {', '.join(sorted(_SUPPORTED_PHOTOMETRIC))}",
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < n_frames:
        raise ImageReadError(path, f"frame {frame} requested but the file has {n_frames} frame(s)")
    pixels = _dicom_pixels(ds, path, frame, n_frames)
    pixels = _to_display(ds, pixels, photometric)
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
            "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
            "series_description": str(ds.get("SeriesDescription", "")),
            "view_position": str(ds.get("ViewPosition", "")),
            "study_date": str(ds.get("StudyDate", "")),
        },
    )


def _dicom_pixels(ds: Any, path: Path, frame: int, n_frames: int) -> np.ndarray:
    """Decode one frame, with GDCM (through SimpleITK) as a second chance for odd syntaxes."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=frame if n_frames > 1 else None, raw=True)
    except Exception as first:
        try:
            arr = _sitk_dicom_frame(path, frame)
        except Exception as second:
            raise ImageReadError(
                path,
                f"pixel data cannot be decoded ({_last_line(first)}); "
                f"SimpleITK/GDCM also failed ({_last_line(second)})",
            ) from second
        return arr
    expected_rows, expected_cols = int(ds.Rows), int(ds.Columns)
    if arr.shape[0] != expected_rows or arr.shape[1] != expected_cols:
        raise ImageReadError(
            path, f"decoded {arr.shape} but the header says {expected_rows}x{expected_cols}"
        )
    return arr


def _last_line(exc: BaseException) -> str:
    """SimpleITK errors span several lines of C++ context; the last one is the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _sitk_dicom_frame(path: Path, frame: int) -> np.ndarray:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        arr = arr[frame]
    return arr


def _to_display(ds: Any, arr: np.ndarray, photometric: str) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2, YBR -> RGB, palette -> RGB, modality LUT on grey-scale."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _rgb_to_uint8(rgb)
    if photometric.startswith("YBR") and photometric not in ("YBR_ICT", "YBR_RCT"):
        # raw=True leaves YBR untouched, so convert here (JPEG baseline YBR_FULL_422 included).
        return convert_color_space(arr, photometric, "RGB")
    if arr.ndim == 3:
        return _rgb_to_uint8(arr)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        arr = apply_modality_lut(arr, ds)
    if photometric == "MONOCHROME1":
        arr = _invert(arr, ds)
    return arr


def _invert(arr: np.ndarray, ds: Any) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        top = (1 << int(ds.get("BitsStored", arr.dtype.itemsize * 8))) - 1
        return (top - arr.astype(np.int64)).clip(0, top).astype(arr.dtype)
    return (arr.max() + arr.min() - arr).astype(arr.dtype)


def _rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    top = float(rgb.max()) or 1.0
    scale = 255.0 / (65535.0 if top > 255 else 255.0)
    return np.clip(rgb.astype(np.float32) * scale, 0, 255).astype(np.uint8)


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


def _read_raster(path: Path, kind: str) -> ImageData:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(
            path, f"corrupt or truncated {kind.upper()} ({_last_line(exc)})"
        ) from exc
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # drop alpha
    if arr.ndim == 3 and arr.shape[-1] == 2:
        arr = arr[..., 0]  # grey + alpha
    if arr.ndim == 3 and arr.shape[-1] != 3:
        raise ImageReadError(path, f"{arr.shape[0]} pages/frames in one {kind.upper()} file")
    if arr.ndim == 3:
        arr = _rgb_to_uint8(arr)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]  # an RGB file of a grey image
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1][:2])
    return ImageData(
        pixels=np.ascontiguousarray(arr),
        path=path,
        format=kind,
        spacing=None if spacing == (1.0, 1.0) else spacing,  # type: ignore[arg-type]
        photometric="RGB" if arr.ndim == 3 else "MONOCHROME2",
        bits_stored=8 * arr.dtype.itemsize,
    )


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
    ``uid_seed`` makes the UIDs deterministic.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = Path(path)
    seeds = [uid_seed] if uid_seed else None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=seeds and [*seeds, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
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
        ds.PhotometricInterpretation = "RGB"
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
    ds.PixelData = np.ascontiguousarray(out).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
