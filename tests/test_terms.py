"""Tests of energynet_tf/terms.py: the training signals as parts, in-place distillation, stochastic depth."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import terms
from energynet_tf import training
from energynet_tf.model import EnergyNet

HERE = os.path.dirname(os.path.abspath(__file__))


def _batch(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 3)).astype("float32"), rng.integers(0, 10, size=(n,)).astype("int32")


def _compiled(**options):
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8, image_shape=(16, 16, 3), alpha=0.3, **options)
    training.compile_model(model, keras.optimizers.SGD(learning_rate=0.05, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    return model


# -- the refactor changed nothing ---------------------------------------------------------------

# Four cases in CI (each traces a step, 5-10 s); the other three with -m slow.
@pytest.mark.parametrize("case", [pytest.param("expected", marks=pytest.mark.slow), "decisions_noise",
                                  pytest.param("weight_decay", marks=pytest.mark.slow), "batch_shaping", "reinforce",
                                  pytest.param("reinforce_off", marks=pytest.mark.slow), "teacher"])
def test_the_built_in_terms_give_the_losses_and_weights_of_the_step_before_them(case):
    # tests/golden/terms_golden.npz was written by make_terms_golden.py at the commit before the terms.
    sys.path.insert(0, os.path.join(HERE, "golden"))
    try:
        import make_terms_golden as golden
    finally:
        sys.path.pop(0)
    reference = np.load(os.path.join(HERE, "golden", "terms_golden.npz"))
    losses, weights = golden.run_case(case, golden.CASES[case])
    np.testing.assert_allclose(losses, reference[case + "/losses"], rtol=1e-6)
    np.testing.assert_allclose(weights, reference[case + "/weights"], rtol=1e-5, atol=1e-7)


def test_the_model_sums_its_terms_in_order():
    model = _compiled(energy_term="decisions", weight_decay=1e-4, batch_shaping_weight=0.1,
                      loss_terms=[terms.InplaceDistillation(0.5, 2.0)])
    assert [type(t).__name__ for t in model.loss_terms] == ["Energy", "BatchShaping", "WeightDecay",
                                                             "InplaceDistillation"]
    assert model.loss_terms[0].charge == "decisions"


# -- serialisation --------------------------------------------------------------------------------

@pytest.mark.parametrize("term", [terms.Energy("decisions"), terms.Reinforce(), terms.BatchShaping((0.8, 0.2)),
                                  terms.WeightDecay(5e-4), terms.InplaceDistillation(0.25, 3.0)])
def test_every_term_round_trips_through_keras_serialisation(term):
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert type(again) is type(term) and again.get_config() == term.get_config()


def test_the_terms_and_drop_blocks_round_trip_through_the_model_config_and_keras_file(tmp_path):
    model = EnergyNet(depth=8, image_shape=(16, 16, 3), weight_decay=1e-4, batch_shaping_weight=0.1,
                      batch_shaping_prior=(0.45, 0.55), drop_blocks=0.4,
                      loss_terms=[terms.InplaceDistillation(0.75, 2.0)])
    config_copy = EnergyNet.from_config(model.get_config())
    assert config_copy.loss_terms == model.loss_terms and config_copy.drop_blocks == 0.4
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.loss_terms == model.loss_terms
    assert loaded.drop_blocks == 0.4
    x, _ = _batch()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_model_file_without_terms_loads_with_the_built_in_ones():
    config = EnergyNet(depth=8, image_shape=(16, 16, 3)).get_config()
    config.pop("loss_terms"), config.pop("drop_blocks")
    model = EnergyNet.from_config(config)
    assert [type(t).__name__ for t in model.loss_terms] == ["Energy"] and model.drop_blocks == 0.0


@pytest.mark.parametrize("make, needle", [
    (lambda: terms.InplaceDistillation(1.5), "`weight` of InplaceDistillation must be a finite number in [0, 1]"),
    (lambda: terms.InplaceDistillation(0.5, 0.0), "`temperature` of InplaceDistillation"),
    (lambda: terms.InplaceDistillation(float("nan")), "received: nan"),
    (lambda: terms.Energy("soft"), "'expected' or 'decisions'"),
    (lambda: terms.BatchShaping((1.0,)), "two positive numbers"),
    (lambda: EnergyNet(depth=8, image_shape=(16, 16, 3), loss_terms=[terms.Energy()]), "set by EnergyNet's own"),
    (lambda: EnergyNet(depth=8, image_shape=(16, 16, 3), loss_terms=["kl"]), "must hold LossTerm objects"),
    (lambda: EnergyNet(depth=8, image_shape=(16, 16, 3), drop_blocks=1.0), "`drop_blocks` must be a number in [0, 1)"),
])
def test_bad_terms_are_refused_naming_the_argument(make, needle):
    with pytest.raises(ValueError, match=None) as info:
        make()
    assert needle in str(info.value)


# -- in-place distillation ------------------------------------------------------------------------

def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_inplace_term_equals_the_hand_computed_value_on_a_toy_batch():
    full = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
    gated = np.array([[1.0, 1.0, 0.0], [0.5, -0.5, 2.0]], np.float32)
    y = np.array([0, 2], np.int32)
    w, t = 0.7, 2.0
    # By hand: CE(full) + w * T^2 * KL(softmax(full/T) || softmax(gated/T)) - w * CE(gated).
    ce_full = -np.mean(_log_softmax(full)[np.arange(2), y])
    ce_gated = -np.mean(_log_softmax(gated)[np.arange(2), y])
    pf, lpf, lpg = np.exp(_log_softmax(full / t)), _log_softmax(full / t), _log_softmax(gated / t)
    kl = np.mean(np.sum(pf * (lpf - lpg), axis=-1))
    expected = ce_full + w * t * t * kl - w * ce_gated
    step = terms.Step(x=None, y=y, sample_weight=None, out={"logits": tf.constant(gated)}, cross_entropy=None,
                      image_cross_entropy=keras.losses.sparse_categorical_crossentropy(y, gated, from_logits=True),
                      training=True, full_logits=tf.constant(full))
    value = float(terms.InplaceDistillation(w, t)(None, step))
    assert value == pytest.approx(expected, rel=1e-5)
    # With the compiled CE(gated) added, the gated path gets w * KL + (1 - w) * CE, the full path CE.
    assert value + ce_gated == pytest.approx(ce_full + w * t * t * kl + (1 - w) * ce_gated, rel=1e-5)


def test_the_full_paths_logits_get_no_gradient_from_the_distillation():
    full = tf.Variable([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    gated = tf.Variable([[1.0, 1.0, 0.0], [0.5, -0.5, 2.0]])
    y = np.array([0, 2], np.int32)

    def gradient(weight):
        with tf.GradientTape() as tape:
            step = terms.Step(x=None, y=y, sample_weight=None, out={"logits": gated}, cross_entropy=None,
                              image_cross_entropy=keras.losses.sparse_categorical_crossentropy(
                                  y, gated, from_logits=True), training=True, full_logits=full)
            value = terms.InplaceDistillation(weight, 2.0)(None, step)
        return tape.gradient(value, [full, gated])

    taught, labels_only = gradient(1.0), gradient(0.0)
    # The full path's gradient is its own cross-entropy's, whatever the distillation weight...
    np.testing.assert_allclose(taught[0].numpy(), labels_only[0].numpy(), atol=1e-7)
    # ...while the gated path's changes with it (W = 0 leaves it to the compiled CE: no gradient here).
    assert np.abs(taught[1].numpy()).max() > 1e-3
    np.testing.assert_allclose(labels_only[1].numpy(), 0.0, atol=1e-7)


def test_a_step_with_both_paths_has_the_sum_of_the_two_paths_gradients():
    w, t = 0.6, 2.0
    model = _compiled(energy_term="decisions", gate_noise=1.0, loss_terms=[terms.InplaceDistillation(w, t)])
    x, y = _batch()
    x = tf.constant(x)
    weights = model.trainable_weights
    with tf.GradientTape() as tape:
        _, _, _, _, _, loss = model._step((x, y), training=True)
    together = tape.gradient(loss, weights)

    uniform = model._step_uniform(x, 1337)  # the step's gate noise (a pure function of the step count)
    with tf.GradientTape() as tape:
        full_logits = model.full_path_logits(x, training=True)
        full_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, full_logits, from_logits=True))
    full_grads = tape.gradient(full_loss, weights)
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True, gate_uniform=uniform)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out["logits"], from_logits=True))
        kl = terms.tempered_kl(tf.stop_gradient(full_logits), out["logits"], t)
        energy = tf.reduce_mean(model.expected_energy(out["masks"]))
        gated_loss = w * kl + (1 - w) * ce + model.alpha * energy
    gated_grads = tape.gradient(gated_loss, weights)
    for v, g, a, b in zip(weights, together, full_grads, gated_grads):
        expected = (0 if a is None else a) + (0 if b is None else b)
        np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-4, atol=1e-6, err_msg=v.path)
    # Both passes reach the gates (through the gated path) and every block (through the full path).
    gate_ids = {id(v) for v in model.gate.trainable_weights}
    assert any(np.abs(g.numpy()).max() > 0 for v, g in zip(weights, together) if id(v) in gate_ids)


def test_inplace_distillation_is_off_in_evaluation():
    model = _compiled(loss_terms=[terms.InplaceDistillation(1.0, 1.0)])
    x, y = _batch()
    *_, loss = model._step((x, y), training=False)
    *_, plain_loss = _compiled()._step((x, y), training=False)
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-6)


# -- stochastic depth in the warm-up ---------------------------------------------------------------

def test_drop_blocks_skips_at_its_stated_rates_in_the_warm_up_and_never_at_inference():
    model = _compiled(drop_blocks=0.5, gate_bias_init=5.0)  # gates open: every decision would be 1
    x, _ = _batch(n=2000, size=16, seed=1)
    x = tf.constant(x)
    model.gates_forced_open.assign(1.0)
    out = model.forward(x, training=True, drop_uniform=model._step_uniform(x, 7331))
    survival = 1.0 - 0.5 * np.arange(1, model.num_gates + 1) / model.num_gates  # [0.75, 0.5] for 2 gates
    rates = out["decisions"].numpy().mean(axis=0)
    np.testing.assert_allclose(rates, survival, atol=0.04)
    assert rates[-1] < rates[0]
    # Per image: the same block runs for some images and not for others in one batch.
    assert 0 < out["decisions"].numpy()[:, -1].sum() < len(x)
    # Never at inference, nor once the warm-up is over.
    assert model.forward(x, training=False)["decisions"].numpy().min() == 1.0
    model.gates_forced_open.assign(0.0)
    after = model.forward(x, training=True, gate_uniform=model._step_uniform(x, 1337),
                          drop_uniform=model._step_uniform(x, 7331))
    assert after["decisions"].numpy().mean() > 0.95


def test_drop_blocks_draws_are_a_pure_function_of_the_step():
    model = _compiled(drop_blocks=0.3)
    x, _ = _batch()
    first = model._step_uniform(tf.constant(x), 7331).numpy()
    np.testing.assert_array_equal(first, model._step_uniform(tf.constant(x), 7331).numpy())
    model.optimizer.iterations.assign_add(1)
    assert not np.array_equal(first, model._step_uniform(tf.constant(x), 7331).numpy())
    # Another stream than the gates' noise.
    assert not np.array_equal(first, model._step_uniform(tf.constant(x), 1337).numpy())
