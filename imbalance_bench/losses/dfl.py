"""Dual Focal Loss (Hossain, Betts & Paplinski, Neurocomputing 2021) on one-vs-all sigmoid outputs."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from imbalance_bench.losses.base import SigmoidLoss, as_multi_hot


def dual_focal_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float | torch.Tensor,
    rho: float,
) -> torch.Tensor:
    """The (N, C) terms -y log p - beta (1-y) log(rho - p) + alpha |y - p|^gamma, p = sigmoid(z).

    The sign of the alpha term is the one under which the loss grows with the error |y - p|
    (re-implementations of Hossain et al. 2021 disagree on it). Targets are 0/1. Computed in log
    space so that logits of any size stay finite: log p = logsigmoid(z);
    |y - p|^gamma = exp(gamma * logsigmoid(-z^t)), z^t = z if y = 1 else -z;
    log(rho - p) = logaddexp(log(rho - 1), logsigmoid(-z)), exact for rho = 1 too (log 0 = -inf).
    `gamma` may be a tensor (the learnable exponent).
    """
    logits = logits.float()
    y = as_multi_hot(targets, logits.shape[1], logits.dtype)
    log_p = F.logsigmoid(logits)
    log_rho_minus_1 = logits.new_tensor(math.log(rho - 1.0) if rho > 1.0 else -math.inf)
    log_rho_minus_p = torch.logaddexp(F.logsigmoid(-logits), log_rho_minus_1)
    z_t = logits * (2.0 * y - 1.0)
    error_power = torch.exp(gamma * F.logsigmoid(-z_t))
    return -y * log_p - beta * (1.0 - y) * log_rho_minus_p + alpha * error_power


class DualFocalLoss(SigmoidLoss):
    """Dual Focal Loss (Hossain et al. 2021), per class: -y log p - beta (1-y) log(rho - p) + alpha |y - p|^gamma.

    alpha = 0, beta = 1, rho = 1 is the sigmoid cross-entropy. `learnable=True` trains the
    exponent gamma (the abstract's "scaling parameter", set by hand in focal loss) with the
    network, as gamma = gamma_min + (gamma_max - gamma_min) * sigmoid(theta): it must be
    bounded, because d/dgamma alpha |e|^gamma = alpha |e|^gamma log|e| <= 0 for |e| <= 1, so
    gradient descent raises an unbounded gamma forever (the loss always falls as gamma grows).
    """

    name = "dfl"

    def __init__(
        self,
        alpha: float,
        beta: float,
        gamma: float,
        rho: float,
        learnable: bool,
        gamma_min: float,
        gamma_max: float,
    ):
        super().__init__()
        if rho < 1.0:
            raise ValueError(f"rho={rho} must be >= 1 (log(rho - p) is undefined for p > rho)")
        if gamma_min < 0.0:
            raise ValueError(f"gamma_min={gamma_min} must be >= 0 (|y - p|^gamma is infinite at zero error otherwise)")
        if learnable and not gamma_max > gamma_min:
            raise ValueError(f"gamma_max={gamma_max} must be > gamma_min={gamma_min} when gamma is learnable")
        if not gamma_min <= gamma <= gamma_max:
            raise ValueError(f"gamma={gamma} must lie in [gamma_min, gamma_max] = [{gamma_min}, {gamma_max}]")
        self.alpha, self.beta, self.rho = float(alpha), float(beta), float(rho)
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.learnable = bool(learnable)
        self.gamma = float(gamma)  # the starting value; `gamma_value` is the current one
        if self.learnable:
            # a start on a bound would put theta at +-inf, where sigmoid has no gradient
            fraction = (self.gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
            fraction = min(max(fraction, 1e-4), 1.0 - 1e-4)
            self.gamma_logit = nn.Parameter(torch.tensor(math.log(fraction / (1.0 - fraction))))

    def current_gamma(self) -> torch.Tensor | float:
        """gamma as used in the loss: a tensor in the autograd graph when learnable, else a float."""
        if not self.learnable:
            return self.gamma
        return self.gamma_min + (self.gamma_max - self.gamma_min) * torch.sigmoid(self.gamma_logit)

    @property
    def gamma_value(self) -> float:
        """The current gamma as a float (a host sync when learnable)."""
        with torch.no_grad():
            return float(self.current_gamma())

    def per_element(self, logits, targets):
        return dual_focal_terms(logits, targets, self.alpha, self.beta, self.current_gamma(), self.rho)

    def end_epoch(self):
        return {"gamma": self.gamma_value}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma_value:.4g}, rho={self.rho}, "
            f"learnable={self.learnable}, gamma_range=[{self.gamma_min}, {self.gamma_max}]"
        )
