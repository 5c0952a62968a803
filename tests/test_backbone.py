"""Tests of energynet_tf/backbone.py: the stage tables."""

import pytest

from energynet_tf import backbone


@pytest.mark.parametrize("depth, n", [(20, 3), (38, 6), (56, 9), (74, 12), (110, 18)])
def test_cifar_depths(depth, n):
    spec = backbone.backbone_spec(depth)
    assert spec.block == "basic" and spec.stem == "cifar"
    assert [(s.filters, s.blocks, s.strides) for s in spec.stages] == [(16, n, 1), (32, n, 2), (64, n, 2)]
    # Two convolutions per block plus stem and head make the depth.
    assert 2 * spec.num_blocks + 2 == depth


def test_resnet50():
    spec = backbone.backbone_spec(50)
    assert spec.block == "bottleneck" and spec.stem == "imagenet"
    assert [s.blocks for s in spec.stages] == [3, 4, 6, 3]
    assert 3 * spec.num_blocks + 2 == 50


@pytest.mark.parametrize("depth", [0, 21, 50.0, "38", 152])
def test_unsupported_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        backbone.backbone_spec(depth)


def test_plan_of_resnet38():
    plan = backbone.network_plan(backbone.backbone_spec(38), (32, 32, 3))
    assert len(plan.blocks) == 18 and [b.gate for b in plan.blocks] == [None] + list(range(17))
    assert [b.index for b in plan.blocks if b.projection] == [6, 12]
    down = plan.blocks[6]
    assert (down.in_channels, down.out_channels, down.input_hw, down.output_hw) == (16, 32, (32, 32), (16, 16))
    assert down.convs == (backbone.ConvPlan(3, 2, 32), backbone.ConvPlan(3, 1, 32))
    assert plan.head_features == 64 and plan.stem.output_hw == (32, 32)


def test_plan_of_resnet50_on_64x64():
    plan = backbone.network_plan(backbone.backbone_spec(50), (64, 64, 3))
    # 7x7/2 stem and 3x3/2 pool: 64 -> 32 -> 16.
    assert (plan.stem.conv_hw, plan.stem.output_hw) == ((32, 32), (16, 16))
    first = plan.blocks[0]
    assert first.projection and (first.in_channels, first.out_channels) == (64, 256)
    assert [c.kernel for c in first.convs] == [1, 3, 1] and first.convs[-1].filters == 256
    assert plan.blocks[-1].output_hw == (2, 2) and plan.head_features == 2048


def test_unknown_block_type():
    with pytest.raises(ValueError, match="block"):
        backbone.branch_convs("dense", 16, 1)


def _owned_rows(model, calls):
    """Names each recorded Conv2D/Dense call by its owner, as `energy.network_layers` names its rows."""
    from energynet_tf import topology

    owners = {id(model.stem_conv): "stem_conv", id(model.classifier): "classifier"}
    for block in model.res_blocks:
        for k, conv in enumerate(block.convs):
            owners[id(conv)] = f"{block.name}_conv{k + 1}"
        if block.projection:
            owners[id(block.shortcut_conv)] = f"{block.name}_shortcut"
    if model.gate is not None:
        for g, projection in enumerate(model.gate.projections):
            owners[id(projection)] = f"gate{g:02d}_projection"
    rows = {}
    outputs = 0
    for layer, shape in calls:
        if model.gate is not None and layer is model.gate.output_dense:
            # One shared output unit, called once per gate, in gate order.
            name, outputs = f"gate{outputs:02d}_output", outputs + 1
        else:
            name = owners[id(layer)]
        row = topology.layer_shape(layer, shape, name=name)
        # A layer traced in several branches must have the same shape in each.
        assert rows.setdefault(name, row) == row, name
    return rows


# The two deepest CIFAR nets (8-10 s each on a 2-core AVX2 host) with -m slow: the others check the same walk.
@pytest.mark.parametrize("depth", [pytest.param(d, marks=pytest.mark.slow) if d in (74, 110) else d
                                   for d in backbone.SUPPORTED_DEPTHS])
def test_model_energy_table_and_serving_graph_agree_block_for_block(depth):
    """Every depth: the layers the model runs, the energy table's rows and the exported graph's layers are one walk."""
    import keras
    import tensorflow as tf

    from energynet_tf import energy
    from energynet_tf import topology
    from energynet_tf.export import serving
    from energynet_tf.model import EnergyNet

    image_shape = (64, 64, 3) if depth == 50 else (32, 32, 3)
    model = EnergyNet(depth=depth, image_shape=image_shape, gate_units=4)
    table_rows = energy.network_layers(model.spec, image_shape, 10, gate_units=4)
    table = {shape.name: shape for shape, _, _ in table_rows}
    # The table's groups: a gated block's convolutions are charged to its gate.
    for shape, group, index in table_rows:
        if group == "block":
            assert shape.name.startswith(model.plan.blocks[index + 1].name), shape.name
    assert len(model.energy_table.block_energy) == model.num_gates == len(model.plan.gated_blocks)

    # The model as built: each block is its plan.
    for plan, block in zip(model.plan.blocks, model.res_blocks, strict=True):
        assert (block.name, block.filters, block.strides, block.projection) == (
            plan.name, plan.filters, plan.strides, plan.projection)

    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    spec = tf.TensorSpec((None,) + image_shape, tf.float32)
    # Topology rows of the Keras model's own forward pass.
    def forward(x):
        return model(x, training=False)

    traced = _owned_rows(model, topology.trace_layer_calls(forward, spec, layers)[0])
    # The LSTM cell is no Dense layer: the table counts it as one dense layer [x, h] -> 4 units.
    lstm = {name: row for name, row in table.items() if name.endswith("_lstm")}
    assert len(lstm) == model.num_gates
    kernel, recurrent, _ = model.gate.cell.get_weights()
    assert all((row.channels, row.num_filters) == (kernel.shape[0] + recurrent.shape[0], kernel.shape[1])
               for row in lstm.values())
    assert traced == {name: row for name, row in table.items() if name not in lstm}

    # The exported serving graph (the batch-1 graph that model.tflite holds by
    # default; every method runs the same walk): the same layers with the same
    # shapes (the gates are fused constants there), and one skip per gated block.
    calls, graph = topology.trace_layer_calls(
        serving.serving_function(model, "single"), tf.TensorSpec((1,) + image_shape, tf.float32), layers)
    exported = _owned_rows(model, calls)
    assert exported == {name: row for name, row in table.items() if "gate" not in name}
    per_gate, _, _ = model.gate.fused_constants()
    for plan, (kernel, bias) in zip(model.plan.gated_blocks, per_gate, strict=True):
        projection = table[f"gate{plan.gate:02d}_projection"]
        assert kernel.shape == (projection.channels + (4 if plan.gate else 0), 4 * 4)
    conds = {op.name for op in graph.get_operations() if op.type in ("If", "StatelessIf")}
    assert conds == {f"{plan.name}_skip" for plan in model.plan.gated_blocks}
