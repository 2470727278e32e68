"""Simulated raters: they disagree like trained readers, one over-calls narrowing, and they
never change an image, a truth value or what the store resolves to."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from annotation_tools import metrics, raters
from annotation_tools.cli import main
from annotation_tools.evaluation import table_agreement as csv_agreement
from annotation_tools.phantoms import generate_cohort
from annotation_tools.review import image_status
from annotation_tools.store import AnnotationStore
from annotation_tools.vocabulary import joints_for_limb

N_PATIENTS = 400  # grade tables only: about 2 s


@pytest.fixture(scope="module")
def tables():
    return raters.simulate_tables(N_PATIENTS, seed=3)


@pytest.fixture(scope="module")
def agreement(tables):
    return raters.table_agreement(*tables[:1], *(tables[1][n] for n in raters.RATERS))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The same 2-patient cohort with and without raters (small images, one process)."""
    root = tmp_path_factory.mktemp("raters")
    kw = {"height": 256, "us_pairs": 2, "workers": 1, "progress": False, "style": "schematic"}
    generate_cohort(root / "with", 2, seed=5, **kw)
    generate_cohort(root / "without", 2, seed=5, raters=False, **kw)
    return root / "with", root / "without"


def test_agreement_between_the_raters_matches_the_published_figures(agreement):
    a_vs_b = agreement["a_vs_b"]
    for score_type, target in raters.TARGETS.items():
        got = a_vs_b["per_score"][score_type]
        assert got["exact"] == pytest.approx(target["exact"], abs=0.03), score_type
        assert got["within_one"] == pytest.approx(target["within_one"], abs=0.03), score_type
        for kind in ("hand", "foot"):  # each scale on its own, not only the pool
            scale = a_vs_b["per_scale"][f"{kind}_{score_type}"]
            assert scale["exact"] == pytest.approx(target["exact"], abs=0.04)
    # Pearson r of the per-patient totals: met for narrowing; for erosion the target (0.78)
    # is not reachable together with the per-joint figures on this cohort (docs/phantoms.md).
    r = a_vs_b["patient_totals"]["narrowing"]["pearson_r"]
    assert r == pytest.approx(raters.TARGETS["narrowing"]["pearson_patient_total"], abs=0.04)
    # the readers are not the truth, and not each other
    assert agreement["a_vs_truth"]["per_score"]["narrowing"]["exact"] < 0.7


def test_rater_b_over_calls_narrowing_and_rater_a_is_unbiased(agreement):
    a_vs_b = agreement["a_vs_b"]["per_score"]
    assert a_vs_b["narrowing"]["mean_b"] - a_vs_b["narrowing"]["mean_a"] > 0.05
    assert abs(a_vs_b["erosion"]["mean_difference"]) < 0.03  # the bias is narrowing only
    a_vs_truth = agreement["a_vs_truth"]["per_score"]
    for score_type in ("narrowing", "erosion"):
        assert abs(a_vs_truth[score_type]["mean_difference"]) < 0.04


def _left_right(tables, score_type, kind="H"):
    left, right, left_total, right_total = [], [], [], []
    for t in tables:
        pair = [
            (t[j.id][score_type], t[f"R{kind}_{j.site}"][score_type])
            for j in joints_for_limb(f"L{kind}")
            if score_type in t[j.id]
        ]
        left += [p[0] for p in pair]
        right += [p[1] for p in pair]
        left_total.append(sum(p[0] for p in pair))
        right_total.append(sum(p[1] for p in pair))
    return np.corrcoef(left, right)[0, 1], np.corrcoef(left_total, right_total)[0, 1]


@pytest.mark.parametrize("score_type", ["narrowing", "erosion"])
def test_left_right_correlation_is_kept(tables, score_type):
    truth, reads = tables
    joint_truth, total_truth = _left_right(truth, score_type)
    assert joint_truth > 0.9 and total_truth > 0.95
    for name in raters.RATERS:
        joint_r, total_r = _left_right(reads[name], score_type)
        # per joint the reading noise dilutes it (narrowing readers agree at r ~0.4 per
        # joint); per hand the symmetry the symmetry stage learns from stays
        assert joint_r > (0.3 if score_type == "narrowing" else 0.6)
        assert total_r > 0.8


def test_same_seed_same_grades_and_each_reader_has_its_own_stream(tables):
    truth, reads = tables
    again = raters.read_patient(truth[7], 3, 7)
    assert again == {name: reads[name][7] for name in raters.RATERS}
    assert raters.read_patient(truth[7], 4, 7) != again  # another cohort seed
    assert reads["rater_a"][7] != reads["rater_b"][7]
    us = raters.read_ultrasound([(2, 1), (0, 0), (3, 3)], 3, 7)
    assert us == raters.read_ultrasound([(2, 1), (0, 0), (3, 3)], 3, 7)
    for pairs in us.values():
        assert all(v == 0 for sh, v in pairs if sh == 0)  # EOSS: no SH, no Doppler grade


def test_bad_truth_grades_are_refused():
    with pytest.raises(ValueError, match="0-4"):
        raters.read_patient({"LH_mcp_2": {"narrowing": 7}}, 0, 0)
    with pytest.raises(ValueError, match="0-3"):
        raters.read_ultrasound([(4, 0)], 0, 0)


def test_the_fit_objective_is_the_model_that_draws_the_grades(agreement):
    """The expected agreement the fit optimises equals what the drawn grades give."""
    data = raters._fit_data(N_PATIENTS, 3)
    expected = raters._expected_agreement(raters.FITTED, data)
    drawn = agreement["a_vs_b"]["per_scale"]
    for key in raters.SCALES:
        assert expected[key]["exact"] == pytest.approx(drawn[key]["exact"], abs=0.02)
        assert expected[key]["within_one"] == pytest.approx(drawn[key]["within_one"], abs=0.02)
    assert expected["narrowing"]["pearson_patient_total"] == pytest.approx(
        agreement["a_vs_b"]["patient_totals"]["narrowing"]["pearson_r"], abs=0.03
    )


def _sha(folder: Path) -> dict[str, str]:
    with AnnotationStore.open(folder, create=False) as store:
        return {im.path: im.sha256 for im in store.images()}


def test_raters_change_no_image_and_no_truth(cohorts):
    with_raters, without = cohorts
    for name in ("scores_ra2dream.csv", "ultrasound_scores.csv"):
        assert (with_raters / name).read_bytes() == (without / name).read_bytes()
    assert _sha(with_raters) == _sha(without)
    assert not (without / "raters").exists()
    info = json.loads((with_raters / "cohort.json").read_text())
    assert set(info["raters"]) == set(raters.RATERS)
    header = (with_raters / "scores_ra2dream.csv").read_text().splitlines()[0]
    us_header = (with_raters / "ultrasound_scores.csv").read_text().splitlines()[0]
    for files in info["raters"].values():
        table = (with_raters / files["scores_csv"]).read_text().splitlines()
        assert table[0] == header and len(table) == 3  # header + 2 patients
        us = (with_raters / files["ultrasound_csv"]).read_text().splitlines()
        assert us[0] == us_header and len(us) == 5
    assert (with_raters / "raters" / "rater_a.csv").read_bytes() != (
        with_raters / "scores_ra2dream.csv"
    ).read_bytes()


def test_the_store_resolves_to_the_truth_and_keeps_each_rater(cohorts, tmp_path):
    project = cohorts[0]
    with AnnotationStore.open(project, create=False) as store:
        assert set(store.authors("human")) == set(raters.RATERS)
        truth_export = store.export_dream_csv(tmp_path / "truth.csv")
        assert truth_export.read_bytes() == (project / "scores_ra2dream.csv").read_bytes()
        a = store.export_dream_csv(tmp_path / "a.csv", authors=["rater_a"])
        assert a.read_bytes() == (project / "raters" / "rater_a.csv").read_bytes()
        image = store.images(modality="radiograph")[0]
        resolved = store.resolved("score", image.id)
        assert {r.committed.source for r in resolved.values()} == {"phantom"}
        history = store.history("score", image.id, {"joint_id": f"{image.limb}_mcp_2"})
        assert [h.author for h in history if h.value["score_type"] == "narrowing"] == [
            "rater_a",
            "rater_b",
            "annotation_tools.phantoms",
        ]
        only_b = store.scores(image.id, authors=["rater_b"])
        assert {r.author for r in only_b.values()} == {"rater_b"}
        status = image_status(store, image)
        assert status.status == "done" and status.proposals == 0
        pair = store.us_pairs()[0]
        assert store.us_score(pair["id"]).source == "phantom"
        assert store.us_score(pair["id"], authors=["rater_a"]).author == "rater_a"
        with pytest.raises(TypeError, match="list"):
            store.scores(image.id, authors="rater_a")


def test_cli_export_dream_annotator_and_agreement(cohorts, tmp_path, capsys):
    project = cohorts[0]
    out = tmp_path / "b.csv"
    assert main(["export-dream", "--project", str(project), "--out", str(out),
                 "--annotator", "rater_b"]) == 0  # fmt: skip
    assert out.read_bytes() == (project / "raters" / "rater_b.csv").read_bytes()
    assert main(["export-dream", "--project", str(project), "--out", str(out),
                 "--annotator", "nobody"]) == 2  # fmt: skip
    assert "rater_a" in capsys.readouterr().err  # the known annotators are listed
    a, b = project / "raters" / "rater_a.csv", project / "raters" / "rater_b.csv"
    assert main(["agreement", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "hand_narrowing" in text and "patient total narrowing" in text
    us_a, us_b = (project / "raters" / f"ultrasound_{n}.csv" for n in raters.RATERS)
    assert main(["agreement", str(us_a), str(us_b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "ultrasound" and result["n_pairs"] == 4
    same = csv_agreement(a, a)
    assert same["per_score"]["narrowing"]["exact"] == 1.0
    assert same["per_score"]["narrowing"]["linear_weighted_kappa"] == pytest.approx(1.0)


def test_ultrasound_readers_agree_as_calibrated():
    truth = raters._us_truth(300, 3)
    reads = [raters.read_ultrasound(truth[2 * i : 2 * i + 2], 3, i) for i in range(300)]
    a, b = (np.array([p for r in reads for p in r[name]]) for name in raters.RATERS)
    got = raters.us_agreement(truth, a, b)
    for grade, target in raters.US_TARGETS.items():
        assert got[grade]["linear_weighted_kappa"] == pytest.approx(target, abs=0.06), grade
    assert got["combined"]["exact"] < 0.95  # they do disagree


def test_weighted_kappa_weighs_by_grade_not_by_rank():
    # grade 2 seen by nobody: a 1-vs-3 disagreement is two steps, not one
    a = [0, 1, 3, 3, 1, 0, 3]
    b = [0, 3, 1, 3, 1, 0, 3]
    labels = range(4)
    k = np.arange(4)
    weights = np.abs(k[:, None] - k[None, :])
    observed = np.zeros((4, 4))
    for x, y in zip(a, b, strict=True):
        observed[x, y] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(a)
    by_hand = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert metrics.linear_weighted_kappa(a, b, labels=labels) == pytest.approx(by_hand)
    assert metrics.linear_weighted_kappa(a, b) == pytest.approx(by_hand)  # default 0..max
    assert skm.cohen_kappa_score(a, b, weights="linear") != pytest.approx(by_hand)  # scikit's
    with pytest.raises(ValueError, match="labels"):
        metrics.linear_weighted_kappa([0, 5], [0, 1], labels=range(4))
    result = metrics.rater_agreement(a, b, labels=labels)
    assert result["exact"] == pytest.approx(5 / 7)
    assert result["within_one"] == pytest.approx(5 / 7)
    assert result["mean_difference"] == pytest.approx(0.0)


def test_rater_files_read_as_score_tables(cohorts):
    """The rater tables load like the truth table (same columns, whole grades)."""
    with open(cohorts[0] / "raters" / "rater_a.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Patient_ID"] for r in rows] == ["S5-P0001", "S5-P0002"]
    values = [float(v) for r in rows for k, v in r.items() if "__" in k and v]
    assert values and all(v.is_integer() for v in values)


def test_the_scale_fit_meets_targets_it_is_given(monkeypatch):
    """_fit_scale finds noise that meets per-joint targets: those of a known reader model,
    started from a different one (hand erosion, 120 patients: about 1 s)."""
    from dataclasses import replace

    data = raters._fit_data(120, 8)
    known = replace(
        raters.FITTED,
        scales={**raters.FITTED.scales, "hand_erosion": raters.ScaleNoise(0.5, 0.1, -0.2, 1.0)},
    )
    got = raters._expected_agreement(known, data, keys=("hand_erosion",))["hand_erosion"]
    targets = {
        **raters.TARGETS,
        "erosion": {
            **raters.TARGETS["erosion"],
            "exact": got["exact"],
            "within_one": got["within_one"],
        },
    }
    monkeypatch.setattr(raters, "TARGETS", targets)
    start = raters.ScaleNoise(0.2, 0.3, 0.0, 2.0)
    noise, miss = raters._fit_scale(raters.FITTED, "hand_erosion", data, start)
    assert miss < 0.002
    fitted = replace(raters.FITTED, scales={**raters.FITTED.scales, "hand_erosion": noise})
    again = raters._expected_agreement(fitted, data, keys=("hand_erosion",))["hand_erosion"]
    assert again["exact"] == pytest.approx(got["exact"], abs=0.002)
    assert again["mean_a"] == pytest.approx(again["truth_mean"], abs=0.004)
    assert noise != start


def test_a_cohort_holds_the_tables_simulate_tables_draws(cohorts):
    """simulate_tables(n, seed) is what a cohort of that seed writes (no images needed)."""
    from annotation_tools.evaluation import dream_table_grades

    _, reads = raters.simulate_tables(2, seed=5)
    for name in raters.RATERS:
        table = dream_table_grades(cohorts[0] / "raters" / f"{name}.csv")
        drawn = [{(j, t): g for j, gs in p.items() for t, g in gs.items()} for p in reads[name]]
        assert [table[pid] for pid in sorted(table)] == drawn
