"""Files imbench reads are data, never code: a crafted CIFAR pickle or checkpoint is refused with one
line naming the file before anything it names is called, while the files imbench writes, checkpoints
written before RNG states were stored as tensors, and CIFAR pickles written by Python 2 (the official
files) or Python 3 all still read."""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dataset_files import NumPy1Pickler, write_cifar10, write_cifar100, write_mnist_from_digits
from imbalance_bench.checkpoint import Generators, load_checkpoint, rng_state, set_rng_state
from imbalance_bench.signals import Interrupted
from imbalance_bench.data.cifar import read_cifar
from imbalance_bench.errors import EXIT_USER_ERROR, DataError
from imbalance_bench.runfiles import save_checkpoint

TRAINER = ["trainer.device=cpu", "trainer.epochs=2", "trainer.batch_size=16", "trainer.progress_bar=false",
           "trainer.num_workers=0"]
SMALL_MNIST = ["dataset=mnist_lt", "dataset.imbalance_factor=10", "dataset.limit_train=64", "dataset.limit_test=20",
               *TRAINER]
TIMING = ("train_time_s", "train_images_per_s")


class Payload:
    """Pickles as `open(marker, "w")`: whatever unpickles it with a plain unpickler creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_the_payload_runs_where_nothing_stops_it(tmp_path):
    """The control for the refusals below: a plain unpickler, and torch.load(weights_only=False) as
    imbench used to call it, do run the payload."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps({b"data": Payload(marker)}, protocol=2))[b"data"].close()
    assert marker.exists()
    marker.unlink()
    torch.save({"rng": Payload(marker)}, tmp_path / "last.pt")
    torch.load(tmp_path / "last.pt", weights_only=False)["rng"].close()
    assert marker.exists()


# ------------------------------------------------------------------ crafted files, through the CLI


def crafted_cifar_batch(tmp_path: Path, marker: Path) -> tuple[Path, list[str]]:
    folder = write_cifar10(tmp_path / "data", train_per_class=2, test_per_class=1)
    path = folder / "data_batch_1"
    path.write_bytes(pickle.dumps({b"batch_label": b"training batch", b"labels": [0], b"data": Payload(marker)},
                                  protocol=2))
    return path, ["dataset=cifar10_lt", f"dataset.root={tmp_path / 'data'}"]


def crafted_cifar_meta(tmp_path: Path, marker: Path) -> tuple[Path, list[str]]:
    folder = write_cifar10(tmp_path / "data", train_per_class=2, test_per_class=1)
    path = folder / "batches.meta"
    path.write_bytes(pickle.dumps({"label_names": Payload(marker)}))  # as Python 3 writes it: str keys
    return path, ["dataset=cifar10_lt", f"dataset.root={tmp_path / 'data'}"]


def crafted_checkpoint(where: str, content):
    """A checkpoint holding the payload at `where` (relative to tmp_path), and the overrides that
    load it: the run directory's own last.pt, or a path given as trainer.resume."""

    def craft(tmp_path: Path, marker: Path) -> tuple[Path, list[str]]:
        write_mnist_from_digits(tmp_path / "data")
        path = tmp_path / where
        path.parent.mkdir(parents=True)
        torch.save(content(marker), path)
        resume = [] if where == "run/checkpoints/last.pt" else [f"trainer.resume={path}"]
        return path, [*SMALL_MNIST, f"dataset.root={tmp_path / 'data'}", *resume]

    return craft


def last_with_payload(marker: Path) -> dict:
    return {"epoch": 1, "step": 4, "model": {"fc.weight": torch.zeros(2)}, "rng": Payload(marker), "history": {},
            "config": {}}


def best_with_payload(marker: Path) -> dict:
    return {"epoch": 1, "monitor": "top1", "value": 0.5, "model": {"fc.weight": Payload(marker)}, "config": {}}


#: (the line's start after the file name, its end: how to go on)
CIFAR_REFUSED = ("refused: it names io.open, and a CIFAR pickle holds only NumPy arrays and plain values",
                 "; replace it with the official file")
CHECKPOINT_REFUSED = ("refused: it holds objects other than tensors and plain values (io.open)",
                      "; delete it or set trainer.resume=false")
CRAFTED = [
    ("cifar data batch", crafted_cifar_batch, CIFAR_REFUSED),
    ("cifar meta", crafted_cifar_meta, CIFAR_REFUSED),
    ("last.pt in the run directory", crafted_checkpoint("run/checkpoints/last.pt", last_with_payload),
     CHECKPOINT_REFUSED),
    ("trainer.resume=PATH", crafted_checkpoint("elsewhere/stopped.pt", last_with_payload), CHECKPOINT_REFUSED),
    ("best.pt as trainer.resume=PATH", crafted_checkpoint("other/checkpoints/best.pt", best_with_payload),
     CHECKPOINT_REFUSED),
]


@pytest.mark.parametrize("craft, line_parts", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_file_is_refused_in_one_line_and_its_payload_never_runs(imbench_in_process, tmp_path, craft,
                                                                          line_parts):
    marker = tmp_path / "marker"
    path, overrides = craft(tmp_path, marker)

    code, err = imbench_in_process(*overrides, "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}")

    assert code == EXIT_USER_ERROR, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    [line] = [line for line in err.splitlines() if line.strip()]
    refusal, how_to_go_on = line_parts
    assert line.startswith(f"imbench: error: {path}: {refusal}") and line.endswith(how_to_go_on), line
    assert not marker.exists()


# ------------------------------------------------------------------ checkpoints: what imbench writes reads back


def test_every_rng_state_round_trips_through_the_weights_only_loader(tmp_path):
    """Python's, NumPy's, torch's and the run's own generators draw the same numbers after a
    save_checkpoint / weights-only load / set_rng_state round trip."""

    def draws(generators: Generators) -> list:
        return [random.random(), np.random.random(), np.random.standard_normal(), torch.rand(2).tolist(),
                torch.randperm(5, generator=generators.shuffle).tolist(),
                torch.rand(2, generator=generators.augment).tolist()]

    generators = Generators.seeded(3, torch.device("cpu"))
    np.random.standard_normal()  # NumPy's state then holds a cached Gaussian too
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state(generators)})
    expected = draws(generators)
    loaded = torch.load(tmp_path / "rng.pt", map_location="cpu", weights_only=True)  # no allow-list at all
    restored = Generators.seeded(0, torch.device("cpu"))
    set_rng_state(loaded["rng"], restored)
    assert draws(restored) == expected


def stopped_run(compose_cfg, overrides: list[str], run_dir: Path, monkeypatch) -> None:
    """Train `overrides` in `run_dir` and send SIGTERM as its second epoch starts: the run stops after
    that epoch's first step, so last.pt holds every part of a checkpoint, the position inside the
    epoch included."""
    import imbalance_bench.loop as loop_module
    from imbalance_bench.train import run

    original = loop_module.train_one_epoch

    def second_epoch_signalled(run_context, state, loader, train_step, weights, epoch, *rest):
        if epoch == 1:  # 0-based
            os.kill(os.getpid(), signal.SIGTERM)
        return original(run_context, state, loader, train_step, weights, epoch, *rest)

    monkeypatch.setattr(loop_module, "train_one_epoch", second_epoch_signalled)
    with pytest.raises(Interrupted, match=r"after step \d+ \(epoch 2\)"):
        run(compose_cfg(overrides), run_dir)
    monkeypatch.setattr(loop_module, "train_one_epoch", original)


#: (overrides, the loss state in last.pt): LDAM's margins follow from the class counts and are not saved
STATEFUL_LOSSES = [
    ([*SMALL_MNIST, "loss=ldam"], set()),
    ([*SMALL_MNIST, "loss=dfl", "loss.learnable=true"], {"gamma_logit"}),
    (["dataset=multimnist", "dataset.num_train=64", "dataset.num_test=16", "dataset.canvas_size=56", *TRAINER,
      "loss=plm"], {"target_ratio", "hist_pos", "kept_pos"}),
]


@pytest.mark.parametrize("loss, state", STATEFUL_LOSSES, ids=["ldam", "dfl", "plm"])
def test_a_stopped_run_with_loss_state_checkpoints_only_tensors_and_plain_values(compose_cfg, data_root, tmp_path,
                                                                                 monkeypatch, loss, state):
    from imbalance_bench.train import run

    overrides = [*loss, f"dataset.root={data_root}"]
    run_dir = tmp_path / "run"
    stopped_run(compose_cfg, overrides, run_dir, monkeypatch)
    for name in ("last.pt", "best.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(run_dir / "checkpoints" / name) == []
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["position"]["batches_done"] == 1  # stopped inside an epoch: the position is saved too
    assert state <= set(last["loss"])
    assert run(compose_cfg(overrides), run_dir)["epochs_completed"] == 2


def old_layout(path: Path, numpy_major: int) -> None:
    """Rewrite the checkpoint at `path` as imbench wrote it before RNG states were tensors: NumPy's
    state as np.random.get_state() gives it (an ndarray), pickled by NumPy `numpy_major`; and before
    each option named its class, its config's `_target_`s the factories that picked one by `name`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for group, factory in (("dataset", "data.create_dataset"), ("loss", "losses.create_loss"),
                           ("reweight", "losses.create_reweighting")):
        checkpoint["config"][group]["_target_"] = f"imbalance_bench.{factory}"
    name, keys, *rest = checkpoint["rng"]["numpy"]
    checkpoint["rng"]["numpy"] = (name, keys.numpy().astype(np.uint32), *rest)
    numpy1 = types.ModuleType("numpy1_pickle")
    numpy1.Pickler = NumPy1Pickler
    torch.save(checkpoint, path, **({"pickle_module": numpy1} if numpy_major == 1 else {}))


def test_a_checkpoint_of_the_old_layout_resumes_like_a_new_one(compose_cfg, data_root, tmp_path, monkeypatch, caplog):
    """A last.pt written before RNG states were tensors, by NumPy 2 or NumPy 1 (whose module names
    NumPy 2 no longer writes), and before options named their classes, loads with NumPy's state as it was, and the run resumed from it ends
    exactly as one resumed from the same checkpoint in the new layout."""
    from imbalance_bench.train import run

    overrides = [*SMALL_MNIST, f"dataset.root={data_root}"]
    new = tmp_path / "new"
    stopped_run(compose_cfg, overrides, new, monkeypatch)
    saved = torch.load(new / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["rng"]["numpy"]
    for numpy_major in (2, 1):
        old = tmp_path / f"old_numpy{numpy_major}"
        shutil.copytree(new, old)
        old_layout(old / "checkpoints" / "last.pt", numpy_major)
        needs = torch.serialization.get_unsafe_globals_in_checkpoint(old / "checkpoints" / "last.pt")
        assert {f"numpy.{'_' if numpy_major == 2 else ''}core.multiarray._reconstruct", "numpy.ndarray"} <= set(needs)
        np.random.seed(12345)
        set_rng_state(load_checkpoint(old / "checkpoints" / "last.pt",
                                      OmegaConf.to_container(compose_cfg(overrides), resolve=True))["rng"],
                      Generators.seeded(0, torch.device("cpu")))
        state = np.random.get_state()
        assert np.array_equal(state[1], saved[1].numpy()) and state[2:] == saved[2:]

    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}  # noqa: E731
    with caplog.at_level(logging.INFO, logger="imbench"):
        from_old = run(compose_cfg(overrides), tmp_path / "old_numpy1")
    assert "resuming after epoch 1" in caplog.text
    assert strip(from_old) == strip(run(compose_cfg(overrides), new))


# ------------------------------------------------------------------ CIFAR pickles from Python 2 and Python 3


def test_cifar_pickles_written_by_python3_read_like_the_official_python2_ones(tmp_path):
    """The official files (Python 2: bytes keys, NumPy 1's names), files written by Python 3 with str
    keys at its highest protocol (where NumPy pickles arrays by _frombuffer), and with bytes keys at
    protocol 2 (where Python 3 pickles bytes by _codecs.encode) give the same dataset."""
    styles = ("python2", "python3", "python3-protocol2")
    for written_by in styles:
        write_cifar10(tmp_path / written_by, train_per_class=3, test_per_class=1, written_by=written_by)
        write_cifar100(tmp_path / written_by, train_per_class=1, test_per_class=1, written_by=written_by)
    with open(tmp_path / "python3" / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        assert "labels" in pickle.load(fh)  # str keys
    for variant in ("cifar10", "cifar100"):
        official, *others = (read_cifar(tmp_path / written_by, variant) for written_by in styles)
        assert official.class_names[1] in ("automobile", "class_1")
        for other in others:
            assert other.class_names == official.class_names
            for field in ("train_images", "train_labels", "test_images", "test_labels"):
                assert np.array_equal(getattr(other, field), getattr(official, field)), field


@pytest.mark.parametrize("labels, found", [
    (["cat", "dog"], "'cat'"),  # string labels, as Python 3 writes them
    ([b"cat", b"dog"], "b'cat'"),
    ([0, 1.0], "1.0"),
    ([True, False], "True"),
    ([0, -1], "-1"),
    ([0, 10**30], str(10**30)),
    ("01", "str"),
])
def test_cifar_labels_that_are_not_class_indices_name_the_file(tmp_path, labels, found):
    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": labels}))
    with pytest.raises(DataError) as error:
        read_cifar(tmp_path, "cifar10")
    assert str(error.value) == f"{path}: labels must be a list of integers in 0..9 (found {found})"


def test_cifar_pixels_outside_a_byte_name_the_file(tmp_path):
    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.full((2, 3072), 300, dtype=np.int64), "labels": [0, 1]}))
    with pytest.raises(DataError) as error:
        read_cifar(tmp_path, "cifar10")
    assert str(error.value) == f"{path}: 'data' holds values outside 0..255 (300..300); CIFAR pixels are bytes"
