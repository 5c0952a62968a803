"""Tests of trainers/common.py helpers that need no subprocess."""

import json

import keras
import numpy as np
import pytest

from energynet_tf.model import EnergyNet
from trainers import common


def test_init_from_baseline_copies_the_backbone(tmp_path):
    keras.utils.set_random_seed(0)
    baseline = EnergyNet(depth=8, baseline=True)
    for v in baseline.weights:
        if v.trainable:
            v.assign(np.random.default_rng(1).normal(size=v.shape).astype("float32"))
    baseline.save(tmp_path / "model.keras")
    gated = EnergyNet(depth=8)
    gate_before = [w.numpy().copy() for w in gated.gate.weights]
    common.init_from_baseline(gated, str(tmp_path))
    for name in ["stem_conv", "stem_bn", "classifier", "block00", "block01", "block02"]:
        for a, b in zip(gated.get_layer(name).weights, baseline.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(gated.gate.weights, gate_before):
        np.testing.assert_array_equal(a.numpy(), b)
    # With every gate forced open, the gated network computes the baseline.
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    opened = gated.forward(x, gate_override=np.ones(gated.num_gates, "float32"))["logits"]
    np.testing.assert_allclose(opened.numpy(), baseline(x).numpy(), rtol=1e-5, atol=1e-5)


def test_init_from_a_model_of_another_shape_is_refused(tmp_path):
    EnergyNet(depth=14, baseline=True).save(tmp_path / "m.keras")
    with pytest.raises(common.UsageError, match="depth-14"):
        common.init_from_baseline(EnergyNet(depth=8), str(tmp_path / "m.keras"))


def test_check_run_dir_names_the_differing_setting(tmp_path):
    config = {"model_dir": str(tmp_path), "depth": 8, "seed": 0}
    (tmp_path / "config.json").write_text(json.dumps(dict(config, seed=3)))
    with pytest.raises(common.UsageError, match=r"seed=3.*seed=0"):
        common.check_run_dir(config)
    # Where the data lives may change between a run and its resumption.
    (tmp_path / "config.json").write_text(json.dumps(dict(config, data_dir="/elsewhere")))
    common.check_run_dir(dict(config, data_dir="/here"))


def test_run_directories_from_before_added_settings_still_resume(tmp_path):
    config = {"model_dir": str(tmp_path), "depth": 8, "phase3_gate_lr_multiplier": None,
              "decoupled_weight_decay": 0.0}
    (tmp_path / "config.json").write_text(json.dumps({"model_dir": str(tmp_path), "depth": 8}))
    common.check_run_dir(config)
    with pytest.raises(common.UsageError, match="decoupled_weight_decay=0.0.*0.0001"):
        common.check_run_dir(dict(config, decoupled_weight_decay=1e-4))


def test_main_guard_keeps_the_traceback_of_anything_but_the_projects_errors(capsys):
    def bug():
        raise ValueError("a bug, not bad input")

    with pytest.raises(ValueError, match="a bug"):
        common.main_guard(bug)

    def bad_input():
        raise common.UsageError("--depth=21 is not supported")

    with pytest.raises(SystemExit) as exit_info:
        common.main_guard(bad_input)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --depth=21 is not supported"


def test_values_the_library_refuses_at_the_input_boundary_are_usage_errors():
    config = {"phase1_epochs": 1, "phase2_epochs": 1, "phase3_epochs": 0, "alpha1": 0.1, "alpha2": 0.9,
              "alpha3": 0.1, "lr1": 0.1, "lr2": 0.01, "lr3": 0.001, "restore_threshold": 0.1,
              "target_accuracy": None, "warmup_epochs": 0, "gate_warmup_epochs": 0, "phase3_gate_lr_multiplier": -1.0}
    with pytest.raises(common.UsageError, match="the phase schedule: PhaseSchedule.phase3_gate_lr_multiplier"):
        common.phase_schedule(config)
