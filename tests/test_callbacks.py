"""Tests of energynet_tf/callbacks.py: the alpha phases and the NaN guard."""

import math

import keras
import numpy as np
import pytest

from energynet_tf import callbacks


class _FakeModel:
    """Just what the callbacks touch: alpha, the optimizer's LR, stop_training."""

    def __init__(self):
        self.alpha = keras.Variable(0.0, trainable=False)
        self.gates_forced_open = keras.Variable(0.0, trainable=False)
        self.gate_lr_multiplier = keras.Variable(1.0, trainable=False)
        self.policy_weight = keras.Variable(0.0, trainable=False)
        self.exploration = keras.Variable(0.0, trainable=False)
        self.batch_shaping_weight = keras.Variable(0.0, trainable=False)
        self.optimizer = keras.optimizers.SGD(0.0)
        self.stop_training = False


def _drive(callback, accuracies, steps=2):
    """Runs epochs with the given validation accuracies until the callback stops."""
    model = _FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    seen = []
    for epoch, accuracy in enumerate(accuracies):
        if model.stop_training:
            break
        callback.on_epoch_begin(epoch)
        for batch in range(steps):
            callback.on_train_batch_begin(batch)
        logs = {"val_accuracy": accuracy}
        callback.on_epoch_end(epoch, logs)
        seen.append((logs["phase"], round(logs["alpha"], 6)))
    return seen, model


def _schedule(**kwargs):
    defaults = dict(phase1_epochs=2, phase2_epochs=2, phase3_epochs=1, lr1=0.1, lr2=0.01, lr3=0.001)
    defaults.update(kwargs)
    return callbacks.PhaseSchedule(**defaults)


def test_phase3_runs_when_phase2_loses_accuracy():
    cb = callbacks.AlphaPhases(_schedule(restore_threshold=0.1), steps_per_epoch=2, verbose=False)
    seen, model = _drive(cb, [0.80, 0.90, 0.88, 0.85, 0.89, 0.5, 0.5])
    assert seen == [(1, 0.1), (1, 0.1), (2, 0.9), (2, 0.9), (3, 0.1)]
    assert model.stop_training
    assert [p["phase"] for p in cb.phases] == [1, 2, 3]
    assert [p["epochs"] for p in cb.phases] == [2, 2, 1]
    assert cb.phases[1]["val_accuracy"] == pytest.approx(0.85)
    assert "phase III ran" in cb.phase3_reason and "5.00 points" in cb.phase3_reason


def test_phase3_skipped_within_threshold():
    cb = callbacks.AlphaPhases(_schedule(restore_threshold=0.5), steps_per_epoch=2, verbose=False)
    seen, model = _drive(cb, [0.80, 0.90, 0.80, 0.897, 0.1])
    assert [phase for phase, _ in seen] == [1, 1, 2, 2]
    assert model.stop_training
    assert "did not run" in cb.phase3_reason and "0.30 points" in cb.phase3_reason
    assert [p["phase"] for p in cb.phases] == [1, 2]


def test_phase1_ends_at_target_accuracy():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=10, target_accuracy=0.85), steps_per_epoch=2, verbose=False)
    seen, _ = _drive(cb, [0.5, 0.86, 0.86, 0.86, 0.9])
    assert [phase for phase, _ in seen] == [1, 1, 2, 2]
    assert cb.phases[0]["ended_because"] == "target accuracy reached"


def _lr_per_step(callback, accuracies, steps):
    """Runs one epoch per validation accuracy; returns the LR of every step, each epoch's phase and the model."""
    model = _FakeModel()
    callback.set_model(model)
    lrs, phases = [], []
    for epoch, accuracy in enumerate(accuracies):
        callback.on_epoch_begin(epoch)
        for batch in range(steps):
            callback.on_train_batch_begin(batch)
            lrs.append(float(model.optimizer.learning_rate.numpy()))
        logs = {"val_accuracy": accuracy}
        callback.on_epoch_end(epoch, logs)
        phases.append(logs["phase"])
    return lrs, phases, model


def test_learning_rate_is_cosine_within_each_phase():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=2, phase2_epochs=1, phase3_epochs=0), steps_per_epoch=4, verbose=False)
    lrs, _, _ = _lr_per_step(cb, [0.5] * 3, steps=4)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    expected += [0.01 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_one_cosine_across_phases_continues_the_baselines_decay():
    # A run started at epoch 2 of a 5-epoch cosine: phases of 1/1/1 epochs,
    # phase II ends with a loss, so phase III runs; no phase restarts the LR.
    schedule = _schedule(phase1_epochs=1, phase2_epochs=1, phase3_epochs=1, restore_threshold=0.0,
                         cosine_epochs=5, cosine_start_epoch=2)
    cb = callbacks.AlphaPhases(schedule, steps_per_epoch=4, verbose=False)
    lrs, phases, model = _lr_per_step(cb, [0.9, 0.8, 0.8], steps=4)
    assert phases == [1, 2, 3] and model.stop_training
    baseline = [0.1 * 0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(20)]
    np.testing.assert_allclose(lrs, baseline[8:], rtol=1e-6)


def test_a_baseline_can_continue_a_cosine_too():
    cb = callbacks.ConstantSchedule(epochs=2, lr=0.1, steps_per_epoch=2, cosine_epochs=4, cosine_start_epoch=2,
                                    verbose=False)
    lrs, _, _ = _lr_per_step(cb, [0.5] * 2, steps=2)
    np.testing.assert_allclose(lrs, [0.1 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(4, 8)], rtol=1e-6)


def test_state_round_trip_resumes_in_the_right_phase():
    first = callbacks.AlphaPhases(_schedule(), steps_per_epoch=2, verbose=False)
    _drive(first, [0.8, 0.9, 0.7])
    state = first.get_state()
    second = callbacks.AlphaPhases(_schedule(), steps_per_epoch=2, verbose=False)
    second.set_state(state)
    model = _FakeModel()
    second.set_model(model)
    second.on_epoch_begin(3)
    assert float(model.alpha.numpy()) == pytest.approx(0.9)
    assert second.phase == 2 and second.phase_start_epoch == 2


def test_constant_schedule_for_baselines():
    cb = callbacks.ConstantSchedule(epochs=3, lr=0.1, steps_per_epoch=2, verbose=False)
    seen, model = _drive(cb, [0.1, 0.2, 0.3, 0.4])
    assert seen == [(1, 0.0)] * 3 and model.stop_training
    assert cb.phase3_reason is None


@pytest.mark.parametrize("kwargs, needle", [
    ({"alpha2": -1.0}, "alpha2"),
    ({"phase1_epochs": 0}, "phase1_epochs"),
    ({"lr1": float("nan")}, "lr1"),
    ({"target_accuracy": 90.0}, "target_accuracy"),
    ({"phase3_epochs": -2}, "phase3_epochs"),
    ({"cosine_epochs": 5, "cosine_start_epoch": 5}, "cosine_start_epoch"),
    ({"cosine_epochs": 1.5}, "cosine_epochs"),
    ({"reinforce_phases": (4,)}, "reinforce_phases"),
    ({"reinforce_phases": (2, 2)}, "reinforce_phases"),
    ({"reinforce_phases": (2,), "policy_weight": 0.0}, "policy_weight must be > 0"),
    ({"exploration": 1.5}, "exploration"),
    ({"batch_shaping_weight": -0.1}, "batch_shaping_weight"),
    ({"energy_warmup_epochs": -1}, "energy_warmup_epochs"),
    ({"reinforce_temperature": 0.0}, "reinforce_temperature"),
    ({"batch_shaping_phases": (0,)}, "batch_shaping_phases"),
    ({"batch_shaping_phases": [1, 1]}, "batch_shaping_phases"),
])
def test_bad_schedules(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        callbacks.PhaseSchedule(**kwargs)


def test_nan_guard_stops_training():
    guard = callbacks.NonFiniteLossGuard()
    model = _FakeModel()
    guard.set_model(model)
    guard.on_epoch_begin(4)
    guard.on_train_batch_end(0, {"loss": 1.0})
    assert not guard.tripped
    guard.on_train_batch_end(1, {"loss": float("nan")})
    assert guard.tripped and model.stop_training and (guard.bad_epoch, guard.bad_batch) == (4, 1)


def test_gate_warmup_forces_blocks_open_in_the_first_epochs_of_phase1():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=3, gate_warmup_epochs=2), steps_per_epoch=2, verbose=False)
    model = _FakeModel()
    cb.set_model(model)
    forced = []
    for epoch in range(5):
        cb.on_epoch_begin(epoch)
        forced.append(float(model.gates_forced_open.numpy()))
        cb.on_epoch_end(epoch, {"val_accuracy": 0.5})
    assert forced == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_gate_warmup_freezes_the_gates_then_uses_the_schedules_gate_learning_rate():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=3, gate_warmup_epochs=2, gate_lr_multiplier=4.0),
                               steps_per_epoch=2, verbose=False)
    model = _FakeModel()
    cb.set_model(model)
    multipliers, logged = [], []
    for epoch in range(5):
        cb.on_epoch_begin(epoch)
        multipliers.append(float(model.gate_lr_multiplier.numpy()))
        logs = {"val_accuracy": 0.5}
        cb.on_epoch_end(epoch, logs)
        logged.append(logs["gate_lr_multiplier"])
    assert multipliers == [0.0, 0.0, 4.0, 4.0, 4.0]
    assert logged == multipliers


def test_phase3_gate_multiplier_applies_in_phase3_only():
    # Phase II loses 10 points, so phase III runs; its gates are frozen.
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=1, phase2_epochs=1, phase3_epochs=2, gate_lr_multiplier=10.0,
                                         phase3_gate_lr_multiplier=0.0), steps_per_epoch=2, verbose=False)
    model = _FakeModel()
    cb.set_model(model)
    multipliers = []
    for epoch, accuracy in enumerate([0.9, 0.8, 0.85, 0.86]):
        cb.on_epoch_begin(epoch)
        multipliers.append(float(model.gate_lr_multiplier.numpy()))
        cb.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert multipliers == [10.0, 10.0, 0.0, 0.0]


def test_phase3_gate_multiplier_unset_keeps_the_gates_rate():
    schedule = _schedule(gate_lr_multiplier=3.0)
    assert [schedule.gate_multiplier(p) for p in (1, 2, 3)] == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("value", [-1.0, float("nan"), True])
def test_phase3_gate_multiplier_rejects_bad_values(value):
    with pytest.raises(ValueError, match="phase3_gate_lr_multiplier"):
        _schedule(phase3_gate_lr_multiplier=value)


def test_alpha_ramps_linearly_through_phase2_per_step():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=1, phase2_epochs=3, alpha_ramp_epochs=2, alpha1=0.1,
                                         alpha2=0.5), steps_per_epoch=4, verbose=False)
    model = _FakeModel()
    cb.set_model(model)
    alphas = []
    for epoch in range(4):
        cb.on_epoch_begin(epoch)
        for batch in range(4):
            cb.on_train_batch_begin(batch)
            alphas.append(round(float(model.alpha.numpy()), 6))
        cb.on_epoch_end(epoch, {"val_accuracy": 0.5})
    assert alphas[:4] == [0.1] * 4
    assert alphas[4:12] == [round(0.1 + 0.4 * i / 8, 6) for i in range(8)]
    assert alphas[12:] == [0.5] * 4
    assert cb.phases[1]["alpha"] == 0.5


def test_phase3_test_with_standard_errors_ignores_noise_but_not_real_losses():
    # 5,000 validation images at 90%: one standard error of the difference is 0.6 points.
    noisy = callbacks.AlphaPhases(_schedule(restore_threshold=0.1, restore_z=1.0), steps_per_epoch=2,
                                  verbose=False, validation_examples=5000)
    seen, _ = _drive(noisy, [0.85, 0.90, 0.89, 0.895, 0.5])
    assert [phase for phase, _ in seen] == [1, 1, 2, 2]
    assert "did not run" in noisy.phase3_reason and "standard error on 5000 images" in noisy.phase3_reason
    real = callbacks.AlphaPhases(_schedule(restore_threshold=0.1, restore_z=1.0), steps_per_epoch=2,
                                 verbose=False, validation_examples=5000)
    seen, _ = _drive(real, [0.85, 0.90, 0.88, 0.88, 0.9])
    assert [phase for phase, _ in seen] == [1, 1, 2, 2, 3]
    assert "phase III ran" in real.phase3_reason and "2.00 points" in real.phase3_reason


def test_phase3_test_with_standard_errors_needs_the_validation_size():
    with pytest.raises(ValueError, match="validation_examples"):
        callbacks.AlphaPhases(_schedule(restore_z=1.0), steps_per_epoch=2)


def test_reinforcement_phases_set_the_policy_weight_and_batch_shaping_every_epoch():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=2, phase2_epochs=2, phase3_epochs=1, reinforce_phases=(2, 3),
                                         policy_weight=0.02, exploration=0.3, batch_shaping_weight=0.5),
                               steps_per_epoch=2, verbose=False)
    model = _FakeModel()
    cb.set_model(model)
    weights, logged = [], []
    for epoch, accuracy in enumerate([0.8, 0.8, 0.5, 0.5, 0.7]):
        cb.on_epoch_begin(epoch)
        weights.append((float(model.policy_weight.numpy()), float(model.exploration.numpy()),
                        float(model.batch_shaping_weight.numpy())))
        logs = {"val_accuracy": accuracy}
        cb.on_epoch_end(epoch, logs)
        logged.append(logs["policy_weight"])
    assert [w[0] for w in weights] == pytest.approx([0.0, 0.0, 0.02, 0.02, 0.02])
    assert logged == pytest.approx([0.0, 0.0, 0.02, 0.02, 0.02])
    assert all(w[1] == pytest.approx(0.3) and w[2] == 0.5 for w in weights)


def test_batch_shaping_applies_only_in_its_phases():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=2, phase2_epochs=1, phase3_epochs=1, batch_shaping_weight=0.5,
                                         batch_shaping_phases=[1], restore_threshold=0.0),
                               steps_per_epoch=2, verbose=False)
    model = _FakeModel()
    cb.set_model(model)
    weights = []
    # Phase II loses accuracy, so phase III runs too.
    for epoch, accuracy in enumerate([0.8, 0.8, 0.5, 0.7]):
        cb.on_epoch_begin(epoch)
        weights.append(float(model.batch_shaping_weight.numpy()))
        cb.on_epoch_end(epoch, {"val_accuracy": accuracy})
    assert weights == [0.5, 0.5, 0.0, 0.0]
    assert cb.schedule.batch_shaping_phases == (1,)


def test_energy_warmup_holds_alpha_at_zero_in_the_first_epochs_of_phase1():
    cb = callbacks.AlphaPhases(_schedule(phase1_epochs=3, energy_warmup_epochs=2, alpha1=0.1), steps_per_epoch=2,
                               verbose=False)
    seen, _ = _drive(cb, [0.5] * 6)
    assert [a for _, a in seen[:4]] == [0.0, 0.0, 0.1, 0.9]


# -- the phase III test under one decay ------------------------------------------------------------

def _one_decay(tmp_path, baseline_curve, **kwargs):
    import json

    run = tmp_path / "baseline"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"history": [{"val_accuracy": a} for a in baseline_curve]}))
    return _schedule(phase1_epochs=2, phase2_epochs=2, phase3_epochs=2, cosine_epochs=6, lr1=0.1,
                     restore_reference=str(run), **kwargs)


def test_one_decay_runs_phase3_when_phase2_is_below_the_baseline_at_the_same_epoch(tmp_path):
    # Phase II ends at epoch 4 of the decay: 0.85 there against the baseline's 0.88 there (not phase I's 0.80).
    schedule = _one_decay(tmp_path, [0.5, 0.7, 0.8, 0.88, 0.9, 0.91])
    cb = callbacks.AlphaPhases(schedule, steps_per_epoch=2, verbose=False)
    seen, model = _drive(cb, [0.70, 0.80, 0.84, 0.85, 0.86, 0.87, 0.0])
    assert [phase for phase, _ in seen] == [1, 1, 2, 2, 3, 3]
    assert "phase III ran" in cb.phase3_reason and "3.00 points below the baseline at epoch 4" in cb.phase3_reason
    assert [p["epochs"] for p in cb.phases] == [2, 2, 2] and model.stop_training


def test_one_decay_goes_on_in_phase2_to_the_end_of_the_budget_when_it_kept_the_baselines_accuracy(tmp_path):
    schedule = _one_decay(tmp_path, [0.5, 0.7, 0.8, 0.85, 0.9, 0.91])
    cb = callbacks.AlphaPhases(schedule, steps_per_epoch=2, verbose=False)
    seen, model = _drive(cb, [0.70, 0.80, 0.84, 0.8495, 0.86, 0.87, 0.0])
    # Every epoch of the budget runs, at alpha2 after phase I: the learning rate reaches 0 at the last.
    assert seen == [(1, 0.1), (1, 0.1), (2, 0.9), (2, 0.9), (2, 0.9), (2, 0.9)]
    assert "phase III did not run" in cb.phase3_reason and "goes on at alpha2 for the 2 epochs left" in cb.phase3_reason
    assert [(p["phase"], p["epochs"]) for p in cb.phases] == [(1, 2), (2, 4)]
    assert cb.phases[1]["val_accuracy"] == pytest.approx(0.87) and model.stop_training
    assert schedule.learning_rate(2, 3.999, 5.999) < 1e-6


def test_one_decay_state_round_trips_inside_the_extended_phase2(tmp_path):
    schedule = _one_decay(tmp_path, [0.5, 0.7, 0.8, 0.85, 0.9, 0.91])
    cb = callbacks.AlphaPhases(schedule, steps_per_epoch=2, verbose=False)
    _drive(cb, [0.70, 0.80, 0.84, 0.8495])
    resumed = callbacks.AlphaPhases(schedule, steps_per_epoch=2, verbose=False)
    resumed.set_state(cb.get_state())
    assert resumed.phase == 2 and resumed.phase2_extended


def test_one_decay_without_a_readable_reference_compares_with_phase1_and_says_why(tmp_path):
    schedule = _schedule(phase1_epochs=2, phase2_epochs=2, phase3_epochs=2, cosine_epochs=6,
                         restore_reference=str(tmp_path / "missing"))
    cb = callbacks.AlphaPhases(schedule, steps_per_epoch=2, verbose=False)
    seen, _ = _drive(cb, [0.70, 0.80, 0.84, 0.85, 0.86, 0.87])
    assert len(seen) == 6  # still the whole budget
    assert "below phase I" in cb.phase3_reason and "gave no val_accuracy at epoch 4" in cb.phase3_reason


def test_a_reference_needs_one_decay():
    with pytest.raises(ValueError, match="restore_reference is for one decay"):
        _schedule(restore_reference="runs/baseline")
