import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from annotation_tools import store as store_module
from annotation_tools.imageio import write_png
from annotation_tools.store import (
    AnnotationStore,
    Provenance,
    StoreError,
    StoreLockedError,
    StoreVersionError,
)
from annotation_tools.vocabulary import joints_for_limb

HUMAN = Provenance.human("alice")
MODEL = Provenance.model("ra_joint_locator", "0.1.0", "abc123")


def _image(folder, name, rng):
    return write_png(folder / name, (rng.random((64, 48)) * 255).astype(np.uint8))


@pytest.fixture
def project(tmp_path, rng):
    store = AnnotationStore.open(tmp_path)
    ids = {}
    for limb in ("LH", "RH", "LF", "RF"):
        path = _image(tmp_path, f"P1_{limb}.png", rng)
        ids[limb] = store.add_image(path, patient_id="P1", limb=limb, width=48, height=64)
    yield store, ids
    store.close()


def test_store_file_and_wal(tmp_path):
    with AnnotationStore.open(tmp_path) as store:
        assert store.path == tmp_path / "ra_joints.sqlite"
        assert store.schema_version == store_module.SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "ra_joints.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_add_image_is_idempotent_and_refuses_changed_content(tmp_path, rng):
    store = AnnotationStore.open(tmp_path)
    path = _image(tmp_path, "a.png", rng)
    first = store.add_image(path, patient_id="P1", limb="LH")
    assert store.add_image(path, patient_id="P1", limb="LH") == first
    assert store.image(first).path == "a.png"  # stored relative to the project
    _image(tmp_path, "a.png", rng)  # same name, new pixels
    with pytest.raises(StoreError, match="different content"):
        store.add_image(path, patient_id="P1", limb="LH")


def test_one_radiograph_per_patient_limb(project, tmp_path, rng):
    store, _ = project
    with pytest.raises(StoreError, match="already has a LH radiograph"):
        store.add_image(_image(tmp_path, "dup.png", rng), patient_id="P1", limb="LH")
    # a second visit is fine
    store.add_image(_image(tmp_path, "v2.png", rng), patient_id="P1", limb="LH", visit="m12")
    with pytest.raises(ValueError, match="needs a limb"):
        store.add_image(_image(tmp_path, "x.png", rng), patient_id="P1")


def test_corrections_add_revisions_and_keep_the_model_prediction(project):
    store, ids = project
    image = ids["LH"]
    assert store.set_centre(image, "LH_mcp_2", (10.0, 20.0), MODEL, confidence=0.7) == 1
    assert store.set_centre(image, "LH_mcp_2", (12.5, 21.0), HUMAN) == 2
    latest = store.centres(image)["LH_mcp_2"]
    assert (latest.value["x"], latest.value["y"], latest.source) == (12.5, 21.0, "human")
    history = store.centre_history(image, "LH_mcp_2")
    assert [(h.revision, h.source) for h in history] == [(1, "model"), (2, "human")]
    assert history[0].value["x"] == 10.0 and history[0].weights_hash == "abc123"
    # model predictions can be left out (what training exports need)
    store.set_centre(image, "LH_mcp_3", (30.0, 20.0), MODEL, confidence=0.4)
    assert set(store.centres(image, sources=["human", "phantom"])) == {"LH_mcp_2"}
    assert set(store.centres(image)) == {"LH_mcp_2", "LH_mcp_3"}


def test_confirm_copies_the_prediction_as_a_human_revision(project):
    store, ids = project
    image = ids["RH"]
    store.set_centre(image, "RH_pip_3", (5.0, 6.0), MODEL, confidence=0.9)
    model_row = store.centre_history(image, "RH_pip_3")[0]
    store.confirm("centre", image, {"joint_id": "RH_pip_3"}, "bob")
    latest = store.centres(image)["RH_pip_3"]
    assert latest.source == "human" and latest.author == "bob"
    assert latest.confirms == model_row.id
    assert (latest.value["x"], latest.value["y"]) == (5.0, 6.0)


def test_delete_and_not_visible(project):
    store, ids = project
    image = ids["LF"]
    store.set_centre(image, "LF_mtp_1", (1.0, 2.0), HUMAN)
    store.set_centre(image, "LF_mtp_2", None, HUMAN, status="not_visible")
    store.delete_centre(image, "LF_mtp_1", HUMAN)
    centres = store.centres(image)
    assert "LF_mtp_1" not in centres
    assert centres["LF_mtp_2"].status == "not_visible"
    assert [h.status for h in store.centre_history(image, "LF_mtp_1")] == ["present", "deleted"]


def test_wrong_limb_unknown_joint_and_bad_values(project):
    store, ids = project
    with pytest.raises(ValueError, match="belongs to LF but .* is a LH radiograph"):
        store.set_centre(ids["LH"], "LF_mtp_1", (1, 1), HUMAN)
    with pytest.raises(KeyError, match="unknown joint id"):
        store.set_centre(ids["LH"], "LH_knee", (1, 1), HUMAN)
    with pytest.raises(ValueError, match="finite"):
        store.set_centre(ids["LH"], "LH_mcp_1", (float("nan"), 1), HUMAN)
    with pytest.raises(ValueError, match="outside 0-4"):
        store.set_score(ids["LH"], "LH_mcp_1", "narrowing", 5, HUMAN)
    with pytest.raises(ValueError, match="not a narrowing joint"):
        store.set_polygon(ids["LH"], "LH_ip", [(0, 0), (1, 0), (1, 1)], HUMAN)
    with pytest.raises(ValueError, match="source must be one of"):
        Provenance("robot", "x")
    # nothing of the refused writes reached the store
    assert store.summary()["joint_centre_revisions"] == 0


def test_polygons_scores_roi_and_us_scores(project, tmp_path, rng):
    store, ids = project
    store.set_polygon(ids["LH"], "LH_mcp_2", [(0, 0), (4, 0), (4, 2), (0, 2)], HUMAN)
    poly = store.polygons(ids["LH"])["LH_mcp_2"]
    assert poly.value["vertices"] == [[0, 0], [4, 0], [4, 2], [0, 2]]
    store.set_score(ids["RF"], "RF_mtp_5", "erosion", 10, HUMAN, uncertainty=0.3)
    score = store.scores(ids["RF"])[("RF_mtp_5", "erosion")]
    assert score.value["value"] == 10 and score.value["uncertainty"] == 0.3
    gs = store.add_image(_image(tmp_path, "gs.png", rng), patient_id="P1", modality="us_greyscale")
    dp = store.add_image(_image(tmp_path, "dp.png", rng), patient_id="P1", modality="us_doppler")
    pair = store.add_us_pair(gs, dp, site="R_mcp_2")
    store.set_roi(gs, (30, 10, 5, 40), HUMAN)  # corners in any order
    assert store.roi(gs).value == {"x0": 5, "y0": 10, "x1": 30, "y1": 40}
    store.set_us_score(pair, 2, 3, HUMAN)
    assert store.us_score(pair).value["combined"] == 3
    with pytest.raises(ValueError, match="not a valid EULAR-OMERACT"):
        store.set_us_score(pair, 0, 1, HUMAN)
    with pytest.raises(ValueError, match="ultrasound"):
        store.set_roi(ids["LH"], (0, 0, 1, 1), HUMAN)
    with pytest.raises(ValueError, match="us_greyscale and a us_doppler"):
        store.add_us_pair(dp, gs, site="x")


def test_image_json_round_trip(project, tmp_path):
    store, ids = project
    store.set_centre(ids["LH"], "LH_mcp_2", (10.25, 20.5), MODEL, confidence=0.8)
    store.set_centre(ids["LH"], "LH_pip_2", None, HUMAN, status="not_visible")
    store.set_polygon(ids["LH"], "LH_mcp_2", [(0, 0), (4, 0), (4, 2)], HUMAN)
    store.set_score(ids["LH"], "LH_mcp_2", "erosion", 3, HUMAN)
    data = json.loads(json.dumps(store.export_image_json(ids["LH"])))
    copy = AnnotationStore.open(tmp_path / "other.sqlite")
    data["image"]["path"] = str(tmp_path / data["image"]["path"])
    new_id = copy.import_image_json(data)
    centres = copy.centres(new_id)
    assert centres["LH_mcp_2"].value["x"] == 10.25 and centres["LH_mcp_2"].source == "model"
    assert centres["LH_pip_2"].status == "not_visible"
    assert copy.polygons(new_id)["LH_mcp_2"].value["vertices"][1] == [4, 0]
    assert copy.scores(new_id)[("LH_mcp_2", "erosion")].value["value"] == 3
    with pytest.raises(StoreError, match="not a napari-ra-joints"):
        copy.import_image_json({"format": "other"})


def test_image_json_reimport_adds_nothing_and_keeps_a_models_grade_set(project, tmp_path):
    store, ids = project
    store.set_score(ids["LH"], "LH_mcp_2", "erosion", 2, MODEL, grade_set=(1, 3), coverage=0.9)
    store.set_centre(ids["LH"], "LH_mcp_2", (10.0, 20.0), HUMAN)
    data = json.loads(json.dumps(store.export_image_json(ids["LH"])))
    data["image"]["path"] = str(tmp_path / data["image"]["path"])
    copy = AnnotationStore.open(tmp_path / "other.sqlite")
    new_id = copy.import_image_json(data)
    score = copy.scores(new_id)[("LH_mcp_2", "erosion")]
    assert score.grade_sets == {"erosion": (1, 3)} and score.value["coverage"] == 0.9
    original = store.scores(ids["LH"])[("LH_mcp_2", "erosion")]
    assert (score.created_at, score.weights_hash) == (original.created_at, "abc123")
    before = copy.summary()
    assert copy.import_image_json(data) == new_id
    assert copy.summary() == before
    assert len(copy.history("score", new_id)) == len(copy.history("centre", new_id)) == 1
    # the same grade restated later is a new revision, not the imported one again
    data["joint_scores"][0]["created_at"] = "2030-01-01T00:00:00+00:00"
    copy.import_image_json(data)
    assert len(copy.history("score", new_id)) == 2


US_MODEL = Provenance.model("ra_us_rating", "0.1.0", "f00d")
US_SETS = {"synovial_hypertrophy": (1, 2), "vascularity": (0, 1), "combined": (1, 2)}


def _pair_project(folder, rng, *, files=None):
    """A grey-scale/Doppler pair in a project at ``folder`` (``files``: copy these images)."""
    folder.mkdir(parents=True, exist_ok=True)
    store = AnnotationStore.open(folder)
    ids = []
    for name, modality in (("P1_gs.png", "us_greyscale"), ("P1_dp.png", "us_doppler")):
        if files is None:
            path = _image(folder, name, rng)
        else:
            path = folder / name
            path.write_bytes((files / name).read_bytes())
        ids.append(store.add_image(path, patient_id="P1", modality=modality, width=48, height=64))
    return store, ids[0], ids[1], store.add_us_pair(*ids, site="R_mcp_2")


def _without_revision_numbers(document):
    """A document with each entry's revision number dropped (another project numbers its own)."""
    if isinstance(document, dict):
        return {k: _without_revision_numbers(v) for k, v in document.items() if k != "revision"}
    if isinstance(document, list):
        return [_without_revision_numbers(v) for v in document]
    return document


def test_ultrasound_image_json_carries_the_pair_and_round_trips_into_another_project(tmp_path, rng):
    source, gs, dp, pair = _pair_project(tmp_path / "a", rng)
    roi_model = Provenance.model("ra_us_roi", "0.1.0", "beef")
    source.set_roi(gs, (5, 10, 30, 40), roi_model)
    source.set_roi(gs, (6, 11, 31, 41), HUMAN)  # the person's correction is the box
    source.set_roi(dp, (5, 10, 30, 40), roi_model)
    source.set_us_score(pair, 2, 1, US_MODEL, uncertainty=0.2, grade_sets=US_SETS, coverage=0.9)
    data = json.loads(json.dumps(source.export_image_json(dp)))  # from either image of the pair
    assert data["version"] == store_module.IMAGE_JSON_VERSION == 2
    assert data["image"]["path"] == "P1_dp.png" and data["us_pair"]["site"] == "R_mcp_2"
    assert data["roi"] == data["us_pair"]["doppler"]["roi"]
    grey_box = data["us_pair"]["greyscale"]["roi"]
    assert (grey_box["x0"], grey_box["revision"], grey_box["provenance"]["author"]) == (
        6,
        2,
        "alice",
    )
    grades = data["us_pair"]["us_score"]
    assert (grades["combined"], grades["coverage"], grades["vascularity_set_high"]) == (2, 0.9, 1)
    assert grades["provenance"] == {
        "source": "model",
        "author": "ra_us_rating",
        "version": "0.1.0",
        "weights_hash": "f00d",
    }

    (tmp_path / "b").mkdir()
    for name in ("P1_gs.png", "P1_dp.png"):  # the same files in another project
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    copy = AnnotationStore.open(tmp_path / "b")  # a fresh store: the import registers the pair
    new_dp = copy.import_image_json(data)
    (copied_pair,) = copy.us_pairs()
    assert copy.image(new_dp).path == "P1_dp.png" and copied_pair["site"] == "R_mcp_2"
    again = json.loads(json.dumps(copy.export_image_json(new_dp)))
    assert _without_revision_numbers(again) == _without_revision_numbers(data)
    imported = copy.us_score(copied_pair["id"])
    assert imported.grade_sets == US_SETS and imported.created_at == grades["created_at"]
    # the grey-scale image's document is the same pair, so importing it too adds nothing
    before = copy.summary()
    copy.import_image_json(json.loads(json.dumps(source.export_image_json(gs))))
    document = tmp_path / "dp.json"
    document.write_text(json.dumps(data))
    assert copy.import_image_json(document) == new_dp
    assert copy.summary() == before
    assert len(copy.history("roi", new_dp)) == len(copy.history("us_score", copied_pair["id"])) == 1


def test_an_imported_model_grade_stays_a_proposal_under_a_persons_grade(tmp_path, rng):
    source, gs, _, pair = _pair_project(tmp_path / "a", rng)
    source.set_us_score(pair, 2, 1, US_MODEL, grade_sets=US_SETS, coverage=0.9)
    source.set_roi(gs, (5, 10, 30, 40), US_MODEL)
    data = json.loads(json.dumps(source.export_image_json(gs)))
    target, t_gs, _, t_pair = _pair_project(tmp_path / "b", rng, files=tmp_path / "a")
    target.set_us_score(t_pair, 1, 0, Provenance.human("bob"))
    target.set_roi(t_gs, (0, 0, 20, 20), Provenance.human("bob"))
    target.import_image_json(data)
    grades = target.resolved("us_score", t_pair)[None]
    assert grades.current.author == "bob" and grades.current.value["combined"] == 1
    assert grades.pending.author == "ra_us_rating" and grades.pending.grade_sets == US_SETS
    assert target.us_score(t_pair).author == "bob"  # what readers and exports see
    assert target.roi(t_gs).author == "bob" and target.roi(t_gs).value["x1"] == 20
    assert [r.author for r in target.history("us_score", t_pair)] == ["bob", "ra_us_rating"]


def test_cli_image_json_writes_an_ultrasound_pair_and_reads_it_into_another_project(
    tmp_path, rng, capsys
):
    from annotation_tools.cli import main

    source, gs, _, pair = _pair_project(tmp_path / "a", rng)
    source.set_roi(gs, (5, 10, 30, 40), HUMAN)
    source.set_us_score(pair, 3, 2, US_MODEL, grade_sets=US_SETS, coverage=0.8)
    source.close()
    out = tmp_path / "P1_gs.json"
    args = ["image-json", "--project", str(tmp_path / "a")]
    assert main([*args, "--image", str(tmp_path / "a" / "P1_gs.png"), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["version"] == 2 and written["roi"]["x1"] == 30
    assert written["us_pair"]["us_score"]["synovial_hypertrophy_set_low"] == 1
    assert written["us_pair"]["doppler"]["image"]["path"] == "P1_dp.png"
    target, t_gs, _, t_pair = _pair_project(tmp_path / "b", rng, files=tmp_path / "a")
    target.close()
    into = ["image-json", "--project", str(tmp_path / "b"), "--import", str(out)]
    assert main(into) == 0 and main(into) == 0  # the second run adds nothing
    assert "imported" in capsys.readouterr().out
    with AnnotationStore.open(tmp_path / "b", create=False) as copy:
        assert [r.author for r in copy.history("us_score", t_pair)] == ["ra_us_rating"]
        assert copy.us_score(t_pair).grade_sets == US_SETS
        assert copy.roi(t_gs).value == {"x0": 5, "y0": 10, "x1": 30, "y1": 40}
    radiograph_doc = {**written, "image": {**written["image"], "modality": "radiograph"}}
    out.write_text(json.dumps(radiograph_doc))
    assert main(into) == 2
    assert str(out) in capsys.readouterr().err


def test_image_json_of_the_wrong_kind_is_refused_and_old_documents_still_import(tmp_path, rng):
    source, gs, _, pair = _pair_project(tmp_path / "a", rng)
    source.set_roi(gs, (5, 10, 30, 40), HUMAN)
    source.set_us_score(pair, 1, 1, HUMAN)
    data = json.loads(json.dumps(source.export_image_json(gs)))
    target, t_gs, _, t_pair = _pair_project(tmp_path / "b", rng, files=tmp_path / "a")

    def refused(change, match):
        document = json.loads(json.dumps(data))
        change(document)
        with pytest.raises(StoreError, match=match):
            target.import_image_json(document)

    refused(lambda d: d.update(version=3), "version 3, but this napari-ra-joints reads up to 2")
    refused(lambda d: d.update(version="2"), "no valid version")
    refused(lambda d: d.update(joint_centres=[{"joint_id": "RH_mcp_2"}]), "radiograph entries")
    refused(lambda d: d["image"].update(modality="radiograph"), "radiograph .* ultrasound")
    refused(lambda d: d["us_pair"]["doppler"]["image"].update(modality="us_greyscale"), "doppler")
    refused(lambda d: d["image"].update(path="elsewhere.png"), "does not contain its own image")
    refused(lambda d: d.pop("image"), "has no image")
    refused(lambda d: d["us_pair"].update(site="L_mcp_3"), "site 'L_mcp_3', this store at")
    with pytest.raises(StoreError, match="not a napari-ra-joints image annotation file"):
        target.import_image_json([data])
    corrupt = tmp_path / "cut.json"
    corrupt.write_text(json.dumps(data)[:40])
    with pytest.raises(StoreError, match=f"cannot read the image annotation file {corrupt}"):
        target.import_image_json(corrupt)
    other_pixels = tmp_path / "c"
    other, *_ = _pair_project(other_pixels, rng)  # files of the same names, other pixels
    with pytest.raises(StoreError, match="is not the image .* annotates: its sha256"):
        other.import_image_json(data)
    # nothing of a refused document was kept
    assert target.summary()["roi_revisions"] == other.summary()["roi_revisions"] == 0
    # a version 1 document (before pairs): its own box imports, as it always did
    old = {k: v for k, v in data.items() if k != "us_pair"} | {"version": 1}
    target.import_image_json(old)
    assert target.roi(t_gs).value["x1"] == 30 and target.us_score(t_pair) is None


def test_dream_csv_round_trip(project, tmp_path, rng):
    store, ids = project
    expected = {}
    for limb, image in ids.items():
        for joint in joints_for_limb(limb):
            for score_type in joint.score_types:
                value = int(rng.integers(0, joint.max_score(score_type) + 1))
                store.set_score(image, joint.id, score_type, value, HUMAN)
                expected[(joint.id, score_type.value)] = value
    path = store.export_dream_csv(tmp_path / "scores.csv")
    header, row = path.read_text().splitlines()
    assert header.startswith(
        "Patient_ID,Overall_Tol,Overall_erosion,Overall_narrowing,LH_mcp_E__ip"
    )
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert int(values["Overall_Tol"]) == sum(expected.values())
    # into a fresh project holding the same images
    other = AnnotationStore.open(tmp_path / "copy")
    for limb in ids:
        other.add_image(tmp_path / f"P1_{limb}.png", patient_id="P1", limb=limb)
    assert other.import_dream_csv(path, HUMAN) == []
    got = {}
    for image in other.images():
        got.update({k: v.value["value"] for k, v in other.scores(image.id).items()})
    assert got == expected


def test_dream_csv_import_reports_problems_and_imports_the_rest(project, tmp_path):
    store, _ = project
    path = tmp_path / "in.csv"
    path.write_text("Patient_ID,LH_mcp_E__2,LH_mcp_J__2,RF_mtp_E__1,Bogus\nP1,3,7,2,1\nP9,1,,,\n")
    problems = store.import_dream_csv(path, HUMAN)
    text = "\n".join(problems)
    assert "unknown column 'Bogus'" in text
    assert "in.csv:2 LH_mcp_J__2" in text and "outside 0-4" in text
    assert "patient 'P9' has no LH radiograph" in text
    lh = store.images(patient_id="P1", limb="LH")[0]
    assert store.scores(lh.id)[("LH_mcp_2", "erosion")].value["value"] == 3


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_from_a_newer_schema_is_refused_untouched(tmp_path):
    with AnnotationStore.open(tmp_path) as store:
        store._conn.execute("INSERT INTO schema_version VALUES (99, 'future')")
    before = _sha(tmp_path / "ra_joints.sqlite")
    with pytest.raises(StoreVersionError, match="schema version 99.*upgrade napari-ra-joints"):
        AnnotationStore.open(tmp_path)
    assert _sha(tmp_path / "ra_joints.sqlite") == before


def test_migration_keeps_data_and_a_backup(tmp_path, monkeypatch):
    with AnnotationStore.open(tmp_path) as store:
        store._conn.execute("INSERT INTO provenance (source, author) VALUES ('human', 'carol')")
    version = store_module.SCHEMA_VERSION
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", version + 1)
    monkeypatch.setitem(
        store_module.MIGRATIONS, version, "ALTER TABLE images ADD COLUMN note TEXT DEFAULT ''"
    )
    with AnnotationStore.open(tmp_path) as store:
        assert store.schema_version == version + 1
        cols = [r[1] for r in store._conn.execute("PRAGMA table_info(images)")]
        assert "note" in cols
        authors = [r[0] for r in store._conn.execute("SELECT author FROM provenance")]
        assert authors == ["carol"]
    assert (tmp_path / f"ra_joints.sqlite.v{version}.bak").exists()


def test_not_a_database(tmp_path):
    bad = tmp_path / "ra_joints.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable annotation store"):
        AnnotationStore.open(tmp_path)


def test_locked_store_gives_a_clear_error(project, tmp_path):
    _store, ids = project
    other = sqlite3.connect(tmp_path / "ra_joints.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        quick = AnnotationStore(tmp_path, timeout=0.2)
        with pytest.raises(StoreLockedError, match="locked by another process"):
            quick.set_centre(ids["LH"], "LH_mcp_1", (1, 1), HUMAN)
        # reading still works while the other process holds the write lock
        assert quick.centres(ids["LH"]) == {}
    finally:
        other.execute("ROLLBACK")


def test_transaction_rolls_back_everything_on_error(project):
    store, ids = project
    with pytest.raises(RuntimeError), store.transaction():
        store.set_centre(ids["LH"], "LH_mcp_1", (1, 1), HUMAN)
        raise RuntimeError("crash")
    assert store.centres(ids["LH"]) == {}


def test_threads_write_distinct_revisions(project):
    store, ids = project

    def work(k):
        for i in range(20):
            store.set_centre(ids["LH"], "LH_mcp_4", (k, i), Provenance.human(f"t{k}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    revisions = [h.revision for h in store.centre_history(ids["LH"], "LH_mcp_4")]
    assert revisions == list(range(1, 81))


_WRITER = textwrap.dedent(
    """
    import sys, time
    from annotation_tools.store import AnnotationStore, Provenance
    store = AnnotationStore.open(sys.argv[1])
    image = int(sys.argv[2])
    human = Provenance.human("killed")
    joints = [f"LH_{s}" for s in ("mcp_1", "mcp_2", "mcp_3", "mcp_4", "mcp_5")]
    for i in range(50):
        store.set_centre(image, joints[i % 5], (float(i), 1.0), human)
    print("committed", flush=True)
    with store.transaction():
        for i in range(1000):
            store.set_centre(image, "LH_pip_2", (float(i), 2.0), human)
            if i == 500:
                print("writing", flush=True)
                time.sleep(60)
    """
)


def test_killed_writer_loses_only_its_open_transaction(project, tmp_path):
    store, ids = project
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(ids["LH"])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "committed"
        assert proc.stdout.readline().strip() == "writing"
        # a concurrent reader sees the committed rows while the writer is mid-transaction
        assert len(store.centre_history(ids["LH"], "LH_mcp_1")) == 10
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    reopened = AnnotationStore.open(tmp_path)
    assert reopened.integrity_check() == "ok"
    assert reopened.summary()["joint_centre_revisions"] == 50
    assert "LH_pip_2" not in reopened.centres(ids["LH"])
    assert reopened.centres(ids["LH"])["LH_mcp_5"].value["x"] == 49.0
    # and the store takes new writes
    reopened.set_centre(ids["LH"], "LH_pip_2", (3.0, 3.0), HUMAN)
    assert reopened.centres(ids["LH"])["LH_pip_2"].revision == 1


def test_a_version_1_store_gains_grade_sets_and_keeps_its_grades(tmp_path, rng):
    """Stores written before grade sets (schema 1) open, are backed up, keep every grade, and
    take model grades with their conformal sets afterwards."""
    with AnnotationStore.open(tmp_path) as store:
        image = store.add_image(
            _image(tmp_path, "P1_LH.png", rng), patient_id="P1", limb="LH", width=48, height=64
        )
        store.set_score(image, "LH_mcp_2", "narrowing", 3, Provenance.human("ann"))
    with sqlite3.connect(tmp_path / "ra_joints.sqlite") as conn:  # back to what v1 wrote
        for column in ("set_low", "set_high", "coverage"):
            conn.execute(f"ALTER TABLE joint_scores DROP COLUMN {column}")
        for column in store_module.US_SET_COLUMNS:  # and what v3 added
            conn.execute(f"ALTER TABLE us_scores DROP COLUMN {column}")
        conn.execute("DELETE FROM schema_version WHERE version > 1")
    with AnnotationStore.open(tmp_path) as store:
        assert store.schema_version == store_module.SCHEMA_VERSION >= 2
        assert store.scores(image)[("LH_mcp_2", "narrowing")].value["value"] == 3
        model = Provenance.model("ra_joint_scorer", "0.2", "abc")
        store.set_score(image, "LH_mcp_3", "narrowing", 1, model, grade_set=(0, 2), coverage=0.9)
        rev = store.scores(image)[("LH_mcp_3", "narrowing")]
        assert (rev.value["set_low"], rev.value["set_high"], rev.value["coverage"]) == (0, 2, 0.9)
        key = {"joint_id": "LH_mcp_3", "score_type": "narrowing"}
        store.confirm("score", image, key, "ann", revision_id=rev.id)
        accepted = store.scores(image)[("LH_mcp_3", "narrowing")]
        assert accepted.source == "human" and accepted.value["value"] == 1
        assert accepted.value["set_low"] is None  # the person decided: no model set on it
    assert (tmp_path / "ra_joints.sqlite.v1.bak").exists()


def _us_pair(store, tmp_path, rng, name="P1"):
    gs = store.add_image(
        _image(tmp_path, f"{name}_gs.png", rng), patient_id=name, modality="us_greyscale"
    )
    dp = store.add_image(
        _image(tmp_path, f"{name}_dp.png", rng), patient_id=name, modality="us_doppler"
    )
    return store.add_us_pair(gs, dp, site="R_mcp_2")


US_SETS = {"synovial_hypertrophy": (1, 2), "vascularity": (0, 1), "combined": (1, 2)}


def test_a_version_2_store_migrates_to_3_keeping_every_row_and_a_backup(tmp_path, rng):
    """Stores written before ultrasound grade sets (schema 2) open, are backed up first, keep
    every row (their grades have no set), and take model grades with sets afterwards."""
    tables = ("provenance", "images", "us_pairs", "joint_scores", "us_scores")
    with AnnotationStore.open(tmp_path) as store:
        image = store.add_image(
            _image(tmp_path, "P1_LH.png", rng), patient_id="P1", limb="LH", width=48, height=64
        )
        store.set_score(image, "LH_mcp_2", "narrowing", 2, MODEL, grade_set=(1, 3), coverage=0.9)
        pair = _us_pair(store, tmp_path, rng)
        store.set_us_score(pair, 2, 1, MODEL, uncertainty=0.25)
        store.set_us_score(pair, 3, 2, HUMAN)
    with sqlite3.connect(tmp_path / "ra_joints.sqlite") as conn:  # back to what v2 wrote
        for column in store_module.US_SET_COLUMNS:
            conn.execute(f"ALTER TABLE us_scores DROP COLUMN {column}")
        conn.execute("DELETE FROM schema_version WHERE version > 2")
        before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in tables}
    conn.close()
    with AnnotationStore.open(tmp_path) as store:
        assert store.schema_version == store_module.SCHEMA_VERSION == 3
        for table in tables:
            rows = store._conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            assert [tuple(r)[: len(before[table][0])] for r in rows] == before[table], table
        history = store.history("us_score", pair)
        assert [r.source for r in history] == ["model", "human"]
        assert all(r.grade_sets == {} and r.value["coverage"] is None for r in history)
        assert store.scores(image)[("LH_mcp_2", "narrowing")].grade_sets == {"narrowing": (1, 3)}
        store.set_us_score(pair, 1, 1, MODEL, grade_sets=US_SETS, coverage=0.9)
        assert store.us_score(pair, sources=["model"]).grade_sets == US_SETS
    backup = tmp_path / "ra_joints.sqlite.v2.bak"
    assert backup.exists()
    with sqlite3.connect(backup) as conn:  # the copy is the v2 store as it was
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM us_scores").fetchone()[0] == 2
    conn.close()


def test_model_us_grade_sets_round_trip_and_a_person_correction_has_none(project, tmp_path, rng):
    store, _ = project
    pair = _us_pair(store, tmp_path, rng)
    store.set_us_score(pair, 2, 1, MODEL, uncertainty=0.2, grade_sets=US_SETS, coverage=0.9)
    model = store.us_score(pair)
    assert model.is_model and model.grade_sets == US_SETS and model.value["coverage"] == 0.9
    assert model.value["synovial_hypertrophy_set_low"] == 1  # the columns, as stored
    # a person corrects the grades: what counts has no set, the model's set stays on its row
    store.set_us_score(pair, 3, 2, HUMAN)
    newest_human = store.us_score(pair)
    assert newest_human.source == "human" and newest_human.value["combined"] == 3
    assert newest_human.grade_sets == {} and newest_human.value["coverage"] is None
    assert store.us_score(pair, sources=["human"]) == newest_human
    assert store.us_score(pair, sources=["model"]).grade_sets == US_SETS
    resolved = store.resolved("us_score", pair)[None]
    assert resolved.committed == newest_human and resolved.proposal.grade_sets == US_SETS
    # accepting a (newer) proposal copies its grades, never its set
    store.set_us_score(pair, 1, 0, MODEL, grade_sets={"combined": (0, 1)}, coverage=0.8)
    store.confirm("us_score", pair, {}, "alice")
    accepted = store.us_score(pair)
    assert accepted.source == "human" and accepted.value["combined"] == 1
    assert accepted.grade_sets == {} and accepted.value["coverage"] is None
    with pytest.raises(ValueError, match="only a model"):
        store.set_us_score(pair, 2, 1, HUMAN, grade_sets=US_SETS, coverage=0.9)
    with pytest.raises(ValueError, match="coverage"):
        store.set_us_score(pair, 2, 1, MODEL, grade_sets=US_SETS)
    with pytest.raises(ValueError, match="not inside 0-3"):
        store.set_us_score(pair, 2, 1, MODEL, grade_sets={"vascularity": (2, 4)}, coverage=0.9)
    with pytest.raises(ValueError, match="unknown outputs"):
        store.set_us_score(pair, 2, 1, MODEL, grade_sets={"erosion": (0, 1)}, coverage=0.9)
