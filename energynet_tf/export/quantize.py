"""int8 TFLite: calibration that reaches every branch, and the flatbuffer edits it needs."""

import tempfile

from energynet_tf.export.common import (  # noqa: F401
    ExportError,
    INPUT_NAME,
    SERVING_KEY,
)
from energynet_tf.export.gate_programs import (  # noqa: F401
    force_gate_decisions,
)
from energynet_tf.export.loading import (  # noqa: F401
    _check_images_np,
)
from energynet_tf.export.serving import (  # noqa: F401
    check_model,
    float32_model,
    save_saved_model,
)


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


def _calibrate(model, images, threshold=0.5):
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="energynet-int8-") as tmp:
        save_saved_model(model, tmp, "single", check_shape=False, batch_size=1, threshold=threshold)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SERVING_KEY])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter._experimental_calibrate_only = True  # pylint: disable=protected-access
        return converter.convert()


def convert_to_tflite_int8(model, representative_images, calibration_examples=None, fallback_examples=32,
                           threshold=0.5):
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
        threshold: the gate threshold baked into the graph (`serving_function`).

    Returns:
        `(tflite bytes, info dict)`.
    """
    from tensorflow.lite.python import convert

    check_model(model)
    model = float32_model(model)
    if representative_images is None or len(representative_images) == 0:
        raise ExportError("int8 quantisation needs representative images (real, normalised inputs)")
    images = _check_images_np(representative_images, model.image_shape)
    if calibration_examples is not None:
        images = images[:calibration_examples]
    calibrated = _calibrate(model, images, threshold)
    filled = 0
    if model.gate is not None:
        saved = model.gate.get_weights()
        try:
            fallbacks = []
            for value in (1, 0):
                force_gate_decisions(model, [value] * model.num_gates)
                fallbacks.append(_calibrate(model, images[:fallback_examples], threshold))
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
