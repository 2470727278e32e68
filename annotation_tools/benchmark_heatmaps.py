"""``ra-joints benchmark --task heatmaps``: do RATING's heatmaps point where the grade is decided?

On physical ultrasound phantoms (:mod:`annotation_tools.phantom_us`) the synovium and the
vessel signal that set the SH and Doppler grades are known pixel by pixel. For every IG
baseline (and noise setting) the shipped ensemble's heatmaps are compared with them:

* **mass share**: the share of the heatmap inside the mask, next to the mask's share of the
  crop (a map that ignores the mask scores about its area share; higher is better);
* **pointing game**: is the map's maximum inside the mask (chance = the area share);
* **empty**: pairs whose shown map (after the 0.2 floor) puts nothing on the mask.

The SH map is the attribution to the grey-scale input (mask: synovium), the vascularity map
the attribution to the Doppler input (mask: synovial vessel signal; pairs with vascularity 0
have none and are left out). Speed: seconds for a pair's maps with all members, and the
relative L2 error of the ensemble map against a 300-step reference on the same noisy copies.
Phantom figures are not clinical figures.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .benchmarking import PHANTOM_NOTE

__all__ = [
    "EXPLAIN_SETTINGS",
    "benchmark_heatmaps",
    "ensemble_maps",
    "heatmap_phantoms",
    "heatmaps_markdown",
    "localisation",
    "phantom_case",
]

# (SH, vascularity) pairs with a synovium: every pair has an SH mask, 9 of 12 a flow mask
GRADE_CYCLE = [(s, v) for s in (1, 2, 3) for v in (0, 1, 2, 3)]
MAPS = {  # map name -> (explained grade, input channels, ground-truth mask)
    "sh_greyscale": ("synovial_hypertrophy", "greyscale", "synovium"),
    "sh_doppler": ("synovial_hypertrophy", "doppler", "synovial_flow"),
    "vascularity": ("vascularity", "doppler", "synovial_flow"),
}


def _explain_defaults() -> dict[str, Any]:
    from .us_rating import EXPLAIN_DEFAULTS

    return dict(EXPLAIN_DEFAULTS)


EXPLAIN_SETTINGS = {
    "before (zero baseline, 50 steps x 8 copies, sd 0.1)": {
        "baseline": "zero",
        "steps": 50,
        "noisy_copies": 8,
        "noise_sd": 0.1,
    },
}


def heatmap_phantoms(seed: int, n: int, style: str = "anatomical") -> list[Any]:
    """``n`` phantom pairs of ``style`` (``anatomical``: the physical simulator; ``schematic``:
    what the shipped weights were trained on): sites in turn, grades cycling through the 12
    pairs with a synovium (SH 1-3 x vascularity 0-3), each pair from its own generator."""
    from .phantoms import US_SITES, phantom_style

    draw = phantom_style(style)[1]
    out = []
    for i in range(n):
        sh, vasc = GRADE_CYCLE[i % len(GRADE_CYCLE)]
        site = f"{'LR'[(i // len(US_SITES)) % 2]}_{US_SITES[i % len(US_SITES)]}"
        out.append(draw(site, sh, vasc, np.random.default_rng([int(seed), i, 23])))
    return out


def phantom_case(us: Any, size: int = 224) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The network input (1, 4, S, S) in [0, 1] and the crop's masks (synovium, effusion,
    synovial_flow), cut with the same ROI and resampling as the images."""
    from .ultrasound import crop_roi, prepare_pair

    x = prepare_pair(us.greyscale, us.doppler, us.roi, None, size).network_input()
    masks = {
        name: crop_roi(us.screen_mask(name), us.roi, size)
        for name in ("synovium", "effusion", "synovial_flow")
    }
    return torch.as_tensor(x[None], dtype=torch.float32) / 255.0, masks


def ensemble_maps(
    ensemble: Any, x: torch.Tensor, settings: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Per map of :data:`MAPS`: the members' maps (each scaled to its maximum), averaged."""
    from .us_rating import explain_case

    heat = explain_case(ensemble, x, floor=0.0, **settings)
    return {
        "sh_greyscale": heat["synovial_hypertrophy"],
        "sh_doppler": heat["synovial_hypertrophy_doppler"],
        "vascularity": heat["vascularity"],
    }


POINTING_TOLERANCE = 15.0  # px


def localisation(heat: np.ndarray, mask: np.ndarray, floor: float = 0.2) -> dict[str, float]:
    """Mass share inside ``mask`` (raw and as shown after ``floor``), the mask's area share,
    and whether the maximum is inside it (or within :data:`POINTING_TOLERANCE` px of it)."""
    from scipy import ndimage

    from .rating import normalise_heatmap

    shown = normalise_heatmap(heat, floor)
    # the pointing game's usual tolerance (Zhang et al. 2018): 15 px at 224 px
    near = ndimage.distance_transform_edt(~mask) <= POINTING_TOLERANCE if mask.any() else mask
    total, total_shown = float(heat.sum()), float(shown.sum())
    return {
        "area_share": float(mask.mean()),
        "mass_share": float(heat[mask].sum() / total) if total > 0 else 0.0,
        "mass_share_shown": float(shown[mask].sum() / total_shown) if total_shown > 0 else 0.0,
        "pointing_hit": float(mask.flat[int(np.argmax(heat))]),
        "pointing_hit_15px": float(near.flat[int(np.argmax(heat))]),
        "empty_shown": float(shown[mask].sum() == 0),
    }


def _summary(rows: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(rows)}
    for key in rows[0]:
        values = np.array([r[key] for r in rows], dtype=float)
        out[key] = float(values.mean())
    out["enrichment"] = out["mass_share"] / max(out["area_share"], 1e-9)
    return out


def _relative_l2(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-12))


def compare_settings(
    ensemble: Any,
    cases: Sequence[tuple[torch.Tensor, dict[str, np.ndarray]]],
    settings: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Localisation of every setting over the cases, and the seconds per pair it took."""
    results: dict[str, Any] = {}
    for name, setting in settings.items():
        per_map: dict[str, list[dict[str, float]]] = {m: [] for m in MAPS}
        seconds = []
        for x, masks in cases:
            t0 = time.perf_counter()
            maps = ensemble_maps(ensemble, x, setting)
            seconds.append(time.perf_counter() - t0)
            for key, (_, _, mask_name) in MAPS.items():
                if masks[mask_name].any():
                    per_map[key].append(localisation(maps[key], masks[mask_name]))
            if masks["effusion"].any():
                per_map.setdefault("sh_greyscale_on_effusion", []).append(
                    localisation(maps["sh_greyscale"], masks["effusion"])
                )
        results[name] = {
            "settings": dict(setting),
            "seconds_per_pair": float(np.median(seconds)),
            **{key: _summary(rows) for key, rows in per_map.items()},
        }
    return results


def accuracy_vs_reference(
    ensemble: Any,
    cases: Sequence[tuple[torch.Tensor, dict[str, np.ndarray]]],
    setting: Mapping[str, Any],
    reference_steps: int = 300,
) -> dict[str, Any]:
    """Relative L2 error of the ensemble maps (before the floor) of ``setting`` against the
    same setting with ``reference_steps`` Riemann-trapezoid steps on the same noisy copies."""
    ref_setting = {**setting, "steps": reference_steps, "method": "riemann_trapezoid"}
    errors: dict[str, list[float]] = {m: [] for m in MAPS}
    for x, _ in cases:
        fast, ref = ensemble_maps(ensemble, x, setting), ensemble_maps(ensemble, x, ref_setting)
        for key in MAPS:
            errors[key].append(_relative_l2(fast[key], ref[key]))
    return {
        "reference": f"{reference_steps} riemann_trapezoid steps, same baseline and noisy copies",
        "metric": "relative L2 ||map - reference|| / ||reference|| of the ensemble map",
        **{
            key: {"median": float(np.median(v)), "max": float(np.max(v))}
            for key, v in errors.items()
        },
    }


def _grades_right(ensemble: Any, cases: Sequence[tuple[torch.Tensor, Any]], phantoms: Any):
    """Share of the pairs whose SH / vascularity the ensemble grades right (a map of a wrong
    grade explains a mistake)."""
    with torch.no_grad():
        x = torch.cat([c[0] for c in cases]).to(next(ensemble.parameters()).device)
        decided = ensemble.decide(ensemble(x).cpu().numpy())
    pairs = list(zip(decided, phantoms, strict=True))
    return {
        key: float(np.mean([d[key] == getattr(us, key) for d, us in pairs]))
        for key in ("synovial_hypertrophy", "vascularity")
    }


NOISE_SDS = (0.1, 0.226, 1.0)  # ours before; the paper's N(0, 1) after ImageNet scaling; N(0, 1)


def benchmark_heatmaps(
    bundle: Any = None,
    heldout: Any = None,
    *,
    patients: int = 12,
    seed: int = 2100,
    device: str | None = None,
    styles: Sequence[str] = ("schematic", "anatomical"),
    reference_pairs: int = 2,
    noise_pairs: int = 6,
    compare_steps: int = 16,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every IG baseline's localisation on ``patients`` phantom pairs of ``seed`` per style, the
    paper's noise levels on ``noise_pairs`` of the first style (both with ``compare_steps``
    steps: the maps move by about 11 % from 16 to 300 steps, far less than between baselines,
    and the default's 64 steps would make the run four times longer), the speed of the default
    explanation and its error against a 300-step reference on ``reference_pairs``."""
    import json
    from pathlib import Path

    from .bundles import bundle_path
    from .us_rating import ensemble_hash, load_ensemble

    if heldout is not None:
        raise ValueError("--task heatmaps renders its own phantom pairs (it needs their masks)")
    root = bundle_path("ultrasound", bundle)
    models = Path(root) / "models"
    info = json.loads((models / "ensemble.json").read_text())
    ensemble = load_ensemble(models, **info["network"])
    if device:
        ensemble = ensemble.to(device)
    default = _explain_defaults()
    compared = {**default, "steps": int(compare_steps)}
    if settings is None:
        settings = {f"{b} baseline": {**compared, "baseline": b} for b in ("zero", "mean")}
        for sigma in (20.0, 40.0):
            settings[f"blur baseline (sigma {sigma:.0f} px)"] = {
                **compared,
                "baseline": "blur",
                "blur_sigma": sigma,
            }
    per_style: dict[str, Any] = {}
    first_cases: list[Any] = []
    for style in styles:
        started = time.perf_counter()
        phantoms = heatmap_phantoms(seed, patients, style)
        cases = [phantom_case(us, ensemble.input_size) for us in phantoms]
        first_cases = first_cases or cases
        per_style[style] = {
            "pairs": len(cases),
            "render_seconds": round(time.perf_counter() - started, 1),
            "grades_right": _grades_right(ensemble, cases, phantoms),
            "settings": compare_settings(ensemble, cases, settings),
        }
    noise = {
        f"{default['baseline']} baseline, noise sd {sd}, 4 copies": {
            **compared,
            "noisy_copies": 4,
            "noise_sd": sd,
        }
        for sd in NOISE_SDS
    }
    noise_results = (
        compare_settings(ensemble, first_cases[:noise_pairs], noise) if noise_pairs else {}
    )
    speed = {}
    for name, setting in {"default": default, **EXPLAIN_SETTINGS}.items():
        t, cpu = [], []
        for x, _ in first_cases[: 1 if name != "default" else max(1, reference_pairs)]:
            t0, c0 = time.perf_counter(), time.process_time()
            ensemble_maps(ensemble, x, setting)
            t.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        speed[name] = {
            "settings": dict(setting),
            "seconds_per_pair": float(np.median(t)),
            # CPU seconds do not grow when other jobs share the cores; wall seconds do
            "cpu_seconds_per_pair": float(np.median(cpu)),
        }
    error = (
        accuracy_vs_reference(ensemble, first_cases[:reference_pairs], default)
        if reference_pairs > 0
        else None
    )
    return {
        "task": "heatmaps",
        "bundle": str(root),
        "weights_hash": ensemble_hash(models),
        "trained_on": info.get("trained_on"),
        "members": len(ensemble.members),
        "phantoms": {
            "seed": seed,
            "pairs": patients,
            "styles": list(styles),
            "grades": "SH 1-3 x vascularity 0-3 in turn",
            "compare_steps": int(compare_steps),
        },
        "default_settings": default,
        "styles": per_style,
        "noise": {"style": styles[0] if styles else None, "pairs": noise_pairs, **noise_results},
        "speed": speed,
        "error_vs_reference": error,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
        },
        "note": PHANTOM_NOTE,
    }


_MAP_LABELS = (
    ("sh_greyscale", "SH, grey-scale input / synovium"),
    ("vascularity", "vascularity, Doppler input / synovial flow"),
    ("sh_doppler", "SH, Doppler input / synovial flow"),
)


def _rows(blocks: Mapping[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for name, block in blocks.items():
        if not isinstance(block, Mapping) or "settings" not in block:
            continue
        for key, label in _MAP_LABELS:
            s = block.get(key, {})
            if not s.get("n"):
                continue
            lines.append(
                f"| {prefix}{name} | {label} | {s['n']} | {s['area_share']:.1%} | "
                f"{s['mass_share']:.1%} / {s['mass_share_shown']:.1%} | {s['enrichment']:.2f} | "
                f"{s['pointing_hit']:.0%} / {s['pointing_hit_15px']:.0%} | "
                f"{s['empty_shown']:.0%} | "
                f"{block['seconds_per_pair']:.1f} |"
            )
    return lines


def heatmaps_markdown(result: Mapping[str, Any]) -> str:
    ph = result["phantoms"]
    header = [
        "| setting | map / mask | pairs | mask area share | mass share in mask (raw / shown) | "
        "enrichment | pointing game (in mask / within 15 px) | shown map empty on mask | "
        "s per pair |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines = [
        f"### RATING heatmaps vs the phantoms' masks (seed {ph['seed']}, {ph['pairs']} pairs per "
        f"style; {result['members']} members, weights {result['weights_hash'][:12]}, trained on "
        f"{result.get('trained_on')})",
        "",
    ]
    for style, block in result["styles"].items():
        right = block["grades_right"]
        lines += [
            f"{style} phantoms: the ensemble grades SH right on "
            f"{right['synovial_hypertrophy']:.0%} and vascularity on {right['vascularity']:.0%} "
            "of these pairs.",
            "",
            *header,
            *_rows(block["settings"]),
            "",
        ]
    if result["noise"].get("pairs"):
        lines += [
            f"Noise (SmoothGrad), {result['noise']['style']} phantoms, first "
            f"{result['noise']['pairs']} pairs:",
            "",
            *header,
            *_rows(result["noise"]),
            "",
        ]
    err = result["error_vs_reference"] or {}
    lines += [
        f"- baselines and noise compared at {ph.get('compare_steps')} steps; default settings: "
        f"{result['default_settings']}",
        *(
            f"- {name}: {s['seconds_per_pair']:.1f} s per pair (all members, all maps; "
            f"{s.get('cpu_seconds_per_pair', float('nan')):.1f} CPU s)"
            for name, s in result["speed"].items()
        ),
        f"- error of the default against {err.get('reference')} ({err.get('metric')}): "
        + ", ".join(
            f"{k} median {err[k]['median']:.1%} (max {err[k]['max']:.1%})" for k in err if k in MAPS
        ),
        f"- machine: {result['machine']['cpu_count']} cores, "
        f"{result['machine']['torch_threads']} torch threads, load average "
        + ", ".join(f"{v:.1f}" for v in result["machine"]["load_average"]),
        "",
        f"_{PHANTOM_NOTE}_",
        "",
    ]
    return "\n".join(lines)
