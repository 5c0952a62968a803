"""Tests of energynet_tf/metrics.py: the one energy formula and the metrics built on it."""

import numpy as np
import pytest

from energynet_tf import metrics
from energynet_tf.energy import EnergyTable

# E_total = 10 + 20 + 30 + 40 = 100.
TABLE = EnergyTable(block_energy=(20.0, 30.0, 40.0), fixed_energy=10.0, gate_energy=1.0,
                    block_macs=(2.0, 3.0, 4.0), fixed_macs=1.0, gate_macs=0.5)


def test_normalised_energy_golden_values():
    decisions = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1]], "float32")
    np.testing.assert_array_equal(metrics.normalised_energy(TABLE, decisions).numpy(),
                                  np.float32([101, 11, 71]) / np.float32(100))
    # The loss's expected energy: soft masks, without the gates' constant cost.
    probabilities = np.array([[0.5, 0.5, 0.5]], "float32")
    np.testing.assert_allclose(metrics.normalised_energy(TABLE, probabilities, include_gates=False).numpy(),
                               [(10 + 45) / 100])


def test_savings_metrics_follow_the_formula():
    decisions = np.array([[1, 0, 1], [0, 0, 0]], "float32")
    m = metrics.EnergyMetrics(TABLE)
    m.update_state(decisions, decisions)
    result = {k: float(v) for k, v in m.result().items()}
    assert result["energy"] == pytest.approx((0.71 + 0.11) / 2)
    assert result["energy_savings"] == pytest.approx(1 - (0.71 + 0.11) / 2)
    assert result["expected_energy"] == pytest.approx((0.70 + 0.10) / 2)
    assert result["block_energy_savings"] == pytest.approx((30 / 90 + 1.0) / 2)
    assert result["mac_savings"] == pytest.approx(1 - ((1 + 0.5 + 6) / 10 + 1.5 / 10) / 2)


def test_the_model_and_its_export_use_the_same_formula():
    import keras

    from energynet_tf import export
    from energynet_tf.model import EnergyNet

    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8)
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    out = model.forward(images)
    np.testing.assert_array_equal(model.inference_energy(out["decisions"]).numpy(),
                                  metrics.normalised_energy(model.energy_table, out["decisions"]).numpy())
    np.testing.assert_array_equal(model.expected_energy(out["probabilities"]).numpy(),
                                  metrics.normalised_energy(model.energy_table, out["probabilities"],
                                                            include_gates=False).numpy())
    import tensorflow as tf

    served = tf.function(export.serving_function(model))(tf.constant(images))
    np.testing.assert_array_equal(served["energy"].numpy(),
                                  metrics.normalised_energy(model.energy_table, served["decisions"]).numpy())


def test_a_baseline_spends_its_fixed_energy_only():
    table = EnergyTable(block_energy=(), fixed_energy=5.0, gate_energy=0.0, block_macs=(), fixed_macs=1.0,
                        gate_macs=0.0)
    np.testing.assert_array_equal(metrics.normalised_energy(table, np.zeros((2, 0), "float32")).numpy(), [1.0, 1.0])
