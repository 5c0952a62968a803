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
