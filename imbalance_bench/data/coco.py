"""COCO 2017 as multi-label classification (Lin et al. 2014), optionally long-tailed as in COCO-MLT
(Wu et al. 2020, distribution-balanced loss).

An image's label is the set of categories with at least one instance in
`annotations/instances_{train,val}2017.json`. Crowd regions count as instances. Images with no
annotation are skipped and counted. The files are read with plain `json`, so pycocotools is not
needed. val2017 is the test split. A split holds only file paths and multi-hot targets. Its JPEGs
are decoded a batch at a time inside the loader's workers, so the 19 GB of images never sit in
memory; or, after `CocoSplit.decode_on(device)`, the workers only read them and the main process
decodes each batch on the device (imbalance_bench/data/jpeg_batch.py).

Layout under `dataset.root` (from https://cocodataset.org/#download):
    annotations/instances_train2017.json   annotations/instances_val2017.json
    train2017/*.jpg                        val2017/*.jpg

`subset_indices` hold COCO image ids. They stay valid whatever order the JSON lists its images
in, and whichever images were skipped. Each split is ordered by ascending image id.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imbalance_bench import is_int
from imbalance_bench.data.bundle import DataBundle, check_channels
from imbalance_bench.data.images import BatchTransform
from imbalance_bench.data.jpeg_batch import (
    Box,
    EncodedBatch,
    as_uint8,
    check_complete,
    crop_resize,
    decode_rgb_bytes,
    quiet_decoders,
    read_encoded,
    skip_or_raise,
)
from imbalance_bench.data.profiles import long_tail_counts
from imbalance_bench.errors import DataError

SPLIT_FOLDERS = {"train": "train2017", "test": "val2017"}
ANNOTATION_FILES = {"train": "annotations/instances_train2017.json", "test": "annotations/instances_val2017.json"}
LAYOUT_HINT = (
    "put COCO 2017 under dataset.root as annotations/instances_train2017.json, "
    "annotations/instances_val2017.json, train2017/ and val2017/ (from https://cocodataset.org/#download)"
)
MAX_LISTED_BAD_IMAGES = 20
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # what torchvision.io.decode_image reads
# Separate random streams so that a limit never changes which images the long-tailed subset holds.
LIMIT_STREAMS = {"train": 1, "test": 2}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_SHOWN = 60  # characters of a JSON value quoted in an error message


@dataclass
class CocoAnnotations:
    """One instances file reduced to classification: the annotated images, ascending image id."""

    path: Path
    category_ids: list[int]  # ascending; position = class index
    category_names: list[str]
    image_ids: np.ndarray  # (N,) int64
    file_names: list[str]
    targets: np.ndarray  # (N, C) bool: category present on the image
    skipped_no_annotation: int


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing, truncated, non-JSON or unparsable file gives a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; {LAYOUT_HINT}")
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text at byte {exc.start})") from None
    except ValueError as exc:  # an integer literal longer than Python's int-from-string limit
        raise DataError(f"{path}: not usable JSON ({str(exc).split(';')[0]})") from None
    except RecursionError:
        raise DataError(f"{path}: not usable JSON (arrays or objects nested too deeply)") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None


def _is_id(value: Any) -> bool:
    """An integer that fits int64, as the ids are stored (subset_indices, np.int64 arrays)."""
    return is_int(value) and INT64_MIN <= value <= INT64_MAX


def _shown(value: Any) -> str:
    """A JSON value as a message shows it: its repr, on one line and cut short."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def file_name_problem(name: str) -> str | None:
    """Why `name` is not a plain relative path that stays inside its image folder; None when it is.

    Checked on the name itself, so `..` or an absolute path never reaches the file system. The
    folder's own symlinks are left to the user: a COCO copy that links its images elsewhere works.
    """
    if not name or "\0" in name:
        return "it is empty or holds a NUL character"
    pure = PurePosixPath(name)
    if pure.is_absolute():
        return "it is an absolute path"
    if ".." in pure.parts:
        return "its '..' part leaves the image folder"
    return None


def _id_table(path: Path, entries: list, key: str, text_field: str) -> dict[int, str]:
    """{id: entry[text_field]} for the `key` list, checking each entry's types and unique ids."""
    table: dict[int, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not is_int(entry.get("id")) or not isinstance(entry.get(text_field), str):
            raise DataError(f"{path}: {key}[{i}] needs an integer 'id' and a string '{text_field}'")
        if not _is_id(entry["id"]):
            raise DataError(f"{path}: {key}[{i}] has id {_shown(entry['id'])}; ids must fit a 64-bit integer "
                            "(-2**63 to 2**63-1)")
        if entry["id"] in table:
            raise DataError(f"{path}: {key} id {entry['id']} appears twice")
        table[entry["id"]] = entry[text_field]
    return table


def parse_instances(path: Path, content: Any) -> CocoAnnotations:
    """Multi-hot targets from a parsed COCO instances file; checks every id and name it relies on."""
    if not isinstance(content, dict):
        raise DataError(f"{path}: not a COCO instances file (top level is a {type(content).__name__}, not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise DataError(f"{path}: not a COCO instances file (no '{key}' list)")
    categories = _id_table(path, content["categories"], "categories", "name")
    if not categories:
        raise DataError(f"{path}: the 'categories' list is empty")
    images = _id_table(path, content["images"], "images", "file_name")
    for i, entry in enumerate(content["images"]):
        problem = file_name_problem(entry["file_name"])
        if problem:
            raise DataError(f"{path}: images[{i}] (id {entry['id']}) has file_name {_shown(entry['file_name'])}: "
                            f"{problem}; a file_name must be a relative path inside the split's image folder")

    category_ids = sorted(categories)
    class_of = {cid: k for k, cid in enumerate(category_ids)}
    image_ids = np.array(sorted(images), dtype=np.int64)
    row_of = {int(iid): r for r, iid in enumerate(image_ids)}
    rows, cols = [], []
    for i, ann in enumerate(content["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}] is a {type(ann).__name__}, not an object")
        name = f"annotation {ann['id']}" if is_int(ann.get("id")) else f"annotations[{i}]"
        for field_name, known, listed in (("image_id", row_of, "images"), ("category_id", class_of, "categories")):
            value = ann.get(field_name)
            if not is_int(value) or value not in known:
                raise DataError(f"{path}: {name} refers to unknown {field_name} {_shown(value)}; "
                                f"it must be the integer id of an entry in '{listed}'")
        rows.append(row_of[ann["image_id"]])
        cols.append(class_of[ann["category_id"]])
    targets = np.zeros((len(image_ids), len(category_ids)), dtype=bool)
    targets[rows, cols] = True
    annotated = targets.any(axis=1)
    if not annotated.any():
        raise DataError(f"{path}: none of its {len(image_ids)} images has an annotation; a split needs at least one "
                        "annotated image")
    return CocoAnnotations(
        path=path,
        category_ids=category_ids,
        category_names=[categories[cid] for cid in category_ids],
        image_ids=image_ids[annotated],
        file_names=[images[int(iid)] for iid in image_ids[annotated]],
        targets=targets[annotated],
        skipped_no_annotation=int((~annotated).sum()),
    )


def read_instances(path: Path) -> CocoAnnotations:
    """Read and check one `instances_*.json`."""
    return parse_instances(path, read_json(path))


def open_problem(exc: Exception) -> str:
    """Why PIL could not open an image, from the exception it raised."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, UnidentifiedImageError):
        return "unreadable image (not a JPEG or any other known image format)"
    return f"unreadable image ({type(exc).__name__}: {exc})"


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image, from its header alone; None when it looks fine."""
    try:
        with Image.open(path) as image:
            image_format = image.format
    except Exception as exc:  # PIL raises many types on corrupt headers
        return open_problem(exc)
    if image_format not in DECODABLE_FORMATS:
        return f"unreadable image ({image_format} is not one of {', '.join(DECODABLE_FORMATS)})"
    return None


def find_bad_images(folder: Path, file_names: Sequence[str]) -> dict[int, str]:
    """{position: problem} for the listed files that are missing or have unreadable headers.

    Headers only: about 60 us a file from a warm cache, so 7 s for train2017's 118k. Threads were
    slower here, because PIL's header parsing holds the GIL.
    """
    problems = (image_problem(folder / name) for name in file_names)
    return {i: problem for i, problem in enumerate(problems) if problem is not None}


def multilabel_target_counts(
    class_counts: Sequence[int], imbalance_factor: float, head_count: int | None = None
) -> np.ndarray:
    """Per-class positives wanted in the long-tailed subset, in class order.

    The class of rank r (most positives first, ties by class index) gets
    long_tail_counts(n_max, C, IF, "exp")[r], with n_max = `head_count`, or the head class's own
    count when None (COCO-MLT of Wu et al. 2020 has a head of 1,128 images). That is capped at
    the class's own count.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    rank_order = np.argsort(-counts, kind="stable")
    n_max = int(counts[rank_order[0]]) if head_count is None else int(head_count)
    wanted = np.empty_like(counts)
    wanted[rank_order] = long_tail_counts(n_max, len(counts), imbalance_factor, "exp")
    return np.minimum(wanted, counts)


def long_tail_multilabel_indices(
    targets: np.ndarray, imbalance_factor: float, seed: int, head_count: int | None = None
) -> np.ndarray:
    """Sorted positions of a COCO-MLT-style long-tailed subset of a multi-label set (Wu et al. 2020).

    Each class gets a target from `multilabel_target_counts`. Classes are filled from the rarest
    target upward. Each fill adds random images that hold the class and were not chosen yet,
    until the class reaches its target. An image brings all of its labels with it, so a class
    that co-occurs with rarer ones can end above its target. The realised counts are
    targets[result].sum(0). With head_count None the head class keeps all of its images.
    Deterministic given `seed`.
    """
    targets = np.asarray(targets, dtype=bool)
    if targets.ndim != 2:
        raise ValueError(f"targets must be (N, C), got shape {targets.shape}")
    counts = targets.sum(axis=0)
    if len(targets) == 0 or counts.max() == 0:
        return np.zeros(0, dtype=np.int64)
    wanted = multilabel_target_counts(counts, imbalance_factor, head_count)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(targets), dtype=bool)
    have = np.zeros(targets.shape[1], dtype=np.int64)
    for cls in np.argsort(-counts, kind="stable")[::-1]:  # tail first: targets never increase with rank
        need = int(wanted[cls] - have[cls])
        if need <= 0:
            continue
        pool = np.flatnonzero(targets[:, cls] & ~chosen)
        picked = rng.choice(pool, size=min(need, len(pool)), replace=False)
        chosen[picked] = True
        have += targets[picked].sum(axis=0)
    return np.flatnonzero(chosen)


def limit_positions(count: int, limit: int | None, seed: int, stream: int) -> np.ndarray:
    """Sorted positions of a uniform random subset of at most `limit` of `count` items (smoke runs)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, stream]).choice(count, size=limit, replace=False))


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style random crop (Szegedy et al. 2015).

    The crop covers a fraction of the area uniform in `scale`. Its aspect ratio is log-uniform
    in `ratio`. After 10 draws that do not fit, it falls back to the largest centred crop whose
    aspect ratio is in `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        crop_area = area * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(()).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = round(math.sqrt(crop_area * aspect))
        h = round(math.sqrt(crop_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, max(1, round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = max(1, round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode_rgb(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB image from a file; grayscale and CMYK JPEGs are converted."""
    return decode_rgb_bytes(as_uint8(bytearray(read_encoded(path))), path)


def encoded_size(raw: bytes, path: str) -> tuple[int, int]:
    """(height, width) of an encoded image from its header, as decoding it gives them (no EXIF turn)."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
    except Exception as exc:  # PIL raises many types on corrupt headers
        raise DataError(f"{path}: {open_problem(exc)}") from None
    return height, width


class CocoSplit(torch.utils.data.Dataset):
    """COCO images as file paths with float32 multi-hot targets (N, C), decoded a batch at a time.

    Indexing takes a list of positions and returns (uint8 images (B, 3, S, S), targets (B, C)).
    Train: random resized crop to S x S. Test: the whole image resized to S x S. Both resizes
    are antialiased. Flip and normalisation are left to the BatchTransform. The split holds only
    strings and tensors, so it pickles into DataLoader workers. An image that fails to decode
    (the load-time check reads headers only) stops the run, or with `skip_unreadable` is left
    out of its batch, targets included, with a warning naming it.

    After `decode_on(device)` a list of positions gives (EncodedBatch, targets) instead: the
    workers only read the files and draw the crop boxes, and `batch_to_device` decodes the batch
    on `device` in the main process.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: torch.Tensor,
        image_size: int,
        train: bool,
        scale: tuple[float, float],
        skip_unreadable: bool = False,
    ):
        if targets.ndim != 2 or len(targets) != len(paths):
            raise ValueError(f"{len(paths)} paths but targets of shape {tuple(targets.shape)}")
        self.paths = [str(p) for p in paths]
        self.targets = targets.to(torch.float32)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.scale = (float(scale[0]), float(scale[1]))
        self.skip_unreadable = bool(skip_unreadable)
        self.decode_device: torch.device | None = None  # None: the workers decode

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def decode_on(self, device: torch.device | str) -> None:
        """Hand out encoded batches, to be decoded on `device` by the main process (see the class)."""
        self.decode_device = torch.device(device)

    def crop_box(self, height: int, width: int) -> Box | None:
        """A random train crop of a height x width image, from the global torch RNG (seeded per
        worker); None, the whole image, for test."""
        return random_resized_crop_box(height, width, self.scale) if self.train else None

    def load(self, position: int) -> torch.Tensor:
        """One image at `position`, cropped (train) or resized (test) to uint8 (3, S, S)."""
        image = decode_rgb(self.paths[position])
        return crop_resize(image, self.crop_box(image.shape[1], image.shape[2]), self.image_size)

    def __getitem__(self, positions):
        if isinstance(positions, (int, np.integer)):
            images, targets = self.decoded([int(positions)])
            return images[0], targets[0]
        if self.decode_device is None:
            return self.decoded(positions)
        return self.encoded(positions)

    def decoded(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, S, S) and their targets, decoded here (in the worker)."""
        images, kept = [], []
        with quiet_decoders():
            for position in positions:
                try:
                    images.append(self.load(int(position)))
                except DataError as exc:
                    skip_or_raise(exc, self.skip_unreadable)
                    continue
                kept.append(int(position))
        index = torch.as_tensor(kept, dtype=torch.long)
        if not images:
            return torch.zeros((0, *self.image_shape), dtype=torch.uint8), self.targets[index]
        return torch.stack(images), self.targets[index]

    def encoded(self, positions: Sequence[int]) -> tuple[EncodedBatch, torch.Tensor]:
        """The files' bytes with their crop boxes, and the targets, for decoding elsewhere.

        The boxes take the sizes from the JPEG headers and are drawn in the same order as by
        `decoded`, so the same worker seed gives the same boxes. A file that cannot be read, whose
        header cannot be, or that is cut short is handled here as `decoded` would. One whose body
        is otherwise corrupt is only found when decoding, and (with skipping) has drawn its box.
        """
        encoded, paths, boxes, kept = [], [], [], []
        for position in positions:
            path = self.paths[int(position)]
            try:
                raw = read_encoded(path)
                height, width = encoded_size(raw, path)
                check_complete(raw, path)
                boxes.append(self.crop_box(height, width))
            except DataError as exc:
                skip_or_raise(exc, self.skip_unreadable)
                continue
            encoded.append(raw)
            paths.append(path)
            kept.append(int(position))
        batch = EncodedBatch(encoded, paths, boxes, self.image_size, self.skip_unreadable)
        return batch, self.targets[torch.as_tensor(kept, dtype=torch.long)]


def missing_coco(root: Path) -> str | None:
    """None when `root` holds the COCO layout, else one line naming its first missing file or folder."""
    for split in ("train", "test"):
        if not (root / ANNOTATION_FILES[split]).is_file():
            return f"{root / ANNOTATION_FILES[split]}: file not found; {LAYOUT_HINT}"
        if not (root / SPLIT_FOLDERS[split]).is_dir():
            return f"{root / SPLIT_FOLDERS[split]}: image folder not found; {LAYOUT_HINT}"
    return None


def _check_layout(root: Path, download: bool) -> None:
    """Refuse downloads and name the first missing file or folder of the COCO layout."""
    if download:
        raise DataError(
            f"{root}: automatic download of COCO 2017 (about 19 GB) is not supported; set dataset.download=false "
            f"and {LAYOUT_HINT}"
        )
    missing = missing_coco(root)
    if missing:
        raise DataError(missing)


def _usable_images(split: str, ann: CocoAnnotations, folder: Path, bad_images: str) -> tuple[np.ndarray, list[str]]:
    """Positions into `ann` whose files look readable, and the names of those skipped."""
    bad = find_bad_images(folder, ann.file_names)
    if bad and bad_images == "error":
        first = min(bad)
        raise DataError(
            f"{folder / ann.file_names[first]}: {bad[first]} ({len(bad)} of {len(ann.file_names)} images listed in "
            f"{ann.path.name} are missing or unreadable); set dataset.bad_images=skip to skip such files"
        )
    keep = np.array([i for i in range(len(ann.file_names)) if i not in bad], dtype=np.int64)
    if len(keep) == 0:
        raise DataError(f"{folder}: none of the images listed in {ann.path} is usable for the {split} split")
    return keep, [ann.file_names[i] for i in sorted(bad)]


def build_coco(
    name: str,
    root: str,
    download: bool,
    image_size: int,
    imbalance_factor: float | None,
    head_count: int | None,
    seed: int,
    limit_train: int | None,
    limit_test: int | None,
    bad_images: str,
    augment: dict,
    mean: list[float],
    std: list[float],
) -> DataBundle:
    """COCO 2017 multi-label train (optionally long-tailed, COCO-MLT style) and val2017 as test.

    The limits draw a seeded random subset after the long-tail subsampling, from their own streams.
    """
    check_channels(name, 3, mean, std)
    root_path = Path(root).expanduser().resolve()
    _check_layout(root_path, download)
    annotations = {split: read_instances(root_path / ANNOTATION_FILES[split]) for split in ("train", "test")}
    train_ann, test_ann = annotations["train"], annotations["test"]
    if (train_ann.category_ids, train_ann.category_names) != (test_ann.category_ids, test_ann.category_names):
        raise DataError(f"{test_ann.path}: its categories differ from those of {train_ann.path}")

    positions, skipped_files = {}, {}
    for split, ann in annotations.items():
        folder = root_path / SPLIT_FOLDERS[split]
        positions[split], skipped_files[split] = _usable_images(split, ann, folder, bad_images)

    target_counts = realised_counts = None
    if imbalance_factor is not None:
        usable = train_ann.targets[positions["train"]]
        picked = long_tail_multilabel_indices(usable, imbalance_factor, seed, head_count)
        target_counts = multilabel_target_counts(usable.sum(axis=0), imbalance_factor, head_count).tolist()
        realised_counts = usable[picked].sum(axis=0).tolist()
        positions["train"] = positions["train"][picked]
    for split, limit in (("train", limit_train), ("test", limit_test)):
        positions[split] = positions[split][limit_positions(len(positions[split]), limit, seed, LIMIT_STREAMS[split])]

    splits, class_counts = {}, {}
    for split, ann in annotations.items():
        chosen = positions[split]
        folder = root_path / SPLIT_FOLDERS[split]
        targets = torch.from_numpy(ann.targets[chosen].astype(np.float32))
        splits[split] = CocoSplit(
            [str(folder / ann.file_names[i]) for i in chosen], targets, image_size, train=split == "train",
            scale=tuple(augment["scale"]), skip_unreadable=bad_images == "skip",
        )
        class_counts[split] = ann.targets[chosen].sum(axis=0).astype(int).tolist()

    return DataBundle(
        name=name,
        train=splits["train"],
        test=splits["test"],
        class_names=list(train_ann.category_names),
        label_kind="multi",
        transform=BatchTransform(mean=list(mean), std=list(std), crop_padding=0, hflip=bool(augment["hflip"])),
        train_class_counts=class_counts["train"],
        test_class_counts=class_counts["test"],
        subset_indices={split: annotations[split].image_ids[positions[split]].tolist() for split in ("train", "test")},
        info={
            "source": str(root_path),
            "annotation_files": {split: str(ann.path) for split, ann in annotations.items()},
            "image_folders": {split: str(root_path / SPLIT_FOLDERS[split]) for split in ("train", "test")},
            "category_ids": list(train_ann.category_ids),
            "subset_indices_kind": "coco_image_id",
            "skipped_no_annotation": {split: ann.skipped_no_annotation for split, ann in annotations.items()},
            "bad_images": bad_images,
            "skipped_bad_images": {split: len(names) for split, names in skipped_files.items()},
            "skipped_bad_image_files": {split: names[:MAX_LISTED_BAD_IMAGES] for split, names in skipped_files.items()},
            "imbalance_factor": imbalance_factor,
            "imbalance_type": None if imbalance_factor is None else "exp",
            "head_count": head_count,
            "long_tail_target_counts": target_counts,
            "long_tail_counts": realised_counts,
            "image_size": image_size,
            "scale": list(augment["scale"]),
            "limit_train": limit_train,
            "limit_test": limit_test,
            "subset_seed": seed,
        },
    )
