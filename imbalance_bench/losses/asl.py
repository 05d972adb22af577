"""Asymmetric Loss (Ridnik, Ben-Baruch, Zamir, Noy, Friedman, Protter & Zelnik-Manor, ICCV 2021) on sigmoid outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import SigmoidLoss, as_multi_hot


def asymmetric_terms(
    logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float, gamma_neg: float, clip: float
) -> torch.Tensor:
    """The (N, C) terms -y (1 - p)^gamma_pos log p - (1 - y) p_m^gamma_neg log(1 - p_m),
    p = sigmoid(z), p_m = max(p - clip, 0) (Ridnik et al. 2021, eqs. 7-8).

    Computed in log space so that logits of any size stay finite: log p = logsigmoid(z),
    (1 - p)^g = exp(g * logsigmoid(-z)), log(1 - p_m) = min(logaddexp(logsigmoid(-z), log clip), 0)
    (>= log clip), and p_m^g = exp(g * log p_m) with log p_m = logsigmoid(z) when clip = 0.
    """
    logits = logits.float()
    y = as_multi_hot(targets, logits.shape[1], logits.dtype)
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    positive = torch.exp(gamma_pos * log_1mp) * log_p
    if clip > 0:
        log_1m_shifted = torch.logaddexp(log_1mp, logits.new_tensor(math.log(clip))).clamp(max=0.0)
        # below p = clip the term is zero (log 1 = 0); the floor only keeps exp and its gradient finite
        shifted = (torch.sigmoid(logits) - clip).clamp(min=torch.finfo(logits.dtype).tiny)
        log_shifted = shifted.log()
    else:
        log_1m_shifted, log_shifted = log_1mp, log_p
    negative = torch.exp(gamma_neg * log_shifted) * log_1m_shifted
    return -(y * positive + (1.0 - y) * negative)


class AsymmetricLoss(SigmoidLoss):
    """ASL (Ridnik et al. 2021), per class: -y (1-p)^gamma_pos log p - (1-y) p_m^gamma_neg log(1 - p_m).

    For multi-label data, where each image has few positives and many negatives: a larger
    negative focusing exponent down-weights easy negatives (soft), and the probability shift
    p_m = max(p - clip, 0) discards very easy ones (p < clip) outright (hard), which also
    rejects possibly mislabelled negatives with p near 1 (the gradient falls again there).
    gamma_pos = gamma_neg = clip = 0 is plain BCE. The paper's defaults: gamma_pos = 0,
    gamma_neg = 4, clip = 0.05.

    Differences from the reference code (Alibaba-MIIL/ASL): the gradient flows through the
    focusing weights, as in the formula and the paper's gradient analysis (its training
    script detaches them, `disable_torch_grad_focal_loss=True`), and as this project's focal
    loss does; terms are exact in log space instead of clamping probabilities at 1e-8; and the
    reduction is the project's (sum over classes, mean over samples, Cui et al. class weights)
    instead of a sum over the batch, which only rescales the learning rate.
    """

    name = "asl"

    def __init__(self, gamma_pos: float, gamma_neg: float, clip: float):
        super().__init__()
        if gamma_pos < 0 or gamma_neg < 0:
            raise ValueError(f"gamma_pos={gamma_pos} and gamma_neg={gamma_neg} must be >= 0")
        if not 0 <= clip < 1:
            raise ValueError(f"clip={clip} must lie in [0, 1)")
        self.gamma_pos, self.gamma_neg, self.clip = float(gamma_pos), float(gamma_neg), float(clip)

    def per_element(self, logits, targets):
        return asymmetric_terms(logits, targets, self.gamma_pos, self.gamma_neg, self.clip)

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}"
