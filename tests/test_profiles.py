"""Long-tailed class profiles and subset selection (imbalance_bench/data/profiles.py)."""

import numpy as np
import pytest

from imbalance_bench.data.profiles import limit_subset, long_tail_counts, proportional_quota, select_per_class


def test_cifar10_if100_exact_counts():
    counts = long_tail_counts(5000, 10, 100, "exp")
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


@pytest.mark.parametrize("imbalance_factor, total", [(200, 11203), (100, 12406), (50, 13996), (20, 17023), (10, 20431)])
def test_cifar10_totals(imbalance_factor, total):
    assert sum(long_tail_counts(5000, 10, imbalance_factor, "exp")) == total


def test_cifar100_if100_total():
    counts = long_tail_counts(500, 100, 100, "exp")
    assert sum(counts) == 10847
    assert counts[0] == 500 and counts[-1] == 5


def test_imbalance_factor_one_is_balanced():
    assert long_tail_counts(5000, 10, 1, "exp") == [5000] * 10
    assert long_tail_counts(5000, 10, 1, "step") == [5000] * 10


def test_step_profile_half_and_half():
    assert long_tail_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    counts = long_tail_counts(500, 7, 10, "step")
    assert counts == [500] * 3 + [50] * 4


def test_bad_profile_arguments():
    with pytest.raises(ValueError):
        long_tail_counts(100, 10, 0.5, "exp")
    with pytest.raises(ValueError):
        long_tail_counts(100, 10, 10, "linear")


def test_select_per_class_is_deterministic_and_exact():
    labels = np.repeat(np.arange(4), 50)
    a = select_per_class(labels, [50, 20, 5, 1], seed=3)
    b = select_per_class(labels, [50, 20, 5, 1], seed=3)
    c = select_per_class(labels, [50, 20, 5, 1], seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a], minlength=4).tolist() == [50, 20, 5, 1]
    assert len(np.unique(a)) == len(a)


def test_select_per_class_rejects_too_many():
    with pytest.raises(ValueError):
        select_per_class(np.array([0, 0, 1]), [1, 2], seed=0)


def test_proportional_quota_keeps_proportions_and_tail():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    quota = proportional_quota(counts, 1000)
    assert sum(quota) == 1000
    assert all(q >= 1 for q in quota)
    for q, n in zip(quota, counts):
        assert abs(q - n * 1000 / sum(counts)) <= 1.0
    assert proportional_quota(counts, 10) == [1] * 10
    assert proportional_quota(counts, 10**6) == counts


def test_limit_subset_size_and_determinism():
    labels = np.repeat(np.arange(10), [500, 300, 180, 100, 60, 40, 20, 14, 8, 5])
    idx = limit_subset(labels, 10, 100, seed=0)
    assert len(idx) == 100
    assert np.array_equal(idx, limit_subset(labels, 10, 100, seed=0))
    assert np.bincount(labels[idx], minlength=10).min() >= 1
    assert len(limit_subset(labels, 10, None, seed=0)) == len(labels)
