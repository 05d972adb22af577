"""Decoupled classifiers (imbalance_bench/decoupled.py, conf/stage/, experiment=decoupled/*): a second
stage from a finished run keeps its features and re-trains, re-scales or re-normalises the classifier.
(Refusals of a bad stage-1 run are cases of tests/test_bad_inputs.py.)"""

import csv
import hashlib
import json

import pytest
import torch

from conftest import imbench_main
from test_bad_inputs import interrupted_run
from imbalance_bench.cli import preflight
from imbalance_bench.decoupled import TauNormalization
from imbalance_bench.errors import ConfigError
from imbalance_bench.models import resnet32
from imbalance_bench.train import run

SMALL = ["dataset=mnist_lt", "dataset.imbalance_factor=10", "dataset.limit_train=200", "dataset.limit_test=60",
         "trainer.device=cpu", "trainer.batch_size=32", "trainer.progress_bar=false"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, data_root):
    """A finished 2-epoch MNIST-LT run: the stage 1 every test starts from."""
    cwd = tmp_path_factory.mktemp("stage1")
    run_dir = cwd / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        assert imbench_main([*SMALL, f"dataset.root={data_root}", "trainer.epochs=2", f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def stage2(compose_cfg, data_root, stage1, preset, run_dir, *extra):
    return run(compose_cfg([f"experiment=decoupled/{preset}", f"stage.init_from={stage1}", *SMALL,
                            f"dataset.root={data_root}", *extra]), run_dir)


def test_crt_retrains_a_fresh_classifier_on_frozen_features(compose_cfg, data_root, stage1, tmp_path):
    metrics = stage2(compose_cfg, data_root, stage1, "crt", tmp_path, "trainer.epochs=2")
    before, after = weights(stage1), weights(tmp_path)
    features = [key for key in before if not key.startswith("fc.")]
    assert any("running_mean" in key for key in features)
    # every feature weight and BatchNorm statistic is stage 1's (BatchNorm ran in eval mode)
    assert all(torch.equal(before[key], after[key]) for key in features)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    stage1_metrics = json.loads((stage1 / "metrics.json").read_text())
    config = json.dumps(stage1_metrics["config"], sort_keys=True, separators=(",", ":"))
    assert metrics["stage1"] == {"path": str(stage1.resolve()), "final": stage1_metrics["final"],
                                 "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
                                 "method": {"loss": "ce", "reweight": "none", "sampler": "instance"}}
    assert metrics["sampler"] == "class_balanced" and metrics["config"]["stage"]["name"] == "crt"
    assert metrics["epochs_completed"] == 2
    # a stage-2 run is not a stage 1: refused before any data, naming the key
    with pytest.raises(ConfigError, match=r"^stage.init_from=.* is not allowed: it is a stage-2 run itself"):
        preflight(["experiment=decoupled/lws", f"stage.init_from={tmp_path}", *SMALL, f"dataset.root={data_root}"])


def test_lws_learns_only_a_scale_per_class(compose_cfg, data_root, stage1, tmp_path):
    stage2(compose_cfg, data_root, stage1, "lws", tmp_path, "trainer.epochs=1")
    before, after = weights(stage1), weights(tmp_path)
    for key, value in before.items():  # the whole stage-1 model, classifier included, unchanged
        assert torch.equal(after[key.replace("fc.", "fc.classifier.")], value), key
    scales = after["fc.scales"]
    assert scales.shape == (10,) and not torch.equal(scales, torch.ones(10))


def test_tau_normalisation_scores_w_over_its_norm_to_the_tau_without_bias():
    model = resnet32(num_classes=4, in_chans=1)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.fc.bias.normal_()
        features = model.forward_features(x)
        weight, raw = model.fc.weight.clone(), model(x)
        stage = TauNormalization(init_from="unused", taus=[0.0, 0.7])
        for tau in stage.taus:
            with stage.normalized(model, tau):
                got = model(x)
            expected = features @ (weight / weight.norm(dim=1, keepdim=True) ** tau).t()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(model(x), raw)  # the classifier is put back


def test_tau_norm_writes_a_row_per_tau_and_names_the_best(compose_cfg, data_root, stage1, tmp_path):
    taus = [0.0, 0.5, 1.0, 1.5]
    metrics = stage2(compose_cfg, data_root, stage1, "tau_norm", tmp_path, f"stage.taus={taus}")
    rows = list(csv.DictReader(open(tmp_path / "tau_sweep.csv")))
    assert [float(r["tau"]) for r in rows] == taus
    top1 = [float(r["top1"]) for r in rows]
    best = taus[top1.index(max(top1))]  # the first of equal bests
    assert metrics["best_tau"] == best and metrics["final"]["tau"] == best == metrics["best"]["tau"]
    assert metrics["final"]["top1"] == max(top1) and metrics["epochs_completed"] == 0
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # nothing trained


def test_a_stage_2_run_resumes_like_any_other(compose_cfg, data_root, stage1, tmp_path, monkeypatch):
    whole = stage2(compose_cfg, data_root, stage1, "crt", tmp_path / "whole", "trainer.epochs=2")
    overrides = ["experiment=decoupled/crt", f"stage.init_from={stage1}", *SMALL, f"dataset.root={data_root}",
                 "trainer.epochs=2"]
    interrupted_run(compose_cfg, overrides, tmp_path / "stopped", monkeypatch)
    resumed = run(compose_cfg(overrides), tmp_path / "stopped")
    strip = lambda m: {k: v for k, v in m.items() if k not in ("train_time_s", "train_images_per_s")}  # noqa: E731
    assert strip(resumed) == strip(whole)
    assert torch.equal(weights(tmp_path / "whole")["fc.weight"], weights(tmp_path / "stopped")["fc.weight"])
