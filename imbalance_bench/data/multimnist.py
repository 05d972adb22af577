"""MultiMNIST-LT: canvases of several real MNIST digits, labelled with the set of classes present.

The multi-label long-tailed MNIST of Duarte, Rawat & Shah (CVPR-W 2021, the PLM paper) has no
public generator; this is ours. Per split, with N images (train: the exp profile of Cui et al.
2019 with `imbalance_factor`; test: the same code with imbalance factor 1, class-balanced):

1. Positives per class n_c = long_tail_counts(n_head, 10, IF, "exp"), head = class 0, tail = 9,
   with n_head the largest value <= N whose total T = sum(n_c) is <= N*(min_digits+max_digits)/2.
   Infeasible (ConfigError naming the keys): T < N*min_digits, or a class with 0 positives.
2. Digits per image k_i: every image starts at min_digits and the T - N*min_digits extra slots
   go to uniformly random images that still have room (k_i < max_digits). If the draw violates
   the Gale-Ryser condition (no 0/1 matrix has these margins; rare, small N), one slot at a time
   moves from a fullest to an emptiest image until it holds: the even split always does.
3. The (N x 10) 0/1 label matrix with row sums k_i and column sums n_c is filled class by class,
   largest quota first, giving class c to the n_c images with the most remaining slots (ties at
   random): Ryser's constructive proof of the Gale-Ryser theorem. Each class appears at most once
   per image, so the train positives equal the profile exactly. The greedy fill ties label sets
   to digit counts, so random checkerboard swaps (`mix_label_matrix`, margins unchanged) then
   shuffle which images hold which classes.
4. Each (image, class) pair draws a digit of that class, with replacement, from the split's own
   MNIST source: train images use MNIST train digits only, test images MNIST test digits only.
5. Digits (28x28) go onto a black canvas_size x canvas_size canvas. overlap=true: top-left corner
   uniform in [0, S-28]^2, composed by pixel-wise max. overlap=false: the canvas is cut into g x g
   cells (g = S // 28, cell side S // g) and the digits take distinct random cells, each jittered
   uniformly inside its cell, so no two 28x28 boxes intersect.

All draws come from np.random.default_rng streams spawned from `seed` (one for train, one for
test). The result is cached as `root/multimnist/<sha256>.npz`, the digest covering every
generation key, GENERATOR_VERSION and a fingerprint of the MNIST files; the file is written
atomically, and an unreadable or mismatching one is regenerated (with a warning).
`subset_indices[split]` lists, image by image and classes ascending within an image, the index
(into that split's MNIST idx file) of every digit placed; info["digits_sha256"] hashes the full
placement table (image, class, source, top, left), which pins every pixel.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from imbalance_bench.data.bundle import DataBundle, RawSplits, check_channels
from imbalance_bench.data.images import BatchTransform, ImageSplit
from imbalance_bench.data.mnist import load_mnist
from imbalance_bench.data.profiles import long_tail_counts
from imbalance_bench.errors import ConfigError, DataError
from imbalance_bench.runfiles import atomic_write_bytes

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump whenever the construction changes, so old caches are not reused
MIX_ROUNDS = 200  # rounds of random checkerboard swaps after the greedy fill (see mix_label_matrix)
NUM_CLASSES = 10
DIGIT_SIZE = 28
DIGIT_COLUMNS = ("image", "class", "source", "top", "left")


@dataclass
class MultiDigitSplit:
    """Generated canvases, their multi-hot labels and where every digit came from and went."""

    images: np.ndarray  # uint8 (N, 1, S, S)
    labels: np.ndarray  # uint8 (N, 10), 1 where the class is present
    digits: np.ndarray  # int64 (D, 5): DIGIT_COLUMNS, image-major, classes ascending per image


# ---------------------------------------------------------------- layout and profile


def grid_side(canvas_size: int) -> int:
    """Cells per side of the non-overlapping layout: g = canvas_size // 28."""
    return canvas_size // DIGIT_SIZE


def label_quota(num_images: int, imbalance_factor: float, min_digits: int, max_digits: int) -> list[int]:
    """Positives per class: long_tail_counts(n_head, 10, IF, "exp") with the largest n_head <= N
    whose total is <= N*(min_digits+max_digits)/2. Feasibility is not checked here."""
    budget = num_images * (min_digits + max_digits) // 2
    low, high = 0, num_images  # the total grows with n_head: bisect for the largest that fits
    while low < high:
        mid = (low + high + 1) // 2
        if sum(long_tail_counts(mid, NUM_CLASSES, imbalance_factor, "exp")) <= budget:
            low = mid
        else:
            high = mid - 1
    return long_tail_counts(low, NUM_CLASSES, imbalance_factor, "exp")


def _feasible(num_images: int, imbalance_factor: float, min_digits: int, max_digits: int) -> bool:
    quota = label_quota(num_images, imbalance_factor, min_digits, max_digits)
    return min(quota) >= 1 and num_images * min_digits <= sum(quota) <= num_images * max_digits


def checked_quota(split: str, num_images: int, imbalance_factor: float, min_digits: int, max_digits: int) -> list[int]:
    """label_quota, or a one-line ConfigError naming the keys and a nearby setting that works."""
    quota = label_quota(num_images, imbalance_factor, min_digits, max_digits)
    if _feasible(num_images, imbalance_factor, min_digits, max_digits):
        return quota
    num_key = f"dataset.num_{split}"
    profile = f"the exp profile with dataset.imbalance_factor={imbalance_factor}" if split == "train" \
        else "the class-balanced test profile"
    keys = f"{num_key}={num_images} with dataset.min_digits={min_digits}, dataset.max_digits={max_digits}"
    if split == "train":
        keys += f", dataset.imbalance_factor={imbalance_factor}"
    total = sum(quota)
    if min(quota) < 1:
        problem = f"{profile} gives class 9 no positives (head class {quota[0]})"
    else:
        problem = (f"{profile} fills {total} label slots (head class {quota[0]}, tail {quota[-1]}), "
                   f"fewer than the {num_images * min_digits} that dataset.min_digits={min_digits} per image needs")
    hints = _hints(split, num_images, imbalance_factor, min_digits, max_digits)
    raise ConfigError(f"{keys} is infeasible: {problem}; " + ("works: " + " or ".join(hints) if hints else
                      "lower dataset.min_digits or dataset.imbalance_factor, or raise dataset.max_digits"))


def _hints(split: str, num_images: int, imbalance_factor: float, min_digits: int, max_digits: int) -> list[str]:
    """Nearby settings that are feasible, changing one key at a time."""
    hints = []
    # min_digits == max_digits needs the profile total to hit N*k exactly: look for the nearest such N
    for delta in range(1, 201):
        found = [n for n in (num_images - delta, num_images + delta)
                 if n >= 1 and _feasible(n, imbalance_factor, min_digits, max_digits)]
        if found:
            hints.append(f"dataset.num_{split}={found[0]}")
            break
    lower_min = [m for m in range(min_digits - 1, 0, -1) if _feasible(num_images, imbalance_factor, m, max_digits)]
    if lower_min:
        hints.append(f"dataset.min_digits={lower_min[0]}")
    higher_max = [m for m in range(max_digits + 1, NUM_CLASSES + 1)
                  if _feasible(num_images, imbalance_factor, min_digits, m)]
    if higher_max:
        hints.append(f"dataset.max_digits={higher_max[0]}")
    if split == "train" and _feasible(num_images, 1.0, min_digits, max_digits):
        low, high = 1.0, float(imbalance_factor)  # feasibility falls with IF, up to floor effects: re-checked
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if _feasible(num_images, mid, min_digits, max_digits) else (low, mid)
        candidate = math.floor(low * 100) / 100
        if _feasible(num_images, candidate, min_digits, max_digits):
            hints.append(f"dataset.imbalance_factor={candidate:g}")
    return hints


# ---------------------------------------------------------------- label matrix


def gale_ryser_feasible(row_sums: np.ndarray, col_sums: np.ndarray) -> bool:
    """Whether a 0/1 matrix with these margins exists (Gale 1957; Ryser 1957): equal totals and,
    for every m, the m largest column sums total at most sum_i min(row_i, m)."""
    rows, cols = np.asarray(row_sums, dtype=np.int64), np.sort(np.asarray(col_sums, dtype=np.int64))[::-1]
    if rows.sum() != cols.sum() or (rows < 0).any() or (cols < 0).any():
        return False
    capacity = np.array([np.minimum(rows, m).sum() for m in range(1, len(cols) + 1)])
    return bool((np.cumsum(cols) <= capacity).all())


def digits_per_image(num_images: int, col_sums: list[int], min_digits: int, max_digits: int,
                     rng: np.random.Generator) -> np.ndarray:
    """k_i: min_digits each, the extra label slots spread uniformly over images with room, then
    evened out one slot at a time only if the Gale-Ryser condition fails."""
    counts = np.full(num_images, min_digits, dtype=np.int64)
    extra = sum(col_sums) - num_images * min_digits
    while extra > 0:  # in rounds: a slot that lands on a full image goes back to the pool
        picks = rng.choice(np.flatnonzero(counts < max_digits), size=extra)
        added = np.minimum(np.bincount(picks, minlength=num_images), max_digits - counts)
        counts += added
        extra -= int(added.sum())
    while not gale_ryser_feasible(counts, col_sums):
        if counts.max() - counts.min() <= 1:
            raise RuntimeError(f"no 0/1 matrix with column sums {col_sums} over {num_images} rows")
        fullest = rng.choice(np.flatnonzero(counts == counts.max()))
        emptiest = rng.choice(np.flatnonzero(counts == counts.min()))
        counts[fullest] -= 1
        counts[emptiest] += 1
    return counts


def fill_label_matrix(row_sums: np.ndarray, col_sums: list[int], rng: np.random.Generator) -> np.ndarray:
    """A 0/1 (N, C) matrix with the given margins, by Ryser's construction: classes from the
    largest quota down, each to the images with the most remaining slots, ties broken at random."""
    remaining = np.asarray(row_sums, dtype=np.int64).copy()
    labels = np.zeros((len(remaining), len(col_sums)), dtype=np.uint8)
    for cls in np.argsort(-np.asarray(col_sums), kind="stable"):
        quota = int(col_sums[cls])
        if quota == 0:
            continue
        priority = remaining + rng.random(len(remaining))  # integer part first, random tie-break
        chosen = np.argpartition(-priority, quota - 1)[:quota]
        labels[chosen, cls] = 1
        remaining[chosen] -= 1
    if not (np.array_equal(labels.sum(axis=1), row_sums) and np.array_equal(labels.sum(axis=0), col_sums)):
        raise RuntimeError("label matrix margins do not match: the Gale-Ryser check let an infeasible case through")
    return labels


def mix_label_matrix(labels: np.ndarray, rng: np.random.Generator, rounds: int = MIX_ROUNDS) -> np.ndarray:
    """Randomise a 0/1 matrix while keeping every row and column sum: checkerboard swaps.

    Ryser's fill is greedy, so on its own the label set is a function of the digit count (on a
    balanced split the 1-digit images would all hold the last classes). Each round pairs the
    images at random; in each pair (i, j) one positive class a of i and one b of j are drawn, and
    where i lacks b and j lacks a the two swap (i: a -> b, j: b -> a). Margins never change;
    after MIX_ROUNDS rounds every row has been offered about MIX_ROUNDS / 2 swaps, the standard
    swap chain for sampling binary matrices with fixed margins.
    """
    labels = labels.copy()
    n = len(labels)
    rows = np.arange(n // 2)
    for _ in range(rounds if n > 1 else 0):
        order = rng.permutation(n)
        i, j = order[0 : 2 * len(rows) : 2], order[1 : 2 * len(rows) : 2]
        a = np.argmax(rng.random(labels.shape)[i] * labels[i], axis=1)  # a random positive of each row i
        b = np.argmax(rng.random(labels.shape)[j] * labels[j], axis=1)
        ok = (labels[i, b] == 0) & (labels[j, a] == 0)
        i, j, a, b = i[ok], j[ok], a[ok], b[ok]
        labels[i, a], labels[i, b], labels[j, b], labels[j, a] = 0, 1, 0, 1
    return labels


# ---------------------------------------------------------------- canvases


def compose_canvases(labels: np.ndarray, source_images: np.ndarray, source_labels: np.ndarray,
                     canvas_size: int, overlap: bool, rng: np.random.Generator, source_name: str) -> MultiDigitSplit:
    """Draw a source digit for every positive (image, class) and paste it onto the image's canvas."""
    image, cls = np.nonzero(labels)  # image-major, classes ascending within an image
    source = np.empty(len(image), dtype=np.int64)
    for c in range(NUM_CLASSES):
        wanted = np.flatnonzero(cls == c)
        pool = np.flatnonzero(source_labels == c)
        if len(wanted) and not len(pool):
            raise DataError(f"{source_name}: no MNIST digit of class {c} to draw from")
        if len(wanted):
            source[wanted] = pool[rng.integers(0, len(pool), size=len(wanted))]
    per_image = labels.sum(axis=1, dtype=np.int64)
    slot = np.arange(len(image)) - np.repeat(np.cumsum(per_image) - per_image, per_image)

    span = canvas_size - DIGIT_SIZE
    if overlap:
        top = rng.integers(0, span + 1, size=len(image))
        left = rng.integers(0, span + 1, size=len(image))
    else:
        side = grid_side(canvas_size)
        cell = canvas_size // side
        cell_order = np.argsort(rng.random((len(labels), side * side)), axis=1)  # a random permutation per image
        cell_id = cell_order[image, slot]
        top = (cell_id // side) * cell + rng.integers(0, cell - DIGIT_SIZE + 1, size=len(image))
        left = (cell_id % side) * cell + rng.integers(0, cell - DIGIT_SIZE + 1, size=len(image))

    canvases = np.zeros((len(labels), 1, canvas_size, canvas_size), dtype=np.uint8)
    # windows[i, y, x] is the 28x28 view of canvas i at (y, x); within one slot every image
    # appears once, so the writes of a slot never alias
    windows = sliding_window_view(canvases[:, 0], (DIGIT_SIZE, DIGIT_SIZE), axis=(1, 2), writeable=True)
    for j in range(int(per_image.max(initial=0))):
        sel = np.flatnonzero(slot == j)
        i, y, x = image[sel], top[sel], left[sel]
        windows[i, y, x] = np.maximum(windows[i, y, x], source_images[source[sel], 0])
    digits = np.stack([image, cls, source, top, left], axis=1).astype(np.int64)
    return MultiDigitSplit(images=canvases, labels=labels, digits=digits)


def generate_split(source_images: np.ndarray, source_labels: np.ndarray, quota: list[int], num_images: int,
                   canvas_size: int, min_digits: int, max_digits: int, overlap: bool,
                   rng: np.random.Generator, source_name: str) -> MultiDigitSplit:
    """Steps 2-5 of the module docstring for one split, from a quota that has passed checked_quota."""
    row_sums = digits_per_image(num_images, quota, min_digits, max_digits, rng)
    labels = mix_label_matrix(fill_label_matrix(row_sums, quota, rng), rng)
    return compose_canvases(labels, source_images, source_labels, canvas_size, overlap, rng, source_name)


# ---------------------------------------------------------------- cache


def source_fingerprint(raw: RawSplits) -> str:
    """SHA-256 of the MNIST arrays (shapes and bytes), so a different MNIST copy gets its own cache."""
    digest = hashlib.sha256()
    for array in (raw.train_images, raw.train_labels, raw.test_images, raw.test_labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def cache_key(keys: dict[str, Any], fingerprint: str) -> str:
    """The canonical JSON the cache file name hashes and the file itself stores."""
    return json.dumps({**keys, "generator_version": GENERATOR_VERSION, "mnist_sha256": fingerprint},
                      sort_keys=True, separators=(",", ":"))


def save_cache(path: Path, key_json: str, splits: dict[str, MultiDigitSplit]) -> None:
    arrays = {"key": np.array(key_json)}
    for split, data in splits.items():
        arrays.update({f"{split}_images": data.images, f"{split}_labels": data.labels, f"{split}_digits": data.digits})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # canvases are mostly black: about 6x smaller
    atomic_write_bytes(path, buffer.getvalue())


def load_cache(path: Path, key_json: str, expected: dict[str, tuple[int, list[int]]],
               canvas_size: int) -> dict[str, MultiDigitSplit] | None:
    """The cached splits, or None when the file is missing, unreadable or not what these keys make."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["key"]) != key_json:
                raise ValueError("stored generation keys differ")
            splits = {}
            for split, (num_images, quota) in expected.items():
                data = MultiDigitSplit(*(archive[f"{split}_{part}"] for part in ("images", "labels", "digits")))
                if (data.images.dtype != np.uint8 or data.images.shape != (num_images, 1, canvas_size, canvas_size)
                        or data.labels.shape != (num_images, NUM_CLASSES)
                        or data.labels.sum(axis=0, dtype=np.int64).tolist() != list(quota)
                        or data.digits.shape != (int(sum(quota)), len(DIGIT_COLUMNS))):
                    raise ValueError(f"{split} arrays have the wrong shape or counts")
                splits[split] = data
    # zlib.error: a corrupt compressed member; NotImplementedError: a zip feature zipfile lacks;
    # MemoryError: an array header that claims an absurd shape (numpy allocates it before reading)
    except (OSError, EOFError, KeyError, ValueError, MemoryError, NotImplementedError, zlib.error,
            zipfile.BadZipFile) as exc:
        log.warning("%s: unusable MultiMNIST cache (%s), regenerating it", path, exc)
        return None
    return splits


# ---------------------------------------------------------------- dataset builder


def build_multimnist(name: str, root: str, download: bool, canvas_size: int, min_digits: int, max_digits: int,
                     num_train: int, num_test: int, imbalance_factor: float, overlap: bool, seed: int,
                     augment: dict, mean: list[float], std: list[float]) -> DataBundle:
    """MultiMNIST-LT (see the module docstring): generated from real MNIST, or read from its cache. The
    keys are validated (config.MultiMnistSchema); whether their profile can be built is checked here."""
    check_channels(name, 1, mean, std)
    quotas = {
        "train": checked_quota("train", num_train, imbalance_factor, min_digits, max_digits),
        "test": checked_quota("test", num_test, 1.0, min_digits, max_digits),
    }
    root_path = Path(root).expanduser().resolve()
    raw = load_mnist(str(root_path), download, config=name)  # its images are 1x28x28 (read_mnist checks)

    keys = {"canvas_size": int(canvas_size), "min_digits": int(min_digits), "max_digits": int(max_digits),
            "num_train": int(num_train), "num_test": int(num_test), "imbalance_factor": float(imbalance_factor),
            "overlap": bool(overlap), "seed": int(seed)}
    fingerprint = source_fingerprint(raw)
    key_json = cache_key(keys, fingerprint)
    cache_file = root_path / "multimnist" / f"{hashlib.sha256(key_json.encode()).hexdigest()}.npz"
    sizes = {"train": num_train, "test": num_test}
    splits = load_cache(cache_file, key_json, {s: (sizes[s], quotas[s]) for s in sizes}, canvas_size)
    status = "reused"
    if splits is None:
        train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        splits = {
            "train": generate_split(raw.train_images, raw.train_labels, quotas["train"], num_train, canvas_size,
                                    min_digits, max_digits, overlap, train_rng, f"{raw.source} (train)"),
            "test": generate_split(raw.test_images, raw.test_labels, quotas["test"], num_test, canvas_size,
                                   min_digits, max_digits, overlap, test_rng, f"{raw.source} (test)"),
        }
        save_cache(cache_file, key_json, splits)
        status = "created"

    counts = {s: splits[s].labels.sum(axis=0, dtype=np.int64).tolist() for s in splits}
    placement = hashlib.sha256()
    for split in ("train", "test"):
        placement.update(np.ascontiguousarray(splits[split].digits, dtype=np.int64).data)
    info = {
        **keys,
        "generator_version": GENERATOR_VERSION,
        "profile_counts": quotas["train"],
        "test_profile_counts": quotas["test"],
        "realised_imbalance": max(counts["train"]) / min(counts["train"]),
        "digits_per_image": {s: _histogram(splits[s].labels.sum(axis=1), max_digits) for s in splits},
        "cache_file": str(cache_file),
        "cache": status,
        "source": raw.source,
        "mnist_sha256": fingerprint,
        "digits_sha256": placement.hexdigest(),
        "subset_indices_format": "per split, the MNIST index of every placed digit, image by image, classes ascending",
    }
    return DataBundle(
        name=name,
        train=_image_split(splits["train"]),
        test=_image_split(splits["test"]),
        class_names=[str(d) for d in range(NUM_CLASSES)],
        label_kind="multi",
        transform=BatchTransform(mean=list(mean), std=list(std), **dict(augment)),
        train_class_counts=counts["train"],
        test_class_counts=counts["test"],
        subset_indices={s: splits[s].digits[:, 2].tolist() for s in ("train", "test")},
        info=info,
    )


def _histogram(per_image: np.ndarray, max_digits: int) -> dict[str, int]:
    """Images per number of digits, {"1": ..., ..., str(max_digits): ...}."""
    counts = np.bincount(per_image.astype(np.int64), minlength=max_digits + 1)
    return {str(k): int(counts[k]) for k in range(1, max_digits + 1)}


def _image_split(data: MultiDigitSplit) -> ImageSplit:
    return ImageSplit(torch.from_numpy(np.ascontiguousarray(data.images)),
                      torch.from_numpy(data.labels.astype(np.float32)))
