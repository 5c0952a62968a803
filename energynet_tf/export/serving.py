"""The serving graph: EnergyNet's forward pass with real skipping (`tf.cond` per gate), and the SavedModel."""

import os


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
            out = block.merge(block.residual(x, training=False), shortcut)
            return tf.where(per_example(decision), out, shortcut)

        return tf.cond(any_open, run_and_select, skip_all, name=f"{block.name}_skip")

    def run_some():
        d = decision[:, 0]
        shortcut = block.shortcut(x, training=False)
        open_index = tf.where(d)[:, 0]
        residual = block.residual(tf.gather(x, open_index), training=False)
        out_open = block.merge(residual, tf.gather(shortcut, open_index))
        # Stitch: example j takes row cumsum(d)[j] - 1 of out_open if open,
        # else row j of the shortcut (placed after out_open).
        position = tf.cumsum(tf.cast(d, tf.int32)) - 1
        num_open = tf.shape(out_open)[0]
        rows = tf.where(d, position, num_open + tf.range(tf.shape(x)[0]))
        return tf.gather(tf.concat([out_open, shortcut], axis=0), rows)

    def some_or_none():
        return tf.cond(any_open, run_some, skip_all, name=f"{block.name}_some")

    return tf.cond(tf.reduce_all(decision), run_all, some_or_none, name=f"{block.name}_skip")


def gate_constants(model):
    """The model's gates as fused constants (`RNNGate.fused_constants`), or None for a baseline.

    Raises:
        ExportError: if the gate's cell is not the one the fused gate assumes.
    """
    if model.gate is None:
        return None
    try:
        return model.gate.fused_constants()
    except ValueError as e:
        raise ExportError(str(e)) from None


def logit_threshold(threshold):
    """The logit cut equal to probability `threshold`: `p > t` iff `logit > log(t / (1 - t))` (0 for 0.5)."""
    import math

    from energynet_tf import evaluation

    threshold = evaluation.check_threshold(threshold)
    return 0.0 if threshold == 0.5 else math.log(threshold / (1.0 - threshold))


def _network(model, images, method, constants, threshold=0.5):
    """Stem, gated blocks and head on `images`, through the model's own walk.

    Each gate is computed from its fused constants (`RNNGate.fused_step`) and
    its block runs or is skipped as `method` says (`_run_gated_block`); a
    gate opens iff its probability is > `threshold`.

    Returns:
        `(logits, gate logits (batch, num_gates), decisions (batch, num_gates)
        float 0/1)`, the last two None for a baseline.
    """
    import tensorflow as tf

    x = model.stem(images)
    if model.gate is None:
        return model.head(model.walk(x)), None, None
    cut = logit_threshold(threshold)
    gate_logits = []
    state = [None, None]

    def decide(index, x):
        state[0], state[1], logit = model.gate.fused_step(x, state[0], state[1], constants, index)
        gate_logits.append(logit)
        return tf.greater(logit, cut)

    x = model.walk(x, decide=decide, run=lambda block, x, decision: _run_gated_block(block, x, decision, method))
    gate_logits = tf.concat(gate_logits, axis=1)
    return model.head(x), gate_logits, tf.cast(tf.greater(gate_logits, cut), tf.float32)


def serving_function(model, batched=DEFAULT_BATCHED_METHOD, check_shape=True, threshold=0.5):
    """Returns `f(images) -> dict` computing the exported outputs with real skipping.

    Args:
        model: an `EnergyNet` (gated or baseline).
        batched: how a batch with mixed decisions skips: "gather" (the block
            runs on the open examples only) or "dense" (the block runs on the
            whole batch if any example needs it). Also "single" (one `tf.cond`
            per block; batch size 1 only) and "mask" (no skipping: the
            training-time blend, for comparisons).
        check_shape: add the run-time input shape check (TFLite drops it).
        threshold: a gate runs its block iff its probability is > this, in
            (0, 1) (default 0.5): the operating point, fixed in the graph.

    The gates are computed from their weights rearranged as constants
    (`RNNGate.fused_constants`: fewer ops, the same function up to float
    rounding), and a gate decides "run" iff its logit is > log(t / (1 - t)),
    i.e. its probability is > t = `threshold`.

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
    constants = gate_constants(model)
    logit_threshold(threshold)  # refuse a bad threshold before tracing

    def serve(images):
        if check_shape:
            images = _check_images_in_graph(images, image_shape)
        batch = tf.shape(images)[0]
        logits, gate_logits, decisions = _network(model, images, batched, constants, threshold)
        if decisions is not None:
            probabilities = tf.sigmoid(gate_logits)
        else:
            # A baseline: every block runs (but the removed ones).
            probabilities = tf.tile(tf.constant(model.fixed_decisions())[None, :], [batch, 1])
            decisions = probabilities
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
    needed = ("stem", "walk", "head", "gate", "energy_table", "image_shape", "num_gates")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ExportError(
            f"export needs an energynet_tf EnergyNet model; received {type(model).__name__} without {missing}"
        )


def float32_model(model):
    """`model` if it computes in float32, else a float32 copy of it with the same weights.

    The serving graph (SavedModel, TFLite) is float32 whatever policy the
    model was trained under: a mixed-precision model's variables are float32
    already, so the copy computes what the trained weights define, at full
    precision, and the parity tests compare the exports with it.
    """
    policy = getattr(model, "dtype_policy", None)
    if policy is None or policy.compute_dtype == "float32":
        return model
    config = model.get_config()
    config["dtype"] = "float32"
    copy = type(model).from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def save_saved_model(model, path, batched=DEFAULT_BATCHED_METHOD, check_shape=True, batch_size=None, threshold=0.5):
    """Writes the serving SavedModel of `model` to directory `path`.

    Args:
        model: an `EnergyNet`.
        path: directory to write (created; must not hold a SavedModel).
        batched: see `serving_function`.
        check_shape: see `serving_function`.
        batch_size: None (any batch size) or a fixed batch size; "single"
            needs 1.
        threshold: see `serving_function`.

    Returns:
        `path`.
    """
    check_model(model)
    model = float32_model(model)
    if batched == "single" and batch_size != 1:
        raise ValueError("the 'single' method needs batch_size=1")
    _archive(model, serving_function(model, batched, check_shape, threshold), batch_size).write_out(os.fspath(path), verbose=False)
    return os.fspath(path)
