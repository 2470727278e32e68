"""Pixel-count leakage baselines of the anatomical ultrasound phantoms (docs/phantoms.md).

Usage: PYTHONPATH=. python scripts/us_leakage.py SEED N

Renders N pairs on a fresh seed, cycling through the six sites and both sides: even pairs have
balanced SH grades (0-3 in turn, vascularity drawn as the cohort draws it for that SH), odd
pairs are drawn as ``generate_cohort`` draws them. Then 5-fold CV accuracies of depth-3 trees
on pixel counts (:func:`annotation_tools.phantom_us.pixel_count_baselines`).
"""

import json
import sys
import time

import numpy as np

from annotation_tools.phantom_us import pixel_count_baselines, render_ultrasound_physical
from annotation_tools.phantoms import US_SITES, sample_us_grades


def main(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    pairs = []
    started = time.perf_counter()
    for i in range(n):
        site = f"{'LR'[i % 2]}_{US_SITES[i % len(US_SITES)]}"
        if i % 2 == 0:
            sh = (i // 2) % 4
            _, vasc = sample_us_grades(rng, [0.0, 0.35, 0.6, 0.9][sh])
        else:
            sh, vasc = sample_us_grades(rng, float(rng.uniform(0, 1)))
        vasc = 0 if sh == 0 else vasc
        pairs.append(render_ultrasound_physical(site, sh, vasc, np.random.default_rng([seed, i])))
    print("seconds per pair", round((time.perf_counter() - started) / n, 2), flush=True)
    print(json.dumps(pixel_count_baselines(pairs, seed=seed), indent=1))
    for name, key in (("SH", "synovial_hypertrophy"), ("Doppler", "vascularity")):
        print(name, "counts", np.bincount([getattr(p, key) for p in pairs], minlength=4))
    print("combined counts", np.bincount([p.combined for p in pairs], minlength=4))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
