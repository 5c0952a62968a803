"""Export of an EnergyNet in which skipped blocks really do not run.

Training multiplies a skipped block by zero (`block(x, decision=m)`), so the
block still runs. The serving graph built here uses real control flow instead:
for each gated block, `tf.cond` chooses between running the block and its
shortcut, so a closed gate removes the block's work. The same graph is saved
as a SavedModel and converted to TFLite, where each `tf.cond` becomes an `IF`
op whose untaken branch (a subgraph of its own) is not invoked.

Batches. At batch size 1 a block either runs or not. For a batch whose
decisions differ there are two methods:

* "gather" (the SavedModel's default) runs the block only on the examples
  whose gate is open::

      all open  -> the block on the whole batch (no copies)
      none open -> the shortcut only
      some open -> s = shortcut(x); the residual branch on x[open] only;
                   the outputs are stitched back in batch order with a gather

* "dense" runs the block on the whole batch when any example's gate is open
  and selects per example; its cost is all-or-nothing per batch, but all its
  shapes are static.

The TFLite model's default is "single": its input has batch size 1 (the
on-device case) and each gated block is one `IF` on that image's decision,
with the plain block in one branch and the shortcut in the other: no
per-example select, no dynamic shapes. `load_exported` feeds a larger batch
one image at a time. An `IF` op copies its inputs into the branch subgraph
and the result back, and "dense"'s per-example select is one more pass over
the block's output; at batch 1 "single" is the fastest (docs/export.md has
the measurements). `tflite_batched="dense"` gives a resizable batch.

Outputs of the serving signature `serving_default` (input `images`, float32
`(batch, height, width, channels)`, normalised as in training):

* `logits` `(batch, num_classes)`;
* `decisions` `(batch, num_gates)`: 1.0 where gate i ran block i + 1, else 0.0
  (all ones for a baseline);
* `probabilities` `(batch, num_gates)`: the gates' probabilities;
* `energy` `(batch,)`: the normalised inference energy of each example,
  `(E_fixed + E_gates + sum_b m_b E_b) / E_total` (docs/design.md §1.3).

The SavedModel checks its input at run time (rank, height, width, channels)
and fails with an `InvalidArgumentError` naming the expected and received
shapes; a wrong dtype is refused by the signature. `load_exported` wraps a
SavedModel or a TFLite file in a Python callable that checks NumPy inputs
first and raises `ValueError`/`TypeError`.

Example:

    model = keras.saving.load_model("runs/r38/model.keras")
    paths = export_model(model, "exports/r38")
    served = load_exported("exports/r38", backend="tflite")
    out = served(images)          # dict of NumPy arrays
"""

import collections
import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

SERVING_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_KEYS = ("logits", "decisions", "probabilities", "energy")
BATCHED_METHODS = ("gather", "dense")
TFLITE_BATCHED_METHODS = ("single",) + BATCHED_METHODS
DEFAULT_BATCHED_METHOD = "gather"  # the SavedModel's
DEFAULT_TFLITE_BATCHED_METHOD = "single"  # batch size 1: see the module doc

SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
INT8_TFLITE_FILE = "model_int8.tflite"
METADATA_FILE = "export.json"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An export could not be made or read; the message says why and what to do."""


# -----------------------------------------------------------------------------
# The serving computation.


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


def _check_model(model):
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
    _check_model(model)
    if batched == "single" and batch_size != 1:
        raise ValueError("the 'single' method needs batch_size=1")
    _archive(model, serving_function(model, batched, check_shape), batch_size).write_out(os.fspath(path), verbose=False)
    return os.fspath(path)


# -----------------------------------------------------------------------------
# TFLite.


def _representative_dataset(images):
    def generate():
        for image in images:
            yield {INPUT_NAME: image[None]}

    return generate


def _read_flatbuffer(content):
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(content), 0))


def _write_flatbuffer(model_t):
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_t))


def _has_range(tensor):
    q = tensor.quantization
    return q is not None and q.min is not None and len(q.min) > 0


def _strip_digits(name):
    return "".join(c for c in (name.decode() if isinstance(name, bytes) else str(name)) if not c.isdigit())


def _opcode(model_t, op):
    code = model_t.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode), code.customCode


def merge_calibrations(primary, fallbacks):
    """Fills the tensors that `primary`'s calibration never reached from `fallbacks`.

    A calibration run only records the ranges of the tensors it computes, so
    the blocks that the gates never opened on the calibration images (and the
    shortcut branches of blocks they never closed) have none, and the
    quantiser would leave them in float. The fallbacks are calibrations of the
    same graph with other gate weights (forced open, forced closed): their
    constants differ, so tensors are matched by position: subgraph by
    subgraph, operator by operator (the operator sequences must be identical).

    Args:
        primary: calibrated flatbuffer bytes (the learned gates).
        fallbacks: calibrated flatbuffer bytes of the same graph with other
            constants, in order of preference.

    Returns:
        `(merged bytes, number of tensors filled in)`.

    Raises:
        ExportError: if the graphs' operators differ.
    """
    merged = _read_flatbuffer(primary)
    filled = 0
    for other in (_read_flatbuffer(f) for f in fallbacks):
        if len(other.subgraphs) != len(merged.subgraphs):
            raise ExportError("calibration graphs differ in their number of subgraphs; cannot merge ranges")
        for g, h in zip(merged.subgraphs, other.subgraphs):
            ops_g, ops_h = g.operators or [], h.operators or []
            if _strip_digits(g.name) != _strip_digits(h.name) or len(ops_g) != len(ops_h) or [
                _opcode(merged, op) for op in ops_g
            ] != [_opcode(other, op) for op in ops_h]:
                raise ExportError(f"calibration graphs differ in subgraph {g.name!r}; cannot merge ranges")
            pairs = list(zip(list(g.inputs), list(h.inputs)))
            for a, b in zip(ops_g, ops_h):
                pairs += list(zip(list(a.outputs), list(b.outputs)))
                if a.intermediates is not None and b.intermediates is not None:
                    pairs += list(zip(list(a.intermediates), list(b.intermediates)))
            for i, j in pairs:
                if i < 0 or j < 0:
                    continue
                t, u = g.tensors[i], h.tensors[j]
                if not _has_range(t) and _has_range(u):
                    t.quantization = u.quantization
                    filled += 1
    return _write_flatbuffer(merged), filled


def keep_output_float(calibrated, output_key, stop_ops=("CAST",)):
    """Removes the calibrated ranges of the ops computing one output, so they stay float.

    Walks back from the signature output `output_key` in the main subgraph
    through the ops that produce it, up to (excluding) ops in `stop_ops` and
    constants. For the energy output: int8 would round the energy sum to 1/256
    of its range, while the decisions it is computed from are exact.

    Args:
        calibrated: calibrated flatbuffer bytes.
        output_key: a signature output name.
        stop_ops: op names at which the walk stops.

    Returns:
        `(bytes, number of tensors cleared)`.
    """
    model = _read_flatbuffer(calibrated)
    graph = model.subgraphs[0]
    signature = next(sig for sig in model.signatureDefs if (sig.signatureKey or b"").decode() == SERVING_KEY)
    start = [t.tensorIndex for t in signature.outputs if (t.name.decode() if isinstance(t.name, bytes) else t.name) == output_key]
    if not start:
        raise ExportError(f"output {output_key!r} not found in the signature")
    producer = {}
    for op in graph.operators or []:
        for t in op.outputs:
            producer[t] = op
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    cleared, seen, stack = 0, set(), list(start)
    while stack:
        index = stack.pop()
        if index in seen or index < 0 or index not in producer:
            continue
        seen.add(index)
        op = producer[index]
        if names.get(_opcode(model, op)[0]) in stop_ops:
            continue
        if _has_range(graph.tensors[index]):
            graph.tensors[index].quantization = None
            cleared += 1
        stack.extend(op.inputs)
    return _write_flatbuffer(model), cleared


def _calibrate(model, images):
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="energynet-int8-") as tmp:
        save_saved_model(model, tmp, "single", check_shape=False, batch_size=1)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SERVING_KEY])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter._experimental_calibrate_only = True  # pylint: disable=protected-access
        return converter.convert()


def convert_to_tflite_int8(model, representative_images, calibration_examples=None, fallback_examples=32):
    """Post-training int8 TFLite model of `model`, for batch size 1.

    Weights and activations are int8 (per-channel weights), inputs and outputs
    float32; ops without an int8 kernel stay float. The input is fixed to
    batch size 1 (one `IF` per gated block; `load_exported` loops over a
    batch). Calibration runs the learned gates on `representative_images`;
    tensors of branches they never took are calibrated with the gates forced
    open, then closed, on the first `fallback_examples` images (see
    `merge_calibrations`), so every block is quantised.

    Args:
        model: an `EnergyNet`.
        representative_images: float32 `(N, H, W, C)` real images, normalised
            as the model's inputs (a few hundred).
        calibration_examples: use at most this many of them.
        fallback_examples: images for the forced-open/closed calibrations.

    Returns:
        `(tflite bytes, info dict)`.
    """
    from tensorflow.lite.python import convert

    _check_model(model)
    if representative_images is None or len(representative_images) == 0:
        raise ExportError("int8 quantisation needs representative images (real, normalised inputs)")
    images = _check_images_np(representative_images, model.image_shape)
    if calibration_examples is not None:
        images = images[:calibration_examples]
    calibrated = _calibrate(model, images)
    filled = 0
    if model.gate is not None:
        saved = model.gate.get_weights()
        try:
            fallbacks = []
            for value in (1, 0):
                force_gate_decisions(model, [value] * model.num_gates)
                fallbacks.append(_calibrate(model, images[:fallback_examples]))
        finally:
            model.gate.set_weights(saved)
        calibrated, filled = merge_calibrations(calibrated, fallbacks)
    calibrated, _ = keep_output_float(calibrated, "energy")
    quantized = convert.mlir_quantize(calibrated)
    info = {
        "calibration_examples": int(len(images)),
        "fallback_examples": int(min(fallback_examples, len(images))) if model.gate is not None else 0,
        "tensors_calibrated_by_forced_gates": int(filled),
        "batch_size": 1,
    }
    return quantized, info


def convert_to_tflite(model, batched=DEFAULT_TFLITE_BATCHED_METHOD):
    """Converts `model`'s serving graph to a float32 TFLite flatbuffer with `IF` ops.

    The conversion goes through a SavedModel written by Keras' `ExportArchive`
    (docs/design.md §4: `from_concrete_functions` converts but fails at run time).

    Args:
        model: an `EnergyNet`.
        batched: "single" (input batch size 1, one `IF` per gated block on
            that image's decision) or "gather"/"dense" (a resizable batch;
            see `serving_function`); "mask" (every block runs, for
            comparisons) also gives a resizable batch.

    Returns:
        The TFLite model as bytes.

    Raises:
        ValueError: if `batched` is not one of `TFLITE_BATCHED_METHODS`.
    """
    import tensorflow as tf

    if batched not in TFLITE_BATCHED_METHODS + ("mask",):
        raise ValueError(f"Argument `batched` must be one of {TFLITE_BATCHED_METHODS}; received: {batched!r}")
    _check_model(model)
    batch_size = 1 if batched == "single" else None
    with tempfile.TemporaryDirectory(prefix="energynet-export-") as tmp:
        # TFLite drops asserts; the interpreter and `load_exported` check shapes.
        save_saved_model(model, tmp, batched, check_shape=False, batch_size=batch_size)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SERVING_KEY])
        return converter.convert()


def _convert_batch1(model, serve):
    """Converts `serve` (images -> dict of tensors) at batch size 1 to TFLite bytes."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="energynet-tflite-") as tmp:
        _archive(model, serve, batch_size=1).write_out(tmp, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SERVING_KEY]).convert()


def convert_subnetwork_to_tflite(model, open_blocks):
    """Converts the network with only the blocks in `open_blocks` to a batch-1 TFLite model.

    No gates, no control flow: the stem, block 0, gated block i + 1 where
    `open_blocks[i]` is truthy (its shortcut elsewhere) and the head, as a
    plain static graph. For an image whose gates decide `open_blocks`, its
    logits are the gated model's, so its latency is what any implementation of
    that image's skipping can at best reach on the same runtime: the
    benchmarks' "oracle".

    Args:
        model: a gated `EnergyNet`.
        open_blocks: `num_gates` decisions.

    Returns:
        The TFLite model as bytes; its signature `serving_default` maps
        `images` to `logits`.

    Raises:
        ValueError: if `open_blocks` does not have `num_gates` entries.
    """
    _check_model(model)
    pattern = [bool(d) for d in np.asarray(open_blocks).reshape(-1)]
    if len(pattern) != model.num_gates:
        raise ValueError(f"Argument `open_blocks` must have {model.num_gates} entries; received {len(pattern)}")

    def serve(images):
        x = _stem_and_first_block(model, images)
        for run, block in zip(pattern, model.res_blocks[1:]):
            x = block(x, training=False) if run else block.shortcut(x, training=False)
        return {"logits": model.classifier(model.head_pool(x))}

    return _convert_batch1(model, serve)


OVERHEAD_PROBES = ("gates", "branches")


def convert_overhead_probe_to_tflite(model, probe):
    """Converts one half of the skipping machinery, alone, to a batch-1 TFLite model.

    The all-open export costs more than the plain network for two reasons:
    the gates run, and every gated block sits in an `IF` branch. A probe keeps
    one of the two, so that a benchmark can measure each against the plain
    network side by side (`tools.bench_latency`):

    * "gates": every block runs in the main graph (no control flow) and the
      gates are computed as in the export; their logits are an output, so the
      converter keeps them.
    * "branches": every gated block is an `IF` as in the export, but there
      are no gates: the predicate is `images[0, 0, 0, 0] >= -inf`, true for
      any image without a NaN, which the converter cannot fold away.

    For an image without a NaN, both give the all-open network's logits.

    Args:
        model: a gated `EnergyNet`.
        probe: one of `OVERHEAD_PROBES`.

    Returns:
        The TFLite model as bytes; its signature `serving_default` maps
        `images` to `logits` (and, for "gates", `gate_logits`).

    Raises:
        ValueError: if `probe` is not one of `OVERHEAD_PROBES`, or the model
            has no gates.
    """
    import tensorflow as tf

    if probe not in OVERHEAD_PROBES:
        raise ValueError(f"Argument `probe` must be one of {OVERHEAD_PROBES}; received: {probe!r}")
    _check_model(model)
    if model.gate is None:
        raise ValueError("Argument `model` must be a gated EnergyNet; received a baseline")
    gate_constants = _fused_gate_constants(model)

    def serve(images):
        if probe == "gates":
            logits, gate_logits, _ = _network(model, images, "ignore", gate_constants)
            return {"logits": logits, "gate_logits": gate_logits}
        x = _stem_and_first_block(model, images)
        always = tf.reshape(tf.greater_equal(images[:, 0, 0, 0], -np.inf), ())
        for block in model.res_blocks[1:]:
            x = _run_gated_block(block, x, always, "single")
        return {"logits": model.classifier(model.head_pool(x))}

    return _convert_batch1(model, serve)


def tflite_op_counts(model_content):
    """Counts the operators of each subgraph of a TFLite model.

    Args:
        model_content: the flatbuffer bytes, or a path to a .tflite file.

    Returns:
        A list, one entry per subgraph (0 is the main graph), of
        `(name, collections.Counter of op names)`.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    if isinstance(model_content, (str, os.PathLike)):
        model = flatbuffer_utils.read_model(os.fspath(model_content))
    else:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_content))
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    result = []
    for subgraph in model.subgraphs:
        counts = collections.Counter()
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = "CUSTOM:" + (code.customCode.decode() if code.customCode else "?")
            counts[name] += 1
        name = subgraph.name.decode() if isinstance(subgraph.name, bytes) else str(subgraph.name)
        result.append((name, counts))
    return result


# -----------------------------------------------------------------------------
# Whole exports.


def _metadata(model, batched, tflite_batched, files, extra):
    table = model.energy_table
    meta = {
        "format_version": FORMAT_VERSION,
        "model": {
            "depth": model.depth,
            "baseline": bool(model.baseline),
            "num_classes": model.num_classes,
            "image_shape": list(model.image_shape),
            "num_gates": model.num_gates,
        },
        "signature": SERVING_KEY,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None] + list(model.image_shape)},
        "outputs": list(OUTPUT_KEYS),
        "batched_skipping": {"saved_model": batched, "tflite": tflite_batched, "int8_tflite": "batch size 1"},
        "energy_table": table.as_dict(),
        "files": files,
    }
    meta.update(extra or {})
    return meta


def export_model(
    model,
    out_dir,
    batched=DEFAULT_BATCHED_METHOD,
    tflite=True,
    tflite_batched=DEFAULT_TFLITE_BATCHED_METHOD,
    int8=False,
    representative_images=None,
    calibration_examples=None,
    metadata=None,
    overwrite=False,
):
    """Writes `out_dir/saved_model/`, `out_dir/model.tflite` and `out_dir/export.json`.

    Everything is written to a temporary sibling directory first and moved into
    place at the end, so a failed export leaves nothing behind.

    Args:
        model: an `EnergyNet`.
        out_dir: the export directory; must not exist or be empty unless
            `overwrite`.
        batched: the SavedModel's batched skipping (see `serving_function`).
        tflite: also write `model.tflite`.
        tflite_batched: the TFLite model's batched skipping.
        int8: also write `model_int8.tflite` (see `convert_to_tflite_int8`).
        representative_images: calibration images for `int8`.
        calibration_examples: use at most this many calibration images.
        metadata: extra JSON-able entries for `export.json`.
        overwrite: replace an existing export in `out_dir`.

    Returns:
        A dict of the written paths (`saved_model`, `tflite`, `int8_tflite`,
        `metadata`).

    Raises:
        ExportError: if `out_dir` holds other files or is a file.
    """
    _check_model(model)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ExportError(f"output path {out_dir} exists and is not a directory")
        if os.listdir(out_dir) and not overwrite:
            raise ExportError(f"output directory {out_dir} is not empty; choose a new directory or overwrite")
    parent = os.path.dirname(out_dir)
    created = []  # parent directories made here, removed again on failure
    directory = parent
    while not os.path.exists(directory):
        created.append(directory)
        directory = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        files = {"saved_model": SAVED_MODEL_DIR}
        save_saved_model(model, os.path.join(staging, SAVED_MODEL_DIR), batched)
        if tflite:
            with open(os.path.join(staging, TFLITE_FILE), "wb") as f:
                f.write(convert_to_tflite(model, tflite_batched))
            files["tflite"] = TFLITE_FILE
        extra = dict(metadata or {})
        if int8:
            content, info = convert_to_tflite_int8(model, representative_images, calibration_examples)
            with open(os.path.join(staging, INT8_TFLITE_FILE), "wb") as f:
                f.write(content)
            files["int8_tflite"] = INT8_TFLITE_FILE
            extra["int8_calibration"] = info
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump(_metadata(model, batched, tflite_batched, files, extra), f, indent=2, sort_keys=True)
            f.write("\n")
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:
            try:
                os.rmdir(directory)
            except OSError:
                pass
        raise
    paths = {key: os.path.join(out_dir, name) for key, name in files.items()}
    paths["metadata"] = os.path.join(out_dir, METADATA_FILE)
    return paths


# -----------------------------------------------------------------------------
# Loading and running an export from Python.


def _check_images_np(images, image_shape):
    """Returns `images` as a float32 NumPy array or raises a clear error."""
    try:
        array = np.asarray(images)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"images must be an array of shape (batch,) + {tuple(image_shape)}; cannot convert: {e}") from None
    expected = f"float32 images of shape (batch,) + {tuple(image_shape)}"
    if not (np.issubdtype(array.dtype, np.floating)):
        hint = " (uint8 pixels must be normalised as in training first)" if np.issubdtype(array.dtype, np.integer) else ""
        raise TypeError(f"expected {expected}; received dtype {array.dtype}{hint}")
    if array.ndim == len(image_shape) and tuple(array.shape) == tuple(image_shape):
        raise ValueError(
            f"expected {expected}; received one image of shape {array.shape} (add a batch axis: images[None])"
        )
    if array.ndim != len(image_shape) + 1 or tuple(array.shape[1:]) != tuple(image_shape):
        raise ValueError(f"expected {expected}; received shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"expected {expected} with batch >= 1; received an empty batch {array.shape}")
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("images contain NaN or infinite values")
    return np.ascontiguousarray(array)


@dataclasses.dataclass
class _TFLiteRunner:
    interpreter: object
    input_index: int
    output_indices: dict
    fixed_batch: int = -1  # the model's static batch size, or -1 (resizable)
    batch: int = -1

    def __call__(self, images):
        if self.fixed_batch > 0 and images.shape[0] != self.fixed_batch:
            if images.shape[0] % self.fixed_batch:
                raise ValueError(
                    f"this TFLite model takes batches of {self.fixed_batch}; received {images.shape[0]} images"
                )
            parts = [self(images[i:i + self.fixed_batch]) for i in range(0, images.shape[0], self.fixed_batch)]
            return {key: np.concatenate([p[key] for p in parts]) for key in self.output_indices}
        if images.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input_index, list(images.shape), strict=True)
            self.interpreter.allocate_tensors()
            self.batch = images.shape[0]
        self.interpreter.set_tensor(self.input_index, images)
        self.interpreter.invoke()
        return {key: np.array(self.interpreter.get_tensor(i)) for key, i in self.output_indices.items()}


def tflite_interpreter(model_path, num_threads=None):
    """Returns `(interpreter, input_index, {output_key: tensor_index})` for an exported .tflite."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(model_path), num_threads=num_threads)
    interpreter.allocate_tensors()
    signatures = interpreter.get_signature_list()
    if SERVING_KEY not in signatures:
        raise ExportError(f"{model_path} has no {SERVING_KEY!r} signature (signatures: {sorted(signatures)}); is it an EnergyNet export?")
    runner = interpreter.get_signature_runner(SERVING_KEY)
    inputs = runner.get_input_details()
    outputs = runner.get_output_details()
    missing = sorted(set(OUTPUT_KEYS) - set(outputs))
    if INPUT_NAME not in inputs or missing:
        raise ExportError(f"{model_path} is not an EnergyNet export (inputs {sorted(inputs)}, outputs {sorted(outputs)})")
    del runner
    return interpreter, inputs[INPUT_NAME]["index"], {key: outputs[key]["index"] for key in OUTPUT_KEYS}


class ExportedModel:
    """A SavedModel or TFLite export, called with NumPy images.

    `model(images)` checks `images` (dtype, shape, finite values) and returns a
    dict of NumPy arrays `logits`, `decisions`, `probabilities`, `energy`.
    Float64/float16 images are converted to float32; integer images are
    refused. Not thread-safe (one TFLite interpreter per object).

    Attributes:
        backend: "saved_model" or "tflite".
        path: the file or directory loaded.
        image_shape: `(height, width, channels)`.
        num_gates: number of gates.
    """

    def __init__(self, path, backend, image_shape, num_gates, fn):
        self.path = path
        self.backend = backend
        self.image_shape = tuple(image_shape)
        self.num_gates = num_gates
        self._fn = fn

    def __call__(self, images):
        images = _check_images_np(images, self.image_shape)
        return self._fn(images)

    def __repr__(self):
        return f"ExportedModel(backend={self.backend!r}, path={self.path!r}, image_shape={self.image_shape})"


def _read_metadata(directory):
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from None


def load_exported(path, backend=None, num_threads=None):
    """Loads an export for Python use.

    Args:
        path: an export directory (from `export_model`), its `saved_model`
            directory, or a `.tflite` file.
        backend: for an export directory: "saved_model" (default), "tflite"
            or "int8" (the quantised TFLite model).
        num_threads: TFLite interpreter threads (None: the interpreter's default).

    Returns:
        An `ExportedModel`.

    Raises:
        ExportError: if `path` is not an export.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"export not found: {path}")
    meta = None
    file = None
    if os.path.isdir(path) and os.path.exists(os.path.join(path, METADATA_FILE)):
        meta = _read_metadata(path)
        backend = backend or "saved_model"
        names = {"saved_model": SAVED_MODEL_DIR, "tflite": TFLITE_FILE, "int8": INT8_TFLITE_FILE}
        if backend not in names:
            raise ExportError(f"backend must be one of {sorted(names)}; received {backend!r}")
        file = os.path.join(path, names[backend])
        if not os.path.exists(file):
            raise ExportError(f"{path} has no {names[backend]} (exported without it?)")
    elif os.path.isdir(path):
        if backend not in (None, "saved_model"):
            raise ExportError(f"{path} is a directory; backend {backend!r} needs a .tflite file or an export directory")
        backend, file = "saved_model", path
        meta = _read_metadata(os.path.dirname(os.path.abspath(path)))
    else:
        backend, file = ("int8" if backend == "int8" else "tflite"), path

    if backend == "saved_model":
        import tensorflow as tf

        if not os.path.exists(os.path.join(file, "saved_model.pb")):
            raise ExportError(f"{file} is not a SavedModel directory (no saved_model.pb)")
        loaded = tf.saved_model.load(file)
        if SERVING_KEY not in loaded.signatures:
            raise ExportError(f"{file} has no {SERVING_KEY!r} signature; is it an EnergyNet export?")
        signature = loaded.signatures[SERVING_KEY]
        if meta is None:
            raise ExportError(f"{file}: {METADATA_FILE} not found next to it; load the export directory instead")
        image_shape = meta["model"]["image_shape"]
        num_gates = meta["model"]["num_gates"]

        def run(images):
            out = signature(**{INPUT_NAME: tf.constant(images)})
            return {key: out[key].numpy() for key in OUTPUT_KEYS}

        exported = ExportedModel(file, backend, image_shape, num_gates, run)
        exported._loaded = loaded  # keeps the restored variables alive
        return exported

    interpreter, input_index, outputs = tflite_interpreter(file, num_threads)
    details = interpreter.get_input_details()
    signature = [d for d in details if d["index"] == input_index][0]["shape_signature"]
    image_shape = tuple(int(v) for v in signature[1:])
    output_details = {d["index"]: d for d in interpreter.get_output_details()}
    num_gates = int(output_details[outputs["decisions"]]["shape"][-1])
    fixed_batch = int(signature[0])
    runner = _TFLiteRunner(interpreter, input_index, outputs, fixed_batch=fixed_batch)
    if fixed_batch > 0:
        runner.batch = fixed_batch
    return ExportedModel(file, backend, image_shape, num_gates, runner)


# -----------------------------------------------------------------------------
# Tools for tests and benchmarks.


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
