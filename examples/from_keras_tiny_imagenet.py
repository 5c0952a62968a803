"""Worked example: a keras.applications ResNet50V2 turned into an EnergyNet and trained on Tiny ImageNet.

    python examples/from_keras_tiny_imagenet.py \
        --data_dir=../shared/data/tiny-imagenet-200-subset.zip --out=/tmp/resnet50v2_energynet

Converts `keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3),
classes=200)` with `energynet_tf.from_keras`, prints its energy table, trains it
through the three alpha phases, every unit running in phase I (resumable: rerun the same command after an
interruption), prints the test accuracy, energy savings and skip ratio of every
gate, and exports the SavedModel and TFLite files with real skipping into
`OUT/export`. Everything it measured is in `OUT/metrics.json` and
`OUT/export/export.json`. docs/experiments/from-keras.md has a run's numbers.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string("data_dir", None, "Tiny ImageNet: the archive (or the subset's zip) or its extracted directory.")
flags.DEFINE_string("out", None, "Run directory (checkpoints, metrics.json, export/).")
flags.DEFINE_integer("image_size", 64, "Input height and width.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer("phase1_epochs", 2, "Epochs with every block running (alpha1).")
flags.DEFINE_integer("phase2_epochs", 2, "Epochs at most with the energy term (alpha2).")
flags.DEFINE_integer("phase3_epochs", 1, "Epochs at most of fine-tuning (alpha3).")
flags.DEFINE_float("alpha2", 0.5, "Energy weight of phase II.")
flags.DEFINE_float("lr", 0.05, "Learning rate of phases I and II (phase III: a tenth).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the data order and the augmentation.")
flags.mark_flags_as_required(["data_dir", "out"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras

    import energynet_tf
    from energynet_tf import export
    from energynet_tf import schedule
    from energynet_tf import training
    from energynet_tf.data import tiny_imagenet

    data = tiny_imagenet.load_tiny_imagenet(FLAGS.data_dir, batch_size=FLAGS.batch_size,
                                            image_size=FLAGS.image_size, seed=FLAGS.seed,
                                            validation_examples=None)
    keras.utils.set_random_seed(FLAGS.seed)
    # --- the conversion: a few lines ---------------------------------------------------
    original = keras.applications.ResNet50V2(weights=None, input_shape=(FLAGS.image_size, FLAGS.image_size, 3),
                                             classes=data.num_classes)
    model = energynet_tf.from_keras(original, alpha=0.1, energy_term="decisions")
    # -------------------------------------------------------------------------------------
    table = model.energy_table
    print(f"{original.name}: {len(model.res_blocks)} residual units, {model.num_gates} gates; "
          f"E_total {table.total_energy:.4g} (MAC energies), E_fixed {table.fixed_energy / table.total_energy:.1%}, "
          f"E_gates {table.gate_energy / table.total_energy:.2%}; per gated unit: "
          + ", ".join(f"{e / table.total_energy:.1%}" for e in table.block_energy), flush=True)
    recipe = schedule.PhaseSchedule(
        phase1_epochs=FLAGS.phase1_epochs, phase2_epochs=FLAGS.phase2_epochs, phase3_epochs=FLAGS.phase3_epochs,
        alpha2=FLAGS.alpha2, lr1=FLAGS.lr, lr2=FLAGS.lr, lr3=FLAGS.lr / 10,
        # Every unit runs while the randomly initialised backbone learns its first epochs: gates that
        # close before their units have learned anything keep them useless (docs/experiments/cpu-preset.md, "Measured: training").
        gate_warmup_epochs=FLAGS.phase1_epochs)
    metrics = training.train_and_evaluate(model, data, FLAGS.out, recipe, FLAGS.batch_size,
                                          training.make_optimizer(), top5=True)
    print(json.dumps({key: metrics[key] for key in ("test_accuracy", "test_top5_accuracy", "energy_savings",
                                                    "skip_ratio_per_block", "distinct_paths", "epochs",
                                                    "wall_seconds") if key in metrics}), flush=True)
    out = os.path.join(FLAGS.out, "export")
    paths = export.export_model(model, out, overwrite=True)
    print(f"exported {', '.join(sorted(os.path.basename(p) for p in paths.values()))} to {out}", flush=True)
    # The exports against the Keras model on 16 test images: the same decisions, the same logits.
    import numpy as np

    images = np.concatenate([x for x, _ in data.test.take(1)])[:16]
    want = model.forward(images)
    for backend in ("saved_model", "tflite"):
        got = export.load_exported(out, backend=backend)(images)
        same = bool(np.array_equal(got["decisions"], want["decisions"].numpy()))
        diff = float(np.abs(got["logits"] - want["logits"].numpy()).max())
        print(f"{backend}: decisions identical {same}, max |logit difference| {diff:.2e}", flush=True)


if __name__ == "__main__":
    app.run(main)
