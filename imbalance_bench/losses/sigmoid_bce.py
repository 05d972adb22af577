"""Sigmoid (one-vs-all) binary cross-entropy, optionally class-balanced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import ClassificationLoss, as_multi_hot, batch_mean, element_weights


def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L = (1/N) sum_i sum_c w * (-log sigmoid(z^t_ic)), z^t = z if y = 1 else -z: the sigmoid
    cross-entropy of Cui et al. 2019, class-balanced when w comes from reweight=cb."""
    logits = logits.float()
    y = as_multi_hot(targets, logits.shape[1], logits.dtype)
    per_term = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    weights = element_weights(targets, class_weights, logits.shape[1])
    if weights is not None:
        per_term = per_term * weights
    return batch_mean(per_term)


class SigmoidCrossEntropy(ClassificationLoss):
    """One-vs-all sigmoid cross-entropy; takes integer labels or multi-hot targets."""

    label_kinds = frozenset({"single", "multi"})
    sigmoid_head = True

    def forward(self, logits, targets, class_weights=None):
        return sigmoid_cross_entropy(logits, targets, class_weights)
