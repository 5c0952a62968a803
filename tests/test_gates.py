"""Tests of energynet_tf/gates.py: the shared-LSTM RNN gate."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import gates


def _gate(num_gates=3, units=4, channels=(8, 8, 16)):
    keras.utils.set_random_seed(1)
    gate = gates.RNNGate(num_gates, units=units, bias_initializer=0.5)
    for i, c in enumerate(channels):
        gate.build_projection(i, c)
    gate.build(None)
    return gate


def test_one_lstm_weight_set_for_all_gates():
    gate = _gate()
    lstm_vars = [v for v in gate.weights if "lstm_cell" in v.path]
    # kernel, recurrent kernel, bias: ONE set however many gates there are.
    assert len(lstm_vars) == 3
    assert len([v for v in gate.weights if "output" in v.path]) == 2
    projections = [v for v in gate.weights if "projection" in v.path]
    assert len(projections) == 2 * 3
    assert [tuple(gate.projections[i].kernel.shape) for i in range(3)] == [(8, 4), (8, 4), (16, 4)]


def test_state_is_carried_from_gate_to_gate():
    gate = _gate()
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(2, 5, 5, c)).astype("float32") for c in (8, 8, 16)]
    states = None
    probabilities = []
    for i, x in enumerate(inputs):
        p, states = gate(x, gate_index=i, states=states)
        probabilities.append(p.numpy())

    # Manual replay of the LSTM cell with numpy, state carried by hand.
    kernel, recurrent, bias = (v.numpy() for v in gate.cell.weights)
    w_out, b_out = (v.numpy() for v in gate.output_dense.weights)
    h = np.zeros((2, 4), "float32")
    c = np.zeros((2, 4), "float32")
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    for i, x in enumerate(inputs):
        w, b = (v.numpy() for v in gate.projections[i].weights)
        z = x.mean(axis=(1, 2)) @ w + b
        zz = z @ kernel + h @ recurrent + bias
        zi, zf, zc, zo = np.split(zz, 4, axis=1)
        c = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zc)
        h = sigmoid(zo) * np.tanh(c)
        expected = sigmoid(h @ w_out + b_out)[:, 0]
        np.testing.assert_allclose(probabilities[i], expected, rtol=1e-5, atol=1e-6)


def test_state_matters():
    gate = _gate()
    x = np.random.default_rng(1).normal(size=(2, 5, 5, 8)).astype("float32")
    p0, states = gate(x, gate_index=0)
    p_carried, _ = gate(x, gate_index=1, states=states)
    p_fresh, _ = gate(x, gate_index=1)
    assert not np.allclose(p_carried.numpy(), p_fresh.numpy())


def test_bias_initializer_opens_gates():
    gate = gates.RNNGate(2, bias_initializer=8.0)
    gate.build_projection(0, 3)
    gate.build(None)
    p, _ = gate(np.ones((4, 2, 2, 3), "float32"), gate_index=0)
    assert np.all(p.numpy() > 0.99)


def test_straight_through_value_and_gradient():
    p = tf.Variable([0.2, 0.7, 0.5])
    with tf.GradientTape() as tape:
        m = gates.straight_through(p, training=True)
        loss = tf.reduce_sum(m * tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(m.numpy(), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(tape.gradient(loss, p).numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(gates.straight_through(p, training=False).numpy(), [0.0, 1.0, 0.0])


@pytest.mark.parametrize("kwargs, needle", [
    ({"num_gates": 0}, "num_gates"),
    ({"num_gates": 2, "units": 0}, "units"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        gates.RNNGate(**kwargs)


def test_bad_gate_index():
    gate = _gate()
    with pytest.raises(ValueError, match="gate_index"):
        gate(np.ones((1, 2, 2, 8), "float32"), gate_index=3)


def test_config_round_trip():
    gate = gates.RNNGate(4, units=6, bias_initializer=2.5, name="g")
    clone = gates.RNNGate.from_config(gate.get_config())
    assert (clone.num_gates, clone.units, clone.bias_initializer, clone.name) == (4, 6, 2.5, "g")


def test_straight_through_floor_opens_every_gate_but_keeps_the_gradient():
    p = tf.Variable([0.2, 0.7])
    with tf.GradientTape() as tape:
        m = gates.straight_through(p, training=True, floor=tf.constant(1.0))
        loss = tf.reduce_sum(m * tf.constant([1.0, 2.0]))
    np.testing.assert_array_equal(m.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(tape.gradient(loss, p).numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(gates.straight_through(p, True, floor=tf.constant(0.0)).numpy(), [0.0, 1.0])


def test_noisy_straight_through_samples_bernoulli_p_in_training_only():
    seed = keras.random.SeedGenerator(0)
    p = tf.constant(np.tile([0.1, 0.5, 0.8, 0.97], (20000, 1)).astype("float32"))
    m = gates.straight_through(p, training=True, noise=tf.constant(1.0), seed=seed).numpy()
    assert set(np.unique(m)) <= {0.0, 1.0}
    np.testing.assert_allclose(m.mean(0), [0.1, 0.5, 0.8, 0.97], atol=0.015)
    # Inference ignores the noise; noise 0 is the deterministic estimator.
    np.testing.assert_array_equal(gates.straight_through(p[:1], training=False, noise=tf.constant(1.0)).numpy(),
                                  [[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(
        gates.straight_through(p[:1], training=True, noise=tf.constant(0.0), seed=seed).numpy(),
        [[0.0, 0.0, 1.0, 1.0]])


def test_noisy_straight_through_gradient_is_that_of_the_noisy_sigmoid():
    # d sigmoid(logit(p) + L) / dp = s (1 - s) / (p (1 - p)), s the noisy sigmoid.
    p = tf.Variable(np.full((20000,), 0.5, "float32"))
    with tf.GradientTape() as tape:
        m = gates.straight_through(p, training=True, noise=tf.constant(1.0), seed=keras.random.SeedGenerator(1))
        loss = tf.reduce_sum(m)
    grad = tape.gradient(loss, p).numpy()
    assert np.all(grad > 0) and np.all(np.isfinite(grad))
    # At p = 0.5, s = sigmoid(L) is uniform on (0, 1): E[s (1 - s)] = 1/6, and
    # 1 / (p (1 - p)) = 4, so the mean gradient is 2/3.
    assert grad.mean() == pytest.approx(2 / 3, rel=0.03)


def test_the_gate_passes_keras_layer_test_and_stays_float32_under_a_mixed_policy():
    from keras.src import testing

    class Case(testing.TestCase):
        def runTest(self):
            pass

    Case().run_layer_test(gates.RNNGate, init_kwargs=dict(num_gates=2, units=4), input_shape=(3, 8, 8, 5),
                          call_kwargs={"gate_index": 1}, expected_output_shape=((3,), [(3, 4), (3, 4)]),
                          run_mixed_precision_check=True, run_training_check=False)
    gate = gates.RNNGate(num_gates=2, units=4, dtype="mixed_float16")
    probability, (h, c) = gate(tf.random.normal((3, 8, 8, 5), dtype=tf.float16), gate_index=0)
    # Its probabilities decide, charge the energy and meet thresholds near 0 and 1: float32.
    assert probability.dtype == tf.float32 and h.dtype == tf.float32
    assert all(w.dtype == "float32" for w in gate.weights)
