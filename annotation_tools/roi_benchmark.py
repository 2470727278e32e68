"""Measure the automatic colour box and ROI proposal on phantoms (and fit the ROI calibration).

``python -m annotation_tools.roi_benchmark --styles schematic --fit --out roi_benchmark.json``

* ROI calibration: fitted on a training seed for every candidate setting (shadow depth, per
  site or not), the setting chosen by the median IoU on a validation seed, measured once on a
  test seed. ``--fit`` writes the chosen calibration to ``annotation_tools/roi_calibration.json``.
* Colour box: IoU with the renderer's colour box on screens with one colour bar and with two
  (a second, velocity-style bar composed beside the image when the renderer drew one), and how
  many Doppler-mask pixels fall outside the box when no box is given (bars counted as flow).
* RATING: the shipped ensemble's grades with the drawn (truth) ROI and with the proposal, on
  the same test pairs: combined accuracy and linearly weighted kappa against the truth.

Phantom figures are not clinical figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .seeds import ROI_PAIR_SEEDS, ULTRASOUND, check_benchmark_seed
from .us_roi import (
    CALIBRATION_FILE,
    bone_profile,
    box_iou,
    find_colour_box,
    fit_roi_calibration,
    propose_roi,
)

SEEDS = dict(ROI_PAIR_SEEDS)  # registered in annotation_tools/seeds.py (train/validation/test)
CANDIDATES = [{"shadow": s, "per_site": p} for s in (0.1, 0.15) for p in (True, False)]


@dataclass
class CachedPair:
    """What the benchmark reads of a phantom (saved as .npz + .json: no pickles)."""

    site: str
    greyscale: np.ndarray
    doppler: np.ndarray
    roi: tuple[float, float, float, float]
    colour_box: tuple[int, int, int, int]
    flow_mask: np.ndarray
    synovial_hypertrophy: int
    vascularity: int
    n_colour_bars: int | None = None

    @property
    def combined(self) -> int:
        return max(self.synovial_hypertrophy, self.vascularity)


def cached_pairs(style: str, seed: int, n: int, cache: Path | None) -> list[Any]:
    """:func:`phantom_pairs`, kept in ``cache`` (a slow renderer is run once per split)."""
    if cache is None:
        return phantom_pairs(style, seed, n)
    stem = Path(cache) / f"{style}_s{seed}_n{n}"
    if stem.with_suffix(".json").exists():
        meta = json.loads(stem.with_suffix(".json").read_text())
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as arrays:
            return [
                CachedPair(
                    site=m["site"],
                    greyscale=arrays[f"g{i}"],
                    doppler=arrays[f"d{i}"],
                    roi=tuple(m["roi"]),
                    colour_box=tuple(m["colour_box"]),
                    flow_mask=arrays[f"f{i}"],
                    synovial_hypertrophy=m["sh"],
                    vascularity=m["vasc"],
                    n_colour_bars=m["bars"],
                )
                for i, m in enumerate(meta)
            ]
    pairs = phantom_pairs(style, seed, n)
    Path(cache).mkdir(parents=True, exist_ok=True)
    arrays = {}
    meta = []
    for i, us in enumerate(pairs):
        arrays.update({f"g{i}": us.greyscale, f"d{i}": us.doppler, f"f{i}": us.flow_mask})
        meta.append(
            {
                "site": us.site,
                "roi": list(us.roi),
                "colour_box": [int(v) for v in us.colour_box],
                "sh": us.synovial_hypertrophy,
                "vasc": us.vascularity,
                "bars": getattr(us, "n_colour_bars", None),
            }
        )
    np.savez_compressed(stem.with_suffix(".npz"), **arrays)
    stem.with_suffix(".json").write_text(json.dumps(meta))
    return pairs


def phantom_pairs(style: str, seed: int, n: int) -> list[Any]:
    """``n`` ultrasound phantoms of ``style``: sites in turn, grades as a cohort draws them."""
    import inspect

    from .phantoms import US_SITES, phantom_style, sample_us_grades

    draw = phantom_style(style)[1]
    bars = "n_colour_bars" in inspect.signature(draw).parameters
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        site = f"{'LR'[(i // len(US_SITES)) % 2]}_{US_SITES[i % len(US_SITES)]}"
        for _attempt in range(5):  # a renderer that fails on one draw gets a fresh one
            sh, vasc = sample_us_grades(rng, float(rng.uniform(0, 1)))
            try:
                extra = {"n_colour_bars": 1 + i % 2} if bars else {}
                out.append(draw(site, sh, vasc, rng, **extra))
                break
            except ValueError:
                RENDER_FAILURES[style] = RENDER_FAILURES.get(style, 0) + 1
    return out


RENDER_FAILURES: dict[str, int] = {}


def add_colour_bar(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A second colour bar (blue-black-red velocity scale) in the left margin, as scanners
    show next to the power scale; drawn where the screen is black."""
    out = rgb.copy()
    h, w = out.shape[:2]
    bar_h, bar_w = int(0.25 * h), max(6, int(0.015 * w))
    dark = out.max(-1) < 12
    cols = np.nonzero(dark[int(0.3 * h) : int(0.3 * h) + bar_h].all(axis=0))[0]
    cols = cols[cols < w // 3]
    x = int(cols[len(cols) // 2]) if len(cols) > bar_w else 2
    y = int(0.3 * h + rng.integers(0, int(0.1 * h)))
    v = np.linspace(1, -1, bar_h)[:, None].repeat(bar_w, 1)
    bar = np.stack(
        [
            np.clip(255 * v, 0, 255),
            np.clip(200 * np.abs(v) ** 3, 0, 255),
            np.clip(-255 * v, 0, 255),
        ],
        axis=-1,
    ).astype(np.uint8)
    y1, x1 = min(h, y + bar_h), min(w, x + bar_w)
    out[y:y1, x:x1] = bar[: y1 - y, : x1 - x]
    return out


def _colour_box_stats(pairs: Sequence[Any], two_bars: bool, seed: int) -> dict[str, Any]:
    from .ultrasound import doppler_mask

    rng = np.random.default_rng(seed)
    ious, outside, dice, seconds = [], [], [], []
    if any(getattr(us, "n_colour_bars", None) for us in pairs):  # the renderer drew its bars
        pairs = [us for us in pairs if getattr(us, "n_colour_bars", 1) == (2 if two_bars else 1)]
        two_bars = False
    for us in pairs:
        screen = add_colour_bar(us.doppler, rng) if two_bars else us.doppler
        t0 = time.perf_counter()
        box = find_colour_box(screen)
        seconds.append(time.perf_counter() - t0)
        ious.append(box_iou(box, us.colour_box) if box is not None else 0.0)
        mask = doppler_mask(screen)
        x0, y0, x1, y1 = us.colour_box
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        outside.append(int((mask & ~inside).sum()))
        truth = us.flow_mask
        if truth.any() or mask.any():
            dice.append(2 * float((mask & truth).sum()) / float(mask.sum() + truth.sum()))
    iou = np.array(ious)
    return {
        "pairs": len(pairs),
        "iou_median": round(float(np.median(iou)), 3),
        "hit_rate_iou_0.5": round(float(np.mean(iou >= 0.5)), 3),
        "hit_rate_iou_0.9": round(float(np.mean(iou >= 0.9)), 3),
        "mask_pixels_outside_box_total": int(np.sum(outside)),
        "screens_with_pixels_outside_box": int(np.sum(np.array(outside) > 0)),
        "flow_dice_median": round(float(np.median(dice)), 3) if dice else None,
        "seconds_per_screen": round(float(np.mean(seconds)), 3),
    }


def _roi_stats(pairs: Sequence[Any], calibration: dict[str, Any]) -> dict[str, Any]:
    per_site: dict[str, list[float]] = {}
    proposals, seconds = [], []
    for us in pairs:
        t0 = time.perf_counter()
        box = propose_roi(us.greyscale, us.site, calibration=calibration)
        seconds.append(time.perf_counter() - t0)
        proposals.append(box)
        per_site.setdefault(us.site.split("_", 1)[1], []).append(box_iou(box, us.roi))

    def summary(values: Sequence[float]) -> dict[str, Any]:
        v = np.array(values)
        return {
            "pairs": len(v),
            "iou_median": round(float(np.median(v)), 3),
            "share_iou_0.5": round(float(np.mean(v >= 0.5)), 3),
            "iou_min": round(float(v.min()), 3),
        }

    every = [v for values in per_site.values() for v in values]
    return {
        "all": summary(every),
        "per_site": {site: summary(v) for site, v in sorted(per_site.items())},
        "seconds_per_pair": round(float(np.mean(seconds)), 3),
        "proposals": proposals,
    }


def _rating_stats(pairs: Sequence[Any], proposals: Sequence[Sequence[float]]) -> dict[str, Any]:
    import torch

    from .bundles import shipped_bundles_dir
    from .metrics import linear_weighted_kappa
    from .ultrasound import prepare_pair
    from .us_rating import load_ensemble

    models = shipped_bundles_dir() / "ra_us_rating" / "models"
    check_benchmark_seed(SEEDS["test"], ULTRASOUND, bundles=[models])  # never trained on them
    network = json.loads((models / "ensemble.json").read_text())["network"]
    ensemble = load_ensemble(models, **network)
    truth = np.array([us.combined for us in pairs])
    out: dict[str, Any] = {"pairs": len(pairs)}
    for name, boxes in (("drawn", [us.roi for us in pairs]), ("proposed", proposals)):
        x = np.stack(
            [
                prepare_pair(us.greyscale, us.doppler, box).network_input()
                for us, box in zip(pairs, boxes, strict=True)
            ]
        )
        with torch.no_grad():
            logits = torch.cat(
                [
                    ensemble(torch.as_tensor(x[i : i + 16], dtype=torch.float32) / 255.0)
                    for i in range(0, len(x), 16)
                ]
            )
        combined = np.array([d["combined"] for d in ensemble.decide(logits.numpy())])
        out[name] = {
            "combined_accuracy": round(float(np.mean(combined == truth)), 3),
            "combined_kappa_linear": round(float(linear_weighted_kappa(truth, combined)), 3),
        }
    return out


def run(
    styles: Sequence[str],
    *,
    n_train: int = 240,
    n_val: int = 120,
    n_test: int = 120,
    fit: bool = False,
    rating: bool = True,
    counts: dict[str, dict[str, int]] | None = None,
    cache: Path | None = None,
    only_render: bool = False,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit on the training seed, choose on the validation seed, measure on the test seed."""
    counts = counts or {}
    sizes = {"train": n_train, "validation": n_val, "test": n_test}
    data = {
        split: {
            s: cached_pairs(s, SEEDS[split], counts.get(s, sizes)[split], cache) for s in styles
        }
        for split in (splits or sizes)
    }
    if only_render:
        return {}
    choices = []
    profiles: dict[float, dict[int, Any]] = {}

    def profile(us: Any, shadow: float) -> Any:
        memo = profiles.setdefault(shadow, {})
        if id(us) not in memo:
            memo[id(us)] = bone_profile(us.greyscale, shadow=shadow)
        return memo[id(us)]

    for cand in CANDIDATES:
        shadow = cand["shadow"]
        train = [(profile(us, shadow), us.roi, us.site) for s in styles for us in data["train"][s]]
        cal = fit_roi_calibration(train, **cand)
        per_style = {
            s: [
                box_iou(
                    propose_roi(
                        us.greyscale, us.site, calibration=cal, profile=profile(us, shadow)
                    ),
                    us.roi,
                )
                for us in data["validation"][s]
            ]
            for s in styles
        }
        val = [v for values in per_style.values() for v in values]
        medians = {s: round(float(np.median(v)), 3) for s, v in per_style.items()}
        choices.append(
            (
                float(np.median(val)),
                float(np.mean(np.array(val) >= 0.5)),
                {**cand, "validation_median_per_style": medians},
                cal,
            )
        )
    best = max(choices, key=lambda c: (c[1], c[0]))
    _, _, cand, cal = best
    cand = {k: v for k, v in cand.items() if k != "validation_median_per_style"}
    cal = {**cal, "fitted_on": {"styles": list(styles), "seeds": SEEDS, "setting": cand}}
    if fit:
        CALIBRATION_FILE.write_text(json.dumps(cal, indent=1) + "\n")
    report: dict[str, Any] = {
        "seeds": {split: {s: SEEDS[split] for s in styles} for split in SEEDS},
        "validation": [
            {"setting": c, "iou_median": round(m, 3), "share_iou_0.5": round(h, 3)}
            for m, h, c, _ in choices
        ],
        "chosen": cand,
        "render_failures_redrawn": dict(RENDER_FAILURES),
        "styles": {},
    }
    for s in styles:
        test = data["test"][s]
        roi = _roi_stats(test, cal)
        entry = {
            "colour_box_one_bar": _colour_box_stats(test, False, SEEDS["test"]),
            "colour_box_two_bars": _colour_box_stats(test, True, SEEDS["test"]),
            "roi_proposal": {k: v for k, v in roi.items() if k != "proposals"},
        }
        if rating:
            entry["rating"] = _rating_stats(test, roi["proposals"])
        report["styles"][s] = entry
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", default="schematic", help="comma-separated phantom styles")
    p.add_argument("--fit", action="store_true", help="write the chosen ROI calibration")
    p.add_argument("--no-rating", action="store_true", help="skip the RATING comparison")
    p.add_argument("--train", type=int, default=240)
    p.add_argument("--validation", type=int, default=120)
    p.add_argument("--test", type=int, default=120)
    p.add_argument(
        "--counts",
        action="append",
        default=[],
        metavar="STYLE=TRAIN,VAL,TEST",
        help="pairs per split for one style (a slow renderer gets fewer), e.g. anatomical=60,30,60",
    )
    p.add_argument("--cache", type=Path, default=None, help="keep rendered pairs here (.npz)")
    p.add_argument(
        "--only-render",
        default=None,
        metavar="SPLIT",
        help="render (and cache) one split only: train, validation or test",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    counts = {}
    for item in args.counts:
        style, _, numbers = item.partition("=")
        n = [int(v) for v in numbers.split(",")]
        if len(n) != 3:
            p.error(f"--counts wants STYLE=TRAIN,VAL,TEST, got {item!r}")
        counts[style.strip()] = dict(zip(("train", "validation", "test"), n, strict=True))
    report = run(
        [s.strip() for s in args.styles.split(",") if s.strip()],
        n_train=args.train,
        n_val=args.validation,
        n_test=args.test,
        fit=args.fit,
        rating=not args.no_rating,
        counts=counts,
        cache=args.cache,
        only_render=args.only_render is not None,
        splits=(args.only_render,) if args.only_render else None,
    )
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
