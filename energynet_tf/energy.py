"""The EnergyNet energy table: E_b per gated block, E_fixed, E_gates, E_total (docs/design.md §1.3)."""

import dataclasses
import math

import numpy as np

from energynet_tf import backbone
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


def network_layers(spec, image_shape, num_classes, gate_units=None):
    """Lists the counted layers of an EnergyNet as topology rows with their groups.

    The rows follow `backbone.network_plan`, the walk the model builds its
    layers from.

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
    plan = backbone.network_plan(spec, image_shape)
    stem = plan.stem
    rows = [(topology.conv_layer_shape("stem_conv", stem.input_hw, stem.kernel, stem.strides, "same",
                                       stem.in_channels, stem.filters), "fixed", -1)]
    for block in plan.blocks:
        group, gate = ("fixed", -1) if block.gate is None else ("block", block.gate)
        hw, channels = block.input_hw, block.in_channels
        for k, conv in enumerate(block.convs):
            row = topology.conv_layer_shape(f"{block.name}_conv{k + 1}", hw, conv.kernel, conv.strides, "same",
                                            channels, conv.filters)
            rows.append((row, group, gate))
            hw, channels = (backbone.same_size(hw[0], conv.strides), backbone.same_size(hw[1], conv.strides)), conv.filters
        if block.projection:
            # The projection shortcut always runs, even when the block is skipped.
            rows.append((topology.conv_layer_shape(f"{block.name}_shortcut", block.input_hw, 1, block.strides,
                                                   "same", block.in_channels, block.out_channels), "fixed", -1))
    rows.append((topology.dense_layer_shape("classifier", plan.head_features, num_classes), "fixed", -1))
    if gate_units is not None:
        for block in plan.gated_blocks:
            # Gate g reads the input of the block it decides.
            rows.extend(gate_rows(block.gate, block.in_channels, gate_units))
    return rows


def gate_rows(gate, in_channels, gate_units):
    """The counted layers of gate `gate` (reading `in_channels` channels) as `(LayerShape, "gate", gate)` rows."""
    return [
        (topology.dense_layer_shape(f"gate{gate:02d}_projection", in_channels, gate_units), "gate", gate),
        # An LSTM cell is one dense layer from [x, h] to the four gates.
        (topology.dense_layer_shape(f"gate{gate:02d}_lstm", 2 * gate_units, 4 * gate_units), "gate", gate),
        (topology.dense_layer_shape(f"gate{gate:02d}_output", gate_units, 1), "gate", gate),
    ]


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
    return table_from_rows(network_layers(spec, image_shape, num_classes, gate_units), spec.num_blocks - 1,
                           accelerator, costs)


def table_from_rows(rows, num_gated, accelerator=None, costs=None):
    """The energy table of counted layers `[(LayerShape, group, block), ...]` with `num_gated` gated blocks.

    Args:
        rows: as `network_layers` returns them (groups "fixed", "block", "gate").
        num_gated: the number of gated blocks (`block` indices are below it).
        accelerator: a `systolic.AcceleratorConfig` (default: 32x32 output stationary, 64 kB SRAMs).
        costs: a `systolic.EnergyCosts` (default: Eyeriss's normalised costs).

    Returns:
        An `EnergyTable`.
    """
    accelerator = accelerator or systolic.AcceleratorConfig()
    costs = costs or systolic.EnergyCosts()
    result = systolic.estimate([shape for shape, _, _ in rows], accelerator, costs)
    energy = np.asarray(result["energy"], dtype=np.float64)
    macs = np.asarray(result["macs"], dtype=np.float64)
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
