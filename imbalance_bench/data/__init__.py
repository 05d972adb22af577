"""Datasets: a registry of builders and the `create_dataset` factory that conf/dataset/*.yaml targets."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from imbalance_bench.data.cifar import load_cifar, missing_cifar
from imbalance_bench.data.coco import build_coco, missing_coco
from imbalance_bench.data.images import BatchTransform
from imbalance_bench.data.bundle import DataBundle
from imbalance_bench.data.long_tail import make_long_tail_bundle
from imbalance_bench.data.mnist import load_mnist, missing_mnist
from imbalance_bench.data.multimnist import build_multimnist
from imbalance_bench.errors import ConfigError

_DATASETS: dict[str, Callable[..., DataBundle]] = {}
_LABEL_KINDS: dict[str, str] = {}
_IMAGE_SIZES: dict[str, int | str] = {}
_MISSING: dict[str, Callable[[Path], str | None]] = {}
_DOWNLOADABLE: set[str] = set()


def register_dataset(name: str, label_kind: str = "single", image_size: int | str = 32,
                     missing: Callable[[Path], str | None] | None = None, downloadable: bool = False):
    """Register a builder. `label_kind` ("single" or "multi") and `image_size` (the side of the
    images the model sees: a number, or the name of the dataset key that sets it) let the CLI
    check the loss, the monitor and the model against the dataset before any data is read.
    `missing(root)` is the builder's own presence check (None, or its one-line not-found message),
    so that a table can check its data before starting any run; `downloadable`: whether
    `dataset.download=true` fetches what is missing."""

    def wrap(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _DATASETS[name] = fn
        _LABEL_KINDS[name] = label_kind
        _IMAGE_SIZES[name] = image_size
        if missing is not None:
            _MISSING[name] = missing
        if downloadable:
            _DOWNLOADABLE.add(name)
        return fn

    return wrap


def missing_data(dataset_cfg) -> str | None:
    """The one line the dataset's reader would stop with because its files are not under
    `dataset.root` (what is expected there and how to get it), or None when they are."""
    check = _MISSING.get(str(dataset_cfg.get("name", "")))
    return check(Path(str(dataset_cfg["root"])).expanduser().resolve()) if check else None


def downloads_missing(dataset_cfg) -> bool:
    """Whether this dataset config fetches missing files itself (`dataset.download=true`, and a
    dataset that can be downloaded)."""
    return bool(dataset_cfg.get("download")) and str(dataset_cfg.get("name", "")) in _DOWNLOADABLE


def dataset_label_kind(name: str) -> str | None:
    return _LABEL_KINDS.get(name)


def dataset_image_size(dataset_cfg) -> int | None:
    """The side in pixels of the images a dataset config yields, or None for an unknown dataset."""
    size = _IMAGE_SIZES.get(str(dataset_cfg.get("name", "")))
    return dataset_cfg.get(size) if isinstance(size, str) else size


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def create_dataset(name: str, **kwargs) -> DataBundle:
    """Build the dataset `name` (see `list_datasets()`) from its config keys."""
    if name not in _DATASETS:
        raise ConfigError(f"dataset.name={name} is not allowed: must be one of {', '.join(list_datasets())}")
    return _DATASETS[name](name=name, **kwargs)


def _long_tail_from(raw_loader: Callable[[str, bool], object]) -> Callable[..., DataBundle]:
    def build(
        name: str,
        root: str,
        download: bool,
        imbalance_factor: float,
        imbalance_type: str,
        seed: int,
        limit_train: int | None,
        limit_test: int | None,
        augment: dict,
        mean: list[float],
        std: list[float],
    ) -> DataBundle:
        raw = raw_loader(str(Path(root).expanduser().resolve()), download)
        if len(mean) != raw.train_images.shape[1] or len(std) != raw.train_images.shape[1]:
            raise ConfigError(
                f"dataset.mean/dataset.std must have {raw.train_images.shape[1]} values for {name}, "
                f"got {len(mean)} and {len(std)}"
            )
        transform = BatchTransform(mean=list(mean), std=list(std), **dict(augment))
        return make_long_tail_bundle(
            raw, name, imbalance_factor, imbalance_type, seed, limit_train, limit_test, transform
        )

    return build


register_dataset("cifar10_lt", missing=lambda root: missing_cifar(root, "cifar10"), downloadable=True)(
    _long_tail_from(lambda root, download: load_cifar(root, "cifar10", download)))
register_dataset("cifar100_lt", missing=lambda root: missing_cifar(root, "cifar100"), downloadable=True)(
    _long_tail_from(lambda root, download: load_cifar(root, "cifar100", download)))
register_dataset("mnist_lt", image_size=28, missing=missing_mnist, downloadable=True)(_long_tail_from(load_mnist))
register_dataset("multimnist", label_kind="multi", image_size="canvas_size", missing=missing_mnist,  # MNIST's digits
                 downloadable=True)(build_multimnist)
register_dataset("coco", label_kind="multi", image_size="image_size", missing=missing_coco)(build_coco)

__all__ = ["DataBundle", "create_dataset", "dataset_label_kind", "downloads_missing", "list_datasets", "missing_data",
           "register_dataset"]
