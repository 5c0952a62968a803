"""Any functional Keras residual network as an EnergyNet: `from_keras` (docs/architecture.md, "Bring your own network").

The conversion reads the functional graph of the model: every `Add` of two
tensors is a residual unit, its operands a shortcut and a residual branch that
both start from one tensor, the unit's input (the latest tensor every path to
both operands passes through). The operand whose path holds fewer
convolutions is the shortcut (the identity, a pooling, or a projection); the
other is the branch the gate skips, which must be a chain of single-input
layers used by nothing else. The units must follow one another: what runs
between two units (a ReLU after the addition, a pre-activation) reads only
the previous unit's output. Unit 0 always runs; the shared RNN gate reading
unit k's input decides unit k (gate k - 1), exactly as in `EnergyNet`.

The converted model calls the original layers (a copy, with the original's
weights) node by node, in the graph's own order, so with every gate open its
logits are the original model's; the residual operand of a unit's `Add` is
multiplied by the gate's decision in training and not computed at all in the
exported serving graph. A final softmax is left out: EnergyNet trains on
logits.
"""

import dataclasses
from typing import Dict, List, Tuple

import keras
from keras import ops

from energynet_tf import energy as energy_lib
from energynet_tf import gates as gates_lib
from energynet_tf import topology
from energynet_tf.model import EnergyNet

PACKAGE = "energynet_tf"

# Layers that count as work for the shortcut/branch decision (and for the cost model).
_COUNTED = (keras.layers.Conv2D, keras.layers.Dense)


class ConversionError(ValueError):
    """A model `from_keras` cannot convert; the message names the layer and why."""


@dataclasses.dataclass
class _Step:
    """One call of a layer in the functional graph."""

    index: int
    node: object  # keras Node
    inputs: Tuple[int, ...]  # ids of the KerasTensors it reads
    outputs: Tuple[int, ...]  # ids of the KerasTensors it writes

    @property
    def layer(self):
        return self.node.operation


class _Unit:
    """A residual unit: `Add(shortcut(x), residual(x))` with the residual branch skippable.

    The same interface as `blocks.BasicBlock` for `EnergyNet.walk` and the
    serving graph: `shortcut`, `residual`, `merge` and a call with an optional
    per-example `decision`.
    """

    def __init__(self, graph, name, add, input_id, shortcut, residual, shortcut_first):
        self.graph = graph
        self.name = name
        self.add = add  # the Add step
        self.input_id = input_id
        self.shortcut_steps = shortcut  # chains of steps, in order
        self.residual_steps = residual
        self.shortcut_first = shortcut_first  # the Add's operand order

    @property
    def residual_layers(self):
        return [step.layer for step in self.residual_steps]

    def shortcut(self, x, training=False):
        return self.graph.run_chain(self.shortcut_steps, self.input_id, x, training)

    def residual(self, x, training=False):
        return self.graph.run_chain(self.residual_steps, self.input_id, x, training)

    def merge(self, residual, shortcut):
        # The model's own Add layer, its operands in the model's order.
        return self.add.layer([shortcut, residual] if self.shortcut_first else [residual, shortcut])

    def __call__(self, x, decision=None, training=False):
        shortcut = self.shortcut(x, training=training)
        residual = self.residual(x, training=training)
        if decision is not None:
            residual = residual * ops.reshape(ops.cast(decision, residual.dtype), (-1, 1, 1, 1))
        return self.merge(residual, shortcut)


class _Graph:
    """The analysed functional graph: the stem, the units, what runs between them, and the head."""

    def __init__(self, model):
        # A functional model (keras.Model built from keras.Input, Sequential's graph too) has nodes by depth.
        if not isinstance(model, keras.Model) or not getattr(model, "_nodes_by_depth", None):
            raise ConversionError("from_keras: argument `model` must be a functional keras.Model (built with "
                                  f"keras.Input and layer calls, or keras.applications); received: {model!r}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ConversionError(f"from_keras: model {model.name!r} must have one input and one output; it has "
                                  f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
        shape = tuple(model.inputs[0].shape)
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ConversionError(f"from_keras: model {model.name!r} must take images of a known shape (batch, "
                                  f"height, width, channels); its input has shape {shape}")
        self.model = model
        self.image_shape = tuple(int(d) for d in shape[1:])
        self.input_id = id(model.inputs[0])
        self.output_id = id(model.outputs[0])
        self.steps = self._ordered_steps(model)
        self.producer = {t: step for step in self.steps for t in step.outputs}
        self.consumers: Dict[int, List[_Step]] = {}
        for step in self.steps:
            for t in step.inputs:
                self.consumers.setdefault(t, []).append(step)
        self._upstream: Dict[int, frozenset] = {}
        self.units = self._find_units()
        if not self.units:
            raise ConversionError(f"from_keras: model {model.name!r} has no residual unit (an Add of a shortcut "
                                  "and a residual branch): nothing to gate")
        self._split_segments()
        self.num_classes, self.drop_softmax = self._head_output()

    # -- the graph -----------------------------------------------------------
    @staticmethod
    def _ordered_steps(model):
        """Every layer call, in the order Keras itself runs the graph (`Function._run_through_graph`)."""
        steps = []
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if isinstance(node.operation, keras.Model):
                    raise ConversionError(f"from_keras: layer {node.operation.name!r} is a nested model; "
                                          "convert a flat functional model")
                steps.append(_Step(len(steps), node, tuple(id(t) for t in node.input_tensors),
                                   tuple(id(t) for t in node.outputs)))
        return steps

    def upstream(self, tensor):
        """Indices of the steps `tensor` depends on (its producer included)."""
        if tensor not in self._upstream:
            # Iterative: ResNet-152's graph is deeper than Python's recursion limit allows.
            pending = [tensor]
            while pending:
                t = pending[-1]
                step = self.producer.get(t)
                if step is None:
                    self._upstream[t] = frozenset()
                    pending.pop()
                    continue
                missing = [u for u in step.inputs if u not in self._upstream]
                if missing:
                    pending.extend(missing)
                    continue
                result = {step.index}
                for u in step.inputs:
                    result |= self._upstream[u]
                self._upstream[t] = frozenset(result)
                pending.pop()
        return self._upstream[tensor]

    def describe(self, tensor):
        step = self.producer.get(tensor)
        return "the model's input" if step is None else f"the output of layer {step.layer.name!r}"

    # -- residual units ----------------------------------------------------------
    def _find_units(self):
        units = []
        for step in self.steps:
            if isinstance(step.layer, keras.layers.Add):
                units.append(self._unit(step))
        return sorted(units, key=lambda u: u.add.index)

    def _unit(self, add):
        name = add.layer.name
        if len(add.inputs) != 2:
            raise ConversionError(f"from_keras: Add layer {name!r} adds {len(add.inputs)} tensors: not a residual "
                                  "unit (a shortcut plus a residual branch)")
        a, b = add.inputs
        up_a, up_b = self.upstream(a), self.upstream(b)
        start = self._unit_input(a, b, up_a | up_b)
        if start is None:
            raise ConversionError(f"from_keras: Add layer {name!r} is not a residual unit: its operands do not "
                                  "start from one tensor")
        before = self.upstream(start)
        chain_a = self._chain(sorted(up_a - before), start, a, name)
        chain_b = self._chain(sorted(up_b - before), start, b, name)
        if set(s.index for s in chain_a) & set(s.index for s in chain_b):
            raise ConversionError(f"from_keras: Add layer {name!r}: its two operands share layers after their "
                                  "common input: not a residual unit")
        work_a = sum(isinstance(s.layer, _COUNTED) for s in chain_a)
        work_b = sum(isinstance(s.layer, _COUNTED) for s in chain_b)
        if work_a == work_b:
            raise ConversionError(
                f"from_keras: Add layer {name!r}: both operands hold {work_a} convolutions, so neither is a "
                "shortcut: not a residual unit")
        shortcut_first = work_a < work_b
        shortcut, residual = (chain_a, chain_b) if shortcut_first else (chain_b, chain_a)
        return _Unit(self, name, add, start, shortcut, residual, shortcut_first)

    def _unit_input(self, a, b, region):
        """The latest tensor both operands start from whose region between it and the Add reads nothing else."""
        common = self._ancestor_tensors(a) & self._ancestor_tensors(b)
        for t in sorted(common, key=self._position, reverse=True):
            inside = region - self.upstream(t)
            produced = {u for i in inside for u in self.steps[i].outputs}
            if all(u == t or u in produced for i in inside for u in self.steps[i].inputs):
                return t
        return None

    def _position(self, tensor):
        step = self.producer.get(tensor)
        return -1 if step is None else step.index

    def _ancestor_tensors(self, tensor):
        result = {tensor}
        for index in self.upstream(tensor):
            result.update(self.steps[index].inputs)
            result.update(self.steps[index].outputs)
        return result

    def _chain(self, indices, start, end, add_name):
        """The steps between `start` and `end` as a chain of single-input layers, or a clear error."""
        steps = [self.steps[i] for i in indices]
        current = start
        for step in steps:
            if step.inputs != (current,) or len(step.outputs) != 1:
                raise ConversionError(
                    f"from_keras: layer {step.layer.name!r} (in the residual unit of Add layer {add_name!r}) is not "
                    "part of a chain of single-input layers: a branch must be a chain to be wrapped")
            current = step.outputs[0]
        for step, after in zip(steps, steps[1:]):
            if self.consumers.get(step.outputs[0], []) != [after]:
                raise ConversionError(
                    f"from_keras: the output of layer {step.layer.name!r} (in the residual unit of Add layer "
                    f"{add_name!r}) is used outside its branch: the branch cannot be skipped")
        if current != end:
            raise ConversionError(f"from_keras: Add layer {add_name!r}: an operand is not a chain from the unit's "
                                  "input: not a residual unit")
        if steps and len(self.consumers.get(end, [])) != 1:
            raise ConversionError(f"from_keras: the output of layer {steps[-1].layer.name!r} is used outside the "
                                  f"residual unit of Add layer {add_name!r}: the branch cannot be skipped")
        return steps

    # -- between the units ---------------------------------------------------------
    def _split_segments(self):
        """The stem (input to unit 0's input), the pieces between units, and the head (last unit to output)."""
        in_units = set()
        for unit in self.units:
            in_units.update(s.index for s in unit.shortcut_steps + unit.residual_steps)
            in_units.add(unit.add.index)
        bounds = [(self.input_id, self.units[0].input_id)]
        for previous, unit in zip(self.units, self.units[1:]):
            bounds.append((previous.add.outputs[0], unit.input_id))
        bounds.append((self.units[-1].add.outputs[0], self.output_id))
        self.segments = []
        covered = set(in_units)
        for k, (start, end) in enumerate(bounds):
            indices = sorted(self.upstream(end) - self.upstream(start) - ({self.producer[start].index}
                             if start in self.producer else set()))
            if start != self.input_id and start not in self._ancestor_tensors(end):
                raise ConversionError(f"from_keras: {self.describe(end)} does not follow from residual unit "
                                      f"{self.units[k - 1].name!r}: the network must be a chain of residual units")
            steps = [self.steps[i] for i in indices]
            produced = {start} | {t for s in steps for t in s.outputs}
            for step in steps:
                if step.index in in_units:
                    raise ConversionError(
                        f"from_keras: residual units overlap at layer {step.layer.name!r}: not a chain of "
                        "residual units")
                for t in step.inputs:
                    if t not in produced:
                        raise ConversionError(
                            f"from_keras: layer {step.layer.name!r} reads {self.describe(t)} across a residual "
                            "unit: the network must be a chain of residual units")
            covered.update(indices)
            self.segments.append(steps)
        for unit in self.units:
            if unit.input_id != self.input_id and unit.input_id not in self.producer:
                raise ConversionError(f"from_keras: Add layer {unit.name!r}: its input is not computed by the model")
        missing = [s for s in self.steps if s.index not in covered]
        if missing:
            raise ConversionError(f"from_keras: layer {missing[0].layer.name!r} does not lead to the model's "
                                  "output through the chain of residual units: it cannot be converted")

    def _head_output(self):
        last = self.producer[self.output_id].layer
        shape = tuple(self.model.outputs[0].shape)
        if len(shape) != 2 or shape[1] is None or shape[1] < 2:
            raise ConversionError(f"from_keras: model {self.model.name!r} must end in class scores of shape "
                                  f"(batch, classes >= 2); its output has shape {shape}")
        activation = getattr(last, "activation", None)
        name = getattr(activation, "__name__", None)
        if isinstance(last, keras.layers.Activation):
            if name not in ("softmax", "linear"):
                raise ConversionError(f"from_keras: model {self.model.name!r} ends in activation {name!r}; "
                                      "EnergyNet trains on logits: end in a softmax or in no activation")
            return int(shape[1]), name == "softmax"
        if isinstance(last, keras.layers.Dense) and name not in (None, "linear"):
            if name != "softmax":
                raise ConversionError(f"from_keras: model {self.model.name!r} ends in a Dense layer with "
                                      f"activation {name!r}; EnergyNet trains on logits: use softmax or None "
                                      "(keras.applications: classifier_activation=None)")
            return int(shape[1]), True
        return int(shape[1]), False

    # -- running -----------------------------------------------------------------
    def call_step(self, step, env, training):
        args, kwargs = step.node.arguments.fill_in(env)
        layer = step.layer
        if "training" in getattr(layer, "_call_context_args", ()):
            kwargs["training"] = training
        if step.outputs[0] == self.output_id and self.drop_softmax:
            if isinstance(layer, keras.layers.Activation):
                return args[0]
            # The Dense layer without its softmax: the logits.
            x = ops.matmul(args[0], ops.cast(layer.kernel, args[0].dtype))
            return x + ops.cast(layer.bias, x.dtype) if layer.use_bias else x
        return layer(*args, **kwargs)

    def run_chain(self, steps, start, x, training):
        env = {start: x}
        for step in steps:
            env[step.outputs[0]] = self.call_step(step, env, training)
        return env[steps[-1].outputs[0]] if steps else x

    def run_segment(self, k, x, training):
        steps = self.segments[k]
        start = self.input_id if k == 0 else self.units[k - 1].add.outputs[0]
        env = {start: x}
        for step in steps:
            outputs = self.call_step(step, env, training)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for t, value in zip(step.outputs, outputs):
                env[t] = value
        end = self.output_id if k == len(self.units) else self.units[k].input_id
        return env[end]


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvertedEnergyNet(EnergyNet):
    """A functional Keras residual network with EnergyNet's gates (made by `from_keras`).

    Args:
        source: the functional Keras model (its layers and weights are used
            as they are; `from_keras` passes a copy).
        baseline, gate_units, gate_bias_init, alpha, accelerator,
        energy_costs, weight_decay, gate_lr_multiplier, gate_noise,
        energy_term, removed_blocks, policy_weight, exploration,
        batch_shaping_weight, batch_shaping_prior, gate_losses, loss_terms,
        drop_blocks: as for `EnergyNet`.
        **kwargs: base model arguments (`name`, ...).

    Raises:
        ConversionError: (a `ValueError`) naming the layer that makes the
            model unconvertible, and why.
    """

    def __init__(self, source, baseline=False, gate_units=10, gate_bias_init=1.0, alpha=0.1, accelerator=None,
                 energy_costs=None, weight_decay=0.0, gate_lr_multiplier=1.0, gate_noise=0.0,
                 energy_term="expected", removed_blocks=(), policy_weight=0.0, exploration=0.0,
                 batch_shaping_weight=0.0, batch_shaping_prior=(0.6, 0.4), gate_losses=None, loss_terms=None,
                 drop_blocks=0.0, **kwargs):
        keras.Model.__init__(self, **kwargs)
        graph = _Graph(source)
        self.source = source
        # The analysis refers to the source's layers: kept out of Keras' tracking (they are tracked
        # once, through `source`, for saving).
        object.__setattr__(self, "graph", graph)
        self.depth = None
        self.spec = None
        self._configure(graph.num_classes, graph.image_shape, baseline, gate_units, gate_bias_init, alpha,
                        accelerator, energy_costs, weight_decay, False, gate_lr_multiplier, gate_noise,
                        energy_term, removed_blocks, policy_weight, exploration, batch_shaping_weight,
                        batch_shaping_prior, gate_losses, loss_terms, drop_blocks)

    @property
    def res_blocks(self):
        """The residual units, in order (unit 0 always runs)."""
        return list(self.graph.units)

    def _make_structure(self, removed_blocks):
        self.num_gates = len(self.graph.units) - 1
        self.removed_blocks = self._check_removed_blocks(removed_blocks)
        self.energy_table = converted_energy_table(
            self.source, self.graph, None if self.baseline else self.gate_units, self.accelerator,
            self.energy_costs)
        self.gate = None
        if not self.baseline and self.num_gates > 0:
            self.gate = gates_lib.RNNGate(self.num_gates, self.gate_units, self.gate_bias_init, name="gate")
        for b in self.removed_blocks:
            for layer in self.graph.units[b].residual_layers:
                layer.trainable = False

    def build(self, input_shape):
        if self.gate is not None:
            for g, unit in enumerate(self.graph.units[1:]):
                self.gate.build_projection(g, int(self._tensor(unit.input_id).shape[-1]))
            self.gate.build(None)
        self.built = True

    def _tensor(self, tensor_id):
        step = self.graph.producer.get(tensor_id)
        if step is None:
            return self.source.inputs[0]
        return step.node.outputs[step.outputs.index(tensor_id)]

    def stem(self, inputs, training=False):
        """The layers before the first residual unit."""
        return self.graph.run_segment(0, inputs, training)

    def walk(self, x, decide=None, run=None, training=False):
        """Runs the residual units and what lies between them; see `EnergyNet.walk`."""
        for k, unit in enumerate(self.graph.units):
            if k > 0:
                x = self.graph.run_segment(k, x, training)
            gate = k - 1 if k > 0 else None
            if gate is not None and k in self.removed_blocks:
                # A removed unit adds nothing to its shortcut (the branch never runs).
                shortcut = unit.shortcut(x, training=training)
                x = unit.merge(ops.zeros_like(shortcut), shortcut)
                continue
            if gate is None or decide is None:
                x = unit(x, training=training)
                continue
            decision = decide(gate, x)
            x = unit(x, decision=decision, training=training) if run is None else run(unit, x, decision)
        return x

    def head(self, x):
        """The layers after the last residual unit, up to the logits (a final softmax left out)."""
        return self.graph.run_segment(len(self.graph.units), x, False)

    def get_config(self):
        config = super().get_config()
        for key in ("depth", "num_classes", "image_shape", "zero_init_residual"):
            config.pop(key, None)
        config["source"] = keras.saving.serialize_keras_object(self.source)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        source = keras.saving.deserialize_keras_object(config.pop("source"))
        return cls(source, **config)


def converted_energy_table(source, graph, gate_units, accelerator, costs):
    """The energy table of a converted model from the source's own Conv2D and Dense calls.

    The rows are `topology.model_topology(source)`, in order; the layers of
    gated unit k's residual branch are block k - 1's, everything else always
    runs; the gates' rows follow (each reads its unit's input).
    """
    try:
        rows = topology.model_topology(source)
    except ValueError as e:  # a dilated or grouped convolution: the cost model has no row for it
        raise ConversionError(f"from_keras: {e}") from None
    owner = {}
    for k, unit in enumerate(graph.units[1:]):
        for layer in unit.residual_layers:
            owner[layer.name] = k
    grouped = [(row, "block", owner[row.name]) if row.name in owner else (row, "fixed", -1) for row in rows]
    if gate_units is not None:
        for g, unit in enumerate(graph.units[1:]):
            step = graph.producer.get(unit.input_id)
            channels = int((source.inputs[0] if step is None else
                            step.node.outputs[step.outputs.index(unit.input_id)]).shape[-1])
            grouped.extend(energy_lib.gate_rows(g, channels, gate_units))
    return energy_lib.table_from_rows(grouped, len(graph.units) - 1, accelerator, costs)


def from_keras(model, **options):
    """Turns a functional Keras residual network into an EnergyNet.

    Args:
        model: a functional `keras.Model` made of residual units (an `Add` of
            a shortcut and a residual branch), for example a
            `keras.applications` ResNet50/101/152 or ResNet50V2/101V2/152V2,
            built at any input size; it is copied (its weights too), not
            changed.
        **options: `EnergyNet`'s options (`alpha`, `gate_units`,
            `gate_bias_init`, `baseline`, `energy_term`, `accelerator`, ...).

    Returns:
        A `ConvertedEnergyNet`: `forward`, `energy_table`, `num_gates`, the
        energy-aware `train_step`, `.keras` saving and the exports, as
        `EnergyNet`.

    Raises:
        ConversionError: (a `ValueError`) in one line naming the layer that
            makes the model unconvertible, and why.
    """
    if not isinstance(model, keras.Model):
        raise ConversionError(f"from_keras: argument `model` must be a functional keras.Model; received: {model!r}")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return ConvertedEnergyNet(copy, **options)
