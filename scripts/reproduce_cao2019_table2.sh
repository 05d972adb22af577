#!/usr/bin/env bash
# Cao et al. 2019 (NeurIPS), Table 2: top-1 error of ResNet-32 on imbalanced CIFAR-10 and CIFAR-100,
# imbalance factors 100 and 10, exp and step profiles. Rows ERM, Focal, LDAM, CB RW, CB RS, CB Focal,
# M-DRW, LDAM-DRW on both datasets (8 x 2 x 2 x 2 = 64 runs per seed), and HG-DRS, LDAM-HG-DRS on
# CIFAR-10 only, as in the paper (2 x 2 x 2 = 8): 72 runs per seed. See docs/REPRODUCING.md.
#
#   scripts/reproduce_cao2019_table2.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]
set -euo pipefail
. "$(dirname "$0")/_imbench_python.sh"
T=cao2019_table2
exec "$IMBENCH_PYTHON" -m imbalance_bench.reproduce --table $T \
  --sweep "rows: experiment=$T/erm,$T/focal,$T/ldam,$T/cb_rw,$T/cb_rs,$T/cb_focal,$T/m_drw,$T/ldam_drw
           dataset=cifar10_lt,cifar100_lt dataset.imbalance_factor=100,10 dataset.imbalance_type=exp,step" \
  --sweep "hinge_rows: experiment=$T/hg_drs,$T/ldam_hg_drs
           dataset=cifar10_lt dataset.imbalance_factor=100,10 dataset.imbalance_type=exp,step" \
  "$@"
