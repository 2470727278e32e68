"""Physical ultrasound phantoms (anatomical style): speckle physics, EOSS grades by their
definitions, effusion, Doppler fractions, pixel-count leakage, scanner screens and files."""

import numpy as np
import pytest
from scipy import ndimage

from annotation_tools.imageio import read_image
from annotation_tools.phantom_us import (
    EFFUSION,
    SYNOVIUM,
    TENDON,
    Scan,
    bmode_envelope,
    pixel_count_baselines,
    render_ultrasound_physical,
    sh_grade_from_shape,
    write_us_screen,
)
from annotation_tools.phantoms import STYLES, phantom_style
from annotation_tools.ultrasound import doppler_mask, prepare_pair

SMALL = (640, 480)  # small screens keep the file fast; the physics does not depend on it
SITES = ("R_mcp_2", "L_pip_2", "R_wrist", "L_mtp_5")


@pytest.fixture(scope="module")
def cohort():
    """32 pairs: the four sites, SH balanced (8 per grade), every Doppler grade."""
    out = []
    for i in range(32):
        sh = i % 4
        vasc = 0 if sh == 0 else (i // 4) % 4
        rng = np.random.default_rng([11, i])
        out.append(render_ultrasound_physical(SITES[(i // 4) % 4], sh, vasc, rng, screen=SMALL))
    return out


def test_envelope_is_rayleigh_in_a_homogeneous_region():
    scan = Scan(12.0, 20.0, 20.0, 0.05, 0.0, 60.0, 8.0, 0.0, 0.0, -40.0)
    dz = scan.wavelength_mm / 8
    echo = np.ones((1200, 300), np.float32)
    env = bmode_envelope(echo, scan, np.random.default_rng(0), dz=dz)[100:-100, 20:-20]
    ratio = env.mean() / env.std()
    assert 1.83 < ratio < 2.0, ratio  # Rayleigh: sqrt(pi / (4 - pi)) = 1.913
    # the speckle scales with the backscatter: 6 dB more echo, twice the envelope
    env2 = bmode_envelope(2 * echo, scan, np.random.default_rng(0), dz=dz)[100:-100, 20:-20]
    assert env2.mean() / env.mean() == pytest.approx(2.0, rel=0.02)


def test_sh_grade_reader_tells_a_dome_from_a_flat_top():
    rows, cols = np.mgrid[0:80, 0:100]
    line = np.full(100, 50.0)
    u = (cols - 50) / 40
    dome = (rows > 50 - 20 * np.clip(1 - u**2, 0, None)) & (rows < 60) & (np.abs(u) < 1)
    flat = (rows > 50 - 15 * np.clip((1 - np.abs(u)) / 0.3, 0, 1)) & (rows < 60) & (np.abs(u) < 1)
    below = (rows > 53) & (rows < 60) & (np.abs(u) < 0.5)
    assert sh_grade_from_shape(dome, line) == 3
    assert sh_grade_from_shape(flat, line) == 2
    assert sh_grade_from_shape(below, line) == 1
    assert sh_grade_from_shape(np.zeros_like(dome), line) == 0


def test_sh_grade_follows_the_surface_shape_relative_to_the_bone_line(cohort):
    for us in cohort:
        assert sh_grade_from_shape(us.synovium, us.line_y) == us.synovial_hypertrophy, us.site
        if us.synovial_hypertrophy == 0:
            assert not us.synovium.any()


def test_synovium_is_hypoechoic_not_black_and_darker_than_tendon(cohort):
    for us in cohort:
        if us.synovium.sum() < 200:
            continue
        x0, y0, x1, y1 = us.image_box
        grey = us.greyscale[y0:y1, x0:x1].astype(float)
        # inside the regions, away from the bright interfaces the beam blurs into them
        inner = ndimage.binary_erosion(us.labels == SYNOVIUM, iterations=3)
        syn = np.median(grey[inner])
        tendon = np.median(grey[us.labels == TENDON])
        assert 10 < syn < tendon - 25, (us.site, syn, tendon)
        fluid = ndimage.binary_erosion(us.labels == EFFUSION, iterations=3)
        if fluid.sum() > 100:
            assert np.median(grey[fluid]) < syn, us.site


def test_doppler_signal_follows_the_eoss_definitions(cohort):
    for us in cohort:
        area = us.synovium.sum()
        signal = us.synovial_flow
        frac = signal.sum() / max(area, 1)
        if us.vascularity == 0:
            assert not signal.any()
        elif us.vascularity == 1:  # up to three spots
            assert 1 <= ndimage.label(signal)[1] <= 3
        elif us.vascularity == 2:
            assert 0.05 < frac < 0.5, frac
        else:
            assert frac > 0.5, frac
        # what is drawn lies inside the colour box; the truth mask is part of it
        _, cy0, _, cy1 = us.colour_box
        assert not us.flow_mask[:cy0].any() and not us.flow_mask[cy1:].any()
        x0, y0 = us.image_box[:2]
        rr, cc = np.nonzero(signal)
        assert us.flow_mask[rr + y0, cc + x0].all()


def test_dark_pixel_counts_do_not_give_the_grades(cohort):
    res = pixel_count_baselines(cohort, seed=0)
    assert res["sh_from_dark_share"]["accuracy"] <= 0.70, res
    assert res["sh_from_dark_shares"]["accuracy"] <= 0.70, res


def test_effusion_does_not_change_the_synovial_grade():
    for sh, seed in ((0, 3), (1, 4), (2, 5)):
        dry = render_ultrasound_physical(
            "R_mcp_2", sh, 0, np.random.default_rng(seed), effusion=False, screen=SMALL
        )
        wet = render_ultrasound_physical(
            "R_mcp_2", sh, 0, np.random.default_rng(seed), effusion=True, screen=SMALL
        )
        assert not dry.effusion.any() and wet.effusion.any()
        assert sh_grade_from_shape(wet.synovium, wet.line_y) == sh
        if sh:  # the upper surface of the synovium is the same with and without fluid
            cols = np.nonzero(dry.synovium.any(0))[0]
            assert np.array_equal(
                np.argmax(dry.synovium[:, cols], 0), np.argmax(wet.synovium[:, cols], 0)
            )
        # fluid is anechoic: more dark pixels for the same grade (same speckle draws)
        x0, y0, x1, y1 = wet.image_box
        dark_wet = (wet.greyscale[y0:y1, x0:x1] < 30).sum()
        dark_dry = (dry.greyscale[y0:y1, x0:x1] < 30).sum()
        assert dark_wet > dark_dry + 0.3 * wet.effusion.sum(), (sh, dark_wet, dark_dry)


def test_screens_have_one_or_two_colour_bars_and_an_exact_box_outline():
    for bars in (1, 2):
        us = render_ultrasound_physical(
            "L_mcp_3", 2, 2, np.random.default_rng(1), n_colour_bars=bars, screen=SMALL
        )
        assert us.n_colour_bars == bars and len(us.settings["colour"]["bars"]) == bars
        for bx0, by0, bx1, by1 in us.settings["colour"]["bars"]:
            patch = us.doppler[by0:by1, bx0:bx1].astype(int)
            assert ((patch.max(-1) - patch.min(-1)) > 50).mean() > 0.5
        cx0, cy0, cx1, cy1 = us.colour_box
        outline = us.doppler[cy0, cx0]
        for r, c in ((cy0, cx1 - 1), (cy1 - 1, cx0), (cy1 - 1, cx1 - 1), ((cy0 + cy1) // 2, cx0)):
            np.testing.assert_array_equal(us.doppler[r, c], outline)
        ix0, iy0, ix1, iy1 = us.image_box
        assert ix0 <= cx0 < cx1 <= ix1 and iy0 <= cy0 < cy1 <= iy1
        # the segmenter finds the drawn colour given the box, and the grey-scale has none
        found = doppler_mask(us.doppler, us.colour_box)
        assert (found & us.flow_mask).sum() >= 0.95 * us.flow_mask.sum()
        assert us.greyscale.ndim == 2
        pair = prepare_pair(us.greyscale, us.doppler, us.roi, us.colour_box)
        assert pair.network_input().shape == (4, 224, 224)


@pytest.mark.parametrize("fmt", ["dcm_rgb", "dcm_ybr", "png", "jpeg"])
def test_screens_read_back_as_the_same_rgb(tmp_path, fmt):
    us = render_ultrasound_physical("R_wrist", 2, 3, np.random.default_rng(2), screen=SMALL)
    path = write_us_screen(
        tmp_path / "dp", us.doppler, fmt, patient_id="P1", uid_seed="t", description="dp"
    )
    data = read_image(path)
    assert data.pixels.shape == us.doppler.shape
    diff = np.abs(data.pixels.astype(int) - us.doppler.astype(int))
    if fmt in ("dcm_rgb", "png"):
        assert diff.max() == 0
    else:  # JPEG (the YBR_FULL_422 DICOM too) is lossy, but the flow survives
        assert diff.mean() < 1.5
        found = doppler_mask(data.pixels, us.colour_box)
        inter = (found & us.flow_mask).sum()
        assert inter / us.flow_mask.sum() > 0.9 and inter / found.sum() > 0.8
    if fmt.startswith("dcm"):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.Modality == "US" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
        assert ds.PhotometricInterpretation == ("RGB" if fmt == "dcm_rgb" else "YBR_FULL_422")
        assert data.photometric == ds.PhotometricInterpretation
    grey = read_image(
        write_us_screen(tmp_path / "gs", us.greyscale, fmt, patient_id="P1", uid_seed="g")
    )
    g = grey.pixels if grey.pixels.ndim == 2 else grey.pixels[..., 0]
    assert np.abs(g.astype(int) - us.greyscale.astype(int)).mean() < 1.5


def test_anatomical_style_is_registered_and_deterministic():
    assert STYLES["anatomical"]["ultrasound"].endswith(":render_ultrasound_physical")
    draw = phantom_style("anatomical")[1]
    a = draw("L_mtp_2", 3, 2, np.random.default_rng(9), screen=SMALL)
    b = render_ultrasound_physical("L_mtp_2", 3, 2, np.random.default_rng(9), screen=SMALL)
    np.testing.assert_array_equal(a.doppler, b.doppler)
    np.testing.assert_array_equal(a.greyscale, b.greyscale)
    assert a.greyscale.shape == SMALL[::-1]


def test_bad_input_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="needs synovial hypertrophy"):
        render_ultrasound_physical("R_mcp_2", 0, 1, rng)
    with pytest.raises(ValueError, match="unknown ultrasound site"):
        render_ultrasound_physical("R_knee", 1, 0, rng)
    with pytest.raises(ValueError, match="doppler_mode"):
        render_ultrasound_physical("R_mcp_2", 1, 0, rng, doppler_mode="pulsed")
    with pytest.raises(ValueError, match="at least"):
        pixel_count_baselines([], folds=5)


def test_anatomical_cohort_writes_scanner_files(tmp_path):
    from annotation_tools.phantoms import generate_cohort
    from annotation_tools.store import AnnotationStore

    info = generate_cohort(
        tmp_path / "c",
        1,
        seed=4,
        height=320,
        us_pairs=2,
        workers=1,
        progress=False,
        style="anatomical",
    )
    assert info["style"] == "anatomical" and info["ultrasound_pairs"] == 2
    with AnnotationStore.open(tmp_path / "c", create=False) as store:
        for pair in store.us_pairs():
            grey = store.image(pair["greyscale_image_id"])
            dop = read_image(store.resolve(store.image(pair["doppler_image_id"])))
            assert dop.is_colour and dop.pixels.shape[:2] == (grey.height, grey.width)
            assert store.roi(pair["greyscale_image_id"]) is not None
