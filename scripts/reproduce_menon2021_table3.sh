#!/usr/bin/env bash
# Menon et al. 2021 (ICLR), Table 3: balanced (= top-1, on the balanced test sets) error of ResNet-32 on
# CIFAR-10-LT and CIFAR-100-LT at imbalance ratio 100. Rows ERM and post-hoc logit adjustment (tau = 1,
# both from the ERM runs), logit-adjusted loss, and weight normalisation (tau-normalised classifier of
# the ERM runs, tau = 1 and the best tau of the default grid): 2 x 2 trained runs and 2 x 2 scoring runs
# per seed. See docs/REPRODUCING.md.
#
#   scripts/reproduce_menon2021_table3.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]
set -euo pipefail
. "$(dirname "$0")/_imbench_python.sh"
T=menon2021_table3
COLUMNS="dataset=cifar10_lt,cifar100_lt dataset.imbalance_factor=100"
ERM_RUN="{out}/erm/\${dataset.name}_seed\${seed}"
exec "$IMBENCH_PYTHON" -m imbalance_bench.reproduce --table $T \
  --sweep "erm: experiment=$T/erm $COLUMNS hydra.sweep.subdir=\${dataset.name}_seed\${seed}" \
  --sweep "la_loss: experiment=$T/la_loss $COLUMNS" \
  --sweep "weight_norm: experiment=$T/weight_norm $COLUMNS stage.init_from=$ERM_RUN" \
  --sweep "weight_norm_tuned: experiment=$T/weight_norm $COLUMNS stage.init_from=$ERM_RUN
           stage.taus=[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8,1.9,2.0]" \
  "$@"
