"""Evaluation reports built from :mod:`annotation_tools.metrics`.

Used by ``ra-joints metrics``, the bundles' ``evaluate.json`` and the benchmarks, so every
figure of the project comes from the same code. Each report says that phantom figures are not
clinical figures when the data are phantoms.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .store import TRAINING_SOURCES, AnnotationStore
from .vocabulary import DREAM_TOTAL_COLUMNS, dream_columns, get_joint, parse_dream_column

PHANTOM_NOTE = "Phantom figures: measured on phantoms, they say nothing about clinical accuracy."


def read_dream_table(path: str | Path) -> dict[str, dict[str, float]]:
    """Patient -> column -> value of an RA2-DREAM table (empty cells left out)."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "Patient_ID" not in reader.fieldnames:
            raise ValueError(f"{path} has no Patient_ID column: not an RA2-DREAM score table")
        table = {}
        first_line: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            values = {}
            for column, text in row.items():
                if (
                    column == "Patient_ID"
                    or column not in dream_columns()
                    or not (text or "").strip()
                ):
                    continue
                try:
                    value = float(text)
                except ValueError as exc:
                    raise ValueError(f"{path}:{line} {column}: {text!r} is not a number") from exc
                _check_grade(path, line, column, value)
                values[column] = value
            patient = (row["Patient_ID"] or "").strip()
            if not patient:
                raise ValueError(f"{path}:{line}: empty Patient_ID")
            if patient in first_line:  # merging two rows would score a patient that is not there
                raise ValueError(
                    f"{path}:{line}: Patient_ID {patient!r} appears again (first on line "
                    f"{first_line[patient]}); one row per patient (and visit)"
                )
            first_line[patient] = line
            table[patient] = values
    return table


def _check_grade(path: Path, line: int, column: str, value: float) -> None:
    """A grade on its joint's scale (totals: finite and not negative), else the cell named."""
    if not np.isfinite(value):
        raise ValueError(f"{path}:{line} {column}: {value} is not a finite number")
    if column in DREAM_TOTAL_COLUMNS:
        if value < 0:
            raise ValueError(f"{path}:{line} {column}: a total cannot be negative ({value})")
        return
    joint, score_type = parse_dream_column(column)
    try:
        joint.validate_score(score_type, value)
    except ValueError as exc:
        raise ValueError(f"{path}:{line} {column}: {exc}") from None


def with_ci(
    fn: Any,
    truth: np.ndarray,
    pred: np.ndarray,
    n_resamples: int,
    seed: int,
    groups: Sequence[Any] | None = None,
) -> dict:
    """``fn(truth, pred)`` with its bootstrap 95 % CI (just the value when ``n_resamples`` is 0).

    ``groups`` (the patient of each case) makes it a bootstrap over patients; the benchmarks
    always give them. The dict's ``ci_method`` says which it was.
    """
    if n_resamples <= 0:
        return {"value": fn(truth, pred)}
    return metrics.bootstrap_ci(
        fn, truth, pred, n_resamples=n_resamples, seed=seed, groups=groups
    ).as_dict()


def evaluate_score_tables(
    truth_csv: str | Path, pred_csv: str | Path, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-joint and per-patient figures of predicted vs true RA2-DREAM tables."""
    if truth_csv is None or pred_csv is None:
        raise ValueError("scores metrics need --truth and --pred RA2-DREAM tables")
    return score_figures(
        read_dream_table(truth_csv), read_dream_table(pred_csv), n_resamples=n_resamples, seed=seed
    )


def score_figures(
    truth: Mapping[str, Mapping[str, float]],
    pred: Mapping[str, Mapping[str, float]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-joint and per-patient figures of two RA2-DREAM tables (patient -> column -> value)."""
    missing_patients = sorted(set(truth) - set(pred))
    per_type: dict[str, tuple[list[float], list[float], list[str]]] = defaultdict(
        lambda: ([], [], [])
    )
    per_joint: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    missing_scores = 0
    for pid, row in truth.items():
        if pid not in pred:
            continue
        for column, value in row.items():
            if column in DREAM_TOTAL_COLUMNS:
                continue
            if column not in pred[pid]:
                missing_scores += 1
                continue
            joint, score_type = parse_dream_column(column)
            key = f"{joint.limb.kind}_{score_type.value}"
            for bucket in (per_type[key], per_type[score_type.value]):
                bucket[0].append(value)
                bucket[1].append(pred[pid][column])
                bucket[2].append(pid)
            site = per_joint[f"{joint.limb.kind}:{joint.site}:{score_type.value}"]
            site[0].append(value)
            site[1].append(pred[pid][column])
    if not per_type:
        raise ValueError("no patient/score appears in both tables")
    result: dict[str, Any] = {
        "n_patients": len(set(truth) & set(pred)),
        "missing_patients": missing_patients,
        "missing_scores": missing_scores,
        "per_score": {},
        "per_joint": {},
        "patient_totals": {},
        "baselines": {},
        "ci_method": f"95 % percentile bootstrap over {len(set(truth) & set(pred))} patients "
        "(per-joint figures: all joints of a drawn patient; totals: one value per patient)",
    }
    for key, (t, p, ids) in per_type.items():
        ta, pa = np.asarray(t), np.asarray(p)
        summary = metrics.score_summary(ta, pa)
        # joints of one patient are not independent: the CI resamples patients
        summary["rmse_ci"] = with_ci(metrics.rmse, ta, pa, n_resamples, seed, groups=ids)
        result["per_score"][key] = summary
        result["baselines"][key] = {
            "all_zeros_rmse": metrics.rmse(ta, np.zeros_like(ta)),
            "mean_rmse": metrics.rmse(ta, np.full_like(ta, ta.mean())),
        }
    for key, (t, p) in sorted(per_joint.items()):
        result["per_joint"][key] = {
            "n": len(t),
            "rmse": metrics.rmse(t, p),
            "exact_agreement": metrics.exact_agreement(t, p),
        }
    for name, columns in _total_columns().items():
        t, p = _patient_totals(truth, pred, columns)
        if len(t) >= 2:
            result["patient_totals"][name] = {
                "n": len(t),
                "rmse": metrics.rmse(t, p),
                "pearson_r": with_ci(
                    metrics.pearson_r, np.asarray(t), np.asarray(p), n_resamples, seed
                ),
            }
    return result


def paired_score_errors(
    truth: Mapping[str, Mapping[str, float]],
    preds: Sequence[Mapping[str, Mapping[str, float]]],
    score_type: str,
) -> list[np.ndarray]:
    """Absolute errors of several predictions on the scores *all* of them gave, same order.

    The input of a paired test (``metrics.wilcoxon_one_sided``) between two models.
    """
    return [np.concatenate(e) for e in _errors_by_patient(truth, preds, score_type)]


def paired_patient_errors(
    truth: Mapping[str, Mapping[str, float]],
    preds: Sequence[Mapping[str, Mapping[str, float]]],
    score_type: str | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Absolute errors of several predictions on the scores all of them gave, and the patient
    of each score: the input of :func:`metrics.paired_patient_comparison`."""
    by_patient = _errors_by_patient(truth, preds, score_type)
    pids = sorted(truth)
    ids = np.array([pid for pid, e in zip(pids, by_patient[0], strict=True) for _ in e])
    return [np.concatenate(e) for e in by_patient], ids


def compare_score_tables(
    truth: Mapping[str, Mapping[str, float]],
    table_a: Mapping[str, Mapping[str, float]],
    table_b: Mapping[str, Mapping[str, float]],
    score_type: str | None,
    *,
    loss: str = "squared",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Is table A better than table B? Per-patient paired test on the scores both gave.

    ``loss="squared"``: per-patient MSE, the claim "A has the lower RMSE"; the effect is the
    mean difference of per-patient MSE with a CI over patients (see
    :func:`metrics.paired_patient_comparison`).
    """
    (err_a, err_b), ids = paired_patient_errors(truth, [table_a, table_b], score_type)
    if err_a.size == 0:
        raise ValueError(f"the two tables share no {score_type or 'score'} with the truth")
    out = metrics.paired_patient_comparison(
        err_a, err_b, ids, loss=loss, n_resamples=n_resamples, seed=seed
    )
    out["rmse_a"] = float(np.sqrt(np.mean(np.square(err_a))))
    out["rmse_b"] = float(np.sqrt(np.mean(np.square(err_b))))
    out["mean_abs_error_a"] = float(err_a.mean())
    out["mean_abs_error_b"] = float(err_b.mean())
    return out


def paired_patient_mse(
    truth: Mapping[str, Mapping[str, float]],
    preds: Sequence[Mapping[str, Mapping[str, float]]],
    score_type: str | None = None,
) -> list[np.ndarray]:
    """Mean squared error per patient of several predictions (same patients, same scores).

    Joints of one patient are not independent; a paired test over patients is the honest one.
    """
    return [
        np.array([np.mean(np.square(p)) for p in e if len(p)])
        for e in _errors_by_patient(truth, preds, score_type)
    ]


def _errors_by_patient(
    truth: Mapping[str, Mapping[str, float]],
    preds: Sequence[Mapping[str, Mapping[str, float]]],
    score_type: str | None,
) -> list[list[np.ndarray]]:
    letters = {"narrowing": ("_J__",), "erosion": ("_E__",), None: ("_J__", "_E__")}[score_type]
    out: list[list[np.ndarray]] = [[] for _ in preds]
    for pid, row in sorted(truth.items()):
        columns = [
            c
            for c in sorted(row)
            if any(x in c for x in letters) and all(c in p.get(pid, {}) for p in preds)
        ]
        for e, p in zip(out, preds, strict=True):
            e.append(np.array([abs(p[pid][c] - row[c]) for c in columns], dtype=float))
    return out


def _total_columns() -> dict[str, list[str]]:
    joint_cols = [c for c in dream_columns() if c not in DREAM_TOTAL_COLUMNS]
    return {
        "Overall_Tol": joint_cols,
        "Overall_erosion": [c for c in joint_cols if "_E__" in c],
        "Overall_narrowing": [c for c in joint_cols if "_J__" in c],
    }


def _patient_totals(
    truth: Mapping[str, Mapping[str, float]],
    pred: Mapping[str, Mapping[str, float]],
    columns: Iterable[str],
) -> tuple[list[float], list[float]]:
    """Totals over patients whose every score is present in both tables."""
    columns = list(columns)
    t, p = [], []
    for pid, row in truth.items():
        if pid in pred and all(c in row and c in pred[pid] for c in columns):
            t.append(sum(row[c] for c in columns))
            p.append(sum(pred[pid][c] for c in columns))
    return t, p


def locator_figures(
    cases: Iterable[tuple[str, Mapping[str, Sequence[float]], Mapping[str, Any], Sequence[int]]],
    *,
    tolerance: float = 0.02,
    wrong: Sequence[str] = (),
) -> dict[str, Any]:
    """Locator figures over ``(image, truth, prediction, (H, W))`` cases.

    ``truth`` maps joint id -> ``(x, y)`` of the annotated (present) joints; ``prediction``
    maps joint id -> ``(x, y)``, or ``None`` / absent for a joint flagged missing.
    Errors are the RA2-DREAM winner's (:func:`metrics.normalised_errors`: x / width, y /
    height) in ``by_region``; the same shares of the error / image diagonal, the project's
    figure before issue 23 and more lenient on portrait images, are the secondary
    ``by_region_diagonal``.
    A joint is *wrongly named* when its point is off its own joint (> ``tolerance`` of the
    image diagonal) and on another one (<= ``tolerance`` of the diagonal): an index-middle or
    thumb-index swap. This rule keeps the diagonal, so its meaning did not change with the
    headline error: with x / width, y / height, wrist points a little nearer a neighbouring
    site (they lie a few pixels apart) crossed 0.02 of their own and counted as swaps (2 of 8
    radiographs of the test fixture, seed 777).
    Points near their own joint but a little nearer a neighbour (wrist sites lie a few pixels
    apart) are counted separately as ``closer_to_another_joint``. ``wrong`` adds wrong names
    found elsewhere (e.g. a whole image located as the wrong limb).
    """
    errors, diagonal_errors, regions, present, detected = [], [], [], [], []
    wrong_names = list(wrong)
    closer_to_other = 0
    per_joint: dict[str, list[float]] = defaultdict(list)
    n_images = 0
    for image, truth, prediction, shape in cases:
        n_images += 1
        ids = list(truth)
        truth_xy = np.array([truth[k] for k in ids], dtype=float).reshape(-1, 2)
        for joint_id in ids:
            xy = prediction.get(joint_id)
            present.append(True)
            detected.append(xy is not None)
            point = [xy if xy is not None else (np.nan, np.nan)]
            err = float(metrics.normalised_errors([truth[joint_id]], point, shape)[0])
            errors.append(err)
            diagonal_errors.append(
                float(metrics.diagonal_errors([truth[joint_id]], point, shape)[0])
            )
            regions.append(get_joint(joint_id).region)
            per_joint[get_joint(joint_id).site].append(err)
            if xy is None:
                continue
            dist = metrics.diagonal_errors(truth_xy, [xy] * len(ids), shape)
            nearest = ids[int(np.argmin(dist))]
            if nearest != joint_id:
                closer_to_other += 1
                if diagonal_errors[-1] > tolerance and dist.min() <= tolerance:
                    wrong_names.append(f"{image}: {joint_id} placed on {nearest}")
    if not errors:
        raise ValueError("no annotated joints to evaluate")
    return {
        "n_images": n_images,
        "n_joints": len(errors),
        "error": "x / image width, y / image height (RA2-DREAM winner); by_region_diagonal: "
        "distance / image diagonal (secondary)",
        "by_region": metrics.locator_summary(errors, regions),
        "by_region_diagonal": metrics.locator_summary(diagonal_errors, regions),
        "detection_sensitivity": metrics.detection_sensitivity(present, detected),
        "wrong_names": len(wrong_names),
        "wrong_name_examples": wrong_names[:20],
        "closer_to_another_joint": closer_to_other,
        "per_joint_within_0.02": {
            k: float(np.mean(np.asarray(v) <= 0.02)) for k, v in sorted(per_joint.items())
        },
        "per_joint_median_error": {k: float(np.median(v)) for k, v in sorted(per_joint.items())},
    }


def present_centres(revisions: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Joint id -> (x, y) of the store revisions whose status is ``present``."""
    return {k: (r.value["x"], r.value["y"]) for k, r in revisions.items() if r.status == "present"}


def evaluate_locator_store(
    project: str | Path, pred_source: str = "model", truth_sources: Iterable[str] = TRAINING_SOURCES
) -> dict[str, Any]:
    """Predicted (``pred_source``) vs annotated centres of every radiograph in a project."""
    if project is None:
        raise ValueError("locator metrics need --project")
    cases = []
    with AnnotationStore.open(project, create=False) as store:
        for image in store.images(modality="radiograph"):
            pred = store.centres(image.id, sources=[pred_source])
            if not pred:
                continue
            truth = present_centres(store.centres(image.id, sources=truth_sources))
            cases.append((image.path, truth, present_centres(pred), (image.height, image.width)))
    if not cases:
        raise ValueError(
            f"no radiograph in {project} has both {pred_source!r} and annotated centres"
        )
    return locator_figures(cases)


def evaluate_us_store(
    project: str | Path,
    pred_source: str = "model",
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    truth_sources: Iterable[str] = TRAINING_SOURCES,
) -> dict[str, Any]:
    """Predicted vs annotated EULAR-OMERACT grades: accuracy and weighted kappa with CIs."""
    if project is None:
        raise ValueError("ultrasound metrics need --project")
    grades: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    patients: dict[str, list[str]] = defaultdict(list)
    with AnnotationStore.open(project, create=False) as store:
        for pair in store.us_pairs():
            truth = store.us_score(pair["id"], sources=truth_sources)
            pred = store.us_score(pair["id"], sources=[pred_source])
            if truth is None or pred is None:
                continue
            for key in ("synovial_hypertrophy", "vascularity", "combined"):
                grades[key][0].append(truth.value[key])
                grades[key][1].append(pred.value[key])
                patients[key].append(pair["patient_id"])
    if not grades:
        raise ValueError(
            f"no ultrasound pair in {project} has both {pred_source!r} and annotated grades"
        )
    out = {}
    for key, (t, p) in grades.items():
        ta, pa = np.asarray(t), np.asarray(p)
        ids = patients[key]  # the pairs of one patient are resampled together
        out[key] = {
            "n": len(t),
            "accuracy": with_ci(metrics.accuracy, ta, pa, n_resamples, seed, groups=ids),
            "linear_weighted_kappa": with_ci(
                metrics.linear_weighted_kappa, ta, pa, n_resamples, seed, groups=ids
            ),
        }
    return out


__all__ = [
    "PHANTOM_NOTE",
    "compare_score_tables",
    "evaluate_locator_store",
    "evaluate_score_tables",
    "evaluate_us_store",
    "locator_figures",
    "paired_patient_errors",
    "paired_patient_mse",
    "paired_score_errors",
    "present_centres",
    "read_dream_table",
    "score_figures",
    "with_ci",
]


# ------------------------------------------------------------------ reader vs reader

ULTRASOUND_GRADES = ("synovial_hypertrophy", "vascularity", "combined")


def reader_agreement(
    a: Mapping[str, Mapping[tuple[str, str], float]],
    b: Mapping[str, Mapping[tuple[str, str], float]],
) -> dict[str, Any]:
    """Agreement of two readers' grade tables (patient -> ``(joint_id, score_type)`` -> grade).

    Per scale (hand/foot narrowing and erosion; kappa over the scale's grades), per score type
    pooled, and Pearson r of the per-image (limb) and per-patient totals over the joints both
    graded (patients missing a joint in either table are left out of the totals).
    """
    from .vocabulary import all_joints

    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two tables share no patient")
    expected = {(j.id, t.value) for j in all_joints() for t in j.score_types}
    cells: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    tops: dict[str, int] = {}
    totals: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    images: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for pid in common:
        both = set(a[pid]) & set(b[pid])
        per_image: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key in sorted(both):
            joint = get_joint(key[0])
            va, vb = float(a[pid][key]), float(b[pid][key])
            for name in (f"{joint.limb.kind}_{key[1]}", key[1]):
                cells[name][0].append(va)
                cells[name][1].append(vb)
                tops[name] = max(tops.get(name, 0), joint.max_score(key[1]))
            per_image[(joint.limb.value, key[1])][0] += va
            per_image[(joint.limb.value, key[1])][1] += vb
        for (_limb, score_type), (ta, tb) in per_image.items():
            images[score_type][0].append(ta)
            images[score_type][1].append(tb)
        if expected <= both:
            for score_type in ("narrowing", "erosion"):
                keys = [k for k in expected if k[1] == score_type]
                totals[score_type][0].append(sum(a[pid][k] for k in keys))
                totals[score_type][1].append(sum(b[pid][k] for k in keys))
            totals["total"][0].append(totals["narrowing"][0][-1] + totals["erosion"][0][-1])
            totals["total"][1].append(totals["narrowing"][1][-1] + totals["erosion"][1][-1])
    if not cells:
        raise ValueError("the two tables share no graded joint")
    out: dict[str, Any] = {"n_patients": len(common), "per_scale": {}, "per_score": {}}
    for name, (va, vb) in sorted(cells.items()):
        target = out["per_score"] if name in ("narrowing", "erosion") else out["per_scale"]
        target[name] = metrics.rater_agreement(va, vb, labels=range(tops[name] + 1))
    out["image_totals"] = {
        k: {"n": len(v[0]), "pearson_r": metrics.rater_agreement(*v)["pearson_r"]}
        for k, v in sorted(images.items())
    }
    out["patient_totals"] = {
        k: {"n": len(v[0]), "pearson_r": metrics.rater_agreement(*v)["pearson_r"]}
        for k, v in totals.items()
        if len(v[0]) >= 2
    }
    return out


def dream_table_grades(path: str | Path) -> dict[str, dict[tuple[str, str], float]]:
    """An RA2-DREAM table as patient -> ``(joint_id, score_type)`` -> grade (totals dropped)."""
    out = {}
    for pid, row in read_dream_table(path).items():
        grades = {}
        for column, value in row.items():
            if column in DREAM_TOTAL_COLUMNS:
                continue
            joint, score_type = parse_dream_column(column)
            grades[(joint.id, score_type.value)] = value
        out[pid] = grades
    return out


def read_ultrasound_table(path: str | Path) -> dict[tuple[str, str, str], dict[str, int]]:
    """``ultrasound_scores.csv`` (or a rater's) as (patient, site, grey-scale file) -> grades."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"patient_id", "site", "greyscale", *ULTRASOUND_GRADES[:2]} - set(
            reader.fieldnames or []
        )
        if missing:
            raise ValueError(f"{path} lacks column(s) {sorted(missing)}: not an ultrasound table")
        out = {}
        for line, row in enumerate(reader, start=2):
            try:
                sh, vasc = int(row["synovial_hypertrophy"]), int(row["vascularity"])
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: grades must be integers 0-3") from exc
            if not (0 <= sh <= 3 and 0 <= vasc <= 3):
                raise ValueError(f"{path}:{line}: grades must be integers 0-3, got {sh}, {vasc}")
            key = (row["patient_id"], row["site"], row["greyscale"])
            out[key] = {"synovial_hypertrophy": sh, "vascularity": vasc, "combined": max(sh, vasc)}
    return out


def ultrasound_reader_agreement(
    a: Mapping[Any, Mapping[str, int]], b: Mapping[Any, Mapping[str, int]]
) -> dict[str, Any]:
    """SH, vascularity and combined (EOSS) agreement of two readers over the pairs both graded."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two ultrasound tables share no pair")
    out: dict[str, Any] = {"n_pairs": len(common)}
    for grade in ULTRASOUND_GRADES:
        out[grade] = metrics.rater_agreement(
            [a[k][grade] for k in common], [b[k][grade] for k in common], labels=range(4)
        )
    return out


def table_agreement(a_csv: str | Path, b_csv: str | Path) -> dict[str, Any]:
    """Agreement of two readers' tables: RA2-DREAM or ultrasound (told apart by the header)."""
    with open(a_csv, newline="") as handle:
        header = next(csv.reader(handle), [])
    if "Patient_ID" in header:
        return {
            "kind": "radiograph",
            **reader_agreement(dream_table_grades(a_csv), dream_table_grades(b_csv)),
        }
    return {
        "kind": "ultrasound",
        **ultrasound_reader_agreement(read_ultrasound_table(a_csv), read_ultrasound_table(b_csv)),
    }


def agreement_lines(result: Mapping[str, Any]) -> str:
    """The agreement table as text (what ``ra-joints agreement`` prints)."""
    head = f"{'':<22}{'n':>7}{'exact':>8}{'within1':>9}{'r':>7}{'kappa_lin':>10}{'mean a-b':>10}"

    def line(name: str, s: Mapping[str, float]) -> str:
        return (
            f"{name:<22}{s['n']:>7}{s['exact']:>8.1%}{s['within_one']:>9.1%}"
            f"{s['pearson_r']:>7.3f}{s['linear_weighted_kappa']:>10.3f}"
            f"{s['mean_difference']:>+10.3f}"
        )

    if result["kind"] == "ultrasound":
        rows = [f"{result['n_pairs']} ultrasound pairs graded by both", head]
        rows += [line(g, result[g]) for g in ULTRASOUND_GRADES]
        return "\n".join(rows)
    rows = [f"{result['n_patients']} patients in both tables; per joint:", head]
    rows += [line(k, v) for k, v in result["per_scale"].items()]
    rows += [line(k, v) for k, v in result["per_score"].items()]
    rows.append("Pearson r of totals:")
    for level in ("image_totals", "patient_totals"):
        for k, v in result[level].items():
            rows.append(f"  {level.replace('_', ' ')[:-1]} {k}: {v['pearson_r']:.3f} (n={v['n']})")
    return "\n".join(rows)
