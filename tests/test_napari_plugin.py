"""The napari side of the foundation: manifest, reader and sample data, in a real viewer."""

from pathlib import Path

import numpy as np
import pytest

from annotation_tools.imageio import ImageReadError, write_dicom, write_png

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

PLUGIN = "napari-ra-joints"


def test_manifest_is_valid_and_registered():
    from importlib.metadata import entry_points

    import npe2

    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == PLUGIN]
    assert eps, "napari.manifest entry point missing; is the package installed?"
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    assert manifest.name == PLUGIN
    assert {s.key for s in manifest.contributions.sample_data} == {
        "phantom_hand",
        "phantom_foot",
        "phantom_ultrasound",
    }


def test_reader_claims_only_image_files(tmp_path):
    from napari_ra_joints._reader import get_reader

    assert get_reader(str(tmp_path / "x.dcm")) is not None
    assert get_reader([str(tmp_path / "a.png"), str(tmp_path / "b.TIF")]) is not None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(tmp_path / "a.png"), str(tmp_path / "b.csv")]) is None


def _files(tmp_path: Path, rng: np.random.Generator) -> dict[str, Path]:
    grey = (rng.random((40, 30)) * 4095).astype(np.uint16)
    rgb = (rng.random((20, 25, 3)) * 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(grey[:, :].astype(np.uint8)).save(tmp_path / "x.jpg")
    Image.fromarray(grey).save(tmp_path / "x.tif")
    return {
        "dicom_mono1": write_dicom(
            tmp_path / "m1.dcm",
            grey,
            patient_id="P",
            bits_stored=12,
            photometric="MONOCHROME1",
            laterality="L",
        ),
        "png16": write_png(tmp_path / "x.png", grey),
        "png_rgb": write_png(tmp_path / "c.png", rgb),
        "jpeg": tmp_path / "x.jpg",
        "tiff": tmp_path / "x.tif",
    }


def test_viewer_opens_every_supported_format(make_napari_viewer, tmp_path, rng):
    viewer = make_napari_viewer()
    files = _files(tmp_path, rng)
    for kind, path in files.items():
        layers = viewer.open(str(path), plugin=PLUGIN)
        assert len(layers) == 1, kind
        layer = layers[0]
        assert layer.rgb == (kind == "png_rgb"), kind
        assert layer.metadata["path"] == str(path)
    mono1 = viewer.layers["m1"]
    assert mono1.metadata["laterality"] == "L"
    assert mono1.metadata["photometric"] == "MONOCHROME1"


def test_corrupt_file_raises_a_reader_error_naming_it(make_napari_viewer, tmp_path):
    from napari_ra_joints._reader import read_images

    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\x00" * 300)
    with pytest.raises(ImageReadError, match="broken.dcm"):
        read_images(str(bad))
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.dcm"):
        viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == 0  # nothing half-read


@pytest.mark.parametrize(
    ("key", "kinds"),
    [
        ("phantom_hand", ["image", "shapes", "points"]),
        ("phantom_foot", ["image", "shapes", "points"]),
        ("phantom_ultrasound", ["image", "image", "shapes"]),
    ],
)
def test_sample_data_loads_with_overlays(make_napari_viewer, key, kinds):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    assert [layer._type_string for layer in viewer.layers] == kinds
    if key != "phantom_ultrasound":
        points = viewer.layers[-1]
        assert len(points.data) == len(points.features)
        assert points.features["joint_id"].str.startswith(("LH_", "RF_")).all()
        h, w = viewer.layers[0].data.shape
        assert (points.data[:, 0] < h).all() and (points.data[:, 1] < w).all()


def test_screenshot_of_a_shown_viewer_is_not_blank(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "phantom_hand")
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 10  # an image, not a flat (black) canvas
    # the red joint markers and yellow names are drawn over the grey radiograph
    reddish = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    assert reddish.sum() > 20


def test_project_folder_opens_as_an_overview_of_its_first_patient(make_napari_viewer, small_cohort):
    from napari_ra_joints._reader import get_reader

    assert get_reader(str(small_cohort)) is not None
    assert get_reader(str(small_cohort / "radiographs")) is None  # a folder without a store
    viewer = make_napari_viewer()
    layers = viewer.open(str(small_cohort), plugin=PLUGIN)
    assert [layer._type_string for layer in layers] == ["image", "shapes", "points"] * 4
    centres = [layer for layer in layers if layer._type_string == "points"]
    assert {len(layer.data) for layer in centres} == {22, 6}
    assert set(centres[0].features["source"]) == {"phantom"}
    offsets = [layer.translate[1] for layer in layers if layer._type_string == "image"]
    assert offsets == sorted(offsets) and len(set(offsets)) == 4  # side by side
