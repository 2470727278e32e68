"""Phantoms must show their scores in the pixels; these checks read the images, not the labels."""

import csv
import itertools
import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from annotation_tools.cli import main
from annotation_tools.imageio import read_image
from annotation_tools.phantoms import (
    generate_patient,
    render_limb,
    render_ultrasound,
    sample_patient_scores,
)
from annotation_tools.store import AnnotationStore
from annotation_tools.vocabulary import LIMBS, joints_for_limb


def _uniform_grades(limb, narrowing, erosion):
    return {
        j.id: {t.value: (narrowing if t.value == "narrowing" else erosion) for t in j.score_types}
        for j in joints_for_limb(limb)
    }


def _gap_contrast(phantom, joint_id):
    """(bone - darkest point on the joint line) / bone, along the joint axis."""
    img = phantom.image.astype(float)
    centre = np.array(phantom.centres[joint_id])
    axis = np.array(phantom.axes[joint_id])
    lateral = np.array([-axis[1], axis[0]])
    r = phantom.bone_radius[joint_id]
    ts = np.arange(-1.2 * r, 1.2 * r + 0.01, 0.5)
    profiles = []
    for offset in np.linspace(-0.3 * r, 0.3 * r, 5):
        pts = centre + ts[:, None] * axis + offset * lateral
        profiles.append(ndimage.map_coordinates(img, [pts[:, 1], pts[:, 0]], order=1))
    values = np.mean(profiles, axis=0)
    half_gap = max(1.0, 0.5 * abs(phantom.gap_widths[joint_id]))
    bone = np.median(values[np.abs(ts) >= 0.7 * r])
    return (bone - values[np.abs(ts) <= half_gap].min()) / bone


@pytest.mark.parametrize("limb", ["LH", "RF"])
def test_narrowing_0_shows_a_gap_and_narrowing_4_none(limb):
    for seed in range(2):
        open_joints = render_limb(
            limb, _uniform_grades(limb, 0, 0), np.random.default_rng(seed), height=800
        )
        fused = render_limb(
            limb, _uniform_grades(limb, 4, 0), np.random.default_rng(seed), height=800
        )
        for joint in joints_for_limb(limb):
            if not joint.narrowing:
                continue
            assert _gap_contrast(open_joints, joint.id) > 0.35, f"{joint.id}: no clear gap"
            assert _gap_contrast(fused, joint.id) < 0.25, f"{joint.id}: fused joint shows a gap"


def test_gap_width_shrinks_with_grade():
    widths = []
    for grade in range(5):
        ph = render_limb(
            "LH",
            _uniform_grades("LH", grade, 0),
            np.random.default_rng(0),
            pose_rng=np.random.default_rng(5),
            height=800,
        )
        widths.append(
            np.median([ph.gap_widths[j.id] for j in joints_for_limb("LH") if j.narrowing])
        )
    assert all(a > b for a, b in itertools.pairwise(widths)), widths
    assert widths[-1] < 0  # fused: the bone ends overlap


@pytest.mark.parametrize("limb", ["RH", "LF"])
def test_erosion_5_cuts_visible_cortical_defects(limb):
    top = 5 if limb[1] == "H" else 10
    healthy = render_limb(
        limb,
        _uniform_grades(limb, 0, 0),
        np.random.default_rng(3),
        pose_rng=np.random.default_rng(9),
        height=800,
    )
    eroded = render_limb(
        limb,
        _uniform_grades(limb, 0, top),
        np.random.default_rng(3),
        pose_rng=np.random.default_rng(9),
        height=800,
    )
    a, b = healthy.image.astype(float), eroded.image.astype(float)
    assert eroded.bites and not healthy.bites
    soft = np.percentile(a, 50)
    for joint_id, bites in eroded.bites.items():
        assert len(bites) >= 3
        darker = 0
        for x, y, _radius in bites:
            yy, xx = round(y), round(x)
            # at the defect the bright cortex of the healthy image is gone
            if a[yy, xx] - b[yy, xx] > 0.25 * (a[yy, xx] - soft):
                darker += 1
        assert darker >= len(bites) - 1, f"{joint_id}: defects not visible"
    # and the images differ only around eroded sites: with erosion 0 nothing is cut
    y0, x0 = np.unravel_index(np.argmax(np.abs(a - b)), a.shape)
    nearest = min(np.hypot(x - x0, y - y0) - r for bs in eroded.bites.values() for x, y, r in bs)
    assert nearest < 5


def test_ground_truth_is_inside_the_image_and_polygons_cover_the_gap():
    grades = _uniform_grades("LH", 0, 0)
    ph = render_limb("LH", grades, np.random.default_rng(4), height=800)
    h, w = ph.image.shape
    assert set(ph.centres) == {j.id for j in joints_for_limb("LH")}
    assert set(ph.polygons) == {j.id for j in joints_for_limb("LH") if j.narrowing}
    for x, y in ph.centres.values():
        assert 0 <= x < w and 0 <= y < h
    img = ph.image.astype(float)
    for joint_id, poly in ph.polygons.items():
        pts = np.array(poly)
        rr, cc = fill_polygon(pts[:, 1], pts[:, 0], img.shape)
        assert len(rr) > 0
        # the joint space is darker than the bone around it
        x, y = ph.centres[joint_id]
        r = ph.bone_radius[joint_id]
        window = img[int(y - 2 * r) : int(y + 2 * r), int(x - 2 * r) : int(x + 2 * r)]
        assert img[rr, cc].mean() < np.percentile(window, 75), joint_id


def test_right_limbs_are_mirrored_left_limbs():
    grades = _uniform_grades("LH", 0, 0) | _uniform_grades("RH", 0, 0)
    left = render_limb("LH", grades, np.random.default_rng(1), height=600)
    right = render_limb("RH", grades, np.random.default_rng(1), height=600)
    # the thumb is on the right of a left hand PA view and on the left of a right one
    assert left.centres["LH_mcp_1"][0] > left.centres["LH_mcp_5"][0]
    assert right.centres["RH_mcp_1"][0] < right.centres["RH_mcp_5"][0]
    w = left.image.shape[1]
    mirrored = w - 1 - np.array(left.centres["LH_mcp_3"][0])
    assert mirrored == pytest.approx(right.centres["RH_mcp_3"][0], abs=1e-6)


def test_scores_are_symmetric_and_cover_the_scale():
    pairs, seen = [], {"narrowing": set(), "erosion": set()}
    for seed in range(60):
        grades = sample_patient_scores(np.random.default_rng(seed))
        for joint_id, g in grades.items():
            for score_type, value in g.items():
                seen[score_type].add(value)
            if joint_id.startswith("L"):
                other = grades["R" + joint_id[1:]]
                pairs += [(v, other[k]) for k, v in g.items()]
    a = np.array(pairs, float)
    assert np.corrcoef(a.T)[0, 1] > 0.8
    assert seen["narrowing"] == set(range(5))
    assert seen["erosion"] >= set(range(6))


def test_patients_are_deterministic_for_a_seed():
    a = generate_patient(5, 2, height=400, us_pairs=1, style="schematic")
    b = generate_patient(5, 2, height=400, us_pairs=1, style="schematic")
    c = generate_patient(6, 2, height=400, us_pairs=1, style="schematic")
    for limb in LIMBS:
        np.testing.assert_array_equal(a.limbs[limb.value].image, b.limbs[limb.value].image)
    np.testing.assert_array_equal(a.ultrasound[0].doppler, b.ultrasound[0].doppler)
    assert a.grades == b.grades
    assert not np.array_equal(a.limbs["LH"].image, c.limbs["LH"].image)
    assert a.patient_id != c.patient_id


# ------------------------------------------------------------------ ultrasound


def _flow_pixels(rgb):
    return (np.max(rgb, axis=-1).astype(int) - np.min(rgb, axis=-1)) > 60


def test_ultrasound_grades_are_visible():
    flow, dark = [], []
    for grade in range(4):
        counts_flow, counts_dark = [], []
        for seed in range(3):
            us = render_ultrasound("R_mcp_2", grade, grade, np.random.default_rng(seed))
            x0, y0, x1, y1 = (int(v) for v in us.roi)
            cx0, cy0, cx1, cy1 = us.colour_box
            box = _flow_pixels(us.doppler[cy0:cy1, cx0:cx1])
            counts_flow.append(box.sum())
            roi = us.greyscale[y0:y1, x0:x1].astype(float)
            smooth = ndimage.uniform_filter(roi, 5)
            counts_dark.append((smooth < 30).sum())
        flow.append(np.mean(counts_flow))
        dark.append(np.mean(counts_dark))
    assert flow[0] == 0
    assert all(a < b for a, b in itertools.pairwise(flow)), flow
    assert all(a < b for a, b in itertools.pairwise(dark)), dark


def test_doppler_colour_lies_only_in_the_box_or_the_screen_furniture():
    us = render_ultrasound("L_mcp_3", 3, 3, np.random.default_rng(0))
    colour = _flow_pixels(us.doppler)
    cx0, cy0, cx1, cy1 = us.colour_box
    inside = np.zeros_like(colour)
    inside[cy0:cy1, cx0:cx1] = True
    assert us.flow_mask.sum() > 0 and not (us.flow_mask & ~inside).any()
    # the colour bar and coloured text exist outside the box (what a segmenter must ignore)
    assert (colour & ~inside).sum() > 100
    assert us.greyscale.ndim == 2 and us.combined == 3
    with pytest.raises(ValueError, match="needs synovial hypertrophy"):
        render_ultrasound("x", 0, 1, np.random.default_rng(0))


# ------------------------------------------------------------------ cohorts


def test_cohort_project_is_complete(small_cohort):
    info = json.loads((small_cohort / "cohort.json").read_text())
    assert info["patients"] == 3 and info["radiographs"] == 12 and info["ultrasound_pairs"] == 6
    assert "not clinical" in info["note"]
    with AnnotationStore.open(small_cohort, create=False) as store:
        radiographs = store.images(modality="radiograph")
        assert len(radiographs) == 12
        for image in radiographs:
            data = read_image(store.resolve(image))
            assert data.pixels.shape == (image.height, image.width)
            centres = store.centres(image.id)
            assert len(centres) == len(joints_for_limb(image.limb))
            assert all(c.source == "phantom" for c in centres.values())
            assert len(store.scores(image.id)) == sum(
                len(j.score_types) for j in joints_for_limb(image.limb)
            )
        for pair in store.us_pairs():
            assert store.roi(pair["greyscale_image_id"]) is not None
            assert store.us_score(pair["id"]).value["combined"] in range(4)
            doppler = read_image(store.resolve(store.image(pair["doppler_image_id"])))
            assert doppler.is_colour
        formats = {read_image(store.resolve(im)).photometric for im in radiographs}
        assert formats & {"MONOCHROME1", "MONOCHROME2"}
    with open(small_cohort / "scores_ra2dream.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(r["Overall_Tol"] != "" for r in rows)
    with open(small_cohort / "ultrasound_scores.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_cli_writes_80_radiographs_for_20_patients(tmp_path, capsys):
    out = tmp_path / "cohort"
    code = main(
        [
            "phantoms",
            "--out",
            str(out),
            "--patients",
            "20",
            "--seed",
            "1",
            "--height",
            "320",
            "--style",
            "schematic",
            "--quiet",
        ]
    )
    assert code == 0
    assert "wrote 80 radiographs" in capsys.readouterr().out
    assert len(list((out / "radiographs").iterdir())) == 80
    assert len(list((out / "ultrasound").iterdir())) == 80  # 40 pairs, two files each
    # the same folder is not overwritten
    assert main(["phantoms", "--out", str(out), "--patients", "1", "--quiet"]) == 2
    assert "already holds a cohort" in capsys.readouterr().err
    assert main(["summary", "--project", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "radiographs: 80" in summary and "not clinical" in summary


def test_every_vascular_grade_has_flow_inside_the_colour_box():
    rng = np.random.default_rng(0)
    for _ in range(80):
        sh = int(rng.integers(1, 4))
        vasc = int(rng.integers(1, 4))
        us = render_ultrasound("R_mcp_2", sh, vasc, rng)
        cx0, cy0, cx1, cy1 = us.colour_box
        assert us.flow_mask.sum() >= 10, (sh, vasc)
        assert us.flow_mask[cy0:cy1, cx0:cx1].sum() == us.flow_mask.sum()
