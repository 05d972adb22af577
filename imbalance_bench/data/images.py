"""In-memory image splits, batch-level augmentation and their loaders.

Small datasets are held as one uint8 tensor; crop, flip and normalisation run on whole
batches on the training device, so no per-sample Python sits in the hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler


class ImageSplit(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) with integer labels (N,) or multi-hot targets (N, K).

    Indexing takes a list of positions and returns a whole batch, so a DataLoader over a
    BatchSampler hands out batches without collating single samples.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image the split hands out."""
        return tuple(self.images.shape[1:])

    def __getitem__(self, positions):
        index = torch.as_tensor(positions, dtype=torch.long)
        return self.images[index], self.targets[index]


@dataclass
class BatchTransform:
    """Random crop of the zero-padded image and horizontal flip (train only), then normalise."""

    mean: Sequence[float]
    std: Sequence[float]
    crop_padding: int = 0
    hflip: bool = False

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        if train and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, generator)
        if train and self.hflip:
            images = random_hflip(images, generator)
        mean, std = self._moments(images.device)
        return (images.float().div_(255.0) - mean) / std

    def _moments(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # made once per device: building them from lists every batch would copy (and, on a
        # GPU, synchronise) twice per step
        cache = self.__dict__.setdefault("_moment_cache", {})
        if device not in cache:
            cache[device] = tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return cache[device]


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random HxW crop of the batch zero-padded by `padding` pixels on each side.

    Same semantics as torchvision's RandomCrop(size, padding) with fill 0, for a whole batch.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def make_loader(
    split: ImageSplit,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of (uint8 images, targets); shuffled with `generator` when `shuffle`.

    A shuffled (training) pass drops a trailing batch of exactly one image: BatchNorm cannot
    train on it, and it would crash the larger backbones. With workers, their seeds (and so any
    per-image randomness in them, e.g. COCO's crops) also come from `generator`, not the global RNG.
    """
    order = RandomSampler(split, generator=generator) if shuffle else SequentialSampler(split)
    drop_last = shuffle and len(split) > 1 and len(split) % batch_size == 1
    return DataLoader(
        split,
        sampler=BatchSampler(order, batch_size=batch_size, drop_last=drop_last),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator if num_workers > 0 else None,
    )


class DeviceLoader:
    """Batches of an in-memory split copied once to `device` (uint8 images stay uint8 there).

    The same batches as `make_loader` with the same generator: one `randperm` per epoch drawn
    on the host from `generator` (as RandomSampler draws it), the same trailing-singleton rule,
    then each batch is an index into the device tensors, with no DataLoader and no host copy.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        shuffle: bool,
        device: torch.device,
        generator: torch.Generator | None = None,
    ):
        self.images = split.images.to(device)
        self.targets = split.targets.to(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        n = len(self.images)
        self.drop_last = shuffle and n > 1 and n % batch_size == 1

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device, non_blocking=True)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images.index_select(0, index), self.targets.index_select(0, index)
