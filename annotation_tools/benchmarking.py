"""What the benchmarks share: held-out cohorts, compared variants, figure summaries, memory.

``benchmark`` (one bundle at a time) and ``benchmark_pipelines`` (the radiograph pipelines side
by side) both build on these, so neither imports the other's internals.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evaluation import PHANTOM_NOTE
from .seeds import RADIOGRAPH, check_benchmark_seed, cohort_seed

__all__ = [
    "PHANTOM_NOTE",
    "compare_spec",
    "heldout_cohort",
    "heldout_seed",
    "human_upper_limit",
    "peak_rss_mb",
    "score_summary",
    "value_of",
]


def heldout_cohort(
    folder: Path | None,
    patients: int,
    seed: int,
    height: int = 1200,
    us_pairs: int = 2,
    *,
    modality: str = RADIOGRAPH,
    bundles: Sequence[Path | None] = (),
    calibration_seeds: Sequence[int] = (),
) -> Path:
    """An existing project folder, or a fresh phantom cohort of a seed the weights never saw.

    The cohort's seed (``seed``, or the one an existing phantom project's cohort.json records)
    must not be a training seed of ``modality`` nor one the ``bundles`` list in their
    train_info (:func:`annotation_tools.seeds.check_benchmark_seed`); checked before anything
    is generated.
    """
    from .phantoms import generate_cohort

    bundles = [b for b in bundles if b is not None]
    if folder is not None and (Path(folder) / "ra_joints.sqlite").exists():
        check_benchmark_seed(
            cohort_seed(folder), modality, bundles=bundles, calibration_seeds=calibration_seeds
        )
        return Path(folder)
    folder = Path(folder or Path("runs") / f"heldout_s{seed}_n{patients}")
    if not (folder / "cohort.json").exists():
        check_benchmark_seed(seed, modality, bundles=bundles, calibration_seeds=calibration_seeds)
        generate_cohort(folder, patients, seed, height=height, us_pairs=us_pairs, style="schematic")
    else:
        check_benchmark_seed(
            cohort_seed(folder), modality, bundles=bundles, calibration_seeds=calibration_seeds
        )
    return folder


def heldout_seed(project: Path, seed: int) -> int:
    """The seed a benchmark reports: the phantom project's own (cohort.json), else ``seed``."""
    found = cohort_seed(project)
    return seed if found is None else found


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


def human_upper_limit(project: Path, model_table: dict, n_resamples: int) -> dict[str, Any] | None:
    """The model against reader B next to reader A against reader B (Li & Guan, Fig. 10).

    Why: two trained readers disagree; a model that agrees with reader B as well as reader A
    does has reached the human limit, and on phantoms the truth shows who is nearer it. The
    paired test asks, per patient, whether the model's scores lie closer to reader B's than
    reader A's do (per-patient MSE, one-sided Wilcoxon, effect with a patient CI). ``None``
    when the cohort has no simulated readers.
    """
    from .evaluation import compare_score_tables, read_dream_table

    cohort = project / "cohort.json"
    raters = json.loads(cohort.read_text()).get("raters", {}) if cohort.is_file() else {}
    if not {"rater_a", "rater_b"} <= set(raters):
        return None
    a = read_dream_table(project / raters["rater_a"]["scores_csv"])
    b = read_dream_table(project / raters["rater_b"]["scores_csv"])
    truth = read_dream_table(project / "scores_ra2dream.csv")
    rows = {
        "model vs rater B": score_summary(b, model_table, n_resamples),
        "rater A vs rater B": score_summary(b, a, n_resamples),
        "model vs rater A": score_summary(a, model_table, n_resamples),
        "model vs truth": score_summary(truth, model_table, n_resamples),
        "rater A vs truth": score_summary(truth, a, n_resamples),
    }
    paired = {
        score_type: compare_score_tables(b, model_table, a, score_type, n_resamples=n_resamples)
        for score_type in ("narrowing", "erosion")
    }
    return {"rows": rows, "model_vs_rater_a_against_rater_b": paired}


def value_of(value: Any) -> float:
    """A figure with or without its bootstrap CI (``{"value": ..., "ci": ...}``) as a number."""
    return value["value"] if isinstance(value, dict) else value
