"""Turn a balanced dataset's full splits into a long-tailed train split and a balanced test split."""

from __future__ import annotations

import numpy as np
import torch

from imbalance_bench.data.bundle import DataBundle, RawSplits
from imbalance_bench.data.images import BatchTransform, ImageSplit
from imbalance_bench.data.profiles import limit_subset, long_tail_counts, select_per_class
from imbalance_bench.errors import DataError


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
