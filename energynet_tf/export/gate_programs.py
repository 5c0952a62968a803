"""Programs a gated model's gates to given decisions: for calibration (every branch runs) and for tests and benchmarks."""

import numpy as np

from energynet_tf.export.loading import (  # noqa: F401
    _check_images_np,
)


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
    model.gate.program_sign_policy(margin)
    for i, open_ in enumerate(decisions):
        # Projection unit 0 is the constant +1 (open) or -1 (closed).
        model.gate.program_projection(i, offset=-1.0 if open_ else 1.0)


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
    model.gate.program_sign_policy(margin)
    count = int(images.shape[0])
    decisions = np.zeros((count, model.num_gates), np.float32)

    def decide(index, x):
        pooled = tf.reduce_mean(x, axis=(1, 2)).numpy().astype(np.float64)
        channel = int(np.argmax(pooled.std(axis=0)))
        feature = pooled[:, channel]
        ordered = np.sort(feature)
        closed = int(round((1.0 - fractions[index]) * count))
        spread = max(float(ordered[-1] - ordered[0]), 1e-6)
        if closed <= 0:
            offset = ordered[0] - spread
        elif closed >= count:
            offset = ordered[-1] + spread
        else:
            offset = 0.5 * (ordered[closed - 1] + ordered[closed])
        model.gate.program_projection(index, channel, offset, spread / 10.0)
        decisions[:, index] = feature > offset
        return decisions[:, index] > 0

    def run(block, x, decision):
        return tf.where(tf.reshape(tf.constant(decision), (-1, 1, 1, 1)),
                        block(x, training=False), block.shortcut(x, training=False))

    model.walk(model.stem(images), decide=decide, run=run)
    return decisions
