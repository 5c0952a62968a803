"""Tests of energynet_tf/model.py: the EnergyNet model and its energy-aware steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import metrics as metrics_lib
from energynet_tf import training
from energynet_tf.model import EnergyNet


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# Trainable parameters of the baselines: He et al.'s CIFAR ResNets (ResNet-20
# 0.27M, ResNet-110 1.7M) and ResNet-50 with a 200-class head
# (25,557,032 - 2048 * 800 - 800 for the 1000-class one).
BASELINE_TRAINABLE = {
    8: 78_042, 20: 272_474, 26: 369_690, 32: 466_906, 38: 564_122, 56: 855_770, 74: 1_147_418, 110: 1_730_714,
}


def _gate_params(widths, units=10):
    # Own projection per gate; one LSTM cell (4 gates, input + recurrent) and one output unit.
    return sum(c * units + units for c in widths) + 4 * units * (2 * units) + 4 * units + units + 1


@pytest.mark.parametrize("depth", sorted(BASELINE_TRAINABLE))
def test_exact_parameter_counts(depth):
    baseline = EnergyNet(depth=depth, baseline=True)
    gated = EnergyNet(depth=depth)
    assert _trainable(baseline) == BASELINE_TRAINABLE[depth]
    n = (depth - 2) // 6
    # Gate g sits before block g + 1 and sees the output of block g.
    widths = [16] * n + [32] * n + [64] * (n - 1)
    assert gated.num_gates == 3 * n - 1 == len(widths)
    assert _trainable(gated) - _trainable(baseline) == _gate_params(widths)


def test_resnet50_parameter_count():
    model = EnergyNet(depth=50, num_classes=200, image_shape=(64, 64, 3), baseline=True)
    assert _trainable(model) == 23_917_832
    gated = EnergyNet(depth=50, num_classes=200, image_shape=(64, 64, 3))
    assert gated.num_gates == 15
    # Gates see the outputs of blocks 0..14: 3 x 256, 4 x 512, 6 x 1024, 2 x 2048 channels.
    widths = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 2
    assert _trainable(gated) - _trainable(model) == _gate_params(widths)


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 32, 32, 3)).astype("float32"), rng.integers(0, 10, n)


def _compiled(depth=8, **kwargs):
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=depth, **kwargs)
    training.compile_model(model, keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def test_gradients_reach_every_gate_weight():
    model = _compiled(depth=14)
    x, y = _data()
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True)
        ce = keras.losses.sparse_categorical_crossentropy(y, out["logits"], from_logits=True)
        loss = tf.reduce_mean(ce) + model.alpha * tf.reduce_mean(model.expected_energy(out["probabilities"]))
    gate_vars = model.gate.trainable_weights
    assert len(gate_vars) == 2 * model.num_gates + 3 + 2
    for var, grad in zip(gate_vars, tape.gradient(loss, gate_vars)):
        assert grad is not None, var.path
        assert np.any(grad.numpy() != 0), var.path


def test_cross_entropy_alone_reaches_gates_through_straight_through():
    model = _compiled(depth=8)
    x, y = _data()
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out["logits"], from_logits=True))
    grad = tape.gradient(loss, model.gate.output_dense.kernel)
    assert grad is not None and np.any(grad.numpy() != 0)


def test_energy_term_equals_hand_computation():
    model = _compiled(depth=14)
    table = model.energy_table
    p = np.random.default_rng(3).uniform(size=(5, model.num_gates)).astype("float32")
    expected = (table.fixed_energy + p @ np.array(table.block_energy)) / table.total_energy
    np.testing.assert_allclose(model.expected_energy(p).numpy(), expected, rtol=1e-6)
    m = (p > 0.5).astype("float32")
    hard = (table.fixed_energy + table.gate_energy + m @ np.array(table.block_energy)) / table.total_energy
    np.testing.assert_allclose(model.inference_energy(m).numpy(), hard, rtol=1e-6)
    # E_total is the baseline network's energy: E_fixed + sum_b E_b.
    assert table.total_energy == pytest.approx(table.fixed_energy + sum(table.block_energy))


def test_train_step_loss_is_cross_entropy_plus_alpha_energy():
    model = _compiled(depth=8, alpha=0.7)
    x, y = _data()
    logs = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    out = model.forward(x)
    energy = float(np.mean(model.expected_energy(out["probabilities"]).numpy()))
    assert logs["loss"] == pytest.approx(logs["cross_entropy"] + 0.7 * energy, rel=1e-5)
    assert logs["expected_energy"] == pytest.approx(energy, rel=1e-5)


def test_forced_gates_and_skip_metrics():
    model = _compiled(depth=14)
    x, _ = _data(4)
    closed = model.forward(x, gate_override=np.zeros(model.num_gates, "float32"))
    opened = model.forward(x, gate_override=np.ones(model.num_gates, "float32"))
    table = model.energy_table
    e_closed = model.inference_energy(closed["decisions"]).numpy()
    np.testing.assert_allclose(e_closed, (table.fixed_energy + table.gate_energy) / table.total_energy, rtol=1e-6)
    np.testing.assert_allclose(model.inference_energy(opened["decisions"]).numpy(),
                               1 + table.gate_energy / table.total_energy, rtol=1e-6)
    tracker = metrics_lib.SkipRatios(model.num_gates)
    tracker.update_state(closed["decisions"])
    assert all(float(v) == 1.0 for v in tracker.result().values())
    # A closed network equals running only the always-on layers: changing a
    # gated block's weights cannot change its output.
    before = closed["logits"].numpy()
    kernel = model.res_blocks[2].convs[0].kernel
    kernel.assign(kernel * 3.0)
    after = model.forward(x, gate_override=np.zeros(model.num_gates, "float32"))["logits"].numpy()
    np.testing.assert_array_equal(before, after)


def test_gates_forced_open_run_every_block_in_training_only():
    model = _compiled(depth=14, gate_bias_init=-20.0)  # gates closed
    x, _ = _data(4)
    assert np.all(model.forward(x, training=True)["decisions"].numpy() == 0)
    model.gates_forced_open.assign(1.0)
    assert np.all(model.forward(x, training=True)["decisions"].numpy() == 1)
    # Evaluation and serving show what the gates decide.
    assert np.all(model.forward(x)["decisions"].numpy() == 0)


def test_baseline_has_no_gates_and_no_savings():
    model = _compiled(depth=8, baseline=True)
    assert model.gate is None
    x, y = _data()
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["energy_savings"] == pytest.approx(0.0, abs=1e-7)
    assert model.energy_table.gate_energy == 0.0


def test_keras_round_trip_identical_outputs_and_gates(tmp_path):
    keras.utils.set_random_seed(2)
    model = EnergyNet(depth=14, num_classes=7, gate_units=6, gate_bias_init=0.1, alpha=0.3,
                      accelerator={"array_rows": 16, "array_cols": 8, "dataflow": "ws"},
                      energy_costs={"dram": 100.0}, weight_decay=5e-4, zero_init_residual=True,
                      gate_lr_multiplier=2.5, gate_noise=0.5, energy_term="decisions", name="custom")
    training.compile_model(model, keras.optimizers.SGD(0.01))
    x, y = _data()
    y = y % 7
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # move BN statistics and weights
    model.alpha.assign(0.45)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, EnergyNet)
    a, b = model.forward(x), loaded.forward(x)
    np.testing.assert_array_equal(a["logits"].numpy(), b["logits"].numpy())
    np.testing.assert_array_equal(a["decisions"].numpy(), b["decisions"].numpy())
    np.testing.assert_array_equal(a["probabilities"].numpy(), b["probabilities"].numpy())
    assert float(loaded.alpha.numpy()) == pytest.approx(0.45)
    assert loaded.accelerator == model.accelerator and loaded.energy_costs == model.energy_costs
    assert loaded.energy_table.block_energy == model.energy_table.block_energy
    assert (loaded.gate_units, loaded.num_classes, loaded.name) == (6, 7, "custom")
    assert (loaded.weight_decay, loaded.zero_init_residual) == (5e-4, True)
    assert float(loaded.gate_lr_multiplier.numpy()) == pytest.approx(2.5)
    assert float(loaded.gate_noise.numpy()) == pytest.approx(0.5)
    assert loaded.energy_term == "decisions"


@pytest.mark.parametrize("kept", [1, 2, 3])
def test_loads_files_saved_before_later_model_variables_existed(tmp_path, kept):
    # kept=1: alpha only (before gate warm-up); kept=2: alpha and gates_forced_open
    # (before gate_lr_multiplier).
    import h5py
    import zipfile

    model = EnergyNet(depth=8, alpha=0.25)
    model.gates_forced_open.assign(1.0)
    model.gate_lr_multiplier.assign(0.0)
    path = tmp_path / "m.keras"
    model.save(path)
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "model.weights.h5":
                weights = tmp_path / "w.h5"
                weights.write_bytes(data)
                with h5py.File(weights, "r+") as f:
                    for index in range(kept, len(f["vars"])):
                        del f["vars"][str(index)]
                data = weights.read_bytes()
            dst.writestr(name, data)
    loaded = keras.saving.load_model(old)
    assert float(loaded.alpha.numpy()) == pytest.approx(0.25)
    assert float(loaded.gates_forced_open.numpy()) == (1.0 if kept >= 2 else 0.0)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(model.forward(x)["logits"].numpy(), loaded.forward(x)["logits"].numpy())


def test_coupled_weight_decay_adds_half_wd_times_squared_norm_to_the_loss():
    x, y = _data()
    plain = _compiled(depth=8, alpha=0.3)
    decayed = _compiled(depth=8, alpha=0.3, weight_decay=1e-3)
    squares = sum(float(np.sum(np.square(w.numpy()))) for w in decayed.trainable_weights)
    a = plain.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)["loss"]
    b = decayed.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)["loss"]
    assert b - a == pytest.approx(0.5e-3 * squares, rel=1e-4)


def test_coupled_weight_decay_gradient_is_wd_times_w():
    # One plain SGD step on a zero learning signal (alpha 0, gates closed out of
    # the picture): with lr 1, w_new = w - lr * (dCE/dw + wd * w).
    x, y = _data()
    outs = []
    for wd in (0.0, 0.01):
        keras.utils.set_random_seed(0)
        model = EnergyNet(depth=8, alpha=0.0, weight_decay=wd)
        training.compile_model(model, keras.optimizers.SGD(1.0))
        before = model.classifier.kernel.numpy().copy()
        model.train_on_batch(x, y)
        outs.append((before, model.classifier.kernel.numpy()))
    (b0, a0), (b1, a1) = outs
    np.testing.assert_allclose(b0, b1)
    np.testing.assert_allclose(a1 - a0, -0.01 * b1, atol=2e-5)


def test_gate_lr_multiplier_zero_freezes_the_gates_but_not_the_backbone():
    model = _compiled(depth=8, alpha=0.5, weight_decay=1e-3, gate_lr_multiplier=0.0)
    x, y = _data(16)
    gates = [w.numpy().copy() for w in model.gate.trainable_weights]
    stem = model.stem_conv.kernel.numpy().copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for before, w in zip(gates, model.gate.trainable_weights):
        np.testing.assert_array_equal(before, w.numpy())
    assert np.abs(model.stem_conv.kernel.numpy() - stem).max() > 0
    # Once the multiplier is 1 the same gates learn.
    model.gate_lr_multiplier.assign(1.0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.abs(model.gate.output_dense.bias.numpy() - gates[-1]).max() > 0


def test_gate_lr_multiplier_scales_the_gates_update():
    x, y = _data()
    steps = {}
    for k in (1.0, 3.0):
        keras.utils.set_random_seed(0)
        model = EnergyNet(depth=8, alpha=0.5, gate_lr_multiplier=k)
        training.compile_model(model, keras.optimizers.SGD(0.01))
        before = model.gate.output_dense.bias.numpy().copy()
        model.train_on_batch(x, y)
        steps[k] = model.gate.output_dense.bias.numpy() - before
    np.testing.assert_allclose(steps[3.0], 3.0 * steps[1.0], rtol=1e-4)


def test_energy_term_on_decisions_charges_the_blocks_that_ran():
    x, y = _data()
    model = _compiled(depth=14, alpha=0.7, energy_term="decisions")
    logs = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    out = model.forward(x)
    charged = float(np.mean(model.expected_energy(out["decisions"]).numpy()))
    assert logs["loss"] == pytest.approx(logs["cross_entropy"] + 0.7 * charged, rel=1e-5)
    # Deterministic gates: the same gradient as the expected energy's.
    grads = []
    for term in ("expected", "decisions"):
        m = _compiled(depth=14, alpha=0.7, energy_term=term)
        with tf.GradientTape() as tape:
            _, _, _, _, _, loss = m._step((x, y), training=True)
        grads.append(tape.gradient(loss, m.gate.output_dense.bias).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5)


def test_few_training_steps_reduce_the_loss():
    model = _compiled(depth=8, alpha=0.1)
    x, y = _data(32, seed=4)
    before = model.evaluate(x, y, return_dict=True, verbose=0)["loss"]
    model.fit(x, y, epochs=8, batch_size=16, verbose=0, shuffle=False)
    after = model.evaluate(x, y, return_dict=True, verbose=0)["loss"]
    assert after < before * 0.8


def test_energy_loss_closes_gates():
    # With only the energy term to minimise (alpha large, no data signal to keep
    # blocks), training must close gates.
    model = _compiled(depth=14, alpha=50.0, gate_bias_init=0.5)
    x, y = _data(32, seed=5)
    start = model.evaluate(x, y, return_dict=True, verbose=0)["energy_savings"]
    model.fit(x, y, epochs=10, batch_size=16, verbose=0)
    end = model.evaluate(x, y, return_dict=True, verbose=0)["energy_savings"]
    assert end > start + 0.2


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"depth": 21}, ValueError, "depth"),
    ({"alpha": -0.1}, ValueError, "alpha"),
    ({"num_classes": 1}, ValueError, "num_classes"),
    ({"image_shape": (32, 32)}, ValueError, "image_shape"),
    ({"accelerator": {"rows": 3}}, ValueError, "accelerator"),
    ({"accelerator": 3}, TypeError, "accelerator"),
    ({"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ({"energy_term": "soft"}, ValueError, "energy_term"),
    ({"gate_lr_multiplier": float("nan")}, ValueError, "gate_lr_multiplier"),
    ({"removed_blocks": [1]}, ValueError, "removed_blocks"),
])
def test_bad_constructor_arguments(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        EnergyNet(**kwargs)


def test_bad_inputs_are_rejected_clearly():
    model = _compiled(depth=8)
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        model(np.zeros((2, 28, 28, 3), "float32"))
    with pytest.raises(TypeError, match="float"):
        model(np.zeros((2, 32, 32, 3), "uint8"))


def test_stem_walk_and_head_are_the_forward_pass():
    images = tf.random.stateless_normal((3, 32, 32, 3), seed=(1, 2))
    model = EnergyNet(depth=14, gate_units=4)
    decisions = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
    want = model.forward(images, gate_override=decisions)["logits"]
    seen = []

    def decide(index, x):
        seen.append((index, tuple(x.shape)))
        return tf.fill((3,), decisions[index])

    got = model.head(model.walk(model.stem(images), decide=decide))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    # One call per gate, in order, each on the input of the block it decides.
    assert seen == [(i, (3,) + plan.input_hw + (plan.in_channels,)) for i, plan in enumerate(model.plan.gated_blocks)]
    # Without `decide` every block runs: the baseline's path.
    all_open = model.forward(images, gate_override=np.ones(5, np.float32))["logits"]
    np.testing.assert_allclose(model.head(model.walk(model.stem(images))).numpy(), all_open.numpy(), rtol=1e-6, atol=1e-6)


def test_walk_runs_a_gated_block_the_callers_way():
    images = tf.random.stateless_normal((2, 32, 32, 3), seed=(3, 4))
    model = EnergyNet(depth=8, gate_units=4)
    ran = []

    def run(block, x, decision):
        ran.append((block.name, decision))
        return block.shortcut(x)

    x = model.walk(model.stem(images), decide=lambda index, x: f"d{index}", run=run)
    # Block 0 always runs as itself; gated blocks 1 and 2 go through `run`.
    assert ran == [("block01", "d0"), ("block02", "d1")]
    assert tuple(x.shape) == (2, 8, 8, 64)


def test_removed_blocks_leave_exactly_their_residual_branches_untrained():
    full = _trainable(EnergyNet(depth=14, baseline=True))
    # Block 1: two 3x3 16->16 convs and their BNs' gamma and beta.
    assert full - _trainable(EnergyNet(depth=14, baseline=True, removed_blocks=[1])) == 2 * (9 * 16 * 16 + 32)
    # Block 2 opens stage 2: its branch (16->32 stride 2, 32->32) goes; its projection shortcut stays.
    branch = 9 * 16 * 32 + 64 + 9 * 32 * 32 + 64
    assert full - _trainable(EnergyNet(depth=14, baseline=True, removed_blocks=[2])) == branch


def test_a_plain_network_with_removed_blocks_runs_their_shortcuts_and_charges_the_rest(tmp_path):
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=14, baseline=True, removed_blocks=[1, 4], zero_init_residual=False)
    training.compile_model(model, keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = _data(16)
    removed_before = [w.numpy().copy() for w in model.res_blocks[1].weights]
    kept_before = [w.numpy().copy() for w in model.res_blocks[2].weights]
    logs = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    # Never run: not a single weight (moving statistics included) of the removed block moved.
    for before, w in zip(removed_before, model.res_blocks[1].weights):
        np.testing.assert_array_equal(before, w.numpy())
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(kept_before, model.res_blocks[2].weights))
    table = model.energy_table
    spent = table.fixed_energy + sum(e for i, e in enumerate(table.block_energy) if i not in (0, 3))
    assert logs["energy_savings"][0] == pytest.approx(1 - spent / table.total_energy, rel=1e-5)
    assert logs["skip_01"][0] == 1.0 and logs["skip_04"][0] == 1.0 and logs["skip_02"][0] == 0.0
    # The forward pass is the walk with the removed blocks' shortcuts.
    h = model.stem(x)
    for plan, block in zip(model.plan.blocks, model.res_blocks):
        h = block.shortcut(h) if plan.gate is not None and plan.gate + 1 in (1, 4) else block(h)
    np.testing.assert_allclose(model.head(h), model(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.removed_blocks == (1, 4)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert _trainable(loaded) == _trainable(model)


@pytest.mark.parametrize("kwargs, needle", [
    ({"baseline": True, "removed_blocks": [0]}, r"\[1, 5\]"),
    ({"baseline": True, "removed_blocks": [6]}, r"\[1, 5\]"),
    ({"baseline": True, "removed_blocks": [2, 2]}, "repeats"),
    ({"baseline": True, "removed_blocks": "12"}, "list of gated block numbers"),
    ({"removed_blocks": [1]}, "baseline=True"),
])
def test_bad_removed_blocks(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        EnergyNet(depth=14, **kwargs)


def test_inference_threshold_moves_decisions_but_not_training():
    model = EnergyNet(depth=8, gate_bias_init=0.0)
    model.gate.output_dense.kernel.assign(np.zeros((10, 1), "float32"))
    x, _ = _data(4)
    # Every gate's probability is exactly sigmoid(0) = 0.5.
    assert np.asarray(model.forward(x)["decisions"]).sum() == 0  # 0.5 > 0.5 is false
    assert np.asarray(model.forward(x, threshold=0.49)["decisions"]).all()
    assert not np.asarray(model.forward(x, threshold=0.51)["decisions"]).any()
    model.gate_noise.assign(0.0)
    trained = model.forward(x, training=True, threshold=0.49)["decisions"]
    assert np.asarray(trained).sum() == 0  # training decides at 0.5 whatever the threshold


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_trains_keeps_float32_variables_decisions_and_energy(policy):
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8, alpha=0.5, dtype=policy)
    training.compile_model(model, training.make_optimizer())
    model.optimizer.learning_rate.assign(0.1)  # (the trainers' schedule sets it per step)
    # float16 needs loss scaling (Keras wraps the optimizer); bfloat16 has float32's range.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert model.res_blocks[0].residual_convs[0].compute_dtype == policy.split("_")[1]
    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype("float32")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(w.dtype == "float32" for w in model.weights)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights))
    out = model.forward(x[:4])
    assert {str(v.dtype) for v in out.values()} == {"<dtype: 'float32'>"}
    assert model.inference_energy(out["decisions"]).dtype == "float32"


def test_a_model_saved_under_one_policy_loads_and_predicts_under_another(tmp_path):
    keras.utils.set_random_seed(1)
    mixed = EnergyNet(depth=8, dtype="mixed_bfloat16")
    mixed.save(tmp_path / "mixed.keras")
    plain = EnergyNet(depth=8)
    plain.save(tmp_path / "plain.keras")
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("float32")
        loaded_mixed = keras.saving.load_model(tmp_path / "mixed.keras", safe_mode=True)
        keras.config.set_dtype_policy("mixed_bfloat16")
        loaded_plain = keras.saving.load_model(tmp_path / "plain.keras", safe_mode=True)
    finally:
        keras.config.set_dtype_policy(previous)
    # Each keeps the policy it was saved with, and its weights.
    assert loaded_mixed.dtype_policy.name == "mixed_bfloat16" and loaded_plain.dtype_policy.name == "float32"
    np.testing.assert_array_equal(loaded_plain(x).numpy(), plain(x).numpy())
    np.testing.assert_array_equal(loaded_mixed(x).numpy(), mixed(x).numpy())
    # The float32 copy the exports serve: the mixed model's weights at full precision.
    from energynet_tf import export

    full = export.float32_model(loaded_mixed)
    assert full.dtype_policy.name == "float32" and export.float32_model(plain) is plain
    np.testing.assert_allclose(full(x).numpy(), mixed(x).numpy(), atol=0.05 * np.abs(full(x).numpy()).max())


def test_distillation_adds_the_tempered_kl_to_a_frozen_teacher_and_never_trains_it():
    keras.utils.set_random_seed(2)
    student = EnergyNet(depth=8, alpha=0.3, gate_noise=0.0)
    teacher = EnergyNet(depth=8, baseline=True)
    x = np.random.default_rng(2).normal(size=(6, 32, 32, 3)).astype("float32")
    y = np.arange(6) % 10
    student.set_teacher(teacher, weight=0.7, temperature=3.0)
    training.compile_model(student, training.make_optimizer())
    _, _, _, out, ce, loss = student._step((x, y), training=True)
    t = teacher(x, training=False).numpy() / 3.0
    s = out["logits"].numpy() / 3.0
    p = np.exp(t - t.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))
    kl = (p * (np.log(p) - log_q)).sum(1).mean()
    energy = float(np.mean(student.expected_energy(out["probabilities"])))
    assert float(loss) == pytest.approx(float(ce) + 0.3 * energy + 0.7 * 9.0 * kl, rel=1e-5)
    # The teacher is not part of the student: not trained, not saved.
    before = [w.numpy().copy() for w in teacher.weights]
    student.optimizer.learning_rate.assign(0.1)
    student.fit(x, y, batch_size=3, epochs=1, verbose=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, teacher.weights))
    assert not {id(w) for w in teacher.weights} & {id(w) for w in student.weights}
    with pytest.raises(ValueError, match="Argument `weight` must be a finite number > 0"):
        student.set_teacher(teacher, weight=0.0)
