"""Patch scorer pieces: networks, heads, loss, decoding, symmetry model, cases, polygons."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from annotation_tools.cases import CaseTable, identify
from annotation_tools.imageio import ImageData
from annotation_tools.scorer import (
    EROSION_CLASSES,
    NARROWING_CLASSES,
    ScoreAgreement,
    ScorerLoss,
    build_scorer,
    decode_scores,
    oversampling_weights,
    score_channels,
    split_output,
)
from annotation_tools.scoring import mask_polygon
from annotation_tools.symmetry import (
    SCORE_KEYS,
    SymmetryModel,
    SymmetryModelError,
    patient_vector,
)
from annotation_tools.targets import Patch, extract_patch, joint_patch, patch_to_image
from annotation_tools.vocabulary import dream_columns, dream_row, get_joint, joints_for_limb


@pytest.mark.parametrize("variant", ["seg_guided", "plain", "hirano"])
@pytest.mark.parametrize("head", ["classes", "regression", "both"])
def test_every_variant_gives_the_packed_output(variant, head):
    net = build_scorer(variant, head).eval()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 1 + score_channels(head), 64, 64)
    scores, mask = split_output(out)
    assert scores.shape == (3, score_channels(head)) and mask.shape == (3, 1, 64, 64)
    # score channels are constant over the patch; only seg_guided has a mask
    assert torch.allclose(out[:, 1:], scores[:, :, None, None].expand_as(out[:, 1:]))
    assert bool(mask.abs().sum() > 0) == (variant == "seg_guided")


def test_unknown_variant_or_head_is_refused():
    with pytest.raises(ValueError, match="variant must be one of"):
        build_scorer("resnet", "classes")
    with pytest.raises(ValueError, match="head must be one of"):
        build_scorer("plain", "ordinal-ish")


def test_class_decoding_gives_expected_grade_and_spread():
    logits = torch.full((2, NARROWING_CLASSES + EROSION_CLASSES), -20.0)
    logits[0, 2] = 20.0  # narrowing 2 with certainty
    logits[0, NARROWING_CLASSES + 4] = 20.0  # erosion 4
    logits[1, [1, 3]] = 20.0  # narrowing split between 1 and 3
    logits[1, NARROWING_CLASSES + 9] = 20.0  # erosion 9 - but this joint stops at 5
    out = decode_scores(logits, "classes", erosion_max=[5, 5])
    assert out.narrowing[0] == pytest.approx(2.0) and out.narrowing_sd[0] == pytest.approx(
        0, abs=1e-6
    )
    assert out.erosion[0] == pytest.approx(4.0)
    assert out.narrowing[1] == pytest.approx(2.0) and out.narrowing_sd[1] == pytest.approx(1.0)
    assert 0 <= out.erosion[1] <= 5  # grades above the joint's maximum are masked
    no_erosion = decode_scores(logits, "classes", erosion_max=[0, 10], carries_narrowing=[1, 0])
    assert np.isnan(no_erosion.erosion[0]) and np.isnan(no_erosion.narrowing[1])


def test_regression_decoding_scales_by_the_joint_maximum():
    logits = torch.tensor([[0.0, 0.0], [50.0, 50.0]])
    out = decode_scores(logits, "regression", erosion_max=[5, 10])
    assert out.narrowing.tolist() == pytest.approx([2.0, 4.0])
    assert out.erosion.tolist() == pytest.approx([2.5, 10.0])
    assert np.isnan(out.narrowing_sd).all()


def test_both_head_scores_by_regression_with_the_class_spread():
    logits = torch.full((1, 2 + NARROWING_CLASSES + EROSION_CLASSES), -20.0)
    logits[0, :2] = 0.0  # regression: narrowing 2.0, erosion half the maximum
    logits[0, 2 + 1] = logits[0, 2 + 3] = 20.0  # classes: narrowing split between 1 and 3
    logits[0, 2 + NARROWING_CLASSES] = 20.0
    out = decode_scores(logits, "both", erosion_max=[10])
    assert out.narrowing[0] == pytest.approx(2.0) and out.erosion[0] == pytest.approx(5.0)
    assert out.narrowing_sd[0] == pytest.approx(1.0)
    assert out.erosion_sd[0] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("head", ["classes", "regression", "both"])
def test_loss_skips_missing_scores_and_ignored_mask_pixels(head):
    pred = torch.zeros(2, 1 + score_channels(head), 8, 8, requires_grad=True)
    target = {
        "narrowing": torch.tensor([-1.0, 2.0]),
        "erosion": torch.tensor([3.0, -1.0]),
        "erosion_max": torch.tensor([5, 5]),
        "mask": torch.full((2, 1, 8, 8), 255.0),
    }
    loss = ScorerLoss(head, mask_weight=1.0)(pred, target)
    loss.backward()
    grad = pred.grad[:, 0]
    assert torch.isfinite(loss) and float(grad.abs().sum()) == 0  # all mask pixels ignored
    target["mask"][0, 0, :4] = 1
    target["mask"][0, 0, 4:] = 0
    assert ScorerLoss(head, mask_weight=1.0)(pred, target) > loss


def test_small_network_learns_the_grade_from_the_gap(rng):
    """Behaviour: a tiny scorer learns narrowing from synthetic patches where it is visible."""
    torch.manual_seed(0)
    n = 160
    grades = rng.integers(0, 5, n)
    images = np.zeros((n, 1, 32, 32), np.float32)
    for i, g in enumerate(grades):
        gap = 10 - 2 * g  # the joint space narrows with the grade
        images[i, 0, : 16 - gap // 2] = 0.8
        images[i, 0, 16 + (gap - gap // 2) :] = 0.8
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    x = torch.from_numpy(images)
    target = {
        "narrowing": torch.tensor(grades, dtype=torch.float32),
        "erosion": torch.full((n,), -1.0),
        "erosion_max": torch.zeros(n),
    }
    net = build_scorer("plain", "classes", encoder_channels=(8, 16), dropout=0.0)
    loss_fn = ScorerLoss("classes", mask_weight=0.0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        decoded = decode_scores(split_output(net(x))[0], "classes", np.zeros(n))
    assert np.mean(np.round(decoded.narrowing) == grades) > 0.9


def test_agreement_metric_counts_rounded_scores():
    metric = ScoreAgreement("regression")
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # narrowing 2, erosion max/2
    pred = torch.cat([torch.zeros(2, 1, 4, 4), logits[:, :, None, None].expand(2, 2, 4, 4)], 1)
    target = {
        "narrowing": torch.tensor([2.0, 3.0]),
        "erosion": torch.tensor([5.0, -1.0]),
        "erosion_max": torch.tensor([10, 5]),
    }
    metric.update((pred, target))
    assert metric.compute() == pytest.approx(2 / 3)  # 2 right of 3 scored


def test_positive_joints_are_oversampled():
    weights = oversampling_weights(
        [{"narrowing": 0, "erosion": 0}, {"narrowing": 2, "erosion": -1}, {"erosion": 1}], 3.0
    )
    assert weights == [1.0, 3.0, 3.0]


# ---------------------------------------------------------------- patches and polygons


def test_right_limb_patches_are_mirrored_and_map_back(rng):
    image = rng.random((300, 200)).astype(np.float32)
    joint = get_joint("RH_mcp_2")
    plain = extract_patch(image, (80.0, 120.0), 40.0, size=32)
    mirrored = joint_patch(image, joint, (80.0, 120.0), size=32, mirror=True)
    assert mirrored.side == pytest.approx(300 * 0.094)
    np.testing.assert_allclose(
        mirrored.image, extract_patch(image, (80.0, 120.0), mirrored.side, size=32).image[:, ::-1]
    )
    uv = np.array([[3.0, 5.0], [20.0, 30.0]])
    xy = patch_to_image(mirrored, uv, mirrored=True)
    back = mirrored.to_patch(xy)
    np.testing.assert_allclose(back[:, 0], 31 - uv[:, 0])
    assert plain.size == 32


def test_mask_polygon_outlines_the_mask_in_image_pixels():
    mask = np.full((64, 64), -5.0)
    mask[28:36, 16:48] = 5.0  # a horizontal band = joint space
    polygon = np.array(mask_polygon(mask, (100.0, 200.0), 64.0, mirrored=False))
    assert len(polygon) >= 4
    assert polygon[:, 0].min() == pytest.approx(100 - 32 + 16, abs=1.0)
    assert polygon[:, 0].max() == pytest.approx(100 - 32 + 48, abs=1.0)
    assert polygon[:, 1].min() == pytest.approx(200 - 32 + 28, abs=1.0)
    mirrored = np.array(mask_polygon(mask[:, ::-1].copy(), (100.0, 200.0), 64.0, mirrored=True))
    assert mirrored[:, 0].min() == pytest.approx(polygon[:, 0].min(), abs=1.0)
    assert mask_polygon(np.full((64, 64), -1.0), (0, 0), 64.0, False) is None


# ---------------------------------------------------------------- symmetry


def _symmetric_patients(rng, n):
    """Patients whose joints share a severity: the other joints predict a joint's score."""
    severity = rng.uniform(0, 1, (n, 1))
    tops = np.array([get_joint(j).max_score(t) for j, t in SCORE_KEYS], float)
    truth = np.clip(np.round(severity * tops + rng.normal(0, 0.3, (n, len(tops)))), 0, tops)
    noisy = np.clip(truth + rng.normal(0, 0.9, truth.shape), 0, tops)
    return noisy, truth


def test_symmetry_model_uses_the_other_joints(rng):
    x, y = _symmetric_patients(rng, 80)
    model = SymmetryModel(n_estimators=30, max_depth=4).fit(x[:60], y[:60])
    pred, spread = model.predict(x[60:])
    assert pred.shape == (20, 86) and (spread >= 0).all()
    assert np.sqrt(np.mean((pred - y[60:]) ** 2)) < np.sqrt(np.mean((x[60:] - y[60:]) ** 2))
    tops = np.array([get_joint(j).max_score(t) for j, t in SCORE_KEYS], float)
    assert (pred >= 0).all() and (pred <= tops).all()
    gap = x[60:61].copy()
    gap[0, 5] = np.nan  # a joint the locator missed gets no score
    assert np.isnan(model.predict(gap)[0][0, 5])


def test_symmetry_matches_scikit_learn_and_shap_adds_up(rng, tmp_path):
    from sklearn.ensemble import ExtraTreesRegressor

    x, y = _symmetric_patients(rng, 40)
    model = SymmetryModel(n_estimators=20, max_depth=4, target="score").fit(x, y)
    reference = ExtraTreesRegressor(20, max_depth=4, random_state=0).fit(x, y[:, 0])
    np.testing.assert_allclose(model.predict(x[:5])[0][:, 0], reference.predict(x[:5]))
    values, base = model.explain(x[:1])
    assert values.shape == (86, 86)
    np.testing.assert_allclose(base + values.sum(1), model.predict(x[:1])[0][0], atol=1e-6)
    loaded = SymmetryModel.load(model.save(tmp_path / "sym.skops"))
    np.testing.assert_allclose(loaded.predict(x)[0], model.predict(x)[0])


def test_symmetry_file_with_foreign_types_is_refused(tmp_path, rng):
    import skops.io as sio
    from sklearn.linear_model import LinearRegression

    x, y = _symmetric_patients(rng, 10)
    path = SymmetryModel(5, 2).fit(x, y).save(tmp_path / "ok.skops")
    assert SymmetryModel.load(path).fitted_keys
    evil = tmp_path / "evil.skops"
    sio.dump({"format": "ra_joints.symmetry/1", "model": LinearRegression()}, evil)
    with pytest.raises(SymmetryModelError, match="allow-list"):
        SymmetryModel.load(evil)
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(SymmetryModelError, match="not a skops file"):
        SymmetryModel.load(tmp_path / "junk.skops")
    with zipfile.ZipFile(path) as zf:
        assert "schema.json" in zf.namelist()  # a skops archive, no pickle stream
        assert not any(n.endswith(".pkl") for n in zf.namelist())


def test_patient_vector_and_dream_rows_agree():
    scores = {key: 1.0 for key in SCORE_KEYS}
    assert np.isfinite(patient_vector(scores)).all()
    row = dream_row("P1", scores)
    assert row["Overall_Tol"] == 86.0
    del scores[SCORE_KEYS[0]]
    partial = dream_row("P1", {**scores, ("LH_mcp_2", "erosion"): float("nan")})
    assert "Overall_Tol" not in partial  # a missing score means no total, not a zero
    assert set(partial) <= set(dream_columns())


# ---------------------------------------------------------------- cases


def _image(patient_id=None, laterality=None, body_part=None):
    return ImageData(
        pixels=np.zeros((8, 8), np.uint16),
        path=Path("x"),
        format="png",
        patient_id=patient_id,
        laterality=laterality,
        body_part=body_part,
    )


def test_identify_patient_and_limb_from_table_tags_and_name(tmp_path):
    assert identify("in/P007_RH.png", _image()).patient_id == "P007"
    case = identify("in/P007-lf.png", _image())
    assert (case.patient_id, case.limb, case.limb_source) == ("P007", "LF", "filename")
    tags = identify("in/scan1.dcm", _image("PAT-9", "R", "FOOT"))
    assert (tags.patient_id, tags.limb, tags.patient_source) == ("PAT-9", "RF", "dicom")
    unknown = identify("in/scan2.png", _image())
    assert (unknown.patient_id, unknown.limb) == ("scan2", None)
    table_file = tmp_path / "cases.csv"
    table_file.write_text("file,patient_id,limb\nscan2.png,P1,LH\n")
    table = CaseTable.read(table_file, tmp_path)
    case = identify(tmp_path / "scan2.png", _image(), table)
    assert (case.patient_id, case.limb, case.patient_source) == ("P1", "LH", "table")
    table_file.write_text("file,patient_id,limb\nscan2.png,P1,elbow\n")
    with pytest.raises(ValueError, match="line 2"):
        CaseTable.read(table_file, tmp_path)


def test_every_limb_has_patchable_joints():
    for limb in ("LH", "RH", "LF", "RF"):
        assert all(j.narrowing or j.erosion for j in joints_for_limb(limb))
    assert json.dumps(SCORE_KEYS)  # serialisable order for the skops file
    assert isinstance(Patch(np.zeros((2, 2), np.float32), (0, 0), 1.0).size, int)
