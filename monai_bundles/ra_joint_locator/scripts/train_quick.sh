#!/usr/bin/env bash
# Reproduces models/model.pt: phantom cohort (seed 100, 60 patients) -> export (256 px, 5 folds,
# seed 0) -> quick training (seed 0, validation fold 0). Run from anywhere with the project's
# environment active. About 15 minutes on 2 CPU cores.
#   STYLE (default both, what the shipped weights saw): phantom style. STYLE=both makes the
#     seed-100 cohort in each style (real-bone anatomical and schematic), exports each and
#     trains on the merged set, so one locator finds joints on both kinds of film (about 30
#     minutes); STYLE=anatomical or STYLE=schematic trains on one style only
set -euo pipefail
STYLE="${STYLE:-both}"
same_style() {  # $1: cohort folder, $2: style. A cached cohort of another style would silently train the wrong model
    python -c 'import json, sys; s = json.load(open(sys.argv[1])).get("style", "schematic"); sys.exit(0 if s == sys.argv[2] else f"{sys.argv[1]} holds {s} phantoms, not {sys.argv[2]}: use another WORK folder")' "$1/cohort.json" "$2"
}
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$BUNDLE/../../runs/locator}"
mkdir -p "$WORK"
cohort_and_export() {  # $1: style, $2: cohort folder, $3: export folder
    [ -f "$2/cohort.json" ] || ra-joints phantoms --out "$2" --patients 60 --seed 100 --style "$1"
    same_style "$2" "$1"
    # export settings (image size, folds) come from the bundle's own quick configuration
    ra-joints export --store "$2" --bundle "$BUNDLE" --out "$3" --seed 0
}
if [ "$STYLE" = both ]; then
    for style in anatomical schematic; do
        cohort_and_export "$style" "$WORK/cohort_$style" "$WORK/parts/$style"
    done
    ra-joints merge-exports "$WORK/parts/anatomical" "$WORK/parts/schematic" --out "$WORK/data"
else
    cohort_and_export "$STYLE" "$WORK/cohort" "$WORK/data"
fi
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" \
    --bundle_root "$BUNDLE" --dataset_dir "$WORK/data" --ckpt_dir "$WORK/ckpt"
cp "$WORK/ckpt/model.pt" "$WORK/ckpt/shape_prior.json" "$BUNDLE/models/"
python -m monai.bundle ckpt_export network_def --filepath "$BUNDLE/models/model.ts" \
    --ckpt_file "$BUNDLE/models/model.pt" --meta_file "$BUNDLE/configs/metadata.json" \
    --config_file "$BUNDLE/configs/inference.json" --bundle_root "$BUNDLE"
