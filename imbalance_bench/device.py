"""The run's device and its speed switches: which device `trainer.device` names, and which of the
`trainer.*` performance switches (autocast, channels_last, fused optimiser, CUDA graphs, cuDNN
autotuning, torch.compile, data on the device, deterministic kernels) apply there.

Every switch is a `trainer.*` key; `auto` turns it on for CUDA and off on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from imbalance_bench.config import SWITCH_KEYS
from imbalance_bench.distributed import World, check_device
from imbalance_bench.errors import ConfigError

log = logging.getLogger("imbench")


def resolve_device(choice: str, world: World = World()) -> torch.device:
    """The run's device; under torchrun, `auto` and `cuda` take cuda:LOCAL_RANK (one GPU per process)."""
    check_device(choice, world)
    if world.distributed and (choice == "cuda" or (choice == "auto" and torch.cuda.is_available())):
        choice = f"cuda:{world.local_rank}"
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={choice} is not allowed: no CUDA device is visible; use auto or cpu")
        index = int(choice.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"trainer.device={choice} is not allowed: {torch.cuda.device_count()} CUDA device(s) visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    return torch.device(choice)


def resolve_switch(value, device: torch.device) -> bool:
    """A `trainer.*` switch (validated as auto, true or false): auto is on for CUDA only."""
    return device.type == "cuda" if value == "auto" else bool(value)


@dataclass(frozen=True)
class Switches:
    """The performance switches of a run, resolved for its device (recorded in metrics.json)."""

    amp: bool
    data_on_device: bool
    decode_on_device: bool
    channels_last: bool
    fused_optimizer: bool
    cuda_graphs: bool
    cudnn_benchmark: bool
    compile: bool
    sync_every: int
    deterministic: bool = False

    @classmethod
    def resolve(cls, trainer, device: torch.device, in_memory: bool, processes: int = 1) -> "Switches":
        """Resolve every `auto`; a switch that cannot apply here falls back with a warning."""
        on = {key: resolve_switch(trainer[key], device) for key in SWITCH_KEYS}
        if trainer.dtype == "float64" and on["amp"]:
            if trainer.amp is True:
                log.warning("trainer.amp: off with trainer.dtype=float64 (autocast would compute in %s)", trainer.amp_dtype)
            on["amp"] = False
        if processes > 1:
            # a DDP step all-reduces gradients between backward and the update, outside any graph
            if trainer.cuda_graphs is True or trainer.compile is True:
                log.warning("trainer.cuda_graphs / compile: off in a multi-process (DDP) run")
            on["cuda_graphs"] = on["compile"] = False
        if on["data_on_device"] and not in_memory:
            log.warning("trainer.data_on_device=true: this dataset is read from files, so it stays on the host")
            on["data_on_device"] = False
        on["decode_on_device"] = on["decode_on_device"] and not in_memory  # nothing to decode in memory
        if device.type != "cuda":
            on["data_on_device"] = False  # already where the model is
            if on["cuda_graphs"] or on["cudnn_benchmark"] or on["compile"]:
                log.warning("trainer.cuda_graphs / cudnn_benchmark / compile need a CUDA device; off on %s", device)
            on["cuda_graphs"] = on["cudnn_benchmark"] = on["compile"] = False
        if on["cuda_graphs"] and on["amp"] and trainer.amp_dtype == "float16":
            # float16's gradient scaler reads inf checks back to the host every step: not capturable
            log.warning("trainer.cuda_graphs: off with trainer.amp_dtype=float16 (its gradient scaler syncs); use bfloat16")
            on["cuda_graphs"] = False
        if on["cuda_graphs"] and not on["fused_optimizer"]:
            log.warning("trainer.cuda_graphs: off with trainer.fused_optimizer=false (the graph needs the fused step)")
            on["cuda_graphs"] = False
        deterministic = bool(trainer.deterministic)
        if deterministic and on["cudnn_benchmark"]:
            if trainer.cudnn_benchmark is True:
                log.warning("trainer.cudnn_benchmark: off with trainer.deterministic=true (autotuning picks kernels by timing)")
            on["cudnn_benchmark"] = False
        sync_every = trainer.sync_every
        if sync_every == "auto":
            sync_every = 50 if device.type == "cuda" else 1
        return cls(sync_every=int(sync_every), deterministic=deterministic, **on)

    def apply(self) -> None:
        """Set the process-wide backend flags these switches stand for (each run sets all of them,
        so one run's choice never leaks into the next run of the same process).

        Deterministic mode (PyTorch's reproducibility notes): deterministic algorithms only, cuDNN
        without autotuning, and cuBLAS with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when
        cuBLAS starts, so set before the model's first matmul). An op with no deterministic CUDA
        kernel warns instead of stopping the run."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.deterministic
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
