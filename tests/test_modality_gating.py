"""What cannot be a hand/foot radiograph is refused with a reason; EXIF, extensionless DICOM,
the size limit and a truncated copy; predict lists every skipped file and keeps the good
patients."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from helpers import huge_png
from PIL import Image

from annotation_tools.imageio import ImageReadError, read_image, write_dicom, write_png
from annotation_tools.radiograph import radiograph_files, radiograph_refusal


def test_refusals_say_why(tmp_path, rng):
    grey = (rng.random((80, 70)) * 4000).astype(np.uint16)
    rgb = (rng.random((80, 90, 3)) * 255).astype(np.uint8)
    ok = write_dicom(tmp_path / "P1_LH.dcm", grey, patient_id="P1", modality="DX", bits_stored=12)
    us = write_dicom(tmp_path / "P1_a.dcm", grey, patient_id="P1", modality="US", bits_stored=12)
    ct = write_dicom(tmp_path / "P1_b.dcm", grey, patient_id="P1", modality="CT", bits_stored=12)
    colour = write_dicom(tmp_path / "P1_c.dcm", rgb, patient_id="P1", modality="OT")
    small = write_png(tmp_path / "P2_LH.png", grey[:20, :20])
    doppler = write_png(tmp_path / "P2_US1_mcp_2_doppler.png", rgb)
    bmode = write_png(tmp_path / "P2_US1_mcp_2_gs.png", grey.astype(np.uint8))
    colour_png = write_png(tmp_path / "photo.png", rgb)
    grey_as_rgb = write_png(
        tmp_path / "P3_RF.png", np.repeat(grey[..., None] >> 8, 3, 2).astype(np.uint8)
    )
    assert radiograph_refusal(ok) is None
    assert radiograph_refusal(grey_as_rgb) is None  # an RGB file of a grey image is fine
    assert "Modality US (ultrasound)" in radiograph_refusal(us)
    assert "Modality CT" in radiograph_refusal(ct)
    assert "colour image (RGB)" in radiograph_refusal(colour)
    assert "too small" in radiograph_refusal(small)
    assert "ultrasound frame" in radiograph_refusal(doppler)
    assert "ultrasound frame (file name token 'US1')" in radiograph_refusal(bmode)
    assert "'gs'" in radiograph_refusal(write_png(tmp_path / "knee_gs.png", grey.astype(np.uint8)))
    assert "colour image" in radiograph_refusal(colour_png)
    cine = pydicom.dcmread(ok)
    cine.NumberOfFrames = 2
    cine.PixelData = grey.tobytes() * 2
    cine.save_as(tmp_path / "cine.dcm")
    assert "multi-frame DICOM (2 frames" in radiograph_refusal(tmp_path / "cine.dcm")
    image = read_image(tmp_path / "cine.dcm", frame=1)
    assert image.n_frames == 2 and "frame 1 of 2" in image.warnings[0]


def test_huge_png_refused_before_decoding(tmp_path, monkeypatch):
    path = huge_png(tmp_path / "P9_LH.png")
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageReadError, match=r"P9_LH\.png.*400 megapixels, above the limit of 50"):
        read_image(path)
    assert "too large" in radiograph_refusal(path)
    monkeypatch.setenv("RA_JOINTS_MAX_PIXELS", "1000")
    small = write_png(tmp_path / "s.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(ImageReadError, match="above the limit"):
        read_image(small)
    assert read_image(small, max_pixels=2000).shape == (40, 40)


def test_exif_rotated_jpeg_is_shown_upright(tmp_path):
    upright = np.zeros((60, 40), np.uint8)  # portrait, bright top rows
    upright[:10] = 255
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # what the camera wrote: landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(tmp_path / "hand.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "hand.jpg")
    assert image.shape == (60, 40)
    assert image.pixels[:8].mean() > 200 and image.pixels[20:].mean() < 30
    assert image.metadata["exif_orientation"] == 6


def test_extensionless_dicom_and_dicomdir(tmp_path, rng):
    from napari_ra_joints._reader import get_reader

    grey = (rng.random((70, 64)) * 4000).astype(np.uint16)
    folder = tmp_path / "PACS" / "S1"
    folder.mkdir(parents=True)
    src = write_dicom(tmp_path / "x.dcm", grey, patient_id="P7", modality="CR", bits_stored=12)
    shutil.copy(src, folder / "IM00001")
    (folder / "DICOMDIR").write_bytes(src.read_bytes())  # named so: an index, never an image
    (folder / "notes").write_text("not an image")
    reader = get_reader(str(folder / "IM00001"))
    assert reader is not None
    [(data, _, kind)] = reader(str(folder / "IM00001"))
    assert kind == "image"
    np.testing.assert_array_equal(np.asarray(data), grey)
    assert get_reader(str(folder / "DICOMDIR")) is None
    assert get_reader(str(folder / "notes")) is None
    accepted, skipped = radiograph_files(tmp_path / "PACS")
    assert accepted == [folder / "IM00001"] and skipped == []


def test_predict_folder_lists_skipped_files_and_keeps_the_good_patients(small_cohort, tmp_path):
    from annotation_tools.predict import PredictionService

    images = tmp_path / "cohort"
    shutil.copytree(small_cohort / "radiographs", images / "radiographs")
    shutil.copytree(small_cohort / "ultrasound", images / "ultrasound")
    dicom = sorted((images / "radiographs").glob("*.dcm"))[0]
    data = dicom.read_bytes()
    cut = images / "radiographs" / f"copy_{dicom.name}"
    cut.write_bytes(data[: len(data) // 2 + 1000])  # same PatientID, half the pixels
    huge_png(images / "radiographs" / "Z9_LH.png")
    n_us = len(list((images / "ultrasound").iterdir()))
    result = PredictionService("two-stage").predict_folder(
        images, tmp_path / "out", explain=False, overlays=False
    )
    reasons = dict(result.failures)
    assert len(reasons) == n_us + 2
    assert all("ultrasound" in reasons[str(p)] for p in (images / "ultrasound").iterdir())
    assert "truncated" in reasons[str(cut)]
    assert "too large" in reasons[str(images / "radiographs" / "Z9_LH.png")]
    ids = {p.patient_id for p in result.patients}
    assert ids == {"S11-P0001", "S11-P0002", "S11-P0003"}
    assert all(len(p.images) == 4 for p in result.patients)
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert "Z9_LH.png" in summary and "truncated" in summary
