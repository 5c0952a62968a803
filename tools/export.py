"""Exports a trained EnergyNet run to a SavedModel and TFLite in which skipped blocks do not run.

    python -m tools.export --model_dir=runs/energynet38 --out=exports/energynet38
    python -m tools.export --model_dir=runs/energynet38 --out=exports/energynet38_int8 --int8

Writes (docs/export.md):
  OUT/saved_model/      serving signature `serving_default`: images -> logits,
                        decisions, probabilities, energy
  OUT/model.tflite      float32, one IF op per gated block; batch 1 by default
                        (--tflite_batched=gather|dense: a resizable batch)
  OUT/model_int8.tflite with --int8: post-training int8, batch size 1
  OUT/export.json       what was exported, the energy table, the parity check
                        and, with --int8, its accuracy and gate agreement

Bad flags or paths print one line `error: ...` on stderr and exit with status
2 before anything is written; the export is assembled in a temporary
directory next to OUT and moved into place at the end.
"""

import json
import os
import time

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError

flags.DEFINE_string("model_dir", None, "Run directory holding model.keras (and config.json), or a .keras file.")
flags.DEFINE_string("out", None, "Export directory to create (must not exist or be empty, unless --overwrite).")
flags.DEFINE_enum("batched", "gather", ["gather", "dense"], "SavedModel: how a batch with mixed gate decisions skips a block: 'gather' runs it on the open examples only, 'dense' on the whole batch when any is open.")
flags.DEFINE_boolean("tflite", True, "Also write OUT/model.tflite.")
flags.DEFINE_enum("tflite_batched", "single", ["single", "gather", "dense"], "OUT/model.tflite: 'single' takes one image per call (one IF per gated block; the fastest at batch size 1), 'gather'/'dense' a resizable batch as for --batched.")
flags.DEFINE_boolean("int8", False, "Also write OUT/model_int8.tflite (post-training int8, calibrated on training images) and measure it on test images.")
flags.DEFINE_string("data_dir", None, "Dataset for --int8 (default: the run's config.json data_dir).")
flags.DEFINE_integer("calibration_examples", 256, "Training images used to calibrate --int8.")
flags.DEFINE_integer("eval_examples", 1000, "Test images on which --int8 accuracy and gate agreement are measured (0: skip).")
flags.DEFINE_integer("verify_examples", 8, "Random images on which the export is checked against the Keras model (0: skip).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing export in --out.")
flags.DEFINE_float("threshold", 0.5, "Gate threshold of the exported graphs: a gated block runs iff its gate's probability is > this, in (0, 1); lower runs more blocks (more accuracy, more energy). Recorded as gate_threshold in export.json; tools.evaluate --thresholds measures the choices on the validation split.")

FLAGS = flags.FLAGS



def _model_file(model_dir):
    if os.path.isdir(model_dir):
        path = os.path.join(model_dir, "model.keras")
        if not os.path.exists(path):
            hint = " (training not finished? it is written at the end)" if os.path.isdir(os.path.join(model_dir, "checkpoints")) else ""
            raise UsageError(f"--model_dir={model_dir} has no model.keras{hint}")
        return path
    if not os.path.exists(model_dir):
        raise UsageError(f"--model_dir={model_dir} does not exist")
    if not model_dir.endswith(".keras"):
        raise UsageError(f"--model_dir={model_dir} is neither a run directory nor a .keras file")
    return model_dir


def _read_config(model_dir):
    path = os.path.join(model_dir, "config.json") if os.path.isdir(model_dir) else None
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def _check_flags():
    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (a training run directory holding model.keras)")
    if not FLAGS.out:
        raise UsageError("--out is required (the export directory to create)")
    for name in ("calibration_examples", "eval_examples", "verify_examples"):
        if getattr(FLAGS, name) < 0:
            raise UsageError(f"--{name}={getattr(FLAGS, name)} must be >= 0")
    if FLAGS.int8 and FLAGS.calibration_examples < 1:
        raise UsageError("--int8 needs --calibration_examples >= 1")
    if not 0.0 < FLAGS.threshold < 1.0:
        raise UsageError(f"--threshold={FLAGS.threshold} must be in (0, 1): a gated block runs iff its gate's "
                         "probability is > the threshold")
    out = os.path.abspath(FLAGS.out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UsageError(f"--out={FLAGS.out} exists and is not a directory")
        if os.listdir(out) and not FLAGS.overwrite:
            raise UsageError(f"--out={FLAGS.out} is not empty; choose a new directory or pass --overwrite")
    if os.path.abspath(FLAGS.model_dir) == out:
        raise UsageError("--out must differ from --model_dir")
    model_file = _model_file(FLAGS.model_dir)
    return model_file, out


def _load_model(model_file):
    import keras

    from energynet_tf import export as export_lib
    from energynet_tf import model as _  # registers the classes  # noqa: F401

    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as e:  # a corrupt or foreign file
        raise UsageError(f"cannot load {model_file}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        export_lib.check_model(model)
    except export_lib.ExportError as e:
        raise UsageError(f"{model_file}: {e}") from None
    return model


def _load_data(config, model):
    """Returns (calibration images, test images, test labels) for --int8."""
    import numpy as np

    from energynet_tf.data import common as data_common

    dataset = config.get("dataset", "cifar10" if tuple(model.image_shape) == (32, 32, 3) and model.num_classes == 10 else None)
    data_dir = FLAGS.data_dir or config.get("data_dir")
    if dataset != "cifar10":
        raise UsageError(f"--int8 calibrates on the run's dataset; only cifar10 runs are supported (this run: {dataset!r})")
    from energynet_tf.data import cifar

    try:
        data = cifar.load_cifar10(data_dir, batch_size=max(FLAGS.calibration_examples, 1), eval_batch_size=500, augment=False, seed=0, validation_examples=0)
    except data_common.DataNotFoundError as e:
        raise UsageError(str(e)) from None
    calibration, _ = next(iter(data.train))
    images, labels = [], []
    remaining = FLAGS.eval_examples
    for x, y in data.test:
        if remaining <= 0:
            break
        images.append(x.numpy()[:remaining])
        labels.append(y.numpy()[:remaining])
        remaining -= len(images[-1])
    if images:
        images, labels = np.concatenate(images), np.concatenate(labels)
    else:
        images, labels = np.zeros((0,) + tuple(model.image_shape), np.float32), np.zeros((0,), np.int32)
    return calibration.numpy()[: FLAGS.calibration_examples], images, labels


def _keras_outputs(model, images, batch_size=250, threshold=0.5):
    import numpy as np
    import tensorflow as tf

    outs = []
    for i in range(0, len(images), batch_size):
        out = model.forward(tf.constant(images[i:i + batch_size]), training=False, threshold=threshold)
        energy = model.inference_energy(out["decisions"])
        outs.append({"logits": out["logits"].numpy(), "decisions": out["decisions"].numpy(), "energy": np.asarray(energy)})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _verify(model, out, count):
    """Keras vs SavedModel vs TFLite on random images: max logit difference, decision agreement."""
    import numpy as np

    from energynet_tf import export as export_lib

    images = np.random.RandomState(0).normal(size=(count,) + tuple(model.image_shape)).astype(np.float32)
    reference = _keras_outputs(model, images, threshold=FLAGS.threshold)
    result = {"examples": count, "inputs": "standard normal", "gate_threshold": FLAGS.threshold}
    backends = ["saved_model"] + (["tflite"] if os.path.exists(os.path.join(out, export_lib.TFLITE_FILE)) else [])
    for backend in backends:
        served = export_lib.load_exported(out, backend=backend, num_threads=1)
        got = [served(images[i:i + 1]) for i in range(count)] + [served(images)]
        single = {k: np.concatenate([g[k] for g in got[:-1]]) for k in ("logits", "decisions")}
        result[backend] = {
            "max_abs_logit_diff_batch1": float(np.abs(single["logits"] - reference["logits"]).max()),
            "max_abs_logit_diff_batch": float(np.abs(got[-1]["logits"] - reference["logits"]).max()),
            "decisions_identical": bool((single["decisions"] == reference["decisions"]).all() and (got[-1]["decisions"] == reference["decisions"]).all()),
        }
    return result


def _evaluate_int8(model, out, images, labels):
    from energynet_tf import export as export_lib

    reference = _keras_outputs(model, images, threshold=FLAGS.threshold)
    int8 = export_lib.load_exported(out, backend="int8", num_threads=1)(images)
    report = {
        "examples": int(len(images)),
        "keras_accuracy": float((reference["logits"].argmax(1) == labels).mean()),
        "int8_accuracy": float((int8["logits"].argmax(1) == labels).mean()),
        "top1_agreement": float((int8["logits"].argmax(1) == reference["logits"].argmax(1)).mean()),
        "gate_agreement": float((int8["decisions"] == reference["decisions"]).mean()) if model.num_gates else 1.0,
        "examples_with_all_gates_agreeing": float((int8["decisions"] == reference["decisions"]).all(axis=1).mean()),
        "keras_energy_savings": float(1.0 - reference["energy"].mean()),
        "int8_energy_savings": float(1.0 - int8["energy"].mean()),
        "float_tflite_bytes": os.path.getsize(os.path.join(out, export_lib.TFLITE_FILE)) if os.path.exists(os.path.join(out, export_lib.TFLITE_FILE)) else None,
        "int8_tflite_bytes": os.path.getsize(os.path.join(out, export_lib.INT8_TFLITE_FILE)),
    }
    if os.path.exists(os.path.join(out, export_lib.TFLITE_FILE)):
        flt = export_lib.load_exported(out, backend="tflite", num_threads=1)(images)
        report["float_tflite_accuracy"] = float((flt["logits"].argmax(1) == labels).mean())
    return report


def run():
    model_file, out = _check_flags()
    from tools import runs

    # One export per output directory: a second export to it stops here, before any work.
    out_abs = os.path.abspath(out)
    parent_existed = os.path.isdir(os.path.dirname(out_abs))
    lock = runs.lock_directory(os.path.dirname(out_abs), name=f".{os.path.basename(out_abs)}.export-lock",
                               holder=out)
    try:
        config = _read_config(FLAGS.model_dir)
        model = _load_model(model_file)
        calibration = test_images = test_labels = None
        if FLAGS.int8:
            calibration, test_images, test_labels = _load_data(config, model)
        _export(model, model_file, config, out, calibration, test_images, test_labels)
    finally:
        lock.release()
        if os.path.exists(lock.path):
            os.remove(lock.path)
        if not parent_existed and not os.path.exists(out_abs):
            # A failed or interrupted export leaves no directory the lock made.
            try:
                os.removedirs(os.path.dirname(out_abs))
            except OSError:
                pass


def _export(model, model_file, config, out, calibration, test_images, test_labels):
    from energynet_tf import export as export_lib
    from energynet_tf import io_utils

    start = time.time()
    extra = {"source": {"model_file": os.path.abspath(model_file), "config": config or None}}
    try:
        paths = export_lib.export_model(
            model,
            out,
            batched=FLAGS.batched,
            tflite=FLAGS.tflite,
            tflite_batched=FLAGS.tflite_batched,
            int8=FLAGS.int8,
            representative_images=calibration,
            metadata=extra,
            overwrite=FLAGS.overwrite,
            threshold=FLAGS.threshold,
        )
    except export_lib.ExportError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - only a full device is named here; the rest propagates
        if io_utils.is_no_space(e) and not isinstance(e, io_utils.NoSpaceError):
            # TensorFlow's and the converter's writers say only "No space left on device":
            # name the export (its staging directory is already removed).
            raise io_utils.NoSpaceError(out) from None
        raise
    meta_path = paths["metadata"]
    with open(meta_path) as f:
        meta = json.load(f)
    if FLAGS.verify_examples:
        meta["verification"] = _verify(model, out, FLAGS.verify_examples)
    if FLAGS.int8 and len(test_images):
        meta["int8"] = _evaluate_int8(model, out, test_images, test_labels)
    meta["export_seconds"] = round(time.time() - start, 1)
    io_utils.atomic_write_json(meta_path, meta)
    print(f"wrote {out}: " + ", ".join(sorted(os.listdir(out))))
    for key in ("verification", "int8"):
        if key in meta:
            print(f"{key}: {json.dumps(meta[key], sort_keys=True)}")


def main(argv):
    cli.run_tool(run, argv)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
