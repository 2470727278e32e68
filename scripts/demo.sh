#!/usr/bin/env bash
# The main job: set up the environment, generate a phantom cohort, summarise it, and run the
# shipped joint locator on it (these patients were never seen in training).
# Usage: bash scripts/demo.sh [OUT_DIR]   (default: cohort/demo)
set -euo pipefail
. "$(dirname "$0")/_env.sh"
OUT="${1:-$ROOT/cohort/demo}"
ra-joints phantoms --out "$OUT" --patients "${RA_JOINTS_PATIENTS:-20}" --seed "${RA_JOINTS_SEED:-1}"
ra-joints summary --project "$OUT"
echo
ra-joints benchmark --task locator --heldout "$OUT" --patients "${RA_JOINTS_PATIENTS:-20}" \
    --seed "${RA_JOINTS_SEED:-1}" --out "$OUT/locator_benchmark.json"
