"""Loading an export and running it (SavedModel or the LiteRT interpreter) with input checks."""

import dataclasses
import json
import os

import numpy as np

from energynet_tf.export.common import (  # noqa: F401
    ExportError,
    INPUT_NAME,
    INT8_TFLITE_FILE,
    METADATA_FILE,
    OUTPUT_KEYS,
    SAVED_MODEL_DIR,
    SERVING_KEY,
    TFLITE_FILE,
)


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
