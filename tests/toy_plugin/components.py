"""A loss and a dataset added from outside the package, as a user adds their own: one module with the
classes and one YAML per option under a folder given to `imbench --config-dir`."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from imbalance_bench.data import LongTailImages
from imbalance_bench.data.bundle import RawSplits
from imbalance_bench.losses.base import ClassificationLoss


class BrierLoss(ClassificationLoss):
    """The Brier score (Brier 1950): the squared distance between the softmax and the one-hot label,
    summed over classes and averaged over the batch (class weights scale each sample's term)."""

    name = "toy_brier"
    label_kinds = frozenset({"single"})

    def forward(self, logits, targets, class_weights=None):
        probabilities = logits.float().softmax(dim=1)
        one_hot = torch.nn.functional.one_hot(targets.long(), logits.shape[1]).float()
        per_sample = (probabilities - one_hot).pow(2).sum(dim=1)
        if class_weights is not None:
            per_sample = per_sample * class_weights[targets.long()]
        return per_sample.mean()


class DigitsLT(LongTailImages):
    """scikit-learn's 8x8 digits (1797 images), the first 1200 for training, cut to a long tail."""

    name = "toy_digits"
    image_size = 8

    def read(self, root, download):
        digits = load_digits()
        images = (digits.images * (255 / 16)).round().astype(np.uint8)[:, None]
        labels = digits.target.astype(np.int64)
        return RawSplits(images[:1200], labels[:1200], images[1200:], labels[1200:],
                         [str(c) for c in range(10)], "sklearn.datasets.load_digits")
