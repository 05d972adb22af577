"""Multi-label runs through the one training loop: MultiMNIST-LT and COCO end to end (in-process
through cli.main), DFL's learnable gamma and PLM's ratios in TensorBoard and the checkpoint, CB
weights from positives."""

import json

import pytest
import torch

from conftest import SMOKE
from coco_files import file_name, write_coco
from test_cli import read_scalars

from imbalance_bench.losses import class_balanced_weights
from imbalance_bench.train import run

MULTI_LABEL_KEYS = ("map", "mean_f2", "macro_f1", "macro_f2", "precision_at_1", "precision_at_5",
                    "head_map", "medium_map", "tail_map", "per_class_ap")
TINY_MULTIMNIST = ["dataset=multimnist", "dataset.num_train=64", "dataset.num_test=32", "dataset.canvas_size=56",
                   "dataset.imbalance_factor=10"]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root)
    return root


def test_multimnist_plm_end_to_end(imbench_in_process, data_root, tmp_path):
    run_dir = tmp_path / "run"
    code, err = imbench_in_process("experiment=plm_multimnist", *TINY_MULTIMNIST, f"dataset.root={data_root}",
                                   "loss.base=focal", *SMOKE, "trainer.epochs=2", "trainer.max_steps=null",
                                   "trainer.batch_size=32", f"hydra.run.dir={run_dir}")
    assert code == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["label_kind"] == "multi" and metrics["monitor"] == "map" and metrics["loss"] == "plm"
    for key in MULTI_LABEL_KEYS:
        assert key in metrics["final"], key
    assert "top1" not in metrics["final"]
    assert len(metrics["final"]["per_class_ap"]) == 10
    assert 0.0 <= metrics["final"]["map"] <= 1.0
    # PLM's state after each epoch: per-class ratios and divergences, in metrics.json and TensorBoard
    state = metrics["final"]["loss_state"]
    assert len(state["target_ratio"]) == 10 and len(state["divergence_pos"]) == 10
    scalars = read_scalars(run_dir)
    for tag in ("test/map", "test/mean_f2", "test/per_class_ap/7", "loss/target_ratio/0", "loss/target_ratio/9",
                "loss/divergence_neg/3"):
        assert len(scalars[tag]) == 2, tag
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert torch.allclose(checkpoint["loss"]["target_ratio"].double(), torch.tensor(state["target_ratio"]).double())
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    assert stats["label_kind"] == "multi" and stats["cache"] == "created"
    assert stats["train_counts"] == stats["profile_counts"]  # positives per class follow the exp profile exactly
    assert stats["realised_imbalance"] == pytest.approx(10, rel=0.15)
    assert "mAP" in imbench_in_process.stdout + err  # the summary table

    code, err = imbench_in_process(*TINY_MULTIMNIST, f"dataset.root={data_root}", "loss=bce", *SMOKE,
                                   f"hydra.run.dir={tmp_path / 'again'}")
    assert code == 0, err[-3000:]
    assert json.loads((tmp_path / "again" / "dataset_stats.json").read_text())["cache"] == "reused"


@pytest.mark.parametrize("model, timm_name", [("resnet50", "resnet50"), ("resnet101", "resnet101"),
                                              ("seresnext101", "seresnext101_32x4d")])
def test_focal_coco_f2_preset_composes(compose_cfg, model, timm_name):
    overrides = ["experiment=focal_coco_f2"] + ([] if model == "resnet50" else [f"model={model}"])
    cfg = compose_cfg(overrides)
    assert cfg.dataset.name == "coco" and cfg.loss.name == "focal" and cfg.loss.gamma == 2.0
    assert cfg.model.name == timm_name and cfg.model.pretrained is True
    assert cfg.trainer.monitor == "mean_f2" and cfg.reweight.name == "none"


def test_plm_multimnist_preset_sets_its_shot_cut_offs(compose_cfg):
    from imbalance_bench.data.multimnist import checked_quota
    from imbalance_bench.metrics import shot_groups

    cfg = compose_cfg(["experiment=plm_multimnist"])
    assert cfg.loss.name == "plm" and cfg.dataset.name == "multimnist" and cfg.trainer.monitor == "map"
    counts = checked_quota("train", cfg.dataset.num_train, cfg.dataset.imbalance_factor,
                           cfg.dataset.min_digits, cfg.dataset.max_digits)
    groups = shot_groups(counts, cfg.metrics.many_shot_above, cfg.metrics.few_shot_below)
    assert groups == {"many_shot": [0, 1, 2], "medium_shot": [3, 4, 5, 6], "few_shot": [7, 8, 9]}
    assert compose_cfg(["experiment=plm_multimnist", "metrics.many_shot_above=50"]).metrics.many_shot_above == 50


def test_focal_coco_f2_preset_runs_a_step_with_resnet101(imbench_in_process, coco_root, tmp_path):
    """The focal_coco_f2 preset (focal loss, best epoch by mean F2) with a timm ResNet-101 and CB
    weights, one step on 32-px COCO: 80 classes, the images without annotation skipped, and mAP the
    mean of the APs of the classes that have test positives (the others have none)."""
    run_dir = tmp_path / "run"
    code, err = imbench_in_process("experiment=focal_coco_f2", "model=resnet101", "model.pretrained=false",
                                   "reweight=cb", f"dataset.root={coco_root}", "dataset.image_size=32", *SMOKE,
                                   "trainer.max_steps=1", "trainer.batch_size=4", f"hydra.run.dir={run_dir}")
    assert code == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    assert metrics["model"] == "resnet101" and metrics["monitor"] == "mean_f2" and metrics["steps"] == 1
    assert metrics["loss"] == "focal" and metrics["reweight"] == "cb" and metrics["label_kind"] == "multi"
    assert stats["num_classes"] == 80 and stats["image_shape"] == [3, 32, 32]
    assert stats["skipped_no_annotation"]["train"] >= 1
    assert len(metrics["final"]["per_class_ap"]) == 80
    present = [ap for ap, n in zip(metrics["final"]["per_class_ap"], stats["test_counts"]) if n > 0]
    assert all(ap is not None for ap in present)
    assert metrics["final"]["map"] == pytest.approx(sum(present) / len(present))


def test_coco_missing_image_is_one_line(imbench_in_process, tmp_path):
    root = write_coco(tmp_path / "coco")
    victim = next((root / "train2017").iterdir())
    victim.unlink()
    code, err = imbench_in_process("dataset=coco", "loss=bce", f"dataset.root={root}", "dataset.image_size=32", *SMOKE,
                                   f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imbench: error: ") and victim.name in lines[0], err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_coco_truncated_jpeg_in_a_loader_worker(imbench_in_process, tmp_path):
    """A JPEG whose header reads but whose body is cut passes the load-time check and fails in a
    DataLoader worker: one line naming it, or with bad_images=skip a warning and a finished run."""
    root = write_coco(tmp_path / "coco")
    victim = root / "train2017" / file_name("train", 0)
    victim.write_bytes(victim.read_bytes()[:-64])
    args = ["dataset=coco", "loss=bce", f"dataset.root={root}", "dataset.image_size=32", *SMOKE, "trainer.num_workers=1",
            "trainer.batch_size=64"]
    code, err = imbench_in_process(*args, f"hydra.run.dir={tmp_path / 'error'}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"imbench: error: {victim}: unreadable image")
    code, err = imbench_in_process(*args, "dataset.bad_images=skip", f"hydra.run.dir={tmp_path / 'skip'}")
    assert code == 0, err[-3000:]
    assert f"{victim}: unreadable image" in (tmp_path / "skip" / "imbench.log").read_text()  # logged by the worker
    assert (tmp_path / "skip" / "metrics.json").is_file()


def test_coco_decoded_in_the_main_process_trains_the_same(compose_cfg, coco_root, tmp_path):
    """trainer.decode_on_device: workers read bytes and draw the boxes, the loop decodes the batch.
    On the CPU the images are bit-identical to the worker-decoded path, so the runs are too."""
    results = []
    for decode in ("false", "true"):
        cfg = compose_cfg(["dataset=coco", "loss=bce", f"dataset.root={coco_root}", "dataset.image_size=32", *SMOKE,
                           "trainer.num_workers=1", "trainer.max_steps=null", "trainer.batch_size=8",
                           f"trainer.decode_on_device={decode}"])
        results.append(run(cfg, tmp_path / decode))
    assert results[1]["switches"]["decode_on_device"] and not results[0]["switches"]["decode_on_device"]
    assert results[0]["final"] == results[1]["final"]


def test_dfl_learnable_gamma_is_trained_logged_and_saved(compose_cfg, data_root, tmp_path):
    cfg = compose_cfg([*TINY_MULTIMNIST, f"dataset.root={data_root}", "loss=dfl", "loss.learnable=true",
                       "loss.gamma=2.0", *SMOKE, "trainer.epochs=2", "trainer.max_steps=null", "trainer.batch_size=32",
                       "optimizer.lr=0.5"])
    metrics = run(cfg, tmp_path)
    gammas = read_scalars(tmp_path)["loss/gamma"]
    assert len(gammas) == 2
    assert gammas[-1] != pytest.approx(2.0, abs=1e-6)  # it moved
    assert 0.0 <= min(gammas) and max(gammas) <= 5.0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert "gamma_logit" in checkpoint["loss"]
    assert metrics["final"]["loss_state"]["gamma"] == pytest.approx(gammas[-1], rel=1e-5)
    # the loss parameter is in the optimiser, without weight decay
    groups = checkpoint["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0


def test_cb_weights_from_positive_counts_reach_a_multi_label_loss(compose_cfg, data_root, tmp_path, monkeypatch):
    import imbalance_bench.loop as loop_module

    seen = []
    original = loop_module.train_one_epoch

    def spy(run, state, loader, train_step, weights, *rest):
        seen.append(weights.clone())
        return original(run, state, loader, train_step, weights, *rest)

    monkeypatch.setattr(loop_module, "train_one_epoch", spy)
    cfg = compose_cfg([*TINY_MULTIMNIST, f"dataset.root={data_root}", "loss=bce", "reweight=cb", "reweight.beta=0.99",
                       *SMOKE])
    run(cfg, tmp_path)
    positives = json.loads((tmp_path / "dataset_stats.json").read_text())["train_counts"]
    assert positives[0] > positives[-1]
    assert torch.allclose(seen[0], class_balanced_weights(positives, 0.99))


def test_single_label_monitor_on_multi_label_data_is_refused(imbench_in_process, data_root, tmp_path):
    code, err = imbench_in_process(*TINY_MULTIMNIST, "loss=bce", f"dataset.root={data_root}", "trainer.monitor=top1",
                                   *SMOKE, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    assert err.strip().splitlines() == [
        "imbench: error: trainer.monitor=top1 is not allowed for multi-label data: "
        "must be auto or one of map, mean_f2, macro_f1, macro_f2, precision_at_1, precision_at_5"
    ]


@pytest.mark.slow
def test_plm_multimnist_learns_on_real_mnist(imbench, tmp_path):
    """The PLM preset on MultiMNIST-LT built from the real (bundled) MNIST, shortened."""
    run_dir = tmp_path / "plm"
    proc = imbench("experiment=plm_multimnist", f"dataset.root={tmp_path / 'data'}", "dataset.num_train=3000",
                   "dataset.num_test=1000", "trainer.epochs=3", "trainer.progress_bar=false",
                   f"hydra.run.dir={run_dir}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    assert stats["train_counts"] == stats["profile_counts"]
    assert stats["realised_imbalance"] == pytest.approx(10, rel=0.02)
    assert stats["test_counts"] == [stats["test_counts"][0]] * 10
    # chance mAP is the positive rate (about 0.25 per class on the balanced test split); 3 short epochs
    # end at 0.58 with two CPU threads and 0.47 with one (float sums in another order), so the bar sits below both
    assert metrics["final"]["map"] > 0.4
    ratios = metrics["final"]["loss_state"]["target_ratio"]
    assert ratios != pytest.approx(metrics["final"]["loss_state"]["class_ratio"])  # PLM moved its targets
