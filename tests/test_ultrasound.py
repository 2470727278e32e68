import numpy as np
import pytest
from skimage.transform import resize

from annotation_tools.phantoms import render_ultrasound
from annotation_tools.ultrasound import (
    UltrasoundInputError,
    check_pair,
    crop_roi,
    doppler_mask,
    transformed_doppler,
)


def test_integer_roi_crop_equals_the_roi_contents(rng):
    image = (rng.random((60, 80)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(crop_roi(image, (10, 5, 42, 37), size=32), image[5:37, 10:42])
    rgb = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(crop_roi(rgb, (42, 37, 10, 5), size=32), rgb[5:37, 10:42])


def test_resized_crop_matches_a_resized_slice(rng):
    us = render_ultrasound("R_mcp_2", 2, 2, np.random.default_rng(3))
    x0, y0, x1, y1 = (round(v) for v in us.roi)
    crop = crop_roi(us.greyscale, (x0, y0, x1, y1), size=224).astype(float)
    reference = resize(
        us.greyscale[y0:y1, x0:x1].astype(float),
        (224, 224),
        order=1,
        anti_aliasing=False,
        preserve_range=True,
    )
    assert np.corrcoef(crop.ravel(), reference.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("box", [(10, 10, 10, 40), (5, 5, 5.5, 5.5)])
def test_zero_area_roi_is_refused(box):
    with pytest.raises(UltrasoundInputError, match="zero area"):
        crop_roi(np.zeros((50, 50), np.uint8), box)


def test_roi_outside_the_image_is_refused():
    with pytest.raises(UltrasoundInputError, match="outside"):
        crop_roi(np.zeros((50, 50), np.uint8), (60, 60, 80, 80))


@pytest.mark.parametrize("seed", range(4))
def test_doppler_mask_finds_flow_and_ignores_bars_and_text(seed):
    us = render_ultrasound("L_mcp_3", 3, 3, np.random.default_rng(seed))
    auto = doppler_mask(us.doppler)  # no box given: the scan area alone must exclude furniture
    truth = us.flow_mask
    overlap = (auto & truth).sum()
    assert overlap / truth.sum() > 0.95  # finds the flow
    assert (auto & ~truth).sum() / max(auto.sum(), 1) < 0.05  # nothing else
    boxed = doppler_mask(us.doppler, us.colour_box)
    assert (boxed & ~truth).sum() <= (auto & ~truth).sum()


def test_doppler_mask_handles_blue_maps_and_empty_flow():
    for seed in range(12):
        us = render_ultrasound("R_mcp_2", 2, 3, np.random.default_rng(seed))
        mask = doppler_mask(us.doppler, us.colour_box)
        assert (mask & us.flow_mask).sum() / us.flow_mask.sum() > 0.95
    none = render_ultrasound("R_mcp_2", 2, 0, np.random.default_rng(0))
    assert doppler_mask(none.doppler, none.colour_box).sum() == 0


def test_transformed_doppler_paints_signal_one_colour():
    us = render_ultrasound("R_mcp_2", 3, 2, np.random.default_rng(1))
    mask = doppler_mask(us.doppler, us.colour_box)
    out = transformed_doppler(us.doppler, mask)
    assert (out[mask] == [255, 0, 0]).all()
    rest = out[~mask]
    assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()  # grey


def test_pair_checks_name_each_problem():
    us = render_ultrasound("R_mcp_2", 1, 1, np.random.default_rng(0))
    assert check_pair(us.greyscale, us.doppler) == []
    assert "grey-scale" in check_pair(us.greyscale, us.greyscale)[0]
    grey_rgb = np.repeat(us.greyscale[..., None], 3, axis=2)
    assert "no colour pixels" in check_pair(us.greyscale, grey_rgb)[0]
    assert "differ in size" in check_pair(us.greyscale[:100], us.doppler)[0]
    with pytest.raises(UltrasoundInputError, match="must be RGB"):
        doppler_mask(us.greyscale)
