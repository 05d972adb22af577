#!/usr/bin/env bash
# Cui et al. 2019 (CVPR), Table 2: top-1 error of ResNet-32 on long-tailed CIFAR-10 and CIFAR-100,
# imbalance factors 200, 100, 50, 20, 10, 1. Rows Softmax, Sigmoid, Focal (gamma 0.5, 1, 2) over the
# 12 columns (60 runs) and the Class-Balanced row, one preset per cell with the paper's best loss,
# beta and gamma (12 runs): 72 runs per seed. See docs/REPRODUCING.md.
#
#   scripts/reproduce_cui2019_table2.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]
#   e.g. scripts/reproduce_cui2019_table2.sh --seeds 0,1,2 dataset.root=/data trainer.device=cuda
set -euo pipefail
. "$(dirname "$0")/_imbench_python.sh"
T=cui2019_table2
cells=$(printf "$T/cb_best_%s," cifar10_if{200,100,50,20,10,1} cifar100_if{200,100,50,20,10,1})
exec "$IMBENCH_PYTHON" -m imbalance_bench.reproduce --table $T \
  --sweep "losses: experiment=$T/softmax,$T/sigmoid,$T/focal_g05,$T/focal_g1,$T/focal_g2
           dataset=cifar10_lt,cifar100_lt dataset.imbalance_factor=200,100,50,20,10,1" \
  --sweep "class_balanced: experiment=${cells%,}" \
  "$@"
