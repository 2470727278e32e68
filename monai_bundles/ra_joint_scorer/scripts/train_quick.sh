#!/usr/bin/env bash
# Reproduces models/model.pt and models/symmetry.skops on a 2-core CPU (about 25 minutes):
#   patch model : phantoms seed 100 (60 patients) -> export 64-px patches (5 folds, seed 0)
#                 -> quick training (validation fold 0)
#   symmetry    : phantoms seed 300 (40 patients) + seed 301 (80 patients), which the patch
#                 model never saw -> per-joint ExtraTrees (quick: 100 trees, depth 4)
# Run from anywhere with the project's environment active. WORK defaults to runs/scorer.
#   STYLE (default schematic, what the shipped weights saw): phantom style; STYLE=anatomical
#     trains on the real-bone phantoms (Benchmark v2, issue #23)
#   ANNOTATOR (default: none = the phantom truth): train on a simulated reader's grades, e.g.
#     ANNOTATOR=rater_a, as one trains on a clinic's reader rather than an unknowable truth
set -euo pipefail
STYLE="${STYLE:-schematic}"
same_style() {  # a cached cohort of another style would silently train the wrong model
    python -c 'import json, sys; s = json.load(open(sys.argv[1])).get("style", "schematic"); sys.exit(0 if s == sys.argv[2] else f"{sys.argv[1]} holds {s} phantoms, not {sys.argv[2]}: use another WORK folder")' "$1/cohort.json" "$STYLE"
}
ANNOTATOR="${ANNOTATOR:-}"
READER=(); [ -n "$ANNOTATOR" ] && READER=(--annotator "$ANNOTATOR")
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$BUNDLE/../../runs/scorer}"
mkdir -p "$WORK"
[ -f "$WORK/cohort/cohort.json" ] || ra-joints phantoms --out "$WORK/cohort" --patients 60 --seed 100 --style "$STYLE"
same_style "$WORK/cohort"
[ -f "$WORK/trees_a/cohort.json" ] || ra-joints phantoms --out "$WORK/trees_a" --patients 40 --seed 300 --style "$STYLE"
same_style "$WORK/trees_a"
[ -f "$WORK/trees_b/cohort.json" ] || ra-joints phantoms --out "$WORK/trees_b" --patients 80 --seed 301 --style "$STYLE"
same_style "$WORK/trees_b"
# export settings (patch size, folds) come from the bundle's own quick configuration
ra-joints export --store "$WORK/cohort" --bundle "$BUNDLE" "${READER[@]}" --out "$WORK/data" --seed 0
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" \
    --bundle_root "$BUNDLE" --dataset_dir "$WORK/data" --ckpt_dir "$WORK/ckpt"
cp "$WORK/ckpt/model.pt" "$BUNDLE/models/model.pt"
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/train_symmetry.json','$BUNDLE/configs/quick.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --bundle_root "$BUNDLE" \
    --tree_store "['$WORK/trees_a','$WORK/trees_b']"
python -m monai.bundle ckpt_export network_def --filepath "$BUNDLE/models/model.ts" \
    --ckpt_file "$BUNDLE/models/model.pt" --meta_file "$BUNDLE/configs/metadata.json" \
    --config_file "$BUNDLE/configs/inference.json" --bundle_root "$BUNDLE"
