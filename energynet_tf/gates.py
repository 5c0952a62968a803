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
        # The gate computes in float32 whatever the policy (its input is cast once,
        # at the pooling): it is a few hundred MACs, and its probabilities decide
        # which blocks run, charge the energy and are compared with a threshold,
        # near 0 and 1 where float16's 11 bits would round them.
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")
        self.projections = [
            keras.layers.Dense(units, name=f"projection_{i}", dtype="float32") for i in range(num_gates)
        ]
        # One cell and one output unit for all gates: one weight set (docs/design.md §1.2).
        self.cell = keras.layers.LSTMCell(units, name="lstm_cell", dtype="float32")
        self.output_dense = keras.layers.Dense(
            1,
            bias_initializer=keras.initializers.Constant(self.bias_initializer),
            name="output",
            dtype="float32",
        )

    def build(self, input_shape):
        # Projection i is built for gate i's width (`build_projection`, which a
        # network calls first); any still unbuilt takes `input_shape`'s channels,
        # so that `build` alone creates every weight a call would.
        if input_shape is not None and len(input_shape) == 4 and input_shape[-1] is not None:
            for i, projection in enumerate(self.projections):
                if not projection.built:
                    self.build_projection(i, input_shape[-1])
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

    def compute_output_spec(self, inputs, gate_index=0, states=None, training=False):
        """`(probability (batch,), [h, c] (batch, units))`, all float32 whatever the policy."""
        batch = inputs.shape[0]
        state = keras.KerasTensor((batch, self.units), dtype="float32")
        return keras.KerasTensor((batch,), dtype="float32"), [state, keras.KerasTensor((batch, self.units),
                                                                                       dtype="float32")]

    # -- the gate as arithmetic: the serving graph and programmed policies -----
    def fused_constants(self):
        """The gates' weights rearranged for fewer ops, as float32 NumPy constants.

        Gate i computes (Keras' LSTMCell) `x = pool @ P_i + b_i`,
        `z = x @ W + h @ U + b`, `[i, f, g, o] = split(z)`; its projection
        folds into the cell: `z = [pool, h] @ [[P_i W], [U]] + (b_i W + b)`,
        one matmul. At the first gate `h = c = 0`, so
        `z = pool @ P_0 W + (b_0 W + b)`.

        Returns:
            `(per_gate, out_kernel, out_bias)`: `per_gate[i]` is gate i's
            `(kernel, bias)`; the output unit's kernel and bias are shared.
            `fused_step` computes a gate from them.

        Raises:
            ValueError: if the cell is not the tanh/sigmoid LSTM cell with a
                bias that this rearrangement assumes.
        """
        import numpy as np
        from keras import activations

        cell = self.cell
        if (activations.get(cell.activation) is not activations.tanh
                or activations.get(cell.recurrent_activation) is not activations.sigmoid
                or not cell.use_bias):
            raise ValueError("the fused gate expects an LSTMCell with tanh, sigmoid and a bias")
        kernel, recurrent, bias = (np.asarray(w, np.float64) for w in cell.get_weights())
        per_gate = []
        for i, projection in enumerate(self.projections):
            p_kernel, p_bias = (np.asarray(w, np.float64) for w in projection.get_weights())
            folded = p_kernel @ kernel
            if i > 0:
                folded = np.concatenate([folded, recurrent], axis=0)
            per_gate.append((folded.astype(np.float32), (p_bias @ kernel + bias).astype(np.float32)))
        out_kernel, out_bias = (np.asarray(w, np.float32) for w in self.output_dense.get_weights())
        return per_gate, out_kernel, out_bias

    @staticmethod
    def fused_step(x, h, c, constants, index):
        """Gate `index` on its block's input `x`, from `fused_constants`, in TensorFlow ops.

        Args:
            x: the gated block's input, `(batch, height, width, channels)`.
            h, c: the LSTM state from the previous gate (None at the first gate).
            constants: `fused_constants()`.
            index: the gate.

        Returns:
            `(h, c, logit)`, `logit` of shape `(batch, 1)`; the gate opens iff
            `logit > 0`, i.e. iff its probability sigmoid(logit) is > 0.5 (no
            sigmoid on the critical path).
        """
        import tensorflow as tf

        (kernel, bias), out_kernel, out_bias = constants[0][index], constants[1], constants[2]
        pooled = tf.reduce_mean(x, axis=(1, 2))
        z = tf.matmul(pooled if h is None else tf.concat([pooled, h], axis=1), kernel) + bias
        z_i, z_f, z_g, z_o = tf.split(z, 4, axis=1)
        c_new = tf.sigmoid(z_i) * tf.tanh(z_g)
        c = c_new if c is None else tf.sigmoid(z_f) * c + c_new
        h = tf.sigmoid(z_o) * tf.tanh(c)
        return h, c, tf.matmul(h, out_kernel) + out_bias

    def program_sign_policy(self, margin=20.0):
        """Overwrites the shared cell and output unit: each gate opens iff its projection's unit 0 is > 0.

        The cell forgets the previous gate's state, so every gate decides
        from its own projection alone; `program_projection` then sets what
        each gate looks at. Used to give the gates known decisions (tests,
        benchmarks, int8 calibration with every branch running); it replaces
        the learned policy.

        Args:
            margin: size of the pre-activations; 20 puts the probabilities
                within 1e-6 of 0 or 1 for a projection of +-1.
        """
        import numpy as np

        units = self.units
        kernel, recurrent, bias = self.cell.get_weights()
        kernel = np.zeros_like(kernel)
        bias = np.zeros_like(bias)
        # Keras' LSTMCell gate order: input, forget, cell, output.
        bias[0:units] = margin              # input gate open
        bias[units:2 * units] = -margin     # forget the previous gate's state
        bias[3 * units:4 * units] = margin  # output gate open
        kernel[0, 2 * units] = margin       # unit 0: c = tanh(margin * x_0)
        self.cell.set_weights([kernel, np.zeros_like(recurrent), bias])
        w, b = self.output_dense.get_weights()
        w = np.zeros_like(w)
        w[0, 0] = margin                    # logit = margin * tanh(c_0): the sign of x_0
        self.output_dense.set_weights([w, np.zeros_like(b)])

    def program_projection(self, index, channel=None, offset=0.0, scale=1.0):
        """Sets projection `index`'s unit 0 to `(pooled[channel] - offset) / scale`, the other units to 0.

        With `channel` None the unit is the constant `-offset / scale`. After
        `program_sign_policy`, gate `index` opens iff that unit is > 0.
        """
        import numpy as np

        projection = self.projections[index]
        kernel, bias = projection.get_weights()
        kernel = np.zeros_like(kernel)
        bias = np.zeros_like(bias)
        if channel is not None:
            kernel[channel, 0] = 1.0 / scale
        bias[0] = -offset / scale
        projection.set_weights([kernel, bias])

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


def straight_through(probability, training, floor=None, noise=None, seed=None, uniform=None, threshold=None):
    """Returns the hard decision `probability > 0.5` (or `> threshold` at inference) as float.

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
    move each p towards 0 or 1. Inference is deterministic: `p > threshold`.

    Args:
        probability: gate probabilities, any shape.
        training: whether to attach the straight-through gradient (and noise).
        floor: None, or a scalar 0/1: with 1 every decision is 1 (the block
            runs) while the gradient still reaches `probability` (gate warm-up).
        noise: None or a scalar >= 0: the scale of the logistic noise.
        seed: a `keras.random.SeedGenerator` for the noise.
        uniform: None, or uniform (0, 1) samples shaped like `probability`
            to make the noise from (instead of drawing them with `seed`).
        threshold: None (0.5) or, at inference only, the probability above
            which a block runs (a scalar, Python or tensor): an operating
            point chosen at deployment. Training always decides at 0.5.

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
    cut = 0.5 if training or threshold is None else ops.cast(threshold, probability.dtype)
    hard = ops.cast(ops.greater(soft, cut), probability.dtype)
    if floor is not None:
        hard = ops.maximum(hard, ops.cast(floor, probability.dtype))
    if training:
        # (soft - stop_gradient(soft)) is exactly 0 in value: decisions stay exactly 0 or 1.
        return hard + (soft - ops.stop_gradient(soft))
    return hard
