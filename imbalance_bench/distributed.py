"""Several processes training one run (DistributedDataParallel under torchrun).

Each global batch (`trainer.batch_size` images) is cut into contiguous, nearly equal parts, one
per process (`split_rows`). Every random draw made per image of a batch (crops, flips, PLM's
masks) is drawn for the whole global batch on every process, which then keeps its own rows
(`batch_draw`), and each process's mean loss is weighted by its share of the batch before DDP
averages the gradients. With BatchNorm synchronised across processes, N processes therefore
take the optimiser steps one process would take on the same global batch, up to the order of
floating-point sums (the equivalence test checks this with gloo on the CPU).

A single process is a `World` of size 1, whose collectives do nothing; nothing else changes.
torch is imported where a collective or a device check needs it, so that reading the world from the
environment (pre-flight, error lines) costs no torch import.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from imbalance_bench.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Rows:
    """The rows [start, stop) of a global batch of `total` images that this process holds."""

    start: int
    stop: int
    total: int


def split_rows(total: int, rank: int, size: int) -> Rows:
    """Process `rank`'s part of `total` rows: contiguous, the first `total % size` parts one longer
    (as torch.tensor_split cuts them), so the parts in rank order are the rows in their order."""
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return Rows(start, start + base + (rank < extra), total)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run: its `rank` of `size`, and
    `local_rank` on its machine (the GPU it uses)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory; the others only train."""
        return self.rank == 0

    def rows(self, total: int) -> Rows:
        return split_rows(total, self.rank, self.size)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the processes, in place."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max(self, value: int) -> int:
        """The largest of the processes' `value`s, on every process. A CPU tensor (gloo, also next
        to NCCL), so asking every step does not make a GPU wait."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([int(value)], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's rows of `tensor` (the same trailing shape on each), concatenated in rank order."""
        if not self.distributed:
            return tensor
        import torch
        import torch.distributed as dist

        count = torch.tensor([len(tensor)], device=tensor.device)
        counts = [torch.zeros_like(count) for _ in range(self.size)]
        dist.all_gather(counts, count)
        lengths = torch.cat(counts).tolist()
        padded = tensor.new_zeros((max(lengths), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:length] for part, length in zip(parts, lengths)])

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds and caches a dataset), then the others. If rank 0
        fails in it, it exits without the barrier, and torchrun stops the processes waiting there."""
        if self.distributed and not self.is_main:
            self.barrier()
        yield
        if self.distributed and self.is_main:
            self.barrier()


def check_ddp(cfg, world: World) -> None:
    """What a config needs in a DDP run, checked by every process before any joins the group (they
    all see the same config and machine, so they all fail alike and rank 0 says why): one GPU per
    process on a machine, and at least one image of each batch per process."""
    if not world.distributed:
        return
    import torch

    check_device(str(cfg.trainer.device), world)
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.trainer.device in ("auto", "cuda") and gpus and per_machine > gpus:
        raise ConfigError(f"torchrun --nproc_per_node={per_machine} is not allowed here: {gpus} CUDA device(s) "
                          "visible, one per process; start at most that many processes per machine")
    if cfg.trainer.batch_size < world.size:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is not allowed with {world.size} processes: "
                          "each process needs at least one image of every batch (the batch is the global one)")


def check_device(choice: str, world: World) -> None:
    """`trainer.device` in a DDP run: each process takes its own GPU (cuda:LOCAL_RANK), so a fixed
    cuda:N is refused."""
    if world.distributed and choice.startswith("cuda:"):
        raise ConfigError(f"trainer.device={choice} is not allowed under torchrun: each process takes "
                          "cuda:LOCAL_RANK; use auto, cuda or cpu")


def world_from_env() -> World:
    """The world torchrun describes in the environment (size 1 without torchrun)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def _joined() -> bool:
    """Whether this process has joined a process group (never, when torch was not even imported)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def current_world() -> World:
    """The world of this process once `init_world` has joined the process group, else a single process."""
    return world_from_env() if _joined() else World()


def init_world() -> World:
    """Join the process group torchrun started (gloo for CPU tensors, NCCL for CUDA ones)."""
    world = world_from_env()
    if world.distributed and not _joined():
        import torch
        import torch.distributed as dist

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
    return world


def close_world() -> None:
    if _joined():
        sys.modules["torch.distributed"].destroy_process_group()


# ------------------------------------------------------------------ per-image random draws


_BATCH_ROWS: ContextVar[Rows | None] = ContextVar("batch_rows", default=None)


@contextmanager
def global_batch_rows(rows: Rows | None) -> Iterator[None]:
    """While the block runs, per-image draws (`batch_draw`) are made for the whole global batch and
    sliced to `rows`; None (one process) draws for the batch at hand."""
    token = _BATCH_ROWS.set(rows)
    try:
        yield
    finally:
        _BATCH_ROWS.reset(token)


def batch_draw(draw: Callable[[int], torch.Tensor], count: int) -> torch.Tensor:
    """`draw(n)` (random values for n images, first dimension n) for the `count` images of this
    process's part of the batch: the whole global batch is drawn, so the random streams of every
    process stay in step and each image gets the value it would get in one process."""
    rows = _BATCH_ROWS.get()
    if rows is None:
        return draw(count)
    return draw(rows.total)[rows.start : rows.start + count]
