#!/usr/bin/env bash
# The paper's configuration (GPU): 5 patient folds x 2 seeds x one binary network per ECOC split
# (">0", ">1", ">2") = 30 members, each with F (grey-scale -> SH), G (Doppler -> vascularity) and
# H (fusion -> SH): 6 networks per score and fold. Full width ResNet-18, 224 px, 1000 jigsaw
# permutations, 60 + 60 + 20 epochs.
#   DATA (first argument): a folder written by `ra-joints export --task ultrasound --folds 5`
#   WORK (second argument, default runs/rating_full): checkpoints; the packed ensemble goes to
#   WORK/models (copy it to the bundle's models/ to ship it).
# Several GPUs: put `torchrun --nproc_per_node N -m monai.bundle run ...` and add
# configs/multi_gpu_train.json to the training config list (see docs/README.md).
set -euo pipefail
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
DATA="$1"
WORK="${2:-$BUNDLE/../../runs/rating_full}"
CKPT="$WORK/ckpt"
RUN=(python -m monai.bundle run --meta_file "$BUNDLE/configs/metadata.json"
     --logging_file "$BUNDLE/configs/logging.conf" --bundle_root "$BUNDLE"
     --dataset_dir "$DATA" --ckpt_dir "$CKPT")
mkdir -p "$CKPT"
# 1000 permutations (seed 0) are generated into CKPT on the first jigsaw run, deterministically
for modality in greyscale doppler_transformed; do
    "${RUN[@]}" --config_file "$BUNDLE/configs/train_jigsaw.json" --modality "$modality"
done
for fold in 0 1 2 3 4; do
    for seed in 0 1; do
        for split in 1 2 3; do
            for stage in grey doppler fusion; do
                "${RUN[@]}" --config_file "$BUNDLE/configs/train.json" --stage "$stage" \
                    --val_fold "$fold" --seed "$seed" --splits "[$split]" --jigsaw_dir "$CKPT"
            done
        done
    done
done
python -c "
import sys
from annotation_tools.us_training import pack_members
print('packed', pack_members(sys.argv[1], sys.argv[2], half=False,
      info={'configuration': 'full', 'jigsaw_pretraining': True}))
" "$CKPT" "$WORK/models"
cp "$CKPT/jigsaw_permutations.json" "$WORK/models/"
