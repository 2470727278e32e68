"""``ra-joints benchmark``: measure the shipped bundles on a fresh held-out phantom cohort.

Benchmarks measure; tests only check correctness. Every figure written here comes from a run
on this machine, and every report says that phantom figures are not clinical figures.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .benchmark_pipelines import benchmark_pipelines, pipelines_markdown
from .benchmarking import (
    PHANTOM_NOTE,
    compare_spec,
    heldout_cohort,
    heldout_seed,
    human_upper_limit,
    peak_rss_mb,
    score_summary,
    value_of,
)
from .bundles import bundle_path
from .metrics import format_p_value
from .seeds import ULTRASOUND

# Published figures quoted for scale (different data: not comparable with phantom figures).
LITERATURE_LOCATOR = {
    "RA2-DREAM winner (Li & Guan)": "> 98 % of finger joints within 0.02 (x / image width, "
    "y / image height)",
    "Hirano et al.": "95.3 % of finger joints detected; 0.63 s per image",
}


def benchmark_locator(
    bundle: Path | None = None,
    heldout: Path | None = None,
    *,
    patients: int = 40,
    seed: int = 2000,
    device: str | None = None,
) -> dict[str, Any]:
    from .locator import JointLocator, evaluate_results
    from .store import AnnotationStore

    bundle = bundle_path("locator", bundle)
    project = heldout_cohort(heldout, patients, seed, bundles=[bundle])
    seed = heldout_seed(project, seed)
    with AnnotationStore.open(project, create=False) as store:
        images = store.images(modality="radiograph")
        paths = [str(store.resolve(im)) for im in images]
        limbs = {str(store.resolve(im)): im.limb for im in images}
        n_patients = len({im.patient_id for im in images})  # an existing folder may hold fewer
    locator = JointLocator.from_bundle(bundle, device=device)
    locator.predict_files(paths[:2], limbs)  # warm-up (allocations, lazy imports)
    started = time.perf_counter()
    results, failed = locator.predict_files(paths, limbs)
    wall = time.perf_counter() - started
    report = evaluate_results(results, project, failed=failed)
    per_image = [r.seconds for r in results if r.seconds is not None]
    train_info = bundle / "models" / "train_info.json"
    return {
        "task": "locator",
        "bundle": str(bundle),
        "model": locator.model_info,
        "heldout": {
            "project": str(project),
            "patients": n_patients,
            "seed": seed,
            "radiographs": len(paths),
            "unreadable": failed,
        },
        "accuracy": report,
        "speed": {
            "seconds_per_radiograph_wall": wall / max(len(paths), 1),
            "seconds_per_radiograph_median": float(np.median(per_image)) if per_image else None,
            "includes": "reading and decoding the file, windowing, resizing, network, decoding",
            "peak_rss_mb": peak_rss_mb(),
            "device": str(locator.device),
            "torch_threads": torch.get_num_threads(),
        },
        "training": json.loads(train_info.read_text()) if train_info.exists() else None,
        "literature": LITERATURE_LOCATOR,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def locator_markdown(result: dict[str, Any]) -> str:
    acc = result["accuracy"]
    speed = result["speed"]
    lines = [
        f"### Joint locator ({result['heldout']['radiographs']} held-out phantom radiographs, "
        f"{result['heldout']['patients']} patients, seed {result['heldout']['seed']})",
        "",
        "Error: x / image width, y / image height (the RA2-DREAM winner's); last columns: "
        "error / image diagonal (secondary, more lenient on portrait images).",
        "",
        "| region | joints | within 0.01 | within 0.02 | within 0.03 | median error "
        "| within 0.02 / diagonal | median error / diagonal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    diagonal = acc.get("by_region_diagonal", {})
    for region, row in acc["by_region"].items():
        second = diagonal.get(region)
        extra = f"{second['within_0.02']:.1%} | {second['median_error']:.4f}" if second else "- | -"
        lines.append(
            f"| {region} | {row['n']} | {row['within_0.01']:.1%} | {row['within_0.02']:.1%} | "
            f"{row['within_0.03']:.1%} | {row['median_error']:.4f} | {extra} |"
        )
    lines += [
        "",
        f"- wrongly named joints: {acc['wrong_names']}; detection sensitivity "
        f"{acc['detection_sensitivity']:.1%}",
        f"- {speed['seconds_per_radiograph_wall'] * 1000:.0f} ms per radiograph (wall clock over "
        f"the cohort, {speed['includes']}); peak memory {speed['peak_rss_mb']:.0f} MB; "
        f"{speed['device']}, {speed['torch_threads']} threads",
    ]
    if result.get("training"):
        t = result["training"]
        lines.append(
            f"- quick training: {t.get('seconds', 0) / 60:.1f} min on {t.get('machine', '?')}"
        )
    lines += ["", f"_{PHANTOM_NOTE}_", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ scorer

LITERATURE_SCORER = {
    "RA2-DREAM winner (Li & Guan)": "Pearson r ~ 0.9 on patient totals (real radiographs)",
    "human raters": "r ~ 0.88 narrowing, ~ 0.78 erosion between readers",
    "Hirano et al.": "total-score r 0.72-0.88 narrowing, 0.54-0.75 erosion",
}
SCORER_TARGETS = {
    "narrowing_exact_agreement": 0.85,
    "narrowing_within_one_agreement": 0.98,
    "total_pearson_r": 0.95,
    "seconds_per_patient": 1.5,
}


def _tables(patients: list[Any], stage: str) -> dict[str, dict[str, float]]:
    from .vocabulary import dream_row

    return {p.patient_id: dream_row(p.patient_id, p.scores(stage)) for p in patients}


def benchmark_scorer(
    bundle: Path | None = None,
    heldout: Path | None = None,
    *,
    patients: int = 40,
    seed: int = 2000,
    device: str | None = None,
    compare: Sequence[Path] = (),
    locator_bundle: Path | None = None,
    shap_patients: int = 10,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Shipped scorer (+ symmetry) and every ``compare`` variant on the same held-out patients.

    Patch scores are measured on the annotated centres (so variants differ only in scoring);
    ``end_to_end`` runs locator -> scorer -> symmetry on the image files.
    """
    from .evaluation import compare_score_tables, read_dream_table
    from .imageio import read_image
    from .locator import JointLocator
    from .predict import predict_images
    from .scoring import JointScorer, load_patch_set
    from .store import TRAINING_SOURCES, AnnotationStore
    from .symmetry import patient_vector

    bundle = bundle_path("scorer", bundle)
    specs = [compare_spec(folder) for folder in compare]  # fail early on a bad folder
    project = heldout_cohort(
        heldout, patients, seed, bundles=[bundle, bundle_path("locator", locator_bundle)]
    )
    seed = heldout_seed(project, seed)
    truth = read_dream_table(project / "scores_ra2dream.csv")
    shipped = JointScorer.from_bundle(bundle, device=device)
    patch_sets: dict[int, Any] = {}

    def patch_set(size: int) -> Any:
        if size not in patch_sets:
            patch_sets[size] = load_patch_set(
                store=project, patch_size=size, sources=TRAINING_SOURCES
            )
        return patch_sets[size]

    scored = shipped.score(patch_set(shipped.patch_size))
    variants = [
        {
            "name": f"{shipped.variant} / {shipped.head} (shipped), patch stage",
            **score_summary(truth, _tables(scored, "patch"), n_resamples),
        }
    ]
    # patch-stage tables by (variant, head): variants are compared with the same head
    patch_tables = {(shipped.variant, shipped.head): _tables(scored, "patch")}
    for spec in specs:
        other = JointScorer.from_bundle(
            bundle, device=device, weights=spec["weights"], symmetry="", overrides=spec["overrides"]
        )
        table = _tables(other.score(patch_set(other.patch_size)), "patch")
        patch_tables.setdefault((other.variant, other.head), table)
        variants.append({"name": spec["name"], **score_summary(truth, table, n_resamples)})
    symmetry_table = _tables(scored, "final")
    symmetry: dict[str, Any] = {"applied": shipped.symmetry is not None}
    if shipped.symmetry is not None:
        variants.append(
            {
                "name": f"{shipped.variant} / {shipped.head} (shipped) + symmetry stage",
                **score_summary(truth, symmetry_table, n_resamples),
            }
        )
        patch_table = patch_tables[(shipped.variant, shipped.head)]
        for score_type in ("narrowing", "erosion", None):
            # per-patient MSE, one-sided Wilcoxon over patients, effect with a patient CI
            symmetry[score_type or "all"] = compare_score_tables(
                truth, symmetry_table, patch_table, score_type, n_resamples=n_resamples
            )
        symmetry["model"] = shipped.symmetry.info
    tests = {}
    for head in sorted({h for _, h in patch_tables}):
        if ("seg_guided", head) not in patch_tables or ("plain", head) not in patch_tables:
            continue
        seg, plain = patch_tables[("seg_guided", head)], patch_tables[("plain", head)]
        suffix = "" if head == shipped.head else f"_{head}_head"
        for score_type in ("narrowing", "erosion"):
            tests[f"seg_guided_vs_plain_{score_type}{suffix}"] = compare_score_tables(
                truth, seg, plain, score_type, n_resamples=n_resamples
            )
    # end to end on the files, and the time of a whole patient
    locator = JointLocator.from_bundle(bundle_path("locator", locator_bundle), device=device)
    with AnnotationStore.open(project, create=False) as store:
        by_patient: dict[str, list[str]] = {}
        for im in store.images(modality="radiograph"):
            by_patient.setdefault(im.patient_id, []).append(str(store.resolve(im)))
    e2e_patients, seconds, shap_seconds = [], [], []
    not_located: list[str] = []  # films the locator gave up on: their joints count as missed
    first = next(iter(by_patient.values()))
    predict_images([(p, read_image(p)) for p in first], locator, shipped)  # warm-up
    for i, (_, paths) in enumerate(sorted(by_patient.items())):
        started = time.perf_counter()
        result = predict_images([(p, read_image(p)) for p in paths], locator, shipped)
        seconds.append(time.perf_counter() - started)
        e2e_patients += result.patients
        not_located += [f"{path}: {reason}" for path, reason in result.failures]
        if i < shap_patients and shipped.symmetry is not None and result.patients:
            started = time.perf_counter()
            shipped.symmetry.explain(patient_vector(result.patients[0].scores("patch")))
            shap_seconds.append(time.perf_counter() - started)
    e2e_table = _tables(e2e_patients, "final")
    end_to_end = score_summary(truth, e2e_table, n_resamples)
    missing = sum(
        js.stage == "missing" for p in e2e_patients for im in p.images for js in im.joints.values()
    )
    train_info = bundle / "models" / "train_info.json"
    nar = variants[-1]["narrowing"]
    totals_r = variants[-1]["totals"]["Overall_Tol"]["pearson_r"]
    return {
        "task": "scorer",
        "bundle": str(bundle),
        "model": shipped.model_info,
        "heldout": {
            "project": str(project),
            "patients": len(by_patient),
            "seed": seed,
            "patches": len(patch_set(shipped.patch_size).items),
        },
        "variants": variants,
        "symmetry": symmetry,
        "tests": tests,
        "end_to_end": {
            **end_to_end,
            "joints_flagged_missing_by_locator": missing,
            "films_not_located": not_located,
        },
        "readers": human_upper_limit(project, e2e_table, n_resamples),
        "speed": {
            "seconds_per_patient_median": float(np.median(seconds)),
            "seconds_per_patient_max": float(np.max(seconds)),
            "patients_timed": len(seconds),
            "shap_patients_timed": len(shap_seconds),
            "includes": "reading 4 files, locator, patch cutting, scorer, symmetry (no SHAP)",
            "shap_seconds_per_patient_median": float(np.median(shap_seconds))
            if shap_seconds
            else None,
            "peak_rss_mb": peak_rss_mb(),
            "device": str(shipped.device),
            "torch_threads": torch.get_num_threads(),
        },
        "targets": {
            "narrowing_exact_agreement": nar["exact_agreement"],
            "narrowing_within_one_agreement": nar["within_one_agreement"],
            "total_pearson_r": value_of(totals_r),
            "seconds_per_patient": float(np.median(seconds)),
            "required": SCORER_TARGETS,
        },
        "training": json.loads(train_info.read_text()) if train_info.exists() else None,
        "literature": LITERATURE_SCORER,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def comparison_text(test: dict[str, Any]) -> str:
    """One line of a paired patient-level comparison (``compare_score_tables`` or
    ``metrics.paired_patient_comparison``): the figures, the effect with its CI, the test."""
    head = ""
    if "rmse_a" in test:
        head = f"RMSE {test['rmse_a']:.3f} vs {test['rmse_b']:.3f}; "
    elif "mean_a" in test:
        head = f"{test['mean_a']:.3f} vs {test['mean_b']:.3f} per patient; "
    low, high = test["ci"]
    return (
        f"{head}effect (A - B, per-patient {test['loss']} loss) {test['effect']:+.4f} "
        f"(CI {low:+.4f} to {high:+.4f}, {test['ci_method']}); {test['test']}: "
        f"{format_p_value(test)}"
    )


def _rmse_ci(block: dict[str, Any]) -> str:
    ci = block.get("rmse_ci")
    if not ci or "ci_low" not in ci:
        return f"{block['rmse']:.3f}"
    return f"{block['rmse']:.3f} ({ci['ci_low']:.3f}-{ci['ci_high']:.3f})"


def _score_row(name: str, v: dict[str, Any], *, total_rmse: bool) -> str:
    """One table row of a score summary: agreement and RMSE per score type, the total's r."""
    n, e, t = v["narrowing"], v["erosion"], v["totals"].get("Overall_Tol")
    if total_rmse:
        total = f"{value_of(t['pearson_r']):.4f} | {t['rmse']:.2f}" if t else "n/a | n/a"
    else:
        total = f"{value_of(t['pearson_r']):.3f}" if t else "n/a"
    return (
        f"| {name} | {n['exact_agreement']:.1%} | {n['within_one_agreement']:.1%} | "
        f"{_rmse_ci(n)} | {e['exact_agreement']:.1%} | {e['within_one_agreement']:.1%} | "
        f"{_rmse_ci(e)} | {total} |"
    )


def scorer_markdown(result: dict[str, Any]) -> str:
    held = result["heldout"]
    lines = [
        f"### Joint scorer ({held['patients']} held-out phantom patients, seed {held['seed']}, "
        f"{held['patches']} joint patches; annotated centres)",
        "",
        "| model | narrowing exact | within one | RMSE (95% CI) | erosion exact | within one | "
        "RMSE (95% CI) | "
        "total r | total RMSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [
        *result["variants"],
        {"name": "end to end: locator + shipped scorer + symmetry", **result["end_to_end"]},
    ]
    lines += [_score_row(v["name"], v, total_rmse=True) for v in rows]
    if result["end_to_end"].get("films_not_located"):
        lines.append(
            f"\n- films the locator gave up on (their joints have no score; no patient total "
            f"where a film is missing): {len(result['end_to_end']['films_not_located'])}"
        )
    lines.append("")
    ci_method = result["variants"][0].get("ci_method")
    if ci_method:
        lines.append(f"- CI: {ci_method}")
    for name, test in result["tests"].items():
        lines.append(f"- {name.replace('_', ' ')}: {comparison_text(test)}")
    sym = result["symmetry"]
    if sym.get("applied"):
        for key in ("narrowing", "erosion", "all"):
            lines.append(f"- symmetry vs patch ({key}): {comparison_text(sym[key])}")
    lines += _readers_lines(result.get("readers"))
    sp = result["speed"]
    lines += [
        f"- whole patient ({sp['includes']}): median {sp['seconds_per_patient_median']:.2f} s, "
        f"max {sp['seconds_per_patient_max']:.2f} s over {sp['patients_timed']} patients; SHAP "
        f"{(sp['shap_seconds_per_patient_median'] or 0):.2f} s per patient; peak memory "
        f"{sp['peak_rss_mb']:.0f} MB; {sp['device']}, {sp['torch_threads']} threads",
        f"- end to end: {result['end_to_end']['joints_flagged_missing_by_locator']} joints "
        "flagged missing by the locator (no score given)",
        "",
        f"_{PHANTOM_NOTE}_",
        "",
    ]
    return "\n".join(lines)


def _readers_lines(readers: dict[str, Any] | None) -> list[str]:
    """The human-upper-limit table (end-to-end model scores against two simulated readers)."""
    if not readers:
        return []
    lines = [
        "",
        "Human upper limit (Li & Guan, Fig. 10): the end-to-end model against simulated reader B "
        "next to reader A against reader B; the truth rows say who is nearer the phantom truth.",
        "",
        "| comparison | narrowing exact | within one | RMSE (95% CI) | erosion exact | "
        "within one | RMSE (95% CI) | total r |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_score_row(name, v, total_rmse=False) for name, v in readers["rows"].items()]
    lines.append("")
    for score_type, test in readers["model_vs_rater_a_against_rater_b"].items():
        lines.append(
            f"- {score_type}, nearer reader B: model (A) vs reader A (B): {comparison_text(test)}"
        )
    return lines


LITERATURE_ULTRASOUND = {
    "RATING (Zhou et al. 2022), prospective test": "combined EOSS accuracy 86.1 %, kappa 0.853",
    "RATING, external test": "combined EOSS accuracy 85.0 %",
    "baseline CNNs in the same paper": "combined accuracy 67-69 %",
}
ULTRASOUND_TARGETS = {
    "combined_accuracy": 0.90,
    "combined_linear_weighted_kappa": 0.90,
    "seconds_per_pair": 1.0,
    "seconds_per_heatmap": 15.0,
}


def _patient_error_rates(
    right_a: np.ndarray, right_b: np.ndarray, patient_ids: Sequence[str], n_resamples: int
) -> dict[str, Any]:
    """Is A's combined grade wrong less often than B's? Per-patient error rates, paired
    one-sided Wilcoxon over patients, effect with a patient CI (not McNemar over pairs: the
    pairs of one patient are not independent)."""
    from .metrics import MetricWarning, paired_patient_comparison

    with warnings.catch_warnings():  # identical decisions (an ablation that changes nothing)
        warnings.simplefilter("ignore", MetricWarning)  # give p = nan, said in the table
        out = paired_patient_comparison(
            (~right_a).astype(float),
            (~right_b).astype(float),
            patient_ids,
            loss="raw",
            n_resamples=max(n_resamples, 200),
        )
    out["only_first_right"] = int(np.sum(right_a & ~right_b))
    out["only_second_right"] = int(np.sum(~right_a & right_b))
    return out


def benchmark_ultrasound(
    bundle: Path | None = None,
    heldout: Path | None = None,
    *,
    patients: int = 60,
    seed: int = 2100,
    device: str | None = None,
    compare: Sequence[Path] = (),
    n_resamples: int = 1000,
    heatmap_pairs: int = 3,
) -> dict[str, Any]:
    """The shipped RATING ensemble on held-out phantom pairs, its ablations, its speed."""
    from .us_rating import (
        decide_cases,
        explain_case,
        load_ensemble,
        load_us_cases,
        rating_figures,
    )

    bundle = bundle_path("ultrasound", bundle)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    project = heldout_cohort(
        heldout, patients, seed, height=256, us_pairs=4, modality=ULTRASOUND, bundles=[bundle]
    )
    seed = heldout_seed(project, seed)

    def ensemble_of(models: Path) -> Any:
        info = json.loads((Path(models) / "ensemble.json").read_text())
        return load_ensemble(models, **info["network"]).to(dev), info

    shipped, shipped_info = ensemble_of(bundle / "models")
    started = time.perf_counter()
    cases = load_us_cases(store=project, size=shipped.input_size)
    prepare_seconds = (time.perf_counter() - started) / max(len(cases.cases), 1)
    rows = decide_cases(shipped, cases)
    figures = rating_figures(rows, n_resamples=n_resamples)
    right = np.array([r["combined"] == r["truth"]["combined"] for r in rows])
    models = [{"name": "MULTITUDE (shipped)", **_us_row(figures)}]
    for name, label in (
        ("majority_vote", "plain majority vote"),
        ("single_model", "single model (fold 0)"),
        ("greyscale_only_sh", "grey-scale only SH (F alone), MULTITUDE"),
    ):
        models.append({"name": label, **_us_row(figures["ablations"][name])})
    patient_ids = [r["patient_id"] for r in rows]
    tests = {}
    for name in ("majority_vote", "single_model", "greyscale_only_sh"):
        other = np.array([r["ablations"][name]["combined"] == r["truth"]["combined"] for r in rows])
        tests[f"shipped_vs_{name}"] = _patient_error_rates(right, other, patient_ids, n_resamples)
    for folder in compare:
        other_ensemble, other_info = ensemble_of(Path(folder))
        other_rows = decide_cases(other_ensemble, cases)
        other_fig = rating_figures(other_rows, n_resamples=n_resamples)
        label = f"{Path(folder).name} (jigsaw {other_info.get('jigsaw_pretraining')})"
        models.append({"name": label, **_us_row(other_fig)})
        other_right = np.array([r["combined"] == r["truth"]["combined"] for r in other_rows])
        tests[f"shipped_vs_{Path(folder).name}"] = _patient_error_rates(
            right, other_right, patient_ids, n_resamples
        )
    # speed: one pair at a time, all networks; then integrated gradients
    times = []
    with torch.no_grad():
        for case in cases.cases[:50]:
            x = torch.as_tensor(case.image[None], dtype=torch.float32).to(dev) / 255.0
            t0 = time.perf_counter()
            shipped.decide(shipped(x).cpu().numpy())
            times.append(time.perf_counter() - t0)
    ig_pair, ig_network = [], []
    for case in cases.cases[:heatmap_pairs]:
        x = torch.as_tensor(case.image[None], dtype=torch.float32).to(dev) / 255.0
        t0 = time.perf_counter()
        explain_case(shipped, x)
        ig_pair.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        explain_case(shipped, x, max_members=1)
        ig_network.append((time.perf_counter() - t0) / 2)  # SH and vascularity maps
    combined = figures["combined"]
    return {
        "task": "ultrasound",
        "bundle": str(bundle),
        "model": {k: v for k, v in shipped_info.items() if k != "members"},
        "members": len(shipped.members),
        "heldout": {
            "project": str(project),
            "seed": seed,
            "pairs": len(rows),
            "failed": cases.failed,
        },
        "figures": figures,
        "models": models,
        "tests": tests,
        "speed": {
            "seconds_per_pair_networks_median": float(np.median(times)),
            "seconds_per_pair_reading_and_cropping": prepare_seconds,
            "seconds_per_heatmap_one_network": float(np.median(ig_network)) if ig_network else None,
            "seconds_per_pair_heatmaps_all_members": float(np.median(ig_pair)) if ig_pair else None,
            "heatmap_settings": "integrated gradients, " + _explain_settings(),
            "peak_rss_mb": peak_rss_mb(),
            "device": str(dev),
            "torch_threads": torch.get_num_threads(),
        },
        "targets": {
            "combined_accuracy": combined["accuracy"]["value"],
            "combined_linear_weighted_kappa": combined["linear_weighted_kappa"]["value"],
            "seconds_per_pair": float(np.median(times)) + prepare_seconds,
            "seconds_per_heatmap": float(np.median(ig_network)) if ig_network else None,
            "required": ULTRASOUND_TARGETS,
        },
        "literature": LITERATURE_ULTRASOUND,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def _explain_settings() -> str:
    from .us_rating import EXPLAIN_DEFAULTS

    return ", ".join(f"{k} {v}" for k, v in EXPLAIN_DEFAULTS.items())


def _us_row(block: dict[str, Any]) -> dict[str, Any]:
    row = {
        key: {
            "accuracy": block[key]["accuracy"],
            "linear_weighted_kappa": block[key]["linear_weighted_kappa"],
        }
        for key in ("synovial_hypertrophy", "vascularity", "combined")
    }
    row["invalid_pairs"] = block.get("invalid_pairs", 0)
    return row


def _ci(fig: dict[str, Any]) -> str:
    if "ci_low" not in fig:
        return f"{fig['value']:.3f}"
    return f"{fig['value']:.3f} ({fig['ci_low']:.3f}-{fig['ci_high']:.3f})"


def ultrasound_markdown(result: dict[str, Any]) -> str:
    held = result["heldout"]
    lines = [
        f"### Ultrasound RATING ensemble ({held['pairs']} held-out phantom pairs, seed "
        f"{held['seed']}; {result['members']} members)",
        "",
        "| model | SH accuracy | vascularity accuracy | combined accuracy (95% CI) | "
        "combined kappa (95% CI) | invalid pairs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in result["models"]:
        lines.append(
            f"| {m['name']} | {m['synovial_hypertrophy']['accuracy']['value']:.1%} | "
            f"{m['vascularity']['accuracy']['value']:.1%} | "
            f"{_ci(m['combined']['accuracy'])} | {_ci(m['combined']['linear_weighted_kappa'])} | "
            f"{m['invalid_pairs']} |"
        )
    lines.append("")
    if result["figures"].get("ci_method"):
        lines.append(f"- CI: {result['figures']['ci_method']}")
    for name, test in result["tests"].items():
        lines.append(
            f"- {name.replace('_', ' ')} (combined grade wrong, per-patient error rate; "
            f"{test['only_first_right']} vs {test['only_second_right']} discordant pairs): "
            f"{comparison_text(test)}"
        )
    sp = result["speed"]
    lines += [
        f"- one pair, all networks: median {sp['seconds_per_pair_networks_median'] * 1000:.0f} ms "
        f"(+ {sp['seconds_per_pair_reading_and_cropping'] * 1000:.0f} ms reading, cropping, "
        "Doppler segmentation)",
        f"- integrated gradients ({sp['heatmap_settings']}): "
        f"{(sp['seconds_per_heatmap_one_network'] or 0):.1f} s per heatmap of one network; "
        f"{(sp['seconds_per_pair_heatmaps_all_members'] or 0):.1f} s for a pair's SH and "
        "vascularity maps averaged over all members",
        f"- peak memory {sp['peak_rss_mb']:.0f} MB; {sp['device']}, {sp['torch_threads']} threads",
        "",
        f"_{PHANTOM_NOTE}_",
        "",
    ]
    return "\n".join(lines)


TASKS = {
    "locator": (benchmark_locator, locator_markdown),
    "scorer": (benchmark_scorer, scorer_markdown),
    "ultrasound": (benchmark_ultrasound, ultrasound_markdown),
}


ALL_TASKS = ("locator", "scorer", "ultrasound", "multitask")


def _task(task: str) -> tuple[Any, Any]:
    """(benchmark function, markdown function) of a task."""
    if task == "multitask":  # its own module: it runs every radiograph pipeline
        return benchmark_pipelines, pipelines_markdown
    if task == "baselines":  # not in ALL_TASKS: it generates and trains its own cohorts
        from .benchmark_baselines import baselines_markdown, benchmark_baselines

        return benchmark_baselines, baselines_markdown
    if task == "heatmaps":  # RATING's heatmaps vs the phantoms' synovium and flow masks
        from .benchmark_heatmaps import benchmark_heatmaps, heatmaps_markdown

        return benchmark_heatmaps, heatmaps_markdown
    if task == "coverage":  # the scorer's conformal grade sets
        from .benchmark_coverage import benchmark_coverage, coverage_markdown

        return benchmark_coverage, coverage_markdown
    if task == "us-coverage":  # the RATING ensemble's conformal grade sets
        from .benchmark_coverage import benchmark_us_coverage, us_coverage_markdown

        return benchmark_us_coverage, us_coverage_markdown
    if task == "hitl":  # a simulated annotator with and without the proposals
        from .benchmark_hitl import benchmark_hitl, hitl_markdown

        return benchmark_hitl, hitl_markdown
    if task not in TASKS:
        raise ValueError(f"no benchmark for {task!r}; available: all, {', '.join(ALL_TASKS)}")
    return TASKS[task]


def retrained_bundles(work: Path, tasks: Sequence[str]) -> dict[str, Path]:
    """Copies of the bundles retrained from scratch with their quick configurations.

    Each bundle is copied to ``work`` and its own ``scripts/train_quick.sh`` runs there, so the
    new weights land in the copy and the repository's shipped weights are never touched.
    """
    import shutil
    import subprocess

    out: dict[str, Path] = {}
    needed = set(tasks)
    if needed & {"scorer", "multitask"}:  # the scorer runs after it; multitask is compared
        needed.add("locator")
    if "multitask" in needed:  # with the whole two-stage pipeline
        needed.add("scorer")
    for task in ALL_TASKS:
        if task not in needed:
            continue
        shipped = bundle_path(task)
        name = shipped.name
        copy = Path(work) / "bundles" / name
        if not copy.exists():
            shutil.copytree(shipped, copy)
        started = time.perf_counter()
        subprocess.run(
            ["bash", str(copy / "scripts" / "train_quick.sh"), str(Path(work) / "data" / task)],
            check=True,
        )
        print(f"retrained {name} in {(time.perf_counter() - started) / 60:.1f} min")
        out[task] = copy
    return out


def benchmark_all(
    *,
    retrain: bool = False,
    work: Path | None = None,
    device: str | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Every bundle on its held-out phantom cohort, in one run: the project's one benchmark.

    Default: the shipped weights, nothing is trained. ``retrain``: the quick configurations
    first retrain every bundle from scratch (about an hour on 2 CPU cores), in copies.
    """
    started = time.perf_counter()
    work = Path(work or Path("runs") / "benchmark")
    bundles = retrained_bundles(work, ALL_TASKS) if retrain else {}
    results: dict[str, Any] = {}
    for task in ALL_TASKS:
        kwargs: dict[str, Any] = {"bundle": bundles.get(task), "device": device}
        if task in ("scorer", "multitask"):
            kwargs.update(locator_bundle=bundles.get("locator"), n_resamples=n_resamples)
        if task == "multitask":
            kwargs.update(scorer_bundle=bundles.get("scorer"))
        if task == "ultrasound":
            kwargs.update(n_resamples=n_resamples)
        print(f"benchmark: {task}")
        results[task] = _task(task)[0](**kwargs)
    return {
        "task": "all",
        "weights": "retrained with the quick configurations" if retrain else "shipped",
        "seconds": round(time.perf_counter() - started, 1),
        **results,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def all_markdown(result: dict[str, Any]) -> str:
    parts = [
        f"## All bundles ({result['weights']} weights; the whole run took "
        f"{result['seconds'] / 60:.1f} min)",
        "",
        locator_markdown(result["locator"]),
        scorer_markdown(result["scorer"]),
        ultrasound_markdown(result["ultrasound"]),
    ]
    if "multitask" in result:
        parts.append(_task("multitask")[1](result["multitask"]))
    return "\n".join(parts)


def run_benchmark(task: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    run, markdown = (benchmark_all, all_markdown) if task == "all" else _task(task)
    result = run(**kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    return result
