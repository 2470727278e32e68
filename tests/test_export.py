"""Exports load with MONAI's own loaders and their targets sit where the annotations are."""

import json
import shutil
import sqlite3

import numpy as np
import pytest
from helpers import inside_or_near
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged
from skimage.transform import resize

from annotation_tools.cli import main
from annotation_tools.export import export_dataset
from annotation_tools.imageio import read_image
from annotation_tools.store import AnnotationStore, Provenance
from annotation_tools.targets import Patch, patch_to_image, scale_points
from annotation_tools.vocabulary import get_joint, joints_for_limb


@pytest.fixture(scope="module")
def exports(cohort20, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    with AnnotationStore.open(cohort20, create=False) as store:
        reports = {
            task: export_dataset(store, task, out / task, folds=5, seed=3, size=128, patch_size=48)
            for task in ("locator", "scorer", "ultrasound")
        }
    return out, reports


def _load_all(datalist, keys):
    items = load_decathlon_datalist(str(datalist), data_list_key="training")
    loader = LoadImaged(keys=keys, reader="NumpyReader", image_only=True)
    return items, [loader(item) for item in items]


def test_every_task_exports_without_problems(exports):
    _, reports = exports
    for task, report in reports.items():
        assert report.problems == [], task
        assert report.n_patients == 20, task
    assert reports["locator"].n_items == 80
    assert reports["ultrasound"].n_items == 20


def test_folds_are_patient_level(exports):
    out, _ = exports
    for datalist in out.rglob("datalist*.json"):
        items = json.loads(datalist.read_text())["training"]
        fold_of = {}
        for item in items:
            assert fold_of.setdefault(item["patient_id"], item["fold"]) == item["fold"]
        assert set(fold_of.values()) <= set(range(5))


def test_locator_squares_sit_on_the_centres(exports, cohort20):
    out, _ = exports
    store = AnnotationStore.open(cohort20, create=False)
    for kind in ("hand", "foot"):
        items, loaded = _load_all(out / "locator" / f"datalist_{kind}.json", ["image", "label"])
        assert len(items) == 40
        for item, data in zip(items, loaded, strict=True):
            image, label = np.asarray(data["image"]), np.asarray(data["label"])
            assert image.shape == (128, 128) and image.min() >= 0 and image.max() <= 1
            joints = joints_for_limb(item["limb"])
            assert label.shape == (len(joints), 128, 128)
            truth = store.centres(item["image_id"])
            h, w = item["original_shape"]
            for joint in joints:
                x, y = truth[joint.id].value["x"], truth[joint.id].value["y"]
                expected = scale_points([[x, y]], (h, w), (128, 128))[0]
                if item["mirrored"]:
                    expected[0] = 127 - expected[0]
                rows, cols = np.nonzero(label[joint.index] == 1)
                if not len(rows):  # a tiny square can fall between pixel centres
                    continue
                clipped = (
                    cols.min() == 0 or cols.max() == 127 or rows.min() == 0 or rows.max() == 127
                )
                if not clipped:
                    assert abs(cols.mean() - expected[0]) <= 1, (item["image"], joint.id)
                    assert abs(rows.mean() - expected[1]) <= 1, (item["image"], joint.id)
    store.close()


def test_right_limbs_are_mirrored_by_default(exports):
    out, _ = exports
    items = json.loads((out / "locator" / "datalist_hand.json").read_text())["training"]
    for item in items:
        assert item["mirrored"] == (item["limb"] == "RH")
        # after mirroring every hand has its thumb on the same side
        assert item["centres"]["mcp_1"][0] > item["centres"]["mcp_5"][0]


def test_scorer_masks_lie_inside_their_polygons(exports, cohort20):
    out, _ = exports
    items, loaded = _load_all(out / "scorer" / "datalist.json", ["image", "mask"])
    store = AnnotationStore.open(cohort20, create=False)
    with_mask = 0
    for item, data in zip(items, loaded, strict=True):
        joint = get_joint(item["joint_id"])
        assert item["narrowing"] == (-1 if not joint.narrowing else item["narrowing"])
        if joint.erosion:
            assert 0 <= item["erosion"] <= joint.max_score("erosion")
        if not item["has_mask"]:
            assert not joint.narrowing
            continue
        with_mask += 1
        mask = np.asarray(data["mask"])
        rows, cols = np.nonzero(mask == 1)
        assert len(rows), item["image"]
        polygon = np.array(store.polygons(item["image_id"])[joint.id].value["vertices"])
        side, size = item["patch_side"], mask.shape[0]
        assert item["mirrored"] == item["limb"].startswith("R")
        geometry = Patch(np.zeros((size, size), np.float32), tuple(item["centre"]), side)
        xy = patch_to_image(geometry, np.stack([cols, rows], 1), item["mirrored"])
        assert inside_or_near(polygon, xy, side / size).mean() > 0.99, item["image"]
    assert with_mask == 20 * (2 * 15 + 2 * 6)
    store.close()


def test_ultrasound_crops_equal_the_roi_contents(exports, cohort20):
    out, _ = exports
    keys = ["greyscale", "doppler", "doppler_mask", "doppler_transformed"]
    items, loaded = _load_all(out / "ultrasound" / "datalist.json", keys)
    for item, data in zip(items, loaded, strict=True):
        assert np.asarray(data["greyscale"]).shape == (224, 224)
        assert np.asarray(data["doppler"]).shape == (3, 224, 224)
        source = read_image(cohort20 / _source(cohort20, item["pair_id"])).pixels
        x0, y0, x1, y1 = (round(v) for v in item["roi"])
        reference = resize(
            source[y0:y1, x0:x1].astype(float),
            (224, 224),
            order=1,
            preserve_range=True,
            anti_aliasing=False,
        )
        crop = np.asarray(data["greyscale"]).astype(float)
        assert np.corrcoef(crop.ravel(), reference.ravel())[0, 1] > 0.98
        mask = np.asarray(data["doppler_mask"]) > 0
        transformed = np.asarray(data["doppler_transformed"])
        assert (transformed[0][mask] == 255).all() and (transformed[1][mask] == 0).all()
        if item["vascularity"] == 0:
            assert mask.sum() == 0
        else:
            assert mask.sum() > 0


def _source(project, pair_id):
    conn = sqlite3.connect(project / "ra_joints.sqlite")
    (path,) = conn.execute(
        "SELECT i.path FROM us_pairs p JOIN images i ON i.id = p.greyscale_image_id WHERE p.id = ?",
        (pair_id,),
    ).fetchone()
    return path


# ------------------------------------------------------------------ provenance and bad input


@pytest.fixture
def small_copy(small_cohort, tmp_path):
    target = tmp_path / "project"
    shutil.copytree(small_cohort, target)
    return target


def test_unconfirmed_model_predictions_are_not_exported(small_copy, tmp_path):
    store = AnnotationStore.open(small_copy, create=False)
    image = store.images(modality="radiograph")[0]
    model = Provenance.model("ra_joint_locator", "0.1", "deadbeef")
    joint_id = f"{image.limb}_{'mcp_2' if image.limb[1] == 'H' else 'mtp_2'}"
    phantom_xy = store.centres(image.id)[joint_id]
    x, y = phantom_xy.value["x"], phantom_xy.value["y"]
    store.set_centre(image.id, joint_id, (x + 7, y + 7), model, confidence=0.5)
    stem = image.path.split("/")[-1].rsplit(".", 1)[0]
    site = get_joint(joint_id).site

    def exported():
        export_dataset(store, "locator", tmp_path / "ex", folds=3, size=128)
        datalist = "hand" if image.limb[1] == "H" else "foot"
        items = json.loads((tmp_path / "ex" / f"datalist_{datalist}.json").read_text())
        return next(i for i in items["training"] if stem in i["image"])["centres"][site]

    default = exported()
    export_dataset(store, "locator", tmp_path / "ex_model", folds=3, size=128, include_model=True)
    # the human correction of the prediction is what a retrain must see
    store.set_centre(image.id, joint_id, (x + 3, y + 3), Provenance.human("alice"))
    corrected = exported()
    assert corrected != default
    scale = 128 / image.height
    assert abs((corrected[1] - default[1]) / scale - 3) < 0.01
    store.close()


def _export(project, task, out, *extra):
    """``ra-joints export`` as a user types it; returns the exit status."""
    return main(["export", "--store", str(project), "--task", task, "--out", str(out), *extra])


def test_bad_annotations_are_reported_and_only_they_skipped(small_copy, tmp_path, capsys):
    store = AnnotationStore.open(small_copy, create=False)
    images = store.images(modality="radiograph")
    human = Provenance.human("alice")
    lh = next(i for i in images if i.limb == "LH")
    store.set_centre(lh.id, "LH_mcp_3", (lh.width + 50.0, 10.0), human)  # outside the image
    store.set_polygon(lh.id, "LH_mcp_2", [(1, 1), (5, 5)], human)  # two points
    store.set_polygon(lh.id, "LH_pip_2", [(0, 0), (10, 10), (10, 0), (0, 10)], human)  # bow tie
    with store.transaction() as conn:  # an id from an older vocabulary, written directly
        conn.execute(
            "INSERT INTO joint_centres (image_id, joint_id, x, y, revision, status, "
            "provenance_id, created_at) VALUES (?, 'LH_knuckle_9', 1, 1, 1, 'present', 1, 'x')",
            (lh.id,),
        )
    pair = store.us_pairs()[0]
    store.set_roi(pair["greyscale_image_id"], (20, 20, 20, 60), human)  # zero area
    store.set_roi(pair["doppler_image_id"], (20, 20, 20, 60), human)
    missing = next(i for i in images if i.limb == "RF")
    store.resolve(missing).unlink()  # image gone from disk
    store.close()

    out = tmp_path / "ex"
    assert (
        _export(
            small_copy,
            "scorer",
            str(out / "scorer"),
            "--folds",
            "3",
            "--quiet",
            "--patch-size",
            "32",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{lh.path} [LH_mcp_3]: centre" in err and "outside" in err
    assert f"{lh.path} [LH_mcp_2]: polygon has 2 point(s)" in err
    assert f"{lh.path} [LH_pip_2]: polygon is self-intersecting" in err
    assert f"{lh.path} [LH_knuckle_9]: not a joint in the vocabulary" in err
    assert f"{missing.path} [image]: file is missing on disk" in err
    items = json.loads((out / "scorer" / "datalist.json").read_text())["training"]
    lh_items = {i["joint_id"] for i in items if i["image_id"] == lh.id}
    assert "LH_mcp_3" not in lh_items  # only the bad item is gone ...
    assert "LH_mcp_2" in lh_items and "LH_mcp_4" in lh_items  # ... the rest is there
    assert not next(i for i in items if i["joint_id"] == "LH_mcp_2" and i["image_id"] == lh.id)[
        "has_mask"
    ]
    assert not any(i["image_id"] == missing.id for i in items)
    # --allow-skips accepts the same problems
    assert (
        _export(
            small_copy,
            "scorer",
            str(out / "again"),
            "--folds",
            "3",
            "--quiet",
            "--allow-skips",
            "--patch-size",
            "32",
        )
        == 0
    )
    capsys.readouterr()
    assert _export(small_copy, "ultrasound", str(out / "us"), "--folds", "3", "--quiet") == 1
    assert "zero area" in capsys.readouterr().err
    us_items = json.loads((out / "us" / "datalist.json").read_text())["training"]
    assert len(us_items) == 5  # 6 pairs, one with a bad ROI


def test_multitask_discs_sit_on_the_centres_and_carry_the_grades(cohort20, tmp_path):
    from annotation_tools.targets import CropBox, joint_type

    shape = (96, 80)
    with AnnotationStore.open(cohort20, create=False) as store:
        report = export_dataset(
            store, "multitask", tmp_path, folds=5, shape=shape, radius=4, ignore_radius=6
        )
        assert report.problems == [] and report.n_items == 80
        items, loaded = _load_all(tmp_path / "datalist.json", ["image", "label"])
        for item, data in zip(items, loaded, strict=True):
            image, label = np.asarray(data["image"]), np.asarray(data["label"])
            assert image.shape == shape and label.shape == (3, *shape)
            box = CropBox(*item["crop_box"])
            h, w = item["original_shape"]
            assert 0 <= box.y0 < box.y1 <= h and 0 <= box.x0 < box.x1 <= w
            centres = store.centres(item["image_id"])
            scores = store.scores(item["image_id"])
            kind = "hand" if item["limb"].endswith("H") else "foot"
            for joint in joints_for_limb(item["limb"]):
                xy = [centres[joint.id].value["x"], centres[joint.id].value["y"]]
                gx, gy = scale_points(box.to_crop([xy]), box.shape, shape)[0]
                if item["mirrored"]:
                    gx = shape[1] - 1 - gx
                col, row = round(gx), round(gy)
                assert label[0, row, col] == joint_type(joint.site, kind), (item["image"], joint.id)
                erosion = scores.get((joint.id, "erosion"))
                if erosion is not None:
                    expected = erosion.value["value"] / (2 if kind == "foot" else 1)
                    assert label[2, row, col] == expected
            assert label[2].max() <= 5 and label[1].max() <= 4


def test_an_annotator_s_grades_are_what_is_exported(small_copy, tmp_path, capsys):
    """Training on a reader (``--annotator rater_a``) exports that reader's grades, not the
    newest revision (the phantom truth); an unknown reader is refused by name."""
    with AnnotationStore.open(small_copy, create=False) as store:
        pairs = store.us_pairs()
        rater = {p["id"]: store.us_score(p["id"], authors=["rater_a"]).value for p in pairs}
        newest = {p["id"]: store.us_score(p["id"]).value for p in pairs}
    assert rater != newest  # the rater disagrees with the truth somewhere in the cohort

    def grades(out, *extra):
        assert _export(small_copy, "ultrasound", out, "--folds", "2", *extra) == 0
        items = json.loads((out / "datalist.json").read_text())["training"]
        return [(i["synovial_hypertrophy"], i["vascularity"]) for i in items]

    by_rater = grades(tmp_path / "a", "--annotator", "rater_a")
    assert by_rater != grades(tmp_path / "newest")
    assert sorted(by_rater) == sorted(
        (v["synovial_hypertrophy"], v["vascularity"]) for v in rater.values()
    )
    capsys.readouterr()
    # the command reports the unknown reader and exits 2 (main turns ValueError into status 2)
    assert _export(small_copy, "ultrasound", tmp_path / "x", "--annotator", "nobody") == 2
    assert "no annotator 'nobody'" in capsys.readouterr().err


def test_merged_exports_load_every_part_s_arrays_and_keep_patients_apart(exports, tmp_path):
    """Two exports (e.g. two phantom styles) as one training set for MONAI's loaders."""
    from annotation_tools.export import merge_exports

    out, _ = exports
    twin = tmp_path / "twin"
    shutil.copytree(out / "locator", twin)  # the same ids: like two cohorts of one seed
    merged = tmp_path / "merged"
    written = merge_exports([out / "locator", twin], merged)
    assert sorted(p.name for p in written) == ["datalist_foot.json", "datalist_hand.json"]
    total = 0
    for datalist in written:
        items, loaded = _load_all(datalist, ["image", "label"])
        single = json.loads((out / "locator" / datalist.name).read_text())["training"]
        assert len(items) == 2 * len(single)
        assert len({i["patient_id"] for i in items}) == 2 * len({i["patient_id"] for i in single})
        for arrays in loaded:
            assert arrays["label"].shape[-2:] == arrays["image"].shape[-2:]
        assert sorted(i["fold"] for i in items) == sorted(2 * [i["fold"] for i in single])
        total += len(items)
    assert total == 160
    with pytest.raises(ValueError, match="differs from the first part"):
        merge_exports([out / "locator", _with(twin, spatial_size=[64, 64])], tmp_path / "bad")
    with pytest.raises(ValueError, match="distinct folder names"):
        merge_exports([out / "locator", out / "locator"], tmp_path / "bad2")


def _with(folder, **changes):
    for datalist in folder.glob("datalist*.json"):
        document = json.loads(datalist.read_text())
        datalist.write_text(json.dumps({**document, **changes}))
    return folder
