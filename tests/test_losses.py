"""Losses and class re-weighting (imbalance_bench/losses/)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imbalance_bench.losses import (
    ClassBalanced,
    InverseFrequency,
    Reweighting,
    SigmoidCrossEntropy,
    SigmoidFocalLoss,
    SoftmaxCrossEntropy,
    SoftmaxFocalLoss,
    class_balanced_weights,
    create_focal,
    inverse_frequency_weights,
    sigmoid_cross_entropy,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
)

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g) * 3
    labels = torch.randint(0, 10, (16,), generator=g)
    return logits, labels


def test_cb_weights_beta_zero_are_ones():
    assert torch.allclose(class_balanced_weights(COUNTS, 0.0), torch.ones(10))


def test_cb_weights_sum_to_num_classes():
    for beta in (0.9, 0.99, 0.999, 0.9999):
        w = class_balanced_weights(COUNTS, beta)
        assert w.sum().item() == pytest.approx(10.0, rel=1e-6)
        assert torch.all(w[:-1] <= w[1:])  # rarer classes weigh more


def test_cb_weights_beta_to_one_approach_inverse_frequency():
    w = class_balanced_weights(COUNTS, 1 - 1e-9)
    inverse = torch.tensor([1.0 / n for n in COUNTS])
    expected = inverse / inverse.sum() * 10
    assert torch.allclose(w, expected, rtol=1e-4)
    assert torch.allclose(inverse_frequency_weights(COUNTS), expected, rtol=1e-6)


def test_cb_weights_formula_by_hand():
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in (100, 10)]
    expected = [r / sum(raw) * 2 for r in raw]
    assert class_balanced_weights([100, 10], beta).tolist() == pytest.approx(expected, rel=1e-6)


def test_empty_class_gets_zero_weight():
    w = class_balanced_weights([10, 0, 5], 0.9)
    assert w[1].item() == 0.0 and w.sum().item() == pytest.approx(3.0)


def test_deferred_reweighting_starts_at_start_epoch():
    scheme = ClassBalanced(beta=0.999, start_epoch=3)
    assert scheme.weights_for_epoch(2, COUNTS) is None
    assert torch.allclose(scheme.weights_for_epoch(3, COUNTS), class_balanced_weights(COUNTS, 0.999))
    assert Reweighting().weights_for_epoch(0, COUNTS) is None
    assert torch.allclose(InverseFrequency().weights_for_epoch(0, COUNTS), inverse_frequency_weights(COUNTS))


def test_focal_gamma_zero_equals_bce(batch):
    logits, labels = batch
    w = class_balanced_weights(COUNTS, 0.999)
    assert torch.allclose(sigmoid_focal_loss(logits, labels, 0.0), sigmoid_cross_entropy(logits, labels))
    assert torch.allclose(sigmoid_focal_loss(logits, labels, 0.0, w), sigmoid_cross_entropy(logits, labels, w))


def test_bce_matches_torch_sum_over_classes(batch):
    logits, labels = batch
    onehot = F.one_hot(labels, 10).float()
    expected = F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / len(labels)
    assert torch.allclose(sigmoid_cross_entropy(logits, labels), expected)
    assert torch.allclose(sigmoid_cross_entropy(logits, onehot), expected)  # multi-hot input


def test_sigmoid_focal_by_hand():
    logits = torch.tensor([[2.0, -1.0]])
    labels = torch.tensor([0])
    gamma = 2.0
    p_true = 1 / (1 + math.exp(-2.0))       # class 0 is positive, p^t = sigmoid(2)
    p_neg = 1 / (1 + math.exp(-1.0))        # class 1 negative, z^t = +1
    expected = (1 - p_true) ** gamma * -math.log(p_true) + (1 - p_neg) ** gamma * -math.log(p_neg)
    assert sigmoid_focal_loss(logits, labels, gamma).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_sigmoid_uses_true_class_weight_for_all_terms():
    logits = torch.tensor([[0.5, -0.3, 1.0], [0.1, 0.2, -0.7]])
    labels = torch.tensor([2, 0])
    w = torch.tensor([0.5, 1.0, 1.5])
    per_sample = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 3).float(), reduction="none").sum(1)
    expected = (per_sample * w[labels]).mean()
    assert torch.allclose(sigmoid_cross_entropy(logits, labels, w), expected)


def test_softmax_ce_matches_torch_and_weighting(batch):
    logits, labels = batch
    assert torch.allclose(softmax_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    w = class_balanced_weights(COUNTS, 0.99)
    expected = (F.cross_entropy(logits, labels, reduction="none") * w[labels]).mean()
    assert torch.allclose(softmax_cross_entropy(logits, labels, w), expected)


def test_softmax_focal(batch):
    logits, labels = batch
    assert torch.allclose(softmax_focal_loss(logits, labels, 0.0), F.cross_entropy(logits, labels))
    p = F.softmax(logits, 1)[torch.arange(16), labels]
    expected = ((1 - p) ** 2 * -torch.log(p)).mean()
    assert torch.allclose(softmax_focal_loss(logits, labels, 2.0), expected, rtol=1e-5)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, -6.0]])
    hard = torch.tensor([[0.2, -0.2]])
    y = torch.tensor([0])
    ratio_focal = sigmoid_focal_loss(easy, y, 2.0) / sigmoid_focal_loss(hard, y, 2.0)
    ratio_bce = sigmoid_cross_entropy(easy, y) / sigmoid_cross_entropy(hard, y)
    assert ratio_focal < ratio_bce / 100


def test_focal_option_and_prior_bias():
    focal = create_focal(gamma=0.5, softmax=False)
    assert isinstance(focal, SigmoidFocalLoss) and focal.gamma == 0.5
    assert isinstance(create_focal(gamma=0.5, softmax=True), SoftmaxFocalLoss)
    assert SigmoidCrossEntropy().classifier_bias(10) == pytest.approx(-math.log(9))
    assert focal.classifier_bias(100) == pytest.approx(-math.log(99))
    assert SoftmaxCrossEntropy().classifier_bias(10) is None
    assert create_focal(gamma=1.0, softmax=True).classifier_bias(10) is None


def test_losses_are_device_and_dtype_agnostic(batch):
    logits, labels = batch
    for loss in (SoftmaxCrossEntropy(), SigmoidCrossEntropy(), SigmoidFocalLoss(gamma=2.0)):
        value = loss(logits.to(torch.bfloat16), labels, torch.ones(10))
        assert value.dtype == torch.float32 and np.isfinite(value.item())
