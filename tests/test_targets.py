import numpy as np
import pytest
from helpers import inside_or_near

from annotation_tools.targets import (
    IGNORE,
    MASK_IGNORE,
    extract_patch,
    locator_targets,
    mirror_points,
    patch_side,
    polygon_problem,
    scale_points,
)
from annotation_tools.vocabulary import get_joint, joints_for_limb


def _square_centroid(channel):
    rows, cols = np.nonzero(channel == 1)
    return cols.mean(), rows.mean(), np.ptp(cols) + 1, np.ptp(rows) + 1


def test_square_targets_sit_on_the_centres():
    centres = {"LH_mcp_2": (40.3, 50.7), "LH_pip_3": (30.0, 90.2), "LH_ip": None}
    t = locator_targets(centres, "LH", (128, 100))
    assert t.shape == (22, 128, 100) and t.dtype == np.int8
    for joint_id, xy in centres.items():
        channel = t[get_joint(joint_id).index]
        if xy is None:  # "not visible": the network must not fire, and the loss must look
            assert (channel == 0).all()
            continue
        cx, cy, w, h = _square_centroid(channel)
        assert abs(cx - xy[0]) <= 0.5 and abs(cy - xy[1]) <= 0.5
        assert w in (30, 31) and h in (30, 31)
    # unannotated joints are ignored by the loss
    assert (t[get_joint("LH_mcp_5").index] == IGNORE).all()


def test_square_scales_with_the_image():
    t = locator_targets({"mcp_3": (20.0, 20.0)}, "RH", (64, 64), scale=(0.25, 0.5))
    _, _, w, h = _square_centroid(t[get_joint("RH_mcp_3").index])
    assert w in (15, 16) and h in (7, 8)


def test_disc_targets_with_ignore_band():
    t = locator_targets(
        {"LF_mtp_1": (50.0, 50.0)}, "LF", (101, 101), mode="disc", radius=10, ignore_radius=14
    )
    ch = t[get_joint("LF_mtp_1").index]
    assert ch[50, 50] == 1 and ch[50, 60] == 1 and ch[50, 61] == IGNORE
    assert ch[50, 64] == IGNORE and ch[50, 65] == 0
    with pytest.raises(ValueError, match="radius"):
        locator_targets({}, "LF", (10, 10), mode="disc", radius=5, ignore_radius=3)


def test_scaling_and_mirroring_points_invert():
    pts = np.array([[0.0, 0.0], [99.0, 49.0], [12.3, 45.6]])
    there = scale_points(pts, (50, 100), (25, 200))
    np.testing.assert_allclose(scale_points(there, (25, 200), (50, 100)), pts, atol=1e-9)
    # pixel centres of the corners map to corner pixel centres of a 2x upsampled image
    np.testing.assert_allclose(scale_points([[0, 0]], (10, 10), (20, 20)), [[0.5, 0.5]])
    np.testing.assert_allclose(mirror_points(mirror_points(pts, 100), 100), pts)
    assert mirror_points([[0, 3]], 100)[0, 0] == 99


def test_patch_geometry_and_padding(rng):
    image = rng.random((200, 150)).astype(np.float32)
    # an even-sized patch at full resolution centred between pixels is an image window
    patch = extract_patch(image, (75.5, 100.5), 64, size=64)
    np.testing.assert_allclose(patch.image, image[69:133, 44:108], atol=1e-5)
    np.testing.assert_allclose(patch.to_image(patch.to_patch([[10.5, 20.25]])), [[10.5, 20.25]])
    corner = extract_patch(image, (2.0, 3.0), 40, size=20)
    assert corner.image.shape == (20, 20)
    assert np.isclose(corner.image[0, 0], image.min())  # padded, not dropped


def test_patch_shift_needs_rng_and_moves_the_centre(rng):
    image = np.zeros((100, 100), np.float32)
    with pytest.raises(ValueError, match="rng"):
        extract_patch(image, (50, 50), 30, shift=5)
    shifted = extract_patch(image, (50, 50), 30, shift=5, rng=rng)
    assert shifted.centre != (50.0, 50.0)
    assert abs(shifted.centre[0] - 50) <= 5 and abs(shifted.centre[1] - 50) <= 5


def test_polygon_mask_lies_inside_the_polygon():
    image = np.zeros((100, 100), np.float32)
    polygon = [(40.0, 45.0), (60.0, 44.0), (61.0, 55.0), (39.0, 56.0)]
    patch = extract_patch(image, (50.0, 50.0), 40.0, size=80, polygon=polygon)
    assert patch.mask is not None and patch.mask.sum() > 0
    rows, cols = np.nonzero(patch.mask == 1)
    xy = patch.to_image(np.stack([cols, rows], 1))
    assert inside_or_near(polygon, xy, 0.5).all()
    area = 0.5 * abs(
        sum(
            x0 * y1 - x1 * y0
            for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1], strict=True)
        )
    )
    step = patch.side / patch.size
    assert patch.mask.sum() * step**2 == pytest.approx(area, rel=0.1)


@pytest.mark.parametrize(
    ("polygon", "reason"),
    [
        ([(0, 0), (1, 1)], "at least 3"),
        ([(0, 0), (10, 10), (10, 0), (0, 10)], "self-intersecting"),
        ([(0, 0), (1, 1), (2, 2)], "zero area"),
    ],
)
def test_bad_polygons_give_an_ignore_mask(polygon, reason):
    assert reason in polygon_problem(polygon)
    patch = extract_patch(np.zeros((50, 50)), (25, 25), 20, size=16, polygon=polygon)
    assert (patch.mask == MASK_IGNORE).all() and reason in patch.problems[0]


def test_patch_side_is_larger_for_the_hallux():
    h = 1000
    assert patch_side(get_joint("LH_mcp_2"), h) == pytest.approx(94.0)
    assert patch_side(get_joint("LF_mtp_1"), h) == pytest.approx(94.0 * 1.4)
    assert patch_side(get_joint("RF_ip"), h) == pytest.approx(94.0 * 1.5)
    assert len({patch_side(j, h) for j in joints_for_limb("LH")}) == 1
