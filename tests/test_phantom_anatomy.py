"""Anatomical phantoms: the grades must be visible in the pixels, and only in the pixels.

These checks read the rendered images along the truth geometry (joint axis, bite positions);
they would fail if narrowing only changed the labels, or if erosion were a global darkening.
"""

import itertools
import re

import numpy as np
import pydicom
import pytest
from scipy import ndimage, stats

from annotation_tools.phantom_anatomy import render_limb_anatomical
from annotation_tools.phantoms import generate_cohort
from annotation_tools.vocabulary import joints_for_limb

pytest.importorskip("mujoco")
pytest.importorskip("myo_sim")
pytest.importorskip("trimesh")


# joint spaces a reader sees open on a PA film of a healthy limb
_OPEN_ON_PA = {"mcp_2", "mcp_3", "mcp_4", "mcp_5", "pip_2", "pip_3", "pip_4", "mtp_1", "mtp_2"}
_OPEN_ON_PA |= {"mtp_3", "mtp_4", "mtp_5"}


def _uniform(limb, narrowing, erosion):
    return {
        j.id: {t.value: (narrowing if t.value == "narrowing" else erosion) for t in j.score_types}
        for j in joints_for_limb(limb)
    }


def _render(limb, grades, *, seed=0, pose=5, height=700):
    return render_limb_anatomical(
        limb,
        grades,
        np.random.default_rng(seed),
        pose_rng=np.random.default_rng(pose),
        height=height,
    )


def _profile(ph, joint_id, half_length):
    """Intensity along the joint axis through the truth centre (mean of 5 parallel lines)."""
    img = ph.image.astype(float)
    centre = np.array(ph.centres[joint_id])
    axis = np.array(ph.axes[joint_id])
    lateral = np.array([-axis[1], axis[0]])
    r = ph.bone_radius[joint_id]
    ts = np.arange(-half_length, half_length + 1e-6, 0.25)
    lines = []
    for off in np.linspace(-0.15 * r, 0.15 * r, 5):
        pts = centre + ts[:, None] * axis + off * lateral
        lines.append(ndimage.map_coordinates(img, [pts[:, 1], pts[:, 0]], order=1))
    return ts, np.mean(lines, axis=0)


def _image_jsw(ph, joint_id):
    """Joint-space width read from the image (pixels): the dark run on the joint line.

    The run is where the profile along the axis is below half-way between the bone ends and
    the darkest point near the centre; a joint line darker than the bone by less than 15 % of
    the bone-to-air contrast is closed (width 0), as a reader would call a fused joint.
    """
    r = ph.bone_radius[joint_id]
    ts, v = _profile(ph, joint_id, 1.2 * r)
    air = np.percentile(ph.image, 5)
    bone = min(np.median(v[ts < -0.4 * r]), np.median(v[ts > 0.4 * r]))
    near = np.abs(ts) <= 0.3 * r
    low = v[near].min()
    if (bone - low) / (bone - air) < 0.15:
        return 0.0
    dark = v < (bone + low) / 2
    k0 = int(np.flatnonzero(near)[np.argmin(v[near])])
    lo = hi = k0
    while lo > 0 and dark[lo - 1]:
        lo -= 1
    while hi < len(v) - 1 and dark[hi + 1]:
        hi += 1
    return (hi - lo + 1) * 0.25


def test_joint_space_width_on_the_image_falls_with_the_narrowing_grade():
    narrowing = [j.id for j in joints_for_limb("LH") if j.site in _OPEN_ON_PA]
    widths, truth, pairs = [], [], []
    for grade in range(5):
        ph = _render("LH", _uniform("LH", grade, 0), height=900)
        measured = [_image_jsw(ph, j) for j in narrowing]
        pairs += [(grade, m) for m in measured]
        widths.append(np.mean(measured))
        truth.append(np.median([ph.gap_widths[j] for j in narrowing]))
    assert all(a > b for a, b in itertools.pairwise(truth)), truth
    assert all(a >= b for a, b in itertools.pairwise(widths)), widths
    assert widths[0] > 1.5 * widths[2] and widths[3] < 0.5 * widths[0], widths
    assert widths[4] < 0.25 * widths[0], widths
    grades, measured = np.array(pairs).T
    assert stats.spearmanr(grades, measured).statistic < -0.6
    # at grade 0 the image shows a width of the order of the truth (curved surfaces, blur)
    assert 0.3 * truth[0] < widths[0] < 1.5 * truth[0], (widths, truth)


def test_erosion_lowers_bone_density_at_the_joint_margin():
    healthy = _render("RH", _uniform("RH", 0, 0), seed=3, pose=9)
    eroded = _render("RH", _uniform("RH", 0, 5), seed=3, pose=9)
    assert eroded.bites and not healthy.bites
    # the pose and the truth geometry are the same: only the damage differs
    assert eroded.centres == healthy.centres
    a, b = healthy.image.astype(float), eroded.image.astype(float)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    in_bite = np.zeros(a.shape, bool)
    losses = []
    for bites in eroded.bites.values():
        assert len(bites) >= 3
        for x, y, r in bites:
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= (0.6 * r) ** 2
            in_bite |= (xx - x) ** 2 + (yy - y) ** 2 <= (2.0 * r) ** 2
            losses.append((a[disc] - b[disc]).mean() / a[disc].mean())
    # bone elsewhere also loses a little (osteopenia with disease), far less than at the bites
    bone = a > np.percentile(a, 85)
    elsewhere = np.median(((a - b) / np.maximum(a, 1))[bone & ~in_bite])
    assert np.median(losses) > 0.06, np.median(losses)
    assert np.median(losses) > 3 * max(elsewhere, 0.005), (np.median(losses), elsewhere)
    assert np.mean(np.array(losses) > elsewhere) > 0.8


def test_truth_is_complete_inside_the_image_and_on_the_joint_space():
    for limb in ("LH", "RF"):
        ph = _render(limb, _uniform(limb, 0, 0), seed=1, pose=2)
        h, w = ph.image.shape
        ids = {j.id for j in joints_for_limb(limb)}
        assert set(ph.centres) == ids and set(ph.bone_radius) == ids
        narrowing = {j.id for j in joints_for_limb(limb) if j.narrowing}
        assert set(ph.polygons) == narrowing
        assert narrowing <= set(ph.axes) and narrowing <= set(ph.gap_widths)
        for x, y in ph.centres.values():
            assert 0 <= x < w and 0 <= y < h
        hidden = []
        for joint_id in narrowing:
            assert ph.gap_widths[joint_id] > 0.5, (joint_id, ph.gap_widths[joint_id])
            poly = np.array(ph.polygons[joint_id])
            r = ph.bone_radius[joint_id]
            assert np.linalg.norm(poly.mean(0) - np.array(ph.centres[joint_id])) < 0.8 * r
            if joint_id[3:] not in _OPEN_ON_PA:
                continue  # wrist, CMC and thumb joints overlap on a PA film, as on real ones
            ts, v = _profile(ph, joint_id, 1.2 * r)
            centre = v[np.abs(ts) <= max(0.5 * ph.gap_widths[joint_id], 0.5)].mean()
            # the centre lies on the dark joint line between two brighter bone ends
            prox = np.median(v[(ts < -0.4 * r) & (ts > -1.1 * r)])
            dist = np.median(v[(ts > 0.4 * r) & (ts < 1.1 * r)])
            if centre >= min(prox, dist):
                hidden.append(joint_id)
        # the centre lies on the dark joint line between two brighter bone ends; one joint of
        # a film may be hidden by an overlapping neighbour, as on real films
        assert len(hidden) <= 1, hidden


def test_left_is_the_mirror_of_right_and_seeds_decide_everything():
    grades = _uniform("LH", 1, 1) | _uniform("RH", 1, 1)
    left = _render("LH", grades, seed=4, pose=4, height=500)
    right = _render("RH", grades, seed=4, pose=4, height=500)
    again = _render("RH", grades, seed=4, pose=4, height=500)
    other = _render("RH", grades, seed=5, pose=6, height=500)
    np.testing.assert_array_equal(right.image, again.image)
    assert right.centres == again.centres and right.polygons == again.polygons
    assert not np.array_equal(right.image, other.image)
    assert right.centres != other.centres
    # PA view: the thumb is on the left of a right hand and on the right of a left one
    assert right.centres["RH_mcp_1"][0] < right.centres["RH_mcp_5"][0]
    assert left.centres["LH_mcp_1"][0] > left.centres["LH_mcp_5"][0]
    w = left.image.shape[1]
    for joint in joints_for_limb("LH"):
        lx, ly = left.centres[joint.id]
        rx, ry = right.centres["RH" + joint.id[2:]]
        assert lx == pytest.approx(w - 1 - rx, abs=1e-6) and ly == pytest.approx(ry, abs=1e-6)
    # the films themselves are mirrored (collimation and marker aside)
    crop = (slice(100, 400), slice(100, w - 100))
    a = left.image[crop].astype(float)
    b = right.image[:, ::-1][crop].astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_no_tag_file_name_size_or_order_carries_a_grade(tmp_path):
    out = tmp_path / "cohort"
    info = generate_cohort(out, 2, seed=3, height=320, us_pairs=0, workers=1, progress=False)
    assert info["style"] == "anatomical"
    files = sorted((out / "radiographs").iterdir())
    assert len(files) == 8
    allowed = re.compile(r"^S3-P000[12]_(LH|RH|LF|RF)\.(dcm|png)$")
    assert all(allowed.match(f.name) for f in files)
    # the listing order is patient then limb: nothing a grade could reorder
    limbs = [f.stem.split("_")[1] for f in files]
    assert limbs == ["LF", "LH", "RF", "RH"] * 2
    words = re.compile(r"grade|narrow|erosion|score|sharp|severity|damage", re.IGNORECASE)
    shapes = {}
    for f in files:
        if f.suffix == ".dcm":
            ds = pydicom.dcmread(f)
            for elem in ds.iterall():
                if elem.VR not in ("OB", "OW", "UN") and elem.tag != (0x7FE0, 0x0010):
                    assert not words.search(str(elem.value)), (f.name, elem)
            pixels = ds.pixel_array
        else:
            from annotation_tools.imageio import read_image

            pixels = read_image(f).pixels
        shapes.setdefault(f.stem.split("_")[1][1], set()).add(pixels.shape)
    # the image size depends on the limb kind only
    assert all(len(s) == 1 for s in shapes.values()), shapes
