"""What the human in the loop saves: a simulated annotator scores held-out radiographs from
scratch and from the models' proposals (``ra-joints benchmark --task hitl``, issue #24).

The annotator's reading is a simulated reader's (``rater_a`` when the cohort has raters, else
the phantom truth): from scratch they click every visible joint and type every grade; with
proposals they accept all centres and all grades at once (one action each) and then fix what
differs from their own reading - drag a centre that is off by more than ``tolerance`` of the
image diagonal, click a joint the model missed, retype a grade that differs from theirs.

What is *measured* is the number of actions. Seconds come from a stated time model
(:data:`SECONDS`; assumptions, not measurements - no published per-click times exist for
Sharp/van der Heijde scoring), so a lab can put in its own. Savings are per patient with a 95 %
CI that resamples patients. Phantom figures are not clinical figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .benchmarking import PHANTOM_NOTE, heldout_cohort, heldout_seed

__all__ = [
    "SECONDS",
    "FilmActions",
    "benchmark_hitl",
    "film_actions",
    "hitl_markdown",
    "savings",
]

# Assumed seconds per action (a time model to be replaced by a lab's own timings).
SECONDS = {
    "click": 2.0,  # place one joint centre from scratch
    "drag": 3.0,  # find and move a proposal that is off
    "grade": 3.0,  # decide and type one grade
    "accept": 1.0,  # accept all proposals of a film (centres, or grades)
    "review": 0.5,  # glance at one proposal to see whether it needs fixing
}


@dataclass(frozen=True)
class FilmActions:
    """What one film costs the simulated annotator, from scratch and with proposals."""

    patient_id: str
    joints: int  # visible joints (centres to place)
    grades: int  # grades to give
    drags: int  # proposals off by more than the tolerance (or on another joint)
    clicks: int  # joints the model missed
    retyped: int  # model grades that differ from the annotator's

    @property
    def scratch_actions(self) -> int:
        return self.joints + self.grades

    @property
    def assisted_actions(self) -> int:
        return 2 + self.drags + self.clicks + self.retyped  # accept centres, accept grades

    def seconds(self, assisted: bool, times: Mapping[str, float] = SECONDS) -> float:
        if not assisted:
            return self.joints * times["click"] + self.grades * times["grade"]
        return (
            2 * times["accept"]
            + (self.joints + self.grades) * times["review"]
            + self.drags * times["drag"]
            + self.clicks * times["click"]
            + self.retyped * times["grade"]
        )


def film_actions(
    patient_id: str,
    truth_centres: Mapping[str, Sequence[float]],
    proposed_centres: Mapping[str, Sequence[float] | None],
    reader_grades: Mapping[tuple[str, str], float],
    proposed_grades: Mapping[tuple[str, str], float],
    shape: tuple[int, int],
    tolerance: float = 0.01,
) -> FilmActions:
    """Count the annotator's actions on one film (``tolerance`` as a share of the diagonal)."""
    from .metrics import round_grade

    diagonal = math.hypot(*shape)
    drags = clicks = 0
    for joint_id, (tx, ty) in truth_centres.items():
        xy = proposed_centres.get(joint_id)
        if xy is None:
            clicks += 1
        elif math.hypot(xy[0] - tx, xy[1] - ty) / diagonal > tolerance:
            drags += 1
    retyped = 0
    for key, grade in reader_grades.items():
        proposal = proposed_grades.get(key)
        if proposal is None or int(round_grade(proposal)) != int(grade):
            retyped += 1
    return FilmActions(patient_id, len(truth_centres), len(reader_grades), drags, clicks, retyped)


def savings(
    films: Sequence[FilmActions],
    times: Mapping[str, float] = SECONDS,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-patient actions and seconds from scratch vs with proposals, and the share saved
    with a 95 % CI over patients (films of a patient move together)."""
    if not films:
        raise ValueError("no films to measure the annotator on")
    patients = sorted({f.patient_id for f in films})
    per: dict[str, dict[str, float]] = {
        p: dict.fromkeys(("sa", "aa", "ss", "as"), 0.0) for p in patients
    }
    for f in films:
        row = per[f.patient_id]
        row["sa"] += f.scratch_actions
        row["aa"] += f.assisted_actions
        row["ss"] += f.seconds(False, times)
        row["as"] += f.seconds(True, times)
    table = np.array([[per[p][k] for k in ("sa", "aa", "ss", "as")] for p in patients])

    def saved(rows: np.ndarray) -> tuple[float, float]:
        totals = rows.sum(axis=0)
        return 1 - totals[1] / totals[0], 1 - totals[3] / totals[2]

    rng = np.random.default_rng(seed)
    boot = np.array(
        [saved(table[rng.integers(0, len(patients), len(patients))]) for _ in range(n_resamples)]
    )
    actions_saved, seconds_saved = saved(table)
    return {
        "patients": len(patients),
        "films": len(films),
        "per_patient": {
            "scratch_actions": float(table[:, 0].mean()),
            "assisted_actions": float(table[:, 1].mean()),
            "scratch_minutes": float(table[:, 2].mean() / 60),
            "assisted_minutes": float(table[:, 3].mean() / 60),
        },
        "actions_saved": {
            "value": float(actions_saved),
            "ci": [float(np.percentile(boot[:, 0], 2.5)), float(np.percentile(boot[:, 0], 97.5))],
        },
        "time_saved": {
            "value": float(seconds_saved),
            "ci": [float(np.percentile(boot[:, 1], 2.5)), float(np.percentile(boot[:, 1], 97.5))],
        },
        "fixes_per_film": {
            "drags": float(np.mean([f.drags for f in films])),
            "clicks": float(np.mean([f.clicks for f in films])),
            "retyped_grades": float(np.mean([f.retyped for f in films])),
        },
        "time_model_seconds": dict(times),
    }


def benchmark_hitl(
    bundle: Path | None = None,
    heldout: Path | None = None,
    *,
    patients: int = 10,
    seed: int = 2000,
    reader: str = "rater_a",
    tolerance: float = 0.01,
    device: str | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """The two-stage pipeline's proposals (``bundle``: another scorer) against a simulated
    annotator."""
    import tempfile

    from .evaluation import present_centres
    from .predict import PredictionService
    from .store import TRAINING_SOURCES, AnnotationStore

    service = PredictionService(
        "two-stage", bundles={"scorer": bundle} if bundle else None, device=device
    )
    project = heldout_cohort(
        heldout,
        patients,
        seed,
        us_pairs=0,
        bundles=[service.bundle("scorer").root, service.bundle("locator").root],
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = service.predict_folder(project / "radiographs", tmp, explain=False, overlays=False)
    located = {str(r.path): r for r in result.located}
    scored = {
        str(image.case.path): image for patient in result.patients for image in patient.images
    }
    films = []
    with AnnotationStore.open(project, create=False) as store:
        authors = [reader] if reader in store.authors() else None
        for record in store.images(modality="radiograph"):
            path = str(store.resolve(record))
            truth = present_centres(store.centres(record.id, sources=TRAINING_SOURCES))
            grades = {
                key: float(rev.value["value"])
                for key, rev in store.scores(
                    record.id, sources=TRAINING_SOURCES, authors=authors
                ).items()
                if key[0] in truth
            }
            loc = located.get(path)
            proposed = loc.present() if loc is not None else {}
            image = scored.get(path)
            proposed_grades = {}
            if image is not None:
                for joint_id, js in image.joints.items():
                    for st in ("narrowing", "erosion"):
                        value = getattr(js, st, None)
                        if value is not None and np.isfinite(value):
                            proposed_grades[(joint_id, st)] = float(value)
            films.append(
                film_actions(
                    record.patient_id,
                    truth,
                    proposed,
                    grades,
                    proposed_grades,
                    (record.height, record.width),
                    tolerance,
                )
            )
    return {
        "task": "hitl",
        "heldout": {"project": str(project), "seed": heldout_seed(project, seed)},
        "reader": reader if authors else "phantom truth (the cohort has no raters)",
        "tolerance": tolerance,
        "models": {k: v.model_info for k, v in service.models().items() if v is not None},
        **savings(films, n_resamples=n_resamples),
        "note": PHANTOM_NOTE,
    }


def hitl_markdown(result: Mapping[str, Any]) -> str:
    pp, fx = result["per_patient"], result["fixes_per_film"]
    a, t = result["actions_saved"], result["time_saved"]
    times = ", ".join(f"{k} {v:g} s" for k, v in result["time_model_seconds"].items())
    return "\n".join(
        [
            f"## Human in the loop: a simulated annotator ({result['patients']} patients, "
            f"{result['films']} films, seed {result['heldout']['seed']})",
            "",
            f"Reader: {result['reader']}; a centre needs a drag when it is more than "
            f"{result['tolerance']:g} of the diagonal off.",
            "",
            "| per patient | from scratch | with proposals | saved (95 % CI over patients) |",
            "| --- | --- | --- | --- |",
            f"| actions | {pp['scratch_actions']:.0f} | {pp['assisted_actions']:.0f} | "
            f"{a['value']:.1%} ({a['ci'][0]:.1%}-{a['ci'][1]:.1%}) |",
            f"| minutes (time model) | {pp['scratch_minutes']:.1f} | "
            f"{pp['assisted_minutes']:.1f} | {t['value']:.1%} ({t['ci'][0]:.1%}-"
            f"{t['ci'][1]:.1%}) |",
            "",
            f"- fixes per film: {fx['drags']:.1f} drags, {fx['clicks']:.1f} clicks on missed "
            f"joints, {fx['retyped_grades']:.1f} retyped grades",
            f"- time model (assumed, not measured): {times}",
            "",
            f"_{result['note']}_",
            "",
        ]
    )
