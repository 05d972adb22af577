"""CIFAR-10 / CIFAR-100 read from torchvision's on-disk pickles.

torchvision's CIFAR classes check the official files' MD5 sums, so they are used only to
download; reading goes through `read_cifar`, which accepts any file in the same format: the
official Python 2 pickles (bytes keys) and ones written by Python 3 (str keys). The pickles are read
by a restricted unpickler that builds NumPy arrays and plain values only, so a crafted file cannot
run code.
"""

from __future__ import annotations

import pickle
import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imbalance_bench.data.bundle import RawSplits
from imbalance_bench.data.download import download_or_fail
from imbalance_bench.errors import DataError
from imbalance_bench.safe_pickle import NUMPY_ARRAY_GLOBALS


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100),
}


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode(text, "latin1")`, which is how Python 3 pickles bytes at protocol 2."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as latin1 bytes")
    return text.encode("latin1")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a function or class that a CIFAR pickle does not hold."""


class CifarUnpickler(pickle.Unpickler):
    """Builds what a CIFAR pickle holds (dicts, lists, strings, bytes, numbers, NumPy arrays) and
    nothing else: any other function or class a file names is refused, never looked up."""

    ALLOWED = {
        **{tuple(name.rsplit(".", 1)): obj for name, obj in NUMPY_ARRAY_GLOBALS.items()},
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def _load_pickle(path: Path) -> dict:
    """The dict in a CIFAR pickle, with str keys whether the file has bytes keys (the official
    Python 2 files, read with encoding="bytes") or str keys (written by Python 3)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as fh:
            content = CifarUnpickler(fh, encoding="bytes").load()
    except RefusedGlobal as exc:
        raise DataError(f"{path}: refused: it names {exc}, and a CIFAR pickle holds only NumPy arrays and plain "
                        "values (loading anything else could run code); replace it with the official file") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: not a CIFAR pickle (expected a dict, got {type(content).__name__})")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _labels(path: Path, values, num_classes: int) -> np.ndarray:
    """`values` (a list, or an integer array) as int64 labels; a DataError naming `path` unless
    every one is an integer in [0, num_classes)."""
    allowed = f"labels must be a list of integers in 0..{num_classes - 1}"
    if isinstance(values, np.ndarray) and values.ndim == 1 and np.issubdtype(values.dtype, np.integer):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{path}: {allowed} (found {type(values).__name__})")
    for value in values:
        if type(value) is not int or not 0 <= value < num_classes:  # bool is no label either
            raise DataError(f"{path}: {allowed} (found {reprlib.repr(value)})")
    return np.array(values, dtype=np.int64)


def _read_batches(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _load_pickle(path)
        if "data" not in batch or layout.label_key not in batch:
            missing = "data" if "data" not in batch else layout.label_key
            raise DataError(f"{path}: missing key {missing!r}")
        batch_labels = _labels(path, batch[layout.label_key], layout.num_classes)
        data = batch["data"]
        if (not isinstance(data, np.ndarray) or data.dtype.kind not in "ui" or data.ndim != 2
                or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels)):
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: expected 'data' as integers of shape (N, 3072) and N labels, got {found}")
        if data.dtype != np.uint8 and len(data) and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{path}: 'data' holds values outside 0..255 ({data.min()}..{data.max()}); "
                            "CIFAR pixels are bytes")
        data = data.astype(np.uint8, copy=False)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def read_cifar(root: str | Path, variant: str) -> RawSplits:
    """Read `cifar10` or `cifar100` from `root/<torchvision folder>`."""
    layout = LAYOUTS[variant]
    folder = Path(root) / layout.folder
    meta_path = folder / layout.meta_file
    meta = _load_pickle(meta_path)
    if layout.names_key not in meta:
        raise DataError(f"{meta_path}: missing key {layout.names_key!r}")
    names = meta[layout.names_key]
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes or not all(
            isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{meta_path}: {layout.names_key!r} must be a list of {layout.num_classes} class names")
    names = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in names]
    train_x, train_y = _read_batches(folder, layout.train_files, layout)
    test_x, test_y = _read_batches(folder, layout.test_files, layout)
    return RawSplits(train_x, train_y, test_x, test_y, names, str(folder))


CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


def has_cifar(root: str | Path, variant: str) -> bool:
    return (Path(root) / LAYOUTS[variant].folder / LAYOUTS[variant].meta_file).is_file()


def missing_cifar(root: str | Path, variant: str) -> str | None:
    """None when `root` holds `variant`, else the one line saying what is missing and how to get it."""
    if has_cifar(root, variant):
        return None
    root = Path(root).expanduser().resolve()
    folder = LAYOUTS[variant].folder
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[variant]
    return (f"{root / folder}: {variant} not found; dataset.root={root} must hold the folder {folder}/: download "
            f"the {label} python version from {CIFAR_PAGE} and extract it under {root}, or set dataset.download=true")


def download_cifar(root: str | Path, variant: str) -> None:
    """Fetch the official archive through torchvision (needs internet); a failed attempt leaves nothing."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if variant == "cifar10" else datasets.CIFAR100
    download_or_fail(variant, Path(root), [LAYOUTS[variant].folder],
                     lambda: cls(str(root), train=True, download=True))


def load_cifar(root: str | Path, variant: str, download: bool) -> RawSplits:
    """CIFAR from `root`, downloading first when it is missing and `download` is true."""
    missing = missing_cifar(root, variant)
    if missing:
        if not download:
            raise DataError(missing)
        download_cifar(root, variant)
    return read_cifar(root, variant)
