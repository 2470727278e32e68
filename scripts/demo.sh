#!/usr/bin/env bash
# The main job: set up the environment, generate a phantom cohort, summarise it, run the shipped
# joint locator on it, then the whole radiograph pipeline (locator -> scorer -> symmetry) on its
# image files, and compare the predicted scores with the phantom truth. These patients were never
# seen in training.
# Usage: bash scripts/demo.sh [OUT_DIR]   (default: cohort/demo)
set -euo pipefail
. "$(dirname "$0")/_env.sh"
OUT="${1:-$ROOT/cohort/demo}"
ra-joints phantoms --out "$OUT" --patients "${RA_JOINTS_PATIENTS:-20}" --seed "${RA_JOINTS_SEED:-1}"
ra-joints summary --project "$OUT"
echo
ra-joints benchmark --task locator --heldout "$OUT" --patients "${RA_JOINTS_PATIENTS:-20}" \
    --seed "${RA_JOINTS_SEED:-1}" --out "$OUT/locator_benchmark.json"
echo
ra-joints predict --images "$OUT/radiographs" --out "$OUT/predicted"
ra-joints metrics scores --truth "$OUT/scores_ra2dream.csv" \
    --pred "$OUT/predicted/scores_ra2dream.csv" --out "$OUT/predicted/score_metrics.json"
echo "Predicted scores, per-image JSON and SHAP heatmaps: $OUT/predicted (phantom figures, not clinical)"
