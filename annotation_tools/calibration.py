"""Calibrate the grade sets on a project: the scorer's (the pipeline end to end on its images,
every grade paired with the project's reference table) and the RATING ensemble's (its
ultrasound pairs, paired with their reference grades). Kept apart from
:mod:`annotation_tools.conformal` and :mod:`annotation_tools.us_conformal` (the sets
themselves, which the writers of every output use) because it runs the models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .conformal import GradeCalibration, calibrate_grades, score_rows
from .seeds import RADIOGRAPH, ULTRASOUND, check_calibration_seed, cohort_seed
from .us_conformal import UsGradeCalibration, calibrate_us_grades

# the scorer's residual normaliser |truth - pred| / (sd + beta): 3.0 was chosen on validation
# seed 3300 alone (20 random patient halves, the smallest mean 90 % set width with coverage
# >= 0.9 among 0.05-100; docs/uncertainty.md), and ``ra-joints calibrate`` uses it
SCORER_BETA = 3.0

__all__ = [
    "SCORER_BETA",
    "calibrate_scorer",
    "calibrate_ultrasound",
    "decided_pairs",
    "predicted_rows",
]


def predicted_rows(
    project: str | Path,
    service: Any = None,
    out: str | Path | None = None,
    images: str | Path | None = None,
) -> list[tuple[str, str, str, float, float | None, float | None]]:
    """Run the radiograph pipeline end to end on a project's images (default: its
    ``radiographs/`` folder) and pair every score with the project's reference table
    ``scores_ra2dream.csv`` (the truth on phantoms; on real data an adjudicated reading
    exported with ``ra-joints export-dream``): ``(patient, joint, score_type, pred, sd, truth)``."""
    import tempfile

    from .evaluation import read_dream_table
    from .predict import PredictionService
    from .vocabulary import dream_column

    project = Path(project)
    service = service or PredictionService("two-stage")
    truth = read_dream_table(project / "scores_ra2dream.csv")
    with tempfile.TemporaryDirectory() as tmp:
        result = service.predict_folder(
            images or project / "radiographs", out or tmp, explain=False, overlays=False
        )
    rows = []
    for pid, joint_id, st, pred, sd in score_rows(result.patients):
        value = truth.get(pid, {}).get(dream_column(joint_id, st))
        rows.append((pid, joint_id, st, pred, sd, value))
    return rows


def calibrate_scorer(
    project: str | Path | Sequence[str | Path],
    *,
    images: str | Path | None = None,
    beta: float = SCORER_BETA,
    service: Any = None,
) -> GradeCalibration:
    """Calibrate the scorer the service uses on project(s) nobody reports figures on.

    Several projects are pooled (e.g. one validation seed drawn in both phantom styles, for a
    scorer trained on both): the sets then cover every kind of film calibrated on, not only
    the easiest. A phantom project of a test seed, or of a seed the scorer or locator was
    trained on, is refused (:func:`annotation_tools.seeds.check_calibration_seed`) before
    anything runs.
    """
    from .predict import PredictionService

    folders = [Path(project)] if isinstance(project, str | Path) else [Path(p) for p in project]
    if not folders:
        raise ValueError("give at least one calibration project")
    if images is not None and len(folders) > 1:
        raise ValueError("--images names the radiographs of one project; pool without it")
    service = service or PredictionService("two-stage")
    for folder in folders:  # a choice made on validation data: never a test seed, nor seen
        check_calibration_seed(
            cohort_seed(folder),
            RADIOGRAPH,
            bundles=[service.bundle("scorer").root, service.bundle("locator").root],
        )
    scorer = service.models()["scorer"]
    if scorer is None:
        raise FileNotFoundError("; ".join(service.skipped) or "no scorer bundle")
    usable: list[tuple[str, str, float, float | None, float]] = []
    patients, infos = 0, []
    for folder in folders:
        cohort = folder / "cohort.json"
        infos.append(json.loads(cohort.read_text()) if cohort.is_file() else {})
        rows = predicted_rows(folder, service, images=images)
        usable += [r[1:] for r in rows if r[5] is not None]
        patients += len({r[0] for r in rows if r[5] is not None})
    seeds = [i.get("seed") for i in infos]
    styles = [i.get("style") for i in infos]
    source = {
        "project": "; ".join(str(f.resolve()) for f in folders),
        "seed": seeds[0] if len(set(seeds)) == 1 else seeds,
        "style": styles[0] if len(set(styles)) == 1 else "+".join(str(s) for s in styles),
        "patients": patients,
        "scores": len(usable),
        "weights_sha256": scorer.model_info.get("weights_sha256"),
        "symmetry_sha256": scorer.model_info.get("symmetry_sha256"),
        "pipeline": "locator -> scorer -> symmetry, end to end on the image files",
    }
    return calibrate_grades(usable, beta=beta, source=source)


def decided_pairs(
    project: str | Path, models_dir: str | Path, *, device: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The RATING ensemble of ``models_dir`` on every ultrasound pair of a project (its store,
    ROI boxes as drawn; else its ``ultrasound_scores.csv``): each pair's decision with its
    ``truth`` (``None`` when the pair has no reference grades) and ``patient_id``, and the
    pairs that could not be used, with their reasons."""
    import torch

    from .us_rating import decide_cases, load_ensemble, load_us_cases

    project = Path(project)
    ensemble = load_ensemble(models_dir).to(torch.device(device or "cpu"))
    if (project / "ra_joints.sqlite").is_file():
        cases = load_us_cases(store=project, size=ensemble.input_size)
    else:
        cases = load_us_cases(project, size=ensemble.input_size)
    return decide_cases(ensemble, cases), cases.failed


def calibrate_ultrasound(
    project: str | Path,
    models_dir: str | Path,
    *,
    beta: float | str | None = "auto",
    device: str | None = None,
) -> UsGradeCalibration:
    """Calibrate the RATING ensemble of ``models_dir`` (a bundle's ``models/``) on a project
    nobody reports figures on.

    A phantom project of a test seed, or of a seed the ensemble was trained on
    (``ensemble.json`` lists its seeds), is refused before anything runs; a project whose
    pairs carry no reference grades is refused with that reason.
    """
    from .us_rating import ensemble_hash

    project, models_dir = Path(project), Path(models_dir)
    # a choice made on validation data: never a test seed, nor a seed the weights saw
    check_calibration_seed(cohort_seed(project), ULTRASOUND, bundles=[models_dir])
    rows, failed = decided_pairs(project, models_dir, device=device)
    if not rows:
        raise ValueError(
            f"{project} has no usable ultrasound pair to calibrate on"
            + (f" ({len(failed)} failed, e.g. {failed[0]['reason']})" if failed else "")
        )
    cohort = project / "cohort.json"
    info = json.loads(cohort.read_text()) if cohort.is_file() else {}
    source = {
        "project": str(project.resolve()),
        "seed": info.get("seed"),
        "style": info.get("style"),
        "ensemble_sha256": ensemble_hash(models_dir),
        "failed_pairs": len(failed),
        "prediction": "expected grade P(>=1)+P(>=2)+P(>=3) of the members' mean split "
        "probabilities; combined = max(expected SH, expected vascularity)",
    }
    return calibrate_us_grades(
        rows,
        [r["truth"] for r in rows],
        patients=[r["patient_id"] for r in rows],
        beta=beta,
        source=source,
    )
