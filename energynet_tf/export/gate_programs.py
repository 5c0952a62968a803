"""Programs a gated model's gates to given decisions: for calibration (every branch runs) and for tests and benchmarks."""

import numpy as np

from energynet_tf.export.loading import (  # noqa: F401
    _check_images_np,
)


def _program_gate(model, gate_index, channel, offset, scale):
    """Gate `gate_index` opens iff (pooled channel `channel` - offset) / scale > 0."""
    projection = model.gate.projections[gate_index]
    kernel, bias = projection.get_weights()
    kernel = np.zeros_like(kernel)
    bias = np.zeros_like(bias)
    kernel[channel, 0] = 1.0 / scale
    bias[0] = -offset / scale
    projection.set_weights([kernel, bias])


def _program_cell(model, margin):
    gate = model.gate
    units = gate.units
    kernel, recurrent, bias = gate.cell.get_weights()
    kernel = np.zeros_like(kernel)
    bias = np.zeros_like(bias)
    # Keras' LSTMCell gate order: input, forget, cell, output.
    bias[0:units] = margin              # input gate open
    bias[units:2 * units] = -margin     # forget the previous gate's state
    bias[3 * units:4 * units] = margin  # output gate open
    kernel[0, 2 * units] = margin       # unit 0: c = tanh(margin * x_0)
    gate.cell.set_weights([kernel, np.zeros_like(recurrent), bias])
    w, b = gate.output_dense.get_weights()
    w = np.zeros_like(w)
    w[0, 0] = margin                    # logit = margin * tanh(c_0): the sign of x_0
    gate.output_dense.set_weights([w, np.zeros_like(b)])


def force_gate_decisions(model, decisions, margin=20.0):
    """Overwrites the gates' weights so that gate i always decides `decisions[i]`.

    The gates still run (their cost is unchanged): projection i outputs the
    constant +-1 and the shared LSTM cell and output unit pass its sign on,
    giving probabilities sigmoid(+-0.76 * margin). For tests and latency
    benchmarks (all open, half, all closed); it replaces the learned policy.

    Args:
        model: a gated `EnergyNet` (modified in place).
        decisions: `num_gates` values, truthy for "run the block".
        margin: size of the pre-activations; 20 gives probabilities
            within 1e-6 of 0 or 1.
    """
    if model.gate is None:
        raise ValueError("a baseline has no gates to force")
    decisions = [bool(d) for d in np.asarray(decisions).reshape(-1)]
    if len(decisions) != model.num_gates:
        raise ValueError(f"expected {model.num_gates} decisions; received {len(decisions)}")
    _program_cell(model, margin)
    for i, open_ in enumerate(decisions):
        projection = model.gate.projections[i]
        kernel, bias = projection.get_weights()
        bias = np.zeros_like(bias)
        bias[0] = 1.0 if open_ else -1.0
        projection.set_weights([np.zeros_like(kernel), bias])


def set_input_dependent_gates(model, images, open_fraction=0.5, margin=20.0):
    """Overwrites the gates with a simple input-dependent policy, for tests and benchmarks.

    Gate i opens iff one channel of the spatial mean of its input (block i's
    output; the channel that varies most over `images`) exceeds a threshold
    chosen so that it opens for `open_fraction` of `images` (the threshold sits
    midway between two examples, far from the decision boundary). Decisions
    thus differ between examples, as a learned policy's do; on other images
    the open fraction is only approximately `open_fraction`.

    Args:
        model: a gated `EnergyNet` (modified in place).
        images: float32 `(N, H, W, C)` images (N >= 2).
        open_fraction: a float in [0, 1], or one per gate.
        margin: see `force_gate_decisions`.

    Returns:
        The `(N, num_gates)` 0/1 decisions on `images`.
    """
    import tensorflow as tf

    if model.gate is None:
        raise ValueError("a baseline has no gates to set")
    images = tf.constant(_check_images_np(images, model.image_shape))
    fractions = np.broadcast_to(np.asarray(open_fraction, np.float64), (model.num_gates,))
    _program_cell(model, margin)
    x = tf.nn.relu(model.stem_bn(model.stem_conv(images), training=False))
    if model.stem_pool is not None:
        x = model.stem_pool(x)
    x = model.res_blocks[0](x, training=False)
    count = int(images.shape[0])
    decisions = np.zeros((count, model.num_gates), np.float32)
    for i, block in enumerate(model.res_blocks[1:]):
        pooled = tf.reduce_mean(x, axis=(1, 2)).numpy().astype(np.float64)
        channel = int(np.argmax(pooled.std(axis=0)))
        feature = pooled[:, channel]
        ordered = np.sort(feature)
        closed = int(round((1.0 - fractions[i]) * count))
        spread = max(float(ordered[-1] - ordered[0]), 1e-6)
        if closed <= 0:
            offset = ordered[0] - spread
        elif closed >= count:
            offset = ordered[-1] + spread
        else:
            offset = 0.5 * (ordered[closed - 1] + ordered[closed])
        _program_gate(model, i, channel, offset, spread / 10.0)
        decision = feature > offset
        decisions[:, i] = decision
        run = block(x, training=False)
        skip = block.shortcut(x, training=False)
        x = tf.where(tf.reshape(tf.constant(decision), (-1, 1, 1, 1)), run, skip)
    return decisions
