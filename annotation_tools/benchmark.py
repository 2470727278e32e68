"""``ra-joints benchmark``: measure the shipped bundles on a fresh held-out phantom cohort.

Benchmarks measure; tests only check correctness. Every figure written here comes from a run
on this machine, and every report says that phantom figures are not clinical figures.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "monai_bundles"
PHANTOM_NOTE = "Phantom figures: they say nothing about clinical accuracy."

# Published figures quoted for scale (different data: not comparable with phantom figures).
LITERATURE_LOCATOR = {
    "RA2-DREAM winner (Li & Guan)": "> 98 % of finger joints within 0.02 of the image size",
    "Hirano et al.": "95.3 % of finger joints detected; 0.63 s per image",
}


def heldout_cohort(folder: Path | None, patients: int, seed: int, height: int = 1200) -> Path:
    """An existing project folder, or a fresh phantom cohort of a seed the weights never saw."""
    from .phantoms import generate_cohort

    if folder is not None and (Path(folder) / "ra_joints.sqlite").exists():
        return Path(folder)
    folder = Path(folder or Path("runs") / f"heldout_s{seed}_n{patients}")
    if not (folder / "cohort.json").exists():
        generate_cohort(folder, patients, seed, height=height, us_pairs=2)
    return folder


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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

    bundle = Path(bundle or BUNDLES_DIR / "ra_joint_locator")
    project = heldout_cohort(heldout, patients, seed)
    with AnnotationStore.open(project, create=False) as store:
        images = store.images(modality="radiograph")
        paths = [str(store.resolve(im)) for im in images]
        limbs = {str(store.resolve(im)): im.limb for im in images}
    locator = JointLocator.from_bundle(bundle, device=device)
    locator.predict_files(paths[:2], limbs)  # warm-up (allocations, lazy imports)
    started = time.perf_counter()
    results, failed = locator.predict_files(paths, limbs)
    wall = time.perf_counter() - started
    report = evaluate_results(results, project)
    per_image = [r.seconds for r in results if r.seconds is not None]
    train_info = bundle / "models" / "train_info.json"
    return {
        "task": "locator",
        "bundle": str(bundle),
        "model": locator.model_info,
        "heldout": {
            "project": str(project),
            "patients": patients,
            "seed": seed,
            "radiographs": len(paths),
            "unreadable": failed,
        },
        "accuracy": report,
        "speed": {
            "seconds_per_radiograph_wall": wall / max(len(paths), 1),
            "seconds_per_radiograph_median": float(np.median(per_image)) if per_image else None,
            "includes": "reading and decoding the file, windowing, resizing, network, decoding",
            "peak_rss_mb": _peak_rss_mb(),
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
        "| region | joints | within 0.01 | within 0.02 | within 0.03 | median error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for region, row in acc["by_region"].items():
        lines.append(
            f"| {region} | {row['n']} | {row['within_0.01']:.1%} | {row['within_0.02']:.1%} | "
            f"{row['within_0.03']:.1%} | {row['median_error']:.4f} |"
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


def _compare_spec(folder: Path) -> dict[str, Any]:
    """A trained variant: ``model.pt`` plus ``config.json`` (the train overrides it used)."""
    folder = Path(folder)
    for name in ("model.pt", "config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} has no {name}: a compared variant needs its weights and the "
                "train overrides it used (scripts/train_variants.sh writes both)"
            )
    config = json.loads((folder / "config.json").read_text())
    return {
        "name": f"{config['variant']} / {config['head']}",
        "weights": folder / "model.pt",
        "overrides": config,
    }


def _figures(truth: dict, table: dict, n_resamples: int) -> dict[str, Any]:
    from .evaluation import score_figures

    fig = score_figures(truth, table, n_resamples=n_resamples)
    keep = ("rmse", "exact_agreement", "within_one_agreement", "pearson_r", "n")
    out: dict[str, Any] = {k: {m: fig["per_score"][k][m] for m in keep} for k in fig["per_score"]}
    out["totals"] = fig["patient_totals"]
    return out


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
    from .evaluation import paired_patient_mse, paired_score_errors, read_dream_table
    from .imageio import read_image
    from .locator import JointLocator
    from .metrics import paired_mean_test, wilcoxon_one_sided
    from .pipeline import predict_images
    from .scoring import JointScorer, load_patch_set
    from .store import TRAINING_SOURCES, AnnotationStore
    from .symmetry import patient_vector

    bundle = Path(bundle or BUNDLES_DIR / "ra_joint_scorer")
    specs = [_compare_spec(folder) for folder in compare]  # fail early on a bad folder
    project = heldout_cohort(heldout, patients, seed)
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
            **_figures(truth, _tables(scored, "patch"), n_resamples),
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
        variants.append({"name": spec["name"], **_figures(truth, table, n_resamples)})
    symmetry_table = _tables(scored, "final")
    symmetry: dict[str, Any] = {"applied": shipped.symmetry is not None}
    if shipped.symmetry is not None:
        variants.append(
            {
                "name": f"{shipped.variant} / {shipped.head} (shipped) + symmetry stage",
                **_figures(truth, symmetry_table, n_resamples),
            }
        )
        pair = [symmetry_table, patch_tables[(shipped.variant, shipped.head)]]
        for score_type in ("narrowing", "erosion", None):
            sym_mse, patch_mse = paired_patient_mse(truth, pair, score_type)
            entry = {
                "rmse_symmetry": float(np.sqrt(np.mean(sym_mse))),
                "rmse_patch": float(np.sqrt(np.mean(patch_mse))),
                "patient_mse_permutation_test": paired_mean_test(sym_mse, patch_mse),
            }
            if score_type:
                sym_err, patch_err = paired_score_errors(truth, pair, score_type)
                entry["joint_abs_error_wilcoxon"] = wilcoxon_one_sided(sym_err, patch_err)
            symmetry[score_type or "all"] = entry
        symmetry["model"] = shipped.symmetry.info
    tests = {}
    for head in sorted({h for _, h in patch_tables}):
        if ("seg_guided", head) not in patch_tables or ("plain", head) not in patch_tables:
            continue
        pair = [patch_tables[("seg_guided", head)], patch_tables[("plain", head)]]
        suffix = "" if head == shipped.head else f"_{head}_head"
        for score_type in ("narrowing", "erosion"):
            seg, plain = paired_score_errors(truth, pair, score_type)
            tests[f"seg_guided_vs_plain_{score_type}{suffix}"] = wilcoxon_one_sided(seg, plain)
    # end to end on the files, and the time of a whole patient
    locator = JointLocator.from_bundle(
        locator_bundle or BUNDLES_DIR / "ra_joint_locator", device=device
    )
    with AnnotationStore.open(project, create=False) as store:
        by_patient: dict[str, list[str]] = {}
        for im in store.images(modality="radiograph"):
            by_patient.setdefault(im.patient_id, []).append(str(store.resolve(im)))
    e2e_patients, seconds, shap_seconds = [], [], []
    first = next(iter(by_patient.values()))
    predict_images([(p, read_image(p)) for p in first], locator, shipped)  # warm-up
    for i, (_, paths) in enumerate(sorted(by_patient.items())):
        started = time.perf_counter()
        result = predict_images([(p, read_image(p)) for p in paths], locator, shipped)
        seconds.append(time.perf_counter() - started)
        e2e_patients += result.patients
        if i < shap_patients and shipped.symmetry is not None:
            started = time.perf_counter()
            shipped.symmetry.explain(patient_vector(result.patients[0].scores("patch")))
            shap_seconds.append(time.perf_counter() - started)
    end_to_end = _figures(truth, _tables(e2e_patients, "final"), n_resamples)
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
            "patients": patients,
            "seed": seed,
            "patches": len(patch_set(shipped.patch_size).items),
        },
        "variants": variants,
        "symmetry": symmetry,
        "tests": tests,
        "end_to_end": {**end_to_end, "joints_flagged_missing_by_locator": missing},
        "speed": {
            "seconds_per_patient_median": float(np.median(seconds)),
            "seconds_per_patient_max": float(np.max(seconds)),
            "patients_timed": len(seconds),
            "shap_patients_timed": len(shap_seconds),
            "includes": "reading 4 files, locator, patch cutting, scorer, symmetry (no SHAP)",
            "shap_seconds_per_patient_median": float(np.median(shap_seconds))
            if shap_seconds
            else None,
            "peak_rss_mb": _peak_rss_mb(),
            "device": str(shipped.device),
            "torch_threads": torch.get_num_threads(),
        },
        "targets": {
            "narrowing_exact_agreement": nar["exact_agreement"],
            "narrowing_within_one_agreement": nar["within_one_agreement"],
            "total_pearson_r": _r(totals_r),
            "seconds_per_patient": float(np.median(seconds)),
            "required": SCORER_TARGETS,
        },
        "training": json.loads(train_info.read_text()) if train_info.exists() else None,
        "literature": LITERATURE_SCORER,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "package_version": __version__,
        "note": PHANTOM_NOTE,
    }


def _r(value: Any) -> float:
    return value["value"] if isinstance(value, dict) else value


def scorer_markdown(result: dict[str, Any]) -> str:
    held = result["heldout"]
    lines = [
        f"### Joint scorer ({held['patients']} held-out phantom patients, seed {held['seed']}, "
        f"{held['patches']} joint patches; annotated centres)",
        "",
        "| model | narrowing exact | within one | RMSE | erosion exact | within one | RMSE | "
        "total r | total RMSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [
        *result["variants"],
        {"name": "end to end: locator + shipped scorer + symmetry", **result["end_to_end"]},
    ]
    for v in rows:
        n, e, t = v["narrowing"], v["erosion"], v["totals"]["Overall_Tol"]
        lines.append(
            f"| {v['name']} | {n['exact_agreement']:.1%} | {n['within_one_agreement']:.1%} | "
            f"{n['rmse']:.3f} | {e['exact_agreement']:.1%} | {e['within_one_agreement']:.1%} | "
            f"{e['rmse']:.3f} | {_r(t['pearson_r']):.4f} | {t['rmse']:.2f} |"
        )
    lines.append("")
    for name, test in result["tests"].items():
        lines.append(
            f"- {name.replace('_', ' ')}: one-sided paired Wilcoxon on per-joint absolute error, "
            f"p = {test['p_value']:.3g} (median difference {test['median_diff']:+.4f})"
        )
    sym = result["symmetry"]
    if sym.get("applied"):
        for key in ("narrowing", "erosion", "all"):
            s = sym[key]
            line = (
                f"- symmetry vs patch ({key}): RMSE {s['rmse_symmetry']:.3f} vs "
                f"{s['rmse_patch']:.3f}; paired permutation test on per-patient MSE, "
                f"p = {s['patient_mse_permutation_test']['p_value']:.3g}"
            )
            if "joint_abs_error_wilcoxon" in s:
                line += (
                    f"; Wilcoxon on per-joint absolute error p = "
                    f"{s['joint_abs_error_wilcoxon']['p_value']:.3g}"
                )
            lines.append(line)
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


TASKS = {
    "locator": (benchmark_locator, locator_markdown),
    "scorer": (benchmark_scorer, scorer_markdown),
}


def run_benchmark(task: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"no benchmark for {task!r}; available: {', '.join(TASKS)}")
    run, markdown = TASKS[task]
    result = run(**kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    return result
