"""Writers for tiny datasets in the real on-disk formats (CIFAR pickles, MNIST idx files).

The images are class-dependent patterns plus noise, so a model can learn something from them.
CIFAR pickles are written as Python 2 wrote the official files (bytes keys), or by Python 3: with
str keys at its highest protocol, or with bytes keys at protocol 2 (as scripts/bench.py writes them).
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


class NumPy1Pickler(pickle._Pickler):
    """Pickles NumPy arrays as NumPy 1 did, naming numpy.core.multiarray._reconstruct (NumPy 2 names
    numpy._core.multiarray)."""

    _reconstruct = np.zeros(1).__reduce__()[0]

    def save_global(self, obj, name=None) -> None:
        if obj is self._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


class Python2Pickler(NumPy1Pickler):
    """Pickles as Python 2 with NumPy 1 did for the official CIFAR files: protocol 2, and every
    string as a Python 2 str (BINSTRING: bytes once read with encoding="bytes")."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_python2_str


def _as_bytes(obj):
    """`obj` with every str in it (keys, values, list items) as bytes."""
    if isinstance(obj, dict):
        return {_as_bytes(key): _as_bytes(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_as_bytes(item) for item in obj]
    return obj.encode() if isinstance(obj, str) else obj


def _dump(path: Path, obj: dict, written_by: str) -> None:
    """`obj` (str keys) as written by "python2" (like the official files), "python3" (str keys, its
    highest protocol) or "python3-protocol2" (bytes keys and names, protocol 2)."""
    with path.open("wb") as fh:
        if written_by == "python2":
            Python2Pickler(fh, protocol=2).dump(obj)
        elif written_by == "python3-protocol2":
            pickle.dump(_as_bytes(obj), fh, protocol=2)
        else:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def write_cifar10(root: Path, train_per_class: int = 40, test_per_class: int = 8, seed: int = 0,
                  written_by: str = "python2") -> Path:
    """`root/cifar-10-batches-py` with five train batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = balanced_labels(10, train_per_class, rng)
    data = class_images(labels, (3, 32, 32), rng).reshape(len(labels), -1)
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _dump(folder / f"data_batch_{i}", {"batch_label": "training batch", "labels": labels[chunk].tolist(),
                                           "data": data[chunk]}, written_by)
    test_labels = balanced_labels(10, test_per_class, rng)
    test_data = class_images(test_labels, (3, 32, 32), rng).reshape(len(test_labels), -1)
    _dump(folder / "test_batch", {"batch_label": "testing batch", "labels": test_labels.tolist(), "data": test_data},
          written_by)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": len(labels) // 5, "num_vis": 3072},
          written_by)
    return folder


def write_cifar100(root: Path, train_per_class: int = 20, test_per_class: int = 2, seed: int = 0,
                   written_by: str = "python2") -> Path:
    """`root/cifar-100-python` with train, test and meta pickles (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = balanced_labels(100, per_class, rng)
        data = class_images(labels, (3, 32, 32), rng).reshape(len(labels), -1)
        _dump(folder / split, {"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(), "data": data},
              written_by)
    _dump(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                            "coarse_label_names": [f"super_{i}" for i in range(20)]}, written_by)
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
