"""Calibrate the grade sets on a project: the scorer's and the multi-task U-Net's (the pipeline
end to end on its images, every grade paired with the project's reference table) and the
RATING ensemble's (its ultrasound pairs, paired with their reference grades). Kept apart from
:mod:`annotation_tools.conformal` and :mod:`annotation_tools.us_conformal` (the sets
themselves, which the writers of every output use) because it runs the models.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from .conformal import GradeCalibration, calibrate_grades, score_rows
from .seeds import RADIOGRAPH, ULTRASOUND, check_calibration_seed, cohort_seed
from .us_conformal import UsGradeCalibration, calibrate_us_grades

__all__ = [
    "calibrate_pipeline",
    "calibrate_scorer",
    "calibrate_ultrasound",
    "decided_pairs",
    "predicted_rows",
    "store_predicted_rows",
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


def store_predicted_rows(
    project: str | Path,
    patients: Collection[str],
    service: Any,
    *,
    annotators: Sequence[str] | None = None,
) -> list[tuple[str, str, str, float, float | None, float | None]]:
    """:func:`predicted_rows` for some patients of a project's store (patient and limb as the
    store knows them), every score paired with the store's own grade - the newest human or
    phantom one (of ``annotators`` when given), as the retraining export reads it. Nothing is
    written to the store."""
    from .cases import CaseTable
    from .imageio import ImageReadError, read_image
    from .predict import predict_images
    from .store import TRAINING_SOURCES, AnnotationStore

    models = service.models()
    if models["scorer"] is None or models["locator"] is None:
        raise FileNotFoundError("; ".join(service.skipped) or "no locator or scorer bundle")
    rows = []
    with AnnotationStore.open(project, create=False) as store:
        records = [r for r in store.images(modality="radiograph") if r.patient_id in patients]
        for patient_id in sorted({r.patient_id for r in records}):
            items, cases, truth = [], {}, {}
            for record in (r for r in records if r.patient_id == patient_id):
                if store.content_problem(record):  # its grades belong to other pixels
                    continue
                path = str(store.resolve(record))
                try:
                    items.append((path, read_image(path)))
                except ImageReadError:
                    continue
                cases[str(Path(path).resolve())] = (patient_id, record.limb)
                grades = store.scores(record.id, sources=TRAINING_SOURCES, authors=annotators)
                truth.update({key: float(rev.value["value"]) for key, rev in grades.items()})
            if not items:
                continue
            result = predict_images(
                items, models["locator"], models["scorer"], table=CaseTable(cases)
            )
            for _, joint_id, st, pred, sd in score_rows(result.patients):
                rows.append((patient_id, joint_id, st, pred, sd, truth.get((joint_id, st))))
    return rows


def calibrate_scorer(
    project: str | Path | Sequence[str | Path],
    *,
    images: str | Path | None = None,
    beta: float | str = "auto",
    service: Any = None,
    patients: Collection[str] | None = None,
    annotators: Sequence[str] | None = None,
    held_out: Mapping[str, Any] | None = None,
    trained: Sequence[str | Path] = (),
) -> GradeCalibration:
    """Calibrate the scorer the service uses on project(s) nobody reports figures on
    (:func:`calibrate_pipeline` with the two-stage pipeline). Several projects are pooled,
    e.g. one validation seed drawn in both phantom styles for a scorer trained on both.

    ``patients``: only these patients of one project's store, against the store's grades
    (:func:`store_predicted_rows`: a retrained version's held-out patients, described by
    ``held_out`` in the file); else every radiograph against ``scores_ra2dream.csv``.
    ``trained``: version folders whose training seeds are refused too.
    """
    from .predict import PredictionService

    service = service or PredictionService("two-stage")
    projects = [project] if isinstance(project, str | Path) else list(project)
    return calibrate_pipeline(
        projects,
        service,
        images=images,
        beta=beta,
        patients=patients,
        annotators=annotators,
        held_out=held_out,
        trained=trained,
    )


def calibrate_pipeline(
    projects: Sequence[str | Path],
    service: Any,
    *,
    images: str | Path | None = None,
    beta: float | str = "auto",
    patients: Collection[str] | None = None,
    annotators: Sequence[str] | None = None,
    held_out: Mapping[str, Any] | None = None,
    trained: Sequence[str | Path] = (),
) -> GradeCalibration:
    """Grade sets for the radiograph model of ``service``'s pipeline - the scorer (two-stage)
    or the multi-task U-Net - from projects nobody reports figures on, pooled.

    The pipeline runs end to end on each project's images and every grade is paired with its
    reference (:func:`predicted_rows`). A phantom project of a test seed, or of a seed the
    model (or, two-stage, the locator) was trained on, is refused
    (:func:`annotation_tools.seeds.check_calibration_seed`) before anything runs. ``beta``:
    a number, or ``"auto"`` (chosen on these patients alone,
    :func:`annotation_tools.conformal.choose_beta`). ``patients`` / ``annotators`` /
    ``held_out`` / ``trained``: see :func:`calibrate_scorer` (two-stage, one project).
    """
    projects = [Path(p) for p in projects]
    if not projects:
        raise ValueError("give at least one calibration project")
    if images is not None and len(projects) > 1:
        raise ValueError("images replaces one project's radiographs/ folder: give one project")
    if patients is not None and (len(projects) > 1 or service.pipeline == "multitask"):
        raise ValueError("patients selects held-out patients of one two-stage project")
    multitask = service.pipeline == "multitask"
    task = "multitask" if multitask else "scorer"
    bundles = [service.bundle(t).root for t in service.radiograph_tasks]
    if patients is None:  # held-out patients of the version's own project are its to use
        bundles += [
            Path(w).parent for t, w in service.weights.items() if t in service.radiograph_tasks
        ]
    bundles += [Path(t) for t in trained]
    # a choice made on validation data: never a test seed, nor a seed the weights saw
    for project in projects:
        check_calibration_seed(cohort_seed(project), RADIOGRAPH, bundles=bundles)
    model = service.models()[task]
    if model is None:
        raise FileNotFoundError("; ".join(service.skipped) or f"no {task} bundle")
    rows: list[tuple[str, str, str, float, float | None, float | None]] = []
    cohorts = []
    for project in projects:
        if patients is None:
            found = predicted_rows(project, service, images=images)
        else:
            found = store_predicted_rows(project, patients, service, annotators=annotators)
        mine = [r for r in found if r[5] is not None]
        cohort = project / "cohort.json"
        info = json.loads(cohort.read_text()) if cohort.is_file() else {}
        cohorts.append(
            {
                "project": str(project.resolve()),
                "seed": info.get("seed"),
                "style": info.get("style"),
                "patients": len({r[0] for r in mine}),
                "scores": len(mine),
            }
        )
        # patient ids of two cohorts may repeat: keep them apart for the beta choice
        rows += [(f"{len(cohorts)}:{r[0]}", *r[1:]) for r in mine]
    source: dict[str, Any] = {
        "project": cohorts[0]["project"] if len(cohorts) == 1 else [c["project"] for c in cohorts],
        "seed": cohorts[0]["seed"] if len(cohorts) == 1 else None,
        "cohort_seeds": [c["seed"] for c in cohorts if c["seed"] is not None],
        "style": "+".join(sorted({str(c["style"]) for c in cohorts})),
        "patients": sum(c["patients"] for c in cohorts),
        "scores": len(rows),
        "weights_sha256": model.model_info.get("weights_sha256"),
    }
    if len(cohorts) > 1:
        source["cohorts"] = cohorts
    if multitask:
        source.update(
            bundle=model.model_info.get("bundle"),
            version=model.model_info.get("version"),
            members=model.model_info.get("members"),
            pipeline="multi-task U-Net (located and scored in one pass) on the image files",
        )
    else:
        source.update(
            symmetry_sha256=model.model_info.get("symmetry_sha256"),
            pipeline="locator -> scorer -> symmetry, end to end on the image files",
        )
        locator = service.models()["locator"]
        if locator is not None:
            source["locator_weights_sha256"] = locator.model_info.get("weights_sha256")
    if held_out is not None:
        source["held_out"] = dict(held_out)
    return calibrate_grades(
        [r[1:] for r in rows], beta=beta, patients=[r[0] for r in rows], source=source
    )


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
