"""Turn a balanced dataset's full splits into a long-tailed train split and a balanced test split."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imbalance_bench.data.images import BatchTransform, ImageSplit
from imbalance_bench.data.profiles import limit_subset, long_tail_counts, select_per_class
from imbalance_bench.errors import DataError

log = logging.getLogger("imbench")
MAX_NAMED_CLASSES = 10  # the zero-image warning names this many classes, then counts the rest


@dataclass
class RawSplits:
    """Full train and test splits as uint8 (N, C, H, W) arrays with integer labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str


@dataclass
class DataBundle:
    """Everything the loop needs from a dataset, plus what the run directory records about it."""

    name: str
    train: ImageSplit  # or any batch-indexed split with `image_shape` and the same (images, targets) batches
    test: ImageSplit
    class_names: list[str]
    label_kind: str  # "single" (integer labels) or "multi" (multi-hot targets)
    # train_class_counts / test_class_counts: images per class (positives per class when multi-label)
    transform: BatchTransform
    train_class_counts: list[int]
    test_class_counts: list[int]
    subset_indices: dict[str, list[int]]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Warn, once per bundle, when the train split leaves classes without a single image: the
        run trains without them (a profile like dataset.imbalance_factor=1e9 rounds the tail to 0)."""
        empty = [name for name, count in zip(self.class_names, self.train_class_counts) if count == 0]
        if empty:
            named = ", ".join(empty[:MAX_NAMED_CLASSES])
            more = f" and {len(empty) - MAX_NAMED_CLASSES} more" if len(empty) > MAX_NAMED_CLASSES else ""
            log.warning("dataset %s: %d of %d classes have no train images, so the model never trains on them: %s%s",
                        self.name, len(empty), self.num_classes, named, more)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train.image_shape[0])

    def stats(self) -> dict[str, Any]:
        """The `dataset_stats.json` record: per-class counts and how the subset was drawn."""
        return {
            "name": self.name,
            "label_kind": self.label_kind,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "image_shape": list(self.train.image_shape),
            "train_total": len(self.train),
            "test_total": len(self.test),
            "train_counts": self.train_class_counts,
            "test_counts": self.test_class_counts,
            "subset_sha256": subset_digest(self.subset_indices),
            **self.info,
        }


def subset_digest(subset_indices: dict[str, list[int]]) -> str:
    """SHA-256 of the chosen indices, so two runs can be checked for the identical subset."""
    blob = json.dumps({k: list(map(int, v)) for k, v in sorted(subset_indices.items())}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def balanced_test_indices(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """All of a balanced test split; an unbalanced one (MNIST: 892 to 1,135 per class) is cut to
    its smallest class so that every class weighs the same in top-1."""
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() == counts.max():
        return np.arange(len(labels))
    return select_per_class(labels, [int(counts.min())] * num_classes, seed)


def make_long_tail_bundle(
    raw: RawSplits,
    name: str,
    imbalance_factor: float,
    imbalance_type: str,
    seed: int,
    limit_train: int | None,
    limit_test: int | None,
    transform: BatchTransform,
) -> DataBundle:
    """Draw the long-tailed train subset (n_max = the smallest class) and apply the smoke-run limits."""
    num_classes = len(raw.class_names)
    for split, labels in (("train", raw.train_labels), ("test", raw.test_labels)):
        missing = [raw.class_names[c] for c in np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)]
        if missing:  # n_max (train) or the balanced test size would be 0 for every class
            raise DataError(f"{raw.source}: the {split} split has no image of class {', '.join(missing)}; "
                            "every class needs at least one")
    available = np.bincount(raw.train_labels, minlength=num_classes)
    n_max = int(available.min())
    target_counts = long_tail_counts(n_max, num_classes, imbalance_factor, imbalance_type)
    train_idx = select_per_class(raw.train_labels, target_counts, seed)
    # The limits draw from a different stream than the long-tail selection so that turning a
    # limit on never changes which images the long-tailed split holds.
    train_idx = train_idx[limit_subset(raw.train_labels[train_idx], num_classes, limit_train, seed + 1)]
    test_idx = balanced_test_indices(raw.test_labels, num_classes, seed + 2)
    test_idx = test_idx[limit_subset(raw.test_labels[test_idx], num_classes, limit_test, seed + 3)]

    train = ImageSplit(torch.from_numpy(raw.train_images[train_idx]), torch.from_numpy(raw.train_labels[train_idx]))
    test = ImageSplit(torch.from_numpy(raw.test_images[test_idx]), torch.from_numpy(raw.test_labels[test_idx]))
    return DataBundle(
        name=name,
        train=train,
        test=test,
        class_names=list(raw.class_names),
        label_kind="single",
        transform=transform,
        train_class_counts=np.bincount(raw.train_labels[train_idx], minlength=num_classes).tolist(),
        test_class_counts=np.bincount(raw.test_labels[test_idx], minlength=num_classes).tolist(),
        subset_indices={"train": train_idx.tolist(), "test": test_idx.tolist()},
        info={
            "imbalance_factor": imbalance_factor,
            "imbalance_type": imbalance_type,
            "profile_counts": target_counts,
            "subset_seed": seed,
            "limit_train": limit_train,
            "limit_test": limit_test,
            "source": raw.source,
        },
    )
