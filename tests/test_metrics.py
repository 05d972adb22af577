"""Metrics agree with scikit-learn (imbalance_bench/metrics.py)."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, fbeta_score, top_k_accuracy_score

from imbalance_bench.metrics import (
    mean_fbeta,
    multi_label_metrics,
    one_hot,
    precision_at_k,
    shot_accuracy,
    single_label_metrics,
    top_k_accuracy,
)


def test_mean_f2_equals_sklearn_samples_average():
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 12)) < 0.2).astype(int)
    y_pred = (rng.random((200, 12)) < 0.3).astype(int)
    expected = fbeta_score(y_true, y_pred, beta=2, average="samples", zero_division=0)
    assert mean_fbeta(y_true, y_pred, beta=2) == pytest.approx(expected)


def test_mean_f2_by_hand():
    # one sample: 1 TP, 1 FP, 1 FN -> P = R = 1/2 -> F2 = 1/2; second sample exact -> 1
    y_true = np.array([[1, 1, 0], [0, 0, 1]])
    y_pred = np.array([[1, 0, 1], [0, 0, 1]])
    assert mean_fbeta(y_true, y_pred, 2) == pytest.approx(0.75)


def test_single_label_metrics_against_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 500)
    scores = rng.normal(size=(500, 10))
    scores[np.arange(500), labels] += 1.0
    train_counts = [500, 300, 180, 101, 100, 60, 20, 19, 8, 5]
    m = single_label_metrics(labels, scores, train_counts, many_shot_above=100, few_shot_below=20)
    pred = scores.argmax(1)
    assert m["top1"] == pytest.approx(accuracy_score(labels, pred))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5))
    assert m["mean_f2"] == pytest.approx(fbeta_score(one_hot(labels, 10), one_hot(pred, 10), beta=2, average="samples"))
    assert m["mean_f2"] == pytest.approx(m["top1"])  # one predicted, one true label per sample
    assert m["macro_f2"] == pytest.approx(fbeta_score(labels, pred, beta=2, average="macro"))
    per_class = [np.mean(pred[labels == c] == c) for c in range(10)]
    assert m["per_class_accuracy"] == pytest.approx(per_class)
    assert m["many_shot_top1"] == pytest.approx(np.mean(per_class[:4]))     # counts > 100
    assert m["medium_shot_top1"] == pytest.approx(np.mean(per_class[4:7]))  # 20..100
    assert m["few_shot_top1"] == pytest.approx(np.mean(per_class[7:]))      # < 20


def test_shot_groups_empty_and_absent_classes():
    groups = shot_accuracy([0.5, None, 1.0], [200, 10, 150], many_shot_above=100, few_shot_below=20)
    assert groups == {"many_shot_top1": 0.75, "medium_shot_top1": None, "few_shot_top1": None}


def test_top_k_caps_at_class_count():
    assert top_k_accuracy(np.array([0, 1]), np.array([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]]), 5) == 1.0


# ------------------------------------------------------------------ multi-label


def _multi_label_case(seed=3, n=300, c=8):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < np.linspace(0.5, 0.02, c)).astype(int)
    targets[:, -1] = 0  # a class with no positive in the split
    scores = rng.normal(size=(n, c)) + 1.5 * targets
    return targets, scores


def test_multi_label_metrics_against_sklearn():
    from sklearn.metrics import average_precision_score

    targets, scores = _multi_label_case()
    train_counts = [500, 300, 150, 101, 100, 20, 19, 0]
    threshold = 0.6
    m = multi_label_metrics(targets, scores, train_counts, threshold=threshold, many_shot_above=100, few_shot_below=20)
    probabilities = 1.0 / (1.0 + np.exp(-scores))
    predictions = (probabilities >= threshold).astype(int)
    present = [c for c in range(8) if targets[:, c].any()]
    assert m["mean_f2"] == pytest.approx(fbeta_score(targets, predictions, beta=2, average="samples", zero_division=0))
    assert m["macro_f1"] == pytest.approx(
        fbeta_score(targets, predictions, beta=1, labels=present, average="macro", zero_division=0)
    )
    assert m["macro_f2"] == pytest.approx(
        fbeta_score(targets, predictions, beta=2, labels=present, average="macro", zero_division=0)
    )
    # mAP over classes with a positive equals scikit-learn's macro AP on those columns
    assert m["map"] == pytest.approx(average_precision_score(targets[:, present], scores[:, present], average="macro"))
    expected_ap = average_precision_score(targets[:, present], scores[:, present], average=None)
    assert [m["per_class_ap"][c] for c in present] == pytest.approx(list(expected_ap))
    assert m["per_class_ap"][7] is None
    # head: counts > 100 -> classes 0..3 (101 included); medium: 20..100 -> 4, 5; tail: < 20 -> 6 (7 has no positive)
    assert m["head_map"] == pytest.approx(np.mean(expected_ap[[0, 1, 2, 3]]))
    assert m["medium_map"] == pytest.approx(np.mean([m["per_class_ap"][c] for c in (4, 5)]))
    assert m["tail_map"] == pytest.approx(m["per_class_ap"][6])


def test_precision_at_k_by_hand():
    targets = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    # image 0: top-1 = class 0 (true); top-2 = {0, 1} -> 1/2; image 1: top-1 = class 3 (true)
    assert precision_at_k(targets, scores, 1) == pytest.approx(1.0)
    assert precision_at_k(targets, scores, 2) == pytest.approx((0.5 + 0.5) / 2)
    # k above C is capped: all 4 classes -> 2/4 and 1/4
    assert precision_at_k(targets, scores, 5) == pytest.approx((0.5 + 0.25) / 2)


def test_multi_label_threshold_moves_mean_f2():
    targets = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.5, -0.5], [0.2, 1.0]])  # probabilities ~ .62/.38 and .55/.73
    low = multi_label_metrics(targets, scores, [10, 10], threshold=0.5)
    high = multi_label_metrics(targets, scores, [10, 10], threshold=0.7)
    # t = 0.5: image 0 exact (F2 = 1), image 1 predicts {0, 1} -> P = 1/2, R = 1 -> F2 = 5/6
    assert low["mean_f2"] == pytest.approx((1.0 + 5.0 / 6.0) / 2)
    # t = 0.7: image 0 predicts nothing (F2 = 0), image 1 exact
    assert high["mean_f2"] == pytest.approx(0.5)
