"""Evaluation metrics, computed with scikit-learn on the gathered scores of a whole split."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import fbeta_score, recall_score, top_k_accuracy_score


def mean_fbeta(y_true: np.ndarray, y_pred: np.ndarray, beta: float = 2.0) -> float:
    """F-beta of each sample's predicted label set against its true set, averaged over samples
    (the iMet / Kaggle 'mean F2' for beta = 2). Inputs are binary (N, C) indicator matrices."""
    return float(fbeta_score(y_true, y_pred, beta=beta, average="samples", zero_division=0))


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=np.int64)
    out[np.arange(len(labels)), labels] = 1
    return out


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores (k is capped at C)."""
    num_classes = scores.shape[1]
    if k >= num_classes:
        return 1.0
    return float(top_k_accuracy_score(labels, scores, k=k, labels=np.arange(num_classes)))


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of each class; None for a class absent from the evaluated split."""
    recall = recall_score(labels, predictions, labels=np.arange(num_classes), average=None, zero_division=0)
    present = np.bincount(labels, minlength=num_classes) > 0
    return [float(r) if p else None for r, p in zip(recall, present)]


def shot_accuracy(
    class_accuracy: Sequence[float | None], train_counts: Sequence[int], many_shot_above: int, few_shot_below: int
) -> dict[str, float | None]:
    """Mean per-class accuracy over many-shot (train count > many_shot_above), medium and few-shot
    (count < few_shot_below) classes, as in Liu et al. 2019 (OLTR); None when a group is empty."""
    groups: dict[str, list[float]] = {"many_shot": [], "medium_shot": [], "few_shot": []}
    for acc, count in zip(class_accuracy, train_counts):
        if acc is None:
            continue
        if count > many_shot_above:
            groups["many_shot"].append(acc)
        elif count < few_shot_below:
            groups["few_shot"].append(acc)
        else:
            groups["medium_shot"].append(acc)
    return {f"{name}_top1": (float(np.mean(v)) if v else None) for name, v in groups.items()}


def single_label_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    train_counts: Sequence[int],
    many_shot_above: int = 100,
    few_shot_below: int = 20,
) -> dict[str, Any]:
    """Top-1/top-5, mean and macro F2 (predicted set = arg-max), per-class and shot-group accuracy."""
    num_classes = scores.shape[1]
    predictions = scores.argmax(axis=1)
    class_accuracy = per_class_accuracy(labels, predictions, num_classes)
    return {
        "top1": float(np.mean(predictions == labels)),
        "top5": top_k_accuracy(labels, scores, 5),
        "mean_f2": mean_fbeta(one_hot(labels, num_classes), one_hot(predictions, num_classes), beta=2.0),
        "macro_f2": float(
            fbeta_score(labels, predictions, labels=np.unique(labels), beta=2.0, average="macro", zero_division=0)
        ),
        **shot_accuracy(class_accuracy, train_counts, many_shot_above, few_shot_below),
        "per_class_accuracy": class_accuracy,
    }


def is_scalar_metric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
