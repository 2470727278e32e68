import json

import numpy as np
import pytest
from skimage.draw import polygon2mask

from annotation_tools.cli import main
from annotation_tools.slicer import (
    MARKUPS_SCHEMA,
    read_markups,
    read_segmentation_masks,
    write_markups,
    write_polygon_segmentation,
)
from annotation_tools.store import AnnotationStore, Provenance


def test_store_markups_store_round_trip_is_exact(small_cohort, tmp_path):
    store = AnnotationStore.open(small_cohort, create=False)
    image = store.images(modality="radiograph")[0]
    before = store.centres(image.id)
    path = tmp_path / "centres.mrk.json"
    assert (
        main(
            [
                "markups",
                "--project",
                str(small_cohort),
                "--image",
                str(store.resolve(image)),
                "--out",
                str(path),
            ]
        )
        == 0
    )
    document = json.loads(path.read_text())
    assert document["@schema"] == MARKUPS_SCHEMA
    points = document["markups"][0]["controlPoints"]
    assert {p["label"] for p in points} == set(before)
    copy = AnnotationStore.open(tmp_path / "copy")
    new_id = copy.add_image(store.resolve(image), patient_id=image.patient_id, limb=image.limb)
    from annotation_tools.slicer import import_store_markups

    assert import_store_markups(copy, new_id, path, Provenance.human("slicer-site")) == []
    after = copy.centres(new_id)
    for joint_id, rev in before.items():
        assert abs(after[joint_id].value["x"] - rev.value["x"]) < 0.01
        assert abs(after[joint_id].value["y"] - rev.value["y"]) < 0.01
        assert after[joint_id].source == "human"
    store.close()


def test_markups_use_pixel_spacing_and_keep_unplaced_points(tmp_path):
    centres = {"LH_mcp_2": (10.0, 20.0), "LH_ip": None}
    path = write_markups(tmp_path / "x.mrk.json", centres, spacing=(0.2, 0.1), origin=(5, 7))
    point = json.loads(path.read_text())["markups"][0]["controlPoints"][0]
    assert point["position"] == pytest.approx([5 + 10 * 0.1, 7 + 20 * 0.2, 0])
    back, problems = read_markups(path, spacing=(0.2, 0.1), origin=(5, 7))
    assert problems == [] and back["LH_ip"] is None
    assert back["LH_mcp_2"] == pytest.approx((10.0, 20.0))


def test_markups_with_foreign_labels_report_them(tmp_path):
    path = tmp_path / "f.mrk.json"
    path.write_text(
        json.dumps(
            {
                "markups": [
                    {
                        "type": "Fiducial",
                        "coordinateSystem": "LPS",
                        "controlPoints": [
                            {"label": "F-1", "position": [1, 2, 0]},
                            {"label": "RH_pip_2", "position": [3, 4, 0]},
                        ],
                    }
                ]
            }
        )
    )
    centres, problems = read_markups(path)
    assert centres == {"RH_pip_2": (3.0, 4.0)}
    assert "'F-1' is not a joint id" in problems[0]
    (tmp_path / "bad.mrk.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read markups"):
        read_markups(tmp_path / "bad.mrk.json")


def test_polygons_as_slicer_segmentation(tmp_path):
    polygons = {
        "LH_mcp_2": [(10, 10), (30, 12), (28, 25), (12, 22)],
        "LH_mcp_3": [(40, 40), (55, 40), (50, 52)],
    }
    path = write_polygon_segmentation(
        tmp_path / "spaces.seg.nrrd", polygons, (64, 80), spacing=(0.2, 0.25)
    )
    masks = read_segmentation_masks(path)
    assert set(masks) == set(polygons)
    for joint_id, vertices in polygons.items():
        expected = polygon2mask((64, 80), np.array(vertices, float)[:, ::-1])
        np.testing.assert_array_equal(masks[joint_id], expected)
    import nrrd

    _, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(np.diag(header["space directions"])[:2], [0.25, 0.2])
