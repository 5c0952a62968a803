"""Tests of tools/gate_diagnostics.py."""

import numpy as np
import pytest

from energynet_tf.model import EnergyNet
from tools import gate_diagnostics


def _batches(n=12):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(n, 32, 32, 3)).astype("float32"), rng.integers(0, 10, n))]


@pytest.mark.parametrize("bias, skip, distance", [(5.0, 0.0, None), (-5.0, 1.0, None), (0.0, None, 0.0)])
def test_statistics_follow_the_gates(bias, skip, distance):
    model = EnergyNet(depth=8, gate_noise=1.0)
    kernel = model.gate.output_dense.kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    model.gate.output_dense.bias.assign([bias])
    stats = gate_diagnostics.gate_statistics(model, _batches())
    for mode in ("inference", "training"):
        s = stats[mode]
        assert len(s["skip_ratio_per_block"]) == 2
        if skip is not None:
            assert s["skip_ratio_per_block"] == [skip, skip]
        if distance is not None:
            # p = sigmoid(0) = 0.5 everywhere: on the threshold.
            assert s["mean_distance_from_threshold"] == pytest.approx(distance, abs=1e-6)
            assert s["share_between_0.3_and_0.7"] == 1.0
    # The model's training noise is left as it was.
    assert float(model.gate_noise.numpy()) == 1.0
