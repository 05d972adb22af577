"""The base classes of the losses (`ClassificationLoss`; `SigmoidLoss`, one term per (sample, class))
and what every loss shares: targets in either label kind, and per-class weights applied as Cui et al. 2019 do."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def as_multi_hot(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels (N,) become one-hot (N, C); multi-hot targets (N, C) pass through."""
    if targets.ndim == 1:
        return F.one_hot(targets.long(), num_classes).to(dtype)
    return targets.to(dtype)


def element_weights(targets: torch.Tensor, class_weights: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    """Weights for each (sample, class) term of a sigmoid loss.

    Single-label: every term of sample i gets w_{y_i}, the weight of its true class (Cui et al.
    2019). Multi-label: the terms of class c get w_c.
    """
    if class_weights is None:
        return None
    if targets.ndim == 1:
        return class_weights[targets.long()][:, None].expand(-1, num_classes)
    return class_weights[None, :].expand(targets.shape[0], -1)


def batch_mean(per_term: torch.Tensor) -> torch.Tensor:
    """Sum over classes, mean over samples: the normalisation by the number of positives that
    Lin et al. 2017 and Cui et al. 2019 use (one positive per sample when single-label)."""
    return per_term.sum(dim=1).mean() if per_term.ndim == 2 else per_term.mean()


class ClassificationLoss(nn.Module):
    """Base: `forward(logits, targets, class_weights=None)` returns a scalar.

    What imbench must know of a loss before building it is declared here, on the class, and read by
    pre-flight from the class that `loss._target_` names: its `name` (the option, which labels runs),
    the label kinds it trains on, and its head."""

    #: the loss option's name (conf/loss/<name>.yaml), the `loss.name` label of its runs
    name: str = ""
    #: label kinds the loss accepts ("single", "multi")
    label_kinds: frozenset[str] = frozenset({"single"})
    #: True when the head is a set of one-vs-all sigmoids
    sigmoid_head: bool = False
    #: True when the loss wants a cosine classifier (`models.NormedLinear`) as the model's last layer
    normalized_classifier: bool = False

    def classifier_bias(self, num_classes: int) -> float | None:
        """Initial last-layer bias. Sigmoid heads start at the prior pi = 1/C, i.e.
        b = -log((1 - pi) / pi) = -log(C - 1), so early training is stable (Lin et al. 2017;
        Cui et al. 2019)."""
        if self.sigmoid_head and num_classes > 1:
            return -math.log(num_classes - 1)
        return None

    def prepare(self, class_counts: Sequence[int], num_samples: int) -> None:
        """Called once before training with the train split's per-class (positive) counts and
        its size; losses with data-dependent state (PLM) set it up here."""

    def epoch_counters(self) -> list[torch.Tensor]:
        """Buffers that count over the epoch's training batches (PLM's histograms). In a DDP run
        each process counts its own part of every batch; they are summed across processes
        before `end_epoch`, so every process updates its state from the same totals."""
        return []

    def end_epoch(self) -> dict[str, Any]:
        """Called after each training epoch: update epoch-level state and return what to log,
        as scalars (name -> float) or per-class lists (name -> list of C floats)."""
        return {}


def reduce_terms(
    per_term: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weight (N, C) loss terms by class (see `element_weights`), zero the masked ones, reduce
    with `batch_mean`."""
    weights = element_weights(targets, class_weights, per_term.shape[1])
    if weights is not None:
        per_term = per_term * weights
    if mask is not None:
        per_term = per_term * mask
    return batch_mean(per_term)


class SigmoidLoss(ClassificationLoss):
    """A loss made of one term per (sample, class) on one-vs-all sigmoid outputs.

    Subclasses give `per_element`; wrappers such as PLM reuse it to mask single terms.
    """

    label_kinds = frozenset({"single", "multi"})
    sigmoid_head = True

    def per_element(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The (N, C) unreduced, unweighted loss terms."""
        raise NotImplementedError

    def forward(self, logits, targets, class_weights=None):
        return reduce_terms(self.per_element(logits, targets), targets, class_weights)
