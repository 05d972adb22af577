"""Multi-process training (imbalance_bench/distributed.py) on the CPU with gloo: each process's part
of every batch, per-image draws made for the global batch, synchronised BatchNorm, and
`torchrun --nproc_per_node=2` training the run one process trains, into one run directory, with
resume."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import imbench_environment
from imbalance_bench.data.images import BatchTransform, DeviceLoader, ImageSplit, make_loader, split_part
from imbalance_bench.distributed import World, global_batch_rows, split_rows
from imbalance_bench.losses.plm import sample_keep_mask
from imbalance_bench.models.sync_batchnorm import AllReduceBatchNorm2d, synchronize_batchnorm

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "imbalance_bench"]


# ------------------------------------------------------------------ parts of a batch


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_parts_are_the_rows_in_order(size):
    for total in range(0, 23):
        parts = [split_rows(total, rank, size) for rank in range(size)]
        expected = torch.tensor_split(torch.arange(total), size)
        assert [list(range(p.start, p.stop)) for p in parts] == [e.tolist() for e in expected]
        assert all(p.total == total for p in parts)


def tiny_split(count: int) -> ImageSplit:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2).contiguous()
    return ImageSplit(images, torch.arange(count))


def batches(loader) -> list[list[int]]:
    return [targets.tolist() for _, targets in loader]


@pytest.mark.parametrize("count, one_process, two_processes", [
    (23, [8, 8, 7], [8, 8, 7]),
    (17, [8, 8], [8, 8]),  # a trailing single image is dropped
    (18, [8, 8, 2], [8, 8, 2]),  # two: one each
    (33, [8, 8, 8, 8], [8, 8, 8, 8]),
])
def test_each_process_gets_its_part_of_every_global_batch(count, one_process, two_processes):
    split = tiny_split(count)
    for build in (
        lambda world: make_loader(split, 8, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(3),
                                  world=world),
        lambda world: make_loader(split, 8, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(3),
                                  world=world),
        lambda world: DeviceLoader(split, 8, shuffle=True, device=torch.device("cpu"),
                                   generator=torch.Generator().manual_seed(3), world=world),
    ):
        whole = batches(build(World()))
        parts = [batches(build(World(rank, 2))) for rank in range(2)]
        assert [len(b) for b in whole] == one_process
        assert [len(a) + len(b) for a, b in zip(*parts)] == two_processes
        assert [a + b for a, b in zip(*parts)] == whole
        assert all(abs(len(a) - len(b)) <= 1 for a, b in zip(*parts))


def test_three_processes_drop_a_trailing_batch_of_two():
    """Fewer images than processes would leave one of them without any."""
    split = tiny_split(18)
    lengths = [len(b) for b in batches(make_loader(split, 8, shuffle=True, num_workers=0,
                                                   generator=torch.Generator().manual_seed(0), world=World(0, 3)))]
    assert lengths == [3, 3]


def test_the_test_split_is_cut_into_blocks_in_order():
    split = tiny_split(11)
    blocks = [split_part(split, *(lambda r: (r.start, r.stop))(split_rows(11, rank, 3))) for rank in range(3)]
    gathered = [t for block in blocks for t in batches(make_loader(block, 4, shuffle=False, num_workers=0))]
    assert sum(gathered, []) == list(range(11))


def test_crops_flips_and_plm_masks_are_drawn_for_the_global_batch():
    """Process r's part of a batch gets exactly the crops, flips and PLM masks that the same images
    get in one process, and every process's random streams end in the same state."""
    images = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    positive = torch.rand(10, 5, generator=torch.Generator().manual_seed(1)) < 0.3
    keep_pos, keep_neg = torch.full((5,), 0.5), torch.full((5,), 0.2)
    transform = BatchTransform(mean=[0.5] * 3, std=[0.25] * 3, crop_padding=2, hflip=True)

    def draw(rows=None, part=slice(None)):
        generator = torch.Generator().manual_seed(7)
        torch.manual_seed(11)
        with global_batch_rows(rows):
            out = transform(images[part], train=True, generator=generator)
            mask = sample_keep_mask(positive[part], keep_pos, keep_neg)
        return out, mask, generator.get_state(), torch.get_rng_state()

    whole = draw()
    parts = [draw(rows, slice(rows.start, rows.stop)) for rows in (split_rows(10, r, 2) for r in range(2))]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    for part in parts:
        assert torch.equal(part[2], whole[2]) and torch.equal(part[3], whole[3])
    assert not torch.equal(parts[0][0], whole[0][:5].flip(0))  # the draws do depend on the image


# ------------------------------------------------------------------ collectives (2 gloo processes)


def _on_two_gloo_processes(rank: int, size: int, rendezvous: str, out: str) -> None:
    """One process of the group: what the collectives and the stateful losses give, into out/RANK.json."""
    torch.set_num_threads(1)  # forked from a process whose intra-op threads it does not have
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=size)
    counts = [19, 11, 5, 3, 1]
    result = {"collectives": _collectives(rank, size),
              "losses": {"one": _stateful_loss_steps(World(), counts),
                         "two": _stateful_loss_steps(World(rank, size), counts)}}
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_gloo_processes(tmp_path_factory) -> list[dict]:
    """What each of two gloo processes computed (one group, started once for the tests that read it;
    forked, so that they start with this process's imports instead of their own)."""
    out = tmp_path_factory.mktemp("gloo")
    mp.start_processes(_on_two_gloo_processes, args=(2, f"file://{out / 'rendezvous'}", str(out)), nprocs=2,
                       start_method="fork")
    return [json.loads((out / f"{rank}.json").read_text()) for rank in range(2)]


def _collectives(rank: int, size: int) -> dict:
    torch.manual_seed(0)
    world = World(rank, size)
    x = (torch.randn(7, 4, 3, 3, dtype=torch.float64) * 3 + 5).requires_grad_()  # 7 images: parts of 4 and 3
    plain = torch.nn.BatchNorm2d(4).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    synced = synchronize_batchnorm(torch.nn.Sequential(plain), torch.device("cpu"))[0]
    synced.load_state_dict(plain.state_dict())
    upstream = torch.randn(7, 4, 3, 3, dtype=torch.float64)
    y = plain(x)
    (y * upstream).sum().backward()
    rows = world.rows(7)
    xs = x.detach()[rows.start:rows.stop].clone().requires_grad_()
    ys = synced(xs)
    (ys * upstream[rows.start:rows.stop]).sum().backward()
    for param in synced.parameters():  # what DDP does to parameter gradients (here: a sum, not a mean)
        dist.all_reduce(param.grad)
    return {
        "type": type(synced).__name__,
        "output": (ys - y[rows.start:rows.stop]).abs().max().item(),
        "input_grad": (xs.grad - x.grad[rows.start:rows.stop]).abs().max().item(),
        "weight_grad": (synced.weight.grad - plain.weight.grad).abs().max().item(),
        "bias_grad": (synced.bias.grad - plain.bias.grad).abs().max().item(),
        "running_mean": (synced.running_mean - plain.running_mean).abs().max().item(),
        "running_var": (synced.running_var - plain.running_var).abs().max().item(),
        "gathered": world.gather_rows(torch.arange(rows.start, rows.stop)).tolist(),
        "max": [world.max(7 * rank), world.max(0)],
        "sum": world.all_reduce_sum(torch.tensor([rank + 1.0])).item(),
        "broadcast": world.broadcast({"dir": f"from rank {rank}"}),
    }


def test_synchronised_batchnorm_and_the_collectives_on_two_gloo_processes(two_gloo_processes):
    """AllReduceBatchNorm2d over parts of 4 and 3 images gives BatchNorm2d's output, input and
    parameter gradients and running statistics on all 7 (float64); gather, any, sum and broadcast
    give what one process has."""
    for rank in range(2):
        result = two_gloo_processes[rank]["collectives"]
        assert result["type"] == "AllReduceBatchNorm2d"
        for key in ("output", "input_grad", "weight_grad", "bias_grad", "running_mean", "running_var"):
            assert result[key] < 1e-12, (rank, key, result[key])
        assert result["gathered"] == list(range(7))
        assert result["max"] == [7, 0]
        assert result["sum"] == 3.0
        assert result["broadcast"] == {"dir": "from rank 0"}


def test_one_process_batchnorm_is_plain_batchnorm():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    synced = AllReduceBatchNorm2d(3)
    x = torch.randn(5, 3, 4, 4)
    assert torch.equal(plain(x), synced(x))
    assert torch.equal(plain.running_var, synced.running_var)


def _stateful_loss_steps(world: World, counts: list[int]) -> dict:
    """Two epochs of three steps of PLM around DFL (learnable gamma) on a tiny BatchNorm network in float64, through
    TrainStep and the DDP wrapper, then the loop's epoch end: counters summed, ratios updated."""
    from imbalance_bench.losses import DualFocalLoss, PartialLabelMasking
    from imbalance_bench.step import Precision, TrainStep
    from imbalance_bench.build import wrap_for_ddp

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)).double()
    with torch.no_grad():  # spread the outputs over PLM's histogram bins (at 0.5 they all look alike)
        model[-1].bias.copy_(torch.tensor([3.0, 1.0, -1.0, -2.0, -3.0]))
    if world.distributed:
        model = synchronize_batchnorm(model, torch.device("cpu"))
    criterion = PartialLabelMasking(DualFocalLoss(alpha=1.0, beta=1.0, gamma=2.0, rho=1.0, learnable=True, gamma_min=0.0,
                                                  gamma_max=5.0), bins=10, lr=0.5)
    criterion.prepare(counts, 27)
    optimizer = torch.optim.SGD([*model.parameters(), *criterion.parameters()], lr=0.5)
    precision = Precision(torch.device("cpu"), False, "bfloat16")
    ddp = wrap_for_ddp(model, criterion, precision, torch.device("cpu")) if world.distributed else None
    step = TrainStep(model, criterion, optimizer, precision, False, False, ddp_module=ddp)
    data = torch.Generator().manual_seed(1)
    images = torch.randn(27, 1, 6, 6, generator=data, dtype=torch.float64)
    targets = (torch.rand(27, 5, generator=data) < torch.tensor([0.7, 0.4, 0.2, 0.1, 0.05])).float()
    torch.manual_seed(5)  # PLM's masks come from the default generator
    model.train(), criterion.train()
    for _ in range(2):  # PLM masks nothing in the first epoch: its target ratios start at the data's
        for first in (0, 9, 18):
            rows = world.rows(9) if world.distributed else None
            part = slice(first + rows.start, first + rows.stop) if rows else slice(first, first + 9)
            with global_batch_rows(rows):
                step(images[part], targets[part], None, (part.stop - part.start) * world.size / 9)
        for counter in criterion.epoch_counters():
            world.all_reduce_sum(counter)
        state = criterion.end_epoch()
    return {"target_ratio": state["target_ratio"], "kept": [state["kept_positive_fraction"],
            state["kept_negative_fraction"]], "gamma": criterion.base.gamma_value,
            "weights": torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()}


def test_loss_state_stays_the_same_on_every_process_and_as_in_one(two_gloo_processes):
    """PLM's ratios (from histograms summed over the processes), DFL's learnable gamma (its gradient
    averaged by DDP with the model's) and the weights after two epochs of batches cut 5 + 4: the
    same on both processes, and as one process gets on the whole batches."""
    results = [two_gloo_processes[rank]["losses"] for rank in range(2)]
    assert results[0]["two"] == results[1]["two"]
    one, two = results[0]["one"], results[0]["two"]
    assert one["gamma"] != 2.0
    assert max(abs(r / (n / (27 - n)) - 1) for r, n in zip(one["target_ratio"], [19, 11, 5, 3, 1])) > 0.01
    assert min(one["kept"]) < 1.0  # the second epoch masked terms
    assert_close(one["target_ratio"], two["target_ratio"], rel=1e-9)
    assert_close(one["kept"], two["kept"], rel=1e-12)
    assert math.isclose(one["gamma"], two["gamma"], rel_tol=1e-6)  # gamma's parameter is float32
    assert_close(one["weights"], two["weights"], rel=1e-6)


# ------------------------------------------------------------------ torchrun, end to end

#: float64, so that a 2-process and a 1-process run can be compared tightly: in float32 the
#: order of floating-point sums differs between them, and training amplifies it (docs/DISTRIBUTED.md)
EQUIVALENCE = ["dataset=mnist_lt", "dataset.imbalance_factor=10", "dataset.limit_train=119", "dataset.limit_test=64",
               "loss=ce", "reweight=none", "optimizer.lr=0.01", "trainer.device=cpu", "trainer.epochs=2",
               "trainer.batch_size=32", "trainer.eval_batch_size=24", "trainer.progress_bar=false",
               "trainer.dtype=float64", "sampler=class_balanced", "sampler.start_epoch=1"]  # re-sampled in epoch 2
TIMING = ("train_s", "eval_s", "train_time_s", "train_images_per_s")


def environment(threads: int = 1) -> dict[str, str]:
    return {**imbench_environment(), "OMP_NUM_THREADS": str(threads)}


def run_torchrun(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=300)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").glob("*/*/.hydra"))


def summary_rows(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(open(run_dir / "summary.csv"))]


def assert_close(one, two, rel: float = 1e-7, path: str = "") -> None:
    """Equal structures whose numbers agree to `rel` (relative) or 1e-9 (absolute)."""
    if isinstance(one, dict):
        assert one.keys() == two.keys(), path
        for key in one:
            assert_close(one[key], two[key], rel, f"{path}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), path
        for i, (a, b) in enumerate(zip(one, two)):
            assert_close(a, b, rel, f"{path}[{i}]")
    elif isinstance(one, str) and isinstance(two, str):
        try:
            assert_close(float(one), float(two), rel, path)
        except ValueError:
            assert one == two, path
    elif isinstance(one, float) and isinstance(two, float):
        assert math.isclose(one, two, rel_tol=rel, abs_tol=1e-9), (path, one, two)
    else:
        assert one == two, (path, one, two)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, data_root) -> Path:
    """The same run in one process (in this one: the same code as the CLI's, without its start-up)."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from imbalance_bench.train import run

    run_dir = tmp_path_factory.mktemp("one") / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*EQUIVALENCE, f"dataset.root={data_root}"])
    run(cfg, run_dir)
    return run_dir


def stop_after_first_checkpoint(args: list[str], cwd: Path) -> str:
    """Start `torchrun ... ARGS` in `cwd`, SIGTERM it once a last.pt exists; returns its stderr."""
    proc = subprocess.Popen([*TORCHRUN, *args], cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(cwd.glob("**/checkpoints/last.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[1]


@dataclass
class StoppedAndResumed:
    cwd: Path
    dirs_after_stop: list[Path]  # the run directories the first, stopped, command left
    stop_stderr: str
    stopped_checkpoint: dict
    run_dir: Path


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_root) -> StoppedAndResumed:
    """`torchrun --nproc_per_node=2` without hydra.run.dir, stopped by SIGTERM to torchrun once the
    epoch-1 checkpoint is written, then the same command with the run directory it made: the
    comparisons below check DDP and its resume at once."""
    cwd = tmp_path_factory.mktemp("two")
    args = [*EQUIVALENCE, f"dataset.root={data_root}"]
    stderr = stop_after_first_checkpoint(args, cwd)
    dirs = [p for p in cwd.glob("outputs/*/*") if p.is_dir()]
    assert len(dirs) == 1, (dirs, stderr[-3000:])
    run_dir = dirs[0]
    assert not (run_dir / "metrics.json").exists(), "the run ended before the signal: no resume was tested"
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    again = run_torchrun([*args, f"hydra.run.dir={run_dir}"], cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    return StoppedAndResumed(cwd, dirs, stderr, stopped, run_dir)


def test_two_processes_train_what_one_process_trains(one_process_run, two_process_run):
    """Same global batch, seed and data (the 2-process run stopped and resumed once): every epoch's
    losses and metrics, the final and best records, and the final weights agree to float64 rounding."""
    two = two_process_run.run_dir
    assert_close(summary_rows(one_process_run), summary_rows(two))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one_process_run, two)]
    assert metrics[0]["processes"] == 1 and metrics[1]["processes"] == 2
    for key in ("final", "best", "best_epoch", "steps", "epochs_completed"):
        assert_close(metrics[0][key], metrics[1][key], path=key)
    # the weights moved in the resumed epoch: the runs compared are not two idle ones
    final = torch.load(two / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(final["fc.weight"], two_process_run.stopped_checkpoint["model"]["fc.weight"])
    # epoch 2 re-samples class-balanced (DRS), in both runs alike: the tail class is drawn more than its count
    draws = metrics[1]["final"]["class_draws"]
    counts = json.loads((two / "dataset_stats.json").read_text())["train_counts"]
    assert draws[-1] > counts[-1] and draws == metrics[0]["final"]["class_draws"]
    for name in ("subset_indices.json", "dataset_stats.json"):
        assert (one_process_run / name).read_text() == (two / name).read_text()
    weights = [torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (one_process_run, two)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert value.dtype == weights[1][key].dtype
        if value.is_floating_point():
            assert torch.allclose(value, weights[1][key], rtol=1e-8, atol=1e-10), key


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_in_one_process(tmp_path, data_root, one_process_run):
    """The checkpoint of a stopped 2-process run holds nothing per process: one process finishes the
    run where the uninterrupted one-process run ends."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    from imbalance_bench.train import run_job

    stderr = stop_after_first_checkpoint([*EQUIVALENCE, f"dataset.root={data_root}", "hydra.run.dir=run"], tmp_path)
    assert not (tmp_path / "run" / "metrics.json").exists(), stderr[-3000:]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*EQUIVALENCE, f"dataset.root={data_root}"])
    assert run_job(cfg, tmp_path / "run").outcome == "resumed"
    assert_close(summary_rows(one_process_run), summary_rows(tmp_path / "run"))


def test_a_stopped_ddp_run_checkpoints_once_and_says_so_once(two_process_run):
    """SIGTERM to torchrun reaches both processes; they agree on the step to stop at, rank 0 writes
    the checkpoint (after epoch 1, or inside epoch 2 with its position) and prints the one line."""
    stops = [line for line in two_process_run.stop_stderr.splitlines() if line.startswith("imbench: stopped by")]
    assert len(stops) == 1 and "SIGTERM" in stops[0], two_process_run.stop_stderr[-3000:]
    assert "imbench: error:" not in two_process_run.stop_stderr
    stopped = two_process_run.stopped_checkpoint
    assert stopped["epoch"] == 1 and (stopped["position"] is None or stopped["position"]["batches_done"] >= 1)
    log = (two_process_run.run_dir / "imbench.log").read_text()
    assert log.count("resuming after epoch 1") == 1


def test_a_ddp_run_has_one_run_directory_written_by_rank_0(two_process_run):
    """Without hydra.run.dir each process would resolve ${now:...} itself: rank 0's directory is the
    only one, with one log (rank 0's), one .hydra/, one TensorBoard stream, and each epoch logged once."""
    run_dir = two_process_run.run_dir
    assert two_process_run.dirs_after_stop == [run_dir]
    assert [p for p in two_process_run.cwd.glob("outputs/*/*") if p.is_dir()] == [run_dir]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([
        ".hydra", "checkpoints", "dataset_stats.json", "imbench.log", "metrics.json", "subset_indices.json",
        "summary.csv", "tensorboard"])
    log = (run_dir / "imbench.log").read_text()
    for epoch in ("epoch 1/2  lr", "epoch 2/2  lr"):
        assert log.count(epoch) == 1, log
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 2  # one per launch
    assert "hydra.run.dir" not in (run_dir / ".hydra" / "overrides.yaml").read_text()  # the task's overrides


def test_a_user_error_under_torchrun_is_one_line_from_rank_0(tmp_path):
    """Every process meets the missing CIFAR files; rank 0 alone says so."""
    proc = run_torchrun(["dataset=cifar10_lt", "trainer.device=cpu", f"dataset.root={tmp_path / 'missing'}"], tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("imbench: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert str(tmp_path / "missing") in errors[0]
    assert not list(tmp_path.rglob("metrics.json"))


def test_under_torchrun_a_busy_run_directory_is_refused_by_every_process_in_one_line(tmp_path, data_root):
    """Another process holds the run directory: rank 0 finds its lock taken, every process stops, rank 0
    alone says so, naming the holder, and nothing is written there."""
    from test_bad_inputs import snapshot
    from test_run_dir import lock_holder

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = lock_holder(run_dir)
    try:
        before = snapshot(run_dir)
        proc = run_torchrun([*EQUIVALENCE, f"dataset.root={data_root}", f"hydra.run.dir={run_dir}"], tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("imbench: error:")]
    assert len(errors) == 1 and f"in use by PID {holder.pid} on " in errors[0], proc.stderr[-3000:]
    assert snapshot(run_dir) == before


def test_rank_0_resolves_the_run_directory_and_the_others_are_quiet(monkeypatch):
    """The run directory goes to every process as one quoted override (whatever its characters);
    processes other than rank 0 also get no .hydra/ and no log file, replacing the user's choice."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from imbalance_bench import cli

    argv = ["loss=ce", "hydra.run.dir=runs/${now:%Y}/x", "hydra/job_logging=default"]
    main = cli.join_ddp_run(argv, argv, World(0, 1))
    assert main[:1] == ["loss=ce"] and len(main) == 3 and main[1] == "hydra/job_logging=default"
    (parsed,) = OverridesParser.create().parse_overrides([main[-1]])
    assert parsed.key_or_group == "hydra.run.dir" and parsed.value() == f"runs/{time.strftime('%Y')}/x"

    monkeypatch.setattr(World, "broadcast", lambda self, value: "runs/a b'c\\d")
    other = cli.join_ddp_run(argv, argv, World(1, 2))
    assert other[0] == "loss=ce" and other[2:] == list(cli.DDP_QUIET)
    (parsed,) = OverridesParser.create().parse_overrides([other[1]])
    assert parsed.value() == "runs/a b'c\\d"


def test_resumed_processes_count_the_checkpoints_epoch_counts_once():
    """A checkpoint written inside an epoch holds PLM's histograms summed over the processes: on
    resume rank 0 carries them on and the others start from zero, so the epoch-end sum is the
    whole run's count whatever the number of processes."""
    from imbalance_bench.checkpoint import Generators, History, TrainState
    from imbalance_bench.losses import PartialLabelMasking, SigmoidCrossEntropy

    def fresh():
        model = torch.nn.Linear(2, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
        criterion = PartialLabelMasking(SigmoidCrossEntropy(), bins=4, lr=0.1)
        criterion.prepare([5, 2, 1], 9)
        return model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), criterion

    model, optimizer, scheduler, scaler, criterion = fresh()
    criterion.hist_pos.fill_(3)
    criterion.kept_neg.fill_(2)
    generators = Generators.seeded(0, torch.device("cpu"))
    checkpoint = TrainState(model, optimizer, scheduler, scaler, criterion, generators, History(monitor="map", steps=4),
                            epoch=1).state_dict(config={})
    for world, count in ((World(0, 2), 3), (World(1, 2), 0), (World(), 3)):
        model, optimizer, scheduler, scaler, criterion = fresh()
        state = TrainState(model, optimizer, scheduler, scaler, criterion, generators, History(monitor="map"))
        state.load_state_dict(checkpoint, carry_counts=world.is_main)
        assert criterion.hist_pos.eq(count).all() and criterion.kept_neg.eq(2 if count else 0).all()
        assert criterion.target_ratio.tolist() == pytest.approx([5 / 4, 2 / 7, 1 / 8])  # state, not counts: kept


def test_a_run_written_before_trainer_dtype_existed_compares_as_float32():
    from imbalance_bench.checkpoint import config_differences

    old = {"trainer": {"epochs": 2}, "seed": 0}
    assert config_differences(old, {"trainer": {"epochs": 2, "dtype": "float32"}, "seed": 0}) == []
    assert config_differences(old, {"trainer": {"epochs": 2, "dtype": "float64"}, "seed": 0}) == ["trainer.dtype"]
