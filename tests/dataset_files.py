"""Writers for tiny datasets in the real on-disk formats (CIFAR pickles, MNIST idx files).

The images are class-dependent patterns plus noise, so a model can learn something from them.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def class_images(labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """uint8 images whose mean brightness pattern depends on the label."""
    n = len(labels)
    base = rng.integers(0, 64, size=(n, *shape))
    stripe = (np.arange(shape[-1])[None, :] * 7 + labels[:, None] * 23) % 192
    return (base + stripe.reshape(n, *([1] * (len(shape) - 1)), shape[-1])).clip(0, 255).astype(np.uint8)


def balanced_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, train_per_class: int = 40, test_per_class: int = 8, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py` with five train batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = balanced_labels(10, train_per_class, rng)
    data = class_images(labels, (3, 32, 32), rng).reshape(len(labels), -1)
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels[chunk].tolist(), b"data": data[chunk]})
    test_labels = balanced_labels(10, test_per_class, rng)
    test_data = class_images(test_labels, (3, 32, 32), rng).reshape(len(test_labels), -1)
    _dump(folder / "test_batch", {b"batch_label": b"testing batch", b"labels": test_labels.tolist(), b"data": test_data})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": len(labels) // 5, b"num_vis": 3072})
    return folder


def write_cifar100(root: Path, train_per_class: int = 20, test_per_class: int = 2, seed: int = 0) -> Path:
    """`root/cifar-100-python` with train, test and meta pickles (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = balanced_labels(100, per_class, rng)
        data = class_images(labels, (3, 32, 32), rng).reshape(len(labels), -1)
        _dump(folder / split, {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(), b"data": data})
    _dump(folder / "meta", {b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]})
    return folder


def idx_header(dims, type_code: int = 0x08) -> bytes:
    """An idx header: magic (0, 0, type code (0x08 = ubyte), number of dims), then the big-endian dims."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An idx file: its header, then the bytes."""
    payload = idx_header(array.shape) + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist_from_digits(root: Path, compress: bool = True) -> Path:
    """MNIST-format idx files built from scikit-learn's real 8x8 digits, centred on a 28x28 canvas."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.zeros((len(digits.images), 28, 28), dtype=np.uint8)
    images[:, 10:18, 10:18] = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    test, train = order[:400], order[400:]
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", images[train], compress)
    write_idx(folder / "train-labels-idx1-ubyte", labels[train], compress)
    write_idx(folder / "t10k-images-idx3-ubyte", images[test], compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[test], compress)
    return folder
