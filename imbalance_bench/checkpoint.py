"""Checkpoints: what one holds, where a run finds its own, and resuming from one exactly.

A checkpoint holds everything the rest of a run depends on: the model, optimiser, scheduler,
gradient scaler and loss state, every random-number generator (Python, NumPy, torch on the CPU
and CUDA, and the run's own shuffle and augmentation generators), the epoch records so far and
the config. A run restored from the checkpoint of epoch k therefore continues exactly as the
uninterrupted run continued after epoch k (on the CPU; on CUDA up to cuDNN's non-determinism).
Randomness inside DataLoader workers (COCO's crops) needs no state: each batch is read under a seed
derived from the run's seed, the epoch and the batch's number (data/images.py, `make_loader`).

A checkpoint holds tensors and plain values only (NumPy's RNG keys are stored as a tensor), so it
is read with torch's weights-only loader: a crafted file cannot run code when a run resumes from it.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from imbalance_bench.errors import ConfigError, DataError
from imbalance_bench.safe_pickle import NUMPY_ARRAY_GLOBALS

#: keys that may differ between the run that wrote a checkpoint and the one resuming from it (a run
#: may continue on another GPU: a sweep's job N goes to GPU N mod the number of GPUs)
RESUME_MAY_DIFFER = ("trainer.resume", "trainer.progress_bar", "trainer.num_workers", "trainer.device")
#: keys added to the config after runs were written, with the value those runs had: a saved config
#: without the key is compared as if it held this value
ADDED_KEYS = {"trainer.dtype": "float32", "metrics.logit_adjust_tau": None,
              "sampler._target_": "imbalance_bench.data.sampling.InstanceSampler", "sampler.name": "instance",
              "sampler.start_epoch": 0, "stage._target_": "imbalance_bench.decoupled.JointTraining",
              "stage.name": "none", "stage.init_from": None}
#: keys added to one option of a group (group, name) after runs of it were written, with the value they had
ADDED_OPTION_KEYS = {("loss", "ldam"): {"uniform_margin": False, "form": "ce"}}
#: the factories that conf/ named in `_target_` before each option named its class, picking the
#: implementation by `name`: a saved config with one of them and the same `name` meant the same class
OLD_FACTORY_TARGETS = ("imbalance_bench.losses.create_loss", "imbalance_bench.losses.create_reweighting",
                       "imbalance_bench.data.create_dataset")


@dataclass
class Generators:
    """The run's own random streams: the order of the train batches (on the host) and the
    crops and flips (on the training device)."""

    shuffle: torch.Generator
    augment: torch.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> "Generators":
        return cls(torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed))


def rng_state(generators: Generators) -> dict[str, Any]:
    device = generators.augment.device  # the training device
    return {
        "python": random.getstate(),
        "numpy": numpy_rng_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        # the training GPU's own stream: in a DDP run each process restores it into its own GPU
        "cuda_device": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "shuffle": generators.shuffle.get_state(),
        "augment": generators.augment.get_state(),
    }


def numpy_rng_state() -> tuple:
    """NumPy's global RNG state with its key array as a tensor, which the weights-only loader reads."""
    name, keys, *rest = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), *rest)


def set_numpy_rng_state(state: tuple) -> None:
    """Restore `numpy_rng_state()`, or the plain `np.random.get_state()` of an older checkpoint."""
    name, keys, *rest = state
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((name, keys, *rest))


def set_rng_state(state: dict[str, Any], generators: Generators) -> None:
    random.setstate(state["python"])
    set_numpy_rng_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("cuda_device") is not None and generators.augment.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], generators.augment.device)
    generators.shuffle.set_state(state["shuffle"])
    generators.augment.set_state(state["augment"])


def find_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: `trainer.resume=auto` takes the run directory's own
    `checkpoints/last.pt` when there is one, a path takes that file, false starts over."""
    choice = cfg.trainer.resume
    if choice is False:
        return None
    if choice == "auto":
        path = Path(run_dir) / "checkpoints" / "last.pt"
        return path if path.is_file() else None
    path = Path(str(choice)).expanduser()
    if not path.is_file():
        raise ConfigError(f"trainer.resume={choice} is not allowed: file not found (use auto, false or a checkpoint path)")
    return path


#: what the weights-only loader must also admit for a checkpoint written before NumPy's RNG keys
#: were stored as a tensor: NumPy's array globals (under NumPy 1's and NumPy 2's names) and the
#: uint32 dtype's class, whose state the unpickler sets, for the np.random.get_state() array in it
OLD_LAYOUT_GLOBALS = [*((obj, name) for name, obj in NUMPY_ARRAY_GLOBALS.items()), type(np.dtype(np.uint32))]


def read_checkpoint(path: Path, remedy: str = "delete it or set trainer.resume=false") -> Any:
    """A checkpoint file read with torch's weights-only loader, which builds tensors and plain values
    only (never calls what a crafted file names); a refused or unreadable file is one line ending
    in `remedy`."""
    try:
        with torch.serialization.safe_globals(OLD_LAYOUT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the weights-only loader met something it does not build
        raise DataError(f"{path}: refused: it holds objects other than tensors and plain values"
                        f"{refused_globals(path)}, and loading those could run code; {remedy}") from None
    except Exception as exc:  # truncated or not a checkpoint at all
        raise DataError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); {remedy}") from None


def load_checkpoint(path: Path, resolved_config: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint (`read_checkpoint`) and check that this run's (resolved) config wrote it."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "rng" not in checkpoint or "history" not in checkpoint:
        raise DataError(f"{path}: not an imbench checkpoint that can be resumed; delete it or set trainer.resume=false")
    differing = config_differences(checkpoint["config"], resolved_config)
    if differing:
        raise ConfigError(
            f"trainer.resume: {path} was written by another config (differs in {shown_keys(differing)}); "
            "use another run directory or trainer.resume=false"
        )
    return checkpoint


def refused_globals(path: Path) -> str:
    """` (name, ...)`: the functions and classes in the checkpoint at `path` that loading it would
    call, as far as they can be listed; empty when they cannot."""
    try:
        with torch.serialization.safe_globals(OLD_LAYOUT_GLOBALS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return ""
    return f" ({shown_keys(names)})" if names else ""


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, leaving out those in RESUME_MAY_DIFFER."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    for key, value in with_added_keys(flat_saved).items():
        if key not in flat_saved and key in flat_current:
            flat_saved[key] = value
    for key, value in list(flat_saved.items()):
        name = key.removesuffix("_target_") + "name"
        if key.endswith("_target_") and value in OLD_FACTORY_TARGETS and flat_saved.get(name) == flat_current.get(name):
            flat_saved[key] = flat_current.get(key)
    keys = sorted(set(flat_saved) | set(flat_current))
    return [k for k in keys if k not in RESUME_MAY_DIFFER and flat_saved.get(k) != flat_current.get(k)]


def with_added_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with each key added since it was written (ADDED_KEYS, and ADDED_OPTION_KEYS
    of its options) at the value it had then."""
    filled = {**ADDED_KEYS, **flat}
    for (group, option), keys in ADDED_OPTION_KEYS.items():
        if flat.get(f"{group}.name") == option:
            filled.update({f"{group}.{key}": value for key, value in keys.items() if f"{group}.{key}" not in flat})
    return filled


def shown_keys(keys: list[str], limit: int = 5) -> str:
    """The first `limit` keys, comma-separated, and how many more there are."""
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass
class EpochPosition:
    """Where an epoch stopped early (SIGTERM / SIGINT): enough to continue it exactly."""

    epoch: int  # 0-based epoch in progress
    batches_done: int
    shuffle_state: torch.Tensor  # the shuffle generator at the epoch's start: it redraws the same order
    loss_total: float  # the epoch's running loss sum and count so far
    loss_seen: int


@dataclass
class History:
    monitor: str  # the metric that picks the best epoch (trainer.monitor resolved for the label kind)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    best_epoch: int | None = None
    best_value: float = -float("inf")
    seconds: float = 0.0  # wall time of the epochs so far, resumed runs included
    finished: bool = False  # the last epoch, or trainer.max_steps, was reached


@dataclass
class TrainState:
    """Everything the rest of a run depends on, saved and restored as one (`checkpoints/last.pt`):
    the model, optimiser, scheduler, gradient scaler and loss state (DFL's learnable gamma, PLM's
    ratios and histograms), every random stream, the epoch records, how many epochs are done, and
    where in the next one the run stopped. `state_dict` and `load_state_dict` are each other's inverse."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    criterion: torch.nn.Module
    generators: Generators
    history: History
    epoch: int = 0  # epochs done
    position: EpochPosition | None = None  # where the epoch in progress stopped (SIGTERM / SIGINT), if it did

    def state_dict(self, config: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint: tensors and plain values only (read back with the weights-only loader)."""
        return {
            "epoch": self.epoch,
            "step": self.history.steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.criterion.state_dict(),
            "rng": rng_state(self.generators),
            "history": dataclasses.asdict(self.history),
            "position": None if self.position is None else dataclasses.asdict(self.position),
            "config": config,
        }

    def load_state_dict(self, checkpoint: dict[str, Any], carry_counts: bool = True) -> None:
        """Continue from `checkpoint`. The loss's epoch counters in it are the whole run's (summed over
        processes): in a DDP run rank 0 carries them on (`carry_counts`) and the others start from
        zero, so the epoch-end sum counts them once. A run stopped inside an epoch redraws that
        epoch's batch order from the shuffle state saved at its start."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.criterion.load_state_dict(checkpoint["loss"])
        if not carry_counts:
            for counter in self.criterion.epoch_counters():
                counter.zero_()
        for key, value in checkpoint["history"].items():
            setattr(self.history, key, value)
        set_rng_state(checkpoint["rng"], self.generators)
        self.epoch = int(checkpoint["epoch"])
        self.position = EpochPosition(**checkpoint["position"]) if checkpoint.get("position") is not None else None
        if self.position is not None:
            self.generators.shuffle.set_state(self.position.shuffle_state)
