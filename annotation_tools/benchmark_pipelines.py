"""``ra-joints benchmark --task multitask``: the radiograph pipelines side by side.

The two-stage pipeline (locator -> patch scorer -> symmetry), the same locator with Hirano's
patch CNN (``--compare`` a scorer variant folder) and the one-network multi-task U-Net (one
member and the whole ensemble) run end to end on the same held-out phantom patients. Each
pipeline runs in its own fresh process, so its peak memory is its own. A paired test over
patients (per-patient MSE, one-sided Wilcoxon) says which pipeline scores better.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .benchmarking import (
    PHANTOM_NOTE,
    compare_spec,
    heldout_cohort,
    heldout_seed,
    score_summary,
    value_of,
)
from .bundles import bundle_path
from .metrics import format_p_value

__all__ = ["benchmark_pipelines", "pipelines_markdown"]

LITERATURE_MULTITASK = {
    "Maziarz et al. (RA2-DREAM, 8-model ensemble, B5 encoder, real radiographs)": (
        "RMSE 0.4075 narrowing, 0.4607 erosion on the challenge test set (4th/5th place)"
    ),
}


def _run_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """One pipeline end to end on every patient of the project (runs in a fresh process)."""
    import resource

    import torch

    from .imageio import read_image
    from .locator import JointLocator, evaluate_results
    from .multitask import MultitaskModel
    from .predict import predict_images
    from .scoring import JointScorer
    from .store import AnnotationStore
    from .vocabulary import dream_row

    device = spec.get("device")
    locator = scorer = multitask = None
    if spec["kind"] == "multitask":
        multitask = MultitaskModel.from_bundle(
            spec["bundle"], device=device, members=spec.get("members")
        )
        info = multitask.model_info
    else:
        locator = JointLocator.from_bundle(spec["locator_bundle"], device=device)
        scorer = JointScorer.from_bundle(
            spec["scorer_bundle"],
            device=device,
            weights=spec.get("scorer_weights"),
            symmetry=spec.get("symmetry"),
            overrides=spec.get("scorer_overrides"),
        )
        info = {**locator.model_info, **{f"scorer_{k}": v for k, v in scorer.model_info.items()}}
    project = Path(spec["project"])
    with AnnotationStore.open(project, create=False) as store:
        by_patient: dict[str, list[str]] = {}
        for im in store.images(modality="radiograph"):
            by_patient.setdefault(im.patient_id, []).append(str(store.resolve(im)))
    models = {"locator": locator, "scorer": scorer, "multitask": multitask}
    first = next(iter(by_patient.values()))
    predict_images([(p, read_image(p)) for p in first], **models)  # warm-up
    seconds, patients, located = [], [], []
    for _, paths in sorted(by_patient.items()):
        started = time.perf_counter()
        result = predict_images([(p, read_image(p)) for p in paths], **models)
        seconds.append((time.perf_counter() - started) / len(paths))
        patients += result.patients
        located += result.located
    return {
        "name": spec["name"],
        "model": info,
        "table": {p.patient_id: dream_row(p.patient_id, p.scores("final")) for p in patients},
        "locator": evaluate_results(located, project),
        "joints_without_score": sum(
            js.stage == "missing" for p in patients for im in p.images for js in im.joints.values()
        ),
        "seconds_per_radiograph": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch_threads": torch.get_num_threads(),
    }


def _in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_run_pipeline, spec).result()


def _training_minutes(bundle: Path, kind: str) -> float | None:
    """Quick-configuration training time recorded with the shipped weights."""
    if kind == "multitask":
        listing = bundle / "models" / "ensemble.json"
        if not listing.is_file():
            return None
        members = json.loads(listing.read_text())["members"]
        return sum(m.get("training_seconds", 0) for m in members) / 60.0
    info = bundle / "models" / "train_info.json"
    return json.loads(info.read_text())["seconds"] / 60.0 if info.is_file() else None


def _paired(
    truth: dict, a: dict, b: dict, names: tuple[str, str], n_resamples: int = 2000
) -> dict[str, Any]:
    """Per-patient MSE of the two pipelines, one-sided Wilcoxon over patients in both
    directions, the effect with a CI over patients; the better pipeline is named only when a
    test says so at 0.05/2. Never joints as independent samples."""
    from .evaluation import compare_score_tables, paired_patient_errors

    out: dict[str, Any] = {}
    for score_type in ("narrowing", "erosion"):
        (err_a, err_b), _ = paired_patient_errors(truth, [a, b], score_type)
        a_better = compare_score_tables(truth, a, b, score_type, n_resamples=n_resamples)
        b_better = compare_score_tables(truth, b, a, score_type, n_resamples=n_resamples)
        entry = {
            "joints": int(err_a.size),
            "patients": a_better["n_patients"],
            "mean_abs_error": {names[0]: float(err_a.mean()), names[1]: float(err_b.mean())},
            "rmse": {names[0]: a_better["rmse_a"], names[1]: a_better["rmse_b"]},
            "a_better": a_better,
            "b_better": b_better,
        }
        alpha = 0.025  # two one-sided tests = one two-sided test at 0.05
        if a_better["p_value"] < alpha:
            entry["better"] = names[0]
        elif b_better["p_value"] < alpha:
            entry["better"] = names[1]
        else:
            entry["better"] = "no significant difference"
        out[score_type] = entry
    return out


def benchmark_pipelines(
    heldout: Path | None = None,
    *,
    patients: int = 40,
    seed: int = 2000,
    device: str | None = None,
    bundle: Path | None = None,
    locator_bundle: Path | None = None,
    scorer_bundle: Path | None = None,
    compare: Sequence[Path] = (),
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Two-stage vs multi-task (one member and the ensemble) on the held-out phantoms.

    ``compare``: scorer variant folders (``model.pt`` + ``config.json``, e.g. Hirano's CNN)
    run as the second stage after the same locator, without the symmetry stage.
    """
    from .evaluation import read_dream_table

    bundle = bundle_path("multitask", bundle)
    locator_bundle = bundle_path("locator", locator_bundle)
    scorer_bundle = bundle_path("scorer", scorer_bundle)
    project = heldout_cohort(
        heldout, patients, seed, bundles=[bundle, locator_bundle, scorer_bundle]
    )
    seed = heldout_seed(project, seed)
    truth = read_dream_table(project / "scores_ra2dream.csv")
    common = {"project": str(project), "device": device}
    two_stage = "two-stage (locator + scorer + symmetry)"
    specs: list[dict[str, Any]] = [
        {
            **common,
            "name": two_stage,
            "kind": "two-stage",
            "locator_bundle": str(locator_bundle),
            "scorer_bundle": str(scorer_bundle),
        }
    ]
    for folder in compare:
        variant = compare_spec(folder)
        specs.append(
            {
                **common,
                "name": f"locator + {variant['name']} patch CNN (no symmetry)",
                "kind": "two-stage",
                "locator_bundle": str(locator_bundle),
                "scorer_bundle": str(scorer_bundle),
                "scorer_weights": str(variant["weights"]),
                "scorer_overrides": variant["overrides"],
                "symmetry": "",
            }
        )
    n_members = len(json.loads((bundle / "models" / "ensemble.json").read_text())["members"])
    multitask = f"multi-task U-Net, ensemble of {n_members}"
    specs.append(
        {
            **common,
            "name": "multi-task U-Net, one member",
            "kind": "multitask",
            "bundle": str(bundle),
            "members": 1,
        }
    )
    if n_members > 1:
        specs.append(
            {
                **common,
                "name": multitask,
                "kind": "multitask",
                "bundle": str(bundle),
                "members": n_members,
            }
        )
    else:
        multitask = "multi-task U-Net, one member"
    rows = []
    tables: dict[str, dict] = {}
    for spec in specs:
        print(f"benchmark: {spec['name']}")
        run = _in_fresh_process(spec)
        tables[spec["name"]] = run.pop("table")
        trained = _training_minutes(
            bundle if spec["kind"] == "multitask" else scorer_bundle, spec["kind"]
        )
        if spec["kind"] == "two-stage" and trained is not None:
            locator_minutes = _training_minutes(locator_bundle, "two-stage")
            trained += locator_minutes or 0.0
        if spec["kind"] == "multitask" and trained is not None:
            trained *= spec["members"] / n_members
        sec = run.pop("seconds_per_radiograph")
        rows.append(
            {
                **run,
                **score_summary(truth, tables[spec["name"]], n_resamples),
                "seconds_per_radiograph_median": float(np.median(sec)),
                "seconds_per_radiograph_max": float(np.max(sec)),
                "training_minutes_quick": trained,
            }
        )
    return {
        "task": "multitask",
        "heldout": {"project": str(project), "patients": len(truth), "seed": seed},
        "pipelines": rows,
        "paired_two_stage_vs_multitask": _paired(
            truth, tables[two_stage], tables[multitask], (two_stage, multitask), n_resamples
        ),
        "ensemble_vs_single": _paired(
            truth,
            tables[multitask],
            tables["multi-task U-Net, one member"],
            (multitask, "multi-task U-Net, one member"),
            n_resamples,
        )
        if n_members > 1
        else None,
        "timing_includes": "reading the files, preprocessing, networks, decoding, symmetry "
        "(two-stage); per patient, divided by its radiographs; after one warm-up patient",
        "literature": LITERATURE_MULTITASK,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def pipelines_markdown(result: dict[str, Any]) -> str:
    held = result["heldout"]
    lines = [
        f"### Radiograph pipelines end to end ({held['patients']} held-out phantom patients, "
        f"seed {held['seed']})",
        "",
        "| pipeline | finger / thumb / wrist / toe within 0.02 (x / width, y / height) "
        "| wrong names | joints not scored "
        "| narrowing RMSE | exact | within one | erosion RMSE | exact | within one "
        "| total r (patients) | s / radiograph | peak MB | quick training (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["pipelines"]:
        reg = row["locator"]["by_region"]
        share = " / ".join(
            f"{reg[r]['within_0.02']:.1%}" if r in reg else "-"
            for r in ("finger", "thumb", "wrist", "toe")
        )
        n, e = row["narrowing"], row["erosion"]
        minutes = row["training_minutes_quick"]
        # totals only of patients with every score given (a missed joint drops the patient)
        total = row["totals"].get("Overall_Tol")
        total_r = "-" if total is None else f"{value_of(total['pearson_r']):.3f} ({total['n']})"
        lines.append(
            f"| {row['name']} | {share} | {row['locator']['wrong_names']} | "
            f"{row['joints_without_score']} | {n['rmse']:.3f} | "
            f"{n['exact_agreement']:.1%} | {n['within_one_agreement']:.1%} | {e['rmse']:.3f} | "
            f"{e['exact_agreement']:.1%} | {e['within_one_agreement']:.1%} | "
            f"{total_r} | "
            f"{row['seconds_per_radiograph_median']:.3f} | {row['peak_rss_mb']:.0f} | "
            f"{'-' if minutes is None else f'{minutes:.0f}'} |"
        )
    lines.append("")
    ci_method = result["pipelines"][0].get("ci_method") if result["pipelines"] else None
    if ci_method:
        lines.append(f"- CI: {ci_method}; paired tests: per patient (below)")
    for key, title in (
        ("paired_two_stage_vs_multitask", "two-stage vs multi-task"),
        ("ensemble_vs_single", "ensemble vs one member"),
    ):
        block = result.get(key)
        if not block:
            continue
        for score_type, entry in block.items():
            rmse_a, rmse_b = entry["rmse"].values()
            test = entry["a_better"]
            low, high = test["ci"]
            lines.append(
                f"- {title}, {score_type} ({entry['joints']} joints of {entry['patients']} "
                f"patients scored by both): RMSE {rmse_a:.3f} vs {rmse_b:.3f}; per-patient MSE "
                f"difference {test['effect']:+.4f} (CI {low:+.4f} to {high:+.4f}, "
                f"{test['ci_method']}); {test['test']}: {format_p_value(test)} (first "
                f"better) / {entry['b_better']['p_value']:.3g} (second better). "
                f"**Better: {entry['better']}**"
            )
    lines += ["", f"_{PHANTOM_NOTE}_", ""]
    return "\n".join(lines)
