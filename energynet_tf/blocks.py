"""Conditional residual blocks: run the block or output its shortcut, per example."""

import keras
from keras import ops

from energynet_tf import backbone

PACKAGE = "energynet_tf"

_KERNEL_INIT = "he_normal"


def _conv(filters, kernel_size, strides, name, dtype=None):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=_KERNEL_INIT,
        name=name,
        dtype=dtype,
    )


def _bn(name, zero_gamma=False, dtype=None):
    return keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, gamma_initializer="zeros" if zero_gamma else "ones", name=name, dtype=dtype)


class _ConditionalBlock(keras.layers.Layer):
    """Shared logic of the basic and bottleneck blocks.

    Subclasses name their `kind` in `backbone.EXPANSION`; the residual
    branch's convolutions come from `backbone.branch_convs` (the table the
    energy model counts), each followed by BN, with ReLU between them.
    """

    kind = None

    def __init__(self, filters, strides=1, projection=False, zero_init_residual=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(
                f"Argument `filters` must be a positive int; received: {filters!r}"
            )
        if strides not in (1, 2):
            raise ValueError(f"Argument `strides` must be 1 or 2; received: {strides!r}")
        self.filters = filters
        self.strides = strides
        self.projection = bool(projection)
        # Goyal et al. 2017: with the last BN's gamma at zero the branch adds
        # nothing at initialisation, so the block starts as its shortcut and
        # the cross-entropy has no reason to close its gate.
        self.zero_init_residual = bool(zero_init_residual)
        self.out_channels = filters * self.expansion
        plans = backbone.branch_convs(self.kind, filters, strides)
        # The sublayers take the block's dtype policy (Keras' convention): under a
        # mixed policy they compute in float16/bfloat16 and keep float32 variables.
        policy = self.dtype_policy
        self.residual_convs = [_conv(c.filters, c.kernel, c.strides, f"conv{k + 1}", dtype=policy)
                               for k, c in enumerate(plans)]
        last = len(plans) - 1
        self.residual_bns = [_bn(f"bn{k + 1}", zero_gamma=self.zero_init_residual and k == last, dtype=policy)
                             for k in range(len(plans))]
        self._make_shortcut(self.out_channels)

    def _make_shortcut(self, out_channels):
        if self.projection:
            self.shortcut_conv = _conv(out_channels, 1, self.strides, "shortcut_conv", dtype=self.dtype_policy)
            self.shortcut_bn = _bn("shortcut_bn", dtype=self.dtype_policy)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    @property
    def convs(self):
        """The residual branch's convolutions: the work a closed gate removes."""
        return list(self.residual_convs)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if not self.projection and (self.strides != 1 or in_channels != self.out_channels):
            raise ValueError(
                f"Block {self.name!r}: an identity shortcut needs strides 1 and "
                f"{self.out_channels} input channels; received strides {self.strides} "
                f"and {in_channels} channels. Use `projection=True`."
            )
        shape = tuple(input_shape)
        for conv, bn in zip(self.residual_convs, self.residual_bns):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
        if self.projection:
            self.shortcut_conv.build(tuple(input_shape))
            self.shortcut_bn.build(self.shortcut_conv.compute_output_shape(tuple(input_shape)))
        self.built = True

    def shortcut(self, inputs, training=False):
        """What the block outputs when skipped: identity or the projection."""
        if self.projection:
            return self.shortcut_bn(self.shortcut_conv(inputs), training=training)
        return inputs

    def residual(self, inputs, training=False):
        """The residual branch F(x), without the final addition."""
        x = inputs
        last = len(self.residual_convs) - 1
        for i, (conv, bn) in enumerate(zip(self.residual_convs, self.residual_bns)):
            x = bn(conv(x), training=training)
            if i != last:
                x = ops.relu(x)
        return x

    def merge(self, residual, shortcut):
        """The block's output from its branch's and shortcut's: `relu(F(x) + shortcut(x))`."""
        return ops.relu(residual + shortcut)

    def call(self, inputs, decision=None, training=False):
        """Runs the block; with `decision` (shape `(batch,)`) blends run and skip.

        `decision` 1 gives `relu(F(x) + shortcut(x))`, 0 gives `shortcut(x)`. The
        blend keeps the straight-through gradient of a soft decision; the exported
        serving graph replaces it by real control flow (`export/serving.py`).
        """
        shortcut = self.shortcut(inputs, training=training)
        out = self.merge(self.residual(inputs, training=training), shortcut)
        if decision is None:
            return out
        decision = ops.reshape(ops.cast(decision, out.dtype), (-1, 1, 1, 1))
        return shortcut + decision * (out - shortcut)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if self.strides == 2:
            h = None if h is None else (h + 1) // 2
            w = None if w is None else (w + 1) // 2
        return (input_shape[0], h, w, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "projection": self.projection,
                "zero_init_residual": self.zero_init_residual,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class BasicBlock(_ConditionalBlock):
    """ResNet basic block (two 3x3 convolutions) that can be skipped per example.

    Args:
        filters: output channels of both convolutions.
        strides: 1 or 2, applied by the first convolution and the projection.
        projection: use a 1x1 conv + BN shortcut (needed where the shape changes).
        zero_init_residual: start the last BN's gamma at zero, so the block
            is its shortcut at initialisation.
        **kwargs: base layer arguments.
    """

    kind = "basic"
    expansion = backbone.EXPANSION[kind]


@keras.saving.register_keras_serializable(package=PACKAGE)
class BottleneckBlock(_ConditionalBlock):
    """ResNet-50 bottleneck block (1x1, 3x3, 1x1) that can be skipped per example.

    The stride sits on the 3x3 convolution (ResNet v1.5, as torchvision).

    Args:
        filters: channels of the 1x1 and 3x3 convolutions; the block outputs
            `4 * filters` channels.
        strides: 1 or 2.
        projection: use a 1x1 conv + BN shortcut (needed where the shape changes).
        zero_init_residual: start the last BN's gamma at zero, so the block
            is its shortcut at initialisation.
        **kwargs: base layer arguments.
    """

    kind = "bottleneck"
    expansion = backbone.EXPANSION[kind]


# The block class of each `backbone.BackboneSpec.block`.
BLOCK_CLASSES = {cls.kind: cls for cls in (BasicBlock, BottleneckBlock)}
