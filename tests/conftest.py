"""Shared fixtures: tiny datasets in their real formats, composed configs, and a CLI runner."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dataset_files import write_cifar10, write_cifar100, write_mnist_from_digits

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# The tests never reach the Hugging Face hub: huggingface_hub reads this when it is imported, and
# the processes the tests start inherit it.
os.environ["HF_HUB_OFFLINE"] = "1"

# Under pytest-xdist (`make test` runs two workers) each worker, and every process it starts, computes
# on one thread: two workers of two threads each would share two cores four ways.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Overrides that shrink any run to a CPU smoke test.
SMOKE = ["trainer.device=cpu", "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=16",
         "trainer.progress_bar=false", "trainer.num_workers=0"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One root holding tiny CIFAR-10, CIFAR-100 (10 train images a class) and MNIST-format datasets."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root)
    write_cifar100(root, train_per_class=10)
    write_mnist_from_digits(root)
    return root


@pytest.fixture
def compose_cfg():
    """Compose the app's config with overrides, exactly as `imbench` would."""

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def random_batch(num_samples: int, num_classes: int, positive_rate: float, seed: int = 0):
    """Seeded (logits, integer labels, multi-hot targets, class weights) for loss tests."""
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_samples, num_classes, generator=g) * 3
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    multi_hot = (torch.rand(num_samples, num_classes, generator=g) < positive_rate).float()
    weights = torch.rand(num_classes, generator=g) + 0.5
    return logits, labels, multi_hot, weights


IMBENCH = [sys.executable, "-m", "imbalance_bench"]


def imbench_environment() -> dict[str, str]:
    """The environment of a CLI run in a test: this one's (offline, see above), unbuffered, no data root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("IMBENCH_DATA_ROOT", None)
    return env


def run_imbench(args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m imbalance_bench ARGS` in `cwd`."""
    return subprocess.run([*IMBENCH, *args], cwd=cwd, env=imbench_environment(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def imbench(tmp_path):
    """Call the CLI from a fresh working directory; returns (completed process, working dir)."""

    def _run(*args, timeout: float = 300):
        return run_imbench(list(args), tmp_path, timeout)

    return _run


def reproduce_script_args(words: list[str], shim_dir: Path) -> list[str]:
    """The arguments `scripts/reproduce_*.sh ARGS` (`words`) passes to `python -m imbalance_bench.reproduce`,
    as bash expands them: the script runs for real, with $IMBENCH_PYTHON a stand-in (written into
    `shim_dir`) that prints its arguments."""
    shim = shim_dir / "print_args"
    shim.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
    shim.chmod(0o755)
    out = subprocess.run(["bash", str(REPO / words[0]), *words[1:]], capture_output=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "IMBENCH_PYTHON": str(shim)}).stdout
    args = out.decode().split("\0")[:-1]
    assert args[:2] == ["-m", "imbalance_bench.reproduce"], args
    return args[2:]


def exit_code(main, args) -> int:
    """Call a console entry point's `main(args)` in this process; its exit code (0 when it returns)."""
    try:
        main(list(args))
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code
    return 0


def imbench_main(args) -> int:
    """`imbench ARGS` (cli.main) in this process, with pytest's arguments out of sys.argv; its exit code.
    Hydra's global state and the logging handlers it configures are put back after."""
    from hydra.core.global_hydra import GlobalHydra

    from imbalance_bench import cli

    root = logging.getLogger()
    handlers, level, argv = list(root.handlers), root.level, sys.argv
    sys.argv = [argv[0]]
    try:
        return exit_code(cli.main, args)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


@pytest.fixture
def imbench_in_process(tmp_path, monkeypatch, capsys):
    """Call `imbench ARGS` (cli.main) in this process from a fresh working directory; returns (exit
    code, stderr), and keeps the last call's stdout as `.stdout`."""
    monkeypatch.chdir(tmp_path)

    def _run(*args) -> tuple[int, str]:
        capsys.readouterr()
        code = imbench_main(args)
        captured = capsys.readouterr()
        _run.stdout = captured.out
        return code, captured.err

    return _run
