"""The locator's pieces: decoder, loss, transforms and the handling of bad input."""

import json

import numpy as np
import pytest
import torch

from annotation_tools.imageio import ImageData
from annotation_tools.joint_decoding import (
    UNION_CHANNELS,
    decode_heatmaps,
    decode_result,
    kind_slice,
)
from annotation_tools.locator import JointHitRate, LocatorLoss, UnionLabeld, build_network
from annotation_tools.radiograph import limb_from_filename, prepare_input
from annotation_tools.vocabulary import get_joint, joints_for_limb


def _blob(shape, x, y, sigma=2.0, peak=0.95):
    yy, xx = np.indices(shape)
    return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _hand_heatmaps(shape):
    """A plausible hand output: every hand channel fires once, at its own place (7 px apart:
    true joints are >= 6 px apart at 256 px)."""
    prob = np.zeros((28, *shape), np.float32)
    for c in range(22):
        prob[c] = _blob(shape, 5 + 7 * (c % 11), 60 + 20 * (c // 11), sigma=1.0, peak=0.99)
    return prob


def test_union_channels_cover_both_limb_kinds():
    assert len(UNION_CHANNELS) == 28
    assert [c.split(":")[1] for c in UNION_CHANNELS[kind_slice("hand")]] == [
        j.site for j in joints_for_limb("LH")
    ]
    assert [c.split(":")[1] for c in UNION_CHANNELS[kind_slice("foot")]] == [
        j.site for j in joints_for_limb("RF")
    ]


def test_network_maps_image_to_one_channel_per_joint():
    net = build_network(channels=(4, 8, 16, 32, 32), strides=(2, 2, 2, 2))
    out = net(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 28, 64, 64)
    small = build_network(coordconv=False, channels=(4, 8, 16, 32, 32), strides=(2, 2, 2, 2))
    assert small(torch.zeros(1, 1, 32, 32)).shape == (1, 28, 32, 32)
    assert build_network()(torch.zeros(1, 3, 256, 256)).shape == (1, 28, 256, 256)


def test_decoder_finds_subpixel_centroids_and_flags_missing():
    prob = np.zeros((28, 64, 64), np.float32)
    hand = kind_slice("hand")
    prob[hand.start + 3] = _blob((64, 64), 20.3, 30.7)
    prob[hand.start + 4] = _blob((64, 64), 40.0, 10.0) + _blob((64, 64), 10, 50, sigma=1, peak=0.6)
    prob[hand.start + 5] = _blob((64, 64), 5, 5, peak=0.3)  # below threshold
    decoded = decode_heatmaps(prob, "hand")
    site3, site4, site5 = (joints_for_limb("LH")[i].site for i in (3, 4, 5))
    x, y, conf = decoded[site3]
    assert abs(x - 20.3) < 0.2 and abs(y - 30.7) < 0.2 and conf > 0.9
    assert abs(decoded[site4][0] - 40.0) < 0.2  # the strongest blob wins
    assert decoded[site5][:2] == (None, None) and decoded[site5][2] == pytest.approx(0.3, 0.01)


def test_decode_result_maps_back_to_original_pixels_and_unmirrors():
    prob = _hand_heatmaps((100, 100))
    index = get_joint("RH_mcp_2").index
    prob[index] = _blob((100, 100), 30.0, 40.0)
    prob[get_joint("RH_mcp_3").index] = 0
    result = decode_result(
        prob, limb="RH", limb_source="given", original_shape=(200, 400), mirrored=True, path="x.png"
    )
    joint = result.joints["RH_mcp_2"]
    # mirrored back: x -> 99 - 30 = 69 in the grid, then scaled by 4 (and 2 for y)
    assert joint.x == pytest.approx((69 + 0.5) * 4 - 0.5, abs=0.3)
    assert joint.y == pytest.approx((40 + 0.5) * 2 - 0.5, abs=0.3)
    assert result.joints["RH_mcp_3"].missing and result.joints["RH_mcp_3"].x is None
    assert not result.warnings
    assert set(result.joints) == {j.id for j in joints_for_limb("RH")}


def test_two_joints_on_one_spot_flag_the_less_confident():
    prob = _hand_heatmaps((100, 100))
    # PIP 2 fires only on MCP 1's point (x = 12), and less than MCP 1 does
    prob[get_joint("LH_pip_2").index] = _blob((100, 100), 12.5, 60.0, sigma=1.0, peak=0.8)
    result = decode_result(
        prob,
        limb="LH",
        limb_source="given",
        original_shape=(100, 100),
        mirrored=False,
        path="x.png",
    )
    assert result.joints["LH_pip_2"].missing and not result.joints["LH_mcp_1"].missing
    assert "pip_2 and mcp_1 claimed the same point" in result.warnings[0]


def test_wrong_limb_kind_flags_every_joint_missing():
    prob = np.zeros((28, 64, 64), np.float32)
    for c in range(kind_slice("foot").start, kind_slice("foot").stop):
        prob[c] = _blob((64, 64), 10 + 7 * (c % 6), 30)
    result = decode_result(
        prob,
        limb="LH",
        limb_source="filename",
        original_shape=(64, 64),
        mirrored=False,
        path="P1_LH.png",
    )
    assert all(j.missing for j in result.joints.values())
    assert "does not look like a hand" in result.warnings[0]
    # without a given limb the image decides the kind
    guessed = decode_result(
        prob, limb="", limb_source="unknown", original_shape=(64, 64), mirrored=False, path="x.png"
    )
    assert guessed.limb == "LF" and guessed.limb_source == "model"
    assert sum(not j.missing for j in guessed.joints.values()) == 6


def _foot_labelled(prob):
    return decode_result(
        prob, limb="LF", limb_source="filename", original_shape=(100, 100), mirrored=False,
        path="P1_LF.png",
    )  # fmt: skip


def test_a_foot_label_is_overruled_only_by_a_clean_hand():
    """Hand channels fire on toes too; a foot label gives way only when every hand channel
    fires at its own place (at most one pair on one spot), not on 2-3 coincident pairs."""
    clean = _hand_heatmaps((100, 100))
    for c in range(22, 28):  # the foot channels fire as well, as they do on a hand
        clean[c] = _blob((100, 100), 5 + 7 * (c - 22), 20, sigma=1.0, peak=0.9)
    refused = _foot_labelled(clean)
    assert all(j.missing for j in refused.joints.values())
    assert "does not look like a foot" in refused.warnings[0]
    blurred = clean.copy()
    for c, onto in ((1, 0), (3, 2)):  # two hand channels land on their neighbours' spots
        blurred[c] = _blob((100, 100), 5 + 7 * onto, 60, sigma=1.0, peak=0.9)
    kept = _foot_labelled(blurred)
    assert not any("does not look like" in w for w in kept.warnings)
    assert sum(not j.missing for j in kept.joints.values()) == 6


def test_loss_ignores_minus_one_pixels():
    loss = LocatorLoss()
    logits = torch.zeros(1, 28, 8, 8)
    target = torch.zeros(1, 28, 8, 8)
    target[0, 3, 2:4, 2:4] = 1
    target[0, 5] = -1
    base = loss(logits, target)
    changed = logits.clone()
    changed[0, 5] = 50.0  # anything on an ignored channel must not matter
    assert loss(changed, target) == pytest.approx(base.item(), rel=1e-6)
    better = logits.clone()
    better[0, 3, 2:4, 2:4] = 5.0
    assert loss(better, target) < base
    assert LocatorLoss(dice_weight=1.0)(better, target) > loss(better, target)
    # the spatial term prefers one blob over the same blob repeated at another joint
    twice = better.clone()
    twice[0, 3, 6:8, 6:8] = 5.0
    assert LocatorLoss(pos_weight=1.0, spatial_weight=1.0)(better, target) < LocatorLoss(
        pos_weight=1.0, spatial_weight=1.0
    )(twice, target)


def test_union_label_places_kind_channels():
    label = torch.ones(6, 4, 4)
    out = UnionLabeld(keys="label")({"label": label, "limb": "RF"})["label"]
    assert out.shape == (28, 4, 4)
    assert out[kind_slice("foot")].sum() == 6 * 16 and out[kind_slice("hand")].sum() == 0


def test_hit_rate_metric_counts_joints_within_tolerance():
    target = torch.zeros(1, 28, 64, 64)
    target[0, 0, 10:14, 10:14] = 1  # centre (11.5, 11.5)
    target[0, 1, 40:44, 40:44] = 1
    pred = torch.full((1, 28, 64, 64), -10.0)
    pred[0, 0] = torch.from_numpy(np.log(_blob((64, 64), 11.5, 11.5) + 1e-6)) + 3
    metric = JointHitRate(tolerance=0.02)
    metric(pred, target)
    assert metric.aggregate().item() == pytest.approx(0.5)  # one found, one missed


def test_limb_from_file_names():
    assert limb_from_filename("S1-P0001_LH.dcm").value == "LH"
    assert limb_from_filename("/x/p12-rf.png").value == "RF"
    assert limb_from_filename("hand_scan.png") is None
    assert limb_from_filename("LHOSPITAL_3.png") is None


@pytest.mark.parametrize(
    ("pixels", "expect"),
    [
        (np.zeros((300, 200), np.uint16), "no contrast"),
        (np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8), "too small"),
        (np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8), "colour image"),
    ],
)
def test_bad_images_are_named_in_warnings(pixels, expect):
    image = ImageData(pixels=pixels, path=None, format="png")
    prepared = prepare_input(image, "LH", (64, 64), "x_LH.png")
    warnings = json.loads(prepared["warnings"])
    assert any(expect in w for w in warnings)
    assert prepared["pixels"].shape == (64, 64)
    if expect == "too small":
        prob = np.ones((28, 64, 64), np.float32)
        result = decode_result(
            prob[:, :, :],
            limb="LH",
            limb_source="given",
            original_shape=prepared["original_shape"],
            mirrored=False,
            path="x_LH.png",
            warnings=warnings,
        )
        assert all(j.missing for j in result.joints.values())
