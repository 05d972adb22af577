#!/usr/bin/env bash
# Partial Label Masking (Duarte, Rawat & Shah, CVPR-W 2021) on MultiMNIST-LT: sigmoid BCE against
# PLM around BCE, each without and with class-balanced weights (Cui et al. 2019), ResNet-32,
# reported by test mAP and mean F2: 4 runs per seed. Real MNIST runs offline.
# See docs/REPRODUCING.md for the shortened CPU version whose results are in docs/results/.
#
#   scripts/reproduce_plm_multimnist.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]
set -euo pipefail
. "$(dirname "$0")/_imbench_python.sh"
exec "$IMBENCH_PYTHON" -m imbalance_bench.reproduce --table plm_multimnist --metric map --metric mean_f2 \
  --sweep "losses: experiment=plm_multimnist loss=bce,plm reweight=none,cb" \
  "$@"
