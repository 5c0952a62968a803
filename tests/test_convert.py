"""Tests of energynet_tf/convert.py: `from_keras` on keras.applications ResNets and a hand-written one."""

import keras
import numpy as np
import pytest

import energynet_tf
from energynet_tf import convert
from energynet_tf import topology
from energynet_tf.model import EnergyNet


def cifar_resnet(blocks_per_stage=(2, 2), widths=(8, 16), classes=10, softmax=False):
    """A hand-written functional CIFAR ResNet (post-activation basic blocks, projection where the shape changes)."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(x))
    in_width = widths[0]
    for s, (count, width) in enumerate(zip(blocks_per_stage, widths)):
        for b in range(count):
            stride = 2 if s > 0 and b == 0 else 1
            name = f"s{s}b{b}"
            y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=name + "_c1")(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization(name=name + "_bn1")(y))
            y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=name + "_c2")(y)
            y = keras.layers.BatchNormalization(name=name + "_bn2")(y)
            shortcut = x
            if stride != 1 or in_width != width:
                shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=False, name=name + "_proj")(x)
                shortcut = keras.layers.BatchNormalization(name=name + "_proj_bn")(shortcut)
            x = keras.layers.ReLU(name=name + "_out")(keras.layers.Add(name=name + "_add")([y, shortcut]))
            in_width = width
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None, name="classifier")(x)
    return keras.Model(inputs, outputs, name="cifar_resnet")


def _randomise_bn(model, seed=0):
    """Non-trivial BN statistics, so that a wrong wiring shows in the logits."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def _images(shape, n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype("float32")


def _check_equivalent(original, converted, shape, logits_of_original=None):
    x = _images(shape)
    ref = original(x, training=False).numpy() if logits_of_original is None else logits_of_original(x)
    out = converted.forward(x, gate_override=np.ones(converted.num_gates, "float32"))["logits"].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    rows = topology.model_topology(original)
    assert [layer.shape for layer in converted.energy_table.layers[:len(rows)]] == rows


APPLICATIONS = [
    ("ResNet50", 16), ("ResNet50V2", 16),
    pytest.param("ResNet101", 33, marks=pytest.mark.slow), pytest.param("ResNet101V2", 33, marks=pytest.mark.slow),
    pytest.param("ResNet152", 50, marks=pytest.mark.slow), pytest.param("ResNet152V2", 50, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, units", APPLICATIONS)
def test_keras_applications_resnets_convert_with_identical_logits_and_energy_rows(name, units):
    shape = (32, 32, 3) if name.startswith("ResNet50") else (48, 40, 3)  # any input size
    original = getattr(keras.applications, name)(weights=None, input_shape=shape, classes=7,
                                                 classifier_activation=None)
    _randomise_bn(original)
    converted = energynet_tf.from_keras(original, gate_units=6)
    assert converted.num_gates == units - 1 and converted.image_shape == shape and converted.num_classes == 7
    _check_equivalent(original, converted, shape)
    table = converted.energy_table
    assert len(table.block_energy) == units - 1 and all(e > 0 for e in table.block_energy)
    assert 0 < table.gate_energy < 0.01 * table.total_energy


def test_the_original_is_copied_not_changed_and_its_softmax_is_left_out():
    original = cifar_resnet(softmax=True)
    _randomise_bn(original)
    converted = energynet_tf.from_keras(original)
    assert converted.source is not original
    for a, b in zip(original.get_weights(), converted.source.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert converted.graph.drop_softmax
    x = _images((32, 32, 3))
    logits = converted.forward(x, gate_override=np.ones(converted.num_gates, "float32"))["logits"]
    np.testing.assert_allclose(keras.ops.softmax(logits).numpy(), original(x, training=False).numpy(), atol=1e-6)


def test_a_hand_written_resnet_matches_energynet_structure():
    original = cifar_resnet()
    _randomise_bn(original)
    converted = energynet_tf.from_keras(original, alpha=0.3, gate_bias_init=2.0)
    _check_equivalent(original, converted, (32, 32, 3))
    assert [unit.name for unit in converted.res_blocks] == ["s0b0_add", "s0b1_add", "s1b0_add", "s1b1_add"]
    # Unit 0 always runs; the projection shortcut always runs too; branches are what gates remove.
    assert [len(unit.shortcut_steps) for unit in converted.res_blocks] == [0, 0, 2, 0]
    table = converted.energy_table
    groups = {layer.shape.name: (layer.group, layer.block) for layer in table.layers}
    assert groups["s0b0_c1"] == ("fixed", -1) and groups["s1b0_proj"] == ("fixed", -1)
    assert groups["s0b1_c1"] == ("block", 0) and groups["s1b0_c2"] == ("block", 1) and groups["s1b1_c2"] == ("block", 2)
    # The same layers as EnergyNet-14's first two stages would count: 3x3 convs on 32x32 and 16x16.
    assert table.block_macs[0] == 2 * 32 * 32 * 9 * 8 * 8
    assert float(converted.alpha.numpy()) == pytest.approx(0.3)


def test_a_closed_gate_removes_exactly_its_branch():
    original = cifar_resnet()
    _randomise_bn(original)
    converted = energynet_tf.from_keras(original)
    x = _images((32, 32, 3))
    closed = np.array([1, 0, 1], "float32")
    got = converted.forward(x, gate_override=closed)["logits"].numpy()
    # The same network by hand: unit s1b0's Add receives zeros for its branch (output = relu(shortcut)).
    inputs = keras.Input((32, 32, 3))
    zeros = keras.layers.Lambda(lambda t: t * 0.0)
    layers = {layer.name: layer for layer in converted.source.layers}
    y = converted.stem(inputs)
    for k, unit in enumerate(converted.res_blocks):
        if k > 0:
            y = converted.graph.run_segment(k, y, False)
        y = unit.merge(zeros(unit.residual(y)) if k == 2 else unit.residual(y), unit.shortcut(y))
    y = converted.head(y)
    np.testing.assert_allclose(got, keras.Model(inputs, y)(x).numpy(), atol=1e-5)
    assert "s1b0_add" in layers
    energy = converted.inference_energy(closed[None, :]).numpy()[0]
    table = converted.energy_table
    assert energy == pytest.approx((table.total_energy - table.block_energy[1] + table.gate_energy) / table.total_energy)


def test_fit_trains_gates_and_branches_and_save_load_round_trips(tmp_path):
    original = cifar_resnet()
    converted = energynet_tf.from_keras(original, alpha=0.5, gate_bias_init=0.0, energy_term="decisions",
                                        gate_noise=1.0)
    converted.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    gate_before = [w.copy() for w in converted.gate.get_weights()]
    branch_before = converted.source.get_layer("s1b1_c2").get_weights()[0].copy()
    x, y = _images((32, 32, 3), n=16), np.arange(16) % 10
    history = converted.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert {"energy_savings", "skip_01", "skip_03", "cross_entropy"} <= set(history.history)
    assert any(not np.allclose(a, b) for a, b in zip(gate_before, converted.gate.get_weights()))
    assert not np.allclose(branch_before, converted.source.get_layer("s1b1_c2").get_weights()[0])
    path = tmp_path / "converted.keras"
    converted.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is convert.ConvertedEnergyNet and loaded.num_gates == 3
    a, b = converted.forward(x), loaded.forward(x)
    np.testing.assert_array_equal(a["decisions"].numpy(), b["decisions"].numpy())
    np.testing.assert_allclose(a["logits"].numpy(), b["logits"].numpy(), atol=1e-6)
    assert loaded.get_config()["alpha"] == pytest.approx(0.5) and loaded.energy_term == "decisions"
    assert loaded.energy_table == converted.energy_table


def test_a_converted_baseline_with_removed_blocks_runs_their_shortcut():
    original = cifar_resnet()
    _randomise_bn(original)
    plain = energynet_tf.from_keras(original, baseline=True, removed_blocks=[2])
    gated = energynet_tf.from_keras(original)
    x = _images((32, 32, 3))
    np.testing.assert_allclose(plain(x).numpy(), gated.forward(x, gate_override=np.array([1, 0, 1], "float32"))
                               ["logits"].numpy(), atol=1e-5)
    assert plain.gate is None and not plain.source.get_layer("s1b0_c1").trainable


def _functional(build):
    inputs = keras.Input((16, 16, 4))
    return keras.Model(inputs, build(inputs))


def _head(x):
    return keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))


def _conv(x, name, filters=4):
    return keras.layers.Conv2D(filters, 3, padding="same", name=name)(x)


@pytest.mark.parametrize("build, needle", [
    (lambda x: _head(keras.layers.Add(name="two_branches")([_conv(x, "a"), _conv(x, "b")])),
     "Add layer 'two_branches': both operands hold 1 convolutions"),
    (lambda x: _head(keras.layers.Add(name="three")([x, _conv(x, "a"), _conv(_conv(x, "b"), "c")])),
     "Add layer 'three' adds 3 tensors"),
    (lambda x: _head(keras.layers.Add(name="forked")(
        [x, _conv(keras.layers.Concatenate()([_conv(x, "p"), _conv(x, "q")]), "r", 4)])),
     "not part of a chain of single-input layers"),
    (lambda x: _head(keras.layers.Concatenate(name="late")([
        keras.layers.Add(name="unit")([x, _conv(_conv(x, "a"), "b")]), x])),
     "layer 'late' reads the model's input across a residual unit"),
    (lambda x: _head(keras.layers.Add(name="used")([x, keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2,
                                                                            name="dilated")(_conv(x, "a"))])),
     "from_keras: Layer 'dilated': dilated convolutions are not supported"),
    (lambda x: _head(_conv(x, "plain")), "has no residual unit"),
])
def test_a_model_it_cannot_convert_gets_one_line_naming_the_layer(build, needle):
    with pytest.raises(convert.ConversionError) as info:
        energynet_tf.from_keras(_functional(build))
    message = str(info.value)
    assert needle in message and "\n" not in message, message


def test_not_a_functional_model_is_refused():
    with pytest.raises(convert.ConversionError, match="must be a functional keras.Model"):
        energynet_tf.from_keras(EnergyNet(depth=8))
    with pytest.raises(convert.ConversionError, match="must be a functional keras.Model"):
        energynet_tf.from_keras("resnet")
    with pytest.raises(convert.ConversionError, match="must end in class scores"):
        energynet_tf.from_keras(_functional(lambda x: keras.layers.Add()([x, _conv(_conv(x, "a"), "b")])))
