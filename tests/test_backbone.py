"""Tests of energynet_tf/backbone.py: the stage tables."""

import pytest

from energynet_tf import backbone


@pytest.mark.parametrize("depth, n", [(20, 3), (38, 6), (56, 9), (74, 12), (110, 18)])
def test_cifar_depths(depth, n):
    spec = backbone.backbone_spec(depth)
    assert spec.block == "basic" and spec.stem == "cifar"
    assert [(s.filters, s.blocks, s.strides) for s in spec.stages] == [(16, n, 1), (32, n, 2), (64, n, 2)]
    # Two convolutions per block plus stem and head make the depth.
    assert 2 * spec.num_blocks + 2 == depth


def test_resnet50():
    spec = backbone.backbone_spec(50)
    assert spec.block == "bottleneck" and spec.stem == "imagenet"
    assert [s.blocks for s in spec.stages] == [3, 4, 6, 3]
    assert 3 * spec.num_blocks + 2 == 50


@pytest.mark.parametrize("depth", [0, 21, 50.0, "38", 152])
def test_unsupported_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        backbone.backbone_spec(depth)
