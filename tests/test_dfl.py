"""Dual Focal Loss (imbalance_bench/losses/dfl.py)."""

import math

import pytest
import torch

from conftest import random_batch

from imbalance_bench.losses.dfl import DualFocalLoss, dual_focal_terms
from imbalance_bench.losses.sigmoid_bce import sigmoid_cross_entropy


def make_dfl(alpha=1.0, beta=1.0, gamma=2.0, rho=1.0, learnable=True, gamma_min=0.0, gamma_max=5.0):
    return DualFocalLoss(alpha, beta, gamma, rho, learnable, gamma_min, gamma_max)


@pytest.fixture
def batch():
    return random_batch(32, 6, 0.3)


def test_reduces_to_sigmoid_cross_entropy(batch):
    logits, labels, multi_hot, weights = batch
    for learnable in (False, True):
        loss = make_dfl(alpha=0.0, beta=1.0, rho=1.0, learnable=learnable)
        for targets in (labels, multi_hot):
            assert torch.allclose(loss(logits, targets), sigmoid_cross_entropy(logits, targets), rtol=1e-5)
            assert torch.allclose(loss(logits, targets, weights), sigmoid_cross_entropy(logits, targets, weights), rtol=1e-5)


def test_by_hand():
    z, alpha, beta, gamma, rho = 0.5, 0.3, 0.7, 2.0, 1.2
    p = 1 / (1 + math.exp(-z))
    positive = -math.log(p) + alpha * (1 - p) ** gamma
    negative = -beta * math.log(rho - p) + alpha * p**gamma
    terms = dual_focal_terms(torch.tensor([[z, z]]), torch.tensor([[1.0, 0.0]]), alpha, beta, gamma, rho)
    assert terms[0].tolist() == pytest.approx([positive, negative], rel=1e-6)
    loss = make_dfl(alpha, beta, gamma, rho, learnable=False)
    assert loss(torch.tensor([[z, z]]), torch.tensor([0])).item() == pytest.approx(positive + negative, rel=1e-6)


def test_rho_above_one_matches_direct_formula(batch):
    logits, _, multi_hot, _ = batch
    logits = logits.double()
    alpha, beta, gamma, rho = 0.8, 0.6, 1.5, 1.3
    p = torch.sigmoid(logits)
    y = multi_hot.double()
    direct = -y * torch.log(p) - beta * (1 - y) * torch.log(rho - p) + alpha * (y - p).abs() ** gamma
    terms = dual_focal_terms(logits, multi_hot, alpha, beta, gamma, rho)
    assert torch.allclose(terms.double(), direct, rtol=1e-4, atol=1e-5)


def test_loss_grows_with_the_error():
    z = torch.linspace(-8, 8, 201)[:, None]
    for rho in (1.0, 1.5):
        for loss in (make_dfl(alpha=1.0, beta=1.0, gamma=2.0, rho=rho), make_dfl(alpha=3.0, beta=0.2, gamma=0.5, rho=rho)):
            with torch.no_grad():
                on_positive = loss.per_element(z, torch.ones_like(z))[:, 0]
                on_negative = loss.per_element(z, torch.zeros_like(z))[:, 0]
            assert torch.all(on_positive[1:] < on_positive[:-1])  # y = 1: falls as p rises
            assert torch.all(on_negative[1:] > on_negative[:-1])  # y = 0: rises with p


def test_alpha_term_adds_the_powered_error():
    logits = torch.tensor([[1.0, -2.0, 0.3]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    base = dual_focal_terms(logits, y, 0.0, 1.0, 2.0, 1.0)
    with_alpha = dual_focal_terms(logits, y, 0.5, 1.0, 2.0, 1.0)
    error = (y - torch.sigmoid(logits)).abs()
    assert torch.allclose(with_alpha - base, 0.5 * error**2, atol=1e-6)


def test_stable_at_extreme_logits():
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    for rho in (1.0, 1.0 + 1e-6, 2.0):
        loss = make_dfl(alpha=1.0, beta=1.0, gamma=2.0, rho=rho)
        value = loss(logits, y)
        logits.grad = None
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(logits.grad).all() and torch.isfinite(loss.gamma_logit.grad).all()
    # wrong at logit 100 with rho = 1 costs about 100 nats, not inf
    terms = dual_focal_terms(torch.tensor([[100.0]]), torch.tensor([[0.0]]), 0.0, 1.0, 2.0, 1.0)
    assert terms.item() == pytest.approx(100.0, rel=1e-4)


def test_learnable_gamma_gets_a_gradient_and_stays_bounded(batch):
    logits, labels, _, _ = batch
    loss = make_dfl(gamma=2.0, gamma_min=0.5, gamma_max=4.0)
    assert loss.gamma_value == pytest.approx(2.0, rel=1e-6)
    assert [name for name, _ in loss.named_parameters()] == ["gamma_logit"]
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    loss(logits, labels).backward()
    assert loss.gamma_logit.grad.abs().item() > 0
    optimizer.step()
    assert loss.gamma_value > 2.0  # descent raises gamma: d/dgamma alpha |e|^gamma <= 0
    optimizer = torch.optim.SGD(loss.parameters(), lr=1e4)
    for _ in range(50):
        optimizer.zero_grad()
        loss(logits, labels).backward()
        optimizer.step()
        assert 0.5 <= loss.gamma_value <= 4.0 and math.isfinite(loss.gamma_value)
    assert loss.gamma_value == pytest.approx(4.0, abs=1e-3)
    assert loss.end_epoch() == {"gamma": loss.gamma_value}


def test_fixed_gamma_has_no_parameters():
    loss = make_dfl(gamma=1.5, learnable=False)
    assert list(loss.parameters()) == [] and loss.gamma_value == 1.5
    assert loss.end_epoch() == {"gamma": 1.5}


def test_state_dict_round_trip_restores_gamma(batch):
    logits, labels, _, _ = batch
    trained = make_dfl(gamma=1.0)
    optimizer = torch.optim.SGD(trained.parameters(), lr=10.0)
    trained(logits, labels).backward()
    optimizer.step()
    fresh = make_dfl(gamma=1.0)
    assert fresh.gamma_value != pytest.approx(trained.gamma_value)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.gamma_value == trained.gamma_value
    assert torch.equal(fresh(logits, labels), trained(logits, labels))


def test_start_on_a_bound_can_still_learn(batch):
    logits, labels, _, _ = batch
    loss = make_dfl(gamma=0.0, gamma_min=0.0, gamma_max=5.0)
    assert loss.gamma_value == pytest.approx(0.0, abs=1e-3)
    loss(logits, labels).backward()
    assert loss.gamma_logit.grad.abs().item() > 0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rho"):
        make_dfl(rho=0.9)
    with pytest.raises(ValueError, match="gamma=6"):
        make_dfl(gamma=6.0, gamma_max=5.0)
    with pytest.raises(ValueError, match="gamma=0.1"):
        make_dfl(gamma=0.1, gamma_min=0.5, learnable=False)
    with pytest.raises(ValueError, match="gamma_max"):
        make_dfl(gamma=1.0, gamma_min=1.0, gamma_max=1.0, learnable=True)
    with pytest.raises(ValueError, match="gamma_min"):
        make_dfl(gamma_min=-1.0)


def test_dtype_agnostic_and_sigmoid_head(batch):
    logits, labels, _, _ = batch
    loss = make_dfl()
    value = loss(logits.to(torch.bfloat16), labels, torch.ones(6))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert loss.label_kinds == {"single", "multi"}
    assert loss.classifier_bias(10) == pytest.approx(-math.log(9))
