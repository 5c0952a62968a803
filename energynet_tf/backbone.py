"""Backbone tables: one stage table per depth drives one builder (see model.py)."""

import dataclasses

# CIFAR ResNets are 6n + 2 deep (He et al., 2016); these are the depths the
# EnergyNet paper and its baselines use, plus 8 and 14 for quick experiments.
CIFAR_DEPTHS = (8, 14, 20, 26, 32, 38, 44, 56, 74, 110)
IMAGENET_DEPTHS = (50,)
SUPPORTED_DEPTHS = tuple(sorted(CIFAR_DEPTHS + IMAGENET_DEPTHS))


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: `blocks` residual blocks of width `filters`; the first has `strides`."""

    filters: int
    blocks: int
    strides: int


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A residual backbone.

    Attributes:
        block: "basic" (two 3x3 convolutions) or "bottleneck" (1x1, 3x3, 1x1).
        stem: "cifar" (3x3 conv, 16 filters) or "imagenet" (7x7/2 conv, 64
            filters, 3x3/2 max pool).
        stem_filters: output channels of the stem convolution.
        stages: the stages, in order.
    """

    block: str
    stem: str
    stem_filters: int
    stages: tuple

    @property
    def num_blocks(self):
        return sum(stage.blocks for stage in self.stages)


def backbone_spec(depth):
    """Returns the stage table of a supported depth.

    Args:
        depth: 8, 14, 20, 26, 32, 38, 44, 56, 74 or 110 for the CIFAR ResNets
            (three stages of (depth - 2) / 6 basic blocks at widths 16/32/64),
            or 50 for ResNet-50 (bottleneck stages [3, 4, 6, 3]).

    Returns:
        A `BackboneSpec`.

    Raises:
        ValueError: if `depth` is not supported.
    """
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ValueError(f"Argument `depth` must be an int from {SUPPORTED_DEPTHS}; received: {depth!r}")
    if depth in IMAGENET_DEPTHS:
        return BackboneSpec(
            block="bottleneck",
            stem="imagenet",
            stem_filters=64,
            stages=(
                StageSpec(64, 3, 1),
                StageSpec(128, 4, 2),
                StageSpec(256, 6, 2),
                StageSpec(512, 3, 2),
            ),
        )
    if depth in CIFAR_DEPTHS:
        n = (depth - 2) // 6
        return BackboneSpec(
            block="basic",
            stem="cifar",
            stem_filters=16,
            stages=(StageSpec(16, n, 1), StageSpec(32, n, 2), StageSpec(64, n, 2)),
        )
    raise ValueError(
        f"Argument `depth` must be one of {SUPPORTED_DEPTHS} (CIFAR ResNets 6n+2, "
        f"or 50 for ResNet-50); received: {depth!r}"
    )


# -- the network's layout -------------------------------------------------------
# One walk over the stage table gives every layer's place and shape. The model
# builds its layers from it (`model.EnergyNet`), the blocks take their
# convolutions from `branch_convs`, and the energy table counts the same rows
# (`energy.network_layers`), so a change of the network is made here once.

EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """One convolution: `kernel` x `kernel`, `strides`, `filters` outputs, 'same' padding."""

    kernel: int
    strides: int
    filters: int


def branch_convs(block, filters, strides):
    """The residual branch's convolutions of one block, in order.

    Args:
        block: "basic" (3x3, 3x3) or "bottleneck" (1x1, 3x3 with the stride as
            ResNet v1.5, 1x1 to `4 * filters`).
        filters: the block's width.
        strides: 1 or 2.

    Returns:
        A tuple of `ConvPlan`.

    Raises:
        ValueError: for an unknown block type.
    """
    if block == "basic":
        return (ConvPlan(3, strides, filters), ConvPlan(3, 1, filters))
    if block == "bottleneck":
        return (ConvPlan(1, 1, filters), ConvPlan(3, strides, filters),
                ConvPlan(1, 1, filters * EXPANSION["bottleneck"]))
    raise ValueError(f"Argument `block` must be one of {sorted(EXPANSION)}; received: {block!r}")


def same_size(size, strides):
    """Output size of a 'same'-padded convolution or pooling with `strides`: ceil(size / strides)."""
    return -(-size // strides)


@dataclasses.dataclass(frozen=True)
class StemPlan:
    """The stem: a `kernel` x `kernel` convolution with `strides`, BN, ReLU, then an optional 3x3/2 max pool."""

    kernel: int
    strides: int
    filters: int
    pool: bool
    input_hw: tuple
    in_channels: int
    conv_hw: tuple
    output_hw: tuple


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One residual block of the walk.

    Attributes:
        index: position among the blocks (block 0 comes first).
        gate: index of the gate that decides the block, or None for block 0,
            which always runs (the gate fed by block i's output decides
            block i + 1).
        block: "basic" or "bottleneck".
        filters: the block's width.
        strides: stride of the block (on its strided convolution and shortcut).
        in_channels, out_channels: channels in and out.
        projection: whether the shortcut is a 1x1 convolution + BN (where the
            shape changes); it runs even when the block is skipped.
        input_hw, output_hw: spatial size in and out.
        convs: the residual branch's `ConvPlan`s: the work a closed gate removes.
    """

    index: int
    gate: object
    block: str
    filters: int
    strides: int
    in_channels: int
    out_channels: int
    projection: bool
    input_hw: tuple
    output_hw: tuple
    convs: tuple

    @property
    def name(self):
        return f"block{self.index:02d}"


@dataclasses.dataclass(frozen=True)
class NetworkPlan:
    """The whole walk: the stem, every block in order, and the head's input width."""

    stem: StemPlan
    blocks: tuple
    head_features: int

    @property
    def gated_blocks(self):
        return tuple(b for b in self.blocks if b.gate is not None)


def network_plan(spec, image_shape):
    """Walks the stage table of `spec` on images of `image_shape`.

    Args:
        spec: a `BackboneSpec`.
        image_shape: `(height, width, channels)`.

    Returns:
        A `NetworkPlan`.
    """
    h, w, channels = image_shape
    if spec.stem == "imagenet":
        kernel, strides, pool = 7, 2, True
    else:
        kernel, strides, pool = 3, 1, False
    conv_hw = (same_size(h, strides), same_size(w, strides))
    # The 3x3/2 'same' max pool halves the maps.
    out_hw = (same_size(conv_hw[0], 2), same_size(conv_hw[1], 2)) if pool else conv_hw
    stem = StemPlan(kernel, strides, spec.stem_filters, pool, (h, w), channels, conv_hw, out_hw)
    blocks = []
    hw, channels = out_hw, spec.stem_filters
    for stage in spec.stages:
        for i in range(stage.blocks):
            strides = stage.strides if i == 0 else 1
            out_channels = stage.filters * EXPANSION[spec.block]
            out_hw = (same_size(hw[0], strides), same_size(hw[1], strides))
            index = len(blocks)
            blocks.append(BlockPlan(
                index=index, gate=index - 1 if index > 0 else None, block=spec.block, filters=stage.filters,
                strides=strides, in_channels=channels, out_channels=out_channels,
                projection=strides != 1 or channels != out_channels, input_hw=hw, output_hw=out_hw,
                convs=branch_convs(spec.block, stage.filters, strides)))
            hw, channels = out_hw, out_channels
    return NetworkPlan(stem=stem, blocks=tuple(blocks), head_features=channels)
