"""Tests of energynet_tf/energy.py: the EnergyNet energy table (docs/design.md §1.3)."""

import numpy as np
import pytest

from energynet_tf import backbone
from energynet_tf import energy
from energynet_tf import systolic
from energynet_tf import topology
from energynet_tf.model import EnergyNet


def _rows(depth, **kwargs):
    return energy.network_layers(backbone.backbone_spec(depth), (32, 32, 3), 10, **kwargs)


def test_resnet38_has_the_40_counted_layers_of_design():
    rows = _rows(38)
    # Stem, 18 blocks x 2 convolutions, 2 projections, the dense head.
    assert len(rows) == 40
    groups = [group for _, group, _ in rows]
    assert groups.count("block") == 17 * 2
    assert groups.count("fixed") == 1 + 2 + 2 + 1


def test_scalesim_input_extents_of_design_examples():
    shapes = {shape.name: shape for shape, _, _ in _rows(38)}
    # 3x3 stride-1 'same' on 32x32: 34; 3x3 stride 2 on 32x32: 33; 1x1 stride-2 projection: 31.
    assert (shapes["block01_conv1"].ifmap_h, shapes["block01_conv1"].stride) == (34, 1)
    assert (shapes["block06_conv1"].ifmap_h, shapes["block06_conv1"].stride) == (33, 2)
    assert (shapes["block06_shortcut"].ifmap_h, shapes["block06_shortcut"].filter_h) == (31, 1)
    assert shapes["block06_shortcut"].num_filters == 32
    head = shapes["classifier"]
    assert (head.ifmap_h, head.ifmap_w, head.channels, head.num_filters) == (1, 1, 64, 10)


def test_rows_match_the_keras_layers_of_the_model():
    # The table is built from the stage table; the model from the same table:
    # every convolution of the built model must be the row the table counts.
    model = EnergyNet(depth=14, baseline=True)
    rows = {shape.name: shape for shape, _, _ in _rows(14)}
    hw = (32, 32)
    expected = {"stem_conv": topology.layer_shape(model.stem_conv, (None, 32, 32, 3), name="stem_conv")}
    channels = 16
    for i, block in enumerate(model.res_blocks):
        in_shape = (None,) + hw + (channels,)
        shape = in_shape
        for k, conv in enumerate(block.convs):
            expected[f"block{i:02d}_conv{k + 1}"] = topology.layer_shape(conv, shape, name=f"block{i:02d}_conv{k + 1}")
            shape = conv.compute_output_shape(shape)
        if block.projection:
            expected[f"block{i:02d}_shortcut"] = topology.layer_shape(
                block.shortcut_conv, in_shape, name=f"block{i:02d}_shortcut")
        hw, channels = shape[1:3], shape[3]
    expected["classifier"] = topology.layer_shape(model.classifier, (None, channels), name="classifier")
    assert rows == expected


def test_table_sums_the_estimator_per_group():
    spec = backbone.backbone_spec(20)
    accelerator = systolic.AcceleratorConfig(array_rows=16, array_cols=16, dataflow="ws")
    table = energy.energy_table(spec, (32, 32, 3), 10, gate_units=10, accelerator=accelerator)
    rows = energy.network_layers(spec, (32, 32, 3), 10, gate_units=10)
    result = systolic.estimate([shape for shape, _, _ in rows], accelerator)
    e = result["energy"]
    groups = np.array([group for _, group, _ in rows])
    index = np.array([i for _, _, i in rows])
    assert table.fixed_energy == pytest.approx(e[groups == "fixed"].sum())
    assert table.gate_energy == pytest.approx(e[groups == "gate"].sum())
    for b in range(spec.num_blocks - 1):
        assert table.block_energy[b] == pytest.approx(e[(groups == "block") & (index == b)].sum())
    assert table.total_energy == pytest.approx(e[groups != "gate"].sum())
    assert table.total_macs == pytest.approx(result["macs"][groups != "gate"].sum())
    # Blocks of one stage (same shapes) cost the same; the down-sampling block differs.
    assert table.block_energy[0] == table.block_energy[1]
    assert table.block_energy[2] != table.block_energy[3]


def test_gate_layers_are_counted_as_dense_layers():
    rows = _rows(8, gate_units=10)
    gate_rows = [(shape, i) for shape, group, i in rows if group == "gate"]
    assert len(gate_rows) == 2 * 3  # two gates: projection, LSTM, output
    names = [shape.name for shape, _ in gate_rows]
    assert names[:3] == ["gate00_projection", "gate00_lstm", "gate00_output"]
    projection, lstm, output = (shape for shape, _ in gate_rows[:3])
    assert (projection.channels, projection.num_filters) == (16, 10)
    assert (lstm.channels, lstm.num_filters) == (20, 40)
    assert (output.channels, output.num_filters) == (10, 1)


def test_baseline_table_has_no_gate_energy_and_same_total():
    spec = backbone.backbone_spec(8)
    gated = energy.energy_table(spec, (32, 32, 3), 10, gate_units=10)
    base = energy.energy_table(spec, (32, 32, 3), 10, gate_units=None)
    assert base.gate_energy == 0.0 and gated.gate_energy > 0
    assert base.total_energy == gated.total_energy
