"""The training loop: build data, model, loss and optimiser from the config, fit, evaluate, write.

One loop serves every dataset: integer labels and multi-hot targets differ only in the loss
and the metrics, which read the label kind from the data bundle.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from imbalance_bench.checkpoint import (
    EpochPosition,
    Generators,
    config_differences,
    find_checkpoint,
    load_checkpoint,
    rng_state,
    set_rng_state,
    shown_keys,
)
from imbalance_bench.config import resolve_monitor
from imbalance_bench.data import DataBundle
from imbalance_bench.data.images import DeviceLoader, ImageSplit, make_loader, split_part
from imbalance_bench.data.jpeg_batch import batch_to_device
from imbalance_bench.device import Switches, resolve_device
from imbalance_bench.distributed import World, current_world, global_batch_rows
from imbalance_bench.errors import ConfigError, DataError, ImbenchError, ProcessError
from imbalance_bench.losses import ClassificationLoss, Reweighting
from imbalance_bench.metrics import is_scalar_metric, multi_label_metrics, single_label_metrics
from imbalance_bench.models import classifier_of, use_normed_classifier
from imbalance_bench.models.sync_batchnorm import synchronize_batchnorm
from imbalance_bench.rundir import check_writable, claimed, remove_leftovers, write_hydra_record
from imbalance_bench.runfiles import append_csv_row, save_checkpoint, write_json
from imbalance_bench.signals import Interrupted, StopRequest, set_stage
from imbalance_bench.step import (
    ModelWithLoss, Precision, TrainStep, current_lr, model_input, to_memory_format, upcast,
)
from imbalance_bench.summary import describe_run, format_summary

log = logging.getLogger("imbench")

METRICS_SCHEMA_VERSION = 1


@dataclass
class JobResult:
    """What one call of `run_job` did, and the run's metrics.json record."""

    outcome: str  # "trained" (from scratch), "resumed" (from a checkpoint) or "complete" (already done: nothing run)
    metrics: dict[str, Any]


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate one configuration; write its results into `run_dir` and return them."""
    return run_job(cfg, run_dir).metrics


def run_job(cfg: DictConfig, run_dir: str | Path) -> JobResult:
    """`run`, saying whether the run was trained, resumed or found complete already.

    The run directory is this process's for the whole run (a second process in it is refused). One
    whose metrics.json holds a completed run of this config is left as it is (re-running a sweep skips
    its finished jobs); one with a checkpoint continues from it; a run that is refused (another
    config's results, a checkpoint of another config, a folder it cannot write) changes nothing there.
    Under torchrun every process runs this with the same `run_dir`; only rank 0 writes there.

    `cfg` is a validated config: `imbench` checks every job of the command (cli.preflight: ranges,
    combinations) before any starts, and this trusts it; it is resolved here, once."""
    world = current_world()
    run_dir = Path(run_dir)
    check_writable(run_dir, run_dir_key())  # Hydra has made it already; a direct call of `run` may not have
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved_config = OmegaConf.to_container(cfg, resolve=True)
    with claimed(run_dir, world) as lock:
        done = completed_metrics(run_dir, resolved_config, cfg.trainer.resume)
        if done is not None:
            log.info("%s: already complete (metrics.json of this config); nothing to run\n%s", run_dir,
                     format_summary(done))
            return JobResult("complete", done)
        checkpoint_path = find_checkpoint(cfg, run_dir)
        checkpoint = load_checkpoint(checkpoint_path, resolved_config) if checkpoint_path else None  # before any data
        if world.is_main:
            lock.announce()
            remove_leftovers(run_dir)
            if HydraConfig.initialized():
                write_hydra_record(run_dir, cfg)
        metrics = train_and_write(cfg, run_dir, resolved_config, checkpoint, world)
    return JobResult("trained" if checkpoint is None else "resumed", metrics)


def run_dir_key() -> str:
    """The config key that chose the run directory, for messages about it."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return "hydra.sweep.dir"
    return "hydra.run.dir"


def train_and_write(cfg: DictConfig, run_dir: Path, resolved_config: dict[str, Any],
                    checkpoint: dict[str, Any] | None, world: World) -> dict[str, Any]:
    """Build, fit (from `checkpoint` when resuming), evaluate and write metrics.json; returns its record."""
    log.info("%s", describe_run(resolved_config))
    set_stage("reading the data")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device, world)

    with world.main_first():  # rank 0 writes any dataset cache (MultiMNIST) before the others read it
        data = build_data(cfg, run_dir, world)
    switches = resolve_switches(cfg, device, data, world)
    criterion, reweighting = build_loss(cfg, data, device)
    model = build_model(cfg, data, criterion, device, switches.channels_last, world)
    optimizer, scheduler = build_optimizer(cfg, model, criterion, switches)

    history = History(monitor=resolve_monitor(cfg.trainer.monitor, data.label_kind))
    try:
        fit(cfg, data, model, criterion, reweighting, optimizer, scheduler, device, switches, run_dir, history,
            resolved_config, checkpoint, world)
    except TrainingDiverged as exc:
        # the checkpoints hold the last good epoch (the diverged one never reaches them)
        if world.is_main:
            write_json(run_dir / "metrics.json",
                       summarize(cfg, resolved_config, data, history, device, switches, world, error=str(exc)))
        world.barrier()  # every process saw the same losses; none exits before rank 0 has written
        raise
    set_stage("writing the results")
    metrics = summarize(cfg, resolved_config, data, history, device, switches, world)
    if world.is_main:
        write_json(run_dir / "metrics.json", metrics)
        log.info("results in %s\n%s", run_dir, format_summary(metrics))
    return metrics


def completed_metrics(run_dir: Path, resolved_config: dict[str, Any], resume) -> dict[str, Any] | None:
    """The metrics.json record of `run_dir` when it holds a completed run of this config (and
    `trainer.resume` is not false); a completed run of another config is refused, so that it is
    never overwritten by accident."""
    path = run_dir / "metrics.json"
    if resume is False or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable; the run starts again and rewrites it", path)
        return None
    if not isinstance(metrics, dict) or metrics.get("status") != "completed" or "config" not in metrics:
        return None  # diverged, or written before metrics.json held its config: the checkpoint decides
    differing = config_differences(metrics["config"], resolved_config)
    if differing:
        raise ConfigError(
            f"{path} holds a completed run of another config (differs in {shown_keys(differing)}); "
            "use another run directory, or trainer.resume=false to train this one over it"
        )
    return metrics


# ------------------------------------------------------------------ build


def instantiate(node, **kwargs):
    """Hydra's instantiate, but a user error raised inside the target surfaces as itself."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ImbenchError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(cfg: DictConfig, run_dir: Path, world: World = World()) -> DataBundle:
    """Load the dataset and record its per-class counts and the exact subset drawn."""
    data: DataBundle = instantiate(cfg.dataset, _convert_="all")
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


def resolve_switches(cfg: DictConfig, device: torch.device, data: DataBundle, world: World = World()) -> Switches:
    """The `trainer.*` performance switches for this device and dataset (auto = on for CUDA)."""
    switches = Switches.resolve(cfg.trainer, device, in_memory=isinstance(data.train, ImageSplit),
                                processes=world.size)
    switches.apply()
    on = [name for name, value in vars(switches).items() if value is True]
    log.info("speed switches on %s: %s", device, ", ".join(on) or "none")
    return switches


def build_model(
    cfg: DictConfig, data: DataBundle, criterion: ClassificationLoss, device: torch.device, channels_last: bool = False,
    world: World = World(),
) -> torch.nn.Module:
    """The backbone sized to the dataset, with the head the loss asks for, its bias set to the loss's
    prior; in a DDP run its BatchNorm layers normalise over the whole global batch."""
    model = instantiate(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans)
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
    criterion: ClassificationLoss = instantiate(cfg.loss)
    if data.label_kind not in criterion.label_kinds:
        raise ConfigError(
            f"loss={cfg.loss.name} is not allowed with dataset={cfg.dataset.name} ({data.label_kind}-label); "
            f"it supports {', '.join(sorted(criterion.label_kinds))}-label data"
        )
    criterion.prepare(data.train_class_counts, len(data.train))
    reweighting: Reweighting = instantiate(cfg.reweight)
    return criterion.to(device), reweighting


def init_classifier_bias(model: torch.nn.Module, criterion: ClassificationLoss, num_classes: int) -> None:
    bias = criterion.classifier_bias(num_classes)
    if bias is not None and classifier_of(model).bias is not None:  # a cosine head has no bias
        with torch.no_grad():
            classifier_of(model).bias.fill_(bias)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, criterion: ClassificationLoss, switches: Switches):
    """The optimiser over the model and any learnable loss parameter (DFL's gamma), the latter
    without weight decay, which would pull it toward 0 rather than where the loss wants it.
    With `trainer.fused_optimizer` the update is one fused kernel (and capturable in a CUDA graph)."""
    groups = [{"params": list(model.parameters())}]
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    factory = instantiate(cfg.optimizer)
    options = inspect.signature(getattr(factory, "func", factory)).parameters
    extra = {}
    if switches.fused_optimizer and "fused" in options:
        extra["fused"] = True
    if switches.cuda_graphs and "capturable" in options:
        extra["capturable"] = True  # Adam(W) keeps its step count on the device
    optimizer = factory(params=groups, **extra)
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_epochs=cfg.trainer.epochs)
    return optimizer, scheduler


# ------------------------------------------------------------------ fit


@dataclass
class History:
    monitor: str  # the metric that picks the best epoch (trainer.monitor resolved for the label kind)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    best_epoch: int | None = None
    best_value: float = -float("inf")
    seconds: float = 0.0  # wall time of the epochs so far, resumed runs included
    finished: bool = False  # the last epoch, or trainer.max_steps, was reached


def fit(
    cfg, data, model, criterion, reweighting, optimizer, scheduler, device, switches: Switches, run_dir: Path,
    history: History, resolved_config: dict[str, Any], checkpoint: dict[str, Any] | None = None,
    world: World = World(),
) -> History:
    """Train for `trainer.epochs` (or until `trainer.max_steps`), evaluating and checkpointing each
    epoch; from `checkpoint`'s epoch on when resuming. In a DDP run every process goes through the
    same steps on its part of each batch; rank 0 alone writes the run directory."""
    trainer = cfg.trainer
    generators = Generators.seeded(cfg.seed, device)
    train_loader, test_loader = build_loaders(cfg, data, device, switches, generators.shuffle, world)
    precision = Precision(device, switches.amp, trainer.amp_dtype)
    start_epoch, position = 0, None
    if checkpoint is not None:
        start_epoch = restore(checkpoint, model, optimizer, scheduler, precision.scaler, criterion, generators, history,
                              world)
        if checkpoint.get("position") is not None:  # stopped inside that epoch: redraw its batch order
            position = EpochPosition(**checkpoint["position"])
            generators.shuffle.set_state(position.shuffle_state)
    compiled = torch.compile(model) if switches.compile else None
    train_step = TrainStep(
        model, criterion, optimizer, precision, switches.channels_last, switches.cuda_graphs, compiled_model=compiled,
        ddp_module=wrap_for_ddp(model, criterion, precision, device) if world.distributed else None,
    )
    writer = None
    if world.is_main:
        writer = tensorboard_writer(run_dir, purge_step=start_epoch + 1 if checkpoint is not None else None)
        rewrite_summary(run_dir, history.epochs)  # a resumed run keeps the rows of its checkpoint's epochs only

    def save_last(epoch_done: int, position: EpochPosition | None = None) -> Path:
        path = run_dir / "checkpoints" / "last.pt"
        if not world.is_main:
            return path
        save_checkpoint(path, {
            "epoch": epoch_done,
            "step": history.steps,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict(),
            "loss": criterion.state_dict(),  # DFL's learnable gamma, PLM's ratios and histograms
            "rng": rng_state(generators),
            "history": dataclasses.asdict(history),
            "position": None if position is None else dataclasses.asdict(position),
            "config": resolved_config,
        })
        return path

    def interrupted(where: str, path: Path) -> Interrupted:
        return Interrupted(f"stopped by {stop_request.name} after {where}; checkpoint {path}; "
                           "run the same command again to resume", stop_request.signal)

    with StopRequest(escalate=not world.distributed) as stop_request:
        for epoch in range(start_epoch, trainer.epochs):
            if history.finished:
                break
            epoch_started = time.perf_counter()
            resume_at = position if position is not None and position.epoch == epoch else None
            shuffle_state = resume_at.shuffle_state if resume_at else generators.shuffle.get_state()
            weights = reweighting.weights_for_epoch(epoch, data.train_class_counts)
            weights = None if weights is None else weights.to(device)
            lr = current_lr(optimizer)
            train_loader.begin_epoch(epoch)  # after shuffle_state: draws the epoch's order
            result = train_one_epoch(
                cfg, data, model, criterion, weights, train_loader, train_step, generators.augment, epoch,
                history.steps, device, switches.sync_every, resume_at, stop_request, world,
            )
            history.steps = result.step
            if result.interrupted:
                history.seconds += time.perf_counter() - epoch_started
                for counter in criterion.epoch_counters():  # the checkpoint holds the whole run's counts
                    world.all_reduce_sum(counter)
                path = save_last(epoch, EpochPosition(epoch, result.batches_done, shuffle_state, result.loss_total,
                                                      result.images))
                world.barrier()  # no process exits (and gets its peers stopped) before the checkpoint is written
                raise interrupted(f"step {result.step} (epoch {epoch + 1})", path)
            record = {"epoch": epoch + 1, "step": result.step, "lr": lr, "train_loss": result.mean_loss}
            # train_one_epoch ends on a read-back of the losses, so the device has finished the epoch
            record["train_s"] = round(time.perf_counter() - epoch_started, 4)
            record["train_images"] = result.images
            scheduler.step()
            for counter in criterion.epoch_counters():  # each process counted its own part of the batches
                world.all_reduce_sum(counter)
            loss_state = criterion.end_epoch()
            if loss_state:
                record["loss_state"] = loss_state
            last = result.stop or epoch + 1 == trainer.epochs
            if (epoch + 1) % trainer.eval_every == 0 or last:
                started = time.perf_counter()
                record.update(evaluate(cfg, data, model, criterion, test_loader, precision, switches.channels_last, compiled,
                                       world))
                record["eval_s"] = round(time.perf_counter() - started, 4)
                value = record[history.monitor]
                if value is not None and value > history.best_value:
                    history.best_value, history.best_epoch = value, epoch + 1
                    if world.is_main:
                        save_checkpoint(run_dir / "checkpoints" / "best.pt", {
                            "epoch": epoch + 1, "monitor": history.monitor, "value": value,
                            "model": model.state_dict(), "config": resolved_config,
                        })
            history.epochs.append(record)
            history.finished = last
            if world.is_main:
                write_epoch(run_dir, writer, record, data.class_names)
            log.info("%s", format_epoch(record, trainer.epochs))
            history.seconds += time.perf_counter() - epoch_started
            path = save_last(epoch + 1)
            if result.stop:
                log.info("stopping at step %d (trainer.max_steps)", history.steps)
            stop_request.adopt(world.max(stop_request.signal or 0))  # a collective: every process, every epoch
            if stop_request.requested and not last:
                world.barrier()
                raise interrupted(f"epoch {epoch + 1}", path)
    if writer is not None:
        writer.close()
    return history


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


def restore(
    checkpoint, model, optimizer, scheduler, scaler, criterion, generators: Generators, history: History,
    world: World = World(),
) -> int:
    """Load a `last.pt` into the run's objects; returns the epoch it was written after. The loss's
    epoch counters in it are the whole run's (summed over processes): in a DDP run rank 0 carries
    them on and the others start from zero, so the epoch-end sum counts them once."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    criterion.load_state_dict(checkpoint["loss"])
    if not world.is_main:
        for counter in criterion.epoch_counters():
            counter.zero_()
    for key, value in checkpoint["history"].items():
        setattr(history, key, value)
    set_rng_state(checkpoint["rng"], generators)
    log.info("resuming after epoch %d (step %d)%s", checkpoint["epoch"], checkpoint["step"],
             "; the run had already finished" if history.finished else "")
    return int(checkpoint["epoch"])


def build_loaders(
    cfg, data: DataBundle, device: torch.device, switches: Switches, shuffle_gen: torch.Generator,
    world: World = World(),
):
    """Train (shuffled by `shuffle_gen`) and test batches: from device-resident copies of an in-memory
    dataset (`trainer.data_on_device`), else through a DataLoader; both give the same batches.
    In a DDP run each process gets its part of every train batch and its block of the test split."""
    trainer = cfg.trainer
    if switches.decode_on_device:
        for split in (data.train, data.test):
            split.decode_on(device)  # workers read bytes; batch_to_device decodes (COCO)
    test = data.test
    if world.distributed:
        rows = world.rows(len(test))
        test = split_part(test, rows.start, rows.stop)
    if switches.data_on_device:
        return (
            DeviceLoader(data.train, trainer.batch_size, shuffle=True, device=device, generator=shuffle_gen,
                         world=world),
            DeviceLoader(test, trainer.eval_batch_size, shuffle=False, device=device),
        )
    pin = device.type == "cuda"
    return (
        make_loader(data.train, trainer.batch_size, shuffle=True, num_workers=trainer.num_workers,
                    generator=shuffle_gen, pin_memory=pin, world=world, seed=cfg.seed),
        make_loader(test, trainer.eval_batch_size, shuffle=False, num_workers=trainer.num_workers,
                    pin_memory=pin),
    )


class TrainingDiverged(ImbenchError):
    """The loss became NaN or infinite."""


class LossTracker:
    """Step losses held on the device and read back to the host in groups of `sync_every`.

    One read-back per group keeps a GPU from waiting on the host every step; the guard still
    names the first step whose loss was not finite, and the running mean is the same sum in the
    same order as a per-step read-back gives. In a DDP run each read-back first sums every
    process's (loss x images, images) of each step, so all processes see the global batch's
    loss, and stop together when it is not finite.
    """

    def __init__(self, sync_every: int, epoch: int, lr: float, world: World = World()):
        self.sync_every, self.epoch, self.lr, self.world = sync_every, epoch, lr, world
        self.pending: list[tuple[torch.Tensor, int, int]] = []
        self.total, self.seen = 0.0, 0

    def add(self, loss: torch.Tensor, batch_size: int, step: int) -> bool:
        """Queue one step's loss; True when the group was read back (the mean is current)."""
        self.pending.append((loss, batch_size, step))
        if len(self.pending) < self.sync_every:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([loss for loss, _, _ in self.pending])
        sizes = [batch_size for _, batch_size, _ in self.pending]
        if self.world.distributed:
            counts = torch.tensor(sizes, dtype=torch.float64, device=values.device)
            totals = self.world.all_reduce_sum(torch.stack([values.double() * counts, counts]))
            values, sizes = totals[0] / totals[1], [int(n) for n in totals[1].tolist()]
        for value, batch_size, (_, _, step) in zip(values.tolist(), sizes, self.pending):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged: loss is {value} at step {step} (epoch {self.epoch + 1}); "
                    f"lower optimizer.lr (now {self.lr:g}) or use trainer.amp=false"
                )
            self.total += value * batch_size
            self.seen += batch_size
        self.pending.clear()

    @property
    def mean(self) -> float:
        return self.total / max(self.seen, 1)


@dataclass
class EpochResult:
    step: int  # the global step after the epoch
    stop: bool  # trainer.max_steps was reached
    images: int  # images trained on in this epoch (a resumed epoch counts its first part too)
    loss_total: float  # sum of batch loss x batch size, for the running mean
    batches_done: int  # loader batches consumed, skipped ones included
    interrupted: bool  # a stop was requested (SIGTERM / SIGINT) before the epoch ended

    @property
    def mean_loss(self) -> float:
        return self.loss_total / max(self.images, 1)


def train_one_epoch(
    cfg, data, model, criterion, weights, loader, train_step: TrainStep, augment_gen, epoch, step, device, sync_every,
    resume_at: EpochPosition | None = None, stop_request: StopRequest | None = None, world: World = World(),
) -> EpochResult:
    """One pass over the train split, or the rest of it after `resume_at`; stops early, after the
    current step, when `stop_request` is set (in a DDP run: at the next loss read-back, where the
    processes agree on it)."""
    model.train()
    criterion.train()
    tracker = LossTracker(sync_every, epoch, current_lr(train_step.optimizer), world)
    skip = 0
    if resume_at is not None:
        skip, tracker.total, tracker.seen = resume_at.batches_done, resume_at.loss_total, resume_at.loss_seen
    stop = interrupted = False
    done = 0
    bar = progress_bar(loader, f"epoch {epoch + 1}/{cfg.trainer.epochs}", cfg, world)
    for images, targets in bar:
        done += 1
        if done <= skip:  # trained before the interruption; drawn again only to keep the order
            continue
        images, targets = batch_to_device(images, targets, device)
        rows, loss_scale = None, 1.0
        if world.distributed:
            # this process's rows of the global batch, and its share of the batch's mean loss
            rows = world.rows(min(cfg.trainer.batch_size, len(data.train) - (done - 1) * cfg.trainer.batch_size))
            loss_scale = len(images) * world.size / rows.total
            if len(images) == 0:  # every process must take part in each step
                raise ProcessError(f"process {world.rank}: every image of its part of batch {done} was unreadable; "
                                   "a multi-process run cannot skip a step on one process only")
        elif len(images) == 0:  # every image of the batch was unreadable and skipped (COCO, bad_images=skip)
            continue
        with global_batch_rows(rows):  # per-image draws (crops, flips, PLM masks) for the global batch
            inputs = data.transform(images, train=True, generator=augment_gen)
            loss = train_step(inputs, targets, weights, loss_scale)
        step += 1
        if tracker.add(loss, len(images), step):
            bar.set_postfix(loss=f"{tracker.mean:.4f}", refresh=False)
        if cfg.trainer.max_steps is not None and step >= cfg.trainer.max_steps:
            stop = True
            break
        if stop_request is not None and done < len(loader):
            if world.distributed:  # a collective every step (on the CPU): the processes stop at the same step
                stop_request.adopt(world.max(stop_request.signal or 0))
            if stop_request.requested:
                interrupted = True
                break
    tracker.flush()
    bar.close()
    return EpochResult(step, stop, tracker.seen, tracker.total, done, interrupted)


def progress_bar(loader, desc: str, cfg, world: World):
    """A tqdm bar over `loader` when `trainer.progress_bar` is on (rank 0 alone); redrawn every 0.5 s
    on a terminal, every 30 s into a log file."""
    return tqdm(loader, desc=desc, leave=False, disable=not cfg.trainer.progress_bar or not world.is_main,
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)


@torch.no_grad()
def evaluate(
    cfg, data: DataBundle, model, criterion, loader, precision, channels_last: bool = False, compiled_model=None,
    world: World = World(),
) -> dict[str, Any]:
    """Scores on the whole test split, then every metric of its label kind.

    With a torch.compile'd model a short last batch is padded with blank images to the batch
    size (whose outputs are dropped), so one compiled shape serves the whole split: in eval mode
    each image's output does not depend on the others in its batch. In a DDP run each process
    scores its block of the split; the scores are gathered in order before any metric is computed."""
    model.eval()
    criterion.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    all_logits, all_targets, losses = [], [], []
    bar = progress_bar(loader, "evaluating", cfg, world)
    for images, targets in bar:
        images, targets = batch_to_device(images, targets, device)
        if len(images) == 0:
            continue
        inputs = model_input(data.transform(images, train=False), dtype, channels_last)
        count = len(inputs)
        if compiled_model is not None and count < cfg.trainer.eval_batch_size:
            blank = inputs.new_zeros((cfg.trainer.eval_batch_size - count, *inputs.shape[1:]))
            inputs = to_memory_format(torch.cat([inputs, blank]), channels_last)
        with precision.autocast():
            logits = upcast((model if compiled_model is None else compiled_model)(inputs)[:count])
        losses.append(criterion(logits, targets).double() * len(images))
        all_logits.append(logits)
        all_targets.append(targets)
    bar.close()
    if not all_logits:  # a DDP process whose block had no readable image (COCO, bad_images=skip)
        all_logits.append(torch.empty(0, data.num_classes, device=device, dtype=torch.promote_types(dtype, torch.float32)))
        all_targets.append(empty_targets(data, device))
    logits, targets = torch.cat(all_logits), torch.cat(all_targets)
    total = torch.stack(losses).sum() if losses else torch.zeros((), dtype=torch.float64, device=device)
    if world.distributed:
        logits, targets = world.gather_rows(logits), world.gather_rows(targets)
        total = world.all_reduce_sum(total.reshape(1))[0]
    # one read-back for the whole split
    scores = np.nan_to_num(logits.cpu().numpy(), nan=0.0, posinf=1e30, neginf=-1e30)
    labels = targets.cpu().numpy()
    total = float(total)
    groups = {"many_shot_above": cfg.metrics.many_shot_above, "few_shot_below": cfg.metrics.few_shot_below}
    if data.label_kind == "multi":
        result = multi_label_metrics(labels, scores, data.train_class_counts, threshold=cfg.metrics.threshold, **groups)
    else:
        result = single_label_metrics(labels, scores, data.train_class_counts, **groups)
    test_loss = total / max(len(labels), 1)
    result["test_loss"] = test_loss if np.isfinite(test_loss) else None
    return result


def empty_targets(data: DataBundle, device: torch.device) -> torch.Tensor:
    """No targets, in the shape and dtype the test split's batches have."""
    _, targets = data.test[[0]]
    return targets[:0].to(device)


# ------------------------------------------------------------------ write


def tensorboard_writer(run_dir: Path, purge_step: int | None = None):
    """The run's TensorBoard writer; `purge_step` drops events of later epochs (left by a run that
    was killed after writing them but before its checkpoint)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def rewrite_summary(run_dir: Path, epochs: list[dict[str, Any]]) -> None:
    """summary.csv holding exactly the rows of `epochs` (none for a new run)."""
    (run_dir / "summary.csv").unlink(missing_ok=True)
    for record in epochs:
        append_csv_row(run_dir / "summary.csv", record, SUMMARY_COLUMNS)


def format_epoch(record: dict[str, Any], total_epochs: int) -> str:
    text = f"epoch {record['epoch']}/{total_epochs}  lr {record['lr']:.4g}  train loss {record['train_loss']:.4f}"
    if "test_loss" in record:
        text += "  test loss " + ("nan" if record["test_loss"] is None else f"{record['test_loss']:.4f}")
    shown = (("top1", "top-1"), ("top5", "top-5"), ("map", "mAP"), ("mean_f2", "mean F2"))
    for key, label in shown if "top1" not in record else shown[:2]:
        if record.get(key) is not None:
            text += f"  {label} {100 * record[key]:.2f}"
    return text


SUMMARY_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_s", "train_images", "eval_s", "test_loss", "top1", "top5", "map", "mean_f2", "macro_f1", "macro_f2",
    "precision_at_1", "precision_at_5", "many_shot_top1", "medium_shot_top1", "few_shot_top1",
    "head_map", "medium_map", "tail_map",
)


def write_epoch(run_dir: Path, writer, record: dict[str, Any], class_names: list[str]) -> None:
    """One row of `summary.csv` and the epoch's TensorBoard scalars: test metrics as `test/<key>`
    (per-class lists as `test/<key>/<class>`), the loss's own state as `loss/<key>[/<class>]`."""
    append_csv_row(run_dir / "summary.csv", record, SUMMARY_COLUMNS)
    names = {"train_loss": "loss/train", "test_loss": "loss/test", "lr": "lr", "train_s": "time/train_s",
             "eval_s": "time/eval_s"}
    metrics = {k: v for k, v in record.items() if k not in ("epoch", "step", "loss_state", "train_images")}
    for prefix, values in (("test", metrics), ("loss", record.get("loss_state", {}))):
        for key, value in values.items():
            tag = names.get(key, f"{prefix}/{key}")
            if isinstance(value, list):
                for name, item in zip(class_names, value):
                    if is_scalar_metric(item):
                        writer.add_scalar(f"{tag}/{name}", item, record["epoch"])
            elif is_scalar_metric(value):
                writer.add_scalar(tag, value, record["epoch"])
    writer.flush()


TIMING_KEYS = ("train_s", "eval_s")


def train_throughput(epochs: list[dict[str, Any]]) -> float | None:
    """Train images per second of the training passes, leaving out the first epoch when there
    are more (it holds cuDNN's autotuning and the CUDA-graph capture)."""
    timed = epochs[1:] if len(epochs) > 1 else epochs
    seconds = sum(r["train_s"] for r in timed)
    return round(sum(r["train_images"] for r in timed) / seconds, 1) if seconds > 0 else None


def summarize(
    cfg: DictConfig, resolved_config: dict[str, Any], data: DataBundle, history: History, device, switches: Switches,
    world: World = World(), error: str | None = None,
) -> dict[str, Any]:
    """The `metrics.json` record: the last and the best evaluated epoch, and what was run; with
    `error` (a diverged run) the status says so and the records are those of its good epochs."""
    # timings stay in summary.csv: the result records hold only what a rerun reproduces
    evaluated = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history.epochs if history.monitor in r]
    final = evaluated[-1] if evaluated else None
    # a monitor that was never defined (None: e.g. no test positives at all) falls back to the last epoch
    best = next((r for r in evaluated if r["epoch"] == history.best_epoch), final)
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "status": "completed" if error is None else "diverged",
        **({} if error is None else {"error": error}),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "loss": cfg.loss.name,
        "reweight": cfg.reweight.name,
        "label_kind": data.label_kind,
        "seed": cfg.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": world.size,  # DDP processes (torchrun --nproc_per_node x nodes); 1 without torchrun
        "switches": dataclasses.asdict(switches),
        "monitor": history.monitor,
        "monitor_split": "test",
        "epochs_completed": history.epochs[-1]["epoch"] if history.epochs else 0,
        "steps": history.steps,
        "final_epoch": final and final["epoch"],
        "best_epoch": best and best["epoch"],
        "final": final,
        "best": best,
        "train_time_s": round(history.seconds, 3),
        "train_images_per_s": train_throughput(history.epochs),
        "config": resolved_config,  # what a rerun compares before it skips this run
    }
