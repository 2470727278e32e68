import io
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from annotation_tools.imageio import ImageReadError, read_image, write_dicom, write_png


@pytest.fixture
def grey12(rng):
    return (rng.random((40, 56)) * 4095).astype(np.uint16)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_dicom_grey_display_orientation(tmp_path, rng, photometric, bits):
    top = (1 << bits) - 1
    pixels = (rng.random((30, 40)) * top).astype(np.uint8 if bits == 8 else np.uint16)
    path = write_dicom(
        tmp_path / "x.dcm",
        pixels,
        patient_id="P1",
        photometric=photometric,
        bits_stored=bits,
        laterality="R",
        body_part="HAND",
        spacing=(0.15, 0.16),
    )
    image = read_image(path)
    # MONOCHROME1 is stored inverted; the reader must give back what was meant to be shown
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.photometric == photometric
    assert image.bits_stored == bits
    assert image.laterality == "R" and image.body_part == "HAND"
    assert image.spacing == pytest.approx((0.15, 0.16))
    assert image.patient_id == "P1" and image.format == "dicom"


def test_monochrome1_is_inverted_relative_to_stored_values(tmp_path, grey12):
    path = write_dicom(
        tmp_path / "m1.dcm", grey12, patient_id="P", photometric="MONOCHROME1", bits_stored=12
    )
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(stored, 4095 - grey12)
    np.testing.assert_array_equal(read_image(path).pixels, grey12)


def test_dicom_rgb_and_ybr(tmp_path, rng):
    rgb = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, patient_id="P", modality="US")
    np.testing.assert_array_equal(read_image(path).pixels, rgb)
    ds = pydicom.dcmread(path)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds.PixelData = ybr.tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    back = read_image(tmp_path / "ybr.dcm").pixels
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb).max() <= 2


def test_dicom_palette_colour(tmp_path, rng):
    index = (rng.random((20, 30)) * 255).astype(np.uint8)
    path = write_dicom(tmp_path / "p.dcm", index, patient_id="P", modality="US")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    lut = np.arange(256, dtype=np.uint16) * 257
    for colour, values in (("Red", lut), ("Green", lut[::-1].copy()), ("Blue", lut // 2)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", values.tobytes())
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    ds.save_as(path)
    out = read_image(path).pixels
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], index)
    np.testing.assert_array_equal(out[..., 1], 255 - index)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_dicom_compressed_lossless(tmp_path, grey12, syntax):
    path = write_dicom(
        tmp_path / "c.dcm", grey12, patient_id="P", bits_stored=12, photometric="MONOCHROME1"
    )
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(tmp_path / "compressed.dcm")
    image = read_image(tmp_path / "compressed.dcm")
    np.testing.assert_array_equal(image.pixels, grey12)
    assert image.metadata["transfer_syntax"] == syntax


def test_dicom_jpeg_baseline_ybr(tmp_path, rng):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 40, 40)
    rgb[:, 24:] = (40, 40, 200)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "j.dcm", rgb, patient_id="P", modality="US")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    out = read_image(path).pixels
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 8  # lossy, but red stays red, blue stays blue
    assert out[:, :20, 0].mean() > 150 and out[:, 28:, 2].mean() > 150


def test_multiframe_cine_picks_a_frame(tmp_path, rng):
    frames = (rng.random((3, 16, 20)) * 255).astype(np.uint8)
    path = write_dicom(tmp_path / "cine.dcm", frames[0], patient_id="P", modality="US")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    np.testing.assert_array_equal(read_image(path).pixels, frames[0])
    image = read_image(path, frame=2)
    np.testing.assert_array_equal(image.pixels, frames[2])
    assert image.n_frames == 3 and image.frame == 2
    with pytest.raises(ImageReadError, match="frame 5 requested but the file has 3"):
        read_image(path, frame=5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_8_and_16_bit(tmp_path, rng, dtype):
    pixels = (rng.random((25, 35)) * np.iinfo(dtype).max).astype(dtype)
    image = read_image(write_png(tmp_path / "x.png", pixels))
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.pixels.dtype == dtype and image.format == "png"


def test_png_rgb_and_grey_in_rgb(tmp_path, rng):
    rgb = (rng.random((10, 12, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "c.png", rgb)).pixels, rgb)
    grey = np.repeat(rgb[..., :1], 3, axis=2)
    assert read_image(write_png(tmp_path / "g.png", grey)).pixels.ndim == 2


def test_jpeg_and_tiff(tmp_path, rng):
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (32, 1))
    Image.fromarray(grey).save(tmp_path / "x.jpg", quality=95)
    image = read_image(tmp_path / "x.jpg")
    assert image.format == "jpeg" and image.pixels.shape == (32, 64)
    assert np.abs(image.pixels.astype(int) - grey).mean() < 3
    pixels16 = (rng.random((20, 30)) * 65535).astype(np.uint16)
    Image.fromarray(pixels16).save(tmp_path / "x.tif")
    tiff = read_image(tmp_path / "x.tif")
    assert tiff.format == "tiff"
    np.testing.assert_array_equal(tiff.pixels, pixels16)


# ------------------------------------------------------------------ bad input


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.dcm.*empty \(0 bytes\)"):
        read_image(tmp_path / "empty.dcm")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_truncated_dicom(tmp_path, grey12):
    path = write_dicom(tmp_path / "ok.dcm", grey12, patient_id="P", bits_stored=12)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.dcm") as info:
        read_image(tmp_path / "cut.dcm")
    assert "decoded" in str(info.value) or "truncated" in str(info.value)
    (tmp_path / "header_only.dcm").write_bytes(data[:200])
    with pytest.raises(ImageReadError, match=r"header_only\.dcm"):
        read_image(tmp_path / "header_only.dcm")


def test_corrupt_bytes_named_dicom(tmp_path, rng):
    (tmp_path / "noise.dcm").write_bytes(rng.bytes(4096))
    with pytest.raises(ImageReadError, match=r"noise\.dcm"):
        read_image(tmp_path / "noise.dcm")


def test_png_renamed_to_dcm(tmp_path, rng):
    png = write_png(tmp_path / "x.png", (rng.random((5, 5)) * 255).astype(np.uint8))
    shutil.copy(png, tmp_path / "x.dcm")
    with pytest.raises(ImageReadError, match="named as DICOM but the file content is PNG"):
        read_image(tmp_path / "x.dcm")


def test_unsupported_photometric_interpretation(tmp_path, grey12):
    path = write_dicom(tmp_path / "x.dcm", grey12, patient_id="P", bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="unsupported photometric interpretation 'HSV'"):
        read_image(path)


def test_dicom_without_pixels(tmp_path, grey12):
    path = write_dicom(tmp_path / "x.dcm", grey12, patient_id="P", bits_stored=12)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(path)


def test_truncated_png_and_unknown_extension(tmp_path, rng):
    png = write_png(tmp_path / "x.png", (rng.random((64, 64)) * 255).astype(np.uint8))
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match=r"x\.png"):
        read_image(png)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="unsupported file type '.txt'"):
        read_image(tmp_path / "notes.txt")
