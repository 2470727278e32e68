"""``ra-joints benchmark``: measure the shipped bundles on a fresh held-out phantom cohort.

Benchmarks measure; tests only check correctness. Every figure written here comes from a run
on this machine, and every report says that phantom figures are not clinical figures.
"""

from __future__ import annotations

import json
import platform
import resource
import time
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
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
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


TASKS = {"locator": (benchmark_locator, locator_markdown)}


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
