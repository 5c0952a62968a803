"""Tests of energynet_tf/reinforce.py and the reinforcement stage of the model."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import reinforce
from energynet_tf import training
from energynet_tf.model import EnergyNet
from tools import stats


def test_batch_shaping_loss_equals_hand_computation():
    p = tf.constant([[0.2, 0.9], [0.5, 0.1]])
    # Beta(1, 1) is uniform: F(x) = x; the empirical CDF of 2 images is 1/3, 2/3.
    expected = (0.2 - 1 / 3) ** 2 + (0.5 - 2 / 3) ** 2 + (0.1 - 1 / 3) ** 2 + (0.9 - 2 / 3) ** 2
    assert float(reinforce.batch_shaping_loss(p, 1.0, 1.0)) == pytest.approx(expected, rel=1e-6)
    # Beta(0.6, 0.4) against an independent incomplete beta function (tools/stats.py).
    values = np.array([[0.03, 0.7], [0.4, 0.99], [0.95, 0.2]])
    hand = 0.0
    for g in range(2):
        for i, x in enumerate(sorted(values[:, g])):
            hand += (stats.regularized_beta(0.6, 0.4, x) - (i + 1) / 4) ** 2
    got = float(reinforce.batch_shaping_loss(tf.constant(values, tf.float64), 0.6, 0.4))
    assert got == pytest.approx(hand, rel=1e-6)


def test_batch_shaping_pushes_a_saturated_gate_to_be_conditional():
    p = tf.Variable([[0.99], [0.98], [0.97], [0.99]])
    with tf.GradientTape() as tape:
        loss = reinforce.batch_shaping_loss(p, 0.6, 0.4)
    grad = tape.gradient(loss, p).numpy()[:, 0]
    # Every image's gate stands above the prior's lower quantiles: the loss pushes the lowest down most.
    assert (grad > 0).all() and grad[2] == grad.max()


def test_returns_to_go_charge_each_gate_for_the_blocks_from_it_on():
    ce = tf.constant([0.5, 2.0])
    decisions = tf.constant([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    energy = np.array([0.2, 0.3, 0.1], np.float32)
    got = reinforce.returns_to_go(ce, decisions, energy, 2.0).numpy()
    np.testing.assert_allclose(got, [[-(0.5 + 2 * 0.3), -(0.5 + 2 * 0.1), -(0.5 + 2 * 0.1)],
                                     [-(2.0 + 2 * 0.4), -(2.0 + 2 * 0.4), -(2.0 + 2 * 0.1)]], rtol=1e-6)


def test_leave_one_out_baseline():
    returns = tf.constant([[1.0], [2.0], [6.0]])
    np.testing.assert_allclose(reinforce.leave_one_out_advantages(returns).numpy()[:, 0], [-3.0, -1.5, 4.5])
    np.testing.assert_allclose(reinforce.leave_one_out_advantages(tf.constant([[3.0]])).numpy(), [[0.0]])


def test_reinforce_estimate_matches_the_exact_gradient_of_the_expected_return_on_two_gates():
    theta = tf.Variable([0.3, -0.8], dtype=tf.float64)
    # A cross-entropy for each of the four paths, and per-block energies.
    ce_table = {(0, 0): 2.0, (0, 1): 0.9, (1, 0): 0.8, (1, 1): 0.1}
    energy = np.array([0.35, 0.15])
    alpha = 1.5

    def exact_objective():
        p = tf.sigmoid(theta)
        total = tf.constant(0.0, tf.float64)
        for m in itertools.product((0, 1), repeat=2):
            prob = tf.reduce_prod(tf.where(tf.constant(m) == 1, p, 1 - p))
            total += prob * -(ce_table[m] + alpha * float(np.dot(m, energy)))
        return total

    with tf.GradientTape() as tape:
        objective = exact_objective()
    exact = tape.gradient(objective, theta).numpy()

    n = 400_000
    rng = np.random.default_rng(0)
    p0 = tf.sigmoid(theta).numpy()
    m = (rng.uniform(size=(n, 2)) < p0).astype(np.float64)
    ce = np.array([ce_table[(int(a), int(b))] for a, b in m])
    returns = reinforce.returns_to_go(tf.constant(ce), tf.constant(m), energy, alpha)
    advantages = reinforce.leave_one_out_advantages(returns)
    with tf.GradientTape() as tape:
        p = tf.sigmoid(theta)[None, :] * tf.ones((n, 1), tf.float64)
        surrogate = -reinforce.policy_loss(p, tf.constant(m), advantages)
    estimate = tape.gradient(surrogate, theta).numpy()
    np.testing.assert_allclose(estimate, exact, atol=0.01)
    assert np.abs(exact).min() > 0.1  # the gradient is not trivially ~0


def _programmed_two_kind_model(alpha=1.0):
    """EnergyNet-8 on 8x8 images whose backbone is set by hand and frozen; only the gates learn.

    Input channel 0 is +1 for kind A and -1 for kind B; the stem copies its
    positive part to channel 1. Gated block 1, when it runs, writes 3 x
    channel 1 into channel 2 (kind A: 3; kind B: 0); the head's logit of
    class 1 is 2 x channel 2 - 1. Kind A is class 1: it needs block 1
    (cross-entropy 0.007 with it, 1.31 without); kind B is class 0 and
    does not (0.31 either way). Gated block 2 does nothing but cost energy.
    """
    keras.utils.set_random_seed(1)
    model = EnergyNet(depth=8, num_classes=2, image_shape=(8, 8, 3), gate_bias_init=0.0, alpha=alpha,
                      zero_init_residual=False, gate_losses=("reinforce",))

    def set_bn(bn):
        bn.set_weights([np.ones(bn.gamma.shape), np.zeros(bn.beta.shape), np.zeros(bn.moving_mean.shape),
                        np.ones(bn.moving_variance.shape)])

    kernel = np.zeros(model.stem_conv.kernel.shape)
    kernel[1, 1, 0, 1] = 1.0
    model.stem_conv.set_weights([kernel])
    set_bn(model.stem_bn)
    for k, block in enumerate(model.res_blocks):
        for conv in block.residual_convs:
            conv.set_weights([np.zeros(conv.kernel.shape)])
        for bn in block.residual_bns:
            set_bn(bn)
        if block.shortcut_conv is not None:
            kernel = np.zeros(block.shortcut_conv.kernel.shape)
            for c in range(kernel.shape[2]):
                kernel[0, 0, c, c] = 1.0
            block.shortcut_conv.set_weights([kernel])
            set_bn(block.shortcut_bn)
    first, second = model.res_blocks[1].residual_convs
    kernel = np.zeros(first.kernel.shape)
    kernel[1, 1, 1, 2] = 3.0
    first.set_weights([kernel])
    kernel = np.zeros(second.kernel.shape)
    kernel[1, 1, 2, 2] = 1.0
    second.set_weights([kernel])
    kernel = np.zeros(model.classifier.kernel.shape)
    kernel[2, 1] = 2.0
    model.classifier.set_weights([kernel, np.array([0.0, -1.0])])
    for layer in [model.stem_conv, model.stem_bn, model.classifier] + list(model.res_blocks):
        layer.trainable = False  # frozen BNs run in inference mode
    return model


def _two_kinds(n):
    x = np.zeros((2 * n, 8, 8, 3), np.float32)
    x[:n, :, :, 0] = 1.0
    x[n:, :, :, 0] = -1.0
    return x, np.array([1] * n + [0] * n)


def test_the_programmed_task_needs_block_1_for_kind_a_only():
    model = _programmed_two_kind_model()
    x, y = _two_kinds(2)
    ce = keras.losses.sparse_categorical_crossentropy
    for decisions, a, b in (([1, 0], 0.0067, 0.3133), ([0, 0], 1.3133, 0.3133)):
        logits = model.forward(x, gate_override=np.array(decisions, np.float32))["logits"]
        losses = ce(y, logits, from_logits=True).numpy()
        np.testing.assert_allclose(losses, [a, a, b, b], atol=1e-3)


def test_the_reinforcement_stage_opens_a_block_for_the_images_that_need_it_only():
    model = _programmed_two_kind_model(alpha=1.0)
    model.policy_weight.assign(1.0)
    model.gate_noise.assign(1.0)
    training.compile_model(model, keras.optimizers.SGD(0.3))
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in model.gate.trainable_weights}
    x, y = _two_kinds(32)
    before = model.forward(x)["probabilities"].numpy()
    assert 0.2 < before[:, 0].mean() < 0.8  # a policy that still explores
    history = model.fit(x, y, epochs=40, batch_size=32, shuffle=True, verbose=0).history
    decisions = model.forward(x)["decisions"].numpy()
    skip_a, skip_b = 1 - decisions[:32, 0].mean(), 1 - decisions[32:, 0].mean()
    assert skip_b - skip_a > 0.8, (skip_a, skip_b)
    # Block 2 only costs energy: closed for both kinds.
    assert decisions[:, 1].mean() < 0.1
    assert history["mean_reward"][-1] > history["mean_reward"][0]
    assert history["policy_entropy"][-1] < history["policy_entropy"][0]


def test_straight_through_training_is_unchanged_when_the_policy_weight_is_zero():
    # policy_weight 0 and batch_shaping_weight 0 must give exactly the earlier loss and gradients.
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8, gate_noise=0.0, alpha=0.5, energy_term="decisions")  # deterministic decisions
    x = tf.random.stateless_normal((4, 32, 32, 3), seed=(1, 2))
    y = tf.constant([1, 2, 3, 4])
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out["logits"], from_logits=True))
        reference = ce + 0.5 * tf.reduce_mean(model.expected_energy(out["masks"]))
    want = tape.gradient(reference, model.gate.trainable_weights)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer = None
    with tf.GradientTape() as tape:
        *_, loss = model._step((x, y), training=True)
    got = tape.gradient(loss, model.gate.trainable_weights)
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-7)


def test_softening_divides_every_gates_logit_once_and_survives_save_and_load(tmp_path):
    keras.utils.set_random_seed(2)
    model = EnergyNet(depth=14, gate_bias_init=6.0)
    x = tf.random.stateless_normal((3, 32, 32, 3), seed=(5, 6))

    def logits(m):
        p = m.forward(x)["probabilities"].numpy().astype(np.float64)
        return np.log(p / (1 - p))

    before = logits(model)
    assert model.soften_gates(4.0)
    np.testing.assert_allclose(logits(model), before / 4.0, rtol=1e-3, atol=1e-4)
    assert not model.soften_gates(4.0)  # once
    np.testing.assert_allclose(logits(model), before / 4.0, rtol=1e-3, atol=1e-4)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert float(loaded.gates_softened.numpy()) == 1.0 and not loaded.soften_gates(4.0)


def test_a_schedule_that_needs_a_gate_loss_refuses_a_model_without_it():
    from energynet_tf import callbacks

    model = EnergyNet(depth=8)
    assert model.gate_losses == ()
    assert EnergyNet(depth=8, policy_weight=0.1).gate_losses == ("reinforce",)
    cb = callbacks.AlphaPhases(callbacks.PhaseSchedule(phase1_epochs=1, reinforce_phases=(2,)), steps_per_epoch=1,
                               verbose=False)
    cb.set_model(model)
    with pytest.raises(ValueError, match="gate_losses=\\('reinforce',\\)"):
        cb.on_train_begin()
    with pytest.raises(ValueError, match="gate_losses"):
        EnergyNet(depth=8, gate_losses=("dropout",))
