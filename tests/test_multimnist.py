"""MultiMNIST-LT generator (imbalance_bench/data/multimnist.py) on MNIST-format sklearn digits."""

import shutil

import numpy as np
import pytest
import torch

from dataset_files import write_idx
from imbalance_bench.data.images import BatchTransform
from imbalance_bench.data.mnist import FILES, load_mnist
from imbalance_bench.data.multimnist import (
    checked_quota,
    mix_label_matrix,
    build_multimnist,
    digits_per_image,
    fill_label_matrix,
    gale_ryser_feasible,
)
from imbalance_bench.data.profiles import long_tail_counts
from imbalance_bench.errors import ConfigError

TRAIN_MAX = 100  # marked_root: train digit pixels lie in [0, 100], test digit pixels are 0 or >= 150
TEST_MIN = 150


def kwargs(root, **over):
    kw = dict(name="multimnist", root=str(root), download=False, canvas_size=64, min_digits=1, max_digits=4,
              num_train=200, num_test=100, imbalance_factor=10.0, overlap=False, seed=0,
              augment={"crop_padding": 0, "hflip": False}, mean=[0.13], std=[0.3])
    kw.update(over)
    return kw


@pytest.fixture
def mnist_root(data_root, tmp_path):
    """A private copy of the fixture's MNIST idx files, so each test starts without a cache."""
    root = tmp_path / "mnist"
    root.mkdir()
    for stem in FILES.values():
        shutil.copy(data_root / f"{stem}.gz", root / f"{stem}.gz")
    return root


@pytest.fixture
def marked_root(data_root, tmp_path):
    """The fixture's digits with train and test told apart by brightness alone."""
    raw = load_mnist(data_root, download=False)
    root = tmp_path / "marked"
    root.mkdir()
    train = (raw.train_images[:, 0].astype(np.float64) * TRAIN_MAX / 255).round().astype(np.uint8)
    test = np.where(raw.test_images[:, 0] > 0, TEST_MIN + raw.test_images[:, 0] // 3, 0).astype(np.uint8)
    write_idx(root / FILES["train_images"], train)
    write_idx(root / FILES["train_labels"], raw.train_labels.astype(np.uint8))
    write_idx(root / FILES["test_images"], test)
    write_idx(root / FILES["test_labels"], raw.test_labels.astype(np.uint8))
    return root


def placements(data, split):
    """The cached (image, class, source, top, left) rows of one split."""
    with np.load(data.info["cache_file"]) as archive:
        return archive[f"{split}_digits"]


def expected_quota(num_images, imbalance_factor, min_digits, max_digits):
    """Brute force of the documented rule: the largest n_head <= N whose profile total fits the budget."""
    budget = num_images * (min_digits + max_digits) / 2
    n_head = max(n for n in range(num_images + 1) if sum(long_tail_counts(n, 10, imbalance_factor, "exp")) <= budget)
    return long_tail_counts(n_head, 10, imbalance_factor, "exp")


def test_train_positives_follow_the_exp_profile_exactly(mnist_root):
    data = build_multimnist(**kwargs(mnist_root))
    targets = data.train.targets
    assert targets.dtype == torch.float32 and targets.shape == (200, 10)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    expected = expected_quota(200, 10.0, 1, 4)
    assert expected[0] > 5 * expected[-1]  # a real long tail, not a flat profile
    assert targets.sum(0).long().tolist() == expected
    assert data.train_class_counts == expected and data.info["profile_counts"] == expected
    assert data.info["realised_imbalance"] == pytest.approx(expected[0] / expected[-1])
    assert data.label_kind == "multi" and data.class_names == [str(d) for d in range(10)]


def test_test_split_is_class_balanced(mnist_root):
    data = build_multimnist(**kwargs(mnist_root, num_test=130))
    counts = data.test.targets.sum(0).long().tolist()
    assert counts == expected_quota(130, 1.0, 1, 4) == data.test_class_counts
    assert len(set(counts)) == 1 and counts[0] > 0


@pytest.mark.parametrize("min_digits,max_digits", [(1, 4), (2, 3), (1, 1 + 9)])
def test_digits_per_image_within_bounds(mnist_root, min_digits, max_digits):
    data = build_multimnist(**kwargs(mnist_root, min_digits=min_digits, max_digits=max_digits, imbalance_factor=2.0,
                                     overlap=True))
    for split, ims in (("train", data.train), ("test", data.test)):
        per_image = ims.targets.sum(1).long()
        assert per_image.min() >= min_digits and per_image.max() <= max_digits
        histogram = np.bincount(per_image.numpy(), minlength=max_digits + 1)
        assert data.info["digits_per_image"][split] == {str(k): int(histogram[k]) for k in range(1, max_digits + 1)}


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_the_digits_drawn_where_they_were_placed(mnist_root, split):
    """Without overlap every labelled digit's source pixels sit in its box, and nothing else is drawn."""
    data = build_multimnist(**kwargs(mnist_root))
    raw = load_mnist(mnist_root, download=False)
    sources = raw.train_images if split == "train" else raw.test_images
    source_labels = raw.train_labels if split == "train" else raw.test_labels
    ims = data.train if split == "train" else data.test
    images, targets = ims.images.numpy(), ims.targets.numpy()
    digits = placements(data, split)
    assert data.subset_indices[split] == digits[:, 2].tolist()
    assert np.array_equal(source_labels[digits[:, 2]], digits[:, 1])
    drawn = np.zeros_like(targets)
    drawn[digits[:, 0], digits[:, 1]] = 1
    assert np.array_equal(drawn, targets) and len(digits) == targets.sum()
    covered = np.zeros(images.shape, dtype=bool)
    for image, _, source, top, left in digits:
        box = (image, 0, slice(top, top + 28), slice(left, left + 28))
        assert np.array_equal(images[box], sources[source, 0])
        covered[box] = True
    assert not images[~covered].any()


def test_single_digit_canvas_is_its_source_digit(mnist_root):
    data = build_multimnist(**kwargs(mnist_root, max_digits=1, min_digits=1, num_train=242, imbalance_factor=100.0,
                                     overlap=True))
    raw = load_mnist(mnist_root, download=False)
    images = data.train.images.numpy()
    for image, cls, source, top, left in placements(data, "train")[:50]:
        expected = np.zeros((64, 64), dtype=np.uint8)
        expected[top:top + 28, left:left + 28] = raw.train_images[source, 0]
        assert np.array_equal(images[image, 0], expected)
        assert data.train.targets[image].nonzero().flatten().tolist() == [cls]


def test_overlapping_digits_compose_by_pixelwise_max(mnist_root):
    data = build_multimnist(**kwargs(mnist_root, overlap=True, min_digits=3, max_digits=4, imbalance_factor=2.0))
    raw = load_mnist(mnist_root, download=False)
    digits = placements(data, "train")
    expected = np.zeros(data.train.images.shape, dtype=np.uint8)
    for image, _, source, top, left in digits:
        box = (image, 0, slice(top, top + 28), slice(left, left + 28))
        expected[box] = np.maximum(expected[box], raw.train_images[source, 0])
    assert np.array_equal(data.train.images.numpy(), expected)
    assert (digits[:, 3:] <= 64 - 28).all() and (digits[:, 3:] >= 0).all()


@pytest.mark.parametrize("overlap", [False, True])
def test_train_uses_only_train_digits_and_test_only_test_digits(marked_root, overlap):
    data = build_multimnist(**kwargs(marked_root, overlap=overlap))
    train, test = data.train.images.numpy(), data.test.images.numpy()
    assert train.max() <= TRAIN_MAX and train.max() > 0
    assert test.max() >= TEST_MIN and not ((test > 0) & (test < TEST_MIN)).any()


def test_no_overlap_means_disjoint_boxes_in_distinct_cells(mnist_root):
    data = build_multimnist(**kwargs(mnist_root, canvas_size=90, min_digits=2, max_digits=9, imbalance_factor=1.0))
    digits = placements(data, "train")
    assert (digits[:, 3:] >= 0).all() and (digits[:, 3:] <= 90 - 28).all()
    for image in np.unique(digits[:, 0]):
        boxes = digits[digits[:, 0] == image][:, 3:]
        dy = np.abs(boxes[:, None, 0] - boxes[None, :, 0])
        dx = np.abs(boxes[:, None, 1] - boxes[None, :, 1])
        apart = (dy >= 28) | (dx >= 28)
        np.fill_diagonal(apart, True)
        assert apart.all(), f"image {image}: boxes {boxes.tolist()} intersect"
    assert np.bincount(data.train.targets.sum(1).long().numpy()).argmax() > 2  # crowded canvases were tested


def test_same_seed_same_data_other_seed_other_data(data_root, tmp_path):
    roots = []
    for name in ("a", "b"):
        roots.append(tmp_path / name)
        roots[-1].mkdir()
        for stem in FILES.values():
            shutil.copy(data_root / f"{stem}.gz", roots[-1] / f"{stem}.gz")
    first = build_multimnist(**kwargs(roots[0], overlap=True))
    again = build_multimnist(**kwargs(roots[1], overlap=True))
    assert again.info["cache"] == "created"  # generated afresh, not read back
    for a, b in ((first.train, again.train), (first.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert first.subset_indices == again.subset_indices
    other = build_multimnist(**kwargs(roots[0], overlap=True, seed=1))
    assert not torch.equal(other.train.images, first.train.images)
    assert not torch.equal(other.test.images, first.test.images)
    assert other.train_class_counts == first.train_class_counts  # the profile does not depend on the seed


def test_cache_reused_then_regenerated_when_a_key_changes(mnist_root):
    first = build_multimnist(**kwargs(mnist_root))
    cache = mnist_root / "multimnist"
    path = first.info["cache_file"]
    assert first.info["cache"] == "created" and [p.name for p in cache.iterdir()] == [path.split("/")[-1]]
    stamp = (mnist_root / "multimnist" / path.split("/")[-1]).stat().st_mtime_ns
    second = build_multimnist(**kwargs(mnist_root))
    assert second.info["cache"] == "reused" and second.info["cache_file"] == path
    assert (cache / path.split("/")[-1]).stat().st_mtime_ns == stamp
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.targets, second.test.targets)
    assert second.subset_indices == first.subset_indices and second.info["digits_sha256"] == first.info["digits_sha256"]
    for change in ({"num_test": 110}, {"overlap": True}, {"imbalance_factor": 5.0}, {"canvas_size": 60}):
        changed = build_multimnist(**kwargs(mnist_root, **change))
        assert changed.info["cache"] == "created" and changed.info["cache_file"] != path, change
    assert len(list(cache.iterdir())) == 5  # one file per key set, no temporary files left behind
    assert all(p.suffix == ".npz" for p in cache.iterdir())


def test_corrupt_cache_is_regenerated(mnist_root):
    first = build_multimnist(**kwargs(mnist_root))
    with open(first.info["cache_file"], "r+b") as fh:
        fh.truncate(1000)
    again = build_multimnist(**kwargs(mnist_root))
    assert again.info["cache"] == "created"
    assert torch.equal(first.train.images, again.train.images)
    assert build_multimnist(**kwargs(mnist_root)).info["cache"] == "reused"


def test_info_records_the_generation(mnist_root):
    data = build_multimnist(**kwargs(mnist_root))
    stats = data.stats()
    for key, value in kwargs(mnist_root).items():
        if key in ("canvas_size", "min_digits", "max_digits", "num_train", "num_test", "imbalance_factor",
                   "overlap", "seed"):
            assert stats[key] == value, key
    assert stats["source"] == str(mnist_root) and stats["train_total"] == 200
    assert stats["image_shape"] == [1, 64, 64] and len(stats["subset_sha256"]) == 64
    assert isinstance(data.transform, BatchTransform) and data.transform.mean == [0.13]


def test_gale_ryser_and_ryser_fill():
    rng = np.random.default_rng(0)
    assert not gale_ryser_feasible([3, 1], [2, 2, 0])  # a row of 3 but only 2 non-empty columns
    assert gale_ryser_feasible([2, 2], [2, 2, 0])
    for _ in range(50):
        matrix = (rng.random((30, 10)) < rng.random(10)).astype(np.uint8)
        rows, cols = matrix.sum(1), matrix.sum(0).tolist()
        assert gale_ryser_feasible(rows, cols)
        filled = fill_label_matrix(rows, cols, rng)
        assert filled.sum(1).tolist() == rows.tolist() and filled.sum(0).tolist() == cols


def test_label_sets_are_not_tied_to_the_digit_count():
    """The greedy fill alone gives a balanced split whose 1-digit images hold only the last
    classes; after the swaps every class is equally likely there, with the margins unchanged."""
    rng = np.random.default_rng(0)
    quota = checked_quota("test", 4000, 1.0, 1, 4)
    rows = digits_per_image(4000, quota, 1, 4, rng)
    greedy = fill_label_matrix(rows, quota, rng)
    assert greedy[rows == 1, :5].sum() == 0  # the structure being removed
    mixed = mix_label_matrix(greedy, rng)
    assert mixed.sum(0).tolist() == quota and mixed.sum(1).tolist() == rows.tolist()
    single = mixed[rows == 1].mean(axis=0)  # ~ 1/10 each
    assert single.min() > 0.05 and single.max() < 0.15
    assert 0.3 < mixed[rows == 4, 0].mean() < 0.5  # ~ 4/10, not 1
    assert len({tuple(r) for r in mixed}) > 300  # of the 385 label sets with 1-4 of 10 classes


def test_digit_counts_are_repaired_when_the_random_spread_is_infeasible():
    """Columns [4, 4, 1, 1] over 4 images: a spread like [4, 4, 1, 1] admits no matrix; the repair evens it out."""
    quota = [4, 4, 1, 1, 0, 0, 0, 0, 0, 0]
    for seed in range(40):
        rng = np.random.default_rng(seed)
        counts = digits_per_image(4, quota, 1, 4, rng)
        assert counts.sum() == 10 and counts.min() >= 1 and counts.max() <= 4
        assert gale_ryser_feasible(counts, quota)
        assert fill_label_matrix(counts, quota, rng).sum(0).tolist() == quota


@pytest.mark.parametrize(
    "over,match",
    [
        ({"min_digits": 3, "imbalance_factor": 100.0},
         r"^dataset\.num_train=200 with dataset\.min_digits=3, dataset\.max_digits=4, dataset\.imbalance_factor=100\.0 "
         r"is infeasible: .*fewer than the 600 .*works: dataset\.min_digits=2"),
        ({"num_train": 20, "imbalance_factor": 100.0}, r"^dataset\.num_train=20 .*class 9 no positives"),
        ({"num_test": 205, "max_digits": 1, "num_train": 199},  # 199 fits the train profile exactly
         r"^dataset\.num_test=205 .*works: dataset\.num_test=200"),
        ({"mean": [0.5, 0.5, 0.5]}, r"^dataset\.mean/dataset\.std must have 1 value"),
    ],
)
def test_bad_keys_give_one_line_config_errors(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_multimnist(**kwargs(tmp_path, **over))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "multimnist").exists()
