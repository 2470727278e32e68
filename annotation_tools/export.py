"""Store -> MONAI training data: the bridge from what annotators draw to what bundles train on.

``export_dataset(store, task, out_dir, ...)`` writes arrays MONAI's ``LoadImaged`` reads
(``.npy`` images, ``.npz`` multi-channel targets, with ``reader="NumpyReader"``) and a
Decathlon-style datalist (``load_decathlon_datalist(path, data_list_key="training")``) whose
items carry a patient-level ``fold``.

By default only the newest ``human`` or ``phantom`` revision of each annotation is used; model
predictions that no human confirmed are left out unless ``include_model=True``.

Every problem (missing image file, centre outside the image, polygon with < 3 points or
self-intersecting, ROI of zero area, unknown joint) is reported with the image and the joint,
only that item is skipped, and the report says so; nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .imageio import ImageData, ImageReadError, read_image
from .metrics import patient_folds
from .paths import path_names, safe_name
from .radiograph import GridGeometry, prepare_radiograph
from .seeds import check_training_seed, cohort_seed
from .store import TRAINING_SOURCES, AnnotationStore, ImageRecord
from .targets import (
    JOINT_TYPES,
    MASK_IGNORE,
    joint_patch,
    locator_targets,
    multitask_targets,
    normalise_intensity,
)
from .ultrasound import RATING_SIZE, UltrasoundInputError, prepare_pair
from .vocabulary import Limb, ScoreType, get_joint, joints_for_limb, site_names

__all__ = ["TASKS", "ExportProblem", "ExportReport", "export_dataset", "merge_exports"]

TASKS = ("locator", "scorer", "ultrasound", "multitask")


@dataclass(frozen=True)
class ExportProblem:
    image: str
    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.image} [{self.item}]: {self.reason}"


@dataclass
class ExportReport:
    task: str
    out_dir: str
    datalists: list[str] = field(default_factory=list)
    n_items: int = 0
    n_patients: int = 0
    problems: list[ExportProblem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [str(p) for p in self.problems]
        return out


@dataclass
class _Options:
    folds: int
    seed: int
    sources: tuple[str, ...] | None
    size: int
    mirror: bool
    target_mode: str
    patch_size: int
    shape: tuple[int, int] = (864, 928)
    radius: float = 32.0
    ignore_radius: float = 40.0
    authors: tuple[str, ...] | None = None  # grades of these readers only (None: the newest)


def export_dataset(
    store: AnnotationStore,
    task: str,
    out_dir: str | Path,
    *,
    folds: int = 5,
    seed: int = 0,
    include_model: bool = False,
    size: int = 512,
    mirror: bool = True,
    target_mode: str = "square",
    patch_size: int = 128,
    shape: tuple[int, int] = (864, 928),
    radius: float = 32.0,
    ignore_radius: float = 40.0,
    annotators: Sequence[str] | None = None,
    progress: bool = False,
) -> ExportReport:
    """Write one task's dataset and datalist(s) to ``out_dir``; returns what was done.

    ``annotators`` trains on named readers' grades (e.g. a simulated rater, as one would train
    on a clinic's reader rather than on an unknowable truth); centres, outlines and ROI boxes
    still come from the newest annotation of any person.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    seed_of_cohort = cohort_seed(store.root)  # a phantom project records its seed
    check_training_seed(seed_of_cohort, f"exporting {store.root} for training")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = _Options(
        folds=folds,
        seed=seed,
        sources=None if include_model else TRAINING_SOURCES,
        size=size,
        mirror=mirror,
        target_mode=target_mode,
        patch_size=patch_size,
        shape=(int(shape[0]), int(shape[1])),
        radius=float(radius),
        ignore_radius=float(ignore_radius),
        authors=tuple(annotators) if annotators else None,
    )
    if options.authors:
        store.check_authors(options.authors)
    report = ExportReport(task, str(out))
    patients = store.patients()
    if len(patients) < folds:
        raise ValueError(
            f"{folds} folds need at least {folds} patients; the store has {len(patients)}"
        )
    fold_of = patient_folds(patients, folds, seed)
    exporter = {
        "locator": _export_locator,
        "scorer": _export_scorer,
        "ultrasound": _export_ultrasound,
        "multitask": _export_multitask,
    }[task]
    datalists = exporter(store, out, options, fold_of, report, progress)
    for name, items in datalists.items():
        path = out / name
        document = {
            "name": f"ra_joints {task}",
            "description": f"exported by annotation_tools.export {__version__} from {store.path}",
            "task": task,
            "folds": folds,
            "seed": seed,
            "cohort_seed": seed_of_cohort,  # the phantom cohort's seed (None: not a phantom)
            "sources": list(options.sources) if options.sources else "all (incl. model)",
            "annotators": list(options.authors) if options.authors else "newest of any",
            **_task_header(task, name, options),
            "training": items,
            "problems": [str(p) for p in report.problems],
        }
        path.write_text(json.dumps(document, indent=1))
        report.datalists.append(str(path))
        report.n_items += len(items)
    report.n_patients = len({i["patient_id"] for items in datalists.values() for i in items})
    return report


def merge_exports(parts: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """One training set from several exports of the same task (e.g. two phantom styles).

    Why: a model should learn every kind of film it will meet, and one store holds one cohort.
    The parts' arrays stay where they are; the merged datalists in ``out_dir`` point at them
    (relative paths) and each item keeps its part's fold. Patient ids are prefixed with the
    part's folder name, since two cohorts may reuse an id for different phantom patients.
    Parts must agree on the task and on every array setting (size, channels, mirroring).
    """
    out = Path(out_dir)
    folders = [Path(p) for p in parts]
    if len(folders) < 2:
        raise ValueError("merging needs at least two exports")
    if len({f.name for f in folders}) != len(folders):
        raise ValueError("parts need distinct folder names (they prefix the patient ids)")
    out.mkdir(parents=True, exist_ok=True)
    names = sorted({d.name for f in folders for d in f.glob("datalist*.json")})
    if not names:
        raise ValueError(f"no datalist*.json in {', '.join(map(str, folders))}")
    settings = ("task", "folds", "spatial_size", "channels", "mirrored_to_left", "target_mode")
    written = []
    for name in names:
        documents = [
            (f, json.loads((f / name).read_text())) for f in folders if (f / name).exists()
        ]
        first = documents[0][1]
        for folder, doc in documents[1:]:
            differ = [k for k in settings if doc.get(k) != first.get(k)]
            if differ:
                raise ValueError(f"{folder / name} differs from the first part in {differ}")
        items = []
        for folder, doc in documents:
            prefix = Path(os.path.relpath(folder.resolve(), out.resolve()))
            for item in doc["training"]:
                moved = {
                    k: (prefix / v).as_posix()
                    if isinstance(v, str) and (folder / v).is_file()
                    else v
                    for k, v in item.items()
                }
                moved["patient_id"] = f"{folder.name}/{item['patient_id']}"
                items.append(moved)
        merged = {
            **{k: v for k, v in first.items() if k not in ("training", "problems")},
            "description": "merged by annotation_tools.export.merge_exports from "
            + "; ".join(d["description"] for _, d in documents),
            "cohort_seed": [d.get("cohort_seed") for _, d in documents],
            "annotators": [d.get("annotators") for _, d in documents],
            "training": items,
            "problems": [p for _, d in documents for p in d.get("problems", [])],
        }
        (out / name).write_text(json.dumps(merged, indent=1))
        written.append(out / name)
    return written


def _task_header(task: str, name: str, options: _Options) -> dict[str, Any]:
    if task == "locator":
        kind = "hand" if "hand" in name else "foot"
        return {
            "limb_kind": kind,
            "channels": list(site_names(kind)),
            "spatial_size": [options.size, options.size],
            "target_mode": options.target_mode,
            "mirrored_to_left": options.mirror,
            "ignore_value": -1,
        }
    if task == "scorer":
        return {
            "patch_size": options.patch_size,
            "mirrored_to_left": options.mirror,
            "mask_ignore_value": MASK_IGNORE,
            "score_max": {"narrowing": 4, "erosion_hand": 5, "erosion_foot": 10},
        }
    if task == "multitask":
        return {
            "spatial_size": list(options.shape),
            "label_channels": ["joint_type", "narrowing", "erosion"],
            "joint_types": list(JOINT_TYPES),
            "disc_radius": options.radius,
            "ignore_radius": options.ignore_radius,
            "foot_erosion": "halved (0-10 -> 0-5)",
            "crop": "bounding box of Canny edges (edge_crop_box)",
            "mirrored_to_left": options.mirror,
            "ignore_value": -1,
        }
    return {"crop_size": RATING_SIZE, "signal_colour": [255, 0, 0]}


def _iter(items: list[Any], progress: bool, desc: str) -> Iterable[Any]:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def _export_name(store: AnnotationStore, image: ImageRecord) -> str:
    """The file name of one image's exported arrays: unique per image even when two visits
    share a stem (``v1/P1_LH.dcm``, ``v2/P1_LH.png`` -> ``v1__P1_LH``, ``v2__P1_LH``)."""
    names = path_names(str(store.resolve(r)) for r in store.images(modality=image.modality))
    return names.get(str(store.resolve(image))) or safe_name(Path(image.path).stem)


def _load(store: AnnotationStore, image: ImageRecord, report: ExportReport) -> ImageData | None:
    """Read an image, or record in the report why it cannot be used."""
    path = store.resolve(image)
    if not path.exists():
        report.problems.append(ExportProblem(image.path, "image", "file is missing on disk"))
        return None
    changed = store.content_problem(image)  # the labels belong to the registered pixels
    if changed:
        report.problems.append(ExportProblem(image.path, "image", changed))
        return None
    try:
        return read_image(path)
    except ImageReadError as exc:
        report.problems.append(ExportProblem(image.path, "image", exc.reason))
        return None


def _valid_centres(
    store: AnnotationStore,
    image: ImageRecord,
    shape: tuple[int, int],
    options: _Options,
    report: ExportReport,
) -> dict[str, tuple[float, float] | None]:
    """Newest usable centres: present -> (x, y), "not visible" -> None; problems reported."""
    h, w = shape
    out: dict[str, tuple[float, float] | None] = {}
    for joint_id, rev in store.centres(image.id, sources=options.sources).items():
        try:
            joint = get_joint(joint_id)
        except KeyError:
            report.problems.append(
                ExportProblem(image.path, joint_id, "not a joint in the vocabulary")
            )
            continue
        if joint.limb.value != image.limb:
            report.problems.append(
                ExportProblem(image.path, joint_id, f"not a joint of {image.limb}")
            )
            continue
        if rev.status == "not_visible":
            out[joint_id] = None
            continue
        x, y = rev.value["x"], rev.value["y"]
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            report.problems.append(
                ExportProblem(
                    image.path,
                    joint_id,
                    f"centre ({x:.1f}, {y:.1f}) lies outside the {w}x{h} image",
                )
            )
            continue
        out[joint_id] = (float(x), float(y))
    return out


def _scores_by_joint(
    store: AnnotationStore, image: ImageRecord, options: _Options
) -> dict[str, dict[str, float]]:
    """Newest exported scores of an image: joint id -> score type -> grade."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for (joint_id, score_type), rev in store.scores(
        image.id, sources=options.sources, authors=options.authors
    ).items():
        scores[joint_id][score_type] = float(rev.value["value"])
    return scores


# ------------------------------------------------------------------------------ locator


def _grid_point(geometry: GridGeometry, xy: Any) -> tuple[float, float] | None:
    """An annotated centre in the network grid (None stays None: "not visible")."""
    if xy is None:
        return None
    point = geometry.to_grid([xy])[0]
    return (float(point[0]), float(point[1]))


def _export_locator(
    store: AnnotationStore,
    out: Path,
    options: _Options,
    fold_of: dict[str, int],
    report: ExportReport,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    lists: dict[str, list[dict[str, Any]]] = {"datalist_hand.json": [], "datalist_foot.json": []}
    grid = (options.size, options.size)
    for image in _iter(store.images(modality="radiograph"), progress, "locator export"):
        data = _load(store, image, report)
        if data is None:
            continue
        limb = Limb.parse(image.limb)
        centres = _valid_centres(store, image, data.shape, options, report)
        if not centres:
            report.problems.append(ExportProblem(image.path, "image", "no joint centre annotated"))
            continue
        mirrored = options.mirror and limb.side == "right"
        prepared = prepare_radiograph(data, grid, mirror=mirrored)
        resized, geometry = prepared.pixels, prepared.geometry
        scale = (grid[0] / data.shape[0], grid[1] / data.shape[1])
        grid_centres = {
            get_joint(joint_id).site: _grid_point(geometry, xy) for joint_id, xy in centres.items()
        }
        targets = locator_targets(grid_centres, limb, grid, scale=scale, mode=options.target_mode)
        stem = _export_name(store, image)
        np.save(out / "images" / f"{stem}.npy", resized.astype(np.float32))
        np.savez_compressed(out / "labels" / f"{stem}.npz", label=targets)
        lists[f"datalist_{limb.kind}.json"].append(
            {
                "image": f"images/{stem}.npy",
                "label": f"labels/{stem}.npz",
                "patient_id": image.patient_id,
                "image_id": image.id,
                "source_image": image.path,
                "limb": limb.value,
                "fold": fold_of[image.patient_id],
                "original_shape": list(data.shape),
                "mirrored": mirrored,
                "centres": {
                    site: (None if xy is None else [round(v, 4) for v in xy])
                    for site, xy in grid_centres.items()
                },
            }
        )
    return {name: items for name, items in lists.items() if items}


# ------------------------------------------------------------------------------ scorer


def _export_scorer(
    store: AnnotationStore,
    out: Path,
    options: _Options,
    fold_of: dict[str, int],
    report: ExportReport,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    (out / "patches").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    items: list[dict[str, Any]] = []
    for image in _iter(store.images(modality="radiograph"), progress, "scorer export"):
        data = _load(store, image, report)
        if data is None:
            continue
        centres = _valid_centres(store, image, data.shape, options, report)
        scores = _scores_by_joint(store, image, options)
        polygons = store.polygons(image.id, sources=options.sources)
        pixels = normalise_intensity(data.grey())
        stem = _export_name(store, image)
        mirrored = options.mirror and Limb.parse(image.limb).side == "right"
        for joint in joints_for_limb(image.limb):
            xy = centres.get(joint.id)
            if xy is None or not scores.get(joint.id):
                continue  # not visible / not annotated / not scored: nothing to learn from
            poly = polygons.get(joint.id)
            patch = joint_patch(
                pixels,
                joint,
                xy,
                size=options.patch_size,
                mirror=mirrored,
                polygon=poly.value["vertices"] if poly else None,
            )
            for problem in patch.problems:
                report.problems.append(
                    ExportProblem(image.path, joint.id, f"{problem}; mask ignored")
                )
            mask = (
                patch.mask
                if patch.mask is not None
                else np.full(patch.image.shape, MASK_IGNORE, np.uint8)
            )
            name = f"{stem}_{joint.site}"
            np.save(out / "patches" / f"{name}.npy", patch.image.astype(np.float32))
            np.save(out / "masks" / f"{name}.npy", mask)
            item = {
                "image": f"patches/{name}.npy",
                "mask": f"masks/{name}.npy",
                "has_mask": bool(patch.mask is not None and not patch.problems),
                "patient_id": image.patient_id,
                "image_id": image.id,
                "source_image": image.path,
                "limb": image.limb,
                "joint_id": joint.id,
                "site": joint.site,
                "region": joint.region,
                "fold": fold_of[image.patient_id],
                "centre": [round(v, 4) for v in xy],
                "patch_side": patch.side,
                "mirrored": mirrored,
            }
            for score_type in ScoreType:
                value = scores[joint.id].get(score_type.value)
                item[score_type.value] = -1.0 if value is None else value
                item[f"{score_type.value}_max"] = (
                    joint.max_score(score_type) if joint.carries(score_type) else 0
                )
            items.append(item)
    return {"datalist.json": items}


# ------------------------------------------------------------------------------ multitask


def _export_multitask(
    store: AnnotationStore,
    out: Path,
    options: _Options,
    fold_of: dict[str, int],
    report: ExportReport,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Edge-cropped, resized radiographs with joint-type / narrowing / erosion disc targets."""
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    items: list[dict[str, Any]] = []
    grid = options.shape
    for image in _iter(store.images(modality="radiograph"), progress, "multitask export"):
        data = _load(store, image, report)
        if data is None:
            continue
        limb = Limb.parse(image.limb)
        centres = _valid_centres(store, image, data.shape, options, report)
        if not any(xy is not None for xy in centres.values()):
            report.problems.append(ExportProblem(image.path, "image", "no joint centre annotated"))
            continue
        scores = _scores_by_joint(store, image, options)
        mirrored = options.mirror and limb.side == "right"
        prepared = prepare_radiograph(data, grid, mirror=mirrored, crop_edges=True)
        pixels, box = prepared.pixels, prepared.geometry.crop
        grid_centres = {
            joint_id: _grid_point(prepared.geometry, xy) for joint_id, xy in centres.items()
        }
        label = multitask_targets(
            grid_centres,
            scores,
            limb,
            grid,
            radius=options.radius,
            ignore_radius=options.ignore_radius,
        )
        stem = _export_name(store, image)
        np.save(out / "images" / f"{stem}.npy", pixels.astype(np.float32))
        np.savez_compressed(out / "labels" / f"{stem}.npz", label=label)
        items.append(
            {
                "image": f"images/{stem}.npy",
                "label": f"labels/{stem}.npz",
                "patient_id": image.patient_id,
                "image_id": image.id,
                "source_image": image.path,
                "limb": limb.value,
                "fold": fold_of[image.patient_id],
                "original_shape": list(data.shape),
                "crop_box": [box.y0, box.y1, box.x0, box.x1],
                "mirrored": mirrored,
            }
        )
    return {"datalist.json": items}


# ------------------------------------------------------------------------------ ultrasound


def _export_ultrasound(
    store: AnnotationStore,
    out: Path,
    options: _Options,
    fold_of: dict[str, int],
    report: ExportReport,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    for sub in ("greyscale", "doppler", "doppler_mask", "doppler_transformed"):
        (out / sub).mkdir(exist_ok=True)
    items: list[dict[str, Any]] = []
    for pair in _iter(store.us_pairs(), progress, "ultrasound export"):
        grey_rec = store.image(pair["greyscale_image_id"])
        dop_rec = store.image(pair["doppler_image_id"])
        label = f"pair {pair['id']} ({pair['site']})"
        score = store.us_score(pair["id"], sources=options.sources, authors=options.authors)
        if score is None:
            report.problems.append(ExportProblem(grey_rec.path, label, "no ultrasound grades"))
            continue
        roi_rev = store.roi(grey_rec.id, sources=options.sources) or store.roi(
            dop_rec.id, sources=options.sources
        )
        if roi_rev is None:
            report.problems.append(ExportProblem(grey_rec.path, label, "no ROI box"))
            continue
        dop_roi_rev = store.roi(dop_rec.id, sources=options.sources) or roi_rev
        grey, dop = _load(store, grey_rec, report), _load(store, dop_rec, report)
        if grey is None or dop is None:
            continue
        box = [roi_rev.value[k] for k in ("x0", "y0", "x1", "y1")]
        dop_box = [dop_roi_rev.value[k] for k in ("x0", "y0", "x1", "y1")]
        try:
            prepared = prepare_pair(grey.pixels, dop.pixels, box, dop_box)
        except UltrasoundInputError as exc:
            report.problems.append(ExportProblem(dop_rec.path, label, str(exc)))
            continue
        stem = f"{safe_name(pair['patient_id'])}_pair{pair['id']}"
        np.save(out / "greyscale" / f"{stem}.npy", prepared.greyscale)
        np.save(out / "doppler" / f"{stem}.npy", np.moveaxis(prepared.doppler, -1, 0))
        np.save(out / "doppler_mask" / f"{stem}.npy", prepared.doppler_mask.astype(np.uint8))
        np.save(
            out / "doppler_transformed" / f"{stem}.npy",
            np.moveaxis(prepared.doppler_transformed, -1, 0),
        )
        items.append(
            {
                "greyscale": f"greyscale/{stem}.npy",
                "doppler": f"doppler/{stem}.npy",
                "doppler_mask": f"doppler_mask/{stem}.npy",
                "doppler_transformed": f"doppler_transformed/{stem}.npy",
                "patient_id": pair["patient_id"],
                "pair_id": pair["id"],
                "site": pair["site"],
                "fold": fold_of[pair["patient_id"]],
                "roi": box,
                "synovial_hypertrophy": score.value["synovial_hypertrophy"],
                "vascularity": score.value["vascularity"],
                "combined": score.value["combined"],
            }
        )
    return {"datalist.json": items}
