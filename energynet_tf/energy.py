"""The EnergyNet energy table: E_b per gated block, E_fixed, E_gates, E_total (docs/design.md §1.3)."""

import dataclasses
import math

import numpy as np

from energynet_tf import systolic
from energynet_tf import topology


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One counted layer of the network.

    Attributes:
        shape: the layer as SCALE-Sim sees it.
        group: "fixed" (always runs), "block" (removed when its gate closes)
            or "gate" (the gates' own layers).
        block: index of the gated block for group "block", else -1.
        energy: the layer's energy, in units of one MAC's energy.
        macs: the layer's multiply-accumulates.
    """

    shape: object
    group: str
    block: int
    energy: float
    macs: float


@dataclasses.dataclass(frozen=True)
class EnergyTable:
    """Per-example inference energy of an EnergyNet, split as docs/design.md §1.3.

    Attributes:
        block_energy: E_b of each gated block (its convolutions), in gate order.
        fixed_energy: E_fixed, the layers that always run.
        gate_energy: E_gates, the gates' own layers (0 for a baseline).
        block_macs, fixed_macs, gate_macs: the same split of MAC counts.
        layers: every counted layer with its group and cost.
    """

    block_energy: tuple
    fixed_energy: float
    gate_energy: float
    block_macs: tuple
    fixed_macs: float
    gate_macs: float
    layers: tuple = ()

    @property
    def total_energy(self):
        """E_total = E_fixed + sum_b E_b: the baseline network's energy."""
        return self.fixed_energy + math.fsum(self.block_energy)

    @property
    def total_macs(self):
        return self.fixed_macs + math.fsum(self.block_macs)

    def as_dict(self):
        """A JSON-friendly summary (no per-layer rows)."""
        return {
            "total_energy": self.total_energy,
            "fixed_energy": self.fixed_energy,
            "gate_energy": self.gate_energy,
            "block_energy": list(self.block_energy),
            "total_macs": self.total_macs,
            "fixed_macs": self.fixed_macs,
            "gate_macs": self.gate_macs,
            "block_macs": list(self.block_macs),
        }


def _same_output(size, strides):
    return -(-size // strides)


def network_layers(spec, image_shape, num_classes, gate_units=None):
    """Lists the counted layers of an EnergyNet as topology rows with their groups.

    Args:
        spec: a `backbone.BackboneSpec`.
        image_shape: `(height, width, channels)` of the input images.
        num_classes: units of the dense head.
        gate_units: width of the gates' projections and LSTM, or None for a
            baseline (no gates).

    Returns:
        A list of `(LayerShape, group, block_index)`; BN, ReLU, additions and
        pooling are not counted (docs/design.md §1.3).
    """
    rows = []
    h, w, channels = image_shape
    if spec.stem == "imagenet":
        rows.append((topology.conv_layer_shape("stem_conv", (h, w), 7, 2, "same", channels, spec.stem_filters), "fixed", -1))
        h, w = _same_output(h, 2), _same_output(w, 2)
        # 3x3/2 'same' max pooling: not counted, but it halves the maps.
        h, w = _same_output(h, 2), _same_output(w, 2)
    else:
        rows.append((topology.conv_layer_shape("stem_conv", (h, w), 3, 1, "same", channels, spec.stem_filters), "fixed", -1))
    channels = spec.stem_filters
    expansion = 4 if spec.block == "bottleneck" else 1
    block_index = 0
    gate_inputs = []
    for stage_number, stage in enumerate(spec.stages):
        for i in range(stage.blocks):
            strides = stage.strides if i == 0 else 1
            out_channels = stage.filters * expansion
            gated = block_index > 0
            group, gate = ("block", block_index - 1) if gated else ("fixed", -1)
            prefix = f"block{block_index:02d}"
            if gated:
                gate_inputs.append(channels)
            if spec.block == "bottleneck":
                convs = [(1, 1, stage.filters), (3, strides, stage.filters), (1, 1, out_channels)]
            else:
                convs = [(3, strides, stage.filters), (3, 1, stage.filters)]
            ch, hh, ww = channels, h, w
            for k, (kernel, s, filters) in enumerate(convs):
                rows.append((topology.conv_layer_shape(f"{prefix}_conv{k + 1}", (hh, ww), kernel, s, "same", ch, filters), group, gate))
                hh, ww, ch = _same_output(hh, s), _same_output(ww, s), filters
            if strides != 1 or channels != out_channels:
                # The projection shortcut always runs, even when the block is skipped.
                rows.append((topology.conv_layer_shape(f"{prefix}_shortcut", (h, w), 1, strides, "same", channels, out_channels), "fixed", -1))
            h, w, channels = hh, ww, out_channels
            block_index += 1
    rows.append((topology.dense_layer_shape("classifier", channels, num_classes), "fixed", -1))
    if gate_units is not None:
        for g, ch in enumerate(gate_inputs):
            rows.append((topology.dense_layer_shape(f"gate{g:02d}_projection", ch, gate_units), "gate", g))
            # An LSTM cell is one dense layer from [x, h] to the four gates.
            rows.append((topology.dense_layer_shape(f"gate{g:02d}_lstm", 2 * gate_units, 4 * gate_units), "gate", g))
            rows.append((topology.dense_layer_shape(f"gate{g:02d}_output", gate_units, 1), "gate", g))
    return rows


def energy_table(spec, image_shape, num_classes, gate_units=None, accelerator=None, costs=None):
    """Computes the energy table of an EnergyNet with the systolic cost estimator.

    Args:
        spec: a `backbone.BackboneSpec`.
        image_shape: `(height, width, channels)` of the input images.
        num_classes: units of the dense head.
        gate_units: gate width, or None for a baseline.
        accelerator: a `systolic.AcceleratorConfig` (default: 32x32 output
            stationary, 64 kB SRAMs).
        costs: a `systolic.EnergyCosts` (default: Eyeriss's normalised costs).

    Returns:
        An `EnergyTable`.
    """
    accelerator = accelerator or systolic.AcceleratorConfig()
    costs = costs or systolic.EnergyCosts()
    rows = network_layers(spec, image_shape, num_classes, gate_units)
    result = systolic.estimate([shape for shape, _, _ in rows], accelerator, costs)
    energy = np.asarray(result["energy"], dtype=np.float64)
    macs = np.asarray(result["macs"], dtype=np.float64)
    num_gated = spec.num_blocks - 1
    block_energy = np.zeros(num_gated)
    block_macs = np.zeros(num_gated)
    fixed_energy = fixed_macs = gate_energy = gate_macs = 0.0
    layers = []
    for (shape, group, index), e, m in zip(rows, energy, macs):
        layers.append(LayerCost(shape, group, index, float(e), float(m)))
        if group == "block":
            block_energy[index] += e
            block_macs[index] += m
        elif group == "gate":
            gate_energy += e
            gate_macs += m
        else:
            fixed_energy += e
            fixed_macs += m
    return EnergyTable(
        block_energy=tuple(float(v) for v in block_energy),
        fixed_energy=float(fixed_energy),
        gate_energy=float(gate_energy),
        block_macs=tuple(float(v) for v in block_macs),
        fixed_macs=float(fixed_macs),
        gate_macs=float(gate_macs),
        layers=tuple(layers),
    )
