"""``ra-joints import``: a nested PACS-style folder (DICOM with and without extension, a
DICOMDIR, ultrasound frames, a broken file) imported twice gives each patient and limb once."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import pacs_export as _cohort

from annotation_tools.cli import main
from annotation_tools.imageio import write_png
from annotation_tools.store import AnnotationStore


def test_import_twice_finds_each_patient_and_limb_once(tmp_path, capsys):
    cohort = tmp_path / "export"
    expected = _cohort(cohort)
    project = tmp_path / "project"
    status = main(["import", "--project", str(project), str(cohort), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 3  # broken.dcm and scan0001.png were skipped
    reasons = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {"broken.dcm", "scan0001.png"}
    assert "truncated" in reasons["broken.dcm"]
    assert "limb unknown - needs a decision" in reasons["scan0001.png"]
    with AnnotationStore.open(project, create=False) as store:
        radiographs = store.images(modality="radiograph")
        got = {(r.patient_id, r.limb) for r in radiographs}
        assert got == set(expected)
        assert all(r.visit == "20240131" for r in radiographs)
        assert all(store.resolve(r).samefile(expected[(r.patient_id, r.limb)]) for r in radiographs)
        assert len(store.images(modality="us_greyscale")) == 2
        assert len(store.images(modality="us_doppler")) == 2
        pairs = store.us_pairs()
        assert len(pairs) == 1  # the PNG pair by name; the DICOM frames are in two series
        assert pairs[0]["site"] and "US1" not in pairs[0]["site"]
        before = store.summary()
    assert len(report["unpaired"]) == 2
    # second import: nothing new, every image found by its content
    status = main(["import", "--project", str(project), str(cohort), "--json"])
    again = json.loads(capsys.readouterr().out)
    assert again["imported"] == [] and len(again["duplicates"]) == len(report["imported"])
    with AnnotationStore.open(project, create=False) as store:
        assert store.summary() == before
    assert status == 3  # the same two files are still skipped, and say so


def test_cases_table_pairs_dicom_ultrasound_and_sets_limbs(tmp_path):
    from annotation_tools.intake import import_sources

    cohort = tmp_path / "export"
    _cohort(cohort)
    table = cohort / "cases.csv"
    table.write_text(
        "path,patient_id,limb,visit,modality,site,pair\n"
        "scan0001.png,X9,RF,v1,radiograph,,\n"
        "S5-P0001/STUDY1/US/IM1,,,,us_greyscale,mcp_2,A\n"
        "S5-P0001/STUDY1/US/IM2,,,,us_doppler,mcp_2,A\n"
    )
    report = import_sources(tmp_path / "project", [cohort], cases=table)
    assert [item["path"].rsplit("/", 1)[-1] for item in report.skipped] == ["broken.dcm"]
    with AnnotationStore.open(tmp_path / "project", create=False) as store:
        [x9] = store.images(patient_id="X9")
        assert (x9.limb, x9.visit) == ("RF", "v1")
        assert {p["site"] for p in store.us_pairs()} == {"mcp_2", report.pairs[-1]["site"]}
        assert len(store.us_pairs()) == 2


def _unnamed_limbs(folder):
    """One phantom patient's four radiographs as PNGs whose names say nothing (no tags)."""
    from annotation_tools.phantoms import generate_patient

    folder.mkdir(parents=True)
    truth = {}
    patient = generate_patient(777, 0, height=512, us_pairs=0, style="schematic")
    for i, (limb, phantom) in enumerate(sorted(patient.limbs.items())):
        path = folder / f"scan{i:04d}.png"
        write_png(path, phantom.image)
        truth[str(path.resolve())] = limb
    return truth


def test_locator_decides_untagged_limbs_only_when_asked(tmp_path, capsys):
    """Held-out seed 777: as given vs mirrored, the better shape-prior fit names the limb."""
    from annotation_tools.intake import decide_limb, import_sources
    from annotation_tools.predict import PredictionService

    truth = _unnamed_limbs(tmp_path / "anon")
    # without --decide-limbs nothing is guessed: every file waits for a person
    report = import_sources(tmp_path / "p1", [tmp_path / "anon"])
    assert len(report.needs_limb) == 4 and not report.imported
    # a person's choice for one file registers it; the others still wait
    first = sorted(truth)[0]
    report = import_sources(tmp_path / "p1", [tmp_path / "anon"], limbs={first: "RF"})
    assert [r["limb"] for r in report.imported] == ["RF"]
    assert report.imported[0]["limb_source"] == "given"
    # opt-in: the CLI lets the locator decide; a high threshold turns calls into suggestions
    status = main(["import", "--project", str(tmp_path / "p2"), str(tmp_path / "anon"),
                   "--decide-limbs", "--device", "cpu", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and {r["path"]: r["limb"] for r in out["imported"]} == truth
    assert all(r["limb_source"].startswith("locator (confidence") for r in out["imported"])
    service = PredictionService("two-stage", device="cpu")
    report = import_sources(tmp_path / "p3", [tmp_path / "anon"], decide=service,
                            limb_threshold=1.01)  # fmt: skip
    assert {r["path"]: r["suggested_limb"] for r in report.needs_limb} == truth
    assert all(0.3 <= r["confidence"] < 1.01 for r in report.needs_limb)
    assert all("shape prior" in r["reason"] for r in report.needs_limb)
    assert report.exit_code == 3
    guess, _, reason = decide_limb(first, service.locator())  # a bare locator too
    assert guess.value == truth[first] and "shape prior" in reason


def test_a_cancelled_import_keeps_what_it_did_and_the_next_one_adds_the_rest(tmp_path):
    from annotation_tools.intake import describe, import_sources
    from annotation_tools.progress import CancelToken

    cohort = tmp_path / "export"
    _cohort(cohort)
    project = tmp_path / "project"
    token = CancelToken()
    seen = []

    def progress(event):
        seen.append(event)
        if event.done == 3:  # the person presses Cancel while file 4 is read
            token.cancel()

    first = import_sources(project, [cohort], progress=progress, cancel=token)
    reached = len(first.imported) + len(first.skipped) + len(first.duplicates)
    assert reached == 4 and first.not_reached and first.exit_code == 3
    assert "cancelled" in describe(first) and str(len(first.not_reached)) in describe(first)
    with AnnotationStore.open(project, create=False) as store:
        assert len(store.images()) == len(first.imported)  # each file committed on its own
    rest = import_sources(project, [cohort])
    assert len(rest.duplicates) == len(first.imported) and not rest.not_reached
    total = len(first.imported) + len(rest.imported)
    assert total + len(rest.skipped) == reached + len(first.not_reached)


def test_an_rgb_grey_scale_screen_with_coloured_icons_is_not_taken_for_doppler(tmp_path):
    """Scanners save grey-scale frames as RGB too, with coloured icons and colour bars beside
    the image: only a colour box or flow on the screen makes a frame Doppler."""
    import numpy as np

    from annotation_tools.intake import import_sources
    from annotation_tools.phantom_us import render_ultrasound_physical

    us = render_ultrasound_physical("L_mcp_2", 2, 2, np.random.default_rng(11))
    grey = np.repeat(us.greyscale[..., None], 3, axis=-1).copy()
    grey[8:28, 8:28] = (255, 160, 0)  # a coloured icon in the screen margin, as scanners draw
    folder = tmp_path / "ultrasound"
    folder.mkdir()
    write_png(folder / "P9_scan_a.png", grey)
    write_png(folder / "P9_scan_b.png", us.doppler)
    report = import_sources(tmp_path / "project", [folder])
    kinds = {Path(r["path"]).name: r["modality"] for r in report.imported}
    assert kinds == {"P9_scan_a.png": "us_greyscale", "P9_scan_b.png": "us_doppler"}
