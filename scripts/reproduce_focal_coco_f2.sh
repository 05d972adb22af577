#!/usr/bin/env bash
# Focal loss against sigmoid BCE for multi-label MS-COCO 2017, scored by mean F2 (and mAP), for
# ResNet-50, ResNet-101 and SE-ResNeXt-101 (32x4d) from ImageNet weights: 6 runs per seed.
# Needs COCO 2017 under dataset.root and timm's pretrained weights (or model.pretrained=false).
# See docs/REPRODUCING.md.
#
#   scripts/reproduce_focal_coco_f2.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]
set -euo pipefail
. "$(dirname "$0")/_imbench_python.sh"
exec "$IMBENCH_PYTHON" -m imbalance_bench.reproduce --table focal_coco_f2 --metric mean_f2 --metric map \
  --sweep "models: experiment=focal_coco_f2 loss=focal,bce model=resnet50,resnet101,seresnext101" \
  "$@"
