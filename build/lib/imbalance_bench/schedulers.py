"""Per-epoch learning-rate schedules; conf/scheduler/*.yaml targets the factories at the bottom."""

from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_multistep_factor(epoch: int, warmup_epochs: int, milestones: Sequence[int], gamma: float) -> float:
    """lr multiplier for 0-based `epoch`: (epoch + 1) / warmup during warm-up, then gamma^k after
    k milestones have passed. Cao et al. 2019's CIFAR recipe: warm-up 5, milestones 160/180, gamma 0.01."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** bisect.bisect_right(list(milestones), epoch)


def warmup_cosine_factor(epoch: int, warmup_epochs: int, total_epochs: int, min_lr_factor: float) -> float:
    """lr multiplier: linear warm-up, then a cosine from 1 towards `min_lr_factor`, which it would
    reach at epoch `total_epochs` (so the last epoch still trains, as with CosineAnnealingLR)."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_multistep(optimizer: torch.optim.Optimizer, total_epochs: int, warmup_epochs: int, milestones, gamma: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda e: warmup_multistep_factor(e, warmup_epochs, milestones, gamma))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_epochs: int, warmup_epochs: int, min_lr_factor: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda e: warmup_cosine_factor(e, warmup_epochs, total_epochs, min_lr_factor))
