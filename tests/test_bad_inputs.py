"""The bad-input suite: every case is a mistake a user makes (a config typo, a damaged dataset or
checkpoint file, a signal), and each asserts the exit code, the one line that names the key or
file, that no traceback is printed, and that the files already in the run directory are intact.

Every case runs in-process through `cli.main`. Config mistakes are caught before Hydra starts; a
case that got past the pre-flight checks fails the test instead of starting a run. Mistakes found
at run time (files, signals) run against a run directory that holds an interrupted earlier run of
the same config. (The real command stopped by a signal from outside: test_resume, test_run_dir.)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from coco_files import write_coco
from conftest import SMOKE, imbench_main
from dataset_files import write_cifar10, write_mnist_from_digits
from imbalance_bench import cli
from imbalance_bench.errors import EXIT_STOPPED
from imbalance_bench.signals import Interrupted
from imbalance_bench.errors import EXIT_USER_ERROR


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(stderr: str, *expected: str, prog: str = "imbench", prefix: str | None = None) -> str:
    """The last line of stderr is `PROG: error: ...` (or starts with `prefix`) and holds each of `expected`."""
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(prefix or f"{prog}: error: "), stderr[-3000:]
    for text in expected:
        assert text in line, line
    return line


# ------------------------------------------------------------------ config mistakes (before any run)

CONFIG_CASES = [
    # (overrides, text naming the key, text naming what is allowed)
    (["dataset.imbalance_factor=0.5"], "dataset.imbalance_factor=0.5", "must be a number >= 1"),
    (["reweight=cb", "reweight.beta=1.0"], "reweight.beta=1.0", "[0, 1)"),
    (["reweight=cb", "reweight.beta=-0.5"], "reweight.beta=-0.5", "[0, 1)"),
    (["loss=focal", "loss.gamma=-1"], "loss.gamma=-1", ">= 0"),
    (["loss=logit_adjusted", "loss.tau=-0.5"], "loss.tau=-0.5", "a number >= 0"),
    (["loss=logit_adjusted", "dataset=multimnist"], "loss=logit_adjusted is not allowed with dataset=multimnist",
     "use one of asl, bce, dfl, focal, plm"),
    (["loss=hinge", "dataset=multimnist"], "loss=hinge is not allowed with dataset=multimnist",
     "use one of asl, bce, dfl, focal, plm"),
    (["loss=hinge", "loss.margin=0"], "loss.margin=0", "a number > 0"),
    (["loss=ldam", "loss.form=squared"], "loss.form=squared", "one of: ce, hinge"),
    (["optimizer.lr=0"], "optimizer.lr=0", "a number > 0"),
    (["trainer.epochs=0"], "trainer.epochs=0", "an integer >= 1"),
    (["trainer.batch_size=0"], "trainer.batch_size=0", "an integer >= 1"),
    (["trainer.epochs=ten"], "trainer.epochs=ten", "Integer"),
    (["trainer.deterministic=maybe"], "trainer.deterministic=maybe", "not a valid bool"),
    (["trainer.resume=true"], "trainer.resume=true", "auto, false or the path of a checkpoint"),
    (["trainer.epoch=3"], "trainer.epoch", "known keys of trainer"),
    (["+trainer.speed=fast"], "trainer.speed", "known keys of trainer"),
    (["dataset=imagenet_lt"], "dataset=imagenet_lt", "cifar100_lt, cifar10_lt, coco, mnist_lt, multimnist"),
    (["loss=nonexistent"], "loss=nonexistent",
     "asl, balanced_softmax, bce, ce, dfl, focal, hinge, ldam, logit_adjusted, plm"),
    (["model=vgg"], "model=vgg", "resnet32"),
    (["reweight=sqrt"], "reweight=sqrt", "cb, inverse_freq, none"),
    (["sampler=uniform"], "sampler=uniform", "class_balanced, effective_number, instance, progressive, square_root"),
    (["sampler=class_balanced", "sampler.start_epoch=4"], "sampler.start_epoch=4", "< trainer.epochs (4)"),
    (["experiment=cui2019_table2/nope"], "experiment=cui2019_table2/nope", "cui2019_table2/softmax"),
    (["-m", "dataset.imbalance_factor=10,0.5"], "dataset.imbalance_factor=0.5", ">= 1"),
    (["-m", "loss=ce,nonexistent"], "loss=nonexistent", "asl, balanced_softmax"),
    (["dataset.imbalance_factor=10,20"], "dataset.imbalance_factor=10,20", "-m"),
    (["reweight=none", "reweight.beta=0.5"], "reweight.beta", "known keys of reweight: name, start_epoch"),
    (["optimizer=adamw", "optimizer.betas=[2,3]"], "optimizer.betas", "two numbers in [0, 1)"),
    (["optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer.nesterov=true", "momentum > 0"),
    (["scheduler=warmup_multistep", "scheduler.milestones=[160,120]"], "scheduler.milestones", "non-decreasing"),
    (["++trainer.speed=fast"], "trainer.speed", "known keys of trainer"),
    (["+trainer.epochs=3"], "trainer.epochs", "already"),
    (["trainer.device=cuda:x"], "trainer.device=cuda:x", "auto, cpu, cuda, cuda:N"),
    (["dataset.limit_train=-5"], "dataset.limit_train=-5", "null or an integer >= 1"),
    (["dataset=multimnist", "dataset.min_digits=0"], "dataset.min_digits=0", "1..10"),
    (["dataset=multimnist", "dataset.min_digits=3", "dataset.max_digits=2"], "dataset.max_digits=2",
     ">= dataset.min_digits"),
    (["dataset=multimnist", "dataset.canvas_size=20"], "dataset.canvas_size=20", ">= 28"),
    (["dataset=coco", "model=resnet50", "dataset.bad_images=ignore"], "dataset.bad_images=ignore", "error, skip"),
    (["dataset=coco", "model=resnet50", "dataset.augment.scale=[0.8,0.5]"], "dataset.augment.scale",
     "0 < lo <= hi <= 1"),
    (["dataset=cifar10_lt", "dataset.imbalance_factor=null"], "dataset.imbalance_factor", "Optional"),
    (["loss=dfl", "loss.rho=0.5"], "loss.rho=0.5", ">= 1"),
    (["loss=dfl", "loss.gamma=7"], "loss.gamma=7", "[loss.gamma_min, loss.gamma_max]"),
    (["loss=plm", "loss.base=ce"], "loss.base=ce", "bce, focal, dfl"),
    (["dataset=multimnist", "loss=plm", "loss.focal.softmax=true"], "loss.focal.softmax=true",
     "PLM masks one-vs-all sigmoid terms"),
    (["loss=plm", "loss.bins=1"], "loss.bins=1", ">= 2"),
    (["metrics.threshold=1.5"], "metrics.threshold=1.5", "(0, 1)"),
    (["metrics.threshold=0"], "metrics.threshold=0", "(0, 1)"),
    (["trainer.monitor=auc"], "trainer.monitor=auc", "auto, top1"),
    (["dataset=multimnist", "trainer.monitor=top1"], "trainer.monitor=top1", "map, mean_f2"),
    # incompatible combinations
    (["dataset=multimnist", "loss=ce"], "loss=ce is not allowed with dataset=multimnist (multi-label)",
     "asl, bce, dfl, focal, plm"),
    (["loss=plm"], "loss=plm is not allowed with dataset=mnist_lt (single-label)",
     "asl, balanced_softmax, bce, ce, dfl, focal, hinge, ldam, logit_adjusted"),
    (["dataset=coco", "model=resnet50", "loss=focal", "loss.softmax=true"], "loss.softmax=true", "one label per image"),
    (["dataset=coco", "loss=bce"], "model=resnet32 is not allowed with dataset=coco at 224 px",
     "model.max_image_size=null to allow it"),
    (["dataset=multimnist", "loss=bce", "dataset.canvas_size=96"], "model=resnet32 is not allowed with dataset=multimnist at 96 px",
     "resnet50"),
    (["dataset=coco", "model=resnet50", "dataset.head_count=100"], "dataset.head_count=100", "dataset.imbalance_factor"),
    (["model.max_image_size=0"], "model.max_image_size=0", "null or an integer >= 1"),
    # decoupled classifiers: the stage-1 run (outputs/earlier: cifar10_lt, resnet32, finished), read before any data
    (["experiment=decoupled/crt"], "stage.init_from=null is not allowed with stage=crt", "finished stage-1 run"),
    (["experiment=decoupled/tau_norm"], "stage.init_from=null is not allowed with stage=tau_norm",
     "finished stage-1 run"),
    (["experiment=decoupled/lws", "stage.init_from=outputs/nowhere"], "stage.init_from=outputs/nowhere",
     "no such directory"),
    (["experiment=decoupled/crt", "stage.init_from=outputs"], "stage.init_from=outputs", "no finished run"),
    (["experiment=decoupled/crt", "stage.init_from=outputs/earlier"], "stage.init_from=outputs/earlier",
     "another dataset, subset or model (differs in dataset._target_"),
    (["experiment=decoupled/crt", "stage.init_from=outputs/earlier", "dataset=cifar10_lt", "model=resnet50",
      "model.max_image_size=null"], "stage.init_from=outputs/earlier", "differs in model.max_image_size, model.name"),
    (["experiment=decoupled/crt", "stage.init_from=outputs/earlier", "dataset=cifar10_lt",
      "dataset.imbalance_factor=50"], "stage.init_from=outputs/earlier", "differs in dataset.imbalance_factor"),
    (["stage.init_from=outputs/earlier"], "stage.init_from=outputs/earlier is not allowed with stage=none",
     "experiment=decoupled/crt"),
    (["experiment=decoupled/tau_norm", "stage.taus=[]"], "stage.taus", "a non-empty list of numbers >= 0"),
    # the command itself
    (["-m", "hydra/launcher=slurmx", "loss=ce,focal"], "hydra/launcher=slurmx", "basic, joblib, pack, slurm"),
    (["-m", "--cfg", "job", "loss=ce,focal"], "--multirun and --cfg cannot be given together", "without -m"),
    # values past what their consumers take (numpy's seeds, float32, the image side): refused before the run
    (["seed=4294967296"], "seed=4294967296", "<= 2^32 - 1"),
    (["optimizer.lr=1e39"], "optimizer.lr=1e+39", "<= the float32 maximum"),
    (["optimizer.weight_decay=1e300"], "optimizer.weight_decay=1e+300", "<= the float32 maximum"),
    (["dataset.augment.crop_padding=1000000000"], "dataset.augment.crop_padding=1000000000", "[0, 28]"),
    (["optimizer=adamw", "optimizer.lr=3e38"], "optimizer.lr=3e+38", "optimizer.lr / (1 - optimizer.betas[0])"),
    (["trainer.num_workers=100000"], "trainer.num_workers=100000", "<= 256"),
    # interpolations that cannot be resolved
    (["trainer.epochs=${oc.env:IMBENCH_UNSET_IN_TESTS}"], "trainer.epochs=${oc.env:IMBENCH_UNSET_IN_TESTS}",
     "Environment variable 'IMBENCH_UNSET_IN_TESTS' not found"),
    (["seed=${seed}"], "seed=${seed}", "Recursive interpolation"),
    (["trainer.epochs=${trainer.nope}"], "trainer.epochs=${trainer.nope}", "Interpolation key 'trainer.nope' not found"),
]


@pytest.fixture(scope="module")
def earlier_outputs(tmp_path_factory, data_root) -> Path:
    """A working directory whose outputs/ holds a finished run (checkpoints, metrics, logs)."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        code = imbench_main(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE,
                             "hydra.run.dir=outputs/earlier"])
    assert code == 0
    assert (cwd / "outputs" / "earlier" / "checkpoints" / "best.pt").is_file()
    return cwd


@pytest.mark.parametrize("args, key, allowed", CONFIG_CASES, ids=[" ".join(a) for a, _, _ in CONFIG_CASES])
def test_a_config_mistake_is_one_line_before_anything_runs(earlier_outputs, monkeypatch, capsys, args, key, allowed):
    monkeypatch.chdir(earlier_outputs)
    monkeypatch.setattr(cli, "hydra_app", lambda: pytest.fail("the pre-flight checks let it through"))
    before = snapshot(earlier_outputs)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    assert exit_info.value.code == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert_one_line(captured.err, key, allowed)
    assert "Traceback" not in captured.out
    assert snapshot(earlier_outputs) == before  # nothing started, nothing written


def test_a_launcher_without_its_plugin_names_the_extra(earlier_outputs, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.") else find_spec(name, *a))
    monkeypatch.setattr(cli, "hydra_app", lambda: pytest.fail("the pre-flight checks let it through"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["-m", "hydra/launcher=slurm", "loss=ce,focal"])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert_one_line(capsys.readouterr().err, "hydra/launcher=slurm", "pip install 'imbalance-bench[launchers]'")


TORCHRUN_CASES = [
    (["-m", "loss=ce,bce"], "-m/--multirun under torchrun", "hydra/launcher=pack"),
    (["trainer.device=cuda:1"], "trainer.device=cuda:1 is not allowed under torchrun", "use auto, cuda or cpu"),
    (["trainer.batch_size=1"], "trainer.batch_size=1 is not allowed with 2 processes", "at least one image"),
]


@pytest.mark.parametrize("args,key,allowed", TORCHRUN_CASES, ids=[c[1] for c in TORCHRUN_CASES])
def test_what_torchrun_cannot_do_is_one_line_before_any_process_group(args, key, allowed, earlier_outputs,
                                                                       monkeypatch, capsys):
    """Under torchrun (WORLD_SIZE > 1) a sweep, or one fixed GPU for every process, is refused by the
    pre-flight checks, which run before the processes join a group (none is started here)."""
    monkeypatch.chdir(earlier_outputs)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "hydra_app", lambda: pytest.fail("the pre-flight checks let it through"))
    monkeypatch.setattr(cli, "init_world", lambda: pytest.fail("joined a process group before the checks"))
    before = snapshot(earlier_outputs)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert_one_line(err, key, allowed)
    assert snapshot(earlier_outputs) == before


def test_the_cases_are_distinct_and_the_suite_has_at_least_25():
    keys = ([tuple(args) for args, _, _ in CONFIG_CASES] + [tuple(args) for args, _, _ in TORCHRUN_CASES]
            + [name for name, _ in FILE_CASES] + ["sigterm", "another config's run directory"])
    assert len(set(keys)) == len(keys) >= 25


# ------------------------------------------------------------------ run-time mistakes (files, signals)

TINY = ["trainer.device=cpu", "trainer.epochs=2", "trainer.batch_size=32", "trainer.progress_bar=false"]


def write_dataset(kind: str, root: Path) -> list[str]:
    """A tiny dataset of `kind` under `root`; returns the overrides that train on it."""
    if kind == "cifar":
        write_cifar10(root, train_per_class=8, test_per_class=4)
        return ["dataset=cifar10_lt", f"dataset.root={root}", "dataset.imbalance_factor=4"]
    if kind == "mnist":
        write_mnist_from_digits(root)
        return ["dataset=mnist_lt", f"dataset.root={root}", "dataset.imbalance_factor=4", "dataset.limit_train=120",
                "dataset.limit_test=60"]
    write_coco(root, num_train=12, num_val=6)
    return ["dataset=coco", "loss=bce", f"dataset.root={root}", "dataset.image_size=32"]


@contextmanager
def sigterm_after_each_epoch(monkeypatch) -> Iterator[None]:
    """While the block runs, this process gets SIGTERM as each training epoch's pass ends (a stop that
    the run must turn into a checkpoint); the loop is put back after."""
    import imbalance_bench.loop as loop_module

    original = loop_module.train_one_epoch

    def then_signal(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(loop_module, "train_one_epoch", then_signal)
    try:
        yield
    finally:
        monkeypatch.setattr(loop_module, "train_one_epoch", original)


def interrupted_run(compose_cfg, overrides: list[str], run_dir: Path, monkeypatch) -> None:
    """Train `overrides` in `run_dir` and stop it by SIGTERM after its first epoch, as a pre-empted
    job leaves it: last.pt (unfinished), best.pt, summary.csv, dataset_stats.json, no metrics.json."""
    from imbalance_bench.train import run

    with sigterm_after_each_epoch(monkeypatch):
        with pytest.raises(Interrupted):
            run(compose_cfg(overrides), run_dir)
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()


def cut_in_half(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def wrong_idx_magic(path: Path) -> None:
    import gzip

    with gzip.open(path, "rb") as fh:
        blob = bytearray(fh.read())
    blob[2] = 0x0D  # the type byte: 0x08 (ubyte) -> 0x0D (float)
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(blob))


def drop_json_key(key: str):
    def damage(path: Path) -> None:
        content = json.loads(path.read_text())
        content.pop(key)
        path.write_text(json.dumps(content))

    return damage


def another_configs_metrics(path: Path) -> None:
    """A completed metrics.json in the run directory, of a config whose optimizer.lr differs."""
    config = torch.load(path.parent / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["config"]
    config["optimizer"]["lr"] *= 2
    path.write_text(json.dumps({"schema_version": 1, "status": "completed", "config": config}))


def cifar_without_labels(path: Path) -> None:
    import pickle

    import numpy as np

    with open(path, "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 3072), dtype=np.uint8)}, fh)


# case: (dataset, the file to damage under the dataset root ("data:") or the run directory ("run:"), how, the line says)
FILE_CASES = [
    ("cifar pickle cut short", ("cifar", "data:cifar-10-batches-py/data_batch_2", cut_in_half,
                                "data_batch_2: not a readable CIFAR pickle")),
    ("cifar pickle without labels", ("cifar", "data:cifar-10-batches-py/test_batch", cifar_without_labels,
                                     "test_batch: missing key 'labels'")),
    ("idx with a wrong magic number", ("mnist", "data:train-images-idx3-ubyte.gz", wrong_idx_magic,
                                       "train-images-idx3-ubyte.gz: wrong idx magic number")),
    ("coco json without annotations", ("coco", "data:annotations/instances_train2017.json",
                                       drop_json_key("annotations"), "no 'annotations' list")),
    ("coco json cut short", ("coco", "data:annotations/instances_val2017.json", cut_in_half,
                             "instances_val2017.json: not valid JSON")),
    ("checkpoint cut short", ("cifar", "run:checkpoints/last.pt", cut_in_half, "last.pt: not a readable checkpoint")),
    ("metrics of another config", ("cifar", "run:metrics.json", another_configs_metrics,
                                   "metrics.json holds a completed run of another config (differs in optimizer.lr)")),
]


@pytest.mark.parametrize("case, spec", FILE_CASES, ids=[name for name, _ in FILE_CASES])
def test_a_damaged_file_is_one_line_and_the_earlier_run_is_intact(compose_cfg, tmp_path, monkeypatch,
                                                                   imbench_in_process, case, spec):
    kind, target, damage, expected = spec
    overrides = [*write_dataset(kind, tmp_path / "data"), *TINY]
    run_dir = tmp_path / "run"
    interrupted_run(compose_cfg, overrides, run_dir, monkeypatch)
    where, _, relative = target.partition(":")
    path = (tmp_path / "data" if where == "data" else run_dir) / relative
    damage(path)
    before = snapshot(run_dir)

    code, err = imbench_in_process(*overrides, f"hydra.run.dir={run_dir}")

    assert code == EXIT_USER_ERROR, err[-3000:]
    line = assert_one_line(err, expected)
    assert str(path) in line or path.name in line
    after = snapshot(run_dir)
    assert {name: after.get(name) for name in before} == before  # every earlier file as it was
    assert not any(name.endswith(".tmp") for name in after)  # no half-written file left behind
    assert "metrics.json" not in after or damage is another_configs_metrics


def test_a_run_of_another_config_in_a_finished_run_directory_changes_no_file(data_root, tmp_path,
                                                                              imbench_in_process):
    """Different overrides in a finished run's directory: refused with one line before Hydra's or the
    run's files are written, so every file, .hydra/ and imbench.log included, stays byte for byte."""
    run_dir = tmp_path / "run"
    overrides = [*SMOKE, f"dataset.root={data_root}", "dataset.limit_train=200", "dataset.limit_test=50",
                 "loss=focal", f"hydra.run.dir={run_dir}"]
    code, err = imbench_in_process(*overrides)
    assert code == 0, err
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / "metrics.json").is_file()
    before = snapshot(run_dir)

    code, err = imbench_in_process(*overrides, "loss.gamma=1.5")

    assert code == EXIT_USER_ERROR
    assert_one_line(err, f"{run_dir / 'metrics.json'} holds a completed run of another config (differs in loss.gamma)")
    assert snapshot(run_dir) == before


def test_sigterm_during_a_resumed_run_keeps_every_checkpoint_whole(compose_cfg, tmp_path, monkeypatch,
                                                                   imbench_in_process):
    """SIGTERM while a resumed run trains (sent once it has checkpointed an epoch of its own): exit 75
    and one line; last.pt moves on (it is rewritten atomically, never half-written), best.pt and the
    earlier summary rows stay readable."""
    import imbalance_bench.loop as loop_module

    overrides = [*write_dataset("mnist", tmp_path / "data"), *TINY, "trainer.epochs=4"]
    run_dir = tmp_path / "run"
    interrupted_run(compose_cfg, overrides, run_dir, monkeypatch)
    last = run_dir / "checkpoints" / "last.pt"
    first_rows = (run_dir / "summary.csv").read_text()

    write, sent = loop_module.save_checkpoint, []

    def write_then_signal(path, content):
        write(path, content)
        if path.name == "last.pt" and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop_module, "save_checkpoint", write_then_signal)
    code, err = imbench_in_process(*overrides, f"hydra.run.dir={run_dir}")

    assert sent and code == EXIT_STOPPED, err[-3000:]
    assert_one_line(err, "SIGTERM after ", f"checkpoint {last}", "run the same command again to resume",
                    prefix="imbench: stopped by ")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] >= 2 and checkpoint["history"]["epochs"][0]["epoch"] == 1
    assert torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["epoch"] >= 1
    assert (run_dir / "summary.csv").read_text().startswith(first_rows)
    assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.rglob("*.tmp"))
