#!/usr/bin/env bash
# Trains every network variant of the comparison with the quick configuration on the same
# exported patches (see train_quick.sh for the data), each into WORK/variants/<variant>_<head>
# with the config overrides it used (config.json), then runs the benchmark over all of them:
#   ra-joints benchmark --task scorer --compare WORK/variants/*
# About 45 minutes on a 2-core CPU.
set -euo pipefail
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$BUNDLE/../../runs/scorer}"
[ -f "$WORK/data/datalist.json" ] || { echo "run train_quick.sh first (it exports the data)"; exit 1; }
for spec in "plain classes" "hirano classes" "seg_guided regression"; do
    set -- $spec
    out="$WORK/variants/$1_$2"
    mkdir -p "$out"
    echo "{\"variant\": \"$1\", \"head\": \"$2\"}" > "$out/config.json"
    [ -f "$out/model.pt" ] || python -m monai.bundle run \
        --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/quick.json']" \
        --meta_file "$BUNDLE/configs/metadata.json" --bundle_root "$BUNDLE" \
        --dataset_dir "$WORK/data" --ckpt_dir "$out" --variant "$1" --head "$2"
done
ra-joints benchmark --task scorer --compare "$WORK"/variants/* --out results/benchmark_scorer.json
