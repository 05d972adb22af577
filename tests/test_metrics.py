"""Metrics agree with scikit-learn (imbalance_bench/metrics.py)."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, fbeta_score, top_k_accuracy_score

from imbalance_bench.metrics import mean_fbeta, one_hot, shot_accuracy, single_label_metrics, top_k_accuracy


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
