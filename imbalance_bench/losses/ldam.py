"""LDAM: label-distribution-aware margin loss (Cao, Wei, Gaidon, Arechiga & Ma, NeurIPS 2019)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from imbalance_bench.losses.base import ClassificationLoss
from imbalance_bench.losses.hinge import multiclass_hinge_loss
from imbalance_bench.losses.softmax_ce import softmax_cross_entropy

#: LDAM's two forms: the cross-entropy with margins (eq. 12) and the hinge (LDAM-HG, eq. 10)
FORMS = ("ce", "hinge")


def ldam_margins(class_counts: Sequence[int], max_margin: float, uniform: bool = False) -> torch.Tensor:
    """Delta_j = C / n_j^(1/4), C chosen so that max_j Delta_j = max_margin (Cao et al. 2019, eq. 11 and 13);
    with `uniform`, Delta_j = max_margin for every class (the margin without its label-distribution
    part: M-DRW in Cao et al.'s ablation, Table 2).

    A class with no train samples is never a target, so its margin is never used: it gets
    max_margin and does not take part in choosing C (n_j = 0 would make C zero).
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("LDAM needs at least one class with train samples")
    if uniform:
        return torch.full_like(counts, max_margin).float()
    inverse_root = torch.where(present, counts.clamp_min(1.0).pow(-0.25), torch.zeros_like(counts))
    margins = inverse_root * (max_margin / inverse_root.max())
    return torch.where(present, margins, torch.full_like(margins, max_margin)).float()


def ldam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    margins: torch.Tensor,
    scale: float,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = (1/N) sum_i w_{y_i} * CE(s * (z_i - Delta_{y_i} e_{y_i}), y_i): the true-class logit
    loses its margin, then every logit is multiplied by s (Cao et al. 2019, eq. 12; s from their code)."""
    logits = logits.float()
    targets = targets.long()
    shifted = logits - F.one_hot(targets, logits.shape[1]).to(logits.dtype) * margins[targets][:, None]
    return softmax_cross_entropy(scale * shifted, targets, class_weights)


class LDAMLoss(ClassificationLoss):
    """LDAM loss (Cao et al. 2019), single-label: CE(s * (z - Delta_y e_y), y), Delta_j = C / n_j^(1/4).

    Rare classes must clear a larger margin, which tightens their generalisation bound. The
    margins come from the train split's class counts in `prepare`. `scale` s multiplies the
    logits inside the loss only, so evaluation (top-1 of z) is unaffected; s = 30 assumes
    cosine logits in [-1, 1], hence `normalized_classifier=True`, which asks `train.build_model`
    for the paper's CIFAR head (`NormedLinear`, no bias). With reweight=cb and
    reweight.start_epoch = 160 this is LDAM-DRW; `uniform_margin=True` gives every class the
    largest margin, and with DRW that is the M-DRW row of Cao et al.'s Table 2.

    `form="hinge"` is LDAM-HG, the hinge the paper starts from (eq. 10):
    max(max_{j != y} z_j - z_y + Delta_y, 0), with the same margins and head. Eq. 10 has no
    scale, so `scale` is not used there (on a hinge it would only multiply the loss). With
    `uniform_margin=True` it is the paper's HG (a margin independent of the class). Table 2's
    HG-DRS and LDAM-HG-DRS add re-sampling deferred to the lr drop (sampler.start_epoch, DRS).

    Class weights: per-sample w_{y_i}, mean over samples, as this project's softmax CE does
    (Cui et al. 2019). The reference code (kaidic/LDAM-DRW) passes them to torch's
    `cross_entropy(weight=...)`, which divides by sum_i w_{y_i} instead; we keep the project's
    convention so that LDAM-DRW and CB-softmax differ only in the margin. The two differ by the
    batch's mean weight, i.e. a rescaling of the learning rate after the DRW switch.
    """

    name = "ldam"

    def __init__(self, max_margin: float, scale: float, normalized_classifier: bool, uniform_margin: bool = False,
                 form: str = "ce"):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form={form!r} must be one of {', '.join(FORMS)}")
        if not max_margin > 0:
            raise ValueError(f"max_margin={max_margin} must be > 0")
        if not scale > 0:
            raise ValueError(f"scale={scale} must be > 0")
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.normalized_classifier = bool(normalized_classifier)
        self.uniform_margin = bool(uniform_margin)
        self.form = form
        # derived from the class counts, so recomputed by `prepare` rather than checkpointed
        self.register_buffer("margins", None, persistent=False)

    def prepare(self, class_counts, num_samples):
        device = None if self.margins is None else self.margins.device
        self.margins = ldam_margins(class_counts, self.max_margin, self.uniform_margin).to(device)

    def forward(self, logits, targets, class_weights=None):
        if self.margins is None:
            raise RuntimeError("LDAMLoss.prepare(class_counts, num_samples) must run before forward: the margins come from the train split's class counts")
        if logits.shape[1] != self.margins.numel():
            raise ValueError(f"logits have {logits.shape[1]} classes but the margins were prepared for {self.margins.numel()}")
        if self.form == "hinge":
            return multiclass_hinge_loss(logits, targets, self.margins, class_weights)
        return ldam_loss(logits, targets, self.margins, self.scale, class_weights)

    def extra_repr(self) -> str:
        return (f"max_margin={self.max_margin}, scale={self.scale}, normalized_classifier={self.normalized_classifier}, "
                f"uniform_margin={self.uniform_margin}, form={self.form}")
