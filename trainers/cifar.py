"""Trains and evaluates EnergyNet (or its baseline) on CIFAR-10.

    python -m trainers.cifar --data_dir=../shared/data/tensorflow_datasets --model_dir=runs/energynet38

See README.md and docs/experiments/cpu-preset.md for the defaults and how they were chosen.
"""

from absl import app
from absl import flags

from energynet_tf import cli
from trainers import common

common.define_flags(default_depth=38)
flags.DEFINE_integer("validation_examples", 5000, "Examples held out from the end of CIFAR-10's train split for validation (0: validate on the test split, as the authors' code did).")

FLAGS = flags.FLAGS


def _make_model(config):
    return common.build_model(config, num_classes=10, image_shape=(32, 32, 3))


def _make_data(config):
    from energynet_tf.data import cifar

    return cifar.load_cifar10(
        config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        validation_examples=config.validation_examples,
        max_train_examples=config.max_train_examples,
    )


def main(argv):
    cli.reject_arguments(argv)
    if FLAGS.validation_examples < 0 or FLAGS.validation_examples >= 50000:
        raise common.UsageError(f"--validation_examples={FLAGS.validation_examples} must be in [0, 50000)")
    config = common.check_flags({"dataset": "cifar10", "validation_examples": FLAGS.validation_examples})
    return common.run(config, _make_model, _make_data, check_only=FLAGS.check_only)


if __name__ == "__main__":
    app.run(lambda argv: common.main_guard(lambda: main(argv)), flags_parser=common.parse_flags_or_exit)
