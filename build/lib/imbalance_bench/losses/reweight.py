"""Per-class loss weights from train counts, optionally deferred to a later epoch (DRW)."""

from __future__ import annotations

from typing import Sequence

import torch


def _normalise_to_num_classes(raw: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # Classes with no train example never appear as a target; they get weight 0 instead of inf.
    raw = torch.where(counts > 0, raw, torch.zeros_like(raw))
    return (raw / raw.sum() * len(raw)).float()


def class_balanced_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """w_c = (1 - beta) / (1 - beta^{n_c}), the inverse effective number of samples, normalised so
    that sum_c w_c = C (Cui et al. 2019). beta = 0 gives all ones; beta -> 1 gives w ~ 1/n_c."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    effective_number = (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)
    return _normalise_to_num_classes(1.0 / effective_number.clamp_min(1e-12), counts)


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """w_c proportional to 1 / n_c, normalised so that sum_c w_c = C."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    return _normalise_to_num_classes(1.0 / counts.clamp_min(1.0), counts)


class Reweighting:
    """Class weights applied from `start_epoch` on (0 = from the start; > 0 = deferred
    re-weighting, DRW, Cao et al. 2019). Before that the loss is unweighted."""

    name = "none"

    def __init__(self, start_epoch: int = 0):
        self.start_epoch = int(start_epoch)

    def class_weights(self, class_counts: Sequence[int]) -> torch.Tensor | None:
        return None

    def weights_for_epoch(self, epoch: int, class_counts: Sequence[int]) -> torch.Tensor | None:
        """Per-class weights to use in `epoch` (0-based), or None for an unweighted loss."""
        if epoch < self.start_epoch:
            return None
        return self.class_weights(class_counts)


class ClassBalanced(Reweighting):
    name = "cb"

    def __init__(self, beta: float, start_epoch: int = 0):
        super().__init__(start_epoch)
        self.beta = float(beta)

    def class_weights(self, class_counts):
        return class_balanced_weights(class_counts, self.beta)


class InverseFrequency(Reweighting):
    name = "inverse_freq"

    def class_weights(self, class_counts):
        return inverse_frequency_weights(class_counts)
