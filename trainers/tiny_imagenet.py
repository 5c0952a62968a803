"""Trains and evaluates EnergyNet-50 (or its baseline) on Tiny ImageNet.

    python -m trainers.tiny_imagenet --data_dir=../shared/data/tiny-imagenet-200-subset.zip --model_dir=runs/energynet50

`--data_dir` is the archive (`tiny-imagenet-200.zip` or the subset), the
extracted `tiny-imagenet-200/` directory, or a directory holding one of them.
The archive's labelled val split is the test set (its test split has no
labels); validation, on which the phases are decided, is held out from the
training images (`--validation_examples`), and the phases monitor top-5
accuracy, the paper's Tiny ImageNet measure. Images are upscaled to `--image_size` (224, as the authors'
code did; 64 runs natively).
"""

from absl import app
from absl import flags

from energynet_tf import cli
from trainers import common

common.define_flags(default_depth=50, default_batch_size=64)
flags.DEFINE_integer("image_size", 224, "Input height and width (bilinear resize of the 64x64 images).")
flags.DEFINE_integer("max_eval_examples", None, "Test on the first N images of the val split only (smoke runs).")
flags.DEFINE_integer("validation_examples", None, "Training images held out for validation (default: 10% of them, a multiple of 200 so every class has as many; 0: validate on the val split, which is also the test set, as the authors did).")

FLAGS = flags.FLAGS


def _make_model(config):
    size = config.image_size
    return common.build_model(config, num_classes=200, image_shape=(size, size, 3))


def _make_data(config):
    from energynet_tf.data import tiny_imagenet

    if not config.data_dir:
        raise common.UsageError(
            "--data_dir is required: the Tiny ImageNet archive or its directory, "
            "e.g. --data_dir=../shared/data/tiny-imagenet-200-subset.zip")
    return tiny_imagenet.load_tiny_imagenet(
        config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        image_size=config.image_size,
        seed=config.seed,
        max_train_examples=config.max_train_examples,
        max_eval_examples=config.max_eval_examples,
        validation_examples=None if config.validation_examples == "auto" else config.validation_examples,
    )



def main(argv):
    cli.reject_arguments(argv)
    if FLAGS.image_size < 32:
        raise common.UsageError(f"--image_size={FLAGS.image_size} must be >= 32")
    if FLAGS.max_eval_examples is not None and FLAGS.max_eval_examples < 1:
        raise common.UsageError(f"--max_eval_examples={FLAGS.max_eval_examples} must be a positive integer")
    if FLAGS.validation_examples is not None and FLAGS.validation_examples < 0:
        raise common.UsageError(f"--validation_examples={FLAGS.validation_examples} must be >= 0")
    validation = FLAGS.validation_examples
    if validation is None:
        validation = "auto"
    config = common.check_flags({
        "dataset": "tiny_imagenet",
        "image_size": FLAGS.image_size,
        "max_eval_examples": FLAGS.max_eval_examples,
        "validation_examples": validation,
    })
    return common.run(config, _make_model, _make_data, top5=True, check_only=FLAGS.check_only)


if __name__ == "__main__":
    app.run(lambda argv: common.main_guard(lambda: main(argv)), flags_parser=common.parse_flags_or_exit)
