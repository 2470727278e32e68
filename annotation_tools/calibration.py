"""Calibrate the scorer's grade sets on a project: run the pipeline end to end on its images
and pair every grade with the project's reference table. Kept apart from
:mod:`annotation_tools.conformal` (the sets themselves, which the writers of every output use)
because it runs the prediction service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conformal import GradeCalibration, calibrate_grades, score_rows
from .seeds import RADIOGRAPH, check_calibration_seed, cohort_seed

__all__ = ["calibrate_scorer", "predicted_rows"]


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
    project: str | Path,
    *,
    images: str | Path | None = None,
    beta: float = 0.25,
    service: Any = None,
) -> GradeCalibration:
    """Calibrate the scorer the service uses on a project nobody reports figures on.

    A phantom project of a test seed, or of a seed the scorer or locator was trained on, is
    refused (:func:`annotation_tools.seeds.check_calibration_seed`) before anything runs.
    """
    from .predict import PredictionService

    cohort = Path(project) / "cohort.json"
    info = json.loads(cohort.read_text()) if cohort.is_file() else {}
    service = service or PredictionService("two-stage")
    # a choice made on validation data: never a test seed, nor a seed the weights saw
    check_calibration_seed(
        cohort_seed(project),
        RADIOGRAPH,
        bundles=[service.bundle("scorer").root, service.bundle("locator").root],
    )
    scorer = service.models()["scorer"]
    if scorer is None:
        raise FileNotFoundError("; ".join(service.skipped) or "no scorer bundle")
    rows = predicted_rows(project, service, images=images)
    usable = [r[1:] for r in rows if r[5] is not None]
    source = {
        "project": str(Path(project).resolve()),
        "seed": info.get("seed"),
        "style": info.get("style"),
        "patients": len({r[0] for r in rows if r[5] is not None}),
        "scores": len(usable),
        "weights_sha256": scorer.model_info.get("weights_sha256"),
        "symmetry_sha256": scorer.model_info.get("symmetry_sha256"),
        "pipeline": "locator -> scorer -> symmetry, end to end on the image files",
    }
    return calibrate_grades(usable, beta=beta, source=source)
