#!/usr/bin/env bash
# Reproduces models/model.pt: phantom cohort (seed 100, 60 patients) -> export (256 px, 5 folds,
# seed 0) -> quick training (seed 0, validation fold 0). Run from anywhere with the project's
# environment active. About 15 minutes on 2 CPU cores.
#   STYLE (default schematic, what the shipped weights saw): phantom style; STYLE=anatomical
#     trains on the real-bone phantoms (Benchmark v2, issue #23)
set -euo pipefail
STYLE="${STYLE:-schematic}"
same_style() {  # a cached cohort of another style would silently train the wrong model
    python -c 'import json, sys; s = json.load(open(sys.argv[1])).get("style", "schematic"); sys.exit(0 if s == sys.argv[2] else f"{sys.argv[1]} holds {s} phantoms, not {sys.argv[2]}: use another WORK folder")' "$1/cohort.json" "$STYLE"
}
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$BUNDLE/../../runs/locator}"
mkdir -p "$WORK"
[ -f "$WORK/cohort/cohort.json" ] || ra-joints phantoms --out "$WORK/cohort" --patients 60 --seed 100 --style "$STYLE"
same_style "$WORK/cohort"
# export settings (image size, folds) come from the bundle's own quick configuration
ra-joints export --store "$WORK/cohort" --bundle "$BUNDLE" --out "$WORK/data" --seed 0
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" \
    --bundle_root "$BUNDLE" --dataset_dir "$WORK/data" --ckpt_dir "$WORK/ckpt"
cp "$WORK/ckpt/model.pt" "$WORK/ckpt/shape_prior.json" "$BUNDLE/models/"
python -m monai.bundle ckpt_export network_def --filepath "$BUNDLE/models/model.ts" \
    --ckpt_file "$BUNDLE/models/model.pt" --meta_file "$BUNDLE/configs/metadata.json" \
    --config_file "$BUNDLE/configs/inference.json" --bundle_root "$BUNDLE"
