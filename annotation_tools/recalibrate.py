"""Calibrate a retrained version, so its predictions keep their grade sets (issue #24).

A calibration file belongs to one set of weights (it records their sha256; the loaders ignore
it for any other weights), so a version retrained in a project starts with none: its scores
would have no grade sets, its joints no radius. The retraining job
(:func:`annotation_tools.retrain.iter_retrain`) therefore calibrates every new version as its
last step, and ``ra-joints calibrate --weights PROJECT/models/<bundle>/<version>`` does the same
by hand. The file is written next to the version's weights under the name the loaders look
for there (``conformal.json``, ``locator_calibration.json``, ``us_conformal.json``).

**Which patients.** A version's own project is only usable for its *held-out* patients: the
retraining export splits the patients into folds and the training fits on every fold but the
validation fold (fold 0), which it uses to choose its checkpoint (early stopping). Those
validation patients are the calibration cohort. They are not strictly exchangeable with new
patients - the checkpoint was picked for doing well on them - so the calibration may be a
little optimistic, and its ``source.held_out`` says so. Holding out a separate calibration fold
would avoid that but take another fifth of a project's reviewed patients out of the training,
at the stage where a project has fewest; the training configs know one validation fold only,
so a second one would also need every recipe changed. Docs: docs/uncertainty.md.

* The other models in the pipeline must not have seen the patients either: the scorer is
  calibrated end to end through the locator Predict uses, and when that is a version of the
  same project only the patients *both* held out are used.
* A RATING ensemble has no held-out patients (each fold validates one member and trains the
  others), so a retrained ensemble is calibrated only on another project, by hand.
* Fewer than :data:`MIN_CALIBRATION_PATIENTS` patients: no file, and the reason with the
  command that calibrates it (a calibration on a handful of patients would claim a coverage
  it cannot back: a patient's joints err together).
* Seeds: the registry's checks (:func:`annotation_tools.seeds.check_calibration_seed`) run on
  every model of the pipeline that was *not* trained in this project; the version's own
  project seed is allowed only because its patients are split at patient level.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .conformal import CALIBRATION_FILE
from .locator_calibration import LOCATOR_CALIBRATION_FILE
from .us_conformal import US_CALIBRATION_FILE

__all__ = [
    "CALIBRATION_FILES",
    "HELD_OUT_NOTE",
    "MIN_CALIBRATION_PATIENTS",
    "VersionCalibration",
    "calibrate_version",
    "calibration_command",
    "held_out_record",
]

# The calibration each bundle task has, by the file name its loader looks for next to weights.
CALIBRATION_FILES = {
    "scorer": CALIBRATION_FILE,
    "locator": LOCATOR_CALIBRATION_FILE,
    "ultrasound": US_CALIBRATION_FILE,
}
WHAT = {
    "scorer": "grade sets",
    "locator": "position radius and p_correct",
    "ultrasound": "grade sets",
}
# Fewer patients than this give no calibration: with ~10 the realised coverage of a 90 % set
# still varies by several points from one cohort to the next (docs/uncertainty.md); fewer
# patients would claim a guarantee they cannot back.
MIN_CALIBRATION_PATIENTS = 10
HELD_OUT_NOTE = (
    "the retraining's validation fold: patients the weights never trained on, but the "
    "checkpoint was chosen on them (early stopping), so they are not strictly exchangeable "
    "with new patients and the coverage may come out a little optimistic"
)
ENSEMBLE_NOTE = (
    "every fold validates one member and trains the others, so no patient of the project is "
    "held out from the whole ensemble"
)


@dataclass
class VersionCalibration:
    """What calibrating a version gave: the file, or why there is none and how to make it."""

    bundle: str
    version: str
    task: str
    path: str | None  # the calibration file written; None: the version has no calibration
    patients: int  # calibration patients (0 when none could be used)
    reason: str  # why there is no file ("" when there is one)
    command: str  # the command that calibrates the version by hand

    @property
    def calibrated(self) -> bool:
        return self.path is not None

    def message(self) -> str:
        """One line for the job's log, its summary and the dock."""
        what = WHAT[self.task]
        if self.calibrated:
            return (
                f"{self.bundle} {self.version} has {what}: calibrated on {self.patients} "
                f"held-out patients ({self.path})"
            )
        return (
            f"{self.bundle} {self.version} has no {what}: {self.reason}. Calibrate it with: "
            f"{self.command}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message()}


def calibration_command(task: str, version_dir: str | Path, project: str | None = None) -> str:
    """The ``ra-joints calibrate`` line that calibrates a version (``project``: default a
    placeholder for a project the version never trained on)."""
    where = project or "CALIBRATION_PROJECT"
    return f"ra-joints calibrate --task {task} --weights {Path(version_dir)} --project {where}"


def held_out_record(
    datalists: Sequence[str | Path],
    validation_fold: int | None,
    *,
    ensemble: bool = False,
    annotators: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The patients a training did not fit on, from its export's datalists (``fold`` per item):
    kept in the version's ``train_info.json`` under ``held_out`` for its calibration, with the
    readers whose grades it trained on (``annotators``; None: the newest of any)."""
    if ensemble or validation_fold is None:
        return {"fold": None, "patients": [], "note": ENSEMBLE_NOTE}
    held, trained = set(), set()
    for path in datalists:
        for item in json.loads(Path(path).read_text()).get("training", []):
            (held if int(item["fold"]) == int(validation_fold) else trained).add(
                str(item["patient_id"])
            )
    if held & trained:  # folds are patient-level; anything else is an export bug
        raise ValueError(
            f"patients in the validation fold and in training: {sorted(held & trained)}"
        )
    return {
        "fold": int(validation_fold),
        "patients": sorted(held),
        "trained_patients": len(trained),
        "annotators": list(annotators) if annotators else None,
        "note": HELD_OUT_NOTE,
    }


def _patients(n: int) -> str:
    return f"{n} patient" if n == 1 else f"{n} patients"


def _train_info(version_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((version_dir / "train_info.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{version_dir} is not a retrained version (no readable train_info.json: {exc})"
        ) from exc


def _project_of(version_dir: Path) -> Path:
    """``PROJECT`` of ``PROJECT/models/<bundle>/<version>`` (where the version trained)."""
    return version_dir.resolve().parents[2]


def _held_out_patients(version_dir: Path) -> tuple[set[str] | None, str]:
    """A version's held-out patients (None, and why, when it has no usable record)."""
    record = _train_info(version_dir).get("held_out")
    if record is None:
        return None, (
            f"{version_dir} has no record of the patients it held out (trained before "
            "versions recorded them)"
        )
    if record.get("fold") is None:
        return None, str(record.get("note", "it held out no patients"))
    return {str(p) for p in record.get("patients", [])}, ""


def _is_version_of(weights: Path | None, project: Path) -> bool:
    return (
        weights is not None
        and (weights.parent / "train_info.json").is_file()
        and _project_of(weights.parent) == project
    )


def calibrate_version(
    version_dir: str | Path,
    projects: Sequence[str | Path] | None = None,
    *,
    bundle_root: str | Path | None = None,
    locator_weights: str | Path | None = None,
    out: str | Path | None = None,
    images: str | Path | None = None,
    device: str | None = None,
    trusted: bool = False,
) -> VersionCalibration:
    """Calibrate a retrained version and write the file next to its weights (or ``out``).

    ``projects``: ``None`` or the version's own project -> its held-out patients (module
    docstring); another project (several for the locator) -> all of that project's patients,
    with the seed checks against every model of the pipeline, this version included.
    ``bundle_root``: the bundle the version belongs to (default: the registered bundle of the
    version's folder name); ``locator_weights``: the locator the scorer's pipeline runs with
    (default: the shipped one). Too few patients, or none held out, returns a result without
    a file that says why; anything wrong with the inputs raises.
    """
    from .bundles import BundleInfo, bundle_for
    from .predict import PredictionService

    version_dir = Path(version_dir).resolve()
    info = BundleInfo.read(bundle_root) if bundle_root else bundle_for(version_dir.parent.name)
    task = info.task
    if task not in CALIBRATION_FILES:
        raise ValueError(
            f"{info.name} ({task}) has no calibration: only {sorted(CALIBRATION_FILES)}"
        )
    weights = version_dir / info.version_weights
    if not weights.is_file():
        raise FileNotFoundError(f"{version_dir} holds no {info.version_weights} of {info.name}")
    own = _project_of(version_dir)
    folders = [Path(p).resolve() for p in (projects or [own])]
    held_out_mode = folders == [own]
    command = calibration_command(task, version_dir)
    done = {"bundle": info.name, "version": version_dir.name, "task": task, "command": command}

    def none(reason: str, patients: int = 0) -> VersionCalibration:
        return VersionCalibration(**done, path=None, patients=patients, reason=reason)

    if len(folders) > 1 and task != "locator":
        raise ValueError(f"the {task} calibrates on one project (--project once)")
    locator = Path(locator_weights).resolve() if locator_weights else None
    service = PredictionService(
        "two-stage",
        bundles_dir=info.root.parent,  # the locator beside the bundle, for the scorer's
        bundles={task: info.root},
        weights={task: weights, "locator": locator},
        device=device,
        trusted=trusted,
    )
    patients: set[str] | None = None
    held: dict[str, Any] | None = None
    seen_elsewhere = [version_dir]  # versions whose seeds the registry checks must refuse
    if held_out_mode:
        patients, why = _held_out_patients(version_dir)
        if patients is None:
            return none(why)
        record = _train_info(version_dir)["held_out"]
        seen_elsewhere = []
        if task == "scorer" and locator is not None:
            if _is_version_of(locator, own):  # trained here too: only what both held out
                theirs, why = _held_out_patients(locator.parent)
                if theirs is None:
                    return none(f"the locator in use ({locator.parent.name}): {why}")
                patients &= theirs
            else:
                seen_elsewhere = [locator.parent]
        if len(patients) < MIN_CALIBRATION_PATIENTS:
            return none(
                f"only {_patients(len(patients))} held out in {own} (the calibration needs at "
                f"least {MIN_CALIBRATION_PATIENTS}); annotate more patients and retrain, or "
                "calibrate it on another project",
                len(patients),
            )
        held = {
            "fold": record["fold"],
            "patients": len(patients),
            "annotators": record.get("annotators"),
            "note": record["note"],
        }
    elif locator is not None and task == "scorer":
        seen_elsewhere.append(locator.parent)
    try:  # the registry's checks, before anything runs (the calibrations repeat them)
        _check_seeds(task, service, folders, seen_elsewhere)
    except ValueError as exc:
        return none(str(exc))
    calibration = _calibrate(
        task, service, folders, version_dir, patients, held, seen_elsewhere, images
    )
    n_patients = int(calibration.source["patients"])
    if n_patients < MIN_CALIBRATION_PATIENTS:
        return none(
            f"only {_patients(n_patients)} with reference grades could be used (the "
            f"calibration needs at least {MIN_CALIBRATION_PATIENTS})",
            n_patients,
        )
    path = Path(out) if out else version_dir / CALIBRATION_FILES[task]
    calibration.save(path)  # atomic: a killed job leaves the old file or none, never half
    return VersionCalibration(**done, path=str(path), patients=n_patients, reason="")


def _check_seeds(
    task: str, service: Any, folders: Sequence[Path], seen_elsewhere: Sequence[Path]
) -> None:
    """Calibration is a choice made on validation data: never a test seed, nor a seed any
    model of the pipeline trained on - except this project's own versions, whose patients
    were split at patient level (the caller uses only their held-out ones)."""
    from .seeds import RADIOGRAPH, ULTRASOUND, check_calibration_seed, cohort_seed

    stages = {"scorer": ("scorer", "locator"), "locator": ("locator",), "ultrasound": ()}[task]
    bundles = [service.bundle(stage).root for stage in stages] + list(seen_elsewhere)
    modality = ULTRASOUND if task == "ultrasound" else RADIOGRAPH
    for folder in folders:
        check_calibration_seed(cohort_seed(folder), modality, bundles=bundles)


def _calibrate(
    task: str,
    service: Any,
    folders: Sequence[Path],
    version_dir: Path,
    patients: set[str] | None,
    held: Mapping[str, Any] | None,
    seen_elsewhere: Sequence[Path],
    images: str | Path | None,
) -> Any:
    """The calibration of one task, from :mod:`annotation_tools.calibration` (the same
    functions ``ra-joints calibrate`` runs for the shipped weights)."""
    from .calibration import calibrate_scorer, calibrate_ultrasound
    from .locator_calibration import calibrate_locator

    if task == "scorer":
        return calibrate_scorer(
            folders[0],
            images=images,
            service=service,
            patients=patients,
            annotators=(held or {}).get("annotators"),
            held_out=held,
            trained=seen_elsewhere,
        )
    if task == "locator":
        return calibrate_locator(service.locator(), folders, patients=patients, held_out=held)
    return calibrate_ultrasound(folders[0], version_dir, device=service.device)
