"""What a run writes as it goes and at its end: a row of summary.csv and the TensorBoard scalars
per epoch, the log line of each epoch, and the metrics.json record."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from imbalance_bench.build import RunContext
from imbalance_bench.checkpoint import History
from imbalance_bench.metrics import is_scalar_metric
from imbalance_bench.runfiles import append_csv_row

METRICS_SCHEMA_VERSION = 1

TIMING_KEYS = ("train_s", "eval_s")

SUMMARY_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_s", "train_images", "eval_s", "test_loss", "top1", "top5", "map", "mean_f2", "macro_f1", "macro_f2",
    "precision_at_1", "precision_at_5", "many_shot_top1", "medium_shot_top1", "few_shot_top1",
    "head_map", "medium_map", "tail_map",
)

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
    return (f"epoch {record['epoch']}/{total_epochs}  lr {record['lr']:.4g}  train loss {record['train_loss']:.4f}"
            + format_scores(record))

def format_scores(record: dict[str, Any]) -> str:
    """The test split's loss and headline metrics of an epoch record, for its log line."""
    text = ""
    if "test_loss" in record:
        text += "  test loss " + ("nan" if record["test_loss"] is None else f"{record['test_loss']:.4f}")
    shown = (("top1", "top-1"), ("top5", "top-5"), ("map", "mAP"), ("mean_f2", "mean F2"))
    for key, label in shown if "top1" not in record else shown[:2]:
        if record.get(key) is not None:
            text += f"  {label} {100 * record[key]:.2f}"
    adjusted = record.get("logit_adjusted")
    if adjusted and adjusted.get("top1") is not None:
        text += f"  adjusted top-1 {100 * adjusted['top1']:.2f}"
    return text

def write_epoch(run_dir: Path, writer, record: dict[str, Any], class_names: list[str]) -> None:
    """One row of `summary.csv` and the epoch's TensorBoard scalars: test metrics as `test/<key>`
    (per-class lists as `test/<key>/<class>`), the loss's own state as `loss/<key>[/<class>]`, the
    labels each class had among the epoch's draws as `train/draws/<class>`."""
    append_csv_row(run_dir / "summary.csv", record, SUMMARY_COLUMNS)
    names = {"train_loss": "loss/train", "test_loss": "loss/test", "lr": "lr", "train_s": "time/train_s",
             "eval_s": "time/eval_s", "class_draws": "train/draws"}
    metrics = {k: v for k, v in record.items()
               if k not in ("epoch", "step", "loss_state", "train_images", "logit_adjusted")}
    for prefix, values in (("test", metrics), ("test_adjusted", record.get("logit_adjusted", {})),
                           ("loss", record.get("loss_state", {}))):
        for key, value in values.items():
            tag = names.get(key, f"{prefix}/{key}")
            if isinstance(value, list):
                for name, item in zip(class_names, value):
                    if is_scalar_metric(item):
                        writer.add_scalar(f"{tag}/{name}", item, record["epoch"])
            elif is_scalar_metric(value):
                writer.add_scalar(tag, value, record["epoch"])
    writer.flush()

def train_throughput(epochs: list[dict[str, Any]]) -> float | None:
    """Train images per second of the training passes, leaving out the first epoch when there
    are more (it holds cuDNN's autotuning and the CUDA-graph capture)."""
    timed = epochs[1:] if len(epochs) > 1 else epochs
    seconds = sum(r["train_s"] for r in timed)
    return round(sum(r["train_images"] for r in timed) / seconds, 1) if seconds > 0 else None

def summarize(run: RunContext, history: History, error: str | None = None) -> dict[str, Any]:
    """The `metrics.json` record: the last and the best evaluated epoch, and what was run; with
    `error` (a diverged run) the status says so and the records are those of its good epochs."""
    # timings stay in summary.csv: the result records hold only what a rerun reproduces
    evaluated = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history.epochs if history.monitor in r]
    final = evaluated[-1] if evaluated else None
    # a monitor that was never defined (None: e.g. no test positives at all) falls back to the last epoch
    best = next((r for r in evaluated if r["epoch"] == history.best_epoch), final)
    cfg, device = run.cfg, run.device
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "status": "completed" if error is None else "diverged",
        **({} if error is None else {"error": error}),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "loss": cfg.loss.name,
        "reweight": cfg.reweight.name,
        "sampler": cfg.sampler.name,
        "label_kind": run.data.label_kind,
        "seed": cfg.seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": run.world.size,  # DDP processes (torchrun --nproc_per_node x nodes); 1 without torchrun
        "switches": dataclasses.asdict(run.switches),
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
        "config": run.config,  # what a rerun compares before it skips this run
        **({"stage1": record} if (record := run.stage.record()) else {}),  # a decoupled stage's stage-1 run
    }
