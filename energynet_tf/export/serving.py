"""The serving graph: EnergyNet's forward pass with real skipping (`tf.cond` per gate), and the SavedModel."""

import os

import numpy as np

from energynet_tf.export.common import (  # noqa: F401
    BATCHED_METHODS,
    DEFAULT_BATCHED_METHOD,
    ExportError,
    INPUT_NAME,
    SERVING_KEY,
)


def _check_images_in_graph(images, image_shape):
    """Run-time shape check that survives graph optimisation.

    The signature declares `(None, H, W, C)`, but a restored signature does not
    check shapes (a rank-3 input crashes oneDNN's convolution), so the shape is
    checked here. The shape vector is padded so that any rank compares
    element-wise with the expected vector.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    expected = list(image_shape) + [-1, -1]
    padded = tf.concat([shape, tf.fill([6], -1)], axis=0)[1:6]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(padded, expected)),
        [
            f"EnergyNet serving: expected float32 images of shape (batch, {', '.join(map(str, image_shape))}); "
            "received shape",
            shape,
        ],
        summarize=8,
        name="check_image_shape",
    )
    with tf.control_dependencies([check]):
        images = tf.identity(images)
    return tf.ensure_shape(images, (None,) + tuple(image_shape))


def _run_gated_block(block, x, decision, method):
    """The block where `decision` (bool, `(batch, 1)`) is true, its shortcut elsewhere."""
    import tensorflow as tf

    def run_all():
        return block(x, training=False)

    def skip_all():
        return block.shortcut(x, training=False)

    def per_example(d):
        return tf.reshape(d, (-1, 1, 1, 1))

    if method == "mask":
        # For comparison only: what training (and public gated ResNets) do,
        # the block always runs and is multiplied by the decision.
        return block(x, decision=tf.cast(decision[:, 0], x.dtype), training=False)
    if method == "ignore":
        # The overhead probe "gates": the block runs whatever the decision.
        return run_all()
    if method == "single":
        # Batch size 1 only (a static input): one IF per block. A reshape to
        # the scalar predicate, not a reduction: one op less per gate.
        return tf.cond(tf.reshape(decision, ()), run_all, skip_all, name=f"{block.name}_skip")
    any_open = tf.reduce_any(decision)
    if method == "dense":

        def run_and_select():
            shortcut = block.shortcut(x, training=False)
            out = tf.nn.relu(block.residual(x, training=False) + shortcut)
            return tf.where(per_example(decision), out, shortcut)

        return tf.cond(any_open, run_and_select, skip_all, name=f"{block.name}_skip")

    def run_some():
        d = decision[:, 0]
        shortcut = block.shortcut(x, training=False)
        open_index = tf.where(d)[:, 0]
        residual = block.residual(tf.gather(x, open_index), training=False)
        out_open = tf.nn.relu(residual + tf.gather(shortcut, open_index))
        # Stitch: example j takes row cumsum(d)[j] - 1 of out_open if open,
        # else row j of the shortcut (placed after out_open).
        position = tf.cumsum(tf.cast(d, tf.int32)) - 1
        num_open = tf.shape(out_open)[0]
        rows = tf.where(d, position, num_open + tf.range(tf.shape(x)[0]))
        return tf.gather(tf.concat([out_open, shortcut], axis=0), rows)

    def some_or_none():
        return tf.cond(any_open, run_some, skip_all, name=f"{block.name}_some")

    return tf.cond(tf.reduce_all(decision), run_all, some_or_none, name=f"{block.name}_skip")


def _fused_gate_constants(model):
    """The gates' weights rearranged for fewer ops, as float32 NumPy constants.

    Gate i computes (docs/design.md §1.2, Keras' LSTMCell) `x = pool @ P_i + b_i`,
    `z = x @ W + h @ U + b`, `[i, f, g, o] = split(z)`; its projection folds
    into the cell: `z = [pool, h] @ [[P_i W], [U]] + (b_i W + b)`, one matmul.
    At the first gate `h = c = 0`, so `z = pool @ P_0 W + (b_0 W + b)`.

    Raises:
        ExportError: if the cell is not the tanh/sigmoid LSTM cell with a bias
            that this rearrangement assumes.
    """
    gate = model.gate
    _check_lstm_cell(gate.cell)
    kernel, recurrent, bias = (np.asarray(w, np.float64) for w in gate.cell.get_weights())
    constants = []
    for i, projection in enumerate(gate.projections):
        p_kernel, p_bias = (np.asarray(w, np.float64) for w in projection.get_weights())
        folded = p_kernel @ kernel
        if i > 0:
            folded = np.concatenate([folded, recurrent], axis=0)
        constants.append((folded.astype(np.float32), (p_bias @ kernel + bias).astype(np.float32)))
    out_kernel, out_bias = (np.asarray(w, np.float32) for w in gate.output_dense.get_weights())
    return constants, out_kernel, out_bias


def _check_lstm_cell(cell):
    from keras import activations

    if (
        activations.get(cell.activation) is not activations.tanh
        or activations.get(cell.recurrent_activation) is not activations.sigmoid
        or not cell.use_bias
    ):
        raise ExportError("the fused gate expects an LSTMCell with tanh, sigmoid and a bias")


def _gate_step(x, h, c, gate_constants, index):
    """Gate `index` on block output `x` with LSTM state `(h, c)` (None at the first gate).

    Returns `(h, c, logit)`, `logit` of shape `(batch, 1)`; the gate opens iff
    `logit > 0`, i.e. iff its probability sigmoid(logit) is > 0.5 (no sigmoid
    on the critical path).
    """
    import tensorflow as tf

    (kernel, bias), out_kernel, out_bias = gate_constants[0][index], gate_constants[1], gate_constants[2]
    pooled = tf.reduce_mean(x, axis=(1, 2))
    z = tf.matmul(pooled if h is None else tf.concat([pooled, h], axis=1), kernel) + bias
    z_i, z_f, z_g, z_o = tf.split(z, 4, axis=1)
    c_new = tf.sigmoid(z_i) * tf.tanh(z_g)
    c = c_new if c is None else tf.sigmoid(z_f) * c + c_new
    h = tf.sigmoid(z_o) * tf.tanh(c)
    return h, c, tf.matmul(h, out_kernel) + out_bias


def _stem_and_first_block(model, images):
    """The layers before the first gate: stem (and its pool) and block 0."""
    import tensorflow as tf

    x = tf.nn.relu(model.stem_bn(model.stem_conv(images), training=False))
    if model.stem_pool is not None:
        x = model.stem_pool(x)
    return model.res_blocks[0](x, training=False)


def _network(model, images, method, gate_constants):
    """Stem, gated blocks and head on `images`.

    Returns:
        `(logits, gate logits (batch, num_gates), decisions (batch, num_gates)
        float 0/1)`, the last two None for a baseline.
    """
    import tensorflow as tf

    x = _stem_and_first_block(model, images)
    if model.gate is None:
        for block in model.res_blocks[1:]:
            x = block(x, training=False)
        return model.classifier(model.head_pool(x)), None, None
    gate_logits = []
    h = c = None
    for i, block in enumerate(model.res_blocks[1:]):
        h, c, logit = _gate_step(x, h, c, gate_constants, i)
        gate_logits.append(logit)
        x = _run_gated_block(block, x, tf.greater(logit, 0.0), method)
    logits = model.classifier(model.head_pool(x))
    gate_logits = tf.concat(gate_logits, axis=1)
    return logits, gate_logits, tf.cast(tf.greater(gate_logits, 0.0), tf.float32)


def serving_function(model, batched=DEFAULT_BATCHED_METHOD, check_shape=True):
    """Returns `f(images) -> dict` computing the exported outputs with real skipping.

    Args:
        model: an `EnergyNet` (gated or baseline).
        batched: how a batch with mixed decisions skips: "gather" (the block
            runs on the open examples only) or "dense" (the block runs on the
            whole batch if any example needs it). Also "single" (one `tf.cond`
            per block; batch size 1 only) and "mask" (no skipping: the
            training-time blend, for comparisons).
        check_shape: add the run-time input shape check (TFLite drops it).

    The gates are computed from their weights rearranged as constants
    (`_fused_gate_constants`: fewer ops, the same function up to float
    rounding), and a gate decides "run" iff its logit is > 0, i.e. its
    probability is > 0.5.

    Returns:
        A Python function to trace with `tf.function`; its outputs are
        `OUTPUT_KEYS`.
    """
    import tensorflow as tf

    if batched not in BATCHED_METHODS + ("single", "mask"):
        raise ValueError(f"Argument `batched` must be one of {BATCHED_METHODS}; received: {batched!r}")
    from energynet_tf import metrics as metrics_lib

    table = model.energy_table
    image_shape = tuple(model.image_shape)
    num_gates = model.num_gates
    gate_constants = None
    if model.gate is not None:
        gate_constants = _fused_gate_constants(model)

    def serve(images):
        if check_shape:
            images = _check_images_in_graph(images, image_shape)
        batch = tf.shape(images)[0]
        logits, gate_logits, decisions = _network(model, images, batched, gate_constants)
        if decisions is not None:
            probabilities = tf.sigmoid(gate_logits)
        else:
            # A baseline: every block runs.
            probabilities = tf.ones((batch, num_gates), tf.float32)
            decisions = tf.ones((batch, num_gates), tf.float32)
        energy = metrics_lib.normalised_energy(table, decisions)
        return {
            "logits": tf.identity(logits, name="logits"),
            "decisions": tf.identity(decisions, name="decisions"),
            "probabilities": tf.identity(probabilities, name="probabilities"),
            "energy": tf.identity(energy, name="energy"),
        }

    return serve


def _archive(model, serve, batch_size):
    """An `ExportArchive` tracking `model` with `serve` as its serving endpoint."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    # Tracking through ExportArchive (not a tf.Module attribute) is what lets
    # the TFLite converter freeze the variables, those read inside the
    # `tf.cond` branches included.
    archive.track(model)
    spec = tf.TensorSpec((batch_size,) + tuple(model.image_shape), tf.float32, name=INPUT_NAME)
    archive.add_endpoint(SERVING_KEY, serve, input_signature=[spec])
    return archive


def check_model(model):
    """Raises `ExportError` unless `model` is an EnergyNet the export can take."""
    needed = ("res_blocks", "gate", "stem_conv", "stem_bn", "head_pool", "classifier", "energy_table", "image_shape")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ExportError(
            f"export needs an energynet_tf EnergyNet model; received {type(model).__name__} without {missing}"
        )


def save_saved_model(model, path, batched=DEFAULT_BATCHED_METHOD, check_shape=True, batch_size=None):
    """Writes the serving SavedModel of `model` to directory `path`.

    Args:
        model: an `EnergyNet`.
        path: directory to write (created; must not hold a SavedModel).
        batched: see `serving_function`.
        check_shape: see `serving_function`.
        batch_size: None (any batch size) or a fixed batch size; "single"
            needs 1.

    Returns:
        `path`.
    """
    check_model(model)
    if batched == "single" and batch_size != 1:
        raise ValueError("the 'single' method needs batch_size=1")
    _archive(model, serving_function(model, batched, check_shape), batch_size).write_out(os.fspath(path), verbose=False)
    return os.fspath(path)
