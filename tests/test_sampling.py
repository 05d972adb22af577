"""Re-sampling (imbalance_bench/data/sampling.py, conf/sampler/): what each sampler draws, that both
loaders and every DDP process hand out the same draws, and what a run records of them."""

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from imbalance_bench.data.images import DeviceLoader, ImageSplit, make_loader
from imbalance_bench.data.sampling import (
    ClassBalancedSampler, EffectiveNumberSampler, InstanceSampler, ProgressiveSampler, SquareRootSampler, TrainDraws,
)
from imbalance_bench.distributed import World

COUNTS = [400, 120, 40, 12, 4]  # a long tail over 5 classes, 576 images
CPU = torch.device("cpu")


def labelled_split(counts=COUNTS, classes=None):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1, 1)
    return ImageSplit(images.expand(-1, 1, 2, 2).contiguous(), labels)


def draw_counts(sampler, split, epochs=1, epoch=0, seed=0, repeats=20):
    """Labels per class over `repeats` epochs' worth of draws of epoch `epoch`."""
    draws = TrainDraws(sampler, split, epochs, torch.Generator().manual_seed(seed), [str(c) for c in range(5)])
    total = np.zeros(5)
    for _ in range(repeats):
        total += draws.per_class(draws.order(epoch))
    return total, repeats * len(split)


def within_binomial_noise(counts, draws, probabilities):
    """Every class's count within 5 standard deviations of its binomial mean (a false alarm is ~1e-6)."""
    p = np.asarray(probabilities)
    sd = np.sqrt(draws * p * (1 - p))
    return np.all(np.abs(counts - draws * p) <= 5 * sd + 1e-9), (counts / draws).round(4).tolist(), p.round(4).tolist()


n = np.array(COUNTS, dtype=float)
TARGETS = {
    "class_balanced": (ClassBalancedSampler(), np.full(5, 0.2)),
    "square_root": (SquareRootSampler(), np.sqrt(n) / np.sqrt(n).sum()),
    "progressive_first": (ProgressiveSampler(), n / n.sum()),
    # n_c (1 - beta) / (1 - beta^n_c), normalised (Cui et al. 2019)
    "effective_number": (EffectiveNumberSampler(beta=0.99), (lambda w: w / w.sum())(n * 0.01 / (1 - 0.99 ** n))),
}


@pytest.mark.parametrize("option", sorted(TARGETS))
def test_draw_counts_are_within_binomial_noise_of_the_target_probabilities(option):
    sampler, p = TARGETS[option]
    counts, total = draw_counts(sampler, labelled_split())
    ok, got, want = within_binomial_noise(counts, total, p)
    assert ok, (got, want)
    # and far from what another option targets (the test can tell the options apart)
    assert not within_binomial_noise(counts, total, np.full(5, 0.2) if option != "class_balanced" else n / n.sum())[0]


def test_progressive_follows_its_formula_at_the_first_middle_and_last_epoch():
    """p_c(t) = (1 - t/T) n_c/N + (t/T)/C (Kang et al. 2020, eq. 2), t the 0-based epoch of T."""
    sampler, counts, epochs = ProgressiveSampler(), np.array(COUNTS), 10
    instance, balanced = n / n.sum(), np.full(5, 0.2)
    for epoch, t in ((0, 0.0), (5, 0.5), (9, 0.9)):
        expected = (1 - t) * instance + t * balanced
        np.testing.assert_allclose(sampler.probabilities_for_epoch(counts, epoch, epochs), expected, rtol=1e-12)
        drawn, total = draw_counts(sampler, labelled_split(), epochs=epochs, epoch=epoch)
        assert within_binomial_noise(drawn, total, expected)[0]


def test_deferred_resampling_draws_instances_before_its_start_epoch():
    split, g = labelled_split(), torch.Generator().manual_seed(4)
    draws = TrainDraws(ClassBalancedSampler(start_epoch=2), split, 4, g)
    reference = RandomSampler(split, generator=torch.Generator().manual_seed(4))
    for epoch in range(2):  # the permutations RandomSampler gives, epoch after epoch
        assert draws.order(epoch).tolist() == list(reference)
    later = draws.order(2)
    assert len(later) == len(split) and len(set(later.tolist())) < len(split)  # with replacement


def test_instance_draws_the_orders_every_earlier_run_trained_on():
    """The default sampler is RandomSampler's permutation per epoch from the shuffle generator:
    the orders the DataLoader path drew before samplers existed (every CPU run), so those results do
    not move. (The on-device loader drew one permutation per epoch instead; it now draws these, the
    same from the second epoch on as the DataLoader path, where before only the first epoch agreed.)"""
    split = labelled_split()
    draws = TrainDraws(InstanceSampler(), split, 3, torch.Generator().manual_seed(0))
    reference = RandomSampler(split, generator=torch.Generator().manual_seed(0))
    orders = [draws.order(epoch).tolist() for epoch in range(3)]
    assert orders == [list(reference) for _ in range(3)]
    assert all(sorted(order) == list(range(len(split))) for order in orders)


def test_an_image_is_drawn_uniformly_within_its_class():
    split = labelled_split([30, 5])
    draws = TrainDraws(ClassBalancedSampler(), split, 1, torch.Generator().manual_seed(2))
    picked = torch.cat([draws.order(0) for _ in range(200)])
    tail = picked[split.targets[picked] == 1]
    per_image = torch.bincount(tail, minlength=len(split))[split.targets == 1].double()
    assert len(per_image) == 5 and per_image.min() > 0
    expected = len(tail) / 5
    assert torch.all((per_image - expected).abs() <= 5 * (expected * 0.8) ** 0.5)


def test_multi_label_data_is_sampled_class_aware():
    """Draw a class uniformly, then an image holding it (Shen et al. 2016): every class's share of
    the draws is at least 1/C, and an image without the drawn class is never taken for it."""
    g = torch.Generator().manual_seed(0)
    targets = torch.zeros(300, 4)
    targets[:, 0] = 1  # class 0 on every image
    targets[:60, 1] = 1
    targets[250:262, 2] = 1
    targets[299, 3] = 1  # one image holds class 3
    split = ImageSplit(torch.zeros(300, 1, 2, 2, dtype=torch.uint8), targets[torch.randperm(300, generator=g)])
    draws = TrainDraws(ClassBalancedSampler(), split, 1, torch.Generator().manual_seed(1))
    counts = np.zeros(4)
    for _ in range(20):
        counts += draws.per_class(draws.order(0))
    total = 20 * 300
    # class 3 is drawn 1/4 of the time, always its single image; class 0 comes with every draw
    assert within_binomial_noise(counts[3:], total, [0.25])[0]
    assert counts[0] == total
    assert counts[1] / total > 0.25 and counts[2] / total > 0.25


def test_an_empty_class_is_left_out_of_the_draw_with_one_warning(caplog):
    split = labelled_split([50, 0, 10])
    with caplog.at_level(logging.WARNING, logger="imbench"):
        draws = TrainDraws(SquareRootSampler(), split, 2, torch.Generator().manual_seed(0), ["cat", "dog", "eel"])
        orders = [draws.order(epoch) for epoch in range(2)]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["sampler=square_root: 1 class(es) have no train image and are left out of the draw: dog"]
    assert all(draws.per_class(order)[1] == 0 for order in orders)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imbench"):
        TrainDraws(InstanceSampler(), split, 2, torch.Generator(), ["cat", "dog", "eel"]).order(0)
    assert not caplog.records  # instance draws every image anyway: nothing is left out


@pytest.mark.parametrize("sampler", [ClassBalancedSampler(), ProgressiveSampler(start_epoch=1)])
def test_both_loaders_and_every_process_give_the_same_resampled_batches(sampler):
    split = labelled_split([40, 12, 5])

    def loaders(world):
        def draws():
            return TrainDraws(sampler, split, 3, torch.Generator().manual_seed(7))
        return [make_loader(split, 8, True, 0, world=world, draws=draws()),
                make_loader(split, 8, True, 2, world=world, draws=draws()),
                DeviceLoader(split, 8, True, CPU, world=world, draws=draws())]

    def epochs(loader):
        out = []
        for epoch in range(3):
            loader.begin_epoch(epoch)
            out.append([targets.tolist() for _, targets in loader])
            out[-1].append(loader.order.class_draws(len(loader) * 8))
        return out

    whole = [epochs(loader) for loader in loaders(World())]
    assert whole[0] == whole[1] == whole[2]
    assert whole[0][2][-1][2] > 8  # resampled (epoch 3): the tail is drawn about 14 times, not its own 5
    parts = [[epochs(loader) for loader in loaders(World(rank, 2))] for rank in range(2)]
    for kind in range(3):
        for epoch in range(3):
            a, b = parts[0][kind][epoch], parts[1][kind][epoch]
            assert [x + y for x, y in zip(a[:-1], b[:-1])] == whole[0][epoch][:-1]  # the rows of one global batch
            assert a[-1] == b[-1] == whole[0][epoch][-1]  # every process counts the global draws


def test_a_run_records_the_draws_per_class_and_the_empty_classes(data_root, tmp_path, imbench_in_process):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    code, err = imbench_in_process(
        "dataset=mnist_lt", f"dataset.root={data_root}", "dataset.imbalance_factor=1e9", "dataset.limit_test=50",
        "trainer.device=cpu", "trainer.epochs=2", "trainer.batch_size=64", "trainer.progress_bar=false",
        "sampler=class_balanced", "sampler.start_epoch=1", f"hydra.run.dir={run_dir}")
    assert code == 0, err[-3000:]
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    empty = stats["empty_classes"]
    assert empty and empty == [name for name, count in zip(stats["class_names"], stats["train_counts"]) if count == 0]
    log = (run_dir / "imbench.log").read_text()
    assert log.count("left out of the draw") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sampler"] == "class_balanced"
    draws = metrics["final"]["class_draws"]
    present = [c for c, count in enumerate(stats["train_counts"]) if count > 0]
    assert sum(draws) == metrics["final"]["train_images"]
    assert all(draws[c] == 0 for c in range(len(draws)) if c not in present)
    share = [draws[c] / sum(draws) for c in present]  # class-balanced in epoch 2: about 1/C' each
    assert max(share) < 2.0 / len(present)
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert {f"train/draws/{name}" for name in stats["class_names"]} <= set(tags)
    epoch_1 = [e.value for e in events.Scalars(f"train/draws/{stats['class_names'][0]}")][0]
    assert epoch_1 == stats["train_counts"][0]  # instance in epoch 1 (DRS): the head's own count
