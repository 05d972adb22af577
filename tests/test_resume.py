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

from imbalance_bench.errors import ConfigError, DataError
from imbalance_bench.train import run

TIMING = ("train_time_s", "train_images_per_s")


def command(data_root, run_dir, *extra):
    return [sys.executable, "-m", "imbalance_bench", "dataset=mnist_lt", f"dataset.root={data_root}",
            "dataset.imbalance_factor=10", "trainer.device=cpu", "trainer.epochs=3", "trainer.batch_size=32",
            "trainer.progress_bar=false", f"hydra.run.dir={run_dir}", *extra]


def environment():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("IMBENCH_DATA_ROOT", None)
    return env


def results(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = list(csv.DictReader(open(run_dir / "summary.csv")))
    for row in rows:
        row.pop("train_s"), row.pop("eval_s")
    return {k: v for k, v in metrics.items() if k not in TIMING}, rows


def test_a_run_killed_after_an_epoch_resumes_to_identical_results(data_root, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(data_root, whole), cwd=tmp_path, env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(command(data_root, killed), cwd=tmp_path, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run ended before it could be killed"
    interrupted_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= interrupted_at < 3

    again = subprocess.run(command(data_root, killed), cwd=tmp_path, env=environment(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming after epoch {interrupted_at}" in again.stdout + again.stderr
    assert results(killed) == results(whole)  # every metric, loss and per-class value, bit for bit
    best = torch.load(killed / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] == json.loads((killed / "metrics.json").read_text())["best_epoch"]


SMALL = ["dataset=mnist_lt", "dataset.imbalance_factor=10", "trainer.device=cpu", "trainer.epochs=1",
         "trainer.batch_size=32", "trainer.progress_bar=false", "dataset.limit_train=200", "dataset.limit_test=100"]


def test_a_finished_run_is_not_trained_again(compose_cfg, data_root, tmp_path, caplog):
    cfg = compose_cfg([*SMALL, f"dataset.root={data_root}"])
    before = run(cfg, tmp_path)
    with caplog.at_level(logging.INFO, logger="imbench"):
        again = run(cfg, tmp_path)
    assert "the run had already finished" in caplog.text
    assert again == before == json.loads((tmp_path / "metrics.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imbench"):
        run(compose_cfg([*SMALL, f"dataset.root={data_root}", "trainer.resume=false"]), tmp_path)
    assert "resuming" not in caplog.text


def test_bad_checkpoints_are_refused_before_any_data_and_left_alone(compose_cfg, data_root, tmp_path):
    run(compose_cfg([*SMALL, f"dataset.root={data_root}"]), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(ConfigError, match=f"^trainer.resume: {last} was written by another config \\(differs in loss"):
        run(compose_cfg([*SMALL, f"dataset.root={data_root}", "loss=ce", "reweight=none"]), tmp_path)
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=f"^trainer.resume={missing} is not allowed: file not found"):
        run(compose_cfg([*SMALL, f"dataset.root={data_root}", f"trainer.resume={missing}"]), tmp_path)
    metrics = (tmp_path / "metrics.json").read_bytes()
    cut = last.read_bytes()[:1000]
    last.write_bytes(cut)
    with pytest.raises(DataError, match=f"^{last}: not a readable checkpoint"):
        run(compose_cfg([*SMALL, f"dataset.root={tmp_path / 'no_data_here'}"]), tmp_path)  # data is never read
    assert last.read_bytes() == cut and (tmp_path / "metrics.json").read_bytes() == metrics
