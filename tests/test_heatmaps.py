"""RATING's heatmaps: integrated gradients (not saliency), the measured baseline, one map per
input, and the jigsaw weights that RATING's training must start from."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from annotation_tools.rating import (
    DEFAULT_BASELINE,
    DOPPLER_CHANNELS,
    GREYSCALE_CHANNELS,
    RatingMember,
    attribution_map,
    ig_baseline,
    integrated_gradients,
    normalise_heatmap,
)
from annotation_tools.us_rating import EXPLAIN_DEFAULTS, RatingEnsemble, explain_case

BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_us_rating"


class Contrast(torch.nn.Module):
    """A nonlinear 'grader' with a known answer: summed squared distance from mid grey."""

    def forward(self, x):
        return ((x - 0.5) ** 2).sum((1, 2, 3))[:, None]


def _member():
    torch.manual_seed(0)
    return RatingMember(widen_factor=0.125, hidden=16).eval()


def test_integrated_gradients_are_complete_and_saliency_is_not():
    """IG's completeness: the attributions add up to f(x) - f(baseline). Plain saliency
    (|gradient|, or gradient x input) does not, so swapping the method fails here."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 3, 3), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.LazyLinear(1)
    )
    x = torch.rand(1, 4, 12, 12)
    net(x)  # materialise the lazy layer
    gap = {}
    for kind in ("zero", DEFAULT_BASELINE):
        base = ig_baseline(x, kind, sigma=3.0)
        a = integrated_gradients(net, x, target=0, baseline=kind, blur_sigma=3.0, steps=16)
        with torch.no_grad():
            gap[kind] = float(net(x) - net(base))
        assert float(a.sum()) == pytest.approx(gap[kind], rel=0.02, abs=1e-4)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    for saliency in (grad.abs(), grad * x):  # plain saliency, gradient x input
        assert abs(float(saliency.sum()) - gap["zero"]) > 0.05 * abs(gap["zero"])


def test_the_default_baseline_is_the_mean_grey_crop_and_finds_a_dark_region():
    """A black baseline equals the hypoechoic synovium's own intensity, so a dark region gets
    next to nothing; the measured default (the crop's mean grey) attributes it."""
    from skimage.filters import gaussian

    rng = np.random.default_rng(0)
    crop = np.clip(0.75 + 0.1 * rng.standard_normal((4, 48, 48)), 0, 1).astype(np.float32)
    crop[:, 18:30, 14:34] = 0.05  # the 'synovium'
    dark = np.zeros((48, 48), bool)
    dark[18:30, 14:34] = True
    x = torch.as_tensor(crop)[None]
    assert DEFAULT_BASELINE == EXPLAIN_DEFAULTS["baseline"] == "mean"
    means = np.broadcast_to(crop.mean((1, 2))[:, None, None], crop.shape)
    np.testing.assert_allclose(ig_baseline(x)[0].numpy(), means, rtol=1e-6)
    blurred = gaussian(crop, sigma=EXPLAIN_DEFAULTS["blur_sigma"], channel_axis=0, mode="reflect")
    np.testing.assert_allclose(ig_baseline(x, "blur")[0].numpy(), blurred, atol=1e-6)
    share = {}
    for kind in ("zero", DEFAULT_BASELINE):
        heat = attribution_map(integrated_gradients(Contrast(), x, baseline=kind, steps=4))
        share[kind] = heat[dark].sum() / heat.sum()
    assert share["zero"] < dark.mean() / 3  # under a third of its area share
    assert share[DEFAULT_BASELINE] > 3 * share["zero"]


def test_explain_case_gives_one_map_per_input_with_the_bundle_settings():
    member = _member()
    ensemble = RatingEnsemble([member], [{"fold": 0, "seed": 0}], input_size=32)
    x = torch.rand(1, 4, 32, 32)
    heat = explain_case(ensemble, x, floor=0.0)
    assert set(heat) == {"synovial_hypertrophy", "synovial_hypertrophy_doppler", "vascularity"}
    from annotation_tools.us_rating import _ExpectedGrade

    sh = integrated_gradients(_ExpectedGrade(member, "synovial_hypertrophy"), x, target=0,
                              **EXPLAIN_DEFAULTS)  # fmt: skip
    for name, channels in (
        ("synovial_hypertrophy", GREYSCALE_CHANNELS),
        ("synovial_hypertrophy_doppler", DOPPLER_CHANNELS),
    ):
        np.testing.assert_allclose(
            heat[name], normalise_heatmap(attribution_map(sh, channels), 0.0), atol=1e-5
        )
    # the bundle's inference config runs the same settings
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    assert config["explain_steps"] == EXPLAIN_DEFAULTS["steps"]
    assert config["explain_copies"] == EXPLAIN_DEFAULTS["noisy_copies"]
    assert config["explain_baseline"] == EXPLAIN_DEFAULTS["baseline"]
    assert config["explain_noise_sd"] == EXPLAIN_DEFAULTS["noise_sd"]


def _training_member(ckpt: Path, stage: str, pretrained: bool) -> RatingMember:
    """The ``member`` that the bundle's train.json builds before training starts."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "ckpt_dir": str(ckpt),
            "stage": stage,
            "pretrained": pretrained,
            "widen_factor": 0.125,
            "hidden": 16,
            "device": "$torch.device('cpu')",
        }
    )
    return parser.get_parsed_content("member")


def test_training_starts_from_the_jigsaw_weights(tmp_path):
    """train.json's member carries the jigsaw checkpoints' backbones (F at stage grey, G at
    stage doppler), and fresh ones with --pretrained False: skipping the load fails here."""
    torch.manual_seed(5)
    jigsaw = RatingMember(widen_factor=0.125, hidden=16)
    torch.save({"model": jigsaw.grey.state_dict()}, tmp_path / "jigsaw_greyscale.pt")
    torch.save(jigsaw.doppler.state_dict(), tmp_path / "jigsaw_doppler_transformed.pt")

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    grey = _training_member(tmp_path, "grey", True)
    assert same(grey.grey.state_dict(), jigsaw.grey.state_dict())
    fresh = _training_member(tmp_path, "grey", False)
    assert not same(fresh.grey.state_dict(), jigsaw.grey.state_dict())
    # stage doppler: F as the grey stage left it, G from its own jigsaw checkpoint
    torch.save({"model": grey.state_dict()}, tmp_path / "member_f0_s0_k123.pt")
    doppler = _training_member(tmp_path, "doppler", True)
    assert same(doppler.doppler.state_dict(), jigsaw.doppler.state_dict())
    assert same(doppler.grey.state_dict(), grey.grey.state_dict())
    assert not same(grey.doppler.state_dict(), jigsaw.doppler.state_dict())
