"""The one prediction service: the CLI and the napari dock both predict through here.

:class:`PredictionService` loads each bundle once (the shipped weights or a version retrained in
a project), then predicts

* a folder of radiographs (``ra-joints predict --images``): patient by patient (read, locate,
  score, write, drop), so that peak memory does not grow with the cohort; a file that cannot
  be used is listed with its reason in ``summary.json`` and the rest is processed;
* one patient of a project (the dock's Predict): the store is opened once, each image decoded
  once, centres and scores kept as ``model`` revisions;
* ultrasound pairs through the RATING bundle's own inference config.

Each job is a generator (``iter_*``) that yields :class:`Progress` (done / total) and returns a
result object; it checks a :class:`CancelToken` between images. The plain methods drive the
generator with a callback (the CLI's progress bar); the dock runs the generator in a napari
worker and only renders what comes back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundles import CLINICAL_NOTE
from .cases import CaseTable, identify, patient_groups, shard_by_patient
from .imageio import ImageData, read_image
from .isolation import Cancelled, isolated
from .joint_decoding import LocatorResult, write_to_store
from .locator import JointLocator
from .multitask import MultitaskModel
from .progress import CancelToken, Progress, run_job
from .radiograph import radiograph_files
from .scoring import (
    JointScorer,
    PatchSet,
    PatientScores,
    add_store_cases,
    apply_symmetry,
    cases_from_locator,
    group_patients,
    write_scores_to_store,
)

__all__ = [
    "CancelToken",
    "Cancelled",
    "PatientPrediction",
    "PipelineResult",
    "PredictionService",
    "Progress",
    "UltrasoundPrediction",
    "describe",
    "merge_shards",
    "predict_images",
    "predict_store_patient",
    "run_job",
]

PIPELINES = ("two-stage", "multitask")


def _check(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.check()


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
    failures: list[tuple[str, str]] = []  # a film the locator gives up on costs only itself
    located = locator.predict_images(
        [(path, image, case.limb) for (path, image), case in zip(items, cases, strict=True)],
        batch_size=batch_size,
        failures=failures,
    )
    by_path = {str(result.path): result for result in located}
    patch_set = PatchSet(scorer.patch_size)
    for (path, image), case in zip(items, cases, strict=True):
        if str(path) in by_path:
            result = by_path[str(path)].to_json(locator.model_info)
            patch_set.add(cases_from_locator(result, image, case.patient_id), image)
    patients = scorer.score(patch_set, explain=explain)
    return PipelineResult(
        patients, located, seconds=time.perf_counter() - started, failures=failures
    )


def _write_overlays(
    patients: Sequence[PatientScores],
    located: Sequence[LocatorResult],
    out: Path,
    names: Mapping[str, str] | None = None,
    failures: list[tuple[str, str]] | None = None,
) -> None:
    """``overlays/<name>.png`` per scored image; one overlay that fails is listed, not fatal."""
    from dataclasses import asdict

    from .overlays import radiograph_overlay
    from .paths import path_names

    centres = {r.path: r.present() for r in located}
    images = [image for patient in patients for image in patient.images]
    names = names or path_names(image.case.path for image in images)
    for image in images:
        with isolated(failures, image.case.path, "overlay not written"):
            radiograph_overlay(
                image.case.path,
                out / "overlays" / f"{names[image.case.path]}.png",
                centres=centres.get(image.case.path, {}),
                joints={k: asdict(v) for k, v in image.joints.items()},
                title=f"{image.case.patient_id} {image.case.limb} (phantom-trained model)",
                labels=True,
            )


def _registered_in(
    store: Any, paths: Sequence[Path], failures: list[tuple[str, str]]
) -> list[Path]:
    """The images a ``--store`` run may predict: registered, with the content registered.

    A changed file goes to ``failures`` (left out until re-registered); an unregistered one is
    still predicted to the output files (its scores cannot be stored). When the store would
    take none of them, nothing is written and the error says why.
    """
    from .store import AnnotationStore

    kept, registered = [], 0
    with AnnotationStore.using(store) as db:
        for path in paths:
            record = db.find_image(path)
            problem = db.content_problem(record) if record is not None else None
            if problem:
                failures.append((str(path), problem))
                continue
            registered += record is not None
            kept.append(path)
        if paths and not registered:
            raise ValueError(
                f"none of the {len(paths)} image(s) is registered in {db.path} with its "
                "current content, so nothing would be stored (paths are compared after "
                "resolving against the working directory); register them, or leave out --store"
            )
    return kept


def _add_failures_to_summary(summary: Path, failures: Sequence[tuple[str, str]]) -> None:
    """Failures found after ``summary.json`` was written (overlays) join its list."""
    if not failures or not summary.exists():
        return
    doc = json.loads(summary.read_text())
    doc.setdefault("failed_files", []).extend({"file": f, "reason": r} for f, r in failures)
    summary.write_text(json.dumps(doc, indent=1))


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
    sets = sorted(out.glob("joint_scores.rank*.csv"))
    if sets:  # the grade sets: one header, every rank's rows in patient order
        set_rows: list[list[str]] = []
        header: list[str] = []
        for path in sets:
            with open(path, newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader)
                set_rows += list(reader)
        set_rows.sort(key=lambda r: r[0])  # stable: joints keep their order per patient
        with open(out / "joint_scores.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(set_rows)
        merged["grade_sets"] = part.get("grade_sets")
    (out / "summary.json").write_text(json.dumps(merged, indent=1))
    for path in (*tables, *summaries, *sets):
        path.unlink()
    return merged


@dataclass
class PatientPrediction:
    """What Predict did for one patient of a project (the dock renders this)."""

    patient_id: str
    result: PipelineResult
    skipped: list[str] = field(default_factory=list)  # bundles not available, files not read
    shap_png: Path | None = None
    shap_limbs: dict[str, Path] = field(default_factory=dict)  # one figure per limb
    message: str = ""


@dataclass
class UltrasoundPrediction:
    """What grading ultrasound pairs wrote: the bundle's summary and each pair's record."""

    output_dir: Path
    summary: dict[str, Any]
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # by pair id (a project)
    skipped: list[str] = field(default_factory=list)


class PredictionService:
    """Loads the bundles once and predicts radiographs and ultrasound pairs (module docstring).

    ``pipeline``: ``"two-stage"`` (locator, then scorer + symmetry) or ``"multitask"`` (one
    network). ``bundles_dir``: a folder of bundles instead of the shipped ones; ``bundles``:
    bundle folders by task (``{"locator": path}``) instead of the registered ones;
    ``weights``: weights by task (a retrained version), e.g.
    ``{"locator": project/models/ra_joint_locator/<version>/model.pt}``. A bundle without
    weights is skipped with its reason; the others still run.
    """

    def __init__(
        self,
        pipeline: str = "two-stage",
        *,
        bundles_dir: str | Path | None = None,
        bundles: Mapping[str, str | Path | None] | None = None,
        weights: Mapping[str, str | Path | None] | None = None,
        device: str | None = None,
        members: int | None = None,
        trusted: bool = False,
    ) -> None:
        from .bundles import check_device

        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        if members is not None and pipeline != "multitask":
            raise ValueError("members (ensemble size) belongs to the multitask pipeline")
        self.pipeline = pipeline
        self.bundles_dir = Path(bundles_dir) if bundles_dir else None
        self.bundles = {k: Path(v) for k, v in (bundles or {}).items() if v}
        self.weights = {k: Path(v) for k, v in (weights or {}).items() if v}
        self.device = check_device(device) if device else None
        self.members = members
        self.trusted = trusted  # user-supplied bundles may run (their configs are code)
        self.skipped: list[str] = []
        self._models: dict[str, Any] | None = None
        self._loaded: dict[str, Any] = {}  # models loaded one by one before models()

    @classmethod
    def from_models(
        cls,
        locator: JointLocator | None = None,
        scorer: JointScorer | None = None,
        multitask: MultitaskModel | None = None,
    ) -> PredictionService:
        """A service around models already loaded (tests, benchmarks, notebooks)."""
        service = cls("multitask" if multitask is not None else "two-stage")
        service._models = {"locator": locator, "scorer": scorer, "multitask": multitask}
        return service

    def bundle(self, task: str) -> Any:
        from .bundles import BundleInfo, bundle_for, check_trusted

        given = self.bundles.get(task)
        info = BundleInfo.read(given) if given else bundle_for(task, self.bundles_dir)
        check_trusted(info.root, self.trusted)  # before any of its configs is parsed
        return info

    def _load(self, task: str) -> Any:
        from .bundles import BundleNotFound

        try:
            info = self.bundle(task)
        except BundleNotFound as exc:
            self.skipped.append(f"{task}: not available ({exc})")
            return None
        ok, reason = info.available()
        if not ok and task not in self.weights:
            self.skipped.append(reason)
            return None
        chosen = self.weights.get(task)
        runner = info.runner_object()  # the class the bundle's metadata names
        if task == "multitask":  # an ensemble: a list of member weights, and how many to use
            model = runner.from_bundle(
                info.root,
                device=self.device,
                members=self.members,
                weights=[chosen] if chosen else None,
            )
        else:
            model = runner.from_bundle(
                info.root, device=self.device, weights=str(chosen) if chosen else None
            )
        info_of_model = getattr(model, "model_info", None)
        if isinstance(info_of_model, dict):  # provenance names the bundle actually used
            info_of_model["bundle"] = info.name
            if info.version and not info_of_model.get("version"):
                info_of_model["version"] = info.version
        return model

    @property
    def radiograph_tasks(self) -> tuple[str, ...]:
        """The bundle tasks this service's radiograph pipeline runs."""
        return ("multitask",) if self.pipeline == "multitask" else ("locator", "scorer")

    def models(self) -> dict[str, Any]:
        """``{"locator", "scorer", "multitask"}`` -> loaded model or None, loaded once."""
        if self._models is None:
            self._models = {"locator": None, "scorer": None, "multitask": None}
            for task in self.radiograph_tasks:
                self._models[task] = self._loaded.pop(task, None) or self._load(task)
        return self._models

    def locator(self) -> JointLocator | None:
        """The locator alone (a limb decision needs no scorer), loaded once and shared with
        :meth:`models`; None when its bundle is not available (see ``skipped``)."""
        if self._models is not None:
            return self._models.get("locator") or None
        if "locator" not in self._loaded:
            self._loaded["locator"] = self._load("locator")
        return self._loaded["locator"]

    # -------------------------------------------------------------- one patient of a project

    def iter_predict_patient(
        self,
        project: Any,
        patient_id: str,
        *,
        explain: bool = True,
        cancel: CancelToken | None = None,
    ) -> Generator[Progress, None, PatientPrediction]:
        """Locate and score every radiograph of one patient; results as ``model`` revisions.

        The store is opened once and each image decoded once. With the two-stage pipeline the
        scorer then scores the patches around the **newest** centres in the store, whoever
        placed them - after a person corrected a predicted centre, re-scoring uses it.
        """
        from .store import AnnotationStore

        started = time.perf_counter()
        yield Progress(0, 1, "loading the bundles")
        models = self.models()
        locator, scorer, multitask = models["locator"], models["scorer"], models["multitask"]
        failures: list[tuple[str, str]] = []
        located: list[LocatorResult] = []
        patients: list[PatientScores] = []
        preds: list[Any] = []
        with AnnotationStore.using(project) as store:
            records = [r for r in store.images(modality="radiograph") if r.patient_id == patient_id]
            total = len(records) + (scorer is not None)
            read: dict[str, ImageData] = {}
            for done, record in enumerate(records):
                path = str(store.resolve(record))
                yield Progress(done, total, f"{Path(path).name}: reading")
                _check(cancel)  # a cancel heard at this image stops before it
                changed = store.content_problem(record)
                if changed:  # its annotations belong to other pixels: left out, named
                    failures.append((path, changed))
                    continue
                with isolated(failures, path):  # one image's error costs that image only
                    read[path] = read_image(path)
                if path not in read:
                    continue
                item = [(path, read[path], record.limb)]
                if multitask is not None:
                    yield Progress(done, total, f"{Path(path).name}: locating and scoring")
                    for pred in multitask.predict_images(item, failures=failures):
                        with isolated(failures, path, "not written to the store"):
                            write_to_store(store, pred.located, multitask.model_info)
                            located.append(pred.located)
                            preds.append(pred)
                elif locator is not None:
                    yield Progress(done, total, f"{Path(path).name}: locating joints")
                    for result in locator.predict_images(item, failures=failures):
                        with isolated(failures, path, "not written to the store"):
                            write_to_store(store, result, locator.model_info)
                            located.append(result)
            if multitask is not None:
                from .multitask import patients_of

                patients = patients_of(preds, [patient_id] * len(preds))
                write_scores_to_store(
                    store, patients, multitask.model_info, calibration=multitask.calibration
                )
            elif scorer is not None:
                yield Progress(len(records), total, "scoring joints")
                _check(cancel)
                patch_set = PatchSet(scorer.patch_size)
                add_store_cases(patch_set, store, None, patient_id, images=read)
                failures += patch_set.failures
                collector = scorer.score_patches(patch_set)
                yield Progress(
                    len(records), total, "symmetry stage" + (" + SHAP" if explain else "")
                )
                _check(cancel)  # nothing of the scoring is written yet: a cancel loses no image
                patients = group_patients(collector.image_scores())
                apply_symmetry(patients, scorer.symmetry, explain=explain)
                _check(cancel)
                write_scores_to_store(
                    store, patients, scorer.model_info, calibration=scorer.calibration
                )
            project_dir = store.root
        result = PipelineResult(patients, located, failures, time.perf_counter() - started)
        shap_png, shap_limbs = _shap_png(patients, project_dir / "predictions" / "shap")
        yield Progress(total, total, "done")
        return PatientPrediction(
            patient_id,
            result,
            skipped=list(self.skipped) + [f"{path}: {reason}" for path, reason in failures],
            shap_png=shap_png,
            shap_limbs=shap_limbs,
            message=self._patient_message(patient_id, result, models),
        )

    def predict_patient(
        self,
        project: Any,
        patient_id: str,
        *,
        explain: bool = True,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> PatientPrediction:
        job = self.iter_predict_patient(project, patient_id, explain=explain, cancel=cancel)
        return run_job(job, on_progress)

    @staticmethod
    def _patient_message(patient_id: str, result: PipelineResult, models: dict) -> str:
        if not any(models.values()):
            return "No radiograph bundle is available."
        found = sum(len(r.present()) for r in result.located)
        what = "Multi-task U-Net: " if models["multitask"] is not None else "Predicted "
        return (
            f"{what}{found} joint centres and scores for {patient_id} in "
            f"{result.seconds:.1f} s (model revisions; edit or accept them)"
        )

    # -------------------------------------------------------------- a folder of radiographs

    def iter_predict_folder(
        self,
        images: str | Path,
        out: str | Path,
        *,
        case_table: str | Path | None = None,
        store: str | Path | None = None,
        explain: bool = True,
        chunk: int = 16,
        shard: tuple[int, int] | None = None,
        overlays: bool = True,
        cancel: CancelToken | None = None,
        coverage: float = 0.9,
    ) -> Generator[Progress, None, PipelineResult]:
        """Run the pipeline on every radiograph under ``images``; write the outputs to ``out``.

        Outputs: ``joints/<stem>.json`` (locator), ``scores/<stem>.json``,
        ``scores_ra2dream.csv``, ``joint_scores.csv`` (every grade with its conformal set at
        ``coverage``, see :mod:`annotation_tools.conformal`), ``shap/<patient>.png``,
        ``overlays/<stem>.png`` (centres, names, scores and joint-space outlines on the image),
        ``summary.json`` (with the files that failed and why). The multitask pipeline writes the
        same files (no SHAP: it has no symmetry stage), its grade sets from its own
        ``conformal.json`` (``ra-joints calibrate --task multitask``).

        **Patient by patient**, in sorted patient order (patients found from the case table,
        the DICOM header or the file name, without decoding pixels): a patient's images are
        read, located, cut into patches, scored, given the symmetry stage and written (JSON,
        overlays, store revisions, its row of the RA2-DREAM table), then its pixels and
        patches are dropped, so peak memory does not grow with the cohort. The result keeps
        only the small per-joint objects (:class:`PatientScores`, :class:`LocatorResult`).
        Progress counts images; a cancel is heard between images and keeps the patients
        written so far (the table and ``summary.json`` describe them). ``chunk`` is kept for
        callers and not used.

        ``shard=(rank, world_size)``: this process takes its share of the patients (see
        :func:`shard_by_patient`) and writes ``scores_ra2dream.rank<r>.csv`` and
        ``summary.rank<r>.json``; :func:`merge_shards` joins them when every rank is done.
        """
        from .paths import path_names
        from .scoring import OutputWriter

        models = self.models()
        if self.skipped:
            raise FileNotFoundError("; ".join(self.skipped))
        locator, scorer, multitask = models["locator"], models["scorer"], models["multitask"]
        out = Path(out)
        (out / "joints").mkdir(parents=True, exist_ok=True)
        images = Path(images).expanduser().resolve()  # relative to the working directory
        table = CaseTable.read(case_table, images) if case_table else None
        # what cannot be a hand/foot radiograph (ultrasound, colour, cine, ...) is listed with
        # its reason and never read, so it forms no patient
        paths, refused = radiograph_files(images)
        if shard is not None:
            paths = shard_by_patient(paths, shard[0], shard[1], table)
            refused = refused if shard[0] == 0 else []  # listed once, by rank 0
        names = path_names(paths, images)  # one output name per input, unique in the run
        failures: list[tuple[str, str]] = list(refused)
        if store:  # before anything is written: which images the store will take
            paths = _registered_in(store, paths, failures)
        started = time.perf_counter()
        suffix = f".rank{shard[0]}" if shard is not None else ""
        if multitask is not None:
            info = dict(multitask.model_info)
        else:
            info = {
                **locator.model_info,
                **{f"scorer_{k}": v for k, v in scorer.model_info.items()},
            }
        model = scorer if multitask is None else multitask  # the one whose grades get sets
        calibration = getattr(model, "calibration", None)
        writer = OutputWriter(
            out,
            info,
            suffix=suffix,
            names=names,
            calibration=calibration,
            coverage=coverage,
            calibration_note=getattr(model, "calibration_note", ""),
        )
        patients: list[PatientScores] = []
        located: list[LocatorResult] = []
        noted: list[tuple[str, str]] = []  # symmetry failures: in summary.json as notes
        late: list[tuple[str, str]] = []  # overlays that failed: listed after the rest
        total, done = len(paths), 0
        try:
            for patient_id, group in patient_groups(paths, table):
                batch: list[tuple[str, ImageData, Any]] = []
                for path in group:  # one patient's images (all its limbs), read one by one
                    yield Progress(done, total, f"{patient_id}: reading {path.name}")
                    _check(cancel)  # a cancel heard at this image stops before it
                    with isolated(failures, path):  # unreadable, no limb: this file only
                        image = read_image(path)
                        batch.append((str(path), image, identify(path, image, table)))
                    done += 1
                if not batch:
                    continue
                yield Progress(done, total, f"{patient_id}: locating and scoring")
                _check(cancel)
                if multitask is not None:
                    mine, found = self._multitask_patient(
                        batch, out, store, names, failures, coverage
                    )
                else:
                    mine, found = self._two_stage_patient(
                        batch, out, store, names, failures, explain, patient_id
                    )
                del batch  # the patient's pixels go; its patches went with the scoring
                writer.add(mine)
                if store and multitask is None:
                    with isolated(failures, f"patient {patient_id}", "not written to the store"):
                        write_scores_to_store(
                            store,
                            mine,
                            scorer.model_info,
                            calibration=scorer.calibration,
                            coverage=coverage,
                        )
                noted += [
                    (f"patient {p.patient_id}", p.note)
                    for p in mine
                    if p.note.startswith("symmetry stage failed")
                ]
                if overlays:
                    yield Progress(done, total, f"{patient_id}: overlay PNGs")
                    _write_overlays(mine, found, out, names, late)
                patients += mine
                located += found
        finally:  # also after a cancel: the table and summary say what was written
            writer.close(failures + late)
        yield Progress(total, total, "done")
        failures += noted + late
        return PipelineResult(patients, located, failures, time.perf_counter() - started)

    def _two_stage_patient(
        self,
        batch: list[tuple[str, ImageData, Any]],
        out: Path,
        store: str | Path | None,
        names: Mapping[str, str],
        failures: list[tuple[str, str]],
        explain: bool,
        patient_id: str,
    ) -> tuple[list[PatientScores], list[LocatorResult]]:
        """One patient's images: centres (``joints/*.json``), patches, scores, symmetry."""
        models = self.models()
        locator, scorer = models["locator"], models["scorer"]
        items = [(p, im, c.limb) for p, im, c in batch]
        by_path = {p: (im, c) for p, im, c in batch}
        patch_set = PatchSet(scorer.patch_size)
        found: list[LocatorResult] = []
        for result in locator.predict_images(items, failures=failures):
            image, case = by_path[result.path]
            with isolated(failures, result.path, "patches not cut"):
                doc = result.to_json(locator.model_info)
                radiograph = cases_from_locator(doc, image, case.patient_id)
                patch_set.add(radiograph, image)
                (out / "joints" / f"{names[result.path]}.json").write_text(
                    json.dumps(doc, indent=1)
                )
                found.append(result)
            if store:  # centre proposals beside the scores (none over a person's centre)
                with isolated(failures, result.path, "centres not written to the store"):
                    write_to_store(store, result, locator.model_info)
        scored: list[PatientScores] = []
        with isolated(failures, f"patient {patient_id}", "not scored"):
            scored = scorer.score(patch_set, explain=explain)
        return scored, found

    def _multitask_patient(
        self,
        batch: list[tuple[str, ImageData, Any]],
        out: Path,
        store: str | Path | None,
        names: Mapping[str, str],
        failures: list[tuple[str, str]],
        coverage: float = 0.9,
    ) -> tuple[list[PatientScores], list[LocatorResult]]:
        """One patient's images through the multitask network; joints JSON and the store
        (each grade with its conformal set when the ensemble is calibrated)."""
        from .multitask import write_predictions

        multitask = self.models()["multitask"]
        items = [(p, im, c.limb) for p, im, c in batch]
        ids = {p: c.patient_id for p, _, c in batch}
        preds = multitask.predict_images(items, failures=failures)
        patients = write_predictions(
            preds,
            [ids[p.located.path] for p in preds],
            out,
            multitask.model_info,
            store,
            names=names,
            write_scores=False,
            calibration=multitask.calibration,
            coverage=coverage,
        )
        return patients, [p.located for p in preds]

    def predict_folder(
        self,
        images: str | Path,
        out: str | Path,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        **options: Any,
    ) -> PipelineResult:
        return run_job(self.iter_predict_folder(images, out, **options), on_progress)

    # -------------------------------------------------------------- ultrasound

    def grade_ultrasound(
        self,
        out: str | Path,
        *,
        pairs_table: str | Path | None = None,
        project: str | Path | None = None,
        patient_id: str | None = None,
        pair_id: int | None = None,
        explain: bool = True,
        explain_steps: int | None = None,
        explain_copies: int | None = None,
        progress: bool = True,
        auto_roi: bool = False,
        coverage: float | None = None,
    ) -> UltrasoundPrediction:
        """The RATING bundle's own ``inference.json`` on a pairs table or a project's pairs.

        With ``project`` the grades become ``model`` revisions (proposals) there; ``pair_id``
        grades one pair of it, ``patient_id`` one patient's pairs. Heatmaps come from one
        member (fast enough for a folder; RATING's 50 steps x 8 noisy copies unless told).
        ``auto_roi``: pairs without a drawn ROI are cut with the proposed joint-recess box; in a
        project the proposal is recorded as a ``model`` ROI revision (a person's box is never
        replaced, and is always the one used when there is one). ``coverage``: of the
        conformal grade sets in ``ultrasound_grades.csv`` (the bundle's default, 0.9, unless
        told; sets only when the ensemble is calibrated, :mod:`annotation_tools.us_conformal`).
        """
        from .us_rating import run_bundle_inference

        info = self.bundle("ultrasound")
        chosen = self.weights.get("ultrasound")
        ok, reason = info.available()
        if not ok and chosen is None:
            raise FileNotFoundError(reason)
        overrides: dict[str, Any] = {"explain": explain, "progress": progress}
        if explain:
            overrides["explain_members"] = 1
        if explain_steps is not None:
            overrides["explain_steps"] = explain_steps
        if explain_copies is not None:
            overrides["explain_copies"] = explain_copies
        if pairs_table is not None:
            overrides["pairs_table"] = str(pairs_table)
        if project is not None:
            overrides.update(store=str(project), write_store=True)
        if patient_id is not None:
            overrides["patient_id"] = patient_id
        if pair_id is not None:
            overrides["pair_id"] = int(pair_id)
        if auto_roi:
            overrides["auto_roi"] = True
        if coverage is not None:
            overrides["coverage"] = float(coverage)
        if chosen is not None:  # a retrained ensemble: its folder holds the manifest
            overrides["models_dir"] = str(Path(chosen).parent)
        if self.device:  # an object through the parser's overrides, never an expression
            import torch

            overrides["device"] = torch.device(self.device)
        out = Path(out)
        summary = run_bundle_inference(info.root, out, **overrides)
        records: dict[int, dict[str, Any]] = {}
        for path in out.glob("*_pair*.json"):
            try:
                records[int(path.stem.rsplit("_pair", 1)[1])] = json.loads(path.read_text())
            except (ValueError, IndexError):
                continue
        skipped = [f"{f['case']} ({f['file']}): {f['reason']}" for f in summary["failed"]]
        return UltrasoundPrediction(out, summary, records, skipped)


def _shap_png(
    patients: Sequence[PatientScores], folder: Path
) -> tuple[Path | None, dict[str, Path]]:
    """The symmetry stage's SHAP of the (one) patient, when it was explained: the overview of
    all four limbs, and one figure per limb with the joints named on both axes."""
    from .paths import safe_name
    from .symmetry import plot_shap, plot_shap_limb

    png, per_limb = None, {}
    for patient in patients:
        if patient.shap is None:
            continue
        name = safe_name(patient.patient_id)
        png = plot_shap(
            patient.shap,
            folder / f"{name}.png",
            title=f"SHAP of the symmetry stage - {patient.patient_id}",
            note=CLINICAL_NOTE,
        )
        for limb in patient.limbs():
            per_limb[limb] = plot_shap_limb(
                patient.shap,
                folder / f"{name}_{limb}.png",
                limb,
                title=f"What the {limb} scores of {patient.patient_id} leaned on (SHAP)",
                note=CLINICAL_NOTE,
            )
    return png, per_limb


def predict_store_patient(
    project: str | Path,
    patient_id: str,
    locator: JointLocator | None,
    scorer: JointScorer | None,
    *,
    explain: bool = True,
    multitask: MultitaskModel | None = None,
) -> PipelineResult:
    """:meth:`PredictionService.iter_predict_patient` with models already loaded."""
    service = PredictionService.from_models(locator, scorer, multitask)
    return service.predict_patient(project, patient_id, explain=explain).result


def describe(result: PipelineResult) -> dict[str, Any]:
    return {
        "patients": len(result.patients),
        "radiographs": len(result.located),
        "failed_files": len(result.failures),
        "seconds": round(result.seconds, 2),
    }
