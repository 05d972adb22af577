"""The loop: fit a run's train state epoch by epoch (train, evaluate, write the epoch, checkpoint),
one pass over the train split, and the evaluation on the test split."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from imbalance_bench.build import RunContext, build_loaders, build_test_loader, wrap_for_ddp
from imbalance_bench.checkpoint import EpochPosition, TrainState
from imbalance_bench.data import DataBundle
from imbalance_bench.data.jpeg_batch import batch_to_device
from imbalance_bench.distributed import World, global_batch_rows
from imbalance_bench.errors import ImbenchError, ProcessError
from imbalance_bench.losses import Reweighting, log_class_prior
from imbalance_bench.metrics import multi_label_metrics, single_label_metrics
from imbalance_bench.outputs import SUMMARY_COLUMNS, format_epoch, format_scores, rewrite_summary, summarize, tensorboard_writer, write_epoch
from imbalance_bench.runfiles import append_csv_row, save_checkpoint
from imbalance_bench.signals import Interrupted, StopRequest
from imbalance_bench.step import Precision, TrainStep, current_lr, model_input, to_memory_format, upcast

log = logging.getLogger("imbench")

TAU_SWEEP_COLUMNS = tuple(c for c in SUMMARY_COLUMNS if c not in ("epoch", "step", "lr", "train_loss", "train_s",
                                                                    "train_images"))


def fit(run: RunContext, state: TrainState, precision: Precision, reweighting: Reweighting,
        checkpoint: dict[str, Any] | None) -> None:
    """Train for `trainer.epochs` (or until `trainer.max_steps`), evaluating and checkpointing each
    epoch; from `checkpoint`'s epoch on when resuming. In a DDP run every process goes through the
    same steps on its part of each batch; rank 0 alone writes the run directory."""
    cfg, data, device, switches, run_dir, world = run.cfg, run.data, run.device, run.switches, run.run_dir, run.world
    trainer, history, generators = cfg.trainer, state.history, state.generators
    model, criterion, optimizer, scheduler = state.model, state.criterion, state.optimizer, state.scheduler
    train_loader, test_loader = build_loaders(cfg, data, device, switches, generators.shuffle, world)
    if checkpoint is not None:
        state.load_state_dict(checkpoint, carry_counts=world.is_main)
        log.info("resuming after epoch %d (step %d)%s", state.epoch, history.steps,
                 "; the run had already finished" if history.finished else "")
    start_epoch, position = state.epoch, state.position
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
        state.epoch, state.position = epoch_done, position
        path = run_dir / "checkpoints" / "last.pt"
        if world.is_main:
            save_checkpoint(path, state.state_dict(run.config))
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
            result = train_one_epoch(run, state, train_loader, train_step, weights, epoch, resume_at, stop_request)
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
            # labels drawn per class (the epoch's global batches, a resumed epoch's first part included)
            record["class_draws"] = train_loader.order.class_draws(result.batches_done * trainer.batch_size)
            scheduler.step()
            for counter in criterion.epoch_counters():  # each process counted its own part of the batches
                world.all_reduce_sum(counter)
            loss_state = criterion.end_epoch()
            if loss_state:
                record["loss_state"] = loss_state
            last = result.stop or epoch + 1 == trainer.epochs
            if (epoch + 1) % trainer.eval_every == 0 or last:
                started = time.perf_counter()
                record.update(evaluate(run, model, criterion, test_loader, precision, compiled))
                record["eval_s"] = round(time.perf_counter() - started, 4)
                value = record[history.monitor]
                if value is not None and value > history.best_value:
                    history.best_value, history.best_epoch = value, epoch + 1
                    if world.is_main:
                        save_checkpoint(run_dir / "checkpoints" / "best.pt", {
                            "epoch": epoch + 1, "monitor": history.monitor, "value": value,
                            "model": model.state_dict(), "config": run.config,
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

def sweep_tau(run: RunContext, state: TrainState, precision: Precision) -> dict[str, Any]:
    """Score the test split with the tau-normalised classifier for each tau of `stage.taus`
    (decoupled.TauNormalization, Kang et al. 2020), one row each in tau_sweep.csv; the metrics.json
    record names the best tau by the monitor, whose record is both `final` and `best`."""
    cfg, stage, history = run.cfg, run.stage, state.history
    test_loader = build_test_loader(cfg, run.data, run.device, run.switches, run.world)  # nothing is trained
    if run.world.is_main:  # a run stopped while scoring starts over: its rows are written again
        (run.run_dir / "tau_sweep.csv").unlink(missing_ok=True)
    for number, tau in enumerate(stage.taus, start=1):
        started = time.perf_counter()
        with stage.normalized(state.model, tau):
            record = {"epoch": number, "step": 0, "tau": tau, "train_s": 0.0, "train_images": 0,
                      **evaluate(run, state.model, state.criterion, test_loader, precision)}
        record["eval_s"] = round(time.perf_counter() - started, 4)
        history.epochs.append(record)
        value = record[history.monitor]
        if value is not None and value > history.best_value:
            history.best_value, history.best_epoch = value, number
        log.info("tau %g:%s", tau, format_scores(record))
        if run.world.is_main:
            append_csv_row(run.run_dir / "tau_sweep.csv", record, ("tau", *TAU_SWEEP_COLUMNS))
    history.finished = True
    metrics = summarize(run, history)
    best = metrics["best"]
    metrics.update(final=best, final_epoch=best["epoch"], epochs_completed=0, best_tau=best["tau"])
    return metrics

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

    def __init__(self, sync_every: int, epoch: int, lr: float, world: World):
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
    run: RunContext, state: TrainState, loader, train_step: TrainStep, weights, epoch: int,
    resume_at: EpochPosition | None, stop_request: StopRequest | None,
) -> EpochResult:
    """One pass over the train split, or the rest of it after `resume_at`; stops early, after the
    current step, when `stop_request` is set (in a DDP run: at the next loss read-back, where the
    processes agree on it)."""
    cfg, data, device, world = run.cfg, run.data, run.device, run.world
    step, augment_gen = state.history.steps, state.generators.augment
    run.stage.train_mode(state.model)  # train mode, or eval for a decoupled stage's frozen features
    state.criterion.train()
    tracker = LossTracker(run.switches.sync_every, epoch, current_lr(train_step.optimizer), world)
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
def evaluate(run: RunContext, model, criterion, loader, precision, compiled_model=None) -> dict[str, Any]:
    """Scores on the whole test split, then every metric of its label kind.

    With a torch.compile'd model a short last batch is padded with blank images to the batch
    size (whose outputs are dropped), so one compiled shape serves the whole split: in eval mode
    each image's output does not depend on the others in its batch. In a DDP run each process
    scores its block of the split; the scores are gathered in order before any metric is computed.
    With `metrics.logit_adjust_tau` the single-label metrics are computed again on z - tau log pi
    (post-hoc logit adjustment, Menon et al. 2021, with pi the train split's class prior, where an
    empty class counts as one image, as `log_class_prior` says), under
    "logit_adjusted"; the raw scores stay what the monitor and the checkpoints go by."""
    cfg, data, world, channels_last = run.cfg, run.data, run.world, run.switches.channels_last
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
        tau = cfg.metrics.logit_adjust_tau
        if tau is not None:
            adjusted = scores - tau * log_class_prior(data.train_class_counts).numpy()
            result["logit_adjusted"] = {"tau": tau, **single_label_metrics(labels, adjusted, data.train_class_counts,
                                                                           **groups)}
    test_loss = total / max(len(labels), 1)
    result["test_loss"] = test_loss if np.isfinite(test_loss) else None
    return result

def empty_targets(data: DataBundle, device: torch.device) -> torch.Tensor:
    """No targets, in the shape and dtype the test split's batches have."""
    _, targets = data.test[[0]]
    return targets[:0].to(device)
