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
