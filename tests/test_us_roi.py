"""The automatic Doppler colour box and the joint-recess ROI proposal, at image level, and
``ra-joints predict --auto-roi`` on a project."""

import json

import numpy as np
import pytest

from annotation_tools.phantoms import render_ultrasound
from annotation_tools.roi_benchmark import add_colour_bar
from annotation_tools.ultrasound import doppler_mask, prepare_pair
from annotation_tools.us_roi import (
    bone_profile,
    box_iou,
    colour_pixels,
    find_colour_box,
    propose_roi,
)


def _screens(n, seed, vascularity=2):
    rng = np.random.default_rng(seed)
    return [render_ultrasound("L_mcp_2", 2, vascularity, rng) for _ in range(n)]


def _coloured_text_inside(rgb, box):
    """A red icon over the image next to the colour box, and yellow parameter text touching
    the image's left edge, as some scanners draw them."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    _, y0, x1, y1 = box
    draw.rectangle((x1 + 6, y0 + 4, x1 + 16, y0 + 14), fill=(230, 40, 40))
    draw.text((60, y1 - 20), "PRF 0.8 kHz", fill=(255, 220, 0), font=ImageFont.load_default(14))
    return np.asarray(pil).copy()


@pytest.mark.parametrize("bars", [1, 2])
def test_colour_box_is_found_on_screens_with_one_and_two_colour_bars(bars):
    rng = np.random.default_rng(5)
    for us in _screens(3, 40 + bars):
        screen = add_colour_bar(us.doppler, rng) if bars == 2 else us.doppler
        box = find_colour_box(screen)
        assert box is not None and box_iou(box, us.colour_box) > 0.95


@pytest.mark.parametrize("bars", [1, 2])
def test_colour_box_is_found_on_scanner_screens_with_one_and_two_colour_bars(bars):
    """The anatomical scanner screens: grey map and colour bar(s), depth scale, coloured
    parameter text, a coloured icon, flash and noise speckles, the box outline."""
    from annotation_tools.phantom_us import render_ultrasound_physical

    us = render_ultrasound_physical(
        "L_mcp_2", 2, 2, np.random.default_rng(60 + bars), n_colour_bars=bars
    )
    assert us.n_colour_bars == bars
    box = find_colour_box(us.doppler)
    assert box is not None and box_iou(box, us.colour_box) > 0.95
    # no box given: the same signal as with the true box (the bars and icon not counted)
    x0, y0, x1, y1 = us.colour_box
    inside = (x0 + 1, y0 + 1, x1 - 1, y1 - 1)  # the outline is yellow or green on some screens
    mask, boxed = doppler_mask(us.doppler), doppler_mask(us.doppler, inside)
    assert (mask & ~boxed).sum() == 0 and mask.sum() >= 0.97 * boxed.sum() > 0


def test_colour_box_without_outline_is_the_flow_extent_not_the_bars_or_text():
    """With the outline erased the box comes from the colour pixels; bars, coloured text and an
    icon next to the colour box do not stretch it (a plain bounding box of all colour would)."""
    rng = np.random.default_rng(9)
    for us in _screens(3, 7, vascularity=3):
        screen = add_colour_bar(us.doppler, rng)
        x0, y0, x1, y1 = us.colour_box
        # no outline on this scanner: the tissue next to it shows instead
        screen[y0, x0:x1], screen[y1 - 1, x0:x1] = screen[y0 - 2, x0:x1], screen[y1 + 1, x0:x1]
        screen[y0:y1, x0], screen[y0:y1, x1 - 1] = screen[y0:y1, x0 - 2], screen[y0:y1, x1 + 1]
        screen = _coloured_text_inside(screen, us.colour_box)
        box = find_colour_box(screen)
        ys, xs = np.nonzero(us.flow_mask)
        flow = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert box is not None and box_iou(box, flow) > 0.7
        assert box[0] >= x0 - 5 and box[2] <= x1 + 5  # not the bars, not the icon


def test_doppler_mask_with_no_box_ignores_the_bars():
    rng = np.random.default_rng(3)
    for us in _screens(3, 11):
        screen = _coloured_text_inside(add_colour_bar(us.doppler, rng), us.colour_box)
        mask = doppler_mask(screen)  # no box, no ROI given
        x0, y0, x1, y1 = us.colour_box
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        assert outside.sum() == 0
        assert (mask & us.flow_mask).sum() >= 0.95 * us.flow_mask.sum()
        # every colour pixel in the scan area (the old rule) would count the text and icon
        from annotation_tools.ultrasound import chroma, scan_area

        old = (chroma(screen) >= 50) & scan_area(screen)
        assert (old & ~mask).sum() > 20


def test_a_frame_without_colour_has_no_box_and_an_empty_mask():
    us = _screens(1, 2)[0]
    grey = np.repeat(us.greyscale[..., None], 3, axis=2)
    assert find_colour_box(grey) is None
    assert not doppler_mask(grey).any()
    assert not colour_pixels(grey).any()
    with pytest.raises(ValueError, match="RGB"):
        find_colour_box(us.greyscale)


def test_roi_proposal_overlaps_the_truth_roi_from_the_bone_gap():
    rng = np.random.default_rng(2026)
    ious = []
    for site in ("L_mcp_2", "R_pip_2", "L_wrist", "R_mtp_2"):
        us = render_ultrasound(site, int(rng.integers(0, 4)), 0, rng)
        profile = bone_profile(us.greyscale)
        assert profile.found
        box = propose_roi(us.greyscale, site)
        ious.append(box_iou(box, us.roi))
        # the box straddles the joint gap, not merely the middle of the screen
        assert box[0] < profile.gap_x < box[2] and box[1] < profile.bone_y < box[3]
    assert min(ious) >= 0.6


def test_roi_proposal_follows_the_joint_when_it_moves():
    """Shift the scan content sideways: the proposal moves with the gap (a fixed centred box,
    or one from the screen layout, would not)."""
    us = _screens(1, 21)[0]
    shifted = np.zeros_like(us.greyscale)
    x0, y0, x1, y1 = (int(v) for v in bone_profile(us.greyscale).scan)
    shift = 60
    shifted[y0:y1, x0 + shift : x1] = us.greyscale[y0:y1, x0 : x1 - shift]
    shifted[y0:y1, x0 : x0 + shift] = us.greyscale[y0:y1, x0 : x0 + 1]
    a, b = propose_roi(us.greyscale), propose_roi(shifted)
    moved = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    assert abs(moved - shift) < 15


def test_prepare_pair_without_roi_uses_the_proposal():
    us = _screens(1, 31)[0]
    auto = prepare_pair(us.greyscale, us.doppler, None, size=64)
    given = prepare_pair(us.greyscale, us.doppler, propose_roi(us.greyscale), size=64)
    assert np.array_equal(auto.network_input(), given.network_input())


def test_cli_auto_roi_writes_model_rois_and_never_replaces_a_human_box(small_cohort, tmp_path):
    from helpers import unannotated_project

    from annotation_tools.cli import main
    from annotation_tools.review import save_roi
    from annotation_tools.store import AnnotationStore

    project = unannotated_project(small_cohort, tmp_path / "project")
    with AnnotationStore.open(project) as store:
        pairs = store.us_pairs()
        drawn = (150.0, 120.0, 420.0, 330.0)
        save_roi(store, pairs[0]["id"], drawn, "dr_a")
    args = ["predict", "--ultrasound", str(project), "--no-explain", "--quiet"]
    # without the flag a pair with no box is skipped, with the reason
    assert main([*args, "--out", str(tmp_path / "plain")]) == 3
    summary = json.loads((tmp_path / "plain/ultrasound/summary.json").read_text())
    assert any("--auto-roi" in f["reason"] for f in summary["failed"])
    assert main([*args, "--auto-roi", "--out", str(tmp_path / "auto")]) == 0
    records = {
        int(p.stem.rsplit("_pair", 1)[1]): json.loads(p.read_text())
        for p in (tmp_path / "auto/ultrasound").glob("*_pair*.json")
    }
    assert records[pairs[0]["id"]]["roi_source"] == "drawn"
    assert records[pairs[0]["id"]]["roi"] == list(drawn)
    with AnnotationStore.open(project, create=False) as store:
        for pair in pairs:
            for image_id in (pair["greyscale_image_id"], pair["doppler_image_id"]):
                resolved = store.roi(image_id)
                model = store.roi(image_id, sources=("model",))
                if pair["id"] == pairs[0]["id"]:
                    assert (resolved.source, resolved.author) == ("human", "dr_a")
                    assert model is None  # the person's box was used, nothing proposed
                else:
                    assert model is not None and model.author == "roi_proposal"
                    box = [model.value[k] for k in ("x0", "y0", "x1", "y1")]
                    assert box == pytest.approx(records[pair["id"]]["roi"], abs=0.1)
                    assert records[pair["id"]]["roi_source"] == "proposed"
        # a person's box drawn afterwards outranks the proposal; a rerun does not touch it
        other = pairs[1]
        save_roi(store, other["id"], drawn, "dr_b")
        n_before = len(store.history("roi", other["greyscale_image_id"]))
    assert main([*args, "--auto-roi", "--out", str(tmp_path / "again")]) == 0
    with AnnotationStore.open(project, create=False) as store:
        assert store.roi(other["greyscale_image_id"]).author == "dr_b"
        assert len(store.history("roi", other["greyscale_image_id"])) == n_before
