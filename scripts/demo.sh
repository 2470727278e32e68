#!/usr/bin/env bash
# The main job: set up the environment, then generate a phantom cohort and summarise it.
# Usage: bash scripts/demo.sh [OUT_DIR]   (default: cohort/demo)
set -euo pipefail
. "$(dirname "$0")/_env.sh"
OUT="${1:-$ROOT/cohort/demo}"
ra-joints phantoms --out "$OUT" --patients "${RA_JOINTS_PATIENTS:-20}" --seed "${RA_JOINTS_SEED:-1}"
ra-joints summary --project "$OUT"
