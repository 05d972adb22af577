"""Checkpoints and resuming (imbalance_bench/checkpoint.py): a run killed with SIGKILL and started
again in the same run directory ends with the same metrics as one that was never interrupted."""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from coco_files import write_coco
from conftest import IMBENCH, imbench_environment
from test_bad_inputs import interrupted_run, sigterm_after_each_epoch
from imbalance_bench.errors import EXIT_STOPPED
from imbalance_bench.rundir import LOCK_FILE
from imbalance_bench.signals import Interrupted
from imbalance_bench.errors import ConfigError, DataError
from imbalance_bench.loop import TrainingDiverged
from imbalance_bench.train import run, run_job

TIMING = ("train_time_s", "train_images_per_s")
SMALL = ["dataset=mnist_lt", "dataset.imbalance_factor=10", "trainer.device=cpu", "trainer.epochs=1",
         "trainer.batch_size=32", "trainer.progress_bar=false", "dataset.limit_train=200", "dataset.limit_test=100"]


def command(data_root, run_dir, *extra):
    return [sys.executable, "-m", "imbalance_bench", *SMALL, f"dataset.root={data_root}", "trainer.epochs=3",
            f"hydra.run.dir={run_dir}", *extra]


def results(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = list(csv.DictReader(open(run_dir / "summary.csv")))
    for row in rows:
        row.pop("train_s"), row.pop("eval_s")
    return {k: v for k, v in metrics.items() if k not in TIMING}, rows


# `python -c` body: the CLI, killed with SIGKILL right after it writes its first last.pt (epoch 1)
KILLED_AFTER_EPOCH_1 = """
import os, signal, sys
import imbalance_bench.loop as loop
from imbalance_bench.cli import main
write = loop.save_checkpoint
def write_then_die(path, content):
    write(path, content)
    if path.name == "last.pt":
        os.kill(os.getpid(), signal.SIGKILL)
loop.save_checkpoint = write_then_die
main(sys.argv[1:])
"""


def test_a_run_killed_after_an_epoch_resumes_to_identical_results(data_root, tmp_path, imbench_in_process):
    """kill -9 right after the epoch-1 checkpoint, in a process of its own: the lock it held does not
    block the same command (in this process), which resumes from the checkpoint, removes the `.tmp`
    files of the atomic writes the kill cut short, and ends bit-identical to a run never interrupted.
    Class-balanced re-sampling deferred to epoch 2 (DRS): its draws come from the checkpointed state."""
    args = [*SMALL, f"dataset.root={data_root}", "trainer.epochs=2", "sampler=class_balanced", "sampler.start_epoch=1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    code, err = imbench_in_process(*args, f"hydra.run.dir={whole}")
    assert code == 0, err[-3000:]

    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH_1, *args, f"hydra.run.dir={killed}"], cwd=tmp_path,
                          env=imbench_environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = killed / "checkpoints" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
    assert (killed / LOCK_FILE).exists() and not (killed / "metrics.json").exists()
    leftover = killed / "checkpoints" / ".last.pt.abc123.tmp"  # as a kill during the write leaves it
    leftover.write_bytes(b"half a checkpoint")

    code, err = imbench_in_process(*args, f"hydra.run.dir={killed}")
    assert code == 0, err[-3000:]
    assert "resuming after epoch 1" in (killed / "imbench.log").read_text()
    assert not leftover.exists() and not (killed / LOCK_FILE).exists()
    assert results(killed) == results(whole)  # every metric, loss and per-class value, bit for bit
    best = torch.load(killed / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == json.loads((killed / "metrics.json").read_text())["best_epoch"]


def test_a_coco_run_with_workers_resumes_to_identical_results(compose_cfg, tmp_path, monkeypatch):
    """trainer.num_workers=2 on COCO, whose random crops are drawn inside the workers: stopped by
    SIGTERM at the end of epoch 1, or inside epoch 2 and continued with one worker, the run ends
    bit-identical to an uninterrupted one (metrics, summary.csv, last weights)."""
    import imbalance_bench.step as step_module

    root = write_coco(tmp_path / "coco")
    overrides = ["dataset=coco", "loss=focal", "reweight=cb", f"dataset.root={root}", "dataset.image_size=32", "trainer.device=cpu",
                 "trainer.epochs=2", "trainer.batch_size=8", "trainer.num_workers=2", "trainer.progress_bar=false",
                 "optimizer.lr=0.01"]
    whole, after_epoch, stopped = tmp_path / "whole", tmp_path / "after_epoch", tmp_path / "stopped"
    run(compose_cfg(overrides), whole)

    def weights(run_dir):
        return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]

    def assert_identical(run_dir):
        (metrics, rows), (expected, expected_rows) = results(run_dir), results(whole)
        metrics["config"]["trainer"].pop("num_workers"), expected["config"]["trainer"].pop("num_workers")
        assert metrics == expected and rows == expected_rows
        ours, theirs = weights(run_dir), weights(whole)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    interrupted_run(compose_cfg, overrides, after_epoch, monkeypatch)
    assert torch.load(after_epoch / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert run_job(compose_cfg(overrides), after_epoch).outcome == "resumed"
    assert_identical(after_epoch)

    original, calls = step_module.TrainStep.__call__, []

    def signalled(self, inputs, targets, weights, loss_scale=1.0):
        calls.append(1)
        if len(calls) == 5:  # the second of epoch 2's three batches
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, inputs, targets, weights, loss_scale)

    monkeypatch.setattr(step_module.TrainStep, "__call__", signalled)
    with pytest.raises(Interrupted, match=r"after step 5 \(epoch 2\)"):
        run(compose_cfg(overrides), stopped)
    monkeypatch.setattr(step_module.TrainStep, "__call__", original)
    run(compose_cfg([*overrides, "trainer.num_workers=1"]), stopped)
    assert_identical(stopped)


def test_a_finished_run_is_not_trained_again(compose_cfg, data_root, tmp_path, caplog):
    cfg = compose_cfg([*SMALL, f"dataset.root={data_root}"])
    before = run(cfg, tmp_path)
    with caplog.at_level(logging.INFO, logger="imbench"):
        again = run(cfg, tmp_path)
    assert "already complete" in caplog.text
    assert again == before == json.loads((tmp_path / "metrics.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imbench"):
        run(compose_cfg([*SMALL, f"dataset.root={data_root}", "trainer.resume=false"]), tmp_path)
    assert "resuming" not in caplog.text


def test_bad_checkpoints_are_refused_before_any_data_and_left_alone(compose_cfg, data_root, tmp_path):
    run(compose_cfg([*SMALL, f"dataset.root={data_root}"]), tmp_path)
    (tmp_path / "metrics.json").unlink()  # as a run killed after its last checkpoint leaves it
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(ConfigError, match=f"^trainer.resume: {last} was written by another config \\(differs in loss"):
        run(compose_cfg([*SMALL, f"dataset.root={data_root}", "loss=focal", "reweight=none"]), tmp_path)
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=f"^trainer.resume={missing} is not allowed: file not found"):
        run(compose_cfg([*SMALL, f"dataset.root={data_root}", f"trainer.resume={missing}"]), tmp_path)
    cut = last.read_bytes()[:1000]
    last.write_bytes(cut)
    with pytest.raises(DataError, match=f"^{last}: not a readable checkpoint"):
        run(compose_cfg([*SMALL, f"dataset.root={tmp_path / 'no_data_here'}"]), tmp_path)  # data is never read
    assert last.read_bytes() == cut and not (tmp_path / "metrics.json").exists()


def test_divergence_keeps_the_last_good_checkpoints_and_records_its_status(compose_cfg, data_root, tmp_path,
                                                                          monkeypatch):
    """A NaN loss at step 8 (epoch 2): the run stops naming the step, metrics.json says "diverged"
    with the good epoch's records, and last.pt / best.pt stay those of epoch 1."""
    import imbalance_bench.step as step_module

    original, calls = step_module.TrainStep.__call__, []

    def poisoned(self, inputs, targets, weights, loss_scale=1.0):
        calls.append(len(inputs))
        loss = original(self, inputs, targets, weights, loss_scale)
        return loss * float("nan") if len(calls) == 8 else loss

    monkeypatch.setattr(step_module.TrainStep, "__call__", poisoned)
    cfg = compose_cfg([*SMALL, f"dataset.root={data_root}", "trainer.epochs=2", "trainer.batch_size=64"])
    with pytest.raises(TrainingDiverged, match=r"^training diverged: loss is nan at step 8 \(epoch 2\)"):
        run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "step 8 (epoch 2)" in metrics["error"]
    assert metrics["epochs_completed"] == 1 and metrics["final"]["epoch"] == 1 and metrics["steps"] == 4
    for name in ("last.pt", "best.pt"):
        assert torch.load(tmp_path / "checkpoints" / name, map_location="cpu", weights_only=True)["epoch"] == 1


def test_sigterm_mid_epoch_checkpoints_the_step_and_resumes_to_identical_results(compose_cfg, data_root, tmp_path,
                                                                                monkeypatch):
    """SIGTERM during step 6 (epoch 2 of 2): the step finishes, last.pt records the position inside
    the epoch, and the resumed run ends exactly where an uninterrupted one does; with progressive
    re-sampling, the stopped epoch's draws are drawn again from the state at its start."""
    import imbalance_bench.step as step_module

    overrides = [*SMALL, f"dataset.root={data_root}", "trainer.epochs=2", "trainer.batch_size=64", "sampler=progressive"]
    whole = run(compose_cfg(overrides), tmp_path / "whole")
    original, calls = step_module.TrainStep.__call__, []

    def signalled(self, inputs, targets, weights, loss_scale=1.0):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, inputs, targets, weights, loss_scale)

    monkeypatch.setattr(step_module.TrainStep, "__call__", signalled)
    with pytest.raises(Interrupted, match=r"^stopped by SIGTERM after step 6 \(epoch 2\); checkpoint .*last\.pt"):
        run(compose_cfg(overrides), tmp_path / "stopped")
    monkeypatch.setattr(step_module.TrainStep, "__call__", original)
    checkpoint = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 6 and checkpoint["position"]["batches_done"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run put the default handler back
    resumed = run(compose_cfg(overrides), tmp_path / "stopped")
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    assert strip(resumed) == strip(whole)


def test_sigterm_exits_with_its_own_code_and_one_line(data_root, tmp_path):
    """The real command, signalled from outside once its first checkpoint is written (epochs to spare:
    the run stops at its next step)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*IMBENCH, *SMALL, f"dataset.root={data_root}", "trainer.epochs=20",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=imbench_environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED and "Traceback" not in stderr, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("imbench: stopped by SIGTERM after ")  # a stop, not an error
    assert last_line.endswith(f"checkpoint {run_dir / 'checkpoints' / 'last.pt'}; run the same command again to resume")
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["epoch"] >= 1


def test_a_sweep_run_again_skips_finished_jobs_resumes_stopped_ones_and_reports_failed_ones(data_root, tmp_path,
                                                                                           imbench_in_process,
                                                                                           monkeypatch):
    """`imbench -m` into the same sweep folder again: complete jobs are skipped, a job stopped by
    SIGTERM (sent to this process at the end of job #0's first epoch) continues from its checkpoint,
    a failing job does not stop the others, and the sweep ends with the count of each and exit 2."""

    sweep = tmp_path / "sweep"
    missing = tmp_path / "no_such_root"
    args = ["-m", "dataset=cifar10_lt", f"dataset.root={data_root},{missing}", "dataset.imbalance_factor=10,20",
            "trainer.device=cpu", "trainer.epochs=2", "trainer.batch_size=32", "trainer.progress_bar=false",
            "dataset.limit_train=64", "dataset.limit_test=40", f"hydra.sweep.dir={sweep}"]

    with sigterm_after_each_epoch(monkeypatch):
        code, err = imbench_in_process(*args)
    assert code == EXIT_STOPPED, err[-3000:]
    [stopped] = [p.parent.parent for p in sweep.glob("*/checkpoints/last.pt")]
    assert not (stopped / "metrics.json").exists()

    def sweep_again():
        code, err = imbench_in_process(*args)
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("imbench: error: 2 job(s) of the sweep failed")
        jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
        return imbench_in_process.stdout + err, {job["dir"]: job["outcome"] for job in jobs}

    output, outcomes = sweep_again()
    good = sorted(str(p) for p in sweep.glob("*/metrics.json"))
    assert len(good) == 2 and outcomes[str(stopped)] == "resumed"
    assert sorted(outcomes.values()) == ["failed", "failed", "resumed", "trained"]
    assert "4 job(s): 1 trained, 1 resumed, 0 already complete (skipped), 2 failed" in output
    assert "resuming after epoch 1" in (stopped / "imbench.log").read_text()
    finished = {path: open(path, "rb").read() for path in good}

    _, outcomes = sweep_again()
    assert sorted(outcomes.values()) == ["complete", "complete", "failed", "failed"]
    assert {path: open(path, "rb").read() for path in good} == finished  # left exactly as they were
