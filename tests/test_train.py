"""The training loop in-process (imbalance_bench/train.py) and the main job."""

import json
import math

import pytest
import torch

from conftest import SMOKE
from imbalance_bench.losses import create_loss
from imbalance_bench.models import create_model
from imbalance_bench.train import init_classifier_bias, run


def test_run_returns_what_it_writes(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=3",
                       "trainer.batch_size=8"])
    metrics = run(cfg, tmp_path)
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["epochs_completed"] == 1
    assert metrics["loss"] == "focal" and metrics["reweight"] == "cb"


def test_sigmoid_heads_start_at_the_prior():
    model = create_model("resnet32", num_classes=10, in_chans=3)
    init_classifier_bias(model, create_loss("focal", gamma=2.0, softmax=False), 10)
    assert torch.allclose(model.fc.bias, torch.full((10,), -math.log(9)))
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.zeros(4, 3, 32, 32)))
    assert probs.mean().item() == pytest.approx(0.1, abs=0.05)
    plain = create_model("resnet32", num_classes=10, in_chans=3)
    before = plain.fc.bias.clone()
    init_classifier_bias(plain, create_loss("ce"), 10)
    assert torch.equal(plain.fc.bias, before)


def test_deferred_reweighting_and_eval_every(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=null",
                       "trainer.epochs=3", "trainer.eval_every=2", "reweight.start_epoch=2", "trainer.batch_size=64"])
    metrics = run(cfg, tmp_path)
    rows = (tmp_path / "summary.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    top1 = [row.split(",")[header.index("top1")] for row in rows[1:]]
    assert len(rows) == 4 and top1[0] == "" and top1[1] != "" and top1[2] != ""  # epochs 2 and 3 (last)
    assert metrics["final_epoch"] == 3


@pytest.mark.slow
def test_main_job_beats_chance_by_far(imbench, tmp_path):
    """`imbench` with no overrides: long-tailed MNIST IF 100, ResNet-32, CB focal loss, a few epochs."""
    proc = imbench("trainer.progress_bar=false", f"hydra.run.dir={tmp_path / 'main'}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "main" / "metrics.json").read_text())
    stats = json.loads((tmp_path / "main" / "dataset_stats.json").read_text())
    assert stats["train_counts"][0] == 5421 and stats["train_counts"][-1] == 54 and stats["test_total"] == 10000
    assert metrics["final"]["top1"] > 0.9  # chance is 0.1
