"""The locator's shape prior and the assignment decoder: wrong names are caught, right ones kept."""

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from annotation_tools.joint_decoding import assign_joints, check_shape, decode_result, kind_slice
from annotation_tools.shape_prior import (
    ShapePrior,
    fit_shape_priors,
    fit_shape_priors_from_datalists,
    load_shape_priors,
    save_shape_priors,
)
from annotation_tools.vocabulary import get_joint, site_names

HAND = site_names("hand")
BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundles" / "ra_joint_locator"
BUNDLE_CONFIGS = BUNDLE / "configs"


def _hand_layout() -> np.ndarray:
    """A left hand in a 100 px grid: thumb, four rays of PIP/MCP, wrist joints below."""
    layout = {"ip": (20, 50), "mcp_1": (25, 62)}
    for ray, x in zip((2, 3, 4, 5), (40, 50, 60, 70), strict=True):
        layout[f"pip_{ray}"] = (x, 20 + abs(ray - 3) * 3)
        layout[f"mcp_{ray}"] = (x, 45 + abs(ray - 3) * 2)
    wrist = [s for s in HAND if s.startswith("wrist")]
    for i, site in enumerate(wrist):
        layout[site] = (35 + 6 * (i % 6), 65 + 6 * (i // 6))  # >= 6 px, as real joints
    return np.array([layout[s] for s in HAND], dtype=float)


def _shapes(rng, n: int) -> np.ndarray:
    """``n`` hands: the layout under random rotation, scale and shift, plus 0.6 px jitter."""
    base = _hand_layout()
    out = []
    for _ in range(n):
        a, s = rng.uniform(-0.2, 0.2), rng.uniform(0.9, 1.1)
        rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        centred = base - base.mean(axis=0)
        out.append(centred @ rot.T + base.mean(axis=0) + rng.uniform(-5, 5, 2))
    return np.stack(out) + rng.normal(0, 0.6, (n, len(base), 2))


@pytest.fixture
def prior(rng) -> ShapePrior:
    return ShapePrior.fit("hand", _shapes(rng, 40))


def _blob(shape, x, y, sigma=1.0, peak=0.95):
    yy, xx = np.indices(shape)
    return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _heatmaps(points: np.ndarray) -> np.ndarray:
    prob = np.zeros((28, 100, 100), np.float32)
    for j, (x, y) in enumerate(points):
        prob[kind_slice("hand").start + j] = _blob((100, 100), x, y)
    return prob


def test_prior_accepts_new_hands_and_singles_out_a_swapped_finger(prior, rng):
    assert prior.n_shapes == 40 and np.isfinite(prior.tau)
    hand = _shapes(rng, 1)[0]
    assert np.nanmax(prior.residuals(hand)) < prior.tau
    wrong = hand.copy()
    pip4, pip5 = HAND.index("pip_4"), HAND.index("pip_5")
    wrong[pip4] = hand[pip5] + 0.5  # PIP 4's name on PIP 5's joint
    residuals = prior.residuals(wrong)
    assert int(np.nanargmax(residuals)) == pip4 and residuals[pip4] > prior.tau
    predicted, _ = prior.predict(wrong, pip4)
    assert np.hypot(*(predicted - hand[pip4])) < 3  # the others know where PIP 4 belongs
    missing = hand.copy()
    missing[HAND.index("mcp_2")] = np.nan
    assert np.isnan(prior.residuals(missing)[HAND.index("mcp_2")])


def test_prior_needs_enough_complete_limbs(rng):
    few = _shapes(rng, 12)
    few[:4, 3] = np.nan  # 8 complete limbs left
    with pytest.raises(ValueError, match="needs >= 10 limbs"):
        ShapePrior.fit("hand", few)
    with pytest.raises(ValueError, match="must be"):
        ShapePrior.fit("foot", _shapes(rng, 12))  # hand-sized points for a foot


def test_priors_round_trip_through_json_and_bad_files_are_named(prior, tmp_path):
    path = save_shape_priors({"hand": prior}, tmp_path / "shape_prior.json")
    loaded = load_shape_priors(path)["hand"]
    np.testing.assert_allclose(loaded.mean, prior.mean, atol=1e-5)
    np.testing.assert_allclose(loaded.cov, prior.cov, atol=1e-7)
    assert loaded.tau == pytest.approx(prior.tau)
    assert load_shape_priors(None) == {} and load_shape_priors(tmp_path / "absent.json") == {}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="shape_prior.json: not a valid shape prior"):
        load_shape_priors(path)
    payload = {"format": 1, "priors": {"hand": {**prior.to_dict(), "sites": list(HAND[:-1])}}}
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="do not match the hand vocabulary"):
        load_shape_priors(path)


def test_fit_from_datalists_leaves_out_the_validation_fold(rng, tmp_path, caplog):
    shapes = _shapes(rng, 30)
    items = [
        {"limb": "LH", "fold": i % 3, "centres": dict(zip(HAND, s.tolist(), strict=True))}
        for i, s in enumerate(shapes)
    ]
    items[0]["centres"]["mcp_3"] = None  # not visible: that limb is not complete
    feet = [{"limb": "RF", "fold": 1, "centres": {s: [1.0, 2.0] for s in site_names("foot")}}]
    (tmp_path / "datalist_hand.json").write_text(json.dumps({"training": items}))
    (tmp_path / "datalist_foot.json").write_text(json.dumps({"training": feet}))
    lists = [tmp_path / "datalist_hand.json", tmp_path / "datalist_foot.json"]
    priors = fit_shape_priors_from_datalists(lists, 0, tmp_path / "ckpt" / "shape_prior.json")
    assert set(priors) == {"hand"} and priors["hand"].n_shapes == 20  # folds 1 and 2
    assert "no foot shape prior" in caplog.text  # one foot is not a cohort: decode without
    assert set(load_shape_priors(tmp_path / "ckpt" / "shape_prior.json")) == {"hand"}
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"limb": "LH", "fold": 1}]}))
    with pytest.raises(ValueError, match="re-export"):
        fit_shape_priors_from_datalists([tmp_path / "bad.json"], 0, tmp_path / "x.json")


def test_assignment_gives_a_contested_blob_to_one_joint():
    hand = _hand_layout()
    prob = _heatmaps(hand)
    pip4 = kind_slice("hand").start + HAND.index("pip_4")
    # PIP 4's channel fires more strongly on PIP 5 than on its own joint
    prob[pip4] = _blob((100, 100), *hand[HAND.index("pip_4")], peak=0.7) + _blob(
        (100, 100), *hand[HAND.index("pip_5")], peak=0.9, sigma=1.2
    )
    decoded, notes = assign_joints(prob, "hand")
    np.testing.assert_allclose(decoded["pip_4"][:2], hand[HAND.index("pip_4")], atol=0.3)
    np.testing.assert_allclose(decoded["pip_5"][:2], hand[HAND.index("pip_5")], atol=0.3)
    assert not notes
    # with no blob of its own, PIP 4 is flagged missing and the note says why
    prob[pip4] = _blob((100, 100), *hand[HAND.index("pip_5")], peak=0.8)
    decoded, notes = assign_joints(prob, "hand")
    assert decoded["pip_4"][0] is None and decoded["pip_5"][0] is not None
    assert notes == [
        "pip_4 and pip_5 claimed the same point; pip_4 (less evidence there) flagged missing"
    ]


def test_shape_check_moves_a_wrong_name_or_flags_it(prior):
    hand = _hand_layout()
    i4 = HAND.index("pip_4")
    prob = _heatmaps(hand)
    channel = kind_slice("hand").start + i4
    wrong_place = hand[i4] + (0, 12)  # on the middle phalanx, between PIP 4 and MCP 4
    prob[channel] = _blob((100, 100), *wrong_place) + _blob((100, 100), *hand[i4], peak=0.6)
    decoded = {s: (float(x), float(y), 0.95) for s, (x, y) in zip(HAND, hand, strict=True)}
    decoded["pip_4"] = (*wrong_place, 0.95)
    moved, notes = check_shape(decoded, prob, "hand", prior)
    np.testing.assert_allclose(moved["pip_4"][:2], hand[i4], atol=0.3)
    assert len(notes) == 1 and notes[0].startswith("pip_4: position implausible")
    assert all(moved[s] == decoded[s] for s in HAND if s != "pip_4")
    prob[channel] = _blob((100, 100), *wrong_place)  # no plausible blob: missing, not wrong
    flagged, notes = check_shape(decoded, prob, "hand", prior)
    assert flagged["pip_4"][0] is None and "flagged missing" in notes[0]
    # a plausible hand is left exactly as decoded
    prob = _heatmaps(hand)
    kept, notes = check_shape(decoded | {"pip_4": (*hand[i4], 0.95)}, prob, "hand", prior)
    assert not notes and kept["pip_4"][:2] == tuple(hand[i4])


def test_decode_result_applies_the_prior_and_reports_it(prior):
    hand = _hand_layout()
    i4 = HAND.index("pip_4")
    prob = _heatmaps(hand)
    prob[kind_slice("hand").start + i4] = _blob((100, 100), *(hand[i4] + (0, 12)))
    args = dict(limb="LH", limb_source="given", original_shape=(100, 100), mirrored=False)
    plain = decode_result(prob, path="a.png", **args)
    checked = decode_result(prob, path="a.png", shape_priors={"hand": prior}, **args)
    assert not plain.joints["LH_pip_4"].missing  # without the prior: a confident wrong point
    assert checked.joints["LH_pip_4"].missing
    assert any("shape prior" in w for w in checked.warnings)
    assert sum(j.missing for j in checked.joints.values()) == 1
    assert get_joint("LH_pip_4").site == "pip_4"


def test_train_config_fits_the_prior_next_to_the_weights(rng, tmp_path):
    """``initialize`` of train.json writes ``shape_prior.json`` into ``ckpt_dir``; inference
    loads the one next to its weights and hands it to the decoder."""
    shapes = _shapes(rng, 15)
    items = [
        {"limb": "LH", "fold": i % 5, "centres": dict(zip(HAND, s.tolist(), strict=True))}
        for i, s in enumerate(shapes)
    ]
    (tmp_path / "datalist_hand.json").write_text(json.dumps({"training": items}))
    parser = ConfigParser()
    parser.read_config([f"{BUNDLE_CONFIGS}/train.json", f"{BUNDLE_CONFIGS}/quick.json"])
    parser.update(
        {"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path),
         "ckpt_dir": str(tmp_path / "ckpt")}
    )  # fmt: skip
    parser.get_parsed_content("initialize")
    written = load_shape_priors(tmp_path / "ckpt" / "shape_prior.json")
    assert written["hand"].n_shapes == 12  # fold 0 (3 limbs) is validation

    (tmp_path / "ckpt" / "model.pt").write_bytes(b"")
    inference = ConfigParser()
    inference.read_config(f"{BUNDLE_CONFIGS}/inference.json")
    inference.update({"weights_file": str(tmp_path / "ckpt" / "model.pt")})
    assert inference.get_parsed_content("shape_priors")["hand"].n_shapes == 12
    decoder = inference.get_parsed_content("postprocessing#transforms#1")
    assert decoder.shape_priors["hand"].n_shapes == 12
    inference.update({"weights_file": str(tmp_path / "elsewhere" / "model.pt")})
    assert inference.get_parsed_content("shape_priors", lazy=False) == {}


def test_fit_shape_priors_reads_named_points(rng):
    shapes = _shapes(rng, 12)
    limbs = [dict(zip(HAND, s.tolist(), strict=True)) for s in shapes]
    limbs[0]["pip_2"] = None
    assert fit_shape_priors({"hand": limbs})["hand"].n_shapes == 11
