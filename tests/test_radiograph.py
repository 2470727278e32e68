"""One radiograph preparation: what training sees is what inference sees, pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from annotation_tools.imageio import read_image
from annotation_tools.radiograph import GridGeometry, prepare_radiograph
from annotation_tools.targets import CropBox


def _exported(datalist_dir, task_lists):
    items = []
    for name in task_lists:
        path = datalist_dir / name
        if path.exists():
            document = json.loads(path.read_text())
            items += document["training"] + document.get("validation", [])
    return items


@pytest.mark.parametrize(
    ("task", "options", "crop_edges"),
    [("locator", {"size": 128}, False), ("multitask", {"shape": (96, 80)}, True)],
)
def test_exported_training_input_equals_the_inference_input(
    small_cohort, tmp_path, task, options, crop_edges
):
    from annotation_tools.export import export_dataset
    from annotation_tools.radiograph import prepare_input
    from annotation_tools.store import AnnotationStore

    with AnnotationStore.open(small_cohort, create=False) as store:
        export_dataset(store, task, tmp_path / "data", folds=3, **options)
    lists = ("datalist_hand.json", "datalist_foot.json", "datalist.json")
    items = _exported(tmp_path / "data", lists)
    assert {item["limb"] for item in items} == {"LH", "RH", "LF", "RF"}  # mirrored ones too
    grid = (options["size"],) * 2 if task == "locator" else options["shape"]
    for item in items:
        source = small_cohort / item["source_image"]
        trained_on = np.load(tmp_path / "data" / item["image"])
        served = prepare_input(
            read_image(source), item["limb"], grid, source, crop_edges=crop_edges
        )
        np.testing.assert_array_equal(trained_on, served["pixels"], err_msg=str(source))
        assert served["mirrored"] == item["mirrored"] == item["limb"].startswith("R")


def test_grid_geometry_maps_points_both_ways():
    geometry = GridGeometry((1200, 900), CropBox(100, 1100, 50, 850), (256, 224), mirrored=True)
    points = np.array([[60.0, 110.0], [400.5, 700.25], [849.0, 1099.0]])
    grid = geometry.to_grid(points)
    assert (grid >= -0.5).all() and (grid[:, 0] <= 224).all() and (grid[:, 1] <= 256).all()
    assert grid[0, 0] > grid[2, 0]  # mirrored: the left-most image point is right-most
    np.testing.assert_allclose(geometry.to_image(grid), points, atol=1e-9)


def test_exported_target_peaks_where_the_geometry_puts_the_joint(small_cohort, tmp_path):
    """The label's square for a joint sits at ``geometry.to_grid(centre)`` of the same image."""
    from annotation_tools.export import export_dataset
    from annotation_tools.joint_decoding import UNION_CHANNELS, kind_slice
    from annotation_tools.store import AnnotationStore
    from annotation_tools.vocabulary import Limb, joints_for_limb

    with AnnotationStore.open(small_cohort, create=False) as store:
        export_dataset(store, "locator", tmp_path / "data", folds=3, size=128)
        items = _exported(tmp_path / "data", ("datalist_hand.json",))
        item = next(i for i in items if i["limb"] == "RH")
        record = store.find_image(small_cohort / item["source_image"])
        centres = store.centres(record.id)
    image = read_image(small_cohort / item["source_image"])
    geometry = prepare_radiograph(image, (128, 128), mirror=True).geometry
    label = np.load(tmp_path / "data" / item["label"])["label"]
    assert label.shape[0] == len(joints_for_limb(Limb("RH")))
    assert len(UNION_CHANNELS[kind_slice("hand")]) == label.shape[0]
    checked = 0
    for channel, joint in zip(label, joints_for_limb(Limb("RH")), strict=True):
        rev = centres.get(joint.id)
        if rev is None or rev.value is None or channel.max() <= 0:
            continue
        gx, gy = geometry.to_grid([(rev.value["x"], rev.value["y"])])[0]
        ys, xs = np.nonzero(channel == channel.max())
        assert abs(xs.mean() - gx) <= 1.5 and abs(ys.mean() - gy) <= 1.5, joint.id
        checked += 1
    assert checked >= 15


def test_preparation_names_what_is_wrong_with_an_image():
    from annotation_tools.imageio import ImageData

    blank = ImageData(np.zeros((40, 50), np.uint16), Path("blank.png"), "png")
    prepared = prepare_radiograph(blank, (32, 32), mirror=False)
    assert prepared.pixels.shape == (32, 32) and prepared.pixels.dtype == np.float32
    assert any("too small" in w for w in prepared.warnings)
    assert any("no contrast" in w for w in prepared.warnings)
