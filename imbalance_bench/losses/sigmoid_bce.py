"""Sigmoid (one-vs-all) binary cross-entropy, optionally class-balanced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import SigmoidLoss, as_multi_hot, reduce_terms


def sigmoid_cross_entropy_terms(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The (N, C) terms -log sigmoid(z^t_ic), z^t = z if y = 1 else -z."""
    logits = logits.float()
    y = as_multi_hot(targets, logits.shape[1], logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none")


def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L = (1/N) sum_i sum_c w * (-log sigmoid(z^t_ic)), z^t = z if y = 1 else -z: the sigmoid
    cross-entropy of Cui et al. 2019, class-balanced when w comes from reweight=cb."""
    return reduce_terms(sigmoid_cross_entropy_terms(logits, targets), targets, class_weights)


class SigmoidCrossEntropy(SigmoidLoss):
    """One-vs-all sigmoid cross-entropy; takes integer labels or multi-hot targets."""

    name = "bce"

    def per_element(self, logits, targets):
        return sigmoid_cross_entropy_terms(logits, targets)
