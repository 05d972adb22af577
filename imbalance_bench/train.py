"""One run, as a story: build (build.py) -> fit and evaluate (loop.py) -> write (outputs.py).

`run_job` owns the run directory for the run (rundir.py), skips a run that is complete already,
resumes one from its checkpoint, and writes metrics.json at the end. One loop serves every dataset:
integer labels and multi-hot targets differ only in the loss and the metrics, which read the label
kind from the data bundle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from imbalance_bench.build import (
    RunContext, build_data, build_loss, build_model, build_optimizer, resolve_switches, seed_everything,
)
from imbalance_bench.checkpoint import (
    Generators, History, TrainState, config_differences, find_checkpoint, load_checkpoint, shown_keys,
)
from imbalance_bench.config import resolve_monitor
from imbalance_bench.device import resolve_device
from imbalance_bench.distributed import World, current_world
from imbalance_bench.errors import ConfigError
from imbalance_bench.loop import TrainingDiverged, fit, sweep_tau
from imbalance_bench.outputs import summarize
from imbalance_bench.rundir import check_writable, claimed, remove_leftovers, write_hydra_record
from imbalance_bench.runfiles import write_json
from imbalance_bench.signals import set_stage
from imbalance_bench.step import Precision
from imbalance_bench.targets import build as build_target
from imbalance_bench.summary import describe_run, format_summary

log = logging.getLogger("imbench")


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
    stage = build_target(cfg.stage, "stage")
    stage.prepare(model)  # a decoupled stage: stage 1's weights, frozen features
    optimizer, scheduler = build_optimizer(cfg, model, criterion, switches)
    precision = Precision(device, switches.amp, cfg.trainer.amp_dtype)
    run = RunContext(cfg, resolved_config, data, device, switches, run_dir, world, stage)
    state = TrainState(model, optimizer, scheduler, precision.scaler, criterion, Generators.seeded(cfg.seed, device),
                       History(monitor=resolve_monitor(cfg.trainer.monitor, data.label_kind)))
    if stage.trains:
        try:
            fit(run, state, precision, reweighting, checkpoint)
        except TrainingDiverged as exc:
            # the checkpoints hold the last good epoch (the diverged one never reaches them)
            if world.is_main:
                write_json(run_dir / "metrics.json", summarize(run, state.history, error=str(exc)))
            world.barrier()  # every process saw the same losses; none exits before rank 0 has written
            raise
        set_stage("writing the results")
        metrics = summarize(run, state.history)
    else:  # tau-normalisation: every tau scored, nothing trained
        set_stage("scoring each tau")
        metrics = sweep_tau(run, state, precision)
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
