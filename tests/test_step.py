"""The train step and its speed switches (imbalance_bench/step.py, device.py), the device loader, the loss read-back.

The CUDA-graph tests run only where a GPU is visible (the CPU suite checks the fallbacks).
"""

import logging
import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from imbalance_bench.data.images import BatchTransform, DeviceLoader, ImageSplit, make_loader
from imbalance_bench.device import Switches
from imbalance_bench.losses import SoftmaxCrossEntropy
from imbalance_bench.models import create_model
from imbalance_bench.schedulers import warmup_multistep
from imbalance_bench.step import Precision, TrainStep, current_lr, learning_rates_on_device
from imbalance_bench.distributed import World
from imbalance_bench.loop import LossTracker, TrainingDiverged

CPU = torch.device("cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def trainer_node(**changes):
    node = {"amp": "auto", "amp_dtype": "bfloat16", "data_on_device": "auto", "decode_on_device": "auto",
            "channels_last": "auto",
            "fused_optimizer": "auto", "cuda_graphs": "auto", "cudnn_benchmark": "auto", "compile": "auto",
            "sync_every": "auto", "deterministic": False, "dtype": "float32"}
    return OmegaConf.create({**node, **changes})


def test_auto_switches_are_off_on_the_cpu():
    switches = Switches.resolve(trainer_node(), CPU, in_memory=True)
    assert not any([switches.amp, switches.data_on_device, switches.decode_on_device, switches.channels_last,
                    switches.fused_optimizer,
                    switches.cuda_graphs, switches.cudnn_benchmark, switches.compile])
    assert switches.sync_every == 1


def test_cuda_only_switches_fall_back_on_the_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="imbench"):
        switches = Switches.resolve(trainer_node(cuda_graphs=True, compile=True, fused_optimizer=True), CPU, True)
    assert not switches.cuda_graphs and not switches.compile
    assert switches.fused_optimizer  # fused SGD/AdamW exist on the CPU too
    assert "need a CUDA device" in caplog.text


def test_explicit_switches_and_sync_every_are_kept():
    switches = Switches.resolve(trainer_node(amp=True, channels_last=True, sync_every=7), CPU, True)
    assert switches.amp and switches.channels_last and switches.sync_every == 7


def test_files_datasets_stay_on_the_host(caplog):
    with caplog.at_level(logging.WARNING, logger="imbench"):
        switches = Switches.resolve(trainer_node(data_on_device=True), CPU, in_memory=False)
    assert not switches.data_on_device and "read from files" in caplog.text


@pytest.mark.parametrize("size,batch", [(50, 16), (49, 16), (33, 16), (16, 16)])
def test_device_loader_gives_the_dataloader_batches(size, batch):
    g = torch.Generator().manual_seed(3)
    split = ImageSplit(torch.randint(0, 256, (size, 1, 4, 4), dtype=torch.uint8, generator=g),
                       torch.arange(size))
    for shuffle in (True, False):
        expected = list(make_loader(split, batch, shuffle, 0, generator=torch.Generator().manual_seed(5)))
        got = list(DeviceLoader(split, batch, shuffle, CPU, generator=torch.Generator().manual_seed(5)))
        assert len(got) == len(expected) == len(DeviceLoader(split, batch, shuffle, CPU))
        for (images, targets), (want_images, want_targets) in zip(got, expected):
            assert torch.equal(images, want_images) and torch.equal(targets, want_targets)
    # 33 = 2 x 16 + 1 and 49 = 3 x 16 + 1: the trailing single image is dropped when shuffling
    assert len(DeviceLoader(split, batch, True, CPU)) == (size // batch if size % batch == 1 else -(-size // batch))
    assert len(DeviceLoader(split, batch, False, CPU)) == -(-size // batch)


def test_device_loader_reshuffles_every_epoch():
    split = ImageSplit(torch.zeros(64, 1, 2, 2, dtype=torch.uint8), torch.arange(64))
    loader = DeviceLoader(split, 64, True, CPU, generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(loader))[1] for _ in range(2))
    assert sorted(first.tolist()) == list(range(64)) and not torch.equal(first, second)


def tiny_setup(seed=0, channels_last=False, amp=False, fused=False):
    torch.manual_seed(seed)
    model = create_model("resnet32", num_classes=10, in_chans=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4, fused=fused or None)
    step = TrainStep(model, SoftmaxCrossEntropy(), optimizer, Precision(CPU, amp, "bfloat16"), channels_last, False)
    return model, optimizer, step


def batches(n, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def test_eager_step_is_the_textbook_step():
    model, _, step = tiny_setup()
    torch.manual_seed(0)
    reference = create_model("resnet32", num_classes=10, in_chans=3)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    for inputs, labels in batches(3):
        loss = step(inputs, labels, None)
        want = torch.nn.functional.cross_entropy(reference(inputs), labels)
        optimizer.zero_grad()
        want.backward()
        optimizer.step()
        assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_switches_on_the_cpu_change_little():
    """bf16 autocast, channels_last and fused SGD on the CPU: the same step within bf16 noise
    (the parameter updates point the same way, the losses agree to 1 %)."""
    plain, _, plain_step = tiny_setup()
    start = [p.detach().clone() for p in plain.parameters()]
    fast, _, fast_step = tiny_setup(channels_last=True, amp=True, fused=True)
    fast.to(memory_format=torch.channels_last)
    for inputs, labels in batches(2, size=32):
        a, b = plain_step(inputs, labels, None), fast_step(inputs, labels, None)
        assert b.item() == pytest.approx(a.item(), rel=0.01)
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain_update = torch.cat([(p - s).flatten() for p, s in zip(plain.parameters(), start)])
    fast_update = torch.cat([(p - s).flatten() for p, s in zip(fast.parameters(), start)])
    assert not torch.equal(plain_update, fast_update)
    assert torch.nn.functional.cosine_similarity(plain_update, fast_update, dim=0) > 0.98


def test_tensor_learning_rate_follows_the_schedule():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = warmup_multistep(optimizer, total_epochs=10, warmup_epochs=2, milestones=[3], gamma=0.1)
    learning_rates_on_device(optimizer)
    lr_tensor = optimizer.param_groups[0]["lr"]
    seen = []
    for _ in range(5):
        seen.append(current_lr(optimizer))
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01])
    assert optimizer.param_groups[0]["lr"] is lr_tensor  # filled in place: a captured graph sees it


def test_loss_tracker_reads_back_in_groups_and_names_the_bad_step():
    tracker = LossTracker(sync_every=3, epoch=0, lr=0.1, world=World())
    values = [1.0, 2.0, 3.0, 4.0]
    flushed = [tracker.add(torch.tensor(v), 2, step) for step, v in enumerate(values, start=1)]
    assert flushed == [False, False, True, False] and tracker.seen == 6
    tracker.flush()
    assert tracker.mean == pytest.approx(sum(values) / 4)
    tracker = LossTracker(sync_every=4, epoch=2, lr=0.5, world=World())
    for step, v in enumerate([1.0, float("nan"), 2.0], start=11):
        tracker.add(torch.tensor(v), 2, step)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 12 \(epoch 3\); lower optimizer.lr \(now 0.5\)"):
        tracker.flush()


def test_batch_transform_reuses_its_mean_and_std():
    t = BatchTransform(mean=[0.5], std=[0.25])
    images = torch.full((2, 1, 3, 3), 255, dtype=torch.uint8)
    assert torch.allclose(t(images, train=False), torch.full((2, 1, 3, 3), 2.0))
    first = t._moments(CPU)
    t(images, train=False)
    assert t._moments(CPU)[0] is first[0]


# ---------------------------------------------------------------- CUDA only


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls without TF32, so that eager and replayed steps can be compared tightly."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@cuda_only
@pytest.mark.parametrize("amp", [False, True])
def test_graph_replay_trains_like_the_eager_step(amp, exact_fp32):
    """Same seed, same batches: the first replayed step computes what the eager step does, and
    later ones stay within what cuDNN's non-deterministic backward algorithms allow."""
    device = torch.device("cuda")
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = create_model("resnet32", num_classes=10, in_chans=3).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4, fused=True)
        step = TrainStep(model, SoftmaxCrossEntropy(), optimizer, Precision(device, amp, "bfloat16"), False, graphs)
        losses = [step(x.to(device), y.to(device), None).item() for x, y in batches(8, size=32)]
        short = batches(1, seed=9, size=5)[0]  # a short last batch runs eagerly beside the graph
        losses.append(step(short[0].to(device), short[1].to(device), None).item())
        results.append((losses, step.graph is not None))
    (eager_losses, eager_graph), (graph_losses, has_graph) = results
    assert has_graph and not eager_graph
    assert graph_losses[:4] == pytest.approx(eager_losses[:4], rel=1e-2 if amp else 1e-4)  # index 3: first replay
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)


def captured_step():
    """A ResNet-32 TrainStep on the GPU whose graph was captured: (model, optimizer, step, two more batches)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model("resnet32", num_classes=10, in_chans=3).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    step = TrainStep(model, SoftmaxCrossEntropy(), optimizer, Precision(device, False, "bfloat16"), False, True)
    data = [(x.to(device), y.to(device)) for x, y in batches(6, size=16)]
    for inputs, labels in data[:4]:
        step(inputs, labels, None)
    assert step.graph is not None
    return model, optimizer, step, data[4:]


@cuda_only
def test_the_learning_rate_reaches_the_captured_step():
    """The scheduler fills the lr tensor in place: at lr 0 a replay leaves every weight as it was."""
    model, optimizer, step, data = captured_step()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.param_groups[0]["lr"].fill_(0.0)
    step(*data[0], None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    optimizer.param_groups[0]["lr"].fill_(0.1)
    step(*data[1], None)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@cuda_only
def test_weights_appearing_recapture_the_graph():
    _, _, step, data = captured_step()
    first = step.graph
    weights = torch.linspace(0.5, 1.5, 10, device="cuda")
    loss = step(*data[0], weights)
    assert step.graph is not first and step.graph_key[-1] is False and math.isfinite(loss.item())


def test_deterministic_mode_turns_autotuning_off_and_sets_the_backend_flags(caplog):
    with caplog.at_level(logging.WARNING, logger="imbench"):
        switches = Switches.resolve(trainer_node(deterministic=True, cudnn_benchmark=True), torch.device("cuda"), True)
    assert switches.deterministic and not switches.cudnn_benchmark
    assert "trainer.cudnn_benchmark: off with trainer.deterministic=true" in caplog.text
    try:
        switches.apply()
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        Switches.resolve(trainer_node(), CPU, True).apply()  # the next run of the process: back to the defaults
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
