"""The multi-task U-Net's pieces: crop, disc targets, smoothed loss, score decoding."""

import numpy as np
import pytest
import torch

from annotation_tools.multitask import (
    GRADES,
    N_OUT,
    N_TYPES,
    MultitaskLoss,
    decode_multitask,
    grade_from_pixels,
    image_scores,
    smoothed_grade_targets,
    spatial_type_loss,
    split_heads,
    union_probabilities,
)
from annotation_tools.targets import (
    IGNORE,
    JOINT_TYPES,
    CropBox,
    edge_crop_box,
    joint_type,
    multitask_targets,
)
from annotation_tools.vocabulary import joints_for_limb


def test_edge_crop_keeps_the_limb_and_drops_the_empty_film():
    grey = np.zeros((400, 300), np.float32)
    grey[100:300, 80:200] = 1.0  # the "limb"
    box = edge_crop_box(grey, margin=0.0)
    assert box.y0 <= 100 and box.y1 >= 300 and box.x0 <= 80 and box.x1 >= 200
    assert box.y0 >= 85 and box.y1 <= 315 and box.x0 >= 65 and box.x1 <= 215  # tight
    wide = edge_crop_box(grey, margin=0.05)
    assert wide.y0 < box.y0 and wide.x1 > box.x1
    assert edge_crop_box(np.zeros((50, 60))) == CropBox(0, 50, 0, 60)  # blank: keep all
    point = box.to_image(box.to_crop([[120.0, 150.0]]))
    np.testing.assert_allclose(point, [[120.0, 150.0]])


def test_disc_targets_label_discs_ignore_rings_and_split_neighbours():
    centres = {"LH_mcp_2": (20.0, 20.0), "LH_mcp_3": (28.0, 20.0), "LH_ip": None}
    scores = {"LH_mcp_2": {"narrowing": 3, "erosion": 2}, "LH_mcp_3": {"erosion": 4}}
    t = multitask_targets(centres, scores, "LH", (40, 60), radius=5, ignore_radius=7)
    assert t.shape == (3, 40, 60)
    mcp2, mcp3 = joint_type("mcp_2", "hand"), joint_type("mcp_3", "hand")
    assert t[0, 20, 20] == mcp2 and t[0, 20, 28] == mcp3
    assert t[0, 20, 23] == mcp2 and t[0, 20, 25] == mcp3  # overlap split by distance
    assert t[0, 20, 14] == IGNORE  # ring of mcp_2 (6 px away)
    assert t[0, 20, 10] == 0 and t[0, 0, 0] == 0  # background
    assert set(np.unique(t[0])) == {IGNORE, 0, mcp2, mcp3}  # "not visible" IP: no disc
    assert t[1, 20, 20] == 3 and t[1, 20, 28] == IGNORE  # mcp_3 has no narrowing score
    assert t[2, 20, 20] == 2 and t[2, 20, 28] == 4
    assert t[1, 0, 0] == IGNORE and t[2, 0, 0] == IGNORE  # grades only on discs


def test_foot_joints_take_finger_types_and_half_erosion():
    t = multitask_targets(
        {"RF_mtp_1": (10.0, 10.0)}, {"RF_mtp_1": {"erosion": 7, "narrowing": 2}}, "RF", (20, 20)
    )
    assert t[0, 10, 10] == JOINT_TYPES.index("mcp_1")
    assert t[2, 10, 10] == 3.5 and t[1, 10, 10] == 2


def test_local_label_smoothing_moves_mass_to_neighbouring_grades_only():
    """Maziarz et al.: p / 2 to each neighbour; an end grade has one and keeps 1 - p / 2."""
    grades = torch.tensor([[[0.0, 2.0, 4.0, 2.5, -1.0, 3.5]]])
    soft = smoothed_grade_targets(grades, 5, 0.1)[0, :, 0].T  # (pixels, K)
    np.testing.assert_allclose(soft[0], [0.95, 0.05, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(soft[1], [0, 0.05, 0.9, 0.05, 0], atol=1e-6)
    np.testing.assert_allclose(soft[2], [0, 0, 0, 0.05, 0.95], atol=1e-6)
    np.testing.assert_allclose(soft[3], [0, 0.025, 0.475, 0.475, 0.025], atol=1e-6)
    np.testing.assert_allclose(soft[4], 0)  # ignored pixel
    np.testing.assert_allclose(soft[5], [0, 0, 0.025, 0.475, 0.5], atol=1e-6)
    np.testing.assert_allclose(soft[[0, 1, 2, 3, 5]].sum(1), 1.0, atol=1e-6)
    wide = smoothed_grade_targets(torch.tensor([[[0.0, 10.0]]]), 11, 0.2)[0, :, 0].T
    assert wide[0, 0] == pytest.approx(0.9) and wide[1, 10] == pytest.approx(0.9)
    np.testing.assert_allclose(smoothed_grade_targets(grades, 5, 0.0)[0, :, 0, 1], [0, 0, 1, 0, 0])


def test_loss_ignores_ring_pixels_and_rewards_the_right_answer():
    scores = {"LH_mcp_2": {"narrowing": 2, "erosion": 1}}
    centres = {"LH_mcp_2": (8.0, 8.0)}
    disc = multitask_targets(centres, scores, "LH", (16, 16), radius=3, ignore_radius=5)
    target = torch.tensor(disc)[None]
    loss = MultitaskLoss(smoothing=0.1)
    logits = torch.zeros(1, N_OUT, 16, 16)
    base = loss(logits, target)
    ring = target[0, 0] == IGNORE
    noisy = logits.clone()
    noisy[:, :, ring] = torch.randn(N_OUT, int(ring.sum()))
    torch.testing.assert_close(loss(noisy, target), base)  # ring pixels do not count
    good = logits.clone()
    types, nar, ero = split_heads(good)
    types.scatter_(1, target[:, :1].clamp(min=0).long(), 8.0)
    nar[:, 2] = 6.0
    ero[:, 1] = 6.0
    assert loss(good, target) < base / 4
    grad_logits = logits.clone().requires_grad_(True)
    loss(grad_logits, target).backward()
    assert torch.isfinite(grad_logits.grad).all()


def test_spatial_term_rewards_each_type_on_its_own_disc():
    centres = {"LH_mcp_2": (4.0, 4.0), "LH_mcp_3": (12.0, 12.0)}
    target = torch.tensor(multitask_targets(centres, {}, "LH", (16, 16), radius=2, ignore_radius=3))
    types = target[None, 0]
    right = torch.zeros(1, N_TYPES, 16, 16)
    swapped = torch.zeros(1, N_TYPES, 16, 16)
    for own, other in (("mcp_2", "mcp_3"), ("mcp_3", "mcp_2")):
        disc = types[0] == joint_type(own, "hand")
        right[0, joint_type(own, "hand"), disc] = 5.0
        swapped[0, joint_type(other, "hand"), disc] = 5.0
    flat = spatial_type_loss(torch.zeros(1, N_TYPES, 16, 16), types)
    assert spatial_type_loss(right, types) < flat < spatial_type_loss(swapped, types)
    background_only = torch.zeros_like(types)
    assert spatial_type_loss(right, background_only) == 0  # no joint: nothing to place


def test_grade_from_pixels_is_the_softmax_weighted_average():
    prob = np.zeros((5, 2, 2))
    prob[1, 0, 0] = 1.0  # certain 1
    prob[3, 0, 1] = 1.0  # certain 3
    prob[[0, 4], 1, :] = 0.5  # torn between 0 and 4 (mean 2, sd 2)
    mean, sd = grade_from_pixels(prob, np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert mean == pytest.approx(2.0) and sd == pytest.approx(0.0)
    mean, sd = grade_from_pixels(prob, np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert mean == pytest.approx(2.0) and sd == pytest.approx(2.0)
    mean, _ = grade_from_pixels(prob, np.array([[3.0, 1.0], [0.0, 0.0]]))
    assert mean == pytest.approx(1.5)
    with pytest.raises(ValueError, match="positive weight"):
        grade_from_pixels(prob, np.zeros((2, 2)))


def _synthetic_output(limb, grid, points, narrowing=2, erosion=3, drop=()):
    """Softmax-like output with a blob per joint at ``points`` (grid x, y) and one-hot grades."""
    h, w = grid
    probs = np.zeros((N_OUT, h, w), np.float32)
    probs[0] = 1.0
    yy, xx = np.mgrid[0:h, 0:w]
    kind = "hand" if limb.endswith("H") else "foot"
    for joint in joints_for_limb(limb):
        if joint.id in drop:
            continue
        x, y = points[joint.id]
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= 4
        probs[:, disc] = 0.0
        probs[joint_type(joint.site, kind), disc] = 0.95
        probs[0, disc] = 0.05
        probs[N_TYPES + narrowing, disc] = 1.0
        probs[N_TYPES + GRADES["narrowing"] + erosion, disc] = 1.0
    return probs


def test_decoding_names_joints_in_image_pixels_and_scores_them():
    grid = (64, 64)
    joints = joints_for_limb("RF")
    points = {j.id: (8.0 + 9 * i, 20.0 + 3 * i) for i, j in enumerate(joints)}
    probs = _synthetic_output("RF", grid, points, drop=("RF_mtp_5",))
    box = (100, 228, 50, 178)  # the crop is 128 x 128 px of a 300 x 240 image
    pred = decode_multitask(
        probs, limb="RF", limb_source="given", original_shape=(300, 240), crop_box=box,
        mirrored=True, path="p_RF.png",
    )  # fmt: skip
    located = pred.located
    assert located.image_shape == (300, 240)
    assert located.joints["RF_mtp_5"].missing and "RF_mtp_5" not in pred.scores
    mtp1 = located.joints["RF_mtp_1"]
    gx, gy = points["RF_mtp_1"]
    # grid -> crop (x2, mirrored) -> image (+ offset)
    assert mtp1.x == pytest.approx((63 - gx + 0.5) * 2 - 0.5 + 50, abs=0.01)
    assert mtp1.y == pytest.approx((gy + 0.5) * 2 - 0.5 + 100, abs=0.01)
    assert pred.scores["RF_mtp_1"]["narrowing"] == pytest.approx(2.0)
    assert pred.scores["RF_mtp_1"]["erosion"] == pytest.approx(6.0)  # feet: doubled back
    scores = image_scores(pred, "P1")
    assert scores.joints["RF_mtp_1"].stage == "multitask"
    assert scores.joints["RF_mtp_5"].stage == "missing"
    assert scores.joints["RF_mtp_1"].patch_erosion == scores.joints["RF_mtp_1"].erosion


def test_a_foot_labelled_as_a_hand_is_refused_not_renamed():
    grid = (64, 64)
    joints = joints_for_limb("LF")
    points = {j.id: (8.0 + 9 * i, 30.0) for i, j in enumerate(joints)}
    probs = _synthetic_output("LF", grid, points)
    union = union_probabilities(probs[:N_TYPES])
    assert union.shape == (28, *grid)
    pred = decode_multitask(
        probs, limb="LH", limb_source="given", original_shape=grid, crop_box=(0, 64, 0, 64),
        mirrored=False, path="p_LH.png",
    )  # fmt: skip
    assert all(j.missing for j in pred.located.joints.values()) and not pred.scores
    assert any("does not look like a hand" in w for w in pred.located.warnings)
