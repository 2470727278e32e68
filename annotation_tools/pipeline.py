"""The whole radiograph pipeline on a folder: locate joints, score patches, symmetry, write.

``ra-joints predict --images DIR --out OUT`` and the scorer benchmark run this. Files are read
once, in chunks (memory stays flat on large folders); a file that cannot be used is listed
with its reason in ``summary.json`` and the rest is processed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import CaseTable, identify
from .imageio import ImageData, ImageReadError, read_image
from .locator import JointLocator, LocatorResult, image_files
from .scoring import (
    JointScorer,
    PatchSet,
    PatientScores,
    cases_from_locator,
    write_outputs,
    write_scores_to_store,
)

__all__ = ["PipelineResult", "predict_folder", "predict_images"]


@dataclass
class PipelineResult:
    patients: list[PatientScores]
    located: list[LocatorResult]
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def predict_images(
    items: Sequence[tuple[str, ImageData]],
    locator: JointLocator,
    scorer: JointScorer,
    *,
    table: CaseTable | None = None,
    explain: bool = False,
    batch_size: int = 8,
) -> PipelineResult:
    """Already-read radiographs ``(path, image)`` -> scored patients (one patient or many)."""
    started = time.perf_counter()
    cases = [identify(path, image, table) for path, image in items]
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
    locator: JointLocator,
    scorer: JointScorer,
    *,
    case_table: str | Path | None = None,
    store: str | Path | None = None,
    explain: bool = True,
    chunk: int = 16,
    progress: bool = True,
) -> PipelineResult:
    """Run the pipeline on every radiograph under ``images`` and write the outputs to ``out``.

    Outputs: ``joints/<stem>.json`` (locator), ``scores/<stem>.json``, ``scores_ra2dream.csv``,
    ``shap/<patient>.png``, ``summary.json`` (with the files that failed and why).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    (out / "joints").mkdir(parents=True, exist_ok=True)
    table = CaseTable.read(case_table, images) if case_table else None
    paths = image_files(images)
    failures: list[tuple[str, str]] = []
    started = time.perf_counter()
    patch_set = PatchSet(scorer.patch_size)
    located: list[LocatorResult] = []
    bar = tqdm(total=len(paths), desc="locate + cut patches", disable=not progress)
    for start in range(0, len(paths), chunk):
        batch: list[tuple[str, ImageData]] = []
        for path in paths[start : start + chunk]:
            try:
                batch.append((str(path), read_image(path)))
            except ImageReadError as exc:
                failures.append((str(path), exc.reason))
        cases = [identify(p, im, table) for p, im in batch]
        results = locator.predict_images(
            [(p, im, c.limb) for (p, im), c in zip(batch, cases, strict=True)]
        )
        for (path, image), case, result in zip(batch, cases, results, strict=True):
            doc = result.to_json(locator.model_info)
            (out / "joints" / f"{Path(path).stem}.json").write_text(json.dumps(doc, indent=1))
            patch_set.add(cases_from_locator(doc, image, case.patient_id), image)
        located += results
        bar.update(len(paths[start : start + chunk]))
    bar.close()
    patch_set.failures += failures
    patients = scorer.score(patch_set, explain=explain, progress=progress)
    info = {**locator.model_info, **{f"scorer_{k}": v for k, v in scorer.model_info.items()}}
    write_outputs(patients, patch_set.failures, out, info)
    if store:
        write_scores_to_store(store, patients, scorer.model_info)
    return PipelineResult(patients, located, failures, time.perf_counter() - started)


def pipeline_from_bundles(
    locator_bundle: str | Path | None = None,
    scorer_bundle: str | Path | None = None,
    device: str | None = None,
) -> tuple[JointLocator, JointScorer]:
    """The shipped locator and scorer (or the given bundle folders)."""
    from .benchmark import BUNDLES_DIR

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
