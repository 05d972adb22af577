"""Building a run from its validated config: the data, the device's speed switches, the loss and
its re-weighting, the model, the optimiser and scheduler, and the batches. Each builder reads its
group's config and what it needs of the others; `train.py` calls them in that order.
"""

from __future__ import annotations

import inspect
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from imbalance_bench.data import DataBundle
from imbalance_bench.data.images import DeviceLoader, ImageSplit, make_loader, split_part
from imbalance_bench.data.sampling import TrainDraws
from imbalance_bench.device import Switches
from imbalance_bench.distributed import World
from imbalance_bench.errors import DataError
from imbalance_bench.losses import ClassificationLoss, Reweighting
from imbalance_bench.models import classifier_of, use_normed_classifier
from imbalance_bench.models.sync_batchnorm import synchronize_batchnorm
from imbalance_bench.runfiles import write_json
from imbalance_bench.step import ModelWithLoss, Precision
from imbalance_bench.targets import build as build_target

log = logging.getLogger("imbench")


@dataclass
class RunContext:
    """What the loop and the outputs read of one run besides its train state: the validated config
    and its resolved form, the data, the device with its speed switches, the run directory, and the
    process topology (a single process, or this process's place under torchrun)."""

    cfg: DictConfig
    config: dict[str, Any]  # resolved: what checkpoints and metrics.json record
    data: DataBundle
    device: torch.device
    switches: Switches
    run_dir: Path
    world: World
    stage: Any  # decoupled.JointTraining, or a second stage (conf/stage/)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

def build_data(cfg: DictConfig, run_dir: Path, world: World) -> DataBundle:
    """Load the dataset and record its per-class counts and the exact subset drawn."""
    data: DataBundle = build_target(cfg.dataset, "dataset", _convert_="all").load()
    if world.distributed and len(data.test) < world.size:
        raise DataError(f"dataset={cfg.dataset.name}: the test split holds {len(data.test)} image(s), "
                        f"fewer than the {world.size} processes that evaluate it; raise dataset.limit_test")
    if not world.is_main:
        return data
    write_json(run_dir / "dataset_stats.json", data.stats())
    write_json(run_dir / "subset_indices.json", data.subset_indices)
    log.info(
        "%s: %d train / %d test images, %d classes, train counts %d..%d",
        data.name,
        len(data.train),
        len(data.test),
        data.num_classes,
        max(data.train_class_counts),
        min(data.train_class_counts),
    )
    return data

def resolve_switches(cfg: DictConfig, device: torch.device, data: DataBundle, world: World) -> Switches:
    """The `trainer.*` performance switches for this device and dataset (auto = on for CUDA)."""
    switches = Switches.resolve(cfg.trainer, device, in_memory=isinstance(data.train, ImageSplit),
                                processes=world.size)
    switches.apply()
    on = [name for name, value in vars(switches).items() if value is True]
    log.info("speed switches on %s: %s", device, ", ".join(on) or "none")
    return switches

def build_model(
    cfg: DictConfig, data: DataBundle, criterion: ClassificationLoss, device: torch.device, channels_last: bool,
    world: World,
) -> torch.nn.Module:
    """The backbone sized to the dataset, with the head the loss asks for, its bias set to the loss's
    prior; in a DDP run its BatchNorm layers normalise over the whole global batch."""
    model = build_target(cfg.model, "model", num_classes=data.num_classes, in_chans=data.in_chans)
    if criterion.normalized_classifier:
        use_normed_classifier(model)
    init_classifier_bias(model, criterion, data.num_classes)
    if world.distributed:
        model = synchronize_batchnorm(model, device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2f M parameters on %s", cfg.model.name, n_params / 1e6, device)
    model = model.to(device=device, dtype=getattr(torch, cfg.trainer.dtype))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model

def build_loss(cfg: DictConfig, data: DataBundle, device: torch.device) -> tuple[ClassificationLoss, Reweighting]:
    """The loss, fitted to the train split's class counts, and the class re-weighting."""
    criterion: ClassificationLoss = build_target(cfg.loss, "loss")  # pre-flight checked it suits the data
    criterion.prepare(data.train_class_counts, len(data.train))
    reweighting: Reweighting = build_target(cfg.reweight, "reweight")
    return criterion.to(device), reweighting

def init_classifier_bias(model: torch.nn.Module, criterion: ClassificationLoss, num_classes: int) -> None:
    bias = criterion.classifier_bias(num_classes)
    if bias is not None and classifier_of(model).bias is not None:  # a cosine head has no bias
        with torch.no_grad():
            classifier_of(model).bias.fill_(bias)

def build_optimizer(cfg: DictConfig, model: torch.nn.Module, criterion: ClassificationLoss, switches: Switches):
    """The optimiser over the model's trainable parameters and any learnable loss parameter (DFL's gamma), the latter
    without weight decay, which would pull it toward 0 rather than where the loss wants it.
    With `trainer.fused_optimizer` the update is one fused kernel (and capturable in a CUDA graph)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]  # a decoupled stage freezes some
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    factory = build_target(cfg.optimizer, "optimizer")
    options = inspect.signature(getattr(factory, "func", factory)).parameters
    extra = {}
    if switches.fused_optimizer and "fused" in options:
        extra["fused"] = True
    if switches.cuda_graphs and "capturable" in options:
        extra["capturable"] = True  # Adam(W) keeps its step count on the device
    optimizer = factory(params=groups, **extra)
    scheduler = build_target(cfg.scheduler, "scheduler")(optimizer=optimizer, total_epochs=cfg.trainer.epochs)
    return optimizer, scheduler

def build_loaders(
    cfg, data: DataBundle, device: torch.device, switches: Switches, shuffle_gen: torch.Generator,
    world: World,
):
    """Train batches, drawn by the `sampler` from `shuffle_gen`, and test batches: from
    device-resident copies of an in-memory dataset (`trainer.data_on_device`), else through a
    DataLoader; both give the same batches. In a DDP run each process draws the same global
    batches and gets its part of each, and its block of the test split."""
    trainer = cfg.trainer
    draws = TrainDraws(build_target(cfg.sampler, "sampler"), data.train, trainer.epochs, shuffle_gen, data.class_names)
    if switches.decode_on_device:
        data.train.decode_on(device)  # workers read bytes; batch_to_device decodes (COCO)
    if switches.data_on_device:
        train = DeviceLoader(data.train, trainer.batch_size, shuffle=True, device=device, world=world, draws=draws)
    else:
        train = make_loader(data.train, trainer.batch_size, shuffle=True, num_workers=trainer.num_workers,
                            pin_memory=device.type == "cuda", world=world, seed=cfg.seed, draws=draws)
    return train, build_test_loader(cfg, data, device, switches, world)

def build_test_loader(cfg, data: DataBundle, device: torch.device, switches: Switches, world: World):
    """The test batches (this process's block of the split in a DDP run), as `build_loaders` makes them."""
    trainer = cfg.trainer
    if switches.decode_on_device:
        data.test.decode_on(device)
    test = data.test
    if world.distributed:
        rows = world.rows(len(test))
        test = split_part(test, rows.start, rows.stop)
    if switches.data_on_device:
        return DeviceLoader(test, trainer.eval_batch_size, shuffle=False, device=device)
    return make_loader(test, trainer.eval_batch_size, shuffle=False, num_workers=trainer.num_workers,
                       pin_memory=device.type == "cuda")

def wrap_for_ddp(model, criterion, precision: Precision, device: torch.device):
    """DistributedDataParallel around the model and its loss (step.ModelWithLoss). Buffers are not
    broadcast from rank 0: BatchNorm's running statistics are the same on every process already
    (synchronised BatchNorm), and PLM's histograms count each process's own rows."""
    from torch.nn.parallel import DistributedDataParallel

    # newer torch names the switch forward_sync_buffers (buffers are still synced once, at start:
    # they are equal then anyway)
    no_sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    return DistributedDataParallel(
        ModelWithLoss(model, criterion, precision),
        device_ids=[device.index] if device.type == "cuda" else None,
        **({"forward_sync_buffers": False} if no_sync else {"broadcast_buffers": False}),
    )
