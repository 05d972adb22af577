"""Backbones (imbalance_bench/models/)."""

import pytest
import torch

from imbalance_bench.errors import ImbenchError
from imbalance_bench.models import classifier_of, create_model


def test_resnet32_size_and_shapes():
    model = create_model("resnet32", num_classes=10, in_chans=3)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.45e6 < n_params < 0.47e6  # He et al. 2016: 0.46 M
    assert len(model.stages) == 3 and all(len(stage) == 5 for stage in model.stages)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    gray = create_model("resnet32", num_classes=100, in_chans=1)
    assert gray(torch.zeros(2, 1, 28, 28)).shape == (2, 100)
    assert classifier_of(gray).out_features == 100


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "seresnext101_32x4d"])
def test_timm_backbones_take_classes_and_channels(name):
    model = create_model(name, num_classes=7, in_chans=1)
    assert classifier_of(model).out_features == 7
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 7)


def test_pretrained_resnet32_is_a_clear_error():
    with pytest.raises(ImbenchError, match="model.pretrained=true"):
        create_model("resnet32", num_classes=10, in_chans=3, pretrained=True)


def test_unknown_model_name():
    with pytest.raises(ImbenchError, match="model.name=resnet33"):
        create_model("resnet33", num_classes=10, in_chans=3)
