"""Losses and class re-weighting: registries and the factories conf/loss and conf/reweight target."""

from __future__ import annotations

from imbalance_bench.errors import ConfigError
from imbalance_bench.losses.asl import AsymmetricLoss, asymmetric_terms
from imbalance_bench.losses.balanced_softmax import BalancedSoftmax, balanced_softmax_loss, log_class_prior
from imbalance_bench.losses.base import ClassificationLoss, SigmoidLoss, reduce_terms
from imbalance_bench.losses.dfl import DualFocalLoss, dual_focal_terms
from imbalance_bench.losses.focal import (
    SigmoidFocalLoss, SoftmaxFocalLoss, create_focal, sigmoid_focal_loss, softmax_focal_loss,
)
from imbalance_bench.losses.ldam import LDAMLoss, ldam_loss, ldam_margins
from imbalance_bench.losses.plm import PartialLabelMasking
from imbalance_bench.losses.reweight import (
    ClassBalanced,
    InverseFrequency,
    Reweighting,
    class_balanced_weights,
    inverse_frequency_weights,
)
from imbalance_bench.losses.sigmoid_bce import SigmoidCrossEntropy, sigmoid_cross_entropy
from imbalance_bench.losses.softmax_ce import SoftmaxCrossEntropy, softmax_cross_entropy



def create_plm(base: str, bins: int, lr: float, **base_configs) -> PartialLabelMasking:
    """PLM around the base loss `base`, built from its own config node (`loss.<base>`)."""
    options = {str(k): v for k, v in base_configs[base].items() if not str(k).startswith("_")}
    base_loss = create_loss(**options)
    if not isinstance(base_loss, SigmoidLoss):
        raise ConfigError(f"loss.base={base} is not allowed: PLM needs a one-vs-all sigmoid loss (bce, focal, dfl)")
    return PartialLabelMasking(base_loss, bins=bins, lr=lr)


create_plm.label_kinds = PartialLabelMasking.label_kinds


LOSSES = {
    "ce": SoftmaxCrossEntropy,
    "bce": SigmoidCrossEntropy,
    "focal": create_focal,
    "dfl": DualFocalLoss,
    "plm": create_plm,
    "ldam": LDAMLoss,
    "balanced_softmax": BalancedSoftmax,
    "asl": AsymmetricLoss,
}
REWEIGHTINGS = {"none": Reweighting, "cb": ClassBalanced, "inverse_freq": InverseFrequency}


def losses_for(label_kind: str) -> list[str]:
    """The loss names whose losses train on `label_kind` ("single" or "multi") data, sorted."""
    return sorted(name for name, factory in LOSSES.items() if label_kind in factory.label_kinds)


def create_loss(name: str, **kwargs) -> ClassificationLoss:
    """The loss `name` (one of LOSSES) built from its config keys."""
    if name not in LOSSES:
        raise ConfigError(f"loss.name={name} is not allowed: must be one of {', '.join(sorted(LOSSES))}")
    return LOSSES[name](**kwargs)


def create_reweighting(name: str, **kwargs) -> Reweighting:
    """The re-weighting scheme `name` (one of REWEIGHTINGS) built from its config keys."""
    if name not in REWEIGHTINGS:
        raise ConfigError(f"reweight.name={name} is not allowed: must be one of {', '.join(sorted(REWEIGHTINGS))}")
    return REWEIGHTINGS[name](**kwargs)


__all__ = [
    "AsymmetricLoss",
    "asymmetric_terms",
    "BalancedSoftmax",
    "balanced_softmax_loss",
    "log_class_prior",
    "LDAMLoss",
    "ldam_loss",
    "ldam_margins",
    "ClassificationLoss",
    "DualFocalLoss",
    "PartialLabelMasking",
    "create_plm",
    "losses_for",
    "dual_focal_terms",
    "SigmoidLoss",
    "reduce_terms",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "create_focal",
    "SigmoidCrossEntropy",
    "SoftmaxCrossEntropy",
    "Reweighting",
    "ClassBalanced",
    "InverseFrequency",
    "class_balanced_weights",
    "inverse_frequency_weights",
    "create_loss",
    "create_reweighting",
    "sigmoid_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
]
