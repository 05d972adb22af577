"""Partial Label Masking (Duarte, Rawat & Shah, CVPR-W 2021) around any one-vs-all sigmoid loss."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from imbalance_bench.distributed import batch_draw
from imbalance_bench.errors import ConfigError
from imbalance_bench.losses.base import SigmoidLoss, as_multi_hot, reduce_terms
from imbalance_bench.targets import build

#: added to each bin of a normalised histogram before the KL divergence, so that an empty top
#: (bottom) bin gives a large finite divergence, log((1 + bins * eps) / eps) ~ 9.2 nats for
#: 10 bins, instead of inf; small enough not to matter once the bin holds a few percent.
HISTOGRAM_SMOOTHING = 1e-4
#: a spread of divergences across classes below this (nats) is treated as no spread at all
STD_TOLERANCE = 1e-6


def class_ratios(class_counts: Sequence[int] | torch.Tensor, num_samples: int) -> torch.Tensor:
    """r_c = n_c / (N - n_c), the train positive/negative ratio of each class (float64).

    A class present in every sample (n_c = N) has no negatives; its ratio is taken as n_c / 1
    so that it stays finite (PLM leaves such classes alone anyway). n_c = 0 gives r_c = 0.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    return counts / (num_samples - counts).clamp_min(1.0)


def keep_probabilities(class_ratio: torch.Tensor, target_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class probabilities of keeping a positive and a negative term (Duarte et al. 2021).

    If r_c > r^_c positives are kept with probability r^_c / r_c (too many positives); if
    r_c < r^_c negatives are kept with probability r_c / r^_c; else everything is kept. In
    expectation the kept positive/negative ratio is then r^_c.
    """
    tiny = torch.finfo(class_ratio.dtype).tiny
    ones = torch.ones_like(class_ratio)
    keep_pos = torch.where(class_ratio > target_ratio, target_ratio / class_ratio.clamp_min(tiny), ones)
    keep_neg = torch.where(class_ratio < target_ratio, class_ratio / target_ratio.clamp_min(tiny), ones)
    return keep_pos, keep_neg


def sample_keep_mask(positive: torch.Tensor, keep_pos: torch.Tensor, keep_neg: torch.Tensor) -> torch.Tensor:
    """A random (N, C) boolean mask: True keeps the term. Draws from torch's default generator
    on the targets' device, so a global seed reproduces it; in a DDP run, for the whole global
    batch (`distributed.batch_draw`). Keep probability 1 always keeps."""
    keep_prob = torch.where(positive, keep_pos, keep_neg)
    num_classes = positive.shape[1]
    draws = batch_draw(lambda count: torch.rand((count, num_classes), device=positive.device), positive.shape[0])
    return draws < keep_prob


def probability_bins(probs: torch.Tensor, bins: int) -> torch.Tensor:
    """Index of the bin of [0, 1] split into `bins` equal bins, the last one closed (as numpy.histogram)."""
    return (probs * bins).long().clamp_(0, bins - 1)


def histogram_divergences(
    hist_pos: torch.Tensor, hist_neg: torch.Tensor, smoothing: float = HISTOGRAM_SMOOTHING
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(ground truth || predicted histogram) per class, for positives and for negatives.

    The ground-truth distribution of a positive puts all mass in the top bin and that of a
    negative in the bottom bin, so the divergences are -log q_top and -log q_bottom, with
    q = (h / sum(h) + eps) / (1 + bins * eps) the eps-smoothed histogram (`HISTOGRAM_SMOOTHING`).
    A class with an empty histogram gets the uniform one, i.e. log(bins).
    """

    def smoothed(hist: torch.Tensor) -> torch.Tensor:
        hist = hist if hist.is_floating_point() else hist.double()
        bins = hist.shape[1]
        total = hist.sum(dim=1, keepdim=True)
        probs = torch.where(total > 0, hist / total.clamp_min(1), torch.full_like(hist, 1.0 / bins))
        return (probs + smoothing) / (1.0 + bins * smoothing)

    return -torch.log(smoothed(hist_pos)[:, -1]), -torch.log(smoothed(hist_neg)[:, 0])


def standardize(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """z-scores over the valid classes (population std); invalid classes, and all classes when
    the std is below `STD_TOLERANCE`, get z = 0."""
    weight = valid.to(values.dtype)
    count = weight.sum().clamp_min(1.0)
    mean = (values * weight).sum() / count
    std = ((((values - mean) * weight) ** 2).sum() / count).sqrt()
    z = (values - mean) / std.clamp_min(STD_TOLERANCE)
    return torch.where(valid & (std >= STD_TOLERANCE), z, torch.zeros_like(values))


def update_target_ratio(
    target_ratio: torch.Tensor,
    divergence_pos: torch.Tensor,
    divergence_neg: torch.Tensor,
    seen_pos: torch.Tensor,
    seen_neg: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """r^_c <- r^_c * exp(lr * (z(D_pos)_c - z(D_neg)_c)), z standardised across classes
    (Duarte et al. 2021): badly predicted positives raise r^_c, badly predicted negatives lower it.
    A class with no positives (negatives) seen this epoch has z(D_pos) = 0 (z(D_neg) = 0)."""
    z_pos = standardize(divergence_pos, seen_pos)
    z_neg = standardize(divergence_neg, seen_neg)
    return target_ratio * torch.exp(lr * (z_pos - z_neg))


class PartialLabelMasking(SigmoidLoss):
    """Partial Label Masking (Duarte, Rawat & Shah, CVPR-W 2021) around a sigmoid `base` loss.

    Training steps drop positive or negative terms of each class at random (`keep_probabilities`)
    so that the kept positive/negative ratio is the target r^_c, initialised to the train ratio
    r_c = n_c / (N - n_c); after each epoch r^ moves by `update_target_ratio`, driven by
    histograms (`bins` over [0, 1]) of the predicted probabilities of all positive and negative
    entries seen in training. Eval mode masks and accumulates nothing. Classes with n_c = 0 or
    n_c = N (one side absent from the train split) are never masked: r^_c stays at r_c.
    State (ratios, histograms, divergences) lives in buffers, so the checkpoint carries it.
    """

    name = "plm"

    label_kinds = frozenset({"multi"})  # masking balances each class's positives against its negatives

    def __init__(self, base: SigmoidLoss, bins: int, lr: float):
        super().__init__()
        if not isinstance(base, SigmoidLoss) or not base.sigmoid_head:
            raise ValueError(f"PLM masks one-vs-all sigmoid terms; {type(base).__name__} is not a sigmoid loss")
        if bins < 2:
            raise ValueError(f"bins={bins} must be >= 2 (the top and bottom bins must differ)")
        if lr < 0:
            raise ValueError(f"lr={lr} must be >= 0")
        self.base = base
        self.bins, self.lr = int(bins), float(lr)
        self.sigmoid_head = base.sigmoid_head
        # empty until `prepare` (or load_state_dict) knows the number of classes C
        self.register_buffer("class_ratio", torch.zeros(0))
        self.register_buffer("target_ratio", torch.zeros(0))
        self.register_buffer("frozen", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("hist_pos", torch.zeros(0, self.bins, dtype=torch.long))
        self.register_buffer("hist_neg", torch.zeros(0, self.bins, dtype=torch.long))
        self.register_buffer("kept_pos", torch.zeros(0, dtype=torch.long))
        self.register_buffer("kept_neg", torch.zeros(0, dtype=torch.long))
        self.register_buffer("divergence_pos", torch.zeros(0))
        self.register_buffer("divergence_neg", torch.zeros(0))

    @classmethod
    def around(cls, base: str, bins: int, lr: float, **base_configs) -> PartialLabelMasking:
        """`loss=plm`: PLM around the base loss `base`, built from its own config node (`loss.<base>`)."""
        base_loss = build(base_configs[base], f"loss.{base}")
        if not isinstance(base_loss, SigmoidLoss):
            raise ConfigError(f"loss.base={base} is not allowed: PLM needs a one-vs-all sigmoid loss (bce, focal, dfl)")
        return cls(base_loss, bins=bins, lr=lr)

    _PER_CLASS_BUFFERS = (
        "class_ratio", "target_ratio", "frozen", "hist_pos", "hist_neg",
        "kept_pos", "kept_neg", "divergence_pos", "divergence_neg",
    )

    @property
    def num_classes(self) -> int:
        return self.class_ratio.numel()

    def classifier_bias(self, num_classes: int) -> float | None:
        return self.base.classifier_bias(num_classes)

    def prepare(self, class_counts: Sequence[int], num_samples: int) -> None:
        """Set r_c from the train split; r^_c starts at r_c unless restored by load_state_dict
        (so a resumed run may call prepare and load_state_dict in either order)."""
        self.base.prepare(class_counts, num_samples)
        counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        if num_samples < 1 or counts.numel() == 0 or bool((counts < 0).any()) or bool((counts > num_samples).any()):
            raise ValueError(f"class counts must lie in [0, num_samples={num_samples}]; got {counts.tolist()}")
        ratio = class_ratios(counts, num_samples)
        frozen = (counts == 0) | (counts == num_samples)
        device = self.class_ratio.device
        if self.num_classes not in (0, len(counts)):
            raise ValueError(f"PLM state holds {self.num_classes} classes but prepare got {len(counts)}")
        restored = self.num_classes == len(counts)
        self.class_ratio = ratio.to(device, torch.float32)
        self.frozen = frozen.to(device)
        if restored:
            return
        num_classes = len(counts)
        self.target_ratio = self.class_ratio.clone()
        self.hist_pos = torch.zeros(num_classes, self.bins, dtype=torch.long, device=device)
        self.hist_neg = torch.zeros_like(self.hist_pos)
        self.kept_pos = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.kept_neg = torch.zeros_like(self.kept_pos)
        self.divergence_pos = torch.zeros(num_classes, device=device)
        self.divergence_neg = torch.zeros(num_classes, device=device)

    def per_element(self, logits, targets):
        return self.base.per_element(logits, targets)

    def forward(self, logits, targets, class_weights=None):
        terms = self.base.per_element(logits, targets)
        if not self.training:
            return reduce_terms(terms, targets, class_weights)
        num_classes = logits.shape[1]
        if self.num_classes == 0:
            raise RuntimeError(
                "PartialLabelMasking needs the train split's class ratios: call "
                "prepare(class_counts, num_samples) before training (or load its state_dict)"
            )
        if num_classes != self.num_classes:
            raise ValueError(f"logits have {num_classes} classes but PLM was prepared for {self.num_classes}")
        positive = as_multi_hot(targets, num_classes, torch.float32) > 0.5
        keep_pos, keep_neg = keep_probabilities(self.class_ratio, self.target_ratio)
        keep = sample_keep_mask(positive, keep_pos, keep_neg)
        self._accumulate(logits, positive, keep)
        return reduce_terms(terms, targets, class_weights, keep.to(terms.dtype))

    @torch.no_grad()
    def _accumulate(self, logits: torch.Tensor, positive: torch.Tensor, keep: torch.Tensor) -> None:
        """Add this batch to the epoch's histograms and kept counts, on device, without host syncs."""
        num_classes = logits.shape[1]
        bin_index = probability_bins(torch.sigmoid(logits.detach().float()), self.bins)
        flat_index = (bin_index + torch.arange(num_classes, device=logits.device) * self.bins).reshape(-1)
        self.hist_pos.view(-1).scatter_add_(0, flat_index, positive.reshape(-1).long())
        self.hist_neg.view(-1).scatter_add_(0, flat_index, (~positive).reshape(-1).long())
        self.kept_pos += (keep & positive).sum(dim=0)
        self.kept_neg += (keep & ~positive).sum(dim=0)

    def epoch_counters(self) -> list[torch.Tensor]:
        return [self.hist_pos, self.hist_neg, self.kept_pos, self.kept_neg, *self.base.epoch_counters()]

    def end_epoch(self) -> dict[str, Any]:
        """Update r^ from this epoch's histograms, reset them, and return what to log."""
        log = dict(self.base.end_epoch())
        if self.num_classes == 0:
            return log
        hist_pos, hist_neg = self.hist_pos.cpu(), self.hist_neg.cpu()
        divergence_pos, divergence_neg = histogram_divergences(hist_pos, hist_neg)
        old_ratio = self.target_ratio.cpu().double()
        new_ratio = update_target_ratio(
            old_ratio, divergence_pos, divergence_neg, hist_pos.sum(1) > 0, hist_neg.sum(1) > 0, self.lr
        )
        self.target_ratio.copy_(torch.where(self.frozen.cpu(), old_ratio, new_ratio))
        self.divergence_pos.copy_(divergence_pos)
        self.divergence_neg.copy_(divergence_neg)
        seen_pos, seen_neg = int(hist_pos.sum()), int(hist_neg.sum())
        kept_pos, kept_neg = int(self.kept_pos.sum()), int(self.kept_neg.sum())
        for name in ("hist_pos", "hist_neg", "kept_pos", "kept_neg"):
            getattr(self, name).zero_()
        log.update(
            target_ratio=self.target_ratio.tolist(),
            class_ratio=self.class_ratio.tolist(),
            divergence_pos=self.divergence_pos.tolist(),
            divergence_neg=self.divergence_neg.tolist(),
            kept_positive_fraction=kept_pos / seen_pos if seen_pos else 1.0,
            kept_negative_fraction=kept_neg / seen_neg if seen_neg else 1.0,
        )
        return log

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a fresh instance holds empty per-class buffers: size them to the checkpoint first
        for name in self._PER_CLASS_BUFFERS:
            key, current = prefix + name, self._buffers[name]
            incoming = state_dict.get(key)
            if (
                incoming is not None
                and current.shape[0] == 0
                and incoming.shape[1:] == current.shape[1:]
            ):
                self._buffers[name] = torch.zeros(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, lr={self.lr}, classes={self.num_classes}"
