"""The whole radiograph pipeline on a folder: locate joints, score patches, symmetry, write.

``ra-joints predict --images DIR --out OUT`` and the scorer benchmark run this. Files are read
once, in chunks (memory stays flat on large folders); a file that cannot be used is listed
with its reason in ``summary.json`` and the rest is processed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import CaseTable, identify, shard_by_patient
from .imageio import ImageData, ImageReadError, read_image
from .locator import JointLocator, LocatorResult, image_files, write_to_store
from .multitask import MultitaskModel
from .scoring import (
    JointScorer,
    PatchSet,
    PatientScores,
    cases_from_locator,
    load_patch_set,
    write_outputs,
    write_scores_to_store,
)

__all__ = [
    "PipelineResult",
    "merge_shards",
    "predict_folder",
    "predict_images",
    "predict_store_patient",
]


@dataclass
class PipelineResult:
    patients: list[PatientScores]
    located: list[LocatorResult]
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def predict_images(
    items: Sequence[tuple[str, ImageData]],
    locator: JointLocator | None,
    scorer: JointScorer | None,
    *,
    table: CaseTable | None = None,
    explain: bool = False,
    batch_size: int = 8,
    multitask: MultitaskModel | None = None,
) -> PipelineResult:
    """Already-read radiographs ``(path, image)`` -> scored patients (one patient or many).

    With ``multitask`` the one-network pipeline runs instead of ``locator`` + ``scorer``.
    """
    started = time.perf_counter()
    cases = [identify(path, image, table) for path, image in items]
    if multitask is not None:
        from .multitask import patients_of

        preds = multitask.predict_images(
            [(path, image, case.limb) for (path, image), case in zip(items, cases, strict=True)]
        )
        patients = patients_of(preds, [case.patient_id for case in cases])
        located = [p.located for p in preds]
        return PipelineResult(patients, located, seconds=time.perf_counter() - started)
    assert locator is not None and scorer is not None, "two-stage needs a locator and a scorer"
    located = locator.predict_images(
        [(path, image, case.limb) for (path, image), case in zip(items, cases, strict=True)],
        batch_size=batch_size,
    )
    patch_set = PatchSet(scorer.patch_size)
    for (_, image), case, result in zip(items, cases, located, strict=True):
        patch_set.add(
            cases_from_locator(result.to_json(locator.model_info), image, case.patient_id),
            image,
        )
    patients = scorer.score(patch_set, explain=explain)
    return PipelineResult(patients, located, seconds=time.perf_counter() - started)


def predict_folder(
    images: str | Path,
    out: str | Path,
    locator: JointLocator | None,
    scorer: JointScorer | None,
    *,
    multitask: MultitaskModel | None = None,
    case_table: str | Path | None = None,
    store: str | Path | None = None,
    explain: bool = True,
    chunk: int = 16,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    overlays: bool = True,
) -> PipelineResult:
    """Run the pipeline on every radiograph under ``images`` and write the outputs to ``out``.

    Outputs: ``joints/<stem>.json`` (locator), ``scores/<stem>.json``, ``scores_ra2dream.csv``,
    ``shap/<patient>.png``, ``overlays/<stem>.png`` (centres, names, scores and joint-space
    outlines on the image), ``summary.json`` (with the files that failed and why).

    With ``multitask`` the one-network pipeline replaces ``locator`` + ``scorer``; the outputs
    are the same files (no SHAP: it has no symmetry stage).

    ``shard=(rank, world_size)``: this process takes its share of the patients (see
    :func:`shard_by_patient`) and writes ``scores_ra2dream.rank<r>.csv`` and
    ``summary.rank<r>.json``; :func:`merge_shards` joins them when every rank is done.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    (out / "joints").mkdir(parents=True, exist_ok=True)
    table = CaseTable.read(case_table, images) if case_table else None
    paths = image_files(images)
    if shard is not None:
        paths = shard_by_patient(paths, shard[0], shard[1], table)
    failures: list[tuple[str, str]] = []
    started = time.perf_counter()
    suffix = f".rank{shard[0]}" if shard is not None else ""
    patch_set = PatchSet(scorer.patch_size) if multitask is None else None
    predictions: list[Any] = []
    patient_ids: list[str] = []
    located: list[LocatorResult] = []
    desc = "locate + score" if multitask is not None else "locate + cut patches"
    bar = tqdm(total=len(paths), desc=desc, disable=not progress)
    for start in range(0, len(paths), chunk):
        batch: list[tuple[str, ImageData]] = []
        for path in paths[start : start + chunk]:
            try:
                batch.append((str(path), read_image(path)))
            except ImageReadError as exc:
                failures.append((str(path), exc.reason))
        cases = [identify(p, im, table) for p, im in batch]
        items = [(p, im, c.limb) for (p, im), c in zip(batch, cases, strict=True)]
        if multitask is not None:
            chunk_preds = multitask.predict_images(items)
            predictions += chunk_preds
            patient_ids += [c.patient_id for c in cases]
            located += [p.located for p in chunk_preds]
        else:
            results = locator.predict_images(items)
            for (path, image), case, result in zip(batch, cases, results, strict=True):
                doc = result.to_json(locator.model_info)
                (out / "joints" / f"{Path(path).stem}.json").write_text(json.dumps(doc, indent=1))
                patch_set.add(cases_from_locator(doc, image, case.patient_id), image)
            located += results
        bar.update(len(paths[start : start + chunk]))
    bar.close()
    if multitask is not None:
        from .multitask import write_predictions

        patients = write_predictions(
            predictions, patient_ids, out, multitask.model_info, store, failures, suffix
        )
    else:
        patch_set.failures += failures
        patients = scorer.score(patch_set, explain=explain, progress=progress)
        info = {**locator.model_info, **{f"scorer_{k}": v for k, v in scorer.model_info.items()}}
        write_outputs(patients, patch_set.failures, out, info, suffix=suffix)
        if store:
            write_scores_to_store(store, patients, scorer.model_info)
    if overlays:
        _write_overlays(patients, located, out, progress)
    return PipelineResult(patients, located, failures, time.perf_counter() - started)


def predict_store_patient(
    project: str | Path,
    patient_id: str,
    locator: JointLocator | None,
    scorer: JointScorer | None,
    *,
    explain: bool = True,
    report: Callable[[str], None] = lambda message: None,
    multitask: MultitaskModel | None = None,
) -> PipelineResult:
    """Predict one patient of a project and keep the results there as ``model`` revisions.

    With ``multitask`` the one-network pipeline locates and scores every radiograph of the
    patient (``locator`` and ``scorer`` are not used).

    With a locator, every radiograph of the patient is located first. The scorer then scores
    the patches around the **newest** centres in the store, whoever placed them - after a
    person corrected a predicted centre, re-scoring uses the corrected one. ``report`` hears
    each step (the napari plugin's progress bar).
    """
    from .store import AnnotationStore

    started = time.perf_counter()
    located: list[LocatorResult] = []
    failures: list[tuple[str, str]] = []
    if locator is not None or multitask is not None:
        with AnnotationStore.open(project, create=False) as store:
            records = [r for r in store.images(modality="radiograph") if r.patient_id == patient_id]
            items = []
            for record in records:
                path = store.resolve(record)
                try:
                    items.append((str(path), read_image(path), record.limb))
                except ImageReadError as exc:
                    failures.append((str(path), exc.reason))
    if multitask is not None:
        from .multitask import patients_of

        report(f"locating and scoring joints on {len(items)} radiograph(s)")
        preds = multitask.predict_images(items)
        for pred in preds:
            write_to_store(project, pred.located, multitask.model_info)
        patients = patients_of(preds, [patient_id] * len(preds))
        write_scores_to_store(project, patients, multitask.model_info)
        located = [p.located for p in preds]
        return PipelineResult(patients, located, failures, time.perf_counter() - started)
    if locator is not None:
        report(f"locating joints on {len(items)} radiograph(s)")
        located = locator.predict_images(items)
        for result in located:
            write_to_store(project, result, locator.model_info)
    patients: list[PatientScores] = []
    if scorer is not None:
        report("scoring joints")
        patch_set = load_patch_set(
            store=project, patch_size=scorer.patch_size, patient_id=patient_id
        )
        failures += patch_set.failures
        patients = scorer.score(patch_set, explain=explain)
        write_scores_to_store(project, patients, scorer.model_info)
    return PipelineResult(patients, located, failures, time.perf_counter() - started)


def _write_overlays(
    patients: Sequence[PatientScores], located: Sequence[LocatorResult], out: Path, progress: bool
) -> None:
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from .overlays import radiograph_overlay

    centres = {r.path: r.present() for r in located}
    images = [image for patient in patients for image in patient.images]
    for image in tqdm(images, desc="overlay PNGs", disable=not progress):
        radiograph_overlay(
            image.case.path,
            out / "overlays" / f"{Path(image.case.path).stem}.png",
            centres=centres.get(image.case.path, {}),
            joints={k: asdict(v) for k, v in image.joints.items()},
            title=f"{image.case.patient_id} {image.case.limb} (phantom-trained model)",
            labels=True,
        )


def merge_shards(out: str | Path) -> dict[str, Any]:
    """Join the per-rank tables and summaries of a sharded run into the usual outputs."""
    import csv

    out = Path(out)
    tables = sorted(out.glob("scores_ra2dream.rank*.csv"))
    summaries = sorted(out.glob("summary.rank*.json"))
    if not tables or len(tables) != len(summaries):
        raise FileNotFoundError(f"no complete set of rank outputs in {out}")
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    for path in tables:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = fields or list(reader.fieldnames or [])
            rows += list(reader)
    rows.sort(key=lambda r: r["Patient_ID"])
    with open(out / "scores_ra2dream.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    merged: dict[str, Any] = {"patients": [], "failed_files": [], "ranks": len(summaries)}
    for path in summaries:
        part = json.loads(path.read_text())
        merged["model"] = part["model"]
        merged["note"] = part["note"]
        merged["patients"] += part["patients"]
        merged["failed_files"] += part["failed_files"]
    merged["patients"].sort(key=lambda p: p["patient_id"])
    (out / "summary.json").write_text(json.dumps(merged, indent=1))
    for path in (*tables, *summaries):
        path.unlink()
    return merged


def pipeline_from_bundles(
    locator_bundle: str | Path | None = None,
    scorer_bundle: str | Path | None = None,
    device: str | None = None,
) -> tuple[JointLocator, JointScorer]:
    """The shipped locator and scorer (or the given bundle folders)."""
    from .bundles import BUNDLES_DIR

    locator = JointLocator.from_bundle(
        locator_bundle or BUNDLES_DIR / "ra_joint_locator", device=device
    )
    scorer = JointScorer.from_bundle(
        scorer_bundle or BUNDLES_DIR / "ra_joint_scorer", device=device
    )
    return locator, scorer


def describe(result: PipelineResult) -> dict[str, Any]:
    return {
        "patients": len(result.patients),
        "radiographs": len(result.located),
        "failed_files": len(result.failures),
        "seconds": round(result.seconds, 2),
    }
