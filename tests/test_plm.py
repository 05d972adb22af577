"""Partial Label Masking (imbalance_bench/losses/plm.py)."""

import math

import numpy as np
import pytest
import torch

from conftest import random_batch

from imbalance_bench.losses.base import reduce_terms
from imbalance_bench.losses.dfl import DualFocalLoss
from imbalance_bench.losses.focal import SigmoidFocalLoss, SoftmaxFocalLoss, sigmoid_focal_loss
from imbalance_bench.losses.plm import (
    HISTOGRAM_SMOOTHING,
    PartialLabelMasking,
    class_ratios,
    histogram_divergences,
    keep_probabilities,
    sample_keep_mask,
    standardize,
    update_target_ratio,
)
from imbalance_bench.losses.sigmoid_bce import SigmoidCrossEntropy, sigmoid_cross_entropy

COUNTS, NUM_SAMPLES = [30, 60, 5, 90], 100


def make_plm(base=None, bins=10, lr=0.5, prepared=True):
    plm = PartialLabelMasking(base if base is not None else SigmoidCrossEntropy(), bins, lr)
    if prepared:
        plm.prepare(COUNTS, NUM_SAMPLES)
    return plm


@pytest.fixture
def batch():
    return random_batch(64, 4, 0.4)


def test_class_ratios_and_keep_probabilities_by_hand():
    assert class_ratios([30, 60, 0, 100], 100).tolist() == pytest.approx([30 / 70, 60 / 40, 0.0, 100.0])
    ratio = torch.tensor([0.5, 0.5, 0.5, 0.0])
    target = torch.tensor([0.1, 2.0, 0.5, 0.0])
    keep_pos, keep_neg = keep_probabilities(ratio, target)
    assert keep_pos.tolist() == pytest.approx([0.2, 1.0, 1.0, 1.0])
    assert keep_neg.tolist() == pytest.approx([1.0, 0.25, 1.0, 1.0])


def test_nothing_masked_when_target_equals_ratio(batch):
    logits, labels, multi_hot, weights = batch
    plm = make_plm().train()
    for targets in (labels, multi_hot):
        assert torch.equal(plm(logits, targets), sigmoid_cross_entropy(logits, targets))
        assert torch.equal(plm(logits, targets, weights), sigmoid_cross_entropy(logits, targets, weights))
    log = plm.end_epoch()
    assert log["kept_positive_fraction"] == 1.0 and log["kept_negative_fraction"] == 1.0


def test_kept_fractions_match_the_formula_and_the_seed():
    g = torch.Generator().manual_seed(1)
    n = 40000
    logits = torch.randn(n, 4, generator=g)
    targets = (torch.rand(n, 4, generator=g) < 0.5).float()
    plm = make_plm().train()
    plm.target_ratio[0] = plm.class_ratio[0] / 4  # keep 1/4 of class 0's positives
    plm.target_ratio[1] = plm.class_ratio[1] * 4  # keep 1/4 of class 1's negatives
    torch.manual_seed(123)
    loss = plm(logits, targets)
    positive = targets > 0.5
    kept_pos = plm.kept_pos.double() / positive.sum(0)
    kept_neg = plm.kept_neg.double() / (~positive).sum(0)
    se = math.sqrt(0.25 * 0.75 / (n / 2))
    assert abs(kept_pos[0].item() - 0.25) < 4 * se and abs(kept_neg[1].item() - 0.25) < 4 * se
    assert kept_neg[0].item() == 1.0 and kept_pos[1].item() == 1.0
    assert kept_pos[2:].tolist() == [1.0, 1.0] and kept_neg[2:].tolist() == [1.0, 1.0]
    # the same seed draws the same mask, and the loss is the base terms under it
    torch.manual_seed(123)
    mask = sample_keep_mask(positive, *keep_probabilities(plm.class_ratio, plm.target_ratio))
    expected = reduce_terms(plm.per_element(logits, targets), targets, None, mask.float())
    assert torch.equal(loss, expected)
    assert loss < sigmoid_cross_entropy(logits, targets)


def test_histograms_match_numpy(batch):
    logits, _, multi_hot, _ = batch
    logits = logits.clone()
    logits[0, :] = 100.0  # p = 1 goes to the closed last bin
    logits[1, :] = -100.0
    plm = make_plm(bins=7).train()
    plm(logits[:40], multi_hot[:40])
    plm(logits[40:], multi_hot[40:])  # accumulates over steps
    probs = torch.sigmoid(logits).double().numpy()
    positive = multi_hot.numpy() > 0.5
    for c in range(4):
        expected_pos, _ = np.histogram(probs[positive[:, c], c], bins=7, range=(0.0, 1.0))
        expected_neg, _ = np.histogram(probs[~positive[:, c], c], bins=7, range=(0.0, 1.0))
        assert plm.hist_pos[c].tolist() == expected_pos.tolist()
        assert plm.hist_neg[c].tolist() == expected_neg.tolist()
    plm.end_epoch()
    assert plm.hist_pos.sum().item() == 0 and plm.hist_neg.sum().item() == 0  # reset each epoch


def test_divergences_by_hand():
    hist_pos = torch.tensor([[0, 0, 4], [2, 1, 1], [0, 0, 0]])
    hist_neg = torch.tensor([[4, 0, 0], [0, 0, 0], [1, 1, 2]])
    d_pos, d_neg = histogram_divergences(hist_pos, hist_neg)
    eps, norm = HISTOGRAM_SMOOTHING, 1 + 3 * HISTOGRAM_SMOOTHING
    assert d_pos.tolist() == pytest.approx(
        [-math.log((1 + eps) / norm), -math.log((0.25 + eps) / norm), math.log(3)], rel=1e-9
    )
    assert d_neg.tolist() == pytest.approx(
        [-math.log((1 + eps) / norm), math.log(3), -math.log((0.25 + eps) / norm)], rel=1e-9
    )
    # an empty top bin costs a large but finite divergence
    worst, _ = histogram_divergences(torch.tensor([[9, 0, 0]]), hist_neg[:1])
    assert math.isfinite(worst.item()) and worst.item() > 8


def test_standardize():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    z = standardize(values, torch.tensor([True, True, True, False]))
    sd = math.sqrt(2 / 3)
    assert z.tolist() == pytest.approx([-1 / sd, 0.0, 1 / sd, 0.0])
    assert standardize(torch.full((3,), 2.3), torch.ones(3, dtype=torch.bool)).tolist() == [0.0, 0.0, 0.0]
    assert standardize(values, torch.tensor([False, True, False, False])).tolist() == [0.0] * 4
    assert standardize(values, torch.zeros(4, dtype=torch.bool)).tolist() == [0.0] * 4


def test_update_moves_the_target_ratio_the_stated_way():
    # class 0: positives predicted low (bad); class 1: negatives predicted high (bad); class 2 fine
    hist_pos = torch.tensor([[8, 2, 0, 0], [0, 0, 1, 9], [0, 0, 2, 8]])
    hist_neg = torch.tensor([[9, 1, 0, 0], [0, 1, 2, 7], [9, 1, 0, 0]])
    d_pos, d_neg = histogram_divergences(hist_pos, hist_neg)
    seen = torch.ones(3, dtype=torch.bool)
    ratio = torch.tensor([0.2, 0.2, 0.2], dtype=torch.float64)
    new = update_target_ratio(ratio, d_pos, d_neg, seen, seen, lr=0.5)
    assert new[0] > 0.2 and new[1] < 0.2
    z = standardize(d_pos, seen) - standardize(d_neg, seen)
    assert new.tolist() == pytest.approx((ratio * torch.exp(0.5 * z)).tolist())
    assert update_target_ratio(ratio, d_pos, d_neg, seen, seen, lr=0.0).tolist() == ratio.tolist()

    plm2 = PartialLabelMasking(SigmoidCrossEntropy(), 4, 0.5)  # the module does the same from its buffers
    plm2.prepare([20, 20, 20, 20], 120)
    plm2.hist_pos[:3] = hist_pos
    plm2.hist_neg[:3] = hist_neg
    before = plm2.target_ratio.clone()
    log = plm2.end_epoch()
    assert log["target_ratio"][0] > before[0].item() and log["target_ratio"][1] < before[1].item()
    assert log["divergence_pos"][:3] == pytest.approx(d_pos.tolist(), rel=1e-6)
    assert log["divergence_neg"][:3] == pytest.approx(d_neg.tolist(), rel=1e-6)


def test_eval_mode_masks_and_accumulates_nothing(batch):
    logits, labels, _, weights = batch
    plm = make_plm()
    plm.target_ratio.mul_(0.01)
    plm.eval()
    assert torch.equal(plm(logits, labels, weights), sigmoid_cross_entropy(logits, labels, weights))
    assert plm.hist_pos.sum().item() == 0 and plm.hist_neg.sum().item() == 0 and plm.kept_pos.sum().item() == 0
    unprepared = make_plm(prepared=False).eval()
    assert torch.equal(unprepared(logits, labels), sigmoid_cross_entropy(logits, labels))


def test_training_before_prepare_is_a_clear_error(batch):
    logits, labels, _, _ = batch
    with pytest.raises(RuntimeError, match="prepare"):
        make_plm(prepared=False).train()(logits, labels)
    assert make_plm(prepared=False).end_epoch() == {}


def test_wraps_focal_and_learnable_dfl(batch):
    logits, labels, multi_hot, weights = batch
    focal = make_plm(SigmoidFocalLoss(gamma=2.0)).train()
    assert torch.equal(focal(logits, multi_hot, weights), sigmoid_focal_loss(logits, multi_hot, 2.0, weights))

    dfl = DualFocalLoss(1.0, 1.0, 2.0, 1.0, True, 0.0, 5.0)
    plm = make_plm(dfl).train()
    plm.target_ratio.mul_(0.5)  # mask some positives: the gradient must still reach gamma
    assert [name for name, _ in plm.named_parameters()] == ["base.gamma_logit"]
    plm(logits, labels).backward()
    assert dfl.gamma_logit.grad.abs().item() > 0
    log = plm.end_epoch()
    assert log["gamma"] == pytest.approx(2.0) and len(log["target_ratio"]) == 4
    with pytest.raises(ValueError, match="sigmoid"):
        PartialLabelMasking(SoftmaxFocalLoss(gamma=2.0), 10, 0.1)


def test_state_dict_round_trip_restores_ratios_and_divergences(batch):
    logits, _, multi_hot, _ = batch
    trained = make_plm(DualFocalLoss(1.0, 1.0, 2.0, 1.0, True, 0.0, 5.0)).train()
    trained(logits, multi_hot)
    trained.end_epoch()
    assert not torch.equal(trained.target_ratio, trained.class_ratio)
    trained(logits, multi_hot)  # a partly filled histogram goes into the checkpoint too
    state = trained.state_dict()
    assert {"class_ratio", "target_ratio", "hist_pos", "hist_neg", "divergence_pos", "divergence_neg",
            "base.gamma_logit"} <= set(state)

    fresh = PartialLabelMasking(DualFocalLoss(1.0, 1.0, 2.0, 1.0, True, 0.0, 5.0), 10, 0.5)
    fresh.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(fresh.state_dict()[name], value), name
    fresh.prepare(COUNTS, NUM_SAMPLES)  # a resumed run still calls prepare: the restored r^ survives
    assert torch.equal(fresh.target_ratio, trained.target_ratio)
    assert fresh.end_epoch() == trained.end_epoch()
    with pytest.raises(ValueError, match="classes"):
        fresh.prepare([1, 2], 10)


def test_classes_without_positives_or_negatives_are_safe(batch):
    logits, _, multi_hot, _ = batch
    plm = PartialLabelMasking(SigmoidCrossEntropy(), 10, 5.0)
    plm.prepare([0, 100, 50, 10], 100)
    assert torch.isfinite(plm.class_ratio).all() and plm.frozen.tolist() == [True, True, False, False]
    plm.train()
    for _ in range(3):
        value = plm(logits, multi_hot)
        assert torch.isfinite(value)
        log = plm.end_epoch()
        assert all(math.isfinite(v) for key in ("target_ratio", "divergence_pos", "divergence_neg") for v in log[key])
    assert plm.target_ratio[:2].tolist() == plm.class_ratio[:2].tolist()  # never moved: never masked
    keep_pos, keep_neg = keep_probabilities(plm.class_ratio, plm.target_ratio)
    assert keep_pos[:2].tolist() == [1.0, 1.0] and keep_neg[:2].tolist() == [1.0, 1.0]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="bins"):
        PartialLabelMasking(SigmoidCrossEntropy(), 1, 0.1)
    with pytest.raises(ValueError, match="lr"):
        PartialLabelMasking(SigmoidCrossEntropy(), 10, -1.0)
    with pytest.raises(ValueError, match="class counts"):
        make_plm(prepared=False).prepare([5, 20], 10)
