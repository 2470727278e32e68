"""Grades read back from the drawn anatomical ultrasound phantoms (docs/phantoms.md).

Usage: PYTHONPATH=. python scripts/us_grade_check.py [N_SEEDS]

For seeds 0..N-1 (default 24) and SH 0-3 at the four site kinds in turn: the SH grade read
from the synovium's shape (``sh_grade_from_shape``) against the drawn one, and the share of
the synovium covered by Doppler signal per Doppler grade.
"""

import collections
import sys
import time

import numpy as np

from annotation_tools.phantom_us import render_ultrasound_physical, sh_grade_from_shape

SITES = ("R_mcp_2", "L_pip_2", "R_wrist", "L_mtp_5")


def main(n_seeds: int) -> None:
    started = time.perf_counter()
    confusion: collections.Counter = collections.Counter()
    fractions = collections.defaultdict(list)
    for seed in range(n_seeds):
        site = SITES[seed % 4]
        for sh in range(4):
            vasc = [0, seed % 2 + 1, 2, 3][sh]
            us = render_ultrasound_physical(site, sh, vasc, np.random.default_rng(seed))
            confusion[(sh, sh_grade_from_shape(us.synovium, us.line_y))] += 1
            if sh:
                fractions[vasc].append(us.synovial_flow.sum() / max(us.synovium.sum(), 1))
    print("(drawn SH, read SH): count", sorted(confusion.items()))
    for vasc, f in sorted(fractions.items()):
        print(
            f"Doppler {vasc}: min / median / max share", np.round(np.percentile(f, [0, 50, 100]), 3)
        )
    print("seconds", round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 24)
