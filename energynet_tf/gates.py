"""The RNN gate of EnergyNet (SkipNet's RNNGate): one LSTM cell shared by all gates."""

import keras
from keras import ops

PACKAGE = "energynet_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class RNNGate(keras.layers.Layer):
    """Decides, per example, whether each gated residual block runs.

    Every gate pools its block input globally, projects it to `units`
    dimensions with weights of its own (block widths differ), then feeds the
    result to ONE `keras.layers.LSTMCell` shared by all gates, whose state
    `(h, c)` is carried from gate to gate within an example, and finally to one
    shared dense unit with a sigmoid: the probability that the block runs.

    Args:
        num_gates: number of gated blocks (gates), at least 1.
        units: width of the projections and of the LSTM cell.
        bias_initializer: initial bias of the shared output unit; a positive
            value starts the network with its gates open, as the baseline.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the gated block's input, shape `(batch, height, width, channels)`.
        gate_index: Python int in `[0, num_gates)`: which projection to use.
        states: `[h, c]` from the previous gate, or None at the first gate.

    Returns:
        `(probability, states)`: `probability` has shape `(batch,)`.
    """

    def __init__(self, num_gates, units=10, bias_initializer=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_gates, int) or num_gates < 1:
            raise ValueError(
                f"Argument `num_gates` must be a positive int; received: {num_gates!r}"
            )
        if not isinstance(units, int) or units < 1:
            raise ValueError(
                f"Argument `units` must be a positive int; received: {units!r}"
            )
        self.num_gates = num_gates
        self.units = units
        self.bias_initializer = float(bias_initializer)
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.projections = [
            keras.layers.Dense(units, name=f"projection_{i}") for i in range(num_gates)
        ]
        # One cell and one output unit for all gates: one weight set (docs/design.md §1.2).
        self.cell = keras.layers.LSTMCell(units, name="lstm_cell")
        self.output_dense = keras.layers.Dense(
            1,
            bias_initializer=keras.initializers.Constant(self.bias_initializer),
            name="output",
        )

    def build(self, input_shape):
        # Sub-layers are built on first use: projection i sees gate i's width.
        self.cell.build((None, self.units))
        self.output_dense.build((None, self.units))
        self.built = True

    def build_projection(self, gate_index, channels):
        """Builds projection `gate_index` for inputs of `channels` channels."""
        self.projections[gate_index].build((None, channels))

    def initial_state(self, batch_size):
        """Returns the zero `[h, c]` state of the first gate."""
        return self.cell.get_initial_state(batch_size)

    def call(self, inputs, gate_index, states=None, training=False):
        if not 0 <= gate_index < self.num_gates:
            raise ValueError(
                f"Argument `gate_index` must be in [0, {self.num_gates}); "
                f"received: {gate_index}"
            )
        pooled = self.pool(inputs)
        if states is None:
            states = self.initial_state(ops.shape(inputs)[0])
        projected = self.projections[gate_index](pooled)
        h, new_states = self.cell(projected, states, training=training)
        probability = ops.sigmoid(self.output_dense(h))[:, 0]
        return probability, new_states

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_gates": self.num_gates,
                "units": self.units,
                "bias_initializer": self.bias_initializer,
            }
        )
        return config


def straight_through(probability, training, floor=None, noise=None, seed=None, uniform=None):
    """Returns the hard decision `probability > 0.5` as float.

    In training the value is the hard decision but its gradient is that of
    `probability` (straight-through estimator: `hard + p - stop_gradient(p)`).

    With `noise` s > 0 (training only) the decision is taken on the logit plus
    s times logistic noise, `logit(p) + s * L > 0`, and the gradient is that of
    `sigmoid(logit(p) + s * L)` (the Gumbel-sigmoid straight-through estimator
    of ConvNet-AIG). With s = 1 the decision is a sample of Bernoulli(p). Why:
    deterministic straight-through gates settle where the energy term and the
    cross-entropy's straight-through gradient cancel, which is p = 0.5 itself
    (measured: mean |p - 0.5| = 0.001 on every gate), so inference decisions
    flip on noise; sampled decisions make the network robust to skipping and
    move each p towards 0 or 1. Inference always uses `p > 0.5`.

    Args:
        probability: gate probabilities, any shape.
        training: whether to attach the straight-through gradient (and noise).
        floor: None, or a scalar 0/1: with 1 every decision is 1 (the block
            runs) while the gradient still reaches `probability` (gate warm-up).
        noise: None or a scalar >= 0: the scale of the logistic noise.
        seed: a `keras.random.SeedGenerator` for the noise.
        uniform: None, or uniform (0, 1) samples shaped like `probability`
            to make the noise from (instead of drawing them with `seed`).

    Returns:
        A float tensor of 0s and 1s, shaped like `probability`.
    """
    soft = probability
    if training and noise is not None:
        p = ops.clip(probability, 1e-6, 1.0 - 1e-6)
        if uniform is None:
            u = keras.random.uniform(ops.shape(p), minval=1e-6, maxval=1.0 - 1e-6, dtype=p.dtype, seed=seed)
        else:
            u = ops.clip(ops.cast(uniform, p.dtype), 1e-6, 1.0 - 1e-6)
        logistic = ops.log(u) - ops.log(1.0 - u)
        logit = ops.log(p) - ops.log(1.0 - p)
        soft = ops.sigmoid(logit + ops.cast(noise, p.dtype) * logistic)
    hard = ops.cast(ops.greater(soft, 0.5), probability.dtype)
    if floor is not None:
        hard = ops.maximum(hard, ops.cast(floor, probability.dtype))
    if training:
        # (soft - stop_gradient(soft)) is exactly 0 in value: decisions stay exactly 0 or 1.
        return hard + (soft - ops.stop_gradient(soft))
    return hard
