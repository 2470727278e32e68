"""pydicom's own test files through our reader, compared with pydicom's decoded arrays.

Every file with pixel data is either read equal to pydicom's ``pixel_array`` after the display
conversion written out below (palette -> RGB, rescale once, MONOCHROME1 inverted once), or
refused with one :class:`ImageReadError` naming the file - never silently different. The same
holds with pydicom's decoders switched off, so that compressed files go through the GDCM
fallback. The corpus ships inside pydicom (``pydicom.data.get_testdata_files``; no download);
files above 2 MB are skipped to keep the test fast (none are that large in pydicom 3.0).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_files
from pydicom.pixels import apply_color_lut, apply_modality_lut

from annotation_tools.imageio import ImageReadError, read_image

MAX_BYTES = 2 << 20
LOSSY = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy allowed)
)


def _corpus() -> list[tuple[Path, pydicom.Dataset]]:
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files()):
            path = Path(name)
            if path.stat().st_size > MAX_BYTES:
                continue
            try:
                ds = pydicom.dcmread(path)
            except Exception:
                continue
            if "PixelData" in ds:
                files.append((path, ds))
    return files


def _reference(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's decoded frame 0 in display form (independent of annotation_tools)."""
    frames = int(str(ds.get("NumberOfFrames", 1) or 1))
    arr = ds.pixel_array
    if frames > 1:
        arr = arr[0]
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        return rgb / 65535 * 255
    if arr.ndim == 3:
        bits = int(ds.BitsStored)
        return arr.astype(np.float64) * (255 / ((1 << bits) - 1)) if bits > 8 else arr
    out = apply_modality_lut(arr, ds).astype(np.float64)
    if photometric == "MONOCHROME1":
        bits = int(ds.BitsStored)
        signed = int(ds.PixelRepresentation) == 1
        ends = np.array(
            [-(1 << (bits - 1)), (1 << (bits - 1)) - 1] if signed else [0, (1 << bits) - 1]
        )
        ends = apply_modality_lut(ends, ds).astype(np.float64)
        out = ends.min() + ends.max() - out
    return out


def _same(ours: np.ndarray, ref: np.ndarray, syntax: str) -> bool:
    if ours.shape != ref.shape:
        return False
    diff = np.abs(ours.astype(np.float64) - ref)
    if syntax in LOSSY:  # decoders may round differently
        span = max(float(ref.max() - ref.min()), 1.0)
        return float(diff.max()) <= max(4.0, 0.02 * span)
    if ours.dtype == np.uint8 and ref.ndim == 3:  # colour scaled to 8 bits: rounding only
        return float(diff.max()) <= 0.51
    return float(diff.max()) < 1e-6


def _run(files, monkeypatch=None) -> dict[str, list[str]]:
    outcome: dict[str, list[str]] = {"equal": [], "refused": [], "no_reference": []}
    for path, ds in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = _reference(ds)
        except Exception:
            ref = None
        try:
            ours = read_image(path).pixels
        except ImageReadError as exc:
            assert str(path) in str(exc), f"error does not name the file: {exc}"
            outcome["refused"].append(path.name)
            continue
        if ref is None:  # pydicom cannot decode it at all; GDCM did
            outcome["no_reference"].append(path.name)
            continue
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        assert _same(ours, ref, syntax), f"{path.name}: read differently from pydicom"
        outcome["equal"].append(path.name)
    return outcome


def test_pydicom_corpus_equal_or_refused():
    files = _corpus()
    assert len(files) >= 80, "pydicom's test files are missing"
    outcome = _run(files)
    assert len(outcome["equal"]) >= 80
    assert "MR_truncated.dcm" in outcome["refused"]  # cut short: refused, not padded
    # pydicom cannot decode it (12-bit JPEG with bad SOS parameters); GDCM can
    assert outcome["no_reference"] == ["JPEG-lossy.dcm"]


def test_pydicom_corpus_through_the_gdcm_fallback(monkeypatch):
    """pydicom's decoders switched off: compressed files go through GDCM, which must give the
    same pixels (its own MONOCHROME1/rescale/colour conversion undone) or refuse."""
    files = [(p, ds) for p, ds in _corpus() if ds.file_meta.get("TransferSyntaxUID") is not None]
    compressed = [(p, ds) for p, ds in files if ds.file_meta.TransferSyntaxUID.is_encapsulated]

    def no_decoder(*args, **kwargs):
        raise RuntimeError("decoder switched off for the test")

    import pydicom.pixels

    refs = []
    for path, ds in compressed:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refs.append((path, ds, _reference(ds)))
        except Exception:  # pydicom cannot decode it: nothing to compare with
            continue
    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoder)
    equal, refused = [], []
    for path, ds, ref in refs:
        try:
            ours = read_image(path).pixels
        except ImageReadError as exc:
            assert str(path) in str(exc)
            refused.append(path.name)
            continue
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert _same(ours, ref, syntax), f"{path.name}: GDCM fallback differs from pydicom"
        equal.append(path.name)
    assert len(equal) >= 25, (equal, refused)
    assert "SC_rgb_rle_16bit.dcm" in refused  # GDCM's 16-bit colour RLE is not exact
    assert "693_J2KI.dcm" in equal  # rescale undone and applied once
