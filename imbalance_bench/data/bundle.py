"""The dataset types: `DataSource`, what a dataset option builds and declares; `RawSplits`, what a
single-label reader (CIFAR, MNIST) yields; and `DataBundle`, what every dataset gives the training
loop and the run directory."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from imbalance_bench.data.images import BatchTransform, ImageSplit
from imbalance_bench.errors import ConfigError

log = logging.getLogger("imbench")
MAX_NAMED_CLASSES = 10  # the zero-image warning names this many classes, then counts the rest


class DataSource:
    """A dataset option: conf/dataset/<name>.yaml names its subclass in `_target_`, built from the
    option's keys; `load()` reads the files into a DataBundle. What pre-flight and the reproduce
    scripts must know before any file is read is declared on the subclass."""

    #: the option's name (conf/dataset/<name>.yaml), the `dataset.name` label of its runs
    name: str = ""
    #: "single" (one integer label an image) or "multi" (multi-hot targets)
    label_kind: str = "single"
    #: the side in pixels of the images the model sees, or the name of the option's key that sets it
    image_size: int | str = 32
    #: whether `dataset.download=true` fetches missing files
    downloadable: bool = False

    def __init__(self, **options: Any):
        self.options = options

    @classmethod
    def missing(cls, root: Path) -> str | None:
        """None when `root` holds the files, else the one line the reader would stop with (what is
        expected there and how to get it), so that a table can check its data before any run."""
        return None

    @classmethod
    def image_side(cls, options: Mapping[str, Any]) -> int:
        """The side in pixels of the images an option with these keys yields."""
        return int(options[cls.image_size]) if isinstance(cls.image_size, str) else cls.image_size

    def load(self) -> DataBundle:
        raise NotImplementedError


def check_channels(name: str, channels: int, mean: list[float], std: list[float]) -> None:
    """`dataset.mean` and `dataset.std` hold one value per image channel (the ranges are the schema's)."""
    if len(mean) != channels or len(std) != channels:
        values = "value" if channels == 1 else "values"
        raise ConfigError(f"dataset.mean/dataset.std must have {channels} {values} for {name}, "
                          f"got {len(mean)} and {len(std)}")


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
        empty = self.empty_classes
        if empty:
            named = ", ".join(empty[:MAX_NAMED_CLASSES])
            more = f" and {len(empty) - MAX_NAMED_CLASSES} more" if len(empty) > MAX_NAMED_CLASSES else ""
            log.warning("dataset %s: %d of %d classes have no train images, so the model never trains on them: %s%s",
                        self.name, len(empty), self.num_classes, named, more)

    @property
    def empty_classes(self) -> list[str]:
        """Classes without a train image (positive, when multi-label)."""
        return [name for name, count in zip(self.class_names, self.train_class_counts) if count == 0]

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
            # no train image: never trained on, and left out of every re-sampler's draw
            "empty_classes": self.empty_classes,
            "test_counts": self.test_class_counts,
            "subset_sha256": subset_digest(self.subset_indices),
            **self.info,
        }


def subset_digest(subset_indices: dict[str, list[int]]) -> str:
    """SHA-256 of the chosen indices, so two runs can be checked for the identical subset."""
    blob = json.dumps({k: list(map(int, v)) for k, v in sorted(subset_indices.items())}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
