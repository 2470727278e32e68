"""``ra-joints benchmark --task baselines``: the baselines the shipped models must beat.

Trains the baselines of :mod:`annotation_tools.baselines` on a training-seed phantom cohort,
measures them, their patient-shuffled (broken) twins and the shipped scorer and RATING
ensemble on a validation-seed cohort, and says for each learned model whether it beats the
best baseline by the stated margin with a patient-level CI of the difference that excludes 0.
Not part of ``--task all`` (it generates and trains its own cohorts); its command is in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .baselines import (
    DARK_LEVELS,
    GAP_FEATURES,
    TRAIN_SEEDS,
    VALIDATION_SEEDS,
    PixelBaseline,
    all_zeros_table,
    beats_baseline,
    falls_to_chance,
    gap_profile_features,
    training_mean_table,
    training_means,
    us_pixel_features,
)
from .bundles import bundle_path
from .evaluation import PHANTOM_NOTE
from .metrics import MetricWarning, format_p_value

__all__ = [
    "MARGIN",
    "baselines_markdown",
    "benchmark_baselines",
    "radiograph_joint_data",
    "ultrasound_pair_data",
]

MARGIN = 0.10  # a learned loss must be at least 10 % below the best baseline's
SCORE_TYPES = ("narrowing", "erosion")
US_GRADES = ("synovial_hypertrophy", "vascularity", "combined")
SHUFFLE_SEEDS = (0, 1, 2, 3, 4)  # the broken ultrasound variant: five shuffles, pooled
PATCH_SIZE = 96  # finer than the scorer's 64 px: the gap is a few pixels wide


def _cohort(
    work: Path, seed: int, patients: int, *, style: str, height: int = 1200, us_pairs: int = 2
) -> Path:
    from .phantoms import generate_cohort

    folder = Path(work) / f"{style}_s{seed}_n{patients}_h{height}_us{us_pairs}"
    if not (folder / "cohort.json").exists():
        generate_cohort(
            folder, patients, seed, height=height, us_pairs=us_pairs, style=style, progress=False
        )
    return folder


# ------------------------------------------------------------------ radiographs


def radiograph_joint_data(project: Path, patch_size: int = PATCH_SIZE) -> dict[str, Any]:
    """Every annotated joint of a project: its gap-profile features, joint type, patient, and
    RA2-DREAM columns; plus the project's truth table."""
    from .evaluation import read_dream_table
    from .scoring import load_patch_set
    from .store import TRAINING_SOURCES
    from .vocabulary import dream_column, get_joint

    truth = read_dream_table(Path(project) / "scores_ra2dream.csv")
    patches = load_patch_set(store=project, patch_size=patch_size, sources=TRAINING_SOURCES)
    rows: dict[str, list[Any]] = {k: [] for k in ("x", "site", "patient", "joint", "columns")}
    for item, meta in zip(patches.items, patches.meta, strict=True):
        joint = get_joint(meta["joint_id"])
        pid = patches.cases[meta["case"]].patient_id
        rows["x"].append(gap_profile_features(item["image"][0]))
        rows["site"].append(f"{joint.limb.kind}:{joint.site}")
        rows["patient"].append(pid)
        rows["joint"].append(joint.id)
        rows["columns"].append({t.value: dream_column(joint, t) for t in joint.score_types})
    if not rows["x"]:
        raise ValueError(f"no annotated joint in {project}")
    return {
        "truth": truth,
        "x": np.stack(rows["x"]),
        "site": np.array(rows["site"]),
        "patient": np.array(rows["patient"]),
        "columns": rows["columns"],
    }


def _labelled(data: Mapping[str, Any], score_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(case indices, labels) of the joints carrying ``score_type`` with a true grade."""
    idx, y = [], []
    for i, (pid, cols) in enumerate(zip(data["patient"], data["columns"], strict=True)):
        column = cols.get(score_type)
        if column is not None and column in data["truth"].get(pid, {}):
            idx.append(i)
            y.append(data["truth"][pid][column])
    return np.array(idx, int), np.array(y, float)


def _gap_tables(
    train: Mapping[str, Any],
    val: Mapping[str, Any],
    *,
    shuffled: bool,
    seed: int,
    trees: int = 200,
) -> dict[str, dict[str, float]]:
    """The gap-profile regressors' RA2-DREAM table of the validation patients."""
    table: dict[str, dict[str, float]] = {pid: {} for pid in val["truth"]}
    for score_type in SCORE_TYPES:
        i_tr, y_tr = _labelled(train, score_type)
        i_va, _ = _labelled(val, score_type)
        model = PixelBaseline("regressor", shuffled=shuffled, seed=seed, trees=trees).fit(
            train["x"][i_tr], y_tr, train["patient"][i_tr], train["site"][i_tr]
        )
        pred = model.predict(val["x"][i_va], val["site"][i_va])
        for i, value in zip(i_va, pred, strict=True):
            table[val["patient"][i]][val["columns"][i][score_type]] = float(value)
    return table


def _scorer_tables(project: Path, bundle: Path | None, device: str | None) -> dict[str, Any]:
    from .scoring import JointScorer, load_patch_set
    from .store import TRAINING_SOURCES
    from .vocabulary import dream_row

    scorer = JointScorer.from_bundle(bundle_path("scorer", bundle), device=device)
    patches = load_patch_set(store=project, patch_size=scorer.patch_size, sources=TRAINING_SOURCES)
    patients = scorer.score(patches)
    name = f"shipped scorer ({scorer.variant} / {scorer.head})"
    out = {f"{name}, patch stage": {p.patient_id: dream_row(p.patient_id, p.scores("patch"))
                                    for p in patients}}  # fmt: skip
    if scorer.symmetry is not None:
        out[f"{name} + symmetry"] = {
            p.patient_id: dream_row(p.patient_id, p.scores("final")) for p in patients
        }
    return out


def _radiograph_part(
    work: Path,
    *,
    train_seed: int,
    val_seed: int,
    train_patients: int,
    val_patients: int,
    style: str,
    n_resamples: int,
    device: str | None,
    scorer_bundle: Path | None,
    learned: bool,
    cohorts: Mapping[str, Path] | None = None,
    trees: int = 200,
) -> dict[str, Any]:
    from .evaluation import compare_score_tables, score_figures

    given = cohorts or {}
    train_dir = given.get("radiograph_train") or _cohort(
        work, train_seed, train_patients, style=style
    )
    val_dir = given.get("radiograph_validation") or _cohort(
        work, val_seed, val_patients, style=style
    )
    train, val = radiograph_joint_data(train_dir), radiograph_joint_data(val_dir)
    truth = val["truth"]
    tables = {
        "all zeros (Li & Guan)": all_zeros_table(truth),
        "training mean per joint (Li & Guan)": training_mean_table(
            truth, training_means(train["truth"])
        ),
        "gap profile + random forest": _gap_tables(train, val, shuffled=False, seed=0, trees=trees),
        "gap profile + random forest, patient-shuffled labels (broken)": _gap_tables(
            train, val, shuffled=True, seed=0, trees=trees
        ),
    }
    baselines = list(tables)
    if learned:
        tables.update(_scorer_tables(val_dir, scorer_bundle, device))
    rows = []
    for name, table in tables.items():
        with warnings.catch_warnings():  # all zeros: r of a constant is nan, as expected
            warnings.simplefilter("ignore", MetricWarning)
            fig = score_figures(truth, table, n_resamples=n_resamples)
        rows.append(
            {
                "name": name,
                "kind": "baseline" if name in baselines else "learned",
                **{
                    t: {
                        "rmse": fig["per_score"][t]["rmse"],
                        "rmse_ci": fig["per_score"][t].get("rmse_ci"),
                        "exact_agreement": fig["per_score"][t]["exact_agreement"],
                        "pearson_r": fig["per_score"][t]["pearson_r"],
                    }
                    for t in SCORE_TYPES
                },
                "ci_method": fig["ci_method"],
            }
        )
    real = [n for n in baselines if "broken" not in n]
    verdicts: dict[str, Any] = {}
    for t in SCORE_TYPES:
        best = min(real, key=lambda n: next(r[t]["rmse"] for r in rows if r["name"] == n))
        chance = compare_score_tables(
            truth,
            tables[baselines[-1]],
            tables["training mean per joint (Li & Guan)"],
            t,
            n_resamples=n_resamples,
        )
        real_gap = compare_score_tables(
            truth,
            tables["gap profile + random forest"],
            tables["training mean per joint (Li & Guan)"],
            t,
            n_resamples=n_resamples,
        )
        entry: dict[str, Any] = {
            "best_baseline": best,
            "shuffled_vs_training_mean": {**chance, **falls_to_chance(chance)},
            "gap_profile_vs_training_mean": real_gap,
            "learned": {},
        }
        for name in tables:
            if name in baselines:
                continue
            diff = compare_score_tables(
                truth, tables[name], tables[best], t, n_resamples=n_resamples
            )
            entry["learned"][name] = {
                "comparison": diff,
                **beats_baseline(diff["rmse_a"], diff["rmse_b"], MARGIN, ci=diff["ci"]),
            }
        verdicts[t] = entry
    return {
        "train": {"seed": train_seed, "patients": train_patients, "style": style,
                  "joints": len(train["x"])},
        "validation": {"seed": val_seed, "patients": val_patients, "style": style,
                       "joints": len(val["x"]), "project": str(val_dir)},
        "features": list(GAP_FEATURES),
        "patch_size": PATCH_SIZE,
        "rows": rows,
        "verdicts": verdicts,
    }  # fmt: skip


# ------------------------------------------------------------------ ultrasound


def ultrasound_pair_data(project: Path, size: int | None = None) -> dict[str, Any]:
    """Every ultrasound pair of a project with true grades: pixel features, the RATING input,
    patient, site and grades."""
    from .ultrasound import RATING_SIZE
    from .us_rating import load_us_cases

    cases = load_us_cases(store=project, size=size or RATING_SIZE)
    cases.cases = [c for c in cases.cases if c.truth is not None]
    if not cases.cases:
        raise ValueError(f"no graded ultrasound pair in {project}")
    return {
        "cases": cases,
        "x": np.stack([us_pixel_features(c.image) for c in cases.cases]),
        "patient": np.array([c.patient_id for c in cases.cases]),
        "site": np.array([c.site for c in cases.cases]),
        "y": {g: np.array([c.truth[g] for c in cases.cases]) for g in US_GRADES},
    }


def _rating_grades(cases: Any, bundle: Path | None, device: str | None) -> dict[str, np.ndarray]:
    import torch

    from .us_rating import load_ensemble

    models = bundle_path("ultrasound", bundle) / "models"
    info = json.loads((models / "ensemble.json").read_text())
    ensemble = load_ensemble(models, **info["network"]).to(device or "cpu")
    logits = []
    with torch.no_grad():
        for i in range(0, len(cases.cases), 16):
            chunk = cases.cases[i : i + 16]
            x = torch.as_tensor(np.stack([c.image for c in chunk]), dtype=torch.float32) / 255.0
            logits.append(ensemble(x.to(device or "cpu")).cpu().numpy())
    decisions = ensemble.decide(np.concatenate(logits))
    return {g: np.array([d[g] for d in decisions]) for g in US_GRADES}


def _us_figures(
    y: np.ndarray, pred: np.ndarray, patients: np.ndarray, n_resamples: int
) -> dict[str, Any]:
    from . import metrics
    from .evaluation import with_ci

    return {
        "accuracy": with_ci(metrics.accuracy, y, pred, n_resamples, 0, groups=patients),
        "linear_weighted_kappa": with_ci(
            lambda t, p: metrics.linear_weighted_kappa(t, p, labels=range(4)),
            y,
            pred,
            n_resamples,
            0,
            groups=patients,
        ),
    }


def _ultrasound_part(
    work: Path,
    *,
    train_seed: int,
    val_seed: int,
    train_patients: int,
    val_patients: int,
    pairs: int,
    style: str,
    n_resamples: int,
    device: str | None,
    us_bundle: Path | None,
    learned: bool,
    cohorts: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    from .metrics import paired_patient_comparison

    given = cohorts or {}
    train_dir = given.get("ultrasound_train") or _cohort(
        work, train_seed, train_patients, style=style, height=256, us_pairs=pairs
    )
    val_dir = given.get("ultrasound_validation") or _cohort(
        work, val_seed, val_patients, style=style, height=256, us_pairs=pairs
    )
    train, val = ultrasound_pair_data(train_dir), ultrasound_pair_data(val_dir)
    preds: dict[str, dict[str, np.ndarray]] = {}
    for grade in US_GRADES:
        counts = np.bincount(train["y"][grade], minlength=4)
        preds.setdefault("majority grade of the training cohort", {})[grade] = np.full(
            len(val["x"]), int(np.argmax(counts))
        )
    real_name = "dark + colour pixel shares + logistic regression"
    broken = (
        f"dark + colour pixel shares, patient-shuffled labels (broken; {len(SHUFFLE_SEEDS)} "
        "shuffles pooled)"
    )
    preds[real_name] = {}
    for grade in US_GRADES:
        model = PixelBaseline("classifier", seed=0).fit(
            train["x"], train["y"][grade], train["patient"], keys=train["site"]
        )
        preds[real_name][grade] = model.predict(val["x"]).astype(int)
    # one shuffle is a coin flip (an argmax needs only the right sign of a slope fitted to
    # noise): the broken variant is every shuffle seed's predictions, pooled
    shuffled = {
        grade: np.stack(
            [
                PixelBaseline("classifier", shuffled=True, seed=s)
                .fit(train["x"], train["y"][grade], train["patient"], keys=train["site"])
                .predict(val["x"])
                .astype(int)
                for s in SHUFFLE_SEEDS
            ]
        )
        for grade in US_GRADES
    }
    baselines = [*preds, broken]
    reps = len(SHUFFLE_SEEDS)
    if learned:
        preds["shipped RATING ensemble (MULTITUDE)"] = _rating_grades(
            val["cases"], us_bundle, device
        )

    def figures(name: str) -> dict[str, Any]:
        if name == broken:  # every shuffle's predictions, each patient's pairs resampled together
            return {
                g: _us_figures(
                    np.tile(val["y"][g], reps),
                    shuffled[g].ravel(),
                    np.tile(val["patient"], reps),
                    n_resamples,
                )
                for g in US_GRADES
            }
        return {
            g: _us_figures(val["y"][g], preds[name][g], val["patient"], n_resamples)
            for g in US_GRADES
        }

    names = [*baselines, *(n for n in preds if n not in baselines)]
    rows = [
        {"name": n, "kind": "baseline" if n in baselines else "learned", **figures(n)}
        for n in names
    ]

    def wrong(name: str, grade: str) -> np.ndarray:
        """Per pair: 1 wrong, 0 right (the shuffled variant: the share of its shuffles wrong)."""
        if name == broken:
            return (shuffled[grade] != val["y"][grade]).mean(0)
        return (preds[name][grade] != val["y"][grade]).astype(float)

    verdicts: dict[str, Any] = {}
    real = [n for n in baselines if "broken" not in n]
    for grade in US_GRADES:
        best = min(real, key=lambda n: wrong(n, grade).mean())
        chance = paired_patient_comparison(
            wrong(baselines[-1], grade),
            wrong(baselines[0], grade),
            val["patient"],
            loss="raw",
            n_resamples=n_resamples,
        )
        real_fit = paired_patient_comparison(
            wrong(baselines[1], grade),
            wrong(baselines[0], grade),
            val["patient"],
            loss="raw",
            n_resamples=n_resamples,
        )
        entry: dict[str, Any] = {
            "best_baseline": best,
            "shuffled_vs_majority": {**chance, **falls_to_chance(chance)},
            "pixel_shares_vs_majority": real_fit,
            "learned": {},
        }
        for name in names:
            if name in baselines:
                continue
            diff = paired_patient_comparison(
                wrong(name, grade), wrong(best, grade), val["patient"], loss="raw",
                n_resamples=n_resamples,
            )  # fmt: skip
            entry["learned"][name] = {
                "comparison": diff,
                **beats_baseline(diff["mean_a"], diff["mean_b"], MARGIN, ci=diff["ci"]),
            }
        verdicts[grade] = entry
    return {
        "train": {"seed": train_seed, "patients": train_patients, "pairs": len(train["x"]),
                  "style": style},
        "validation": {"seed": val_seed, "patients": val_patients, "pairs": len(val["x"]),
                       "style": style, "project": str(val_dir)},
        "features": [f"dark share < {lv}" for lv in DARK_LEVELS] + ["colour share"],
        "rows": rows,
        "verdicts": verdicts,
    }  # fmt: skip


# ------------------------------------------------------------------ the task


def benchmark_baselines(
    bundle: Path | None = None,
    heldout: Path | None = None,
    *,
    patients: int = 20,
    seed: int = VALIDATION_SEEDS["radiograph"],
    us_seed: int | None = None,
    us_patients: int | None = None,
    train_patients: int = 60,
    us_train_patients: int = 100,
    train_seed: int = TRAIN_SEEDS["radiograph"],
    us_train_seed: int = TRAIN_SEEDS["ultrasound"],
    us_pairs: int = 4,
    style: str = "schematic",
    device: str | None = None,
    n_resamples: int = 1000,
    learned: bool = True,
    work: Path | None = None,
    scorer_bundle: Path | None = None,
    us_bundle: Path | None = None,
    cohorts: Mapping[str, Path] | None = None,
    trees: int = 200,
) -> dict[str, Any]:
    """Baselines, their shuffled twins and the shipped models on validation-seed phantoms.

    ``patients`` / ``seed``: the radiograph validation cohort; the ultrasound one defaults to
    ``seed + 100`` (the 2000/2100 convention of the other benchmarks) and as many patients.
    ``style``: ``schematic``, what the shipped weights were trained on (``anatomical`` for
    bundles retrained on it). ``heldout``: a folder for the generated cohorts (default
    ``runs/baselines``); ``bundle`` is not used (``scorer_bundle``, ``us_bundle``).
    ``learned=False`` reports the baselines alone. ``cohorts``: existing projects instead of
    generated ones, by ``radiograph_train``, ``radiograph_validation``, ``ultrasound_train``,
    ``ultrasound_validation`` (the seeds reported are then only labels). ``trees``: of the
    gap-profile forests.
    """
    del bundle
    started = time.perf_counter()
    work = Path(work or heldout or Path("runs") / "baselines")
    us_seed = seed + 100 if us_seed is None else us_seed
    us_patients = us_patients or patients
    common = {
        "style": style,
        "n_resamples": n_resamples,
        "device": device,
        "learned": learned,
        "cohorts": cohorts,
    }
    radiograph = _radiograph_part(
        work, train_seed=train_seed, val_seed=seed, train_patients=train_patients,
        val_patients=patients, scorer_bundle=scorer_bundle, trees=trees, **common,
    )  # fmt: skip
    ultrasound = _ultrasound_part(
        work, train_seed=us_train_seed, val_seed=us_seed, train_patients=us_train_patients,
        val_patients=us_patients, pairs=us_pairs, us_bundle=us_bundle, **common,
    )  # fmt: skip
    return {
        "task": "baselines",
        "margin": MARGIN,
        "rule": f"a learned loss (RMSE; error rate = 1 - accuracy) at least {MARGIN:.0%} below "
        "the best baseline's, and the patient-level 95 % CI of the per-patient difference "
        "below 0",
        "radiograph": radiograph,
        "ultrasound": ultrasound,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def _ci_text(fig: Mapping[str, Any] | None, value: float, pct: bool = False) -> str:
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.3f}")
    if not fig or "ci_low" not in fig:
        return f(value)
    return f"{f(value)} ({f(fig['ci_low'])}-{f(fig['ci_high'])})"


def baselines_markdown(result: Mapping[str, Any]) -> str:
    rad, us = result["radiograph"], result["ultrasound"]
    tr, va = rad["train"], rad["validation"]
    lines = [
        f"### Baselines that must be beaten (radiographs: trained on seed {tr['seed']}, "
        f"{tr['patients']} patients; measured on seed {va['seed']}, {va['patients']} patients, "
        f"{va['joints']} joints; {va['style']} phantoms)",
        "",
        "| model | narrowing RMSE (95% CI) | exact | r | erosion RMSE (95% CI) | exact | r |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rad["rows"]:
        n, e = row["narrowing"], row["erosion"]
        lines.append(
            f"| {row['name']} | {_ci_text(n['rmse_ci'], n['rmse'])} | "
            f"{n['exact_agreement']:.1%} | {n['pearson_r']:.3f} | "
            f"{_ci_text(e['rmse_ci'], e['rmse'])} | {e['exact_agreement']:.1%} | "
            f"{e['pearson_r']:.3f} |"
        )
    lines += ["", f"- CI: {rad['rows'][0]['ci_method']}", f"- rule: {result['rule']}"]
    for t, v in rad["verdicts"].items():
        s = v["shuffled_vs_training_mean"]
        g = v["gap_profile_vs_training_mean"]
        lines.append(
            f"- {t}: gap profile vs training mean: per-patient MSE difference "
            f"{g['effect']:+.4f} (CI {g['ci'][0]:+.4f} to {g['ci'][1]:+.4f}), p = "
            f"{g['p_value']:.3g}; shuffled labels vs training mean {s['effect']:+.4f} (CI "
            f"{s['ci'][0]:+.4f} to {s['ci'][1]:+.4f}): {s['reason']}"
        )
        for name, verdict in v["learned"].items():
            c = verdict["comparison"]
            lines.append(
                f"- {t}: **{name}** vs best baseline ({v['best_baseline']}): {verdict['reason']}"
                f"; {c['test']}: {format_p_value(c)}"
            )
    tr, va = us["train"], us["validation"]
    lines += [
        "",
        f"Ultrasound: trained on seed {tr['seed']} ({tr['patients']} patients, {tr['pairs']} "
        f"pairs), measured on seed {va['seed']} ({va['patients']} patients, {va['pairs']} pairs); "
        f"features: {', '.join(us['features'])} of the ROI crop",
        "",
        "| model | SH accuracy (95% CI) | SH kappa | vascularity accuracy (95% CI) | "
        "vascularity kappa | combined accuracy (95% CI) | combined kappa |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in us["rows"]:
        cells = []
        for g in US_GRADES:
            acc, kap = row[g]["accuracy"], row[g]["linear_weighted_kappa"]
            cells += [_ci_text(acc, acc["value"], pct=True), f"{kap['value']:.3f}"]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    ci_method = us["rows"][0]["combined"]["accuracy"].get("ci_method")
    if ci_method:
        lines += ["", f"- CI: {ci_method}"]
    for g, v in us["verdicts"].items():
        s = v["shuffled_vs_majority"]
        lines.append(
            f"- {g}: shuffled labels vs majority grade: error-rate difference {s['effect']:+.3f} "
            f"(CI {s['ci'][0]:+.3f} to {s['ci'][1]:+.3f}): {s['reason']}"
        )
        for name, verdict in v["learned"].items():
            c = verdict["comparison"]
            lines.append(
                f"- {g}: **{name}** vs best baseline ({v['best_baseline']}), error rate: "
                f"{verdict['reason']}; {c['test']}: {format_p_value(c)}"
            )
    lines += [
        "",
        f"- the whole run took {result['seconds'] / 60:.1f} min",
        "",
        f"_{PHANTOM_NOTE}_",
        "",
    ]
    return "\n".join(lines)
