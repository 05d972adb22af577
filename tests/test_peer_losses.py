"""LDAM and its hinge form, the multi-class hinge, Balanced Softmax and ASL
(imbalance_bench/losses/{ldam,hinge,balanced_softmax,asl}.py) and the cosine head LDAM asks for
(imbalance_bench/models/heads.py)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SMOKE, random_batch
from imbalance_bench.config import check_combinations, validate
from imbalance_bench.errors import ConfigError
from imbalance_bench.losses import (
    AsymmetricLoss,
    BalancedSoftmax,
    LDAMLoss,
    LogitAdjustedLoss,
    MultiClassHingeLoss,
    SigmoidFocalLoss,
    asymmetric_terms,
    ldam_loss,
    ldam_margins,
    log_class_prior,
    multiclass_hinge_loss,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
)
from imbalance_bench.models import NormedLinear, classifier_of, create_model, use_normed_classifier
from imbalance_bench.build import init_classifier_bias
from imbalance_bench.checkpoint import config_differences
from imbalance_bench.targets import build

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]

# ---------------------------------------------------------------- LDAM


def test_ldam_margins_by_hand():
    # n^(-1/4): 16 -> 1/2, 81 -> 1/3, 1 -> 1; C = 0.5 / 1, so 0.25, 1/6, 0.5; the empty class gets max_margin
    assert ldam_margins([16, 81, 1, 0], 0.5).tolist() == pytest.approx([0.25, 1 / 6, 0.5, 0.5])


def test_ldam_margins_follow_n_to_the_minus_quarter():
    margins = ldam_margins(COUNTS, 0.5).double()
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    assert margins.max().item() == pytest.approx(0.5) and margins.argmax().item() == len(COUNTS) - 1
    assert torch.allclose(margins * counts.pow(0.25), torch.full_like(margins, 0.5 * 50**0.25), rtol=1e-6)


def test_ldam_uniform_margin_gives_every_class_the_largest():
    """M-DRW (Cao et al. 2019, Table 2): the margin without its dependence on the class counts.
    counts [16, 1], s = 2, both margins 0.5: sample 0, y = 0, z = [1, 0] -> s (z - 0.5 e_0) = [1, 0]."""
    assert torch.equal(ldam_margins(COUNTS, 0.5, uniform=True), torch.full((len(COUNTS),), 0.5))
    loss = LDAMLoss(max_margin=0.5, scale=2.0, normalized_classifier=False, uniform_margin=True)
    loss.prepare([16, 1], 17)
    assert loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(math.log1p(math.exp(-1.0)))


def test_ldam_by_hand_with_class_weights():
    # counts [16, 1] -> margins [0.25, 0.5]; s = 2
    # sample 0, y = 0, z = [1, 0]: s (z - 0.25 e_0) = [1.5, 0], CE = log(1 + e^-1.5)
    # sample 1, y = 1, z = [0, 1]: s (z - 0.5 e_1) = [0, 1],   CE = log(1 + e^-1)
    loss = LDAMLoss(max_margin=0.5, scale=2.0, normalized_classifier=False)
    loss.prepare([16, 1], 17)
    logits, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    a, b = math.log1p(math.exp(-1.5)), math.log1p(math.exp(-1.0))
    assert loss(logits, labels).item() == pytest.approx((a + b) / 2, rel=1e-6)
    # weights [1, 3]: mean over samples of w_y * CE, (1 a + 3 b) / 2, not torch's (1 a + 3 b) / (1 + 3)
    assert loss(logits, labels, torch.tensor([1.0, 3.0])).item() == pytest.approx((a + 3 * b) / 2, rel=1e-6)


def test_ldam_zero_margins_and_unit_scale_is_ce():
    logits, labels, _, weights = random_batch(16, 10, 0.2)
    zero = torch.zeros(10)
    assert torch.allclose(ldam_loss(logits, labels, zero, 1.0), softmax_cross_entropy(logits, labels))
    assert torch.allclose(ldam_loss(logits, labels, zero, 1.0, weights), softmax_cross_entropy(logits, labels, weights))


def test_ldam_matches_the_reference_formula():
    # kaidic/LDAM-DRW: output = where(onehot, x - m[y], x); cross_entropy(s * output, y), per sample here
    logits, labels, _, weights = random_batch(16, 10, 0.2)
    loss = LDAMLoss(max_margin=0.5, scale=30.0, normalized_classifier=True)
    loss.prepare(COUNTS, sum(COUNTS))
    onehot = F.one_hot(labels, 10).bool()
    output = torch.where(onehot, logits - loss.margins[labels][:, None], logits)
    per_sample = F.cross_entropy(30.0 * output, labels, reduction="none")
    assert torch.allclose(loss(logits, labels), per_sample.mean())
    assert torch.allclose(loss(logits, labels, weights), (per_sample * weights[labels]).mean())
    assert loss.normalized_classifier and loss.label_kinds == {"single"} and not loss.sigmoid_head


@pytest.mark.parametrize("make", [lambda: LDAMLoss(0.5, 30.0, True), BalancedSoftmax])
def test_forward_before_prepare_is_a_clear_error(make):
    with pytest.raises(RuntimeError, match=r"prepare\(class_counts, num_samples\) must run before forward"):
        make()(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_prepared_state_follows_the_device_and_is_not_checkpointed():
    loss = LDAMLoss(0.5, 30.0, True)
    loss.prepare([3, 1], 4)
    assert "margins" not in loss.state_dict()  # recomputed from the counts, so a resume loads cleanly
    assert loss.to(torch.float64).margins.dtype == torch.float64


# ---------------------------------------------------------------- multi-class hinge (HG) and LDAM-HG

# three samples, three classes; margin 1: max(max_{j != y} z_j - z_y + 1, 0)
HINGE_LOGITS = torch.tensor([[2.0, 0.5, 0.8], [0.0, 1.0, 3.0], [1.0, 0.0, 0.5]])
HINGE_LABELS = torch.tensor([0, 1, 2])


def test_hinge_by_hand_with_class_weights():
    # sample 0, y = 0: 0.8 - 2 + 1 = -0.2 -> 0; sample 1, y = 1: 3 - 1 + 1 = 3; sample 2, y = 2: 1 - 0.5 + 1 = 1.5
    loss = MultiClassHingeLoss(margin=1.0)
    assert loss(HINGE_LOGITS, HINGE_LABELS).item() == pytest.approx((0 + 3 + 1.5) / 3)
    # weights [1, 2, 4]: mean over samples of w_y * hinge, (1 * 0 + 2 * 3 + 4 * 1.5) / 3
    weighted = loss(HINGE_LOGITS, HINGE_LABELS, torch.tensor([1.0, 2.0, 4.0]))
    assert weighted.item() == pytest.approx((0 + 6 + 6) / 3)
    assert loss.label_kinds == {"single"} and not loss.sigmoid_head and not loss.normalized_classifier


def test_hinge_gradient_moves_only_the_true_and_the_strongest_wrong_logit():
    """dL/dz_i = (e_{j*} - e_y) / N for a sample inside the margin (j* its strongest wrong class),
    0 for a sample past it; the weight w_y scales its row."""
    logits = HINGE_LOGITS.clone().requires_grad_(True)
    MultiClassHingeLoss(margin=1.0)(logits, HINGE_LABELS, torch.tensor([1.0, 2.0, 4.0])).backward()
    expected = torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.0, 2.0], [4.0, 0.0, -4.0]]) / 3
    assert torch.allclose(logits.grad, expected)


def test_ldam_hinge_form_by_hand():
    """LDAM-HG (Cao et al. 2019, eq. 10): counts [16, 1] -> margins [0.25, 0.5].
    sample 0, y = 0, z = [0.1, 0]: 0 - 0.1 + 0.25 = 0.15; sample 1, y = 1, z = [0.2, 0.5]: 0.2 - 0.5 + 0.5 = 0.2.
    Eq. 10 has no scale: s = 2 and s = 30 give the same loss."""
    logits, labels = torch.tensor([[0.1, 0.0], [0.2, 0.5]]), torch.tensor([0, 1])
    for scale in (2.0, 30.0):
        loss = LDAMLoss(max_margin=0.5, scale=scale, normalized_classifier=False, form="hinge")
        loss.prepare([16, 1], 17)
        assert loss(logits, labels).item() == pytest.approx((0.15 + 0.2) / 2)
        assert loss(logits, labels, torch.tensor([1.0, 3.0])).item() == pytest.approx((0.15 + 3 * 0.2) / 2)
    # uniform margins (HG on the cosine head): 0.5 for both, 0 - 0.1 + 0.5 = 0.4 and 0.2
    uniform = LDAMLoss(max_margin=0.5, scale=30.0, normalized_classifier=True, uniform_margin=True, form="hinge")
    uniform.prepare([16, 1], 17)
    assert uniform(logits, labels).item() == pytest.approx((0.4 + 0.2) / 2)


def test_ldam_hinge_form_is_the_hinge_with_ldam_margins():
    logits, labels, _, weights = random_batch(16, 10, 0.2)
    loss = LDAMLoss(max_margin=0.5, scale=30.0, normalized_classifier=True, form="hinge")
    loss.prepare(COUNTS, sum(COUNTS))
    assert torch.allclose(loss(logits, labels, weights), multiclass_hinge_loss(logits, labels, loss.margins, weights))
    uniform = LDAMLoss(max_margin=0.7, scale=30.0, normalized_classifier=True, uniform_margin=True, form="hinge")
    uniform.prepare(COUNTS, sum(COUNTS))
    assert torch.allclose(uniform(logits, labels, weights), MultiClassHingeLoss(margin=0.7)(logits, labels, weights))
    # the default form is the cross-entropy, unchanged
    default = LDAMLoss(max_margin=0.5, scale=30.0, normalized_classifier=True)
    default.prepare(COUNTS, sum(COUNTS))
    assert default.form == "ce"
    assert torch.allclose(default(logits, labels), ldam_loss(logits, labels, default.margins, 30.0))


@pytest.mark.parametrize("make, message", [
    (lambda: MultiClassHingeLoss(margin=0.0), "margin=0.0 must be > 0"),
    (lambda: LDAMLoss(0.5, 30.0, True, form="squared"), "form='squared' must be one of ce, hinge"),
])
def test_hinge_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_runs_saved_before_ldam_had_a_form_resume_as_the_ce_form():
    saved = {"loss": {"name": "ldam", "max_margin": 0.5, "uniform_margin": False}}
    current = {"loss": {**saved["loss"], "form": "ce"}}
    assert config_differences(saved, current) == []
    assert config_differences(saved, {"loss": {**current["loss"], "form": "hinge"}}) == ["loss.form"]


# ---------------------------------------------------------------- Balanced Softmax


def test_balanced_softmax_by_hand():
    # counts [3, 1]: pi = [3/4, 1/4]; z = 0, so softmax(z + log pi) = pi
    # y = 0: -log 3/4; y = 1: -log 1/4 = log 4
    loss = BalancedSoftmax()
    loss.prepare([3, 1], 4)
    assert loss.log_prior.tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    value = loss(torch.zeros(2, 2), torch.tensor([0, 1]))
    assert value.item() == pytest.approx((-math.log(0.75) + math.log(4)) / 2, rel=1e-6)
    weighted = loss(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((-math.log(0.75) + 3 * math.log(4)) / 2, rel=1e-6)


def test_balanced_softmax_gradient_favours_the_tail():
    # counts [3, 1], z = 0. dL/dz = softmax(z + log pi) - e_y = pi - e_y; plain CE: [1/2, 1/2] - e_y
    loss = BalancedSoftmax()
    loss.prepare([3, 1], 4)
    for label, expected, plain in ((1, [0.75, -0.75], [0.5, -0.5]), (0, [-0.25, 0.25], [-0.5, 0.5])):
        z = torch.zeros(1, 2, requires_grad=True)
        loss(z, torch.tensor([label])).backward()
        assert z.grad[0].tolist() == pytest.approx(expected)
        z = torch.zeros(1, 2, requires_grad=True)
        softmax_cross_entropy(z, torch.tensor([label])).backward()
        assert z.grad[0].tolist() == pytest.approx(plain)
    # a tail sample raises its logit harder (0.75 > 0.5), a head sample lowers the tail's less (0.25 < 0.5)


def test_balanced_softmax_uniform_counts_is_ce():
    logits, labels, _, weights = random_batch(16, 10, 0.2)
    loss = BalancedSoftmax()
    loss.prepare([7] * 10, 70)
    assert torch.allclose(loss(logits, labels), softmax_cross_entropy(logits, labels))
    assert torch.allclose(loss(logits, labels, weights), softmax_cross_entropy(logits, labels, weights))


def test_balanced_softmax_empty_class_stays_finite():
    # n = [3, 0] counts as [3, 1]
    assert log_class_prior([3, 0]).tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    loss = BalancedSoftmax()
    loss.prepare([3, 0], 3)
    z = torch.tensor([[100.0, -100.0]], requires_grad=True)
    value = loss(z, torch.tensor([0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


# ---------------------------------------------------------------- ASL


def test_asl_by_hand():
    # gamma_pos = 1, gamma_neg = 2, clip = 0.05; z = [ln 3, -ln 3, -ln 99] -> p = [0.75, 0.25, 0.01]
    # class 0, positive: (1 - 0.75)^1 * -log 0.75 = 0.25 * 0.2876821
    # class 1, negative: p_m = 0.20, 0.2^2 * -log(1 - 0.2) = 0.04 * 0.2231436
    # class 2, negative: p = 0.01 < clip, p_m = 0: discarded
    z = torch.tensor([[math.log(3), -math.log(3), -math.log(99)]])
    expected = [0.25 * -math.log(0.75), 0.04 * -math.log(0.8), 0.0]
    terms = asymmetric_terms(z, torch.tensor([[1.0, 0.0, 0.0]]), 1.0, 2.0, 0.05)
    assert terms[0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    loss = AsymmetricLoss(gamma_pos=1.0, gamma_neg=2.0, clip=0.05)
    assert loss(z, torch.tensor([0])).item() == pytest.approx(sum(expected), rel=1e-5)  # integer labels too
    # multi-label class weights w_c multiply the terms of class c
    weighted = loss(z, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([2.0, 3.0, 5.0]))
    assert weighted.item() == pytest.approx(2 * expected[0] + 3 * expected[1], rel=1e-5)


def test_asl_clip_alone_shifts_the_negative_probability():
    # gamma = 0, clip = 0.05, z = 0, y = 0: -log(1 - (0.5 - 0.05)) = -log 0.55
    terms = asymmetric_terms(torch.zeros(1, 1), torch.zeros(1, 1), 0.0, 0.0, 0.05)
    assert terms.item() == pytest.approx(-math.log(0.55), rel=1e-6)


def test_asl_without_focusing_or_clip_is_bce():
    logits, labels, multi_hot, weights = random_batch(16, 10, 0.2)
    loss = AsymmetricLoss(gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    assert torch.allclose(loss(logits, multi_hot, weights), sigmoid_cross_entropy(logits, multi_hot, weights))
    assert torch.allclose(loss(logits, labels, weights), sigmoid_cross_entropy(logits, labels, weights))
    assert loss.label_kinds == {"single", "multi"} and loss.sigmoid_head


@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", [(0.0, 4.0, 0.05), (0.0, 0.0, 0.0), (1.0, 4.0, 0.0), (0.5, 0.5, 0.05)])
def test_asl_stable_at_extreme_logits(gamma_pos, gamma_neg, clip):
    z = torch.tensor([[100.0, -100.0, 1e4, -1e4], [100.0, -100.0, 1e4, -1e4]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    loss = AsymmetricLoss(gamma_pos, gamma_neg, clip)
    value = loss(z, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    terms = loss.per_element(z.detach(), y)
    # no probability clamp: a positive at z = -100 costs (1 - p)^gamma_pos * 100 = 100
    assert terms[0, 1].item() == pytest.approx(100.0, rel=1e-5)
    # a confident wrong negative (p = 1, p_m = 1 - clip) costs (1 - clip)^gamma_neg * -log(clip)
    expected = (1 - clip) ** gamma_neg * -math.log(clip) if clip else 100.0
    assert terms[1, 0].item() == pytest.approx(expected, rel=1e-5)


def test_asl_down_weights_easy_negatives():
    z, y = torch.full((1, 1), -1.0), torch.zeros(1, 1)
    bce = asymmetric_terms(z, y, 0.0, 0.0, 0.0).item()
    assert asymmetric_terms(z, y, 0.0, 4.0, 0.05).item() < 0.01 * bce


# ---------------------------------------------------------------- cosine head


def test_normed_linear_outputs_cosines():
    head = NormedLinear(8, 5)
    x = torch.randn(4, 8) * 10
    out = head(x)
    expected = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()
    assert torch.allclose(out, expected) and out.abs().max().item() <= 1.0 + 1e-6
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(5))  # unit-norm rows at start
    assert head.bias is None and torch.allclose(head(head.weight.detach()[:1] * 3)[0, 0], torch.tensor(1.0))


@pytest.mark.parametrize("name", ["resnet32", "resnet18"])
def test_swapped_head_still_runs(name):
    model = create_model(name, num_classes=7, in_chans=3)
    linear = classifier_of(model)
    head = use_normed_classifier(model)
    assert classifier_of(model) is head and isinstance(head, NormedLinear)
    assert (head.in_features, head.out_features) == (linear.in_features, linear.out_features)
    assert not any(module is linear for module in model.modules())
    init_classifier_bias(model, SigmoidFocalLoss(gamma=2.0), 7)  # no bias: skipped
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and out.abs().max().item() <= 1.0 + 1e-6


# ---------------------------------------------------------------- config and end to end


def test_logit_adjusted_loss_by_hand():
    """Two classes with train counts 3 and 1 (pi = 3/4, 1/4), logits (0, 0), label 1, tau = 2:
    z + tau log pi = (2 log 3/4, 2 log 1/4), so L = -log(e^(2 log 1/4) / (e^(2 log 3/4) + e^(2 log 1/4)))
    = -log((1/16) / (9/16 + 1/16)) = log 10."""
    loss = LogitAdjustedLoss(tau=2.0)
    loss.prepare([3, 1], 4)
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(10), rel=1e-6)


def test_logit_adjusted_loss_spans_ce_and_balanced_softmax():
    logits, labels, _, weights = random_batch(16, 10, 0.2)
    balanced = BalancedSoftmax()
    balanced.prepare(COUNTS, sum(COUNTS))
    for tau, reference in ((0.0, lambda w: softmax_cross_entropy(logits, labels, w)),
                           (1.0, lambda w: balanced(logits, labels, w))):
        loss = LogitAdjustedLoss(tau)
        loss.prepare(COUNTS, sum(COUNTS))
        assert torch.allclose(loss(logits, labels), reference(None))
        assert torch.allclose(loss(logits, labels, weights), reference(weights))


def test_yaml_defaults_build_the_losses(compose_cfg):
    ldam = build(compose_cfg(["loss=ldam"]).loss, "loss")
    assert isinstance(ldam, LDAMLoss) and (ldam.max_margin, ldam.scale, ldam.normalized_classifier) == (0.5, 30.0, True)
    assert ldam.form == "ce" and build(compose_cfg(["loss=ldam", "loss.form=hinge"]).loss, "loss").form == "hinge"
    hinge = build(compose_cfg(["loss=hinge"]).loss, "loss")
    assert isinstance(hinge, MultiClassHingeLoss) and hinge.margin == 1.0
    asl = build(compose_cfg(["loss=asl"]).loss, "loss")
    assert isinstance(asl, AsymmetricLoss) and (asl.gamma_pos, asl.gamma_neg, asl.clip) == (0.0, 4.0, 0.05)
    assert isinstance(build(compose_cfg(["loss=balanced_softmax"]).loss, "loss"), BalancedSoftmax)
    adjusted = build(compose_cfg(["loss=logit_adjusted"]).loss, "loss")
    assert isinstance(adjusted, LogitAdjustedLoss) and adjusted.tau == 1.0


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["loss=ldam", "loss.max_margin=0"], "loss.max_margin"),
        (["loss=ldam", "loss.scale=-1"], "loss.scale"),
        (["loss=ldam", "loss.form=squared"], "loss.form"),
        (["loss=hinge", "loss.margin=0"], "loss.margin"),
        (["loss=asl", "loss.gamma_pos=-1"], "loss.gamma_pos"),
        (["loss=asl", "loss.gamma_neg=-0.5"], "loss.gamma_neg"),
        (["loss=asl", "loss.clip=1"], "loss.clip"),
        (["loss=asl", "loss.clip=-0.1"], "loss.clip"),
    ],
)
def test_bad_values_name_the_key(compose_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_cfg(overrides))


@pytest.mark.parametrize("name", ["ldam", "balanced_softmax", "logit_adjusted"])
def test_softmax_losses_refuse_multi_label_data(compose_cfg, name):
    with pytest.raises(ConfigError, match=f"loss={name} is not allowed with dataset=multimnist"):
        check_combinations(compose_cfg(["dataset=multimnist", f"loss={name}"]))
    check_combinations(compose_cfg(["dataset=multimnist", "loss=asl"]))


def test_ldam_drw_runs_with_a_cosine_head(compose_cfg, data_root, tmp_path, monkeypatch):
    import imbalance_bench.loop as loop_module
    import imbalance_bench.train as train_module

    models, weights = [], []
    build_model, train_one_epoch = train_module.build_model, loop_module.train_one_epoch

    def keep_model(*args):
        models.append(build_model(*args))
        return models[-1]

    def keep_weights(run, state, loader, train_step, epoch_weights, *rest):
        weights.append(epoch_weights)
        return train_one_epoch(run, state, loader, train_step, epoch_weights, *rest)

    monkeypatch.setattr(train_module, "build_model", keep_model)
    monkeypatch.setattr(loop_module, "train_one_epoch", keep_weights)
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "loss=ldam", "reweight=cb",
                       "reweight.start_epoch=1", "trainer.epochs=2", "trainer.max_steps=null", "trainer.batch_size=128"])
    metrics = train_module.run(cfg, tmp_path)
    assert metrics["loss"] == "ldam" and metrics["epochs_completed"] == 2
    assert isinstance(models[0].fc, NormedLinear)
    assert weights[0] is None and weights[1] is not None  # DRW: class-balanced weights from epoch 2 on
    rows = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert math.isfinite(rows["train_loss"]) and rows["top1"] is not None


@pytest.mark.parametrize("name", ["balanced_softmax", "asl"])
def test_other_losses_run(compose_cfg, data_root, tmp_path, name):
    from imbalance_bench.train import run

    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, f"loss={name}", "reweight=none"])
    metrics = run(cfg, tmp_path)
    assert metrics["loss"] == name and math.isfinite(metrics["final"]["train_loss"])


def test_post_hoc_logit_adjustment_scores_z_minus_tau_log_prior(compose_cfg, data_root, tmp_path, monkeypatch, caplog):
    """metrics.logit_adjust_tau: evaluation computes every metric twice, on z and on z - tau log pi
    (Menon et al. 2021, post-hoc), pi the train split's prior; metrics.json and the summary show both."""
    import logging

    import imbalance_bench.loop as loop_module
    from imbalance_bench.train import run

    seen = []
    original = loop_module.single_label_metrics

    def spy(labels, scores, counts, **groups):
        seen.append((labels.copy(), scores.copy(), list(counts)))
        return original(labels, scores, counts, **groups)

    monkeypatch.setattr(loop_module, "single_label_metrics", spy)
    cfg = compose_cfg(["dataset=cifar10_lt", f"dataset.root={data_root}", *SMOKE, "metrics.logit_adjust_tau=1.5"])
    with caplog.at_level(logging.INFO, logger="imbench"):
        metrics = run(cfg, tmp_path)
    (labels, raw, counts), (same_labels, adjusted, again) = seen
    seen_once = np.maximum(np.asarray(counts, dtype=np.float64), 1)  # an empty class counts as one image
    prior = seen_once / seen_once.sum()
    assert 0 in counts and again == counts and min(counts) < max(counts) and np.array_equal(labels, same_labels)
    assert np.allclose(adjusted, raw - 1.5 * np.log(prior), atol=1e-5)
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert final["logit_adjusted"]["tau"] == 1.5
    assert final["logit_adjusted"]["top1"] == pytest.approx(float(np.mean(adjusted.argmax(1) == labels)))
    assert final["top1"] == pytest.approx(float(np.mean(raw.argmax(1) == labels)))
    assert metrics["final"]["top1"] == final["top1"]  # the raw scores stay the run's own
    assert "post-hoc logit adjustment, scores z - τ log π with τ = 1.5:" in caplog.text


def test_post_hoc_logit_adjustment_is_single_label_only(compose_cfg):
    with pytest.raises(ConfigError, match=r"^metrics.logit_adjust_tau=1.0 is not allowed with dataset=multimnist"):
        check_combinations(compose_cfg(["dataset=multimnist", "loss=bce", "metrics.logit_adjust_tau=1.0"]))
