#!/usr/bin/env bash
# Reproduces the shipped ensemble (models/member_*.pt, ensemble.json) on a 2-core CPU (about
# 25 minutes per member): the locator's and scorer's phantom cohort (seed 100, 60 patients) ->
# export (edge crop, 288 x 256, discs r = 10 / ring to 13 px, 5 patient folds, seed 0) -> one
# quick training per member (member k: seed k, validation fold k).
#   WORK (first argument, default runs/multitask): where data and checkpoints go
#   MEMBERS (default 2): how many members to train
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
WORK="${1:-$BUNDLE/../../runs/multitask}"
MEMBERS="${MEMBERS:-2}"
mkdir -p "$WORK"
[ -f "$WORK/cohort/cohort.json" ] || ra-joints phantoms --out "$WORK/cohort" --patients 60 --seed 100 --style "$STYLE"
same_style "$WORK/cohort"
# export settings (grid, disc radii, folds) come from the bundle's own quick configuration
[ -f "$WORK/data/datalist.json" ] || ra-joints export --store "$WORK/cohort" --bundle "$BUNDLE" "${READER[@]}" \
    --out "$WORK/data" --seed 0 --quiet
SECONDS_LIST=()
for k in $(seq 0 $((MEMBERS - 1))); do
    start=$(date +%s)
    python -m monai.bundle run \
        --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
        --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" \
        --bundle_root "$BUNDLE" --dataset_dir "$WORK/data" --ckpt_dir "$WORK/ckpt_m$k" \
        --seed "$k" --val_fold "$k"
    SECONDS_LIST+=("$(( $(date +%s) - start ))")
done
python - "$WORK" "$BUNDLE/models" "${SECONDS_LIST[@]}" <<'PY'
import os, sys
from pathlib import Path
from annotation_tools.multitask import pack_ensemble
work, models, seconds = Path(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3:]]
members = [{"ckpt": work / f"ckpt_m{k}" / "model.pt", "seed": k, "val_fold": k,
            "training_seconds": s} for k, s in enumerate(seconds)]
info = {"configuration": "quick (configs/train.json + configs/quick.json)",
        "trained_on": "ra-joints phantoms --patients 60 --seed 100 --style "
                      + os.environ.get("STYLE", "schematic") + " (the locator's and scorer's "
                      "training cohort); export --task multitask --shape 288 256 "
                      "--disc-radius 10 13 --folds 5 --seed 0",
        "seeds": [100],  # the cohorts trained on (annotation_tools/seeds.py reads this)
        "pretrained_encoder": False, "cpu_count": os.cpu_count(),
        "note": "phantom-trained weights: not for clinical use"}
print("packed", pack_ensemble(members, models, info))
PY
