"""Scoring radiographs: cases -> joint patches -> patch scores -> symmetry -> outputs.

The second stage of the radiograph pipeline, shared by the ``ra_joint_scorer`` bundle's
``inference.json`` (MONAI evaluator), by :class:`JointScorer` (``ra-joints predict``, the
benchmark, the napari plugin) and by the tests.

* A :class:`RadiographCase` is one radiograph with its patient, limb and joint centres, from
  the locator's JSON, from the annotation store, or given directly. Joints the locator
  flagged missing (or an annotator marked not visible) get no patch and no score.
* A :class:`PatchSet` holds the patches of many cases plus the files that could not be used
  and why; one bad file never stops the rest.
* Patch scores are decoded by :func:`annotation_tools.scorer.decode_scores`; the joint-space
  mask becomes a polygon in image pixels (editable in napari).
* Per patient, the symmetry model refines the scores when all four limbs are present; with
  fewer limbs the patch scores stand and the output says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from .bundles import CLINICAL_NOTE
from .cases import CaseTable, identify
from .imageio import ImageData, ImageReadError, file_sha256, read_image
from .radiograph import image_files
from .scorer import decode_scores, split_output
from .seeds import check_training_seed, cohort_seed
from .symmetry import SCORE_INDEX, SymmetryModel, SymmetryModelError, patient_vector, plot_shap
from .targets import joint_patch, normalise_intensity, patch_to_image, polygon_problem
from .vocabulary import (
    LIMBS,
    Limb,
    dream_column,
    dream_row,
    get_joint,
    joints_for_limb,
)

__all__ = [
    "BUNDLE_NAME",
    "CollectPatchScoresd",
    "ImageScores",
    "JointScore",
    "JointScorer",
    "OutputWriter",
    "PatchSet",
    "PatientScores",
    "RadiographCase",
    "ScoreWriter",
    "cases_from_locator",
    "load_patch_set",
    "mask_polygon",
]

BUNDLE_NAME = "ra_joint_scorer"
FEWER_LIMBS = "symmetry stage skipped: it needs all four limbs ({missing} missing); patch scores"


# ------------------------------------------------------------------------------ cases


@dataclass
class RadiographCase:
    """One radiograph to score. ``centres[joint] is None``: flagged missing / not visible."""

    path: str
    patient_id: str
    limb: str
    image_shape: tuple[int, int]
    centres: dict[str, tuple[float, float] | None]
    centre_source: str  # locator | store | given
    image_id: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class PatchSet:
    """Patches of many radiographs, ready for the network, plus what could not be used."""

    patch_size: int
    cases: list[RadiographCase] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)  # {"image", "index"}
    meta: list[dict[str, Any]] = field(default_factory=list)  # per patch, same order
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def add(self, case: RadiographCase, image: ImageData) -> None:
        """Cut the patch of every located joint (right limbs mirrored; borders padded)."""
        pixels = normalise_intensity(image.grey())
        mirrored = Limb.parse(case.limb).side == "right"
        case_index = len(self.cases)
        items: list[dict[str, Any]] = []
        meta: list[dict[str, Any]] = []
        for joint in joints_for_limb(case.limb):  # all patches first: an error adds nothing
            xy = case.centres.get(joint.id)
            if xy is None:
                continue
            patch = joint_patch(pixels, joint, xy, size=self.patch_size, mirror=mirrored)
            index = len(self.meta) + len(meta)
            items.append({"image": patch.image[None].astype(np.float32), "index": index})
            meta.append(
                {
                    "case": case_index,
                    "joint_id": joint.id,
                    "erosion_max": joint.max_score("erosion") if joint.erosion else 0,
                    "narrowing": joint.narrowing,
                    "centre": patch.centre,
                    "side": patch.side,
                    "mirrored": mirrored,
                }
            )
        self.cases.append(case)
        self.items += items
        self.meta += meta


def _check_centres(
    centres: Mapping[str, Any], limb: str, shape: tuple[int, int]
) -> tuple[dict[str, tuple[float, float] | None], list[str]]:
    """Keep centres of this limb's joints; far-off ones are dropped with a warning."""
    out: dict[str, tuple[float, float] | None] = {}
    warnings = []
    h, w = shape
    known = {j.id for j in joints_for_limb(limb)}
    for joint_id, xy in centres.items():
        if joint_id not in known:
            warnings.append(f"{joint_id} is not a joint of {limb}; ignored")
            continue
        if xy is None:
            out[joint_id] = None
            continue
        x, y = float(xy[0]), float(xy[1])
        if not (-0.25 * w <= x <= 1.25 * w and -0.25 * h <= y <= 1.25 * h):
            warnings.append(f"{joint_id} centre ({x:.0f}, {y:.0f}) is far outside the image")
            out[joint_id] = None
            continue
        out[joint_id] = (x, y)  # near the border: the patch is padded, not dropped
    return out, warnings


def cases_from_locator(
    result_json: Mapping[str, Any], image: ImageData, patient_id: str
) -> RadiographCase:
    """A case from the locator's per-image JSON (``SaveJointsJSONd`` / ``LocatorResult``)."""
    limb = result_json["limb"]
    raw = {
        k: (None if v.get("missing") else (v["x"], v["y"]))
        for k, v in result_json.get("joints", {}).items()
    }
    centres, warnings = _check_centres(raw, limb, image.shape)
    return RadiographCase(
        path=str(result_json["image"]),
        patient_id=patient_id,
        limb=limb,
        image_shape=tuple(image.shape),
        centres=centres,
        centre_source="locator",
        warnings=[*result_json.get("warnings", []), *warnings],
    )


def _read(path: str | Path, failures: list[tuple[str, str]]) -> ImageData | None:
    try:
        return read_image(path)
    except ImageReadError as exc:
        failures.append((str(path), exc.reason))
        return None


def load_patch_set(
    images: str | Path | None = None,
    *,
    centres_dir: str | Path | None = None,
    store: str | Path | None = None,
    case_table: str | Path | None = None,
    patch_size: int = 64,
    sources: Sequence[str] | None = None,
    patient_id: str | None = None,
) -> PatchSet:
    """Patches of a folder of radiographs (centres from locator JSONs) or of a project.

    * ``store`` (a project folder): every radiograph of the project (or of ``patient_id``) with
      the newest centres of ``sources`` (default: any source - a human correction is newer than
      the model output it corrects).
    * ``images`` + ``centres_dir``: each image needs ``<centres_dir>/<stem>.json`` written by
      the locator; patient ids come from ``case_table``, DICOM tags or the file name.
    """
    patch_set = PatchSet(int(patch_size))
    if store:
        add_store_cases(patch_set, store, sources, patient_id)
        return patch_set
    if images is None or centres_dir is None:
        raise ValueError("give a project (store) or a folder of images with centres_dir")
    table = CaseTable.read(case_table, images) if case_table else None
    for path in image_files(images):
        centres_file = Path(centres_dir) / f"{path.stem}.json"
        if not centres_file.exists():
            patch_set.failures.append((str(path), f"no joint centres ({centres_file} missing)"))
            continue
        image = _read(path, patch_set.failures)
        if image is None:
            continue
        try:
            located = json.loads(centres_file.read_text())
            case = cases_from_locator(located, image, identify(path, image, table).patient_id)
        except (ValueError, KeyError, TypeError) as exc:
            patch_set.failures.append((str(path), f"unusable centres file {centres_file}: {exc}"))
            continue
        case.path = str(path)
        patch_set.add(case, image)
    return patch_set


def add_store_cases(
    patch_set: PatchSet,
    project: Any,
    sources: Any,
    patient_id: str | None = None,
    images: Mapping[str, ImageData] | None = None,
) -> None:
    """Cases of a project's radiographs (or one patient's) with their newest centres.

    ``project``: a project path or an open store; ``images``: radiographs already read, by
    path, so that the prediction service decodes each image only once (an image missing from
    it could not be read, and the caller has reported it).
    """
    from .store import AnnotationStore

    with AnnotationStore.using(project) as db:
        for record in db.images(modality="radiograph"):
            if patient_id is not None and record.patient_id != patient_id:
                continue
            path = db.resolve(record)
            if images is None and (changed := db.content_problem(record)):
                patch_set.failures.append((str(path), changed))
                continue
            image = images.get(str(path)) if images is not None else _read(path, patch_set.failures)
            if image is None:
                continue
            raw = {
                k: (None if r.status == "not_visible" else (r.value["x"], r.value["y"]))
                for k, r in db.centres(record.id, sources=sources).items()
            }
            if not raw:
                patch_set.failures.append((str(path), "no joint centres in the store"))
                continue
            centres, warnings = _check_centres(raw, record.limb, image.shape)
            case = RadiographCase(
                str(path),
                record.patient_id,
                record.limb,
                tuple(image.shape),
                centres,
                "store",
                image_id=record.id,
                warnings=warnings,
            )
            patch_set.add(case, image)


# ------------------------------------------------------------------------------ results


@dataclass
class JointScore:
    joint_id: str
    name: str
    narrowing: float | None = None
    erosion: float | None = None
    narrowing_sd: float | None = None  # uncertainty: class spread (patch) / tree spread (symmetry)
    erosion_sd: float | None = None
    patch_narrowing: float | None = None  # before the symmetry stage
    patch_erosion: float | None = None
    stage: str = "missing"  # patch | symmetry | missing (no centre: no score)
    polygon: list[list[float]] | None = None  # joint space in image (x, y)


@dataclass
class ImageScores:
    case: RadiographCase
    joints: dict[str, JointScore]

    def to_json(self, model: Mapping[str, str]) -> dict[str, Any]:
        return {
            "image": self.case.path,
            "patient_id": self.case.patient_id,
            "limb": self.case.limb,
            "image_size": list(self.case.image_shape),
            "centres_from": self.case.centre_source,
            "coordinates": "original image pixels, x = column, y = row",
            "model": dict(model),
            "joints": {
                k: {
                    kk: (None if isinstance(vv, float) and not np.isfinite(vv) else vv)
                    for kk, vv in asdict(v).items()
                    if kk != "joint_id"
                }
                for k, v in self.joints.items()
            },
            "warnings": list(self.case.warnings),
            "note": CLINICAL_NOTE,
        }


@dataclass
class PatientScores:
    patient_id: str
    images: list[ImageScores]
    symmetry: bool = False
    note: str = ""
    shap: np.ndarray | None = None
    shap_base: np.ndarray | None = None

    def scores(self, stage: str = "final") -> dict[tuple[str, str], float | None]:
        """``(joint_id, score_type) -> score``; ``stage="patch"`` gives the pre-symmetry ones."""
        out: dict[tuple[str, str], float | None] = {}
        for image in self.images:
            for joint_id, js in image.joints.items():
                joint = get_joint(joint_id)
                for st in joint.score_types:
                    value = getattr(js, f"patch_{st.value}" if stage == "patch" else st.value)
                    out[(joint_id, st.value)] = value
        return out

    def limbs(self) -> set[str]:
        return {im.case.limb for im in self.images}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def mask_polygon(
    mask_logit: np.ndarray,
    centre: Sequence[float],
    side: float,
    mirrored: bool,
    max_vertices: int = 24,
) -> list[list[float]] | None:
    """Joint-space mask of a patch -> outline polygon in image ``(x, y)`` (None if empty)."""
    from skimage import measure

    from .targets import Patch

    binary = np.asarray(mask_logit) > 0
    if not binary.any():
        return None
    labels = measure.label(binary)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    region = np.pad(labels == largest, 1)
    contours = measure.find_contours(region.astype(float), 0.5)
    if not contours:
        return None
    contour = max(contours, key=len)[:-1] - 1  # closed: last point repeats the first
    if len(contour) > max_vertices:  # even spacing keeps the outline and stays editable
        contour = contour[np.linspace(0, len(contour), max_vertices, endpoint=False).astype(int)]
    if len(contour) < 3:
        return None
    geometry = Patch(np.zeros(binary.shape, np.float32), tuple(centre), float(side))
    xy = patch_to_image(geometry, contour[:, ::-1], mirrored)
    polygon = [[round(float(x), 2), round(float(y), 2)] for x, y in xy]
    return None if polygon_problem(polygon) else polygon


class PatchScoreCollector:
    """Decode network outputs patch by patch and keep them by case (both inference paths)."""

    def __init__(self, patch_set: PatchSet, head: str, segmentation: bool = True):
        self.patch_set = patch_set
        self.head = head
        self.segmentation = segmentation
        self.results: dict[int, dict[str, Any]] = {}

    def add(self, pred: torch.Tensor, indices: Sequence[int]) -> None:
        """``pred`` (B, 1 + K, S, S) for the patches ``indices``."""
        scores, mask = split_output(pred)
        metas = [self.patch_set.meta[int(i)] for i in indices]
        decoded = decode_scores(
            scores,
            self.head,
            [m["erosion_max"] for m in metas],
            [m["narrowing"] for m in metas],
        )
        masks = mask[:, 0].detach().float().cpu().numpy()
        for b, (index, meta) in enumerate(zip(indices, metas, strict=True)):
            polygon = None
            if self.segmentation and meta["narrowing"]:
                polygon = mask_polygon(masks[b], meta["centre"], meta["side"], meta["mirrored"])
            self.results[int(index)] = {
                "narrowing": _finite(decoded.narrowing[b]),
                "erosion": _finite(decoded.erosion[b]),
                "narrowing_sd": _finite(decoded.narrowing_sd[b]),
                "erosion_sd": _finite(decoded.erosion_sd[b]),
                "polygon": polygon,
            }

    def image_scores(self) -> list[ImageScores]:
        """Every case with a score per located joint and 'missing' for the others."""
        by_case: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
        for index, result in self.results.items():
            meta = self.patch_set.meta[index]
            by_case[meta["case"]][meta["joint_id"]] = result
        out = []
        for c, case in enumerate(self.patch_set.cases):
            joints = {}
            for joint in joints_for_limb(case.limb):
                r = by_case[c].get(joint.id)
                if r is None:
                    joints[joint.id] = JointScore(joint.id, joint.name)
                    continue
                joints[joint.id] = JointScore(
                    joint.id,
                    joint.name,
                    narrowing=r["narrowing"],
                    erosion=r["erosion"],
                    narrowing_sd=r["narrowing_sd"],
                    erosion_sd=r["erosion_sd"],
                    patch_narrowing=r["narrowing"],
                    patch_erosion=r["erosion"],
                    stage="patch",
                    polygon=r["polygon"],
                )
            out.append(ImageScores(case, joints))
        return out


class CollectPatchScoresd(MapTransform):
    """Post-processing step of ``inference.json``: hand each decollated patch to a collector."""

    def __init__(self, collector: PatchScoreCollector, keys: str = "pred"):
        super().__init__(keys)
        self.collector = collector

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        index = int(torch.as_tensor(d["index"]).reshape(-1)[0])
        self.collector.add(torch.as_tensor(d["pred"])[None], [index])
        return d


def group_patients(images: Iterable[ImageScores]) -> list[PatientScores]:
    by_patient: dict[str, list[ImageScores]] = defaultdict(list)
    for image in images:
        by_patient[image.case.patient_id].append(image)
    return [PatientScores(pid, by_patient[pid]) for pid in sorted(by_patient)]


def apply_symmetry(
    patients: Sequence[PatientScores],
    model: SymmetryModel | None,
    explain: bool = False,
    progress: bool = False,
) -> None:
    """Refine each complete patient's scores in place; say why when a patient is skipped.

    With ``explain`` the SHAP values are computed too (about 0.2 s per patient; ``progress``
    shows a bar).
    """
    from tqdm.auto import tqdm

    desc = "symmetry + SHAP" if explain else "symmetry"
    for patient in tqdm(patients, desc=desc, disable=not (progress and explain)):
        try:
            _symmetry_of_patient(patient, model, explain)
        except Exception as exc:  # that patient keeps its patch scores; the others go on
            from .isolation import Cancelled, reason_of

            if isinstance(exc, Cancelled):
                raise
            patient.note = f"symmetry stage failed ({reason_of(exc)}); patch scores"


def _symmetry_of_patient(
    patient: PatientScores, model: SymmetryModel | None, explain: bool
) -> None:
    """One patient's symmetry stage; everything is computed before anything is changed, so a
    failure leaves the patch scores as they were."""
    limbs = patient.limbs()
    duplicated = len(limbs) < len(patient.images)
    missing = [lb.value for lb in LIMBS if lb.value not in limbs]
    if model is None:
        patient.note = "no symmetry model: patch scores"
        return
    if missing or duplicated:
        patient.note = (
            FEWER_LIMBS.format(missing=", ".join(missing))
            if missing
            else "symmetry stage skipped: more than one radiograph of a limb; patch scores"
        )
        return
    x = patient_vector(patient.scores("patch"))[None]
    pred, spread = model.predict(x)
    shap = model.explain(x) if explain else None
    for image in patient.images:
        for joint_id, js in image.joints.items():
            if js.stage == "missing":
                continue
            for st in get_joint(joint_id).score_types:
                i = SCORE_INDEX[(joint_id, st.value)]
                if np.isfinite(pred[0, i]):
                    setattr(js, st.value, float(pred[0, i]))
                    setattr(js, f"{st.value}_sd", float(spread[0, i]))
            js.stage = "symmetry"
    patient.symmetry = True
    patient.note = "symmetry stage applied"
    if shap is not None:
        patient.shap, patient.shap_base = shap


# ------------------------------------------------------------------------------ writing


class ScoreWriter:
    """Write per-image JSON, the RA2-DREAM CSV, SHAP PNGs and (optionally) store revisions."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        symmetry_file: str | Path | None = None,
        explain: bool = True,
        store: str | Path | None = None,
        model_info: Mapping[str, str] | None = None,
        weights_file: str | Path | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.explain = explain
        self.store = store
        self.model_info = dict(model_info or {})
        if weights_file and Path(weights_file).is_file():
            self.model_info["weights_sha256"] = file_sha256(weights_file)
        self.symmetry: SymmetryModel | None = None
        self.symmetry_problem = ""
        if symmetry_file:
            try:
                self.symmetry = SymmetryModel.load(symmetry_file)
                self.model_info["symmetry_sha256"] = file_sha256(symmetry_file)
            except SymmetryModelError as exc:  # say so in every output, keep the patch scores
                self.symmetry_problem = str(exc)
        # grade sets when the bundle's calibration was made with exactly these weights
        self.calibration, self.calibration_note = (
            _matching(Path(weights_file).parent, self.model_info) if weights_file else (None, "")
        )

    def write(self, patch_set: PatchSet, collector: PatchScoreCollector) -> list[PatientScores]:
        patients = group_patients(collector.image_scores())
        apply_symmetry(patients, self.symmetry, explain=self.explain)
        if self.symmetry_problem:
            for p in patients:
                p.note = f"symmetry model not usable ({self.symmetry_problem}); patch scores"
        write_outputs(
            patients,
            patch_set.failures,
            self.output_dir,
            self.model_info,
            calibration=self.calibration,
            calibration_note=self.calibration_note,
        )
        if self.store:
            write_scores_to_store(
                self.store, patients, self.model_info, calibration=self.calibration
            )
        return patients


def write_outputs(
    patients: Sequence[PatientScores],
    failures: Sequence[tuple[str, str]],
    out: Path,
    model_info: Mapping[str, str],
    *,
    suffix: str = "",
    names: Mapping[str, str] | None = None,
    calibration: Any = None,
    coverage: float = 0.9,
    calibration_note: str = "",
) -> dict[str, Any]:
    """``scores/<name>.json`` per image, ``scores_ra2dream.csv``, ``joint_scores.csv`` (grade
    sets when ``calibration`` is given), ``shap/<patient>.png``, ``summary.json`` (patients,
    notes, totals, failed files with reasons). ``suffix`` names the table and summary of one
    rank of a sharded run (``.rank0``).

    ``names``: image path -> output name (:func:`annotation_tools.paths.path_names` of the
    run's inputs); by default made from the images here. Patient ids pass through
    :func:`~annotation_tools.paths.safe_name`, so no id writes outside ``out``.

    All patients at once; :class:`OutputWriter` writes the same files patient by patient."""
    from .paths import path_names

    if names is None:
        names = path_names(im.case.path for p in patients for im in p.images)
    writer = OutputWriter(
        out,
        model_info,
        suffix=suffix,
        names=names,
        calibration=calibration,
        coverage=coverage,
        calibration_note=calibration_note,
    )
    try:
        writer.add(patients)
    finally:
        summary = writer.close(failures)
    return summary


class OutputWriter:
    """The outputs of :func:`write_outputs`, written as each patient finishes.

    The RA2-DREAM table is opened once and gets a row per patient as :meth:`add` is called
    (callers add patients in sorted id order, so the table is the one :func:`write_outputs`
    writes); ``summary.json`` is written by :meth:`close`, which keeps only the small
    per-patient summary entries until then - no image or score object of a finished patient.
    """

    def __init__(
        self,
        out: str | Path,
        model_info: Mapping[str, str],
        *,
        suffix: str = "",
        names: Mapping[str, str] | None = None,
        calibration: Any = None,
        coverage: float = 0.9,
        calibration_note: str = "",
    ):
        from .conformal import JointSetsCsv
        from .vocabulary import DreamCsv

        self.out = Path(out)
        self.model_info = dict(model_info)
        self.suffix = suffix
        self.names = names or {}
        (self.out / "scores").mkdir(parents=True, exist_ok=True)
        self._sets = JointSetsCsv(
            self.out / f"joint_scores{suffix}.csv", calibration, coverage, calibration_note
        )
        self.summary_patients: list[dict[str, Any]] = []
        self._shap_names: set[str] = set()
        self._table = DreamCsv(self.out / f"scores_ra2dream{suffix}.csv")
        self.summary: dict[str, Any] | None = None

    def add(self, patients: Sequence[PatientScores]) -> None:
        """Scores JSON per image, the patients' rows, SHAP PNGs and summary entries."""
        from .paths import safe_name, unique_name

        out = self.out
        for patient in patients:
            for image in patient.images:
                doc = image.to_json(self.model_info)
                doc["patient_note"] = patient.note
                name = self.names.get(image.case.path) or safe_name(Path(image.case.path).stem)
                (out / "scores" / f"{name}.json").write_text(json.dumps(doc, indent=1))
            row = dream_row(patient.patient_id, patient.scores())
            self._table.write(row)
            self._sets.write(patient)
            shap_png = None
            if patient.shap is not None:
                shap_name = unique_name(safe_name(patient.patient_id), self._shap_names)
                shap_png = plot_shap(
                    patient.shap,
                    out / "shap" / f"{shap_name}.png",
                    title=f"Symmetry model SHAP values - patient {patient.patient_id}",
                    note=CLINICAL_NOTE,
                )
            self.summary_patients.append(
                {
                    "patient_id": patient.patient_id,
                    "limbs": sorted(patient.limbs()),
                    "symmetry": patient.symmetry,
                    "note": patient.note,
                    "total": row.get("Overall_Tol"),
                    "erosion": row.get("Overall_erosion"),
                    "narrowing": row.get("Overall_narrowing"),
                    "missing_joints": sum(
                        js.stage == "missing" for im in patient.images for js in im.joints.values()
                    ),
                    "shap_png": str(shap_png.relative_to(out)) if shap_png else None,
                }
            )

    def close(self, failures: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """Close the table and write ``summary.json`` (with the failed files and why)."""
        if self.summary is not None:
            return self.summary
        self._table.close()
        self._sets.close()
        self.summary = {
            "model": dict(self.model_info),
            "grade_sets": self._sets.describe(),
            "patients": self.summary_patients,
            "failed_files": [{"file": f, "reason": r} for f, r in failures],
            "note": CLINICAL_NOTE,
        }
        (self.out / f"summary{self.suffix}.json").write_text(json.dumps(self.summary, indent=1))
        return self.summary


def write_scores_to_store(
    store_path: Any,
    patients: Sequence[PatientScores],
    model_info: Mapping[str, str],
    *,
    calibration: Any = None,
    coverage: float = 0.9,
) -> int:
    """Scores and joint-space polygons as new ``model`` revisions (nothing is overwritten);
    with the scorer's conformal ``calibration`` each grade keeps its set at ``coverage``."""
    from .store import AnnotationStore, Provenance

    prov = Provenance.model(
        model_info.get("bundle", BUNDLE_NAME),
        model_info.get("version", ""),
        model_info.get("weights_sha256", ""),
    )
    written = 0
    with AnnotationStore.using(store_path) as db:
        for patient in patients:
            sets = _grade_sets_of(patient, calibration, coverage)
            for image in patient.images:
                record = (
                    db.image(image.case.image_id)
                    if image.case.image_id
                    else db.find_image(image.case.path)
                )
                if record is None:
                    image.case.warnings.append(f"not registered in {db.path}: not stored")
                    continue
                with db.transaction():
                    for joint_id, js in image.joints.items():
                        for st in get_joint(joint_id).score_types:
                            value = getattr(js, st.value)
                            if value is None:
                                continue
                            grade_set = sets.get((joint_id, st.value))
                            db.set_score(
                                record.id,
                                joint_id,
                                st.value,
                                float(value),
                                prov,
                                uncertainty=getattr(js, f"{st.value}_sd"),
                                grade_set=grade_set,
                                coverage=coverage if grade_set else None,
                            )
                            written += 1
                        if js.polygon:
                            db.set_polygon(record.id, joint_id, js.polygon, prov)
    return written


def _grade_sets_of(
    patient: PatientScores, calibration: Any, coverage: float
) -> dict[tuple[str, str], tuple[int, int]]:
    """(joint, score type) -> conformal grade set of a scored patient (joint ids name the
    limb, so they are unique per patient); empty without a calibration made for these
    weights: no set is better than an invented one."""
    from .conformal import score_rows

    if calibration is None:
        return {}
    rows = [r[1:] for r in score_rows([patient])]
    sets = calibration.grade_sets(rows, coverage)
    return {(r[0], r[1]): (s.low, s.high) for r, s in zip(rows, sets, strict=True)}


# ------------------------------------------------------------------------------ in-process


def _matching(folder: Path, info: Mapping[str, str]) -> tuple[Any, str]:
    """The conformal calibration in ``folder`` when it was made with exactly these weights (and
    symmetry model), with an empty note; else ``(None, why)``: other weights (a retrained
    version) get no grade sets until calibrated."""
    from .conformal import matching_calibration

    return matching_calibration(
        folder, info, ("weights_sha256", "symmetry_sha256"), "ra-joints calibrate --task scorer"
    )


class JointScorer:
    """Run the scorer bundle in-process with its own ``inference.json`` (plus overrides).

    Torch weights are loaded with ``weights_only=True``, the symmetry model from skops after a
    type allow-list check: a bundle from another site cannot run code when opened.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        head: str,
        variant: str,
        patch_size: int,
        symmetry: SymmetryModel | None = None,
        device: str | torch.device = "cpu",
        model_info: Mapping[str, str] | None = None,
    ):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.head = head
        self.variant = variant
        self.patch_size = int(patch_size)
        self.symmetry = symmetry
        self.model_info = dict(model_info or {})
        self.calibration: Any = None  # conformal grade sets (annotation_tools.conformal)
        self.calibration_note = ""  # why there is none (summary.json)

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | Path,
        *,
        device: str | None = None,
        config_files: Sequence[str] = ("configs/inference.json",),
        weights: str | Path | None = None,
        symmetry: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> JointScorer:
        from .bundles import load_bundle_network, weights_hash

        root = Path(bundle_root)
        parser, network, weights_path = load_bundle_network(
            root, config_files=config_files, weights=weights, overrides=overrides
        )
        # symmetry: None -> the bundle's models/symmetry.skops if present; "" -> none
        symmetry_path = root / "models" / "symmetry.skops" if symmetry is None else Path(symmetry)
        use = symmetry != "" and symmetry_path.is_file()
        model = SymmetryModel.load(symmetry_path) if use else None
        info = {
            "bundle": BUNDLE_NAME,
            "version": str(parser.get("_meta_#version", "")),
            "variant": str(parser.get_parsed_content("variant")),
            "head": str(parser.get_parsed_content("head")),
            "weights_sha256": weights_hash([weights_path]),
        }
        if model is not None:
            info["symmetry_sha256"] = file_sha256(symmetry_path)
        scorer = cls(
            network,
            head=info["head"],
            variant=info["variant"],
            patch_size=int(parser.get_parsed_content("patch_size")),
            symmetry=model,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            model_info=info,
        )
        # next to the weights: the bundle's models/ for the shipped ones, the version's folder
        # for a retrained version (its calibration step writes conformal.json there)
        scorer.calibration, scorer.calibration_note = _matching(Path(weights_path).parent, info)
        return scorer

    @torch.no_grad()
    def score_patches(
        self, patch_set: PatchSet, batch_size: int = 128, progress: bool = False
    ) -> PatchScoreCollector:
        from tqdm.auto import tqdm

        collector = PatchScoreCollector(patch_set, self.head, self.variant == "seg_guided")
        starts = range(0, len(patch_set.items), batch_size)
        for start in tqdm(starts, desc="score patches", unit="batch", disable=not progress):
            chunk = patch_set.items[start : start + batch_size]
            x = torch.from_numpy(np.stack([c["image"] for c in chunk])).to(self.device)
            collector.add(self.network(x), [c["index"] for c in chunk])
        return collector

    def score(
        self,
        patch_set: PatchSet,
        *,
        explain: bool = False,
        batch_size: int = 128,
        progress: bool = False,
    ) -> list[PatientScores]:
        """Patch stage, then the symmetry stage per patient."""
        collector = self.score_patches(patch_set, batch_size, progress)
        patients = group_patients(collector.image_scores())
        apply_symmetry(patients, self.symmetry, explain=explain, progress=progress)
        return patients


# ------------------------------------------------------------------------------ symmetry fit


def true_scores(
    project: str | Path,
    sources: Sequence[str] | None = None,
    annotators: Sequence[str] | None = None,
) -> dict[str, dict[tuple[str, str], float]]:
    """Patient -> ``(joint_id, score_type) -> grade`` of a project (default: human/phantom).

    ``annotators``: only those readers' grades (e.g. ``["rater_a"]``), as one trains on a
    clinic's reader rather than on an unknowable truth.
    """
    from .store import TRAINING_SOURCES, AnnotationStore

    with AnnotationStore.open(project, create=False) as db:
        if annotators is not None:
            db.check_authors(annotators)
        scores = db.patient_scores(
            sources=sources or TRAINING_SOURCES, per_visit=False, authors=annotators
        )
    return {
        pid: {key: float(v) for key, v in grades.items()}
        for pid, grades in scores.items()
        if grades
    }


def fit_symmetry(
    scorer: JointScorer,
    project: str | Path | Sequence[str | Path],
    *,
    n_estimators: int = 500,
    max_depth: int = 4,
    seed: int = 0,
    max_features: float = 1.0,
    target: str = "residual",
    annotators: Sequence[str] | None = None,
) -> SymmetryModel:
    """Fit the symmetry stage on project(s) the patch model never saw (annotated centres).

    Only patients with all four limbs are used: the stage only runs on such patients.
    ``annotators``: the readers whose grades are the targets (default: newest of any).
    """
    from .store import TRAINING_SOURCES
    from .symmetry import patient_matrix

    projects = [project] if isinstance(project, (str, Path)) else list(project)
    for folder in projects:  # before any scoring: a test cohort never trains anything
        check_training_seed(cohort_seed(folder), f"the symmetry fit on {folder}")
    complete, truth = [], {}
    for folder in projects:
        patch_set = load_patch_set(
            store=folder, patch_size=scorer.patch_size, sources=TRAINING_SOURCES
        )
        patients = group_patients(scorer.score_patches(patch_set).image_scores())
        known = true_scores(folder, annotators=annotators)
        truth.update(known)
        complete += [p for p in patients if len(p.limbs()) == 4 and p.patient_id in known]
    if len(complete) < 5:
        raise ValueError(
            f"{', '.join(map(str, projects))}: {len(complete)} patients with all four limbs "
            "scored; the symmetry stage needs at least 5"
        )
    x = patient_matrix([p.scores("patch") for p in complete])
    y = patient_matrix([truth[p.patient_id] for p in complete])
    model = SymmetryModel(
        n_estimators, max_depth, seed, target=target, max_features=max_features
    ).fit(x, y)
    model.info.update({"projects": [str(f) for f in projects], "patients": len(complete)})
    if annotators is not None:
        model.info["annotators"] = list(annotators)
    return model


def fit_symmetry_from_bundle(
    bundle_root: str | Path,
    project: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    weights: str | Path | None = None,
    n_estimators: int = 500,
    max_depth: int = 4,
    seed: int = 0,
    max_features: float = 1.0,
    target: str = "residual",
    annotators: Sequence[str] | None = None,
) -> Path:
    """``train_symmetry.json``'s run step: fit on ``project`` with the bundle's patch model.

    Every parameter of the config reaches the trees; ``--target score`` (with the default
    ``max_features`` 1.0, scikit-learn's regression default their code kept) trains the
    RA2-DREAM winner's forests, which predict the score itself rather than a correction.
    """
    scorer = JointScorer.from_bundle(bundle_root, weights=weights, symmetry="")
    model = fit_symmetry(
        scorer,
        project,
        n_estimators=n_estimators,
        max_depth=max_depth,
        seed=seed,
        max_features=max_features,
        target=target,
        annotators=annotators,
    )
    model.info["weights_sha256"] = scorer.model_info["weights_sha256"]
    return model.save(out)


def evaluate_against_store(
    patients: Sequence[PatientScores], project: str | Path, output_dir: str | Path
) -> dict[str, Any]:
    """``evaluate.json``'s last step: patch and final scores vs the project's annotations."""
    from .evaluation import PHANTOM_NOTE, score_figures
    from .store import TRAINING_SOURCES

    truth = {
        pid: {dream_column(j, st): v for (j, st), v in scores.items()}
        for pid, scores in true_scores(project, TRAINING_SOURCES).items()
    }
    if not truth:
        raise ValueError(f"{project} has no annotated scores to evaluate against")
    result: dict[str, Any] = {"project": str(project), "patients": len(patients)}
    for stage in ("patch", "final"):
        table = {p.patient_id: dream_row(p.patient_id, p.scores(stage)) for p in patients}
        result[stage] = score_figures(truth, table, n_resamples=200)
    result["symmetry_applied"] = sum(p.symmetry for p in patients)
    result["note"] = PHANTOM_NOTE
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
