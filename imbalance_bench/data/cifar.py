"""CIFAR-10 / CIFAR-100 read from torchvision's on-disk pickles.

torchvision's CIFAR classes check the official files' MD5 sums, so they are used only to
download; reading goes through `read_cifar`, which accepts any file in the same format.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imbalance_bench.data.long_tail import RawSplits
from imbalance_bench.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        b"labels",
        b"label_names",
        10,
    ),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names", 100),
}


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as fh:
            content = pickle.load(fh, encoding="bytes")
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: not a CIFAR pickle (expected a dict, got {type(content).__name__})")
    return content


def _read_batches(folder: Path, files: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _load_pickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DataError(f"{path}: missing key {b'data' if b'data' not in batch else label_key!r}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[label_key]):
            raise DataError(f"{path}: expected 'data' of shape (N, 3072) and N labels, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar(root: str | Path, variant: str) -> RawSplits:
    """Read `cifar10` or `cifar100` from `root/<torchvision folder>`."""
    layout = LAYOUTS[variant]
    folder = Path(root) / layout.folder
    meta = _load_pickle(folder / layout.meta_file)
    if layout.names_key not in meta:
        raise DataError(f"{folder / layout.meta_file}: missing key {layout.names_key!r}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]
    train_x, train_y = _read_batches(folder, layout.train_files, layout.label_key)
    test_x, test_y = _read_batches(folder, layout.test_files, layout.label_key)
    for split, y in (("train", train_y), ("test", test_y)):
        if y.min() < 0 or y.max() >= layout.num_classes:
            raise DataError(f"{folder}: {split} labels outside 0..{layout.num_classes - 1}")
    return RawSplits(train_x, train_y, test_x, test_y, names, str(folder))


def has_cifar(root: str | Path, variant: str) -> bool:
    return (Path(root) / LAYOUTS[variant].folder / LAYOUTS[variant].meta_file).is_file()


def download_cifar(root: str | Path, variant: str) -> None:
    """Fetch the official archive through torchvision (needs internet)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if variant == "cifar10" else datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(f"{root}: downloading {variant} failed ({type(exc).__name__}: {exc})") from None


def load_cifar(root: str | Path, variant: str, download: bool) -> RawSplits:
    """CIFAR from `root`, downloading first when it is missing and `download` is true."""
    if not has_cifar(root, variant):
        if not download:
            folder = Path(root) / LAYOUTS[variant].folder
            raise DataError(
                f"{folder}: {variant} not found; put torchvision's '{LAYOUTS[variant].folder}' folder under "
                f"dataset.root or set dataset.download=true"
            )
        download_cifar(root, variant)
    return read_cifar(root, variant)
