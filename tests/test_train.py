"""The training loop in-process (imbalance_bench/train.py) and the main job."""

import csv
import json
import math

import pytest
import torch

from conftest import SMOKE
from imbalance_bench.losses import SigmoidFocalLoss, SoftmaxCrossEntropy
from imbalance_bench.models import create_model
from imbalance_bench.build import init_classifier_bias
from imbalance_bench.train import run


def test_run_returns_what_it_writes(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=3",
                       "trainer.batch_size=8", "loss=focal", "reweight=cb"])
    metrics = run(cfg, tmp_path)
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["epochs_completed"] == 1
    assert metrics["loss"] == "focal" and metrics["reweight"] == "cb"


def test_run_records_its_switches_and_throughput(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=null",
                       "trainer.epochs=2", "trainer.channels_last=true", "trainer.cuda_graphs=true"])
    metrics = run(cfg, tmp_path)
    assert metrics["switches"] == {"amp": False, "data_on_device": False, "decode_on_device": False, "channels_last": True,
                                   "fused_optimizer": False, "cuda_graphs": False, "cudnn_benchmark": False,
                                   "compile": False, "sync_every": 1, "deterministic": False}
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    train_s = [float(r["train_s"]) for r in rows]
    train_total = json.loads((tmp_path / "dataset_stats.json").read_text())["train_total"]
    assert [int(r["train_images"]) for r in rows] == [train_total] * 2 and all(t > 0 for t in train_s)
    assert metrics["train_images_per_s"] == pytest.approx(int(rows[1]["train_images"]) / train_s[1], rel=0.01)
    assert "train_s" not in metrics["final"] and metrics["device_name"] == "cpu"


def test_sigmoid_heads_start_at_the_prior():
    model = create_model("resnet32", num_classes=10, in_chans=3)
    init_classifier_bias(model, SigmoidFocalLoss(gamma=2.0), 10)
    assert torch.allclose(model.fc.bias, torch.full((10,), -math.log(9)))
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.zeros(4, 3, 32, 32)))
    assert probs.mean().item() == pytest.approx(0.1, abs=0.05)
    plain = create_model("resnet32", num_classes=10, in_chans=3)
    before = plain.fc.bias.clone()
    init_classifier_bias(plain, SoftmaxCrossEntropy(), 10)
    assert torch.equal(plain.fc.bias, before)


def test_deferred_reweighting_reaches_the_loss(compose_cfg, data_root, tmp_path, monkeypatch):
    import imbalance_bench.loop as loop_module
    from imbalance_bench.losses import class_balanced_weights

    seen = []
    original = loop_module.train_one_epoch

    def spy(run, state, loader, train_step, weights, *rest):
        seen.append(None if weights is None else weights.clone())
        return original(run, state, loader, train_step, weights, *rest)

    monkeypatch.setattr(loop_module, "train_one_epoch", spy)
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=null",
                       "trainer.epochs=3", "reweight=cb", "reweight.beta=0.99", "reweight.start_epoch=2",
                       "trainer.batch_size=128"])
    metrics = run(cfg, tmp_path)
    counts = json.loads((tmp_path / "dataset_stats.json").read_text())["train_counts"]
    assert seen[0] is None and seen[1] is None
    assert torch.allclose(seen[2], class_balanced_weights(counts, 0.99))
    assert metrics["epochs_completed"] == 3


def test_eval_every(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=null",
                       "trainer.epochs=3", "trainer.eval_every=2", "trainer.batch_size=64"])
    metrics = run(cfg, tmp_path)
    rows = (tmp_path / "summary.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    top1 = [row.split(",")[header.index("top1")] for row in rows[1:]]
    assert len(rows) == 4 and top1[0] == "" and top1[1] != "" and top1[2] != ""  # epochs 2 and 3 (last)
    assert metrics["final_epoch"] == 3


@pytest.mark.slow
def test_main_job_beats_chance_by_far(imbench, tmp_path):
    """The main job (`make run`): long-tailed MNIST IF 100, ResNet-32, CB focal loss, a few epochs."""
    proc = imbench("experiment=mnist_lt_cb_focal", "trainer.progress_bar=false", f"hydra.run.dir={tmp_path / 'main'}",
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "main" / "metrics.json").read_text())
    stats = json.loads((tmp_path / "main" / "dataset_stats.json").read_text())
    assert stats["train_counts"][0] == 5421 and stats["train_counts"][-1] == 54
    assert stats["test_counts"] == [892] * 10  # the MNIST test split cut to its smallest class
    assert metrics["final"]["top1"] > 0.9  # chance is 0.1


def test_amp_and_loader_workers_on_cpu(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=2",
                       "trainer.amp=true", "trainer.num_workers=1", "loss=ce", "reweight=inverse_freq"])
    metrics = run(cfg, tmp_path)
    assert metrics["steps"] == 2 and metrics["device"] == "cpu"
    assert math.isfinite(metrics["final"]["test_loss"])


def test_build_model_sets_the_sigmoid_prior(compose_cfg, data_root, tmp_path):
    from imbalance_bench.build import build_data, build_loss, build_model
    from imbalance_bench.distributed import World

    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", "loss=bce", *SMOKE])
    data = build_data(cfg, tmp_path, World())
    criterion, _ = build_loss(cfg, data, torch.device("cpu"))
    model = build_model(cfg, data, criterion, torch.device("cpu"), False, World())
    assert torch.allclose(model.fc.bias, torch.full((10,), -math.log(9)))


@pytest.mark.parametrize("overrides, method", [
    (["experiment=mnist_lt_cb_focal"], "loss=focal(γ=2, softmax=false) reweight=cb(β=0.9999)"),
    (["experiment=cao2019_table2/ldam_drw"],
     "loss=ldam(max_margin=0.5, scale=30, normalized_classifier=true, uniform_margin=false, form=ce) "
     "reweight=cb(β=0.9999, start_epoch=160)"),
    (["experiment=plm_multimnist", "loss.base=focal", "loss.focal.gamma=1"],
     "loss=plm(base=focal(γ=1, softmax=false), bins=10, lr=0.1) reweight=none"),
    (["loss=bce", "reweight=inverse_freq"], "loss=bce reweight=inverse_freq"),
])
def test_the_run_header_states_the_method_in_full(compose_cfg, overrides, method):
    from omegaconf import OmegaConf

    from imbalance_bench.summary import describe_run

    header = describe_run(OmegaConf.to_container(compose_cfg(overrides), resolve=True))
    assert header.split(" | ")[2] == method
