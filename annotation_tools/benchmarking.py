"""What the benchmarks share: held-out cohorts, compared variants, figure summaries, memory.

``benchmark`` (one bundle at a time) and ``benchmark_pipelines`` (the radiograph pipelines side
by side) both build on these, so neither imports the other's internals.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

from .evaluation import PHANTOM_NOTE

__all__ = [
    "PHANTOM_NOTE",
    "compare_spec",
    "heldout_cohort",
    "peak_rss_mb",
    "score_summary",
    "value_of",
]


def heldout_cohort(
    folder: Path | None, patients: int, seed: int, height: int = 1200, us_pairs: int = 2
) -> Path:
    """An existing project folder, or a fresh phantom cohort of a seed the weights never saw."""
    from .phantoms import generate_cohort

    if folder is not None and (Path(folder) / "ra_joints.sqlite").exists():
        return Path(folder)
    folder = Path(folder or Path("runs") / f"heldout_s{seed}_n{patients}")
    if not (folder / "cohort.json").exists():
        generate_cohort(folder, patients, seed, height=height, us_pairs=us_pairs, style="schematic")
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def compare_spec(folder: Path) -> dict[str, Any]:
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


def score_summary(truth: dict, table: dict, n_resamples: int) -> dict[str, Any]:
    """Per-score RMSE, agreement and r of a predicted RA2-DREAM table, plus patient totals."""
    from .evaluation import score_figures

    fig = score_figures(truth, table, n_resamples=n_resamples)
    keep = ("rmse", "exact_agreement", "within_one_agreement", "pearson_r", "n")
    keep += ("rmse_ci",)  # bootstrap over patients (score_figures gives patient ids)
    out: dict[str, Any] = {
        k: {m: fig["per_score"][k][m] for m in keep if m in fig["per_score"][k]}
        for k in fig["per_score"]
    }
    out["totals"] = fig["patient_totals"]
    out["ci_method"] = fig["ci_method"]
    return out


def value_of(value: Any) -> float:
    """A figure with or without its bootstrap CI (``{"value": ..., "ci": ...}``) as a number."""
    return value["value"] if isinstance(value, dict) else value
