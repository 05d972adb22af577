"""Multi-class hinge loss, the "HG" baseline of Cao, Wei, Gaidon, Arechiga & Ma, NeurIPS 2019
("Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", arXiv:1906.07413)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import ClassificationLoss


def multiclass_hinge_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    margins: torch.Tensor | float,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = (1/N) sum_i w_{y_i} * max(max_{j != y_i} z_ij - z_{i y_i} + Delta_{y_i}, 0), Cao et al. 2019,
    eq. 10: one term per sample, from the strongest wrong class (Crammer & Singer's form), not
    squared. `margins` is Delta per class (C,), or one number for every class."""
    logits = logits.float()
    targets = targets.long()
    true = logits.gather(1, targets[:, None]).squeeze(1)
    strongest_wrong = logits.masked_fill(F.one_hot(targets, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    margin = margins[targets] if isinstance(margins, torch.Tensor) else margins
    per_sample = (strongest_wrong - true + margin).clamp_min(0)
    if class_weights is not None:
        per_sample = per_sample * class_weights[targets]
    return per_sample.mean()


class MultiClassHingeLoss(ClassificationLoss):
    """Multi-class hinge loss with one margin for every class, single-label:
    L = max(max_{j != y} z_j - z_y + margin, 0).

    Cao et al. 2019 define the hinge in eq. 10 with LDAM's margins Delta_y = C / n_y^(1/4) (that is
    `loss=ldam loss.form=hinge`, LDAM-HG), and compare it in Table 2 with a hinge whose margin is "a
    label independent constant", HG (Section 3.2 and 4.2; they run HG on CIFAR-10 only, as it
    "suffers from optimization issues with 100 classes"). The paper gives no value for that
    constant and no scale on the logits; this loss reads the raw logits of the usual linear head,
    so the default margin is the classic 1. HG with Cao et al.'s cosine head is
    `loss=ldam loss.form=hinge loss.uniform_margin=true` (margin `max_margin` for every class).

    Class weights: per-sample w_{y_i}, mean over samples, as the project's softmax CE (so
    reweight=cb and DRW apply unchanged).
    """

    name = "hinge"

    def __init__(self, margin: float):
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin={margin} must be > 0")
        self.margin = float(margin)

    def forward(self, logits, targets, class_weights=None):
        return multiclass_hinge_loss(logits, targets, self.margin, class_weights)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
