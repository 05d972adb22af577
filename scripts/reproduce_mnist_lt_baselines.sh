#!/usr/bin/env bash
# The long-tail baselines side by side on real data that runs offline: MNIST-LT at imbalance factor
# 100, ResNet-32, a short CPU schedule (3 epochs of the quick recipe). Rows: cross-entropy with
# instance, class-balanced, square-root and progressive sampling and deferred class-balanced
# re-sampling (DRS, from the last epoch); LDAM-DRW (DRW from the last epoch); cRT and tau-norm
# (Kang et al. 2020) started from the instance runs; post-hoc logit adjustment (tau = 1, Menon et
# al. 2021) of the instance runs. 6 trained runs, a cRT and a tau-norm run per seed. Reported by
# top-1 error and many-, medium- and few-shot accuracy, with the shot groups cut for MNIST-LT's counts
# (5421 down to 54 train images): many > 1000, few < 200. See docs/REPRODUCING.md; the results of
# seeds 0, 1 and 2 are in docs/results/mnist_lt_baselines/ (REPRODUCING.md reads them).
#
#   scripts/reproduce_mnist_lt_baselines.sh [--dry-run] [--seeds 0,1,2] [--out DIR [--resume]] [OVERRIDE ...]
set -euo pipefail
. "$(dirname "$0")/_imbench_python.sh"
SHORT="experiment=mnist_lt_quick trainer.epochs=3"
SHOTS="metrics.many_shot_above=1000 metrics.few_shot_below=200"
exec "$IMBENCH_PYTHON" -m imbalance_bench.reproduce --table mnist_lt_baselines \
  --metric top1_error --metric many_shot_top1 --metric medium_shot_top1 --metric few_shot_top1 \
  --sweep "instance: $SHORT metrics.logit_adjust_tau=1 hydra.sweep.subdir=seed\${seed}" \
  --sweep "resampled: $SHORT sampler=class_balanced,square_root,progressive" \
  --sweep "drs: $SHORT sampler=class_balanced sampler.start_epoch=2" \
  --sweep "ldam_drw: $SHORT loss=ldam reweight=cb reweight.start_epoch=2" \
  --sweep "crt: experiment=decoupled/crt stage.init_from={out}/instance/seed\${seed}" \
  --sweep "tau_norm: experiment=decoupled/tau_norm stage.init_from={out}/instance/seed\${seed}" \
  $SHOTS "$@"
