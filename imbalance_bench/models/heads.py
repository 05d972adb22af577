"""Classifier heads that replace a backbone's final linear layer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NormedLinear(nn.Module):
    """Cosine classifier: z_j = <x / |x|, w_j / |w_j|>, in [-1, 1], no bias.

    The last layer of the CIFAR models of Cao et al. 2019 (LDAM), where the loss multiplies
    these cosines by a scale s. Rows start at unit norm, as in their `NormedLinear`. The
    weight is (out_features, in_features), laid out like `nn.Linear`'s.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1.0, 1.0))
        with torch.no_grad():
            self.weight.copy_(F.normalize(self.weight, dim=1))
        self.bias = None  # read by `train.init_classifier_bias`, which skips a head without one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def replace_classifier(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put `head` where the model's final layer is (found through `get_classifier`, which timm and
    project models both expose), in place; returns `head`."""
    old = model.get_classifier()
    name = next(name for name, module in model.named_modules() if module is old)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, head)
    return head


def use_normed_classifier(model: nn.Module) -> NormedLinear:
    """Swap the model's final linear layer for a `NormedLinear` of the same shape, in place;
    returns the new head."""
    head = model.get_classifier()
    if isinstance(head, NormedLinear):
        return head
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a linear classifier to replace, got {type(head).__name__}")
    normed = NormedLinear(head.in_features, head.out_features).to(head.weight.device, head.weight.dtype)
    return replace_classifier(model, normed)


class ScaledClassifier(nn.Module):
    """z_j = f_j * (w_j . x + b_j): a trained classifier with a learnable scale per class (LWS,
    Kang et al., ICLR 2020). The scales start at 1; the classifier inside is frozen by its user."""

    def __init__(self, classifier: nn.Module, num_classes: int):
        super().__init__()
        self.classifier = classifier
        weight = classifier.weight
        self.scales = nn.Parameter(torch.ones(num_classes, device=weight.device, dtype=weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        return self.classifier.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.classifier.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x) * self.scales
