"""In-memory image splits, batch-level augmentation and their loaders.

Small datasets are held as one uint8 tensor; crop, flip and normalisation run on whole
batches on the training device, so no per-sample Python sits in the hot loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from imbalance_bench.data.sampling import InstanceSampler, TrainDraws
from imbalance_bench.distributed import World, batch_draw


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

    def offsets(count: int) -> torch.Tensor:
        return torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=images.device)

    dy = batch_draw(offsets, n)
    dx = batch_draw(offsets, n)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = batch_draw(lambda count: torch.rand(count, generator=generator, device=images.device), images.shape[0]) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class SplitPart(torch.utils.data.Dataset):
    """Rows [start, stop) of a batch-indexed split (a file-backed one such as COCO's): what one
    process of several evaluates."""

    def __init__(self, split, start: int, stop: int):
        self.split, self.start, self.stop = split, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.split.image_shape

    def __getitem__(self, positions):
        return self.split[[self.start + int(p) for p in positions]]


def split_part(split, start: int, stop: int):
    """Rows [start, stop) of `split`; an in-memory split stays an ImageSplit (so it can live on the device)."""
    if isinstance(split, ImageSplit):
        return ImageSplit(split.images[start:stop], split.targets[start:stop])
    return SplitPart(split, start, stop)


def drops_trailing_batch(count: int, batch_size: int, shuffle: bool, processes: int = 1) -> bool:
    """Whether a shuffled (training) pass drops its short trailing batch: when it holds a single
    image (BatchNorm cannot train on one; it would crash the larger backbones), or fewer images
    than there are processes (one would get none)."""
    trailing = count % batch_size
    return shuffle and count > 1 and 0 < trailing < max(2, processes)


class ShardedBatchSampler:
    """This process's rows (`World.rows`) of each batch of `batches`: every process draws the same
    global batches from the same generator and keeps its own part."""

    def __init__(self, batches: BatchSampler, world: World):
        self.batches, self.world = batches, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            rows = self.world.rows(len(batch))
            yield batch[rows.start : rows.stop]


class EpochOrder(torch.utils.data.Sampler):
    """The order of an epoch (`TrainDraws.order`), drawn once per epoch (`draw`) and replayed by every
    pass of that epoch; before the first `draw`, each pass draws its own.

    A DataLoader starts a pass more than once per epoch (tqdm asks for an iterator twice), and
    with workers it draws ahead as far as it prefetches, so an order drawn per pass would take
    from the generator an amount that depends on `num_workers`. `draw` takes a whole epoch's
    order, exactly what a worker-less epoch takes."""

    def __init__(self, draws: TrainDraws):
        self.draws = draws
        self.epoch = 0
        self.order: list[int] | None = None

    def __len__(self) -> int:
        return self.draws.size

    def draw(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = self.draws.order(epoch).tolist()

    def __iter__(self):
        return iter(self.draws.order(self.epoch).tolist() if self.order is None else self.order)

    def class_draws(self, images: int) -> list[int]:
        """Labels per class among the first `images` of the drawn order (every process's rows)."""
        return self.draws.per_class(torch.tensor(self.order[:images], dtype=torch.long))


def worker_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """The seed under which a DataLoader worker reads batch number `batch` of `epoch` for process
    `rank` (whose part of the batch holds other images than the other processes' parts). It
    depends on these alone, so the number of workers, which worker reads the batch and where the
    run was resumed change nothing."""
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, np.uint64)[0])


class SeededBatches:
    """The batches of `batches`, each paired with its `worker_seed` for `epoch`."""

    def __init__(self, batches, seed: int, rank: int = 0):
        self.batches, self.seed, self.rank = batches, seed, rank
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for number, positions in enumerate(self.batches):
            yield worker_seed(self.seed, self.epoch, number, self.rank), positions


class SeededReads(torch.utils.data.Dataset):
    """`split` as a DataLoader worker reads it: the worker's torch, NumPy and Python RNGs are set
    from the batch's seed before the batch is read (COCO draws its crops from torch's)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item):
        seed, positions = item
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed & 0xFFFF_FFFF)
        random.seed(seed)
        return self.split[positions]


class EpochLoader(DataLoader):
    """A DataLoader that is told when an epoch starts (`begin_epoch`)."""

    def __init__(self, dataset, order: EpochOrder | None, seeds: SeededBatches | None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.order, self.seeds = order, seeds

    def begin_epoch(self, epoch: int) -> None:
        """Call before each epoch's pass: draws its order and sets its workers' seeds."""
        if self.order is not None:
            self.order.draw(epoch)
        if self.seeds is not None:
            self.seeds.epoch = epoch


def make_loader(
    split: ImageSplit,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    world: World = World(),
    seed: int = 0,
    draws: TrainDraws | None = None,
) -> EpochLoader:
    """Batches of (uint8 images, targets); shuffled with `generator` when `shuffle`; with several
    processes, this process's part of each global batch of `batch_size`.

    See `drops_trailing_batch` for the trailing batch of a shuffled pass. `generator` gives the
    order (`EpochOrder`) and nothing else, so the order is the same for any `num_workers`.
    Workers read each batch under `worker_seed(seed, epoch, batch number, rank)` (the epoch from
    `begin_epoch`), so any randomness in them (COCO's crops) is the same for any number of
    workers and after a resume, mid-epoch included. Since every batch re-seeds its worker, the
    workers persist across epochs (no start-up each epoch): their RNGs' history does not matter.
    Without workers the readers draw from this process's global RNG, which a checkpoint holds.
    """
    if shuffle and draws is None:
        draws = TrainDraws(InstanceSampler(), split, epochs=1, generator=generator)
    order = EpochOrder(draws) if shuffle else None
    drop_last = drops_trailing_batch(len(split), batch_size, shuffle, world.size)
    batches = BatchSampler(SequentialSampler(split) if order is None else order, batch_size=batch_size,
                           drop_last=drop_last)
    if world.distributed:
        batches = ShardedBatchSampler(batches, world)
    if num_workers == 0:
        # the DataLoader draws an (unused) base seed from the global RNG per pass, as it always did
        return EpochLoader(split, order, None, sampler=batches, batch_size=None, pin_memory=pin_memory)
    seeds = SeededBatches(batches, seed, world.rank)
    return EpochLoader(
        SeededReads(split), order, seeds,
        sampler=seeds,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=True,
        # its base seed is overridden by every batch's: drawn from a private generator, it takes
        # nothing from the shuffle stream or the global RNG
        generator=torch.Generator(),
    )


class DeviceLoader:
    """Batches of an in-memory split copied once to `device` (uint8 images stay uint8 there).

    The same batches as `make_loader` with the same generator (and `draws`): the epoch's order
    drawn on the host, the same trailing-batch rule and the same part of each batch per process,
    then each batch is an index into the device tensors, with no DataLoader and no host copy.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        shuffle: bool,
        device: torch.device,
        generator: torch.Generator | None = None,
        world: World = World(),
        draws: TrainDraws | None = None,
    ):
        self.images = split.images.to(device)
        self.targets = split.targets.to(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.world = world
        self.drop_last = drops_trailing_batch(len(self.images), batch_size, shuffle, world.size)
        if shuffle and draws is None:
            draws = TrainDraws(InstanceSampler(), split, epochs=1, generator=generator)
        self.order = EpochOrder(draws) if shuffle else None

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def begin_epoch(self, epoch: int) -> None:
        """Call before each epoch's pass: draws its order (when shuffling)."""
        if self.order is not None:
            self.order.draw(epoch)

    def __iter__(self):
        n = len(self.images)
        order = torch.tensor(list(self.order), dtype=torch.long) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device, non_blocking=True)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            rows = self.world.rows(len(index))
            index = index[rows.start : rows.stop]
            yield self.images.index_select(0, index), self.targets.index_select(0, index)
