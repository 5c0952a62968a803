"""Tests of energynet_tf.topology: Keras layers and models as SCALE-Sim topology rows."""

import math

import keras
import pytest
import tensorflow as tf

from energynet_tf import systolic
from energynet_tf import topology


def scalesim_output(size, kernel, stride):
    """SCALE-Sim's output size (topology_utils.py), float ceil as it computes it."""
    return int(math.ceil((size - kernel + stride) / stride))


@pytest.mark.parametrize("hw, kernel, stride, expected", [
    (32, 3, 2, 33),   # docs/design.md §1.3's three examples.
    (32, 1, 2, 31),
    (32, 3, 1, 34),
    (7, 7, 2, 13),
    (1, 3, 1, 3),
])
def test_conv_layer_shape_same_matches_design(hw, kernel, stride, expected):
    shape = topology.conv_layer_shape("c", hw, kernel, stride, "same", 16, 32)
    assert (shape.ifmap_h, shape.ifmap_w) == (expected, expected)
    assert (shape.filter_h, shape.filter_w, shape.channels, shape.num_filters, shape.stride) == (
        kernel, kernel, 16, 32, stride)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("h, w, kh, kw, s", [
    (32, 32, 3, 3, 1), (32, 32, 3, 3, 2), (17, 11, 5, 3, 3), (9, 14, 1, 1, 2),
    (224, 224, 7, 7, 2), (8, 8, 8, 8, 1), (10, 7, 2, 2, 3),
])
def test_scalesim_output_size_equals_keras(padding, h, w, kh, kw, s):
    conv = keras.layers.Conv2D(4, (kh, kw), strides=s, padding=padding)
    out = conv.compute_output_shape((1, h, w, 3))
    shape = topology.conv_layer_shape("c", (h, w), (kh, kw), s, padding, 3, 4)
    assert scalesim_output(shape.ifmap_h, kh, s) == out[1]
    assert scalesim_output(shape.ifmap_w, kw, s) == out[2]
    # H_eff never exceeds the padded input, so SCALE-Sim reads no extra rows.
    assert shape.ifmap_h <= h + kh and shape.ifmap_w <= w + kw


def test_dense_layer_shape_is_1x1_conv_on_1x1_input():
    assert topology.dense_layer_shape("fc", 64, 10) == systolic.LayerShape(
        "fc", 1, 1, 1, 1, 64, 10, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(strides=(1, 2)), "strides"),
    (dict(padding="full"), "padding"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(input_hw=(3, 3, 3)), "input_hw"),
    (dict(channels=0), "channels"),
    (dict(filters=2.5), "filters"),
    (dict(kernel_size=5, padding="valid", input_hw=4), "larger than the input"),
])
def test_conv_layer_shape_rejects_bad_arguments(kwargs, match):
    args = dict(name="c", input_hw=8, kernel_size=3, strides=1, padding="same", channels=3,
                filters=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        topology.conv_layer_shape(**args)


def test_layer_shape_conv_dense_and_channels_first():
    conv = keras.layers.Conv2D(8, (5, 3), strides=2, padding="valid", name="conv")
    assert topology.layer_shape(conv, (None, 17, 12, 3)) == systolic.LayerShape(
        "conv", 17, 11, 5, 3, 3, 8, 2)
    first = keras.layers.Conv2D(8, 3, padding="same", data_format="channels_first")
    assert topology.layer_shape(first, (None, 3, 10, 12), name="x") == (
        topology.conv_layer_shape("x", (10, 12), 3, 1, "same", 3, 8))
    dense = keras.layers.Dense(7, name="fc")
    assert topology.layer_shape(dense, (None, 20)) == topology.dense_layer_shape("fc", 20, 7)
    # A dense layer over positions is a 1x1 convolution over them.
    assert topology.layer_shape(dense, (None, 4, 5, 20)) == systolic.LayerShape(
        "fc", 4, 5, 1, 1, 20, 7, 1)


def test_layer_shape_rejects_unsupported_layers():
    with pytest.raises(ValueError, match="dilated"):
        topology.layer_shape(keras.layers.Conv2D(4, 3, dilation_rate=2), (None, 9, 9, 3))
    with pytest.raises(ValueError, match="Conv2D or Dense"):
        topology.layer_shape(keras.layers.MaxPooling2D(), (None, 9, 9, 3))
    with pytest.raises(ValueError, match="input_shape"):
        topology.layer_shape(keras.layers.Conv2D(4, 3), (None, None, 9, 3))


def test_model_topology_functional_nested_and_shared_layers():
    inner_in = keras.Input((16, 16, 8))
    inner = keras.Model(inner_in, keras.layers.Conv2D(8, 3, padding="same", name="inner")(
        inner_in), name="sub")
    shared = keras.layers.Conv2D(8, 1, name="shared")
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inp)
    x = inner(x)
    x = shared(shared(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, name="head")(x)
    rows = topology.model_topology(keras.Model(inp, out))
    assert [r.name for r in rows] == ["stem", "inner", "shared", "shared_1", "head"]
    assert rows[0] == topology.conv_layer_shape("stem", 32, 3, 2, "same", 3, 8)
    assert rows[1] == topology.conv_layer_shape("inner", 16, 3, 1, "same", 8, 8)
    assert rows[4] == topology.dense_layer_shape("head", 8, 10)


class _GatedBlock(keras.layers.Layer):
    """Two convolutions that a tf.cond may skip (like an EnergyNet gated block)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Conv2D(4, 3, padding="same", name="a")
        self.b = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="b")

    def call(self, x):
        return tf.cond(tf.reduce_mean(x) > 1e9, lambda: self.b(self.a(x)),
                       lambda: x[:, ::2, ::2, :4])


class _Subclassed(keras.Model):

    def __init__(self):
        super().__init__(name="subclassed")
        self.block = _GatedBlock(name="gated")
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x, training=False):
        return self.head(tf.reduce_mean(self.block(x), axis=[1, 2]))


def test_model_topology_traces_both_branches_of_a_gate():
    model = _Subclassed()
    model(tf.zeros([1, 8, 8, 4]))  # The gate is closed for this input.
    rows = topology.model_topology(model, input_shape=(8, 8, 4))
    assert rows == [topology.conv_layer_shape("a", 8, 3, 1, "same", 4, 4),
                    topology.conv_layer_shape("b", 8, 3, 2, "same", 4, 4),
                    topology.dense_layer_shape("head", 4, 3)]
    # The recording hooks are gone afterwards.
    assert "call" not in vars(model.block.a)
    with pytest.raises(ValueError, match="input_shape"):
        topology.model_topology(_Subclassed())
