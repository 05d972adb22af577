"""Backbones: `create_model` builds this project's CIFAR ResNets or any timm model by name."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from imbalance_bench.errors import ImbenchError
from imbalance_bench.models.heads import NormedLinear, ScaledClassifier, use_normed_classifier
from imbalance_bench.models.resnet_cifar import resnet32

_MODELS: dict[str, Callable[..., nn.Module]] = {"resnet32": resnet32}


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(
    name: str, num_classes: int, in_chans: int, pretrained: bool = False, max_image_size: int | None = None
) -> nn.Module:
    """A classifier with `num_classes` outputs for `in_chans`-channel images.

    `max_image_size` is the largest input side the network is meant for; it is checked against
    the dataset before any data is read (config.check_model_input), so it is not used here.

    Names in this project's registry (`resnet32`) are built here; any other name goes to
    `timm.create_model` (e.g. resnet50, resnet101, seresnext101_32x4d).
    """
    if name in _MODELS:
        if pretrained:
            raise ImbenchError(f"model.pretrained=true is not allowed for model.name={name}: no pretrained weights exist")
        return _MODELS[name](num_classes=num_classes, in_chans=in_chans)
    import timm

    if not timm.is_model(name):
        raise ImbenchError(f"model.name={name} is not allowed: not a project model ({', '.join(list_models())}) nor a timm model")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except Exception as exc:
        if not pretrained:
            raise
        raise ImbenchError(
            f"model.pretrained=true: no weights for {name} could be loaded (offline and not in the local "
            f"Hugging Face cache: {type(exc).__name__}); set model.pretrained=false or pre-fetch the weights"
        ) from None


def classifier_of(model: nn.Module) -> nn.Linear | NormedLinear:
    """The final linear layer (timm and project models both expose `get_classifier`)."""
    head = model.get_classifier()
    if not isinstance(head, (nn.Linear, NormedLinear, ScaledClassifier)):
        raise TypeError(f"expected a linear classifier, got {type(head).__name__}")
    return head
