#!/usr/bin/env bash
# Reproduces models/model.pt and models/symmetry.skops on a 2-core CPU (about 25 minutes):
#   patch model : phantoms seed 100 (60 patients) -> export 64-px patches (5 folds, seed 0)
#                 -> quick training (validation fold 0)
#   symmetry    : phantoms seed 300 (40 patients) + seed 301 (80 patients), which the patch
#                 model never saw -> per-joint ExtraTrees (quick: 100 trees, depth 4)
# Run from anywhere with the project's environment active. WORK defaults to runs/scorer.
#   STYLE (default schematic, what the shipped weights saw): phantom style; STYLE=anatomical
#     trains on the real-bone phantoms; STYLE=both makes every cohort in each style, exports
#     each and trains on the merged patches (about 60 minutes; see docs/README.md "Training on
#     both styles with a reader's grades" for what it gave)
#   ANNOTATOR (default: none = the phantom truth, what the shipped weights saw): train the patch
#     model and the symmetry trees on a simulated reader's grades, e.g. ANNOTATOR=rater_a, as
#     one trains on a clinic's reader rather than an unknowable truth
set -euo pipefail
STYLE="${STYLE:-schematic}"
same_style() {  # $1: cohort folder, $2: style. A cached cohort of another style would silently train the wrong model
    python -c 'import json, sys; s = json.load(open(sys.argv[1])).get("style", "schematic"); sys.exit(0 if s == sys.argv[2] else f"{sys.argv[1]} holds {s} phantoms, not {sys.argv[2]}: use another WORK folder")' "$1/cohort.json" "$2"
}
ANNOTATOR="${ANNOTATOR:-}"
READER=(); [ -n "$ANNOTATOR" ] && READER=(--annotator "$ANNOTATOR")
TREE_READERS=None; [ -n "$ANNOTATOR" ] && TREE_READERS="['$ANNOTATOR']"
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$BUNDLE/../../runs/scorer}"
mkdir -p "$WORK"
cohort() {  # $1: style, $2: folder, $3: patients, $4: seed, then phantoms options
    [ -f "$2/cohort.json" ] || ra-joints phantoms --out "$2" --patients "$3" --seed "$4" --style "$1" --quiet "${@:5}"
    same_style "$2" "$1"
}
if [ "$STYLE" = both ]; then STYLES=(anatomical schematic); SUFFIX=(_anatomical _schematic)
else STYLES=("$STYLE"); SUFFIX=(""); fi
PARTS=(); TREES=()
for i in "${!STYLES[@]}"; do
    style="${STYLES[$i]}"; sfx="${SUFFIX[$i]}"
    cohort "$style" "$WORK/cohort$sfx" 60 100
    cohort "$style" "$WORK/trees_a$sfx" 40 300
    cohort "$style" "$WORK/trees_b$sfx" 80 301
    # export settings (patch size, folds) come from the bundle's own quick configuration
    ra-joints export --store "$WORK/cohort$sfx" --bundle "$BUNDLE" "${READER[@]}" \
        --out "$WORK/parts/${style}" --seed 0 --quiet
    PARTS+=("$WORK/parts/${style}")
    TREES+=("'$WORK/trees_a$sfx'" "'$WORK/trees_b$sfx'")
done
if [ "${#PARTS[@]}" -gt 1 ]; then
    ra-joints merge-exports "${PARTS[@]}" --out "$WORK/data"
else
    rm -rf "$WORK/data" && cp -r "${PARTS[0]}" "$WORK/data"
fi
TREE_STORE="[$(IFS=,; echo "${TREES[*]}")]"
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" \
    --bundle_root "$BUNDLE" --dataset_dir "$WORK/data" --ckpt_dir "$WORK/ckpt"
cp "$WORK/ckpt/model.pt" "$BUNDLE/models/model.pt"
python -m monai.bundle run \
    --config_file "['$BUNDLE/configs/train_symmetry.json','$BUNDLE/configs/quick.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --bundle_root "$BUNDLE" \
    --tree_store "$TREE_STORE" --annotators "$TREE_READERS"
python -m monai.bundle ckpt_export network_def --filepath "$BUNDLE/models/model.ts" \
    --ckpt_file "$BUNDLE/models/model.pt" --meta_file "$BUNDLE/configs/metadata.json" \
    --config_file "$BUNDLE/configs/inference.json" --bundle_root "$BUNDLE"
