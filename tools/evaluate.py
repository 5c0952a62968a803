"""Evaluates a trained model at a gate threshold, and sweeps the threshold: operating points without retraining.

    python -m tools.evaluate --model_dir=runs/reproduce/energynet --split=validation --sweep --out=sweep.json
    python -m tools.evaluate --model_dir=models/cifar10/energynet/model.keras \
        --data_dir=../shared/data/tensorflow_datasets --threshold=0.3

A gated block runs iff its gate's probability is > the threshold (0.5 in
training). A lower threshold runs more blocks: more accuracy for more energy.
The tool reports accuracy, energy savings (gates charged) and what the gates
chose image by image (`per_image_energy`, `distinct_paths`,
`selective_blocks`, `savings_by_class`, `gate_logits`), and with `--sweep`
the curve of operating points. `--shuffle_control=N` also runs every image
on another image's path (N random permutations of the decisions: the same
paths, the same energy) and reports what the gates' choice per image is worth
in accuracy points (0 for a static pattern); with `--shuffle_within_class`
each image gets the path of another image of its own class, which measures
what the choice is worth beyond the class. Choose a threshold on the validation split
(`--split=validation`, the default), never on the test split; then export it
with `python -m tools.export --threshold=T`.

`--model_dir` is a trainer run directory (its config.json gives the data
and the validation split) or a `.keras` file (CIFAR-10, with the trainers'
default split: the last 5,000 training images).
"""

import json
import os

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError

FLAGS = flags.FLAGS
SPLITS = ("validation", "test")


def _define_flags():
    flags.DEFINE_string("model_dir", None, "A trainer run directory holding model.keras and config.json, or a .keras file.")
    flags.DEFINE_string("data_dir", None, "tfds directory holding cifar10/3.0.2 (default: the run's config.json, then TFDS_DATA_DIR).")
    flags.DEFINE_enum("split", "validation", list(SPLITS), "Where to measure: the validation split (choose operating points here) or the test split (report them).")
    flags.DEFINE_float("threshold", 0.5, "Gate threshold in (0, 1): a gated block runs iff its gate's probability is > it.")
    flags.DEFINE_boolean("sweep", False, "Also sweep the threshold over --thresholds (accuracy and energy savings at each).")
    flags.DEFINE_list("thresholds", [], "Thresholds of --sweep (default 0.05, 0.10, ..., 0.95).")
    flags.DEFINE_integer("max_examples", None, "Use only the first N images of the split.")
    flags.DEFINE_integer("shuffle_control", 0, "Also run every image on another image's path, in this many random permutations (0: no): the accuracy the gates' choice per image is worth, at the same paths and energy.")
    flags.DEFINE_boolean("shuffle_within_class", False, "With --shuffle_control: deal each image the path of another image of its own class (what the choice is worth beyond the class).")
    flags.DEFINE_string("out", None, "Write the results as JSON here (default: print only).")
    flags.DEFINE_string("per_image", None, "Write the per-image arrays at --threshold (labels, predictions, decisions, gate_logits, energy) to this .npz.")


def parse_thresholds(values):
    """The `--thresholds` list as floats in (0, 1), or None for the default.

    Raises:
        UsageError: for a value that is not a number in (0, 1).
    """
    if not values:
        return None
    out = []
    for v in values:
        try:
            t = float(v)
        except ValueError:
            raise UsageError(f"--thresholds: {v!r} is not a number") from None
        if not 0.0 < t < 1.0:
            raise UsageError(f"--thresholds: {t} is not in (0, 1)")
        out.append(t)
    return out


def _source(model_dir, data_dir):
    """`(model file, data settings)` of a run directory or a .keras file."""
    if os.path.isdir(model_dir):
        model_file = os.path.join(model_dir, "model.keras")
        if not os.path.exists(model_file):
            raise UsageError(f"--model_dir={model_dir} has no model.keras (has the run finished?)")
        try:
            with open(os.path.join(model_dir, "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"--model_dir={model_dir}: cannot read config.json ({e})") from None
    elif model_dir.endswith(".keras") and os.path.exists(model_dir):
        model_file, config = model_dir, {}
    else:
        raise UsageError(f"--model_dir={model_dir} is neither a run directory nor an existing .keras file")
    if config.get("dataset", "cifar10") != "cifar10":
        raise UsageError(f"--model_dir={model_dir}: this tool evaluates CIFAR-10 models; the run is "
                         f"{config.get('dataset')!r}")
    data = {
        "data_dir": data_dir or config.get("data_dir") or os.environ.get("TFDS_DATA_DIR"),
        "validation_examples": config.get("validation_examples", 5000),
        "max_train_examples": config.get("max_train_examples"),
        "eval_batch_size": config.get("eval_batch_size", 256),
        "batch_size": config.get("batch_size", 128),
    }
    if not data["data_dir"]:
        raise UsageError("--data_dir is required (or TFDS_DATA_DIR): the tfds directory holding cifar10/3.0.2")
    return model_file, data


def load(model_dir, data_dir=None, split="validation"):
    """Loads a trained model and the batches of one split.

    Returns:
        `(model, dataset, model_file)`.

    Raises:
        UsageError: for a missing model or data, or a validation split the run did not hold out.
    """
    import keras

    import energynet_tf  # noqa: F401  (registers the classes)
    from energynet_tf.data import cifar
    from energynet_tf.data import common as data_common

    model_file, data = _source(model_dir, data_dir)
    if split == "validation" and not data["validation_examples"]:
        raise UsageError(f"--model_dir={model_dir} was trained without a validation split "
                         "(validation_examples=0): its validation images are the test images")
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as e:  # a corrupt or foreign file
        raise UsageError(f"cannot load {model_file}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not hasattr(model, "forward") or tuple(model.image_shape) != (32, 32, 3):
        raise UsageError(f"{model_file} is not a CIFAR-10 EnergyNet model")
    try:
        loaded = cifar.load_cifar10(data["data_dir"], batch_size=data["batch_size"], eval_batch_size=data["eval_batch_size"],
                                    seed=0, validation_examples=data["validation_examples"],
                                    max_train_examples=data["max_train_examples"], augment=False)
    except data_common.DataNotFoundError as e:
        raise UsageError(str(e)) from None
    return model, (loaded.validation if split == "validation" else loaded.test), model_file


def sweep(model, dataset, thresholds=None, max_examples=None, verbose=True):
    """`evaluation.threshold_sweep` with a progress line per threshold."""
    from energynet_tf import evaluation

    def progress(k, n, row):
        if verbose:
            print(f"[evaluate] threshold {row['threshold']:.2f} ({k}/{n}): accuracy {100 * row['accuracy']:.2f}%, "
                  f"energy savings {100 * row['energy_savings']:.2f}%, {row['distinct_paths']} distinct paths",
                  flush=True)

    return evaluation.threshold_sweep(model, dataset, thresholds, max_examples, progress=progress)


def shuffle(model, dataset, arrays, rounds, within_class=False, verbose=True):
    """`evaluation.shuffle_control` with a progress line per permutation and a summary line."""
    from energynet_tf import evaluation

    def progress(k, n, accuracy):
        if verbose:
            print(f"[evaluate] shuffled paths, permutation {k}/{n}: accuracy {100 * accuracy:.2f}%", flush=True)

    control = evaluation.shuffle_control(model, dataset, arrays, rounds, within_class=within_class,
                                         progress=progress)
    if verbose:
        what = "per-image choice worth beyond the class" if within_class else "per-image choice worth"
        dealt = "dealt at random within each class" if within_class else "dealt at random"
        print(f"[evaluate] {what} {control['decision_value_points']:+.2f} points: learned paths "
              f"{100 * control['accuracy']:.2f}%, the same paths {dealt} {100 * control['shuffled_mean']:.2f}% "
              f"(std {100 * control['shuffled_std']:.2f} over {rounds})", flush=True)
    return control


def main():
    from energynet_tf import evaluation
    from energynet_tf import io_utils

    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required: a run directory or a .keras file")
    if not 0.0 < FLAGS.threshold < 1.0:
        raise UsageError(f"--threshold={FLAGS.threshold} must be in (0, 1)")
    if FLAGS.max_examples is not None and FLAGS.max_examples < 1:
        raise UsageError(f"--max_examples={FLAGS.max_examples} must be a positive integer")
    if FLAGS.shuffle_control < 0:
        raise UsageError(f"--shuffle_control={FLAGS.shuffle_control} must be >= 0 (permutations; 0: none)")
    if FLAGS.shuffle_within_class and not FLAGS.shuffle_control:
        raise UsageError("--shuffle_within_class needs --shuffle_control=N (N permutations)")
    thresholds = parse_thresholds(FLAGS.thresholds)
    if thresholds is not None and not FLAGS.sweep:
        raise UsageError("--thresholds needs --sweep")
    model, dataset, model_file = load(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split)
    if FLAGS.shuffle_control and not evaluation.has_gates(model):
        raise UsageError(f"--shuffle_control: {model_file} has no gates, so there is no per-image choice to shuffle")
    print(f"[evaluate] {model_file} on the {FLAGS.split} split at threshold {FLAGS.threshold}", flush=True)
    summary, arrays = evaluation.evaluate(model, dataset, FLAGS.threshold, FLAGS.max_examples)
    result = {"model_file": os.path.abspath(model_file), "split": FLAGS.split, **summary}
    e = summary["per_image_energy"]
    print(f"[evaluate] accuracy {100 * summary['accuracy']:.2f}% on {summary['examples']} images, energy savings "
          f"{100 * summary['energy_savings']:.2f}%; per-image energy mean {e['mean']:.4f}, std {e['std']:.4f} "
          f"(p10 {e['p10']:.4f}, p90 {e['p90']:.4f}); {summary['distinct_paths']} distinct paths; selective "
          f"blocks: {summary['selective_blocks'] or 'none'}", flush=True)
    if FLAGS.shuffle_control:
        result["shuffle_control"] = shuffle(model, dataset, arrays, FLAGS.shuffle_control, FLAGS.shuffle_within_class)
    if FLAGS.sweep:
        result["threshold_sweep"] = sweep(model, dataset, thresholds, FLAGS.max_examples)
    if FLAGS.per_image:
        io_utils.atomic_write_npz(FLAGS.per_image, arrays)
    if FLAGS.out:
        io_utils.atomic_write_json(FLAGS.out, result)
        print(f"[evaluate] wrote {FLAGS.out}", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
