"""Long-tailed class profiles and the deterministic subsets drawn from them."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

IMBALANCE_TYPES = ("exp", "step")


def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Per-class train counts of a long-tailed split, head class first.

    exp:  n_i = floor(n_max * (1/IF)^(i/(C-1)))  (Cui et al. 2019; Cao et al. 2019)
    step: the first floor(C/2) classes keep n_max, the rest floor(n_max/IF)  (Cao et al. 2019)
    """
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        ratio = 1.0 / imbalance_factor
        return [int(math.floor(n_max * ratio ** (i / (num_classes - 1)))) for i in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        tail = int(math.floor(n_max / imbalance_factor))
        return [int(n_max)] * head + [tail] * (num_classes - head)
    raise ValueError(f"profile must be one of {IMBALANCE_TYPES}, got {profile!r}")


def select_per_class(labels: np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices of a random subset holding counts[c] examples of class c, in ascending index order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, n in enumerate(counts):
        pool = np.flatnonzero(labels == cls)
        if n > len(pool):
            raise ValueError(f"class {cls} has {len(pool)} examples, {n} requested")
        chosen.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def proportional_quota(class_counts: Sequence[int], limit: int) -> list[int]:
    """Split `limit` over classes in proportion to their counts (largest remainder).

    Every non-empty class keeps at least one example while the limit allows it, so a smoke
    run on a tiny subset still sees the tail classes.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    total = int(counts.sum())
    if limit >= total:
        return counts.tolist()
    exact = counts * (limit / total)
    quota = np.floor(exact).astype(np.int64)
    nonempty = counts > 0
    if limit >= int(nonempty.sum()):
        quota = np.where(nonempty, np.maximum(quota, 1), 0)
    # Trim classes that were lifted to one, largest first, if the floor overshot the limit.
    while quota.sum() > limit:
        quota[np.argmax(quota)] -= 1
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for cls in order:
        if quota.sum() >= limit:
            break
        if quota[cls] < counts[cls]:
            quota[cls] += 1
    return quota.tolist()


def limit_subset(labels: np.ndarray, num_classes: int, limit: int | None, seed: int) -> np.ndarray:
    """Positions (into `labels`) of a class-proportional random subset of at most `limit` examples."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    class_counts = np.bincount(labels, minlength=num_classes)
    quota = proportional_quota(class_counts, limit)
    return select_per_class(labels, quota, seed)
