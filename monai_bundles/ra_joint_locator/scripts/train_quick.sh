#!/usr/bin/env bash
# Reproduces models/model.pt: phantom cohort (seed 100, 60 patients) -> export (256 px, 5 folds,
# seed 0) -> quick training (seed 0, validation fold 0). Run from anywhere with the project's
# environment active. About 15 minutes on 2 CPU cores.
set -euo pipefail
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$BUNDLE/../../runs/locator}"
mkdir -p "$WORK"
[ -f "$WORK/cohort/cohort.json" ] || ra-joints phantoms --out "$WORK/cohort" --patients 60 --seed 100 --style schematic
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
