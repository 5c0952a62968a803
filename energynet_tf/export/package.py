"""`export_model`: one directory with the SavedModel, the TFLite models and `export.json`."""

import json
import os
import shutil
import tempfile

from energynet_tf.export.common import (  # noqa: F401
    DEFAULT_BATCHED_METHOD,
    DEFAULT_TFLITE_BATCHED_METHOD,
    ExportError,
    FORMAT_VERSION,
    INPUT_NAME,
    INT8_TFLITE_FILE,
    METADATA_FILE,
    OUTPUT_KEYS,
    SAVED_MODEL_DIR,
    SERVING_KEY,
    TFLITE_FILE,
)
from energynet_tf.export.quantize import (  # noqa: F401
    convert_to_tflite_int8,
)
from energynet_tf.export.serving import (  # noqa: F401
    check_model,
    save_saved_model,
)
from energynet_tf.export.tflite import (  # noqa: F401
    convert_to_tflite,
)


def _metadata(model, batched, tflite_batched, files, extra, threshold):
    table = model.energy_table
    meta = {
        "format_version": FORMAT_VERSION,
        "model": {
            "depth": model.depth,
            # A `from_keras` model: the name of the Keras model it was converted from.
            "source": getattr(getattr(model, "source", None), "name", None),
            "baseline": bool(model.baseline),
            "num_classes": model.num_classes,
            "image_shape": list(model.image_shape),
            "num_gates": model.num_gates,
        },
        "signature": SERVING_KEY,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None] + list(model.image_shape)},
        "outputs": list(OUTPUT_KEYS),
        # The operating point baked into every exported graph: a gated block
        # runs iff its gate's probability is > gate_threshold.
        "gate_threshold": threshold,
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
    threshold=0.5,
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
        threshold: the gate threshold of the float exports (a block runs iff
            its gate's probability is > it; default 0.5), recorded as
            `gate_threshold` in `export.json`.

    Returns:
        A dict of the written paths (`saved_model`, `tflite`, `int8_tflite`,
        `metadata`).

    Raises:
        ExportError: if `out_dir` holds other files or is a file.
    """
    check_model(model)
    from energynet_tf import evaluation

    try:
        threshold = evaluation.check_threshold(threshold)
    except ValueError as e:
        raise ExportError(str(e)) from None
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
        save_saved_model(model, os.path.join(staging, SAVED_MODEL_DIR), batched, threshold=threshold)
        if tflite:
            with open(os.path.join(staging, TFLITE_FILE), "wb") as f:
                f.write(convert_to_tflite(model, tflite_batched, threshold=threshold))
            files["tflite"] = TFLITE_FILE
        extra = dict(metadata or {})
        if int8:
            content, info = convert_to_tflite_int8(model, representative_images, calibration_examples,
                                                   threshold=threshold)
            with open(os.path.join(staging, INT8_TFLITE_FILE), "wb") as f:
                f.write(content)
            files["int8_tflite"] = INT8_TFLITE_FILE
            extra["int8_calibration"] = info
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump(_metadata(model, batched, tflite_batched, files, extra, threshold), f, indent=2, sort_keys=True)
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
