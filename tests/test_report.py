"""The demo report: a self-contained page built from predictions and a phantom project."""

import csv
import html
import re

import pytest

from annotation_tools.cli import main
from annotation_tools.evaluation import PHANTOM_NOTE, read_dream_table
from annotation_tools.report import JOINT_COLUMNS, patient_total_rows
from annotation_tools.vocabulary import dream_row, parse_dream_column, write_dream_csv


def _table(tmp_path, name, rows):
    """An RA2-DREAM table written and read back as the report reads it."""
    return read_dream_table(write_dream_csv(rows, tmp_path / name))


def test_patient_totals_sum_the_per_joint_scores_not_the_overall_columns(tmp_path):
    # patient A: every joint scored, so the table also carries the Overall_* columns
    grades = {c: (i % 3) for i, c in enumerate(JOINT_COLUMNS)}
    full = {
        (parse_dream_column(c)[0].id, parse_dream_column(c)[1].value): g for c, g in grades.items()
    }
    # patient B: four joints only (no Overall_* columns)
    few = dict(list(full.items())[:4])
    truth = _table(tmp_path, "truth.csv", [dream_row("A", full), dream_row("B", few)])
    assert truth["A"]["Overall_Tol"] == sum(grades.values())  # the table's own total column
    pred = _table(
        tmp_path,
        "pred.csv",
        [
            dream_row("A", {k: v + 0.5 if v < 2 else v for k, v in full.items()}),
            dream_row("B", few),
        ],
    )
    us = [
        {"patient_id": "A", "combined": 2, "truth": {"combined": 3}},
        {"patient_id": "A", "combined": 1, "truth": {"combined": 1}},
        {"patient_id": "B", "combined": 0},  # not graded: left out
    ]
    rows = {r["patient_id"]: r for r in patient_total_rows(truth, pred, us)}
    erosion = sum(g for c, g in grades.items() if "_E__" in c)
    narrowing = sum(g for c, g in grades.items() if "_J__" in c)
    a = rows["A"]
    assert a["n_scores"] == 86
    assert (a["true_total"], a["true_erosion"], a["true_narrowing"]) == (
        erosion + narrowing,
        erosion,
        narrowing,
    )
    assert a["predicted_total"] == pytest.approx(
        sum(g + 0.5 if g < 2 else g for g in grades.values())
    )
    assert (a["us_pairs"], a["true_us_combined"], a["predicted_us_combined"]) == (2, 4, 3)
    b = rows["B"]
    assert b["n_scores"] == 4 and b["true_total"] == b["predicted_total"] == sum(few.values())
    assert b["us_pairs"] == 0


def test_report_shows_every_patient_and_the_cohort_figures(
    small_cohort, small_cohort_predicted, tmp_path, capsys
):
    predicted = small_cohort_predicted  # ra-joints predict --images --ultrasound --no-explain
    assert len(list((predicted / "overlays").glob("*.png"))) == 12  # one per radiograph
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--project",
                str(small_cohort),
                "--predicted",
                str(predicted),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "report.html" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert "say nothing about clinical accuracy" in page
    assert page.count("<h2 id=") == 3  # one section per patient
    assert 'src="data:image/png;base64,' in page and 'src="figures/' not in page  # self-contained
    for figure in ("total_scores.png", "locator_errors.png", "us_confusion.png"):
        assert (out / "figures" / figure).stat().st_size > 1000, figure
    # every picture is a figure whose caption says it is phantom
    figures = re.findall(r"<figure>(.*?)</figure>", page, re.S)
    assert len(figures) == page.count("<img ") > 12
    for fig in figures:
        assert "<img " in fig and html.escape(PHANTOM_NOTE) in fig.split("<figcaption>")[1]
    # thumbnails: one per radiograph, captioned with patient, limb and what the overlay shows
    thumbs = [f for f in figures if re.search(r'alt="\S+ [LR][HF]"', f)]
    assert len(thumbs) == 12
    for fig in thumbs:
        patient, limb = re.search(r'alt="(\S+) ([LR][HF])"', fig).groups()
        side = {"L": "left", "R": "right"}[limb[0]] + {"H": " hand", "F": " foot"}[limb[1]]
        caption = fig.split("<figcaption>")[1]
        assert f"Patient {patient}, {side} ({limb})" in caption
        assert "true joint centres" in caption and "predicted" in caption
    # ultrasound pairs show both heatmap panels (none computed here: --no-explain says so)
    assert page.count("vascularity grades") == 6
    # per-patient totals: the sum of the per-joint truth, never of the Overall_* columns too
    truth = read_dream_table(small_cohort / "scores_ra2dream.csv")
    pred = read_dream_table(predicted / "scores_ra2dream.csv")
    with open(out / "patient_totals.csv", newline="") as handle:
        totals = list(csv.DictReader(handle))
    assert len(totals) == 3 and "<table class='totals'>" in page
    for row in totals:
        pid = row["patient_id"]
        scored = [c for c in JOINT_COLUMNS if c in pred[pid]]
        assert int(row["n_scores"]) == len(scored) > 60
        assert float(row["true_total"]) == pytest.approx(sum(truth[pid][c] for c in scored))
        assert float(row["true_erosion"]) + float(row["true_narrowing"]) == pytest.approx(
            float(row["true_total"])
        )
        assert float(row["predicted_total"]) == pytest.approx(sum(pred[pid][c] for c in scored))
        if len(scored) == len(JOINT_COLUMNS):
            assert float(row["true_total"]) == pytest.approx(truth[pid]["Overall_Tol"])
        assert int(row["us_pairs"]) == 2
    with open(out / "joint_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["patient_id"] for r in rows} and all(r["true"] != "" for r in rows)
    with open(out / "ultrasound_grades.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6
