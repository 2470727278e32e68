"""The demo report: a self-contained page built from predictions and a phantom project."""

import csv

from annotation_tools.cli import main


def test_report_shows_every_patient_and_the_cohort_figures(small_cohort, tmp_path, capsys):
    predicted = tmp_path / "predicted"
    status = main(
        [
            "predict",
            "--images", str(small_cohort / "radiographs"),
            "--ultrasound", str(small_cohort / "ultrasound_scores.csv"),
            "--out", str(predicted),
            "--no-explain", "--quiet",
        ]
    )  # fmt: skip
    assert status == 0
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
    with open(out / "joint_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["patient_id"] for r in rows} and all(r["true"] != "" for r in rows)
    with open(out / "ultrasound_grades.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6
