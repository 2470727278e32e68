#!/usr/bin/env bash
# Reproduces the shipped ensemble (models/member_*.pt, ensemble.json, jigsaw_*) on a 2-core CPU
# (about 20 minutes): phantoms seed 400 (100 patients x 4 ultrasound pairs) -> 224-px ROI
# crops in 3 patient folds -> jigsaw pretraining of F (grey-scale) and G (Doppler) -> per fold:
# fine-tune F on SH, fine-tune G on vascularity, train H on the frozen F + G features.
#   WORK (first argument, default runs/rating): where data and checkpoints go
#   PRETRAINED=False: the "without jigsaw" ablation (then MODELS defaults to WORK/no_jigsaw)
#   MODELS: where the packed ensemble goes (default: the bundle's models/)
# Run with the project's environment active.
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
WORK="${1:-$BUNDLE/../../runs/rating}"
PRETRAINED="${PRETRAINED:-True}"
FOLDS="${FOLDS:-$(python -c "from annotation_tools.bundles import bundle_for; print(bundle_for('$BUNDLE').export_options()['folds'])")}"
SEEDS="${SEEDS:-0}"
if [ "$PRETRAINED" = "True" ]; then CKPT="$WORK/ckpt"; MODELS="${MODELS:-$BUNDLE/models}";
else CKPT="$WORK/ckpt_no_jigsaw"; MODELS="${MODELS:-$WORK/no_jigsaw}"; fi
RUN=(python -m monai.bundle run --meta_file "$BUNDLE/configs/metadata.json"
     --logging_file "$BUNDLE/configs/logging.conf" --bundle_root "$BUNDLE"
     --dataset_dir "$WORK/us_data" --ckpt_dir "$CKPT")
mkdir -p "$WORK" "$CKPT"
START=$(date +%s)
[ -f "$WORK/us_train/cohort.json" ] || ra-joints phantoms --out "$WORK/us_train" --patients 100 \
    --seed 400 --height 256 --us-pairs 4 --style "$STYLE"
same_style "$WORK/us_train"
[ -f "$WORK/us_data/datalist.json" ] || ra-joints export --store "$WORK/us_train" \
    --bundle "$BUNDLE" "${READER[@]}" --out "$WORK/us_data" --folds "$FOLDS" --seed 0
# the permutation set is part of the bundle: reuse it so the jigsaw classes stay the same
cp "$BUNDLE/models/jigsaw_permutations.json" "$CKPT/" 2>/dev/null || true
if [ "$PRETRAINED" = "True" ]; then
    for modality in greyscale doppler_transformed; do
        "${RUN[@]}" --config_file "['$BUNDLE/configs/train_jigsaw.json','$BUNDLE/configs/quick.json']" \
            --modality "$modality"
    done
fi
for fold in $(seq 0 $((FOLDS - 1))); do
    for seed in $SEEDS; do
        for stage in grey doppler fusion; do
            "${RUN[@]}" --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
                --stage "$stage" --val_fold "$fold" --seed "$seed" --pretrained "$PRETRAINED" \
                --jigsaw_dir "$CKPT"
        done
    done
done
python - "$CKPT" "$MODELS" "$PRETRAINED" "$(( $(date +%s) - START ))" <<'PY'
import os, shutil, sys
from pathlib import Path
from annotation_tools.us_training import pack_members
ckpt, models, pretrained = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "True"
info = {"configuration": "quick", "jigsaw_pretraining": pretrained,
        "trained_on": "phantoms seed 400 (style " + os.environ.get("STYLE", "schematic")
                      + "), 100 patients x 4 pairs, 3 patient folds"
                      + (", grades of " + os.environ["ANNOTATOR"] if os.environ.get("ANNOTATOR") else ""),
        "seeds": [400],  # the cohorts trained on (annotation_tools/seeds.py reads this)
        "training_seconds": int(sys.argv[4]), "cpu_count": os.cpu_count(),
        "note": "training time includes data generation/export only when they were not cached"}
print("packed", pack_members(ckpt, models, info=info))
for name in ("jigsaw_permutations.json",):
    if (ckpt / name).exists() and not (models / name).exists():
        shutil.copy(ckpt / name, models / name)
PY
