"""Focal loss (Lin et al. 2017) in its sigmoid form (Cui et al. 2019, eq. 12) and its softmax form: one
class each, and `create_focal`, which `loss=focal` builds them with (`loss.softmax` picks the form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import ClassificationLoss, SigmoidLoss, as_multi_hot, reduce_terms


def sigmoid_focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """The (N, C) terms (1 - p^t)^gamma * (-log p^t), p^t = sigmoid(z^t), z^t = z if y = 1 else -z.
    The modulating factor is computed as exp(gamma * log sigmoid(-z^t)) for numerical stability."""
    logits = logits.float()
    y = as_multi_hot(targets, logits.shape[1], logits.dtype)
    z_t = logits * (2.0 * y - 1.0)
    return torch.exp(gamma * F.logsigmoid(-z_t)) * -F.logsigmoid(z_t)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """FL = (1/N) sum_i sum_c w * (1 - p^t_ic)^gamma * (-log p^t_ic), with p^t = sigmoid(z^t),
    z^t = z if y = 1 else -z (Cui et al. 2019, eq. 12). gamma = 0 gives `sigmoid_cross_entropy`."""
    return reduce_terms(sigmoid_focal_terms(logits, targets, gamma), targets, class_weights)


def softmax_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """FL = (1/N) sum_i w_{y_i} (1 - p_{i,y_i})^gamma (-log p_{i,y_i}), p = softmax(z) (Lin et al. 2017)."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets.long()[:, None]).squeeze(1)
    per_sample = (1.0 - log_p.exp()).clamp_min(0.0).pow(gamma) * -log_p
    if class_weights is not None:
        per_sample = per_sample * class_weights[targets.long()]
    return per_sample.mean()


class SigmoidFocalLoss(SigmoidLoss):
    """Focal loss in its sigmoid form (Cui et al. 2019, eq. 12): one term per (sample, class), so it
    takes multi-hot targets too, and PLM can mask its terms."""

    name = "focal"

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = float(gamma)

    def per_element(self, logits, targets):
        return sigmoid_focal_terms(logits, targets, self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class SoftmaxFocalLoss(ClassificationLoss):
    """Focal loss in its softmax form (Lin et al. 2017): one term per sample, integer labels only."""

    name = "focal"

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, logits, targets, class_weights=None):
        return softmax_focal_loss(logits, targets, self.gamma, class_weights)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


def create_focal(gamma: float, softmax: bool = False) -> SigmoidFocalLoss | SoftmaxFocalLoss:
    """`loss=focal`: the sigmoid form, or the softmax form with `loss.softmax=true`."""
    return SoftmaxFocalLoss(gamma) if softmax else SigmoidFocalLoss(gamma)


# what conf/loss/focal.yaml's target declares: either form's name, and the label kinds of the two together
# (softmax=true on multi-label data is refused by its own check, config.check_label_kind)
create_focal.name = SigmoidFocalLoss.name
create_focal.label_kinds = SigmoidFocalLoss.label_kinds | SoftmaxFocalLoss.label_kinds
