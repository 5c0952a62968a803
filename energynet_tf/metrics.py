"""Energy and gate metrics of EnergyNet (docs/design.md §1.3)."""

import keras
import numpy as np
from keras import ops

def _column(values):
    return ops.convert_to_tensor(np.asarray(values, np.float32).reshape(-1, 1))


def normalised_energy(table, decisions, include_gates=True):
    """Per-example energy over E_total: THE energy formula (the model, its metrics and the export use it).

    Args:
        table: an `energy.EnergyTable`.
        decisions: `(batch, num_gates)` block masks: 0/1 decisions, or gate
            probabilities for the expected energy (differentiable in them).
        include_gates: charge the gates' own energy E_gates (inference
            energy); the loss's expected energy leaves it out (a constant).

    Returns:
        A `(batch,)` tensor `(E_fixed [+ E_gates] + sum_b m_b E_b) / E_total`.
    """
    decisions = ops.cast(decisions, "float32")
    always = table.fixed_energy + (table.gate_energy if include_gates else 0.0)
    spent = always + ops.matmul(decisions, _column(table.block_energy))[:, 0]
    return spent / table.total_energy


def normalised_macs(table, decisions):
    """Per-example MACs with hard decisions, gates included, over the baseline's MACs."""
    decisions = ops.cast(decisions, "float32")
    spent = table.fixed_macs + table.gate_macs + ops.matmul(decisions, _column(table.block_macs))[:, 0]
    return spent / table.total_macs


def block_energy_savings(table, decisions):
    """Per-example share of the gated blocks' energy that skipping removed.

    This is the ratio the authors' code printed: `sum_b (1 - m_b) E_b / sum_b E_b`.
    """
    decisions = ops.cast(decisions, "float32")
    block = _column(table.block_energy)
    total = float(np.sum(table.block_energy))
    if total == 0.0:
        return ops.zeros((ops.shape(decisions)[0],), "float32")
    return ops.matmul(1.0 - decisions, block)[:, 0] / total


class EnergyMetrics(keras.metrics.Metric):
    """Running means of the energy quantities over the examples seen.

    `result()` returns a dict: `energy` (normalised inference energy, hard
    decisions, gates included), `energy_savings` (1 - energy, the paper's
    E_s / E_total), `block_energy_savings` (the authors' block-only ratio),
    `mac_savings` (the same as energy savings, for MACs) and
    `expected_energy` (the soft, differentiable term of the loss).

    Args:
        table: the model's `energy.EnergyTable`.
        name: metric name.
    """

    _KEYS = ("energy", "energy_savings", "block_energy_savings", "mac_savings", "expected_energy")

    def __init__(self, table, name="energy_metrics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.table = table
        self.sums = self.add_variable(shape=(len(self._KEYS),), initializer="zeros", name="sums")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, decisions, probabilities):
        table = self.table
        energy = normalised_energy(table, decisions)
        decisions_f = ops.cast(decisions, "float32")
        probabilities = ops.cast(probabilities, "float32")
        expected = normalised_energy(table, probabilities, include_gates=False)
        values = ops.stack(
            [
                ops.sum(energy),
                ops.sum(1.0 - energy),
                ops.sum(block_energy_savings(table, decisions_f)),
                ops.sum(1.0 - normalised_macs(table, decisions_f)),
                ops.sum(expected),
            ]
        )
        self.sums.assign_add(values)
        self.count.assign_add(ops.cast(ops.shape(decisions)[0], "float32"))

    def result(self):
        means = self.sums / ops.maximum(self.count, 1.0)
        return {key: means[i] for i, key in enumerate(self._KEYS)}

    def reset_state(self):
        self.sums.assign(ops.zeros_like(self.sums))
        self.count.assign(0.0)


class SkipRatios(keras.metrics.Metric):
    """Fraction of examples for which each gated block was skipped.

    `result()` returns a dict `skip_01 ... skip_NN` (gate i decides block i).

    Args:
        num_gates: number of gates.
        name: metric name.
    """

    def __init__(self, num_gates, name="skip_ratios", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_gates = num_gates
        self.skipped = self.add_variable(shape=(max(num_gates, 1),), initializer="zeros", name="skipped")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, decisions):
        if self.num_gates == 0:
            return
        skipped = ops.sum(1.0 - ops.cast(decisions, "float32"), axis=0)
        self.skipped.assign_add(skipped)
        self.count.assign_add(ops.cast(ops.shape(decisions)[0], "float32"))

    def result(self):
        ratios = self.skipped / ops.maximum(self.count, 1.0)
        return {skip_key(i): ratios[i] for i in range(self.num_gates)}

    def reset_state(self):
        self.skipped.assign(ops.zeros_like(self.skipped))
        self.count.assign(0.0)


def skip_key(gate_index):
    """Log key of gate `gate_index`'s skip ratio; gate i decides block i + 1."""
    return f"skip_{gate_index + 1:02d}"


def skip_ratios_from_logs(logs, num_gates):
    """Collects the per-block skip ratios of `logs` into a list, in gate order."""
    return [float(logs[skip_key(i)]) for i in range(num_gates) if skip_key(i) in logs]
