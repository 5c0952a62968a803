"""Tests of energynet_tf.evaluation: per-image summaries, thresholds and the sweep."""

import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import evaluation
from energynet_tf.model import EnergyNet


def test_summary_of_two_images_with_different_paths_matches_hand_computation():
    decisions = np.array([[1, 0, 1], [1, 1, 1]], np.uint8)
    labels = np.array([0, 2])
    energy = np.array([0.4, 0.8])
    s = evaluation.summarise(decisions, labels, energy, num_classes=3)
    assert s["distinct_paths"] == 2
    e = s["per_image_energy"]
    assert e["mean"] == pytest.approx(0.6)
    assert e["std"] == pytest.approx(0.2)  # population std of {0.4, 0.8}
    assert e["min"] == pytest.approx(0.4) and e["max"] == pytest.approx(0.8)
    assert e["p50"] == pytest.approx(0.6)
    assert e["p10"] == pytest.approx(0.44) and e["p90"] == pytest.approx(0.76)
    # Block 2 is skipped by one image of two: ratio 0.5, selective; blocks 1 and 3 never.
    assert s["selective_blocks"] == [2]
    assert s["savings_by_class"] == [pytest.approx(0.6), None, pytest.approx(0.2)]
    assert s["skip_ratio_by_class"][0] == [0.0, 1.0, 0.0]
    assert s["skip_ratio_by_class"][1] is None


def test_a_static_pattern_has_one_path_no_selective_block_and_zero_spread():
    decisions = np.tile(np.array([[1, 0, 0, 1]], np.uint8), (50, 1))
    s = evaluation.summarise(decisions, np.arange(50) % 10, np.full(50, 0.45), num_classes=10)
    assert s["distinct_paths"] == 1
    assert s["selective_blocks"] == []
    assert s["per_image_energy"]["std"] == pytest.approx(0.0, abs=1e-12)


def test_selective_range_edges():
    # Skip ratios 0.04, 0.05, 0.95, 0.96 over 100 images.
    decisions = np.ones((100, 4), np.uint8)
    for gate, skipped in enumerate((4, 5, 95, 96)):
        decisions[:skipped, gate] = 0
    s = evaluation.summarise(decisions, np.zeros(100, int), np.ones(100), num_classes=1)
    assert s["selective_blocks"] == [2, 3]


def test_summary_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="same images"):
        evaluation.summarise(np.ones((3, 2)), np.zeros(2), np.ones(3), num_classes=2)
    with pytest.raises(ValueError, match="no images"):
        evaluation.summarise(np.ones((0, 2)), np.zeros(0), np.ones(0), num_classes=2)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, "0.5", True, None])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="threshold"):
        evaluation.check_threshold(bad)


def _programmed_model():
    """EnergyNet-8 whose two gates open iff channel 0 of their block input's mean is > 0.

    Gate probabilities then spread over (0, 1), so thresholds matter.
    """
    keras_seed = 3
    tf.random.set_seed(keras_seed)
    model = EnergyNet(depth=8, num_classes=3)
    model.gate.program_sign_policy(margin=2.0)
    for i in range(model.num_gates):
        model.gate.program_projection(i, channel=0)
    return model


def _dataset(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_collect_matches_forward_at_any_threshold():
    model = _programmed_model()
    data = _dataset()
    x = np.concatenate([b for b, _ in data])
    for t in (0.2, 0.5, 0.8):
        arrays = evaluation.collect(model, data, threshold=t)
        out = model.forward(x, threshold=t)
        np.testing.assert_array_equal(arrays["decisions"], np.asarray(out["decisions"]).astype(np.uint8))
        np.testing.assert_array_equal(arrays["predictions"], np.argmax(np.asarray(out["logits"]), axis=-1))
        np.testing.assert_allclose(arrays["energy"], np.asarray(model.inference_energy(out["decisions"])), rtol=1e-6)
        p = np.asarray(out["probabilities"], np.float64)
        np.testing.assert_allclose(arrays["gate_logits"], np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)


def test_a_lower_threshold_runs_more_blocks_and_the_sweep_is_monotone():
    model = _programmed_model()
    data = _dataset(48)
    rows = evaluation.threshold_sweep(model, data, thresholds=[0.05, 0.5, 0.95])
    assert [r["threshold"] for r in rows] == [0.05, 0.5, 0.95]
    savings = [r["energy_savings"] for r in rows]
    assert savings[0] <= savings[1] <= savings[2]
    assert savings[0] < savings[2]  # the programmed gates are not saturated at margin 2
    for r in rows:
        assert set(r) == {"threshold", "accuracy", "energy_savings", "distinct_paths", "selective_blocks"}


def test_forward_refuses_a_threshold_outside_the_unit_interval():
    model = EnergyNet(depth=8)
    with pytest.raises(ValueError, match="threshold"):
        model.forward(np.zeros((1, 32, 32, 3), "float32"), threshold=1.0)


def test_evaluate_of_a_baseline_with_removed_blocks():
    model = EnergyNet(depth=14, baseline=True, removed_blocks=[2, 4])
    summary, arrays = evaluation.evaluate(model, _dataset(16))
    assert summary["distinct_paths"] == 1
    assert summary["selective_blocks"] == []
    np.testing.assert_array_equal(arrays["decisions"][0], [1, 0, 1, 0, 1])
    table = model.energy_table
    kept = table.fixed_energy + sum(e for i, e in enumerate(table.block_energy) if i not in (1, 3))
    assert summary["per_image_energy"]["mean"] == pytest.approx(kept / table.total_energy, rel=1e-6)
    assert summary["energy_savings"] == pytest.approx(1 - kept / table.total_energy, rel=1e-5)


def test_shuffle_control_runs_each_image_on_the_path_the_permutation_deals_it():
    model = _programmed_model()
    data = _dataset(48)
    x = np.concatenate([b for b, _ in data])
    # At the median of gate 1's probabilities, half the images run block 1 and half skip it.
    threshold = float(np.median(np.asarray(model.forward(x)["probabilities"])[:, 0]))
    arrays = evaluation.collect(model, data, threshold=threshold)
    assert len(np.unique(arrays["decisions"], axis=0)) > 1
    seen = []
    control = evaluation.shuffle_control(model, data, arrays, rounds=3, seed=7,
                                         progress=lambda k, n, a: seen.append((k, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    rng = np.random.default_rng(7)
    expected = []
    for _ in range(3):
        dealt = arrays["decisions"][rng.permutation(48)].astype("float32")
        logits = model.forward(x, gate_override=dealt)["logits"]
        expected.append(float((np.argmax(np.asarray(logits), -1) == arrays["labels"]).mean()))
    assert control["shuffled_accuracy"] == pytest.approx(expected)
    assert control["accuracy"] == pytest.approx((arrays["predictions"] == arrays["labels"]).mean())
    assert control["decision_value_points"] == pytest.approx(100 * (control["accuracy"] - np.mean(expected)))
    assert control["examples"] == 48 and control["rounds"] == 3


def test_shuffle_control_of_a_static_pattern_is_worth_nothing():
    model = _programmed_model()
    data = _dataset(24)
    arrays = evaluation.collect(model, data)
    arrays["decisions"][:] = [1, 0]
    x = np.concatenate([b for b, _ in data])
    arrays["predictions"] = np.argmax(np.asarray(model.forward(x, gate_override=[1.0, 0.0])["logits"]), -1)
    control = evaluation.shuffle_control(model, data, arrays, rounds=2)
    assert control["decision_value_points"] == 0.0 and control["shuffled_std"] == 0.0


def test_deal_paths_within_class_keeps_every_image_in_its_class():
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    order = evaluation.deal_paths(np.random.default_rng(0), labels, within_class=True)
    assert sorted(order) == list(range(10))
    np.testing.assert_array_equal(labels[order], labels)
    assert not np.array_equal(order, np.arange(10))  # seed 0 does move images
    # Without the class, the deal is numpy's permutation of the same stream.
    np.testing.assert_array_equal(evaluation.deal_paths(np.random.default_rng(3), labels),
                                  np.random.default_rng(3).permutation(10))


def test_shuffle_within_class_of_paths_set_by_the_class_is_worth_nothing_beyond_it():
    model = _programmed_model()
    data = _dataset(48)
    x = np.concatenate([b for b, _ in data])
    arrays = evaluation.collect(model, data)
    # Each class has its own path: the choice is all class, nothing beyond it.
    by_class = np.array([[1, 0], [0, 1], [1, 1]], np.uint8)
    arrays["decisions"] = by_class[arrays["labels"]]
    logits = model.forward(x, gate_override=arrays["decisions"].astype("float32"))["logits"]
    arrays["predictions"] = np.argmax(np.asarray(logits), -1)
    within = evaluation.shuffle_control(model, data, arrays, rounds=2, within_class=True)
    assert within["within_class"] is True
    assert within["decision_value_points"] == 0.0 and within["shuffled_std"] == 0.0
    across = evaluation.shuffle_control(model, data, arrays, rounds=2, seed=1)
    assert across["within_class"] is False
    rng = np.random.default_rng(1)
    expected = []
    for _ in range(2):
        dealt = arrays["decisions"][rng.permutation(48)].astype("float32")
        expected.append(float((np.argmax(np.asarray(model.forward(x, gate_override=dealt)["logits"]), -1)
                               == arrays["labels"]).mean()))
    assert across["shuffled_accuracy"] == pytest.approx(expected)
    assert across["shuffled_accuracy"] != [across["accuracy"]] * 2  # across classes the paths do change answers


def test_shuffle_control_refuses_a_dataset_in_another_order_and_bad_arguments():
    model = _programmed_model()
    data = _dataset(24)
    arrays = evaluation.collect(model, data)
    reordered = data.unbatch().skip(1).concatenate(data.unbatch().take(1)).batch(8)
    with pytest.raises(ValueError, match="same order"):
        evaluation.shuffle_control(model, reordered, arrays, rounds=1)
    with pytest.raises(ValueError, match="ended after 16"):
        evaluation.shuffle_control(model, data.take(2), arrays, rounds=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`rounds`"):
            evaluation.shuffle_control(model, data, arrays, rounds=bad)
    with pytest.raises(ValueError, match="must have gates"):
        evaluation.shuffle_control(EnergyNet(depth=8, baseline=True), data, arrays, rounds=1)
    with pytest.raises(ValueError, match="must have gates"):
        evaluation.shuffle_control(EnergyNet(depth=8, baseline=True, removed_blocks=[2]), data, arrays, rounds=1)
