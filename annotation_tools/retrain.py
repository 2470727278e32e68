"""Retrain a bundle from a project's reviewed annotations, as a new model version.

The human-in-the-loop step after correcting predictions: export the project's human (and
phantom ground-truth) annotations with :mod:`annotation_tools.export`, train with the bundle's
own configs through ``python -m monai.bundle run`` (quick or full), and keep the weights under
``PROJECT/models/<bundle>/<version>/`` next to earlier versions - the shipped weights are never
replaced. Prediction can then use any version (``weights_for``). The last step calibrates the
new version on the project's held-out patients (:mod:`annotation_tools.recalibrate`), so its
predictions keep their grade sets, or records why it could not and how to do it by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from .bundles import BundleInfo, BundleNotFound, bundle_for, bundle_parser, registry
from .export import export_dataset
from .seeds import cohort_seed
from .store import AnnotationStore

DEFAULT_FOLDS = 5

__all__ = [
    "CHOICE_FILE",
    "choose_version",
    "chosen_version",
    "iter_retrain",
    "job_steps",
    "locator_in_use",
    "model_versions",
    "retrain",
    "retrain_steps",
    "retrainable",
    "weights_for",
]


def retrainable(bundles_dir: str | Path | None = None) -> dict[str, BundleInfo]:
    """The bundles the dock and ``retrain`` can train, as their own metadata declares."""
    return {name: info for name, info in registry(bundles_dir).items() if info.retrainable}


def model_versions(project: str | Path, bundle: str) -> list[Path]:
    """Trained versions of a bundle in a project, oldest first."""
    root = Path(project) / "models" / bundle
    return sorted(p for p in root.glob("*") if (p / "train_info.json").is_file())


CHOICE_FILE = "chosen_versions.json"  # PROJECT/models/: which version Predict uses, per bundle


def chosen_version(project: str | Path, bundle: str) -> str:
    """The version a person chose for Predict (``shipped`` until someone chooses): a new
    version is listed when training ends, but never used before a person says so."""
    path = Path(project) / "models" / CHOICE_FILE
    try:
        chosen = json.loads(path.read_text()).get(bundle, "shipped")
    except (OSError, ValueError, AttributeError):
        return "shipped"
    names = {v.name for v in model_versions(project, bundle)}
    return chosen if chosen in names else "shipped"


def choose_version(project: str | Path, bundle: str, version: str) -> None:
    """Record the person's choice of version (``shipped`` or a folder name) for Predict."""
    if version != "shipped" and version not in {v.name for v in model_versions(project, bundle)}:
        raise ValueError(f"{bundle} has no version {version!r} in {project}")
    path = Path(project) / "models" / CHOICE_FILE
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        choices = {}
    choices[bundle] = version
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(choices, indent=1))


def validation_figure(project: str | Path, bundle: str, version: str) -> float | None:
    """The best validation figure recorded when a version was trained (None: not known)."""
    if version == "shipped":
        return None
    info = Path(project) / "models" / bundle / version / "train_info.json"
    try:
        value = json.loads(info.read_text()).get("validation", {}).get("value")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if value is not None else None


def weights_for(project: str | Path, bundle: str, version: str | None = None) -> Path | None:
    """The weights file of a version (default: the newest); None when there is none."""
    versions = model_versions(project, bundle)
    if version is not None:
        versions = [v for v in versions if v.name == version]
    if not versions:
        return None
    return versions[-1] / bundle_for(bundle).version_weights


def retrain_steps(
    bundle_root: str | Path,
    data: Path,
    ckpt: Path,
    *,
    quick: bool = True,
    folds: int | None = None,
    overrides: Sequence[str] = (),
) -> list[list[str]]:
    """The ``monai.bundle run`` command lines of one training (what the user would type).

    One run for the locator and the scorer; for the ultrasound ensemble the jigsaw pretraining
    of both modalities, then the three stages of every fold's member.
    """
    root = Path(bundle_root)
    info = BundleInfo.read(root)
    if folds is None:  # the bundle's recipe says how many folds its configuration trains
        folds = int(info.export_options(quick).get("folds", DEFAULT_FOLDS))

    def run(config: str, *extra: str) -> list[str]:
        configs = [f"configs/{config}"] + (["configs/quick.json"] if quick else [])
        config_list = "[" + ",".join(f"'{root / c}'" for c in configs) + "]"
        return [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", config_list,
            "--meta_file", str(root / "configs" / "metadata.json"), "--bundle_root", str(root),
            "--dataset_dir", str(data), "--ckpt_dir", str(ckpt), *extra, *overrides,
        ]  # fmt: skip

    if not info.ensemble:
        return [run("train.json")]
    steps = [
        run("train_jigsaw.json", "--modality", modality)
        for modality in ("greyscale", "doppler_transformed")
    ]
    for fold in range(folds):
        for stage in ("grey", "doppler", "fusion"):
            steps.append(
                run(
                    "train.json",
                    "--stage",
                    stage,
                    "--val_fold",
                    str(fold),
                    "--jigsaw_dir",
                    str(ckpt),
                )
            )
    return steps


def locator_in_use(project: str | Path, bundles_dir: str | Path | None = None) -> Path | None:
    """The locator weights Predict uses in a project: the chosen version's, or None for the
    shipped ones (also when there is no locator bundle: the caller says what is missing)."""
    try:
        name = bundle_for("locator", bundles_dir).name
    except BundleNotFound:
        return None
    chosen = chosen_version(project, name)
    return None if chosen == "shipped" else weights_for(project, name, chosen)


def job_steps(bundle_root: str | Path, *, quick: bool = True, folds: int | None = None) -> int:
    """How many ``running:`` steps a retraining job announces: the training steps, then the
    calibration of the new version for the bundles that have one (grade sets, radii)."""
    from .recalibrate import CALIBRATION_FILES

    training = retrain_steps(bundle_root, Path("data"), Path("ckpt"), quick=quick, folds=folds)
    return len(training) + (BundleInfo.read(bundle_root).task in CALIBRATION_FILES)


def validation_fold(
    bundle_root: str | Path, quick: bool, overrides: Sequence[str] = ()
) -> int | None:
    """The fold a training validates on (``--val_fold`` of the overrides, else the training
    configs' ``val_fold``); None when the configs name none."""
    for i, flag in enumerate(overrides):
        if flag.startswith("--val_fold="):
            return int(flag.split("=", 1)[1])
        if flag == "--val_fold" and i + 1 < len(overrides):
            return int(overrides[i + 1])
    info = BundleInfo.read(bundle_root)
    value = bundle_parser(info.root, info.training_configs(quick)).get().get("val_fold")
    return None if value is None else int(value)


def retrain(
    project: str | Path,
    bundle_root: str | Path,
    *,
    quick: bool = True,
    folds: int | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> Path:
    """Export, train, keep the new version; returns its folder. Raises with the training's
    last output when it fails (the earlier versions are untouched)."""
    for line in iter_retrain(project, bundle_root, quick=quick, folds=folds, overrides=overrides):
        log(line)
    return model_versions(project, Path(bundle_root).name)[-1]


def iter_retrain(
    project: str | Path,
    bundle_root: str | Path,
    *,
    quick: bool = True,
    folds: int | None = None,
    overrides: Sequence[str] = (),
) -> Iterator[str]:
    """:func:`retrain` as a generator of log lines (the napari worker shows them)."""
    project, root = Path(project).resolve(), Path(bundle_root).resolve()
    recipe = BundleInfo.read(root)
    name = recipe.name
    if not recipe.retrainable:
        raise ValueError(f"{name} is not retrainable here; train it with its scripts (README)")
    options = recipe.export_options(quick)
    recipe_folds = int(options.pop("folds", DEFAULT_FOLDS))  # an argument of its own below
    folds = recipe_folds if folds is None else folds
    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = project / "training" / name / version
    target = project / "models" / name / version
    yield f"exporting {recipe.task} training data to {work / 'data'}"
    with AnnotationStore.open(project, create=False) as store:
        report = export_dataset(store, recipe.task, work / "data", folds=folds, **options)
    yield (
        f"exported {report.n_items} items of {report.n_patients} patients "
        f"({report.skipped} skipped)"
    )
    if report.n_items == 0:
        raise ValueError(f"no reviewed {recipe.task} annotations to train on in {project}")
    from .recalibrate import held_out_record

    held_out = held_out_record(
        report.datalists,
        None if recipe.ensemble else validation_fold(root, quick, overrides),
        ensemble=recipe.ensemble,
        annotators=options.get("annotators"),
    )
    started = time.perf_counter()
    if recipe.ensemble:  # the permutation set is part of the bundle: keep the jigsaw classes
        (work / "ckpt").mkdir(parents=True, exist_ok=True)
        shipped = root / "models" / "jigsaw_permutations.json"
        if quick and shipped.exists():
            (work / "ckpt" / shipped.name).write_bytes(shipped.read_bytes())
    steps = retrain_steps(
        root, work / "data", work / "ckpt", quick=quick, folds=folds, overrides=overrides
    )
    # one process for every step: torch and MONAI are imported once (bundle_steps says why)
    steps_file = work / "steps.json"
    steps_file.parent.mkdir(parents=True, exist_ok=True)
    steps_file.write_text(json.dumps(steps, indent=1))
    tail: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "annotation_tools.bundle_steps", str(steps_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=root,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail, line.rstrip()][-40:]
            yield line.rstrip()
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n" + "\n".join(tail))
    if recipe.ensemble:
        from .us_training import pack_members

        pack_members(work / "ckpt", target, info={"configuration": "quick" if quick else "full"})
        perms = work / "ckpt" / "jigsaw_permutations.json"
        if perms.exists():
            (target / perms.name).write_bytes(perms.read_bytes())
    else:
        weights = work / "ckpt" / recipe.version_weights
        if not weights.exists():
            raise RuntimeError(f"training {name} finished without writing {weights}")
        target.mkdir(parents=True)
        for kept in (recipe.version_weights, *recipe.companions):
            if (work / "ckpt" / kept).exists():
                (target / kept).write_bytes((work / "ckpt" / kept).read_bytes())
    info = {
        "bundle": name,
        "version": version,
        "configuration": "quick" if quick else "full",
        "overrides": list(overrides),
        "trained_on": {
            "project": str(project),
            "items": report.n_items,
            "patients": report.n_patients,
        },
        # the phantom cohorts trained on (annotation_tools/seeds.py refuses them in benchmarks)
        "seeds": [] if cohort_seed(project) is None else [cohort_seed(project)],
        # the patients it did not fit on: its calibration cohort (annotation_tools.recalibrate)
        "held_out": held_out,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (target / "train_info.json").write_text(json.dumps(info, indent=1))
    yield f"new {name} version {version} in {target}"
    yield from _calibration_step(project, root, target, recipe)


def _calibration_step(project: Path, root: Path, target: Path, recipe: BundleInfo) -> Iterator[str]:
    """Calibrate the new version on the project's held-out patients (a step of the job, like
    the training's), and record what came of it in its ``train_info.json``: a version without
    a calibration says so and how to make one, never silently."""
    from .recalibrate import (
        CALIBRATION_FILES,
        VersionCalibration,
        calibrate_version,
        calibration_command,
    )

    if recipe.task not in CALIBRATION_FILES:
        return
    yield "running: " + calibration_command(recipe.task, target, str(project))
    # the scorer calibrates end to end, through the locator Predict uses in this project
    locator = locator_in_use(project, root.parent) if recipe.task == "scorer" else None
    try:
        # trusted: the job was allowed to parse this bundle folder's configs when it started
        outcome = calibrate_version(target, bundle_root=root, locator_weights=locator, trusted=True)
    except Exception as exc:  # the new weights are fine; only their calibration is missing
        outcome = VersionCalibration(
            bundle=recipe.name,
            version=target.name,
            task=recipe.task,
            path=None,
            patients=0,
            reason=f"the calibration failed ({type(exc).__name__}: {exc})",
            command=calibration_command(recipe.task, target),
        )
    info_file = target / "train_info.json"
    info = json.loads(info_file.read_text())
    info["calibration"] = outcome.as_dict()
    info_file.write_text(json.dumps(info, indent=1))
    yield "calibration: " + outcome.message()
