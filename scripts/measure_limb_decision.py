"""How often the locator's limb call (``intake.decide_limb``) is right on a held-out phantom
cohort whose files are renamed so that no name or tag says the limb.

    python scripts/measure_limb_decision.py SEED PATIENTS [WORKDIR]

Prints limbs right / total, kind right, the confidence range and seconds per file.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from annotation_tools.imageio import read_image, write_png
from annotation_tools.intake import LIMB_THRESHOLD, import_sources
from annotation_tools.phantoms import generate_cohort
from annotation_tools.predict import PredictionService


def main() -> None:
    seed, n = int(sys.argv[1]), int(sys.argv[2])
    root = Path(sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp()) / f"limbs{seed}_{n}"
    if not (root / "truth.json").exists():
        generate_cohort(
            root / "cohort", n, seed=seed, height=512, us_pairs=0, progress=False, style="schematic"
        )
        (root / "anon").mkdir()
        truth = {}
        for i, f in enumerate(sorted((root / "cohort" / "radiographs").iterdir())):
            out = root / "anon" / f"scan{i:04d}.png"  # pixels only: no tag, no name
            write_png(out, read_image(f).pixels)
            truth[str(out.resolve())] = f.stem[-2:]
        (root / "truth.json").write_text(json.dumps(truth))
    truth = json.loads((root / "truth.json").read_text())
    service = PredictionService("two-stage", device="cpu")
    service.locator()
    started = time.perf_counter()
    project = root / f"project{time.time_ns()}"
    report = import_sources(project, [root / "anon"], decide=service, limb_threshold=0.0)
    seconds = (time.perf_counter() - started) / len(truth)
    got = {
        r["path"]: (r["limb"], float(r["limb_source"].split("confidence ")[1].split(":")[0]))
        for r in report.imported
    }
    right = sum(got.get(p, ("",))[0] == limb for p, limb in truth.items())
    kind = sum(got.get(p, ("  ",))[0][1] == limb[1] for p, limb in truth.items())
    confidences = sorted(c for _, c in got.values())
    sure = [p for p in got if got[p][1] >= LIMB_THRESHOLD]
    print(
        f"seed {seed}, {len(truth)} radiographs: limb right {right}/{len(truth)}, kind right "
        f"{kind}/{len(truth)}; confidence {confidences[0]:.2f}-{confidences[-1]:.2f} (median "
        f"{confidences[len(confidences) // 2]:.2f}); >= {LIMB_THRESHOLD}: {len(sure)}, right "
        f"{sum(got[p][0] == truth[p] for p in sure)}; {seconds:.2f} s per file; skipped "
        f"{len(report.skipped)}"
    )


if __name__ == "__main__":
    main()
