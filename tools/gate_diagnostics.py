"""How decisive a trained EnergyNet's gates are, in inference and in training mode.

    python -m tools.gate_diagnostics --model=runs/m/model.keras --data_dir=../shared/data/tensorflow_datasets

Runs the first `--examples` CIFAR-10 validation images (the held-out end of
the training split) through the model twice: with BN in inference mode (what
deployment sees) and in training mode (batch statistics, what the gates saw
while they learned), without gate noise. Prints accuracy, per-block skip
ratios, the mean distance of the gate probabilities from the 0.5 threshold
and the share of probabilities in [0.3, 0.7]; `--json_out` also writes them.
Gates that sit on the threshold (mean |p - 0.5| near 0) decide on noise.
"""

import json
import os

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError

FLAGS = flags.FLAGS


def gate_statistics(model, batches):
    """Accuracy, skip ratios and threshold distances in both BN modes.

    Args:
        model: a gated `EnergyNet`.
        batches: an iterable of `(images, labels)`.

    Returns:
        `{"inference": {...}, "training": {...}}`, each with `accuracy`,
        `skip_ratio_per_block`, `mean_distance_from_threshold` and
        `share_between_0.3_and_0.7`.
    """
    import numpy as np

    noise = float(model.gate_noise.numpy())
    model.gate_noise.assign(0.0)
    try:
        stats = {}
        for name, training in (("inference", False), ("training", True)):
            correct, decisions, probabilities = [], [], []
            for images, labels in batches:
                out = model.forward(images, training=training)
                correct.append(np.argmax(out["logits"], 1) == np.asarray(labels))
                decisions.append(np.asarray(out["decisions"]))
                probabilities.append(np.asarray(out["probabilities"]))
            d, p = np.concatenate(decisions), np.concatenate(probabilities)
            stats[name] = {
                "accuracy": float(np.mean(np.concatenate(correct))),
                "skip_ratio_per_block": [float(v) for v in 1.0 - d.mean(0)],
                "mean_distance_from_threshold": float(np.abs(p - 0.5).mean()),
                "share_between_0.3_and_0.7": float(np.mean((p > 0.3) & (p < 0.7))),
            }
        return stats
    finally:
        model.gate_noise.assign(noise)


def _define_flags():
    flags.DEFINE_string("model", None, "A gated EnergyNet's model.keras (or a checkpoint).")
    flags.DEFINE_string("data_dir", None, "tfds data directory holding cifar10/3.0.2 (or set TFDS_DATA_DIR).")
    flags.DEFINE_integer("examples", 2000, "Validation images to use.")
    flags.DEFINE_integer("validation_examples", 5000, "Size of the held-out validation part (as in training).")
    flags.DEFINE_string("json_out", None, "Also write the statistics here.")


def main():
    if not FLAGS.model or not os.path.isfile(FLAGS.model):
        raise UsageError(f"--model={FLAGS.model}: no such model file")
    if not 1 <= FLAGS.examples <= FLAGS.validation_examples:
        raise UsageError(f"--examples={FLAGS.examples} must be in [1, --validation_examples={FLAGS.validation_examples}]")
    import keras

    import energynet_tf  # noqa: F401  (registers the classes)
    from energynet_tf.data import cifar

    model = keras.saving.load_model(FLAGS.model, compile=False)
    if model.gate is None:
        raise UsageError(f"--model={FLAGS.model} is a baseline: it has no gates")
    data = cifar.load_cifar10(FLAGS.data_dir, batch_size=128, eval_batch_size=250,
                              validation_examples=FLAGS.validation_examples)
    batches = list(data.validation.unbatch().take(FLAGS.examples).batch(250))
    stats = gate_statistics(model, batches)
    for mode, s in stats.items():
        print(f"{mode:9s}: accuracy {s['accuracy']:.4f}, skip per block "
              f"{' '.join(f'{v:.2f}' for v in s['skip_ratio_per_block'])}, mean |p - 0.5| "
              f"{s['mean_distance_from_threshold']:.3f}, p in [0.3, 0.7]: {s['share_between_0.3_and_0.7']:.3f}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(stats, f, indent=2)


if __name__ == "__main__":
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
