"""Float TFLite conversion of the serving graph, and op counts of a converted model."""

import collections
import os
import tempfile

from energynet_tf.export.common import (  # noqa: F401
    DEFAULT_TFLITE_BATCHED_METHOD,
    SERVING_KEY,
    TFLITE_BATCHED_METHODS,
)
from energynet_tf.export.serving import (  # noqa: F401
    _archive,
    check_model,
    save_saved_model,
)


def convert_to_tflite(model, batched=DEFAULT_TFLITE_BATCHED_METHOD, threshold=0.5):
    """Converts `model`'s serving graph to a float32 TFLite flatbuffer with `IF` ops.

    The conversion goes through a SavedModel written by Keras' `ExportArchive`
    (docs/design.md §4: `from_concrete_functions` converts but fails at run time).

    Args:
        model: an `EnergyNet`.
        batched: "single" (input batch size 1, one `IF` per gated block on
            that image's decision) or "gather"/"dense" (a resizable batch;
            see `serving_function`); "mask" (every block runs, for
            comparisons) also gives a resizable batch.
        threshold: a gate runs its block iff its probability is > this
            (`serving_function`).

    Returns:
        The TFLite model as bytes.

    Raises:
        ValueError: if `batched` is not one of `TFLITE_BATCHED_METHODS`.
    """
    import tensorflow as tf

    if batched not in TFLITE_BATCHED_METHODS + ("mask",):
        raise ValueError(f"Argument `batched` must be one of {TFLITE_BATCHED_METHODS}; received: {batched!r}")
    check_model(model)
    batch_size = 1 if batched == "single" else None
    with tempfile.TemporaryDirectory(prefix="energynet-export-") as tmp:
        # TFLite drops asserts; the interpreter and `load_exported` check shapes.
        save_saved_model(model, tmp, batched, check_shape=False, batch_size=batch_size, threshold=threshold)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SERVING_KEY])
        return converter.convert()


def _convert_batch1(model, serve):
    """Converts `serve` (images -> dict of tensors) at batch size 1 to TFLite bytes."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="energynet-tflite-") as tmp:
        _archive(model, serve, batch_size=1).write_out(tmp, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SERVING_KEY]).convert()


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
