"""Evaluation metrics, computed with scikit-learn on the gathered scores of a whole split."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, fbeta_score, recall_score


def mean_fbeta(y_true: np.ndarray, y_pred: np.ndarray, beta: float = 2.0) -> float:
    """F-beta of each sample's predicted label set against its true set, averaged over samples
    (the iMet / Kaggle 'mean F2' for beta = 2). Inputs are binary (N, C) indicator matrices."""
    return float(fbeta_score(y_true, y_pred, beta=beta, average="samples", zero_division=0))


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=np.int64)
    out[np.arange(len(labels)), labels] = 1
    return out


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the k highest scores (k is capped at C).

    scikit-learn's `top_k_accuracy_score` algorithm (stable sort, ties to the higher class
    index), without its input checks, which cost more than the sort every epoch."""
    num_classes = scores.shape[1]
    if k >= num_classes:
        return 1.0
    top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[float | None]:
    """Recall of each class; None for a class absent from the evaluated split."""
    recall = recall_score(labels, predictions, labels=np.arange(num_classes), average=None, zero_division=0)
    present = np.bincount(labels, minlength=num_classes) > 0
    return [float(r) if p else None for r, p in zip(recall, present)]


def shot_groups(
    train_counts: Sequence[int], many_shot_above: int, few_shot_below: int
) -> dict[str, list[int]]:
    """Class indices of the many-shot (train count > many_shot_above), medium and few-shot
    (count < few_shot_below) groups, as in Liu et al. 2019 (OLTR)."""
    groups: dict[str, list[int]] = {"many_shot": [], "medium_shot": [], "few_shot": []}
    for cls, count in enumerate(train_counts):
        if count > many_shot_above:
            groups["many_shot"].append(cls)
        elif count < few_shot_below:
            groups["few_shot"].append(cls)
        else:
            groups["medium_shot"].append(cls)
    return groups


def _group_means(per_class: Sequence[float | None], groups: dict[str, list[int]]) -> dict[str, float | None]:
    means = {}
    for name, members in groups.items():
        values = [per_class[c] for c in members if per_class[c] is not None]
        means[name] = float(np.mean(values)) if values else None
    return means


def shot_accuracy(
    class_accuracy: Sequence[float | None], train_counts: Sequence[int], many_shot_above: int, few_shot_below: int
) -> dict[str, float | None]:
    """Mean per-class accuracy over many-shot (train count > many_shot_above), medium and few-shot
    (count < few_shot_below) classes, as in Liu et al. 2019 (OLTR); None when a group is empty."""
    means = _group_means(class_accuracy, shot_groups(train_counts, many_shot_above, few_shot_below))
    return {f"{name}_top1": value for name, value in means.items()}


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
    top1 = float(np.mean(predictions == labels))
    class_accuracy = per_class_accuracy(labels, predictions, num_classes)
    return {
        "top1": top1,
        "top5": top_k_accuracy(labels, scores, 5),
        # singleton true and predicted sets: a sample's F2 is 1 when they agree, else 0, so the mean
        # is top-1 (tests check it against fbeta_score(average="samples") on the one-hot sets)
        "mean_f2": top1,
        "macro_f2": float(
            fbeta_score(labels, predictions, labels=np.unique(labels), beta=2.0, average="macro", zero_division=0)
        ),
        **shot_accuracy(class_accuracy, train_counts, many_shot_above, few_shot_below),
        "per_class_accuracy": class_accuracy,
    }


def sigmoid(scores: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * scores.astype(np.float64)))  # overflow-free logistic


def per_class_average_precision(targets: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """Average precision of each class (scikit-learn's step-wise AP, as in the VOC/COCO
    multi-label literature); None for a class with no positive in the split."""
    values: list[float | None] = []
    for cls in range(targets.shape[1]):
        positives = targets[:, cls]
        values.append(float(average_precision_score(positives, scores[:, cls])) if positives.any() else None)
    return values


def precision_at_k(targets: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of each image's k highest-scored classes that are true labels, averaged over
    images (k is capped at C)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(targets, top, axis=1).sum(axis=1).mean() / k)


def multi_label_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    train_counts: Sequence[int],
    threshold: float = 0.5,
    many_shot_above: int = 100,
    few_shot_below: int = 20,
) -> dict[str, Any]:
    """Metrics of a multi-label split from its (N, C) 0/1 targets and (N, C) logits.

    A class is predicted when sigmoid(logit) >= threshold. mean_f2 is the per-image F2 averaged
    over images (iMet / Kaggle; scikit-learn's average="samples"); macro F1/F2 and mAP average
    over the classes with at least one positive in the split; head / medium / tail mAP split
    those classes by their train positive count (many_shot_above / few_shot_below).
    """
    targets = (np.asarray(targets) > 0.5).astype(np.int64)
    predictions = (sigmoid(scores) >= threshold).astype(np.int64)
    present = np.flatnonzero(targets.sum(axis=0) > 0)
    class_ap = per_class_average_precision(targets, scores)
    group_map = _group_means(class_ap, shot_groups(train_counts, many_shot_above, few_shot_below))

    def macro_fbeta(beta: float) -> float | None:
        if len(present) == 0:
            return None
        return float(fbeta_score(targets, predictions, beta=beta, labels=present, average="macro", zero_division=0))

    return {
        "map": float(np.mean([class_ap[c] for c in present])) if len(present) else None,
        "mean_f2": mean_fbeta(targets, predictions, beta=2.0),
        "macro_f1": macro_fbeta(1.0),
        "macro_f2": macro_fbeta(2.0),
        "precision_at_1": precision_at_k(targets, scores, 1),
        "precision_at_5": precision_at_k(targets, scores, 5),
        "head_map": group_map["many_shot"],
        "medium_map": group_map["medium_shot"],
        "tail_map": group_map["few_shot"],
        "per_class_ap": class_ap,
    }


def is_scalar_metric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
