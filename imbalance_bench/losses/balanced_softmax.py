"""Balanced Softmax (Ren et al., NeurIPS 2020, "Balanced Meta-Softmax for Long-Tailed Visual Recognition")."""

from __future__ import annotations

from typing import Sequence

import torch

from imbalance_bench.losses.base import ClassificationLoss
from imbalance_bench.losses.softmax_ce import softmax_cross_entropy


def log_class_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """log pi_j = log(n_j / sum_k n_k). An empty class counts as one sample, so that its log prior
    stays finite (log 0 = -inf would give NaN gradients): the rarest class the data could show."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)
    return (counts / counts.sum()).log().float()


def balanced_softmax_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    log_prior: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = (1/N) sum_i w_{y_i} * (-log softmax(z_i + log pi)_{y_i}) (Ren et al. 2020, eq. 4)."""
    return softmax_cross_entropy(logits.float() + log_prior, targets, class_weights)


class BalancedSoftmax(ClassificationLoss):
    """Balanced Softmax (Ren et al. 2020), single-label: CE(z + log pi, y), pi_j = n_j / sum_k n_k.

    Training with the train prior added to the logits makes z itself estimate the class
    posterior under a balanced test prior (softmax(z + log pi) models the long-tailed train
    split), so evaluation uses z unchanged: the adjustment lives in the loss only. The prior
    comes from the train split's class counts in `prepare`. Class weights, if any, as in the
    project's softmax CE (w_{y_i} per sample, mean over samples).
    """

    name = "balanced_softmax"
    #: the prior's exponent: 1 here; the logit-adjusted loss (Menon et al. 2021) sets its own
    tau: float = 1.0

    def __init__(self):
        super().__init__()
        # derived from the class counts, so recomputed by `prepare` rather than checkpointed
        self.register_buffer("log_prior", None, persistent=False)

    def prepare(self, class_counts, num_samples):
        device = None if self.log_prior is None else self.log_prior.device
        self.log_prior = log_class_prior(class_counts).to(device)

    def forward(self, logits, targets, class_weights=None):
        if self.log_prior is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(class_counts, num_samples) must run before forward: "
                               "the prior comes from the train split's class counts")
        if logits.shape[1] != self.log_prior.numel():
            raise ValueError(f"logits have {logits.shape[1]} classes but the prior was prepared for {self.log_prior.numel()}")
        return balanced_softmax_loss(logits, targets, self.tau * self.log_prior, class_weights)
