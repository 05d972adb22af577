"""Softmax cross-entropy, optionally class-balanced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import ClassificationLoss


def softmax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L = (1/N) sum_i w_{y_i} * (-log softmax(z_i)_{y_i}); with w from reweight=cb this is the
    class-balanced softmax loss of Cui et al. 2019. Note the mean is over samples, as in
    Cui et al., not over the summed weights as in torch's `cross_entropy(weight=...)`."""
    per_sample = F.cross_entropy(logits.float(), targets.long(), reduction="none")
    if class_weights is not None:
        per_sample = per_sample * class_weights[targets.long()]
    return per_sample.mean()


class SoftmaxCrossEntropy(ClassificationLoss):
    """Softmax cross-entropy over integer labels (single-label only)."""

    name = "ce"

    def forward(self, logits, targets, class_weights=None):
        return softmax_cross_entropy(logits, targets, class_weights)
