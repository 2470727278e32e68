"""The resolution rule: a person's (or the phantom truth's) revision is what every reader shows;
a model revision is a proposal beside it - never on top of it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import unannotated_project

from annotation_tools.imageio import write_png
from annotation_tools.review import (
    Change,
    image_status,
    rename_centre,
    restore,
    save_centres,
)
from annotation_tools.store import AnnotationStore, Provenance, StoreError

HUMAN = Provenance.human("alice")
MODEL = Provenance.model("ra_joint_locator", "0.2.0", "abc")


@pytest.fixture
def lh(tmp_path, rng):
    store = AnnotationStore.open(tmp_path)
    path = write_png(tmp_path / "P1_LH.png", (rng.random((64, 48)) * 255).astype(np.uint8))
    yield store, store.add_image(path, patient_id="P1", limb="LH", width=48, height=64)
    store.close()


def test_a_newer_model_revision_is_a_proposal_beside_the_human_value(lh):
    store, image = lh
    store.set_centre(image, "LH_mcp_2", (10.0, 20.0), HUMAN)
    store.set_centre(image, "LH_mcp_2", (30.0, 40.0), MODEL, confidence=0.9)
    store.set_centre(image, "LH_mcp_3", (5.0, 5.0), MODEL, confidence=0.8)
    shown = store.centres(image)
    assert (shown["LH_mcp_2"].source, shown["LH_mcp_2"].value["x"]) == ("human", 10.0)
    assert shown["LH_mcp_3"].source == "model"  # nobody said anything: the proposal counts
    resolved = store.resolved("centre", image)
    assert resolved["LH_mcp_2"].state == "committed"
    assert resolved["LH_mcp_2"].pending.value["x"] == 30.0
    assert resolved["LH_mcp_3"].state == "proposed"
    assert set(store.proposals("centre", image)) == {"LH_mcp_2", "LH_mcp_3"}
    # the same rule for grades and a human deletion beats a later proposal
    store.set_score(image, "LH_mcp_2", "erosion", 3, HUMAN)
    store.set_score(image, "LH_mcp_2", "erosion", 0, MODEL)
    assert store.scores(image)[("LH_mcp_2", "erosion")].value["value"] == 3
    store.delete_centre(image, "LH_mcp_3", HUMAN)
    store.set_centre(image, "LH_mcp_3", (6.0, 6.0), MODEL)
    assert "LH_mcp_3" not in store.centres(image)


def test_confirm_accepts_only_a_model_revision_of_the_same_joint(lh):
    store, image = lh
    store.set_centre(image, "LH_mcp_2", (1.0, 2.0), HUMAN)
    human_row = store.centre_history(image, "LH_mcp_2")[0]
    store.set_centre(image, "LH_mcp_4", (3.0, 4.0), MODEL)
    other_joint = store.centre_history(image, "LH_mcp_4")[0]
    key = {"joint_id": "LH_mcp_2"}
    with pytest.raises(StoreError, match="only model proposals"):
        store.confirm("centre", image, key, "bob", revision_id=human_row.id)
    with pytest.raises(StoreError, match="is not a centre revision"):
        store.confirm("centre", image, key, "bob", revision_id=other_joint.id)
    with pytest.raises(StoreError, match="is not a centre revision"):
        store.confirm("centre", image, key, "bob", revision_id=10_000)
    with pytest.raises(StoreError, match="no model proposal"):
        store.confirm("centre", image, key, "bob")  # the newest row is a person's
    store.confirm("centre", image, {"joint_id": "LH_mcp_4"}, "bob")
    accepted = store.centres(image)["LH_mcp_4"]
    assert accepted.source == "human" and accepted.confirms == other_joint.id
    assert store.proposals("centre", image) == {}


def test_reject_keeps_the_committed_value_or_deletes_a_lone_proposal(lh):
    store, image = lh
    store.set_score(image, "LH_pip_2", "narrowing", 2, HUMAN)
    store.set_score(image, "LH_pip_2", "narrowing", 0, MODEL)
    store.set_score(image, "LH_pip_3", "narrowing", 1, MODEL)
    store.reject("score", image, {"joint_id": "LH_pip_2", "score_type": "narrowing"}, "bob")
    store.reject("score", image, {"joint_id": "LH_pip_3", "score_type": "narrowing"}, "bob")
    scores = store.scores(image)
    assert scores[("LH_pip_2", "narrowing")].value["value"] == 2
    assert ("LH_pip_3", "narrowing") not in scores
    assert store.proposals("score", image) == {}
    with pytest.raises(StoreError, match="no model proposal to reject"):
        store.reject("score", image, {"joint_id": "LH_pip_3", "score_type": "narrowing"}, "bob")


def test_saving_the_committed_layer_never_deletes_a_proposal_and_undo_is_a_revision(lh):
    store, image = lh
    store.set_centre(image, "LH_mcp_5", (9.0, 9.0), MODEL)
    journal: list[Change] = []
    save_centres(store, image, {"LH_mcp_2": (1.0, 1.0)}, "alice", journal=journal)
    assert store.resolved("centre", image)["LH_mcp_5"].state == "proposed"
    save_centres(store, image, {"LH_mcp_2": (4.0, 4.0)}, "alice", journal=journal)
    assert len(journal) == 2
    redo = restore(store, journal[-1], "alice")  # undo the move
    assert store.centres(image)["LH_mcp_2"].value["x"] == 1.0
    restore(store, redo, "alice")  # redo it
    assert store.centres(image)["LH_mcp_2"].value["x"] == 4.0
    restore(store, journal[0], "alice")  # undo the first click: the joint is gone again
    assert "LH_mcp_2" not in store.centres(image, sources=["human"])
    assert len(store.centre_history(image, "LH_mcp_2")) == 5  # nothing was deleted
    changes = rename_centre(store, image, "LH_mcp_5", "LH_mcp_3", "alice")
    assert "LH_mcp_5" not in store.centres(image)
    assert store.centres(image)["LH_mcp_3"].value["x"] == 9.0
    for change in changes:
        restore(store, change, "alice")
    assert "LH_mcp_3" not in store.centres(image, sources=["human"])


def test_status_counts_scores_and_proposals(lh):
    store, image = lh
    record = store.image(image)
    store.set_centre(image, "LH_mcp_2", (1.0, 1.0), MODEL)
    status = image_status(store, record)
    assert status.status == "predicted" and status.proposals == 1 and status.annotated == 0
    from annotation_tools.vocabulary import joints_for_limb

    for joint in joints_for_limb("LH"):
        store.set_centre(image, joint.id, (2.0, 2.0), HUMAN)
    status = image_status(store, record)
    assert status.annotated == status.total and status.status == "corrected"  # no grades yet
    for joint in joints_for_limb("LH"):
        for score_type in joint.score_types:
            store.set_score(image, joint.id, score_type, 0, HUMAN)
    assert image_status(store, record).status == "done"


def test_cli_round_trip_keeps_the_human_values(small_cohort, tmp_path):
    """import-dream (a reader's table) -> predict --store -> export-dream --all-sources."""
    from annotation_tools.cli import main

    project = unannotated_project(small_cohort, tmp_path / "project")
    with AnnotationStore.open(project, create=False) as store:
        patient = store.patients()[0]
        radiographs = store.images(modality="radiograph")
    human = {"LH_mcp_E__2": "3", "LH_pip_J__3": "2", "RF_mtp_E__1": "7"}
    table = tmp_path / "reader1.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["Patient_ID", *human])
        writer.writeheader()
        writer.writerow({"Patient_ID": patient, **human})
    assert main(["import-dream", "--project", str(project), "--csv", str(table),
                 "--annotator", "reader1"]) == 0  # fmt: skip
    lh = next(r for r in radiographs if r.limb == "LH" and r.patient_id == patient)
    with AnnotationStore.open(project, create=False) as store:
        store.set_centre(lh.id, "LH_mcp_2", (100.0, 100.0), HUMAN)  # a person placed it
    folder = project / radiographs[0].path.rsplit("/", 1)[0]
    assert main(["predict", "--images", str(folder), "--store", str(project),
                 "--out", str(tmp_path / "out"), "--no-overlays", "--quiet"]) == 0  # fmt: skip
    exported = tmp_path / "all.csv"
    assert main(["export-dream", "--project", str(project), "--out", str(exported),
                 "--all-sources"]) == 0  # fmt: skip
    with open(exported, newline="") as handle:
        row = next(csv.DictReader(handle))
    for column, value in human.items():
        assert float(row[column]) == float(value), column
    filled = [c for c, v in row.items() if c not in human and c != "Patient_ID" and v != ""]
    assert len(filled) > 40  # the model's proposals fill the joints nobody scored
    with AnnotationStore.open(project, create=False) as store:
        pending = store.proposals("score", lh.id)
        proposed = {r.key for r in store.history("centre", lh.id) if r.is_model}
        shown = store.centres(lh.id)["LH_mcp_2"]
    assert ("LH_mcp_2", "erosion") in pending  # the model's grade waits beside the reader's
    assert len(proposed) >= 15 and "LH_mcp_2" not in proposed  # centres too, none over hers
    assert shown.source == "human" and shown.value["x"] == 100.0


def test_re_predict_proposes_no_centre_over_a_human_one_and_scores_around_it(
    small_cohort, tmp_path
):
    from annotation_tools.predict import PredictionService

    project = unannotated_project(small_cohort, tmp_path / "project")
    with AnnotationStore.open(project, create=False) as store:
        patient = store.patients()[0]
        lh = next(r for r in store.images(modality="radiograph") if r.limb == "LH")
        truth = AnnotationStore.open(small_cohort, create=False)
        source = next(
            r
            for r in truth.images(modality="radiograph")
            if (r.patient_id, r.limb) == (patient, "LH")
        )
        true_mcp = truth.centres(source.id)["LH_mcp_2"].value
        truth.close()
        store.set_centre(lh.id, "LH_mcp_2", (true_mcp["x"] + 3, true_mcp["y"]), HUMAN)
        store.set_centre(lh.id, "LH_mcp_3", None, HUMAN, status="not_visible")
    PredictionService("two-stage").predict_patient(project, patient, explain=False)
    with AnnotationStore.open(project, create=False) as store:
        models = {r.key for r in store.history("centre", lh.id) if r.is_model}
        assert "LH_mcp_2" not in models and "LH_mcp_3" not in models
        assert len(models) >= 15  # the other joints got proposals
        shown = store.centres(lh.id)
        assert shown["LH_mcp_2"].source == "human"
        assert shown["LH_mcp_3"].status == "not_visible"
        assert ("LH_mcp_2", "erosion") in store.scores(lh.id, sources=["model"])
    from annotation_tools.scoring import PatchSet, add_store_cases

    patches = PatchSet(64)  # what the scorer was given: the person's centre, not the model's
    add_store_cases(patches, project, None, patient)
    case = next(c for c in patches.cases if c.limb == "LH")
    assert case.centres["LH_mcp_2"] == pytest.approx((true_mcp["x"] + 3, true_mcp["y"]))
    assert case.centres.get("LH_mcp_3") is None


def test_grade_sets_live_in_the_model_revision_and_order_the_queue(tmp_path, rng):
    """A model grade keeps its conformal set (validated against the scale); the queue's
    ``widest grade sets`` puts the image whose pending grades the model is least sure of
    first, and a person's grade (no set) takes that image's set out of the ranking."""
    from annotation_tools.review import annotation_queue, queue_reason

    store = AnnotationStore.open(tmp_path)
    ids = {}
    for patient in ("P1", "P2"):
        path = write_png(
            tmp_path / f"{patient}_LH.png", (rng.random((64, 48)) * 255).astype(np.uint8)
        )
        ids[patient] = store.add_image(path, patient_id=patient, limb="LH", width=48, height=64)
    store.set_score(ids["P1"], "LH_mcp_2", "narrowing", 2, MODEL, grade_set=(2, 2), coverage=0.9)
    store.set_score(ids["P2"], "LH_mcp_2", "narrowing", 2, MODEL, grade_set=(1, 3), coverage=0.9)
    store.set_score(ids["P2"], "LH_mcp_3", "erosion", 0, MODEL, grade_set=(0, 1), coverage=0.9)
    assert store.scores(ids["P2"])[("LH_mcp_2", "narrowing")].value["set_high"] == 3
    with pytest.raises(ValueError, match="not inside 0-4"):
        store.set_score(
            ids["P1"], "LH_mcp_2", "narrowing", 2, MODEL, grade_set=(1, 5), coverage=0.9
        )
    with pytest.raises(ValueError, match="needs its coverage"):
        store.set_score(ids["P1"], "LH_mcp_2", "narrowing", 2, MODEL, grade_set=(1, 3))
    statuses = [image_status(store, store.image(ids[p])) for p in ("P1", "P2")]
    assert [s.set_width for s in statuses] == [0.0, 1.5]
    queue = annotation_queue(statuses, "widest grade sets")
    assert [s.image.patient_id for s in queue] == ["P2", "P1"]
    assert "span 1.5 grades" in queue_reason(queue[0], "widest grade sets")
    store.set_score(ids["P2"], "LH_mcp_2", "narrowing", 3, HUMAN)  # settled by a person
    assert image_status(store, store.image(ids["P2"])).set_width == 1.0
    store.close()
