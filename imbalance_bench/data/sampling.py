"""Which train images each epoch draws (conf/sampler/): re-sampling for long-tailed data.

`instance` is a random permutation of the train split per epoch, drawn as torch's RandomSampler
draws it (every run of the DataLoader path before re-sampling existed trained on exactly these
orders; the on-device loader now draws them too). The others draw,
with replacement and as many times as the split has images, a class c with probability p_c and
then an image uniformly among those of class c (among those holding c when multi-label: the
class-aware sampling of Shen et al., ECCV 2016, which Wu et al., ECCV 2020, use for COCO-MLT).
A class with no train image has p_c = 0. With `start_epoch` > 0 an epoch before it draws as
`instance` does: deferred re-sampling (DRS, Cao et al., NeurIPS 2019).

Every draw comes from the run's shuffle generator, which checkpoints hold (with its state at the
start of an interrupted epoch), so a resumed run draws the same images as the uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import RandomSampler

log = logging.getLogger("imbench")


class InstanceSampler:
    """Instance-balanced: every image once per epoch (p_c = n_c / N in expectation)."""

    name = "instance"
    resamples = False  # draws by class probabilities (from start_epoch on); instance only permutes

    def __init__(self, start_epoch: int = 0):
        self.start_epoch = int(start_epoch)

    def class_probabilities(self, counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray | None:
        """p_c of `epoch` (0-based) of `epochs` for classes of `counts` images, or None for a permutation."""
        return None

    def probabilities_for_epoch(self, counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray | None:
        if epoch < self.start_epoch:
            return None
        return self.class_probabilities(counts, epoch, epochs)


def _normalised(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    weights = np.where(counts > 0, weights, 0.0)
    return weights / weights.sum()


class ClassBalancedSampler(InstanceSampler):
    """p_c = 1 / C' over the C' classes with train images (Kang et al., ICLR 2020, q = 0; "CB RS"
    in Cao et al. 2019; class-aware sampling on multi-label data)."""

    name = "class_balanced"
    resamples = True

    def class_probabilities(self, counts, epoch, epochs):
        return _normalised(np.ones(len(counts)), counts)


class SquareRootSampler(InstanceSampler):
    """p_c proportional to n_c^(1/2) (Kang et al., ICLR 2020, q = 1/2; Mahajan et al. 2018)."""

    name = "square_root"
    resamples = True

    def class_probabilities(self, counts, epoch, epochs):
        return _normalised(np.sqrt(counts.astype(np.float64)), counts)


class EffectiveNumberSampler(InstanceSampler):
    """p_c proportional to n_c (1 - beta) / (1 - beta^n_c): each image drawn with the inverse of its
    class's effective number of samples (Cui et al., CVPR 2019), the "CB RS" baseline of Cao et al.
    2019, Table 2. beta = 0 is instance-balanced in expectation; beta -> 1 is class-balanced."""

    name = "effective_number"
    resamples = True

    def __init__(self, beta: float, start_epoch: int = 0):
        super().__init__(start_epoch)
        self.beta = float(beta)

    def class_probabilities(self, counts, epoch, epochs):
        n = counts.astype(np.float64)
        effective = -np.expm1(n * np.log(self.beta)) / (1.0 - self.beta) if self.beta > 0 else np.ones_like(n)
        return _normalised(n / np.where(n > 0, effective, 1.0), counts)


class ProgressiveSampler(InstanceSampler):
    """p_c(t) = (1 - t/T) n_c / N + (t/T) / C' (Kang et al., ICLR 2020, eq. 2: instance-balanced at
    the start, moving linearly toward class-balanced), with t the 0-based epoch and T = trainer.epochs,
    so the last epoch is 1/T short of class-balanced, as in the paper's formula."""

    name = "progressive"
    resamples = True

    def class_probabilities(self, counts, epoch, epochs):
        t = epoch / epochs
        instance = _normalised(counts.astype(np.float64), counts)
        balanced = _normalised(np.ones(len(counts)), counts)
        return (1.0 - t) * instance + t * balanced


class TrainDraws:
    """The images each epoch of a train split draws, under a sampler.

    The split's `targets` are integer labels (N,) or multi-hot targets (N, K); `class_names` gives
    the number of classes. The members of each class are held once, sorted by class, so a draw is
    two random numbers and an index; `instance` reads no targets."""

    def __init__(self, sampler: InstanceSampler, split, epochs: int, generator: torch.Generator | None,
                 class_names: Sequence[str] | None = None):
        self.sampler, self.split, self.epochs, self.generator = sampler, split, int(epochs), generator
        self.size = len(split)
        self.class_names = class_names
        if sampler.resamples:
            empty = [self._class_name(c) for c in (self._members[1] == 0).nonzero().flatten().tolist()]
            if empty:
                log.warning("sampler=%s: %d class(es) have no train image and are left out of the draw: %s",
                            sampler.name, len(empty), ", ".join(empty))

    def _class_name(self, c: int) -> str:
        return str(self.class_names[c]) if self.class_names else str(c)

    @functools.cached_property
    def _targets(self) -> torch.Tensor:
        return self.split.targets.cpu()

    @functools.cached_property
    def _members(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image positions class by class, each class's count, and where its positions start."""
        targets = self._targets
        if targets.ndim == 1:
            images, classes = torch.arange(self.size), targets.long()
            num_classes = len(self.class_names) if self.class_names else int(classes.max()) + 1
        else:
            images, classes = (targets > 0).nonzero(as_tuple=True)
            num_classes = targets.shape[1]
        counts = torch.bincount(classes, minlength=num_classes)
        return images[torch.argsort(classes, stable=True)], counts, torch.cumsum(counts, 0) - counts

    def order(self, epoch: int) -> torch.Tensor:
        """The positions epoch `epoch` (0-based) trains on, in order: N of them."""
        p = None
        if self.sampler.resamples:
            members, counts, starts = self._members
            p = self.sampler.probabilities_for_epoch(counts.numpy(), epoch, self.epochs)
        if p is None:
            return torch.tensor(list(RandomSampler(range(self.size), generator=self.generator)), dtype=torch.long)
        generator = self.generator
        if generator is None:  # as RandomSampler does without one: seeded from torch's global RNG
            generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        classes = torch.multinomial(torch.as_tensor(p, dtype=torch.float64), self.size, replacement=True,
                                    generator=generator)
        drawn_counts = counts[classes]
        within = (torch.rand(self.size, generator=generator, dtype=torch.float64) * drawn_counts).long()
        return members[starts[classes] + torch.minimum(within, drawn_counts - 1)]

    def per_class(self, positions: torch.Tensor) -> list[int]:
        """How many of `positions` hold each class (labels drawn per class)."""
        targets = self._targets[positions.cpu()]
        if targets.ndim == 1:
            return torch.bincount(targets.long(), minlength=len(self._members[1])).tolist()
        return (targets > 0).sum(0).tolist()
