"""Losses and class re-weighting. Each conf/loss and conf/reweight option names its class in `_target_`;
the class declares its name and the label kinds it trains on (see targets.py)."""

from __future__ import annotations

from imbalance_bench.losses.asl import AsymmetricLoss, asymmetric_terms
from imbalance_bench.losses.balanced_softmax import BalancedSoftmax, balanced_softmax_loss, log_class_prior
from imbalance_bench.losses.base import ClassificationLoss, SigmoidLoss, reduce_terms
from imbalance_bench.losses.dfl import DualFocalLoss, dual_focal_terms
from imbalance_bench.losses.focal import (
    SigmoidFocalLoss, SoftmaxFocalLoss, create_focal, sigmoid_focal_loss, softmax_focal_loss,
)
from imbalance_bench.losses.hinge import MultiClassHingeLoss, multiclass_hinge_loss
from imbalance_bench.losses.ldam import LDAMLoss, ldam_loss, ldam_margins
from imbalance_bench.losses.logit_adjusted import LogitAdjustedLoss
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

__all__ = [
    "AsymmetricLoss",
    "asymmetric_terms",
    "BalancedSoftmax",
    "balanced_softmax_loss",
    "log_class_prior",
    "LDAMLoss",
    "MultiClassHingeLoss",
    "multiclass_hinge_loss",
    "LogitAdjustedLoss",
    "ldam_loss",
    "ldam_margins",
    "ClassificationLoss",
    "DualFocalLoss",
    "PartialLabelMasking",
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
    "sigmoid_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
]
