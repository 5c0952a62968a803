"""Tests of energynet_tf/blocks.py: conditional basic and bottleneck blocks."""

import keras
import numpy as np
import pytest

from energynet_tf import blocks


def _run(block, x, **kwargs):
    return block(x, **kwargs).numpy()


@pytest.mark.parametrize("cls, filters, strides, projection, channels", [
    (blocks.BasicBlock, 8, 1, False, 8),
    (blocks.BasicBlock, 16, 2, True, 8),
    (blocks.BottleneckBlock, 4, 1, True, 8),
    (blocks.BottleneckBlock, 2, 1, False, 8),
    (blocks.BottleneckBlock, 8, 2, True, 16),
])
def test_closed_block_outputs_exactly_its_shortcut(cls, filters, strides, projection, channels):
    keras.utils.set_random_seed(0)
    block = cls(filters, strides, projection)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, channels)).astype("float32")
    closed = _run(block, x, decision=np.zeros(3, "float32"))
    np.testing.assert_array_equal(closed, np.asarray(block.shortcut(x)))
    if not projection:
        np.testing.assert_array_equal(closed, x)
    opened = _run(block, x, decision=np.ones(3, "float32"))
    np.testing.assert_allclose(opened, block(x).numpy(), rtol=1e-6, atol=1e-6)
    mixed = _run(block, x, decision=np.array([1, 0, 1], "float32"))
    np.testing.assert_allclose(mixed[0], opened[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mixed[1], closed[1])
    assert opened.shape == block.compute_output_shape(x.shape)


def test_bottleneck_output_channels_and_stride():
    block = blocks.BottleneckBlock(4, 2, True)
    out = _run(block, np.ones((1, 7, 7, 8), "float32"))
    assert out.shape == (1, 4, 4, 16)
    assert [c.kernel_size for c in block.convs] == [(1, 1), (3, 3), (1, 1)]
    assert block.convs[1].strides == (2, 2)


def test_identity_shortcut_with_shape_change_is_rejected():
    block = blocks.BasicBlock(16, 2, projection=False)
    with pytest.raises(ValueError, match="projection=True"):
        block.build((None, 8, 8, 8))


@pytest.mark.parametrize("kwargs, needle", [
    ({"filters": 0}, "filters"),
    ({"filters": 4, "strides": 3}, "strides"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        blocks.BasicBlock(**kwargs)


def test_config_round_trip_non_default():
    block = blocks.BottleneckBlock(12, strides=2, projection=True, zero_init_residual=True, name="b")
    clone = blocks.BottleneckBlock.from_config(block.get_config())
    assert (clone.filters, clone.strides, clone.projection, clone.name) == (12, 2, True, "b")
    assert clone.zero_init_residual


@pytest.mark.parametrize("cls, filters, strides, projection, channels", [
    (blocks.BasicBlock, 8, 1, False, 8),
    (blocks.BasicBlock, 16, 2, True, 8),
    (blocks.BottleneckBlock, 2, 1, False, 8),
    (blocks.BottleneckBlock, 8, 2, True, 16),
])
def test_zero_init_residual_blocks_are_their_shortcut_at_initialisation(cls, filters, strides, projection, channels):
    keras.utils.set_random_seed(1)
    # Block inputs follow a ReLU: non-negative, so relu(shortcut) is the shortcut for identities.
    x = np.abs(np.random.default_rng(0).normal(size=(3, 8, 8, channels))).astype("float32")
    block = cls(filters, strides, projection, zero_init_residual=True)
    out = _run(block, x, training=False)
    shortcut = np.asarray(block.shortcut(x))
    np.testing.assert_allclose(out, np.maximum(shortcut, 0.0), atol=1e-6)
    # Only the last BN's scale starts at zero: the convolutions still get gradients.
    assert not np.any(block.residual_bns[-1].gamma.numpy())
    assert all(np.all(bn.gamma.numpy() == 1.0) for bn in block.residual_bns[:-1])
    # Without the option the block does not start as its shortcut.
    plain = _run(cls(filters, strides, projection), x, training=False)
    assert np.abs(plain - np.maximum(shortcut, 0.0)).max() > 1e-3


class _KerasLayerTest:
    """Keras's own layer-test harness (`keras.src.testing.TestCase.run_layer_test`), as every Keras layer passes it."""

    @staticmethod
    def run(*args, **kwargs):
        from keras.src import testing

        class Case(testing.TestCase):
            def runTest(self):
                pass

        Case().run_layer_test(*args, **kwargs)


@pytest.mark.parametrize("cls, kwargs, shape, out_channels, train", [
    (blocks.BasicBlock, dict(filters=4), (2, 8, 8, 4), 4, True),
    (blocks.BasicBlock, dict(filters=8, strides=2, projection=True), (2, 8, 8, 4), 8, False),
    (blocks.BasicBlock, dict(filters=4, zero_init_residual=True), (2, 8, 8, 4), 4, False),
    (blocks.BottleneckBlock, dict(filters=4), (2, 8, 8, 16), 16, False),
    (blocks.BottleneckBlock, dict(filters=8, strides=2, projection=True), (2, 8, 8, 16), 32, True),
    (blocks.BottleneckBlock, dict(filters=4, zero_init_residual=True), (2, 8, 8, 16), 16, False),
])
def test_blocks_pass_keras_layer_test_with_its_mixed_precision_check(cls, kwargs, shape, out_channels, train):
    height = shape[1] // kwargs.get("strides", 1)
    # (Keras's training check fits a model around the layer: two configurations are enough for it.)
    _KerasLayerTest.run(cls, init_kwargs=kwargs, input_shape=shape,
                        expected_output_shape=(shape[0], height, height, out_channels),
                        run_mixed_precision_check=True, run_training_check=train)
