"""CIFAR-10 input pipeline from a prepared tensorflow-datasets directory.

The data is read with the tfds builder of `cifar10` version 3.0.2 from a
directory where it is already prepared; nothing is ever downloaded (offline,
`tfds.load("cifar10")` retries for minutes before failing, so a missing
dataset raises `DataNotFoundError` at once instead). The directory is the
`data_dir` argument, else `$TFDS_DATA_DIR`, else tfds' default
(`~/tensorflow_datasets`).

Splits: the last `validation_examples` examples of tfds' `train` split are the
validation set (0: the `test` split is used for validation), the rest is the
training part, of which `max_train_examples` keeps the first N; `test` is the
`test` split. Decoded images are kept in memory (50,000 x 32 x 32 x 3 uint8 is
150 MB); see `common.py` for the reproducibility scheme.

Example:

  data = load_cifar10("../shared/data/tensorflow_datasets", batch_size=128,
                      seed=1, start_epoch=3, end_epoch=10)
  model.fit(data.train, epochs=10, initial_epoch=3,
            steps_per_epoch=data.steps_per_epoch,
            validation_data=data.validation)
"""

import dataclasses
import glob
import os
from typing import Optional, Tuple

import tensorflow as tf

from energynet_tf.data import common

# Re-exported so that callers can catch cifar.DataNotFoundError.
from energynet_tf.data.common import DataCorruptError, DataNotFoundError  # pylint: disable=unused-import

TFDS_NAME = "cifar10"
TFDS_VERSION = "3.0.2"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
# Per-channel statistics of the 50,000 training images, in [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PADDING = 4
DEFAULT_VALIDATION_EXAMPLES = 5000

_FIX = (
    "pass --data_dir=DIR or set TFDS_DATA_DIR=DIR to the directory that "
    f"holds {TFDS_NAME}/{TFDS_VERSION}/, e.g. "
    "../shared/data/tensorflow_datasets"
)


@dataclasses.dataclass(frozen=True)
class CifarData(common.ClassificationData):
    """CIFAR-10 datasets; see `common.ClassificationData` for the fields."""

    num_classes: int = NUM_CLASSES
    image_shape: Tuple[int, int, int] = IMAGE_SHAPE


def resolve_data_dir(data_dir: Optional[str] = None) -> Tuple[str, str]:
    """Returns the tfds data directory to read and where it came from.

    Args:
      data_dir: explicit directory, or None.

    Returns:
      `(directory, source)`, source one of "data_dir", "TFDS_DATA_DIR",
      "tfds default".
    """
    if data_dir is not None:
        return os.path.expanduser(os.fspath(data_dir)), "data_dir"
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.expanduser(os.environ["TFDS_DATA_DIR"]), "TFDS_DATA_DIR"
    return os.path.join(os.path.expanduser("~"), "tensorflow_datasets"), ("tfds default")


def check_prepared(data_dir: str, source: str = "data_dir") -> str:
    """Checks that CIFAR-10 3.0.2 is prepared in `data_dir`, without tfds.

    Args:
      data_dir: tfds data directory.
      source: where `data_dir` came from, for the message.

    Returns:
      The dataset's version directory.

    Raises:
      DataNotFoundError: if the directory or the prepared files are missing.
    """
    where = f"{source}={common.display_path(data_dir)}"
    if not os.path.exists(data_dir):
        raise DataNotFoundError(f"CIFAR-10 data directory does not exist: {where}; {_FIX}.")
    if not os.path.isdir(data_dir):
        raise DataNotFoundError(f"CIFAR-10 data directory is not a directory: {where}; {_FIX}.")
    if not os.listdir(data_dir):
        raise DataNotFoundError(f"CIFAR-10 data directory is empty: {where}; {_FIX}.")
    version_dir = os.path.join(data_dir, TFDS_NAME, TFDS_VERSION)
    missing = [
        name
        for name, pattern in (
            ("dataset_info.json", "dataset_info.json"),
            ("train split", f"{TFDS_NAME}-train.tfrecord*"),
            ("test split", f"{TFDS_NAME}-test.tfrecord*"),
        )
        if not glob.glob(os.path.join(version_dir, pattern))
    ]
    if missing:
        found = (
            sorted(os.listdir(os.path.join(data_dir, TFDS_NAME)))
            if (os.path.isdir(os.path.join(data_dir, TFDS_NAME)))
            else []
        )
        found_text = f" (found versions: {', '.join(found)})" if found else ""
        nested = os.path.join(data_dir, "tensorflow_datasets")
        if os.path.isdir(os.path.join(nested, TFDS_NAME, TFDS_VERSION)):
            found_text += f" (but {nested}/{TFDS_NAME}/{TFDS_VERSION} exists)"
        raise DataNotFoundError(
            f"CIFAR-10 (tfds '{TFDS_NAME}' {TFDS_VERSION}) is not prepared in "
            f"{where}: searched {version_dir}, missing "
            f"{', '.join(missing)}{found_text}; downloads are disabled: {_FIX}."
        )
    return version_dir


def _damaged_shard(version_dir: str, split: str, shard_lengths) -> Tuple[Optional[str], str]:
    """The first shard of `split` whose records cannot all be read (or are too few), and why."""
    paths = sorted(glob.glob(os.path.join(version_dir, f"{TFDS_NAME}-{split}.tfrecord*")))
    lengths = list(shard_lengths or [])
    for k, path in enumerate(paths):
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
            return path, _reason(e)
        if len(lengths) == len(paths) and count != lengths[k]:
            return path, f"{count} records instead of the {lengths[k]} dataset_info.json lists: cut short"
    return None, ""


def _reason(error) -> str:
    """'truncated record at 1234' or 'corrupted record at 1234' out of a TensorFlow error message."""
    text = str(getattr(error, "message", error))
    for word in ("truncated record", "corrupted record", "expected to contain"):
        at = text.find(word)
        if at >= 0:
            return text[at:].split("'")[0].split("\n")[0].split(" [Op:")[0].strip().rstrip(".")
    return text.splitlines()[0][:200] if text else type(error).__name__


def _read_split(builder, split: str) -> Tuple[tf.Tensor, tf.Tensor]:
    """Reads and decodes a whole split into memory, in the stored order.

    Every record is read (and its CRC checked) here, before any training.

    Raises:
      DataCorruptError: naming the damaged shard and the split.
    """
    try:
        return _read_split_unchecked(builder, split)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError,
            tf.errors.FailedPreconditionError) as e:
        # (tfds reports a shard cut at a record boundary as fewer elements than expected.)
        version_dir = os.fspath(builder.data_dir)
        path, reason = _damaged_shard(version_dir, split, builder.info.splits[split].shard_lengths)
        fix = ("the file is cut short or its bytes changed (an interrupted or bad copy?); copy the dataset again "
               "(check it against its checksums) and rerun")
        if path is None:
            path, reason = version_dir, _reason(e)
        raise DataCorruptError(f"CIFAR-10 {split} split: {common.display_path(path)} is damaged ({reason}); "
                               f"{fix}.") from None


def _read_split_unchecked(builder, split: str) -> Tuple[tf.Tensor, tf.Tensor]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    ds = builder.as_dataset(
        split=split,
        as_supervised=True,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    # Decode in a parallel map of our own, ordered (deterministic=True).
    ds = ds.map(
        lambda png, label: (tf.io.decode_png(png, channels=3), tf.cast(label, tf.int32)),
        num_parallel_calls=common.AUTOTUNE,
        deterministic=True,
    )
    num_examples = builder.info.splits[split].num_examples
    # One batch bigger than the split: a shard cut at a record boundary
    # gives fewer images than dataset_info.json says, not an error.
    images, labels = next(iter(ds.batch(num_examples + 1)))
    if int(labels.shape[0]) != num_examples:
        raise tf.errors.DataLossError(None, None, f"{int(labels.shape[0])} records instead of {num_examples}")
    return tf.ensure_shape(images, (num_examples,) + IMAGE_SHAPE), labels


def _example_fn(images: tf.Tensor, labels: tf.Tensor, offset: int, augment: bool):
    """Returns `(index, key) -> (image, label)` over `images[offset:]`.

    Without a key, `index` may also be a vector: the result is then a batch.
    """

    def example(index, key):
        index = index + offset
        image = tf.gather(images, index)
        if augment and key is not None:
            image = common.pad_crop_flip(image, key, PADDING)
        return common.normalize(image, MEAN, STD), tf.gather(labels, index)

    return example


def load_cifar10(
    data_dir: Optional[str] = None,
    *,
    batch_size: int = 128,
    eval_batch_size: Optional[int] = None,
    seed: int = 0,
    start_epoch: int = 0,
    end_epoch: int = 1,
    validation_examples: int = DEFAULT_VALIDATION_EXAMPLES,
    max_train_examples: Optional[int] = None,
    augment: bool = True,
) -> CifarData:
    """Loads CIFAR-10 into memory and builds the train/validation/test pipelines.

    Args:
      data_dir: tfds data directory holding `cifar10/3.0.2/`; None means
        `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.
      batch_size: training batch size; the remainder of each epoch is dropped.
      eval_batch_size: validation/test batch size; None means `batch_size`.
      seed: seed of the shuffling and augmentation.
      start_epoch: first epoch of `train` (0-based), e.g. the epoch a resumed
        run starts from.
      end_epoch: one past the last epoch of `train`.
      validation_examples: how many examples at the end of tfds' train split
        form the validation set; 0 uses the test split for validation.
      max_train_examples: None, or keep only the first N examples of the
        training part (smoke runs).
      augment: pad-4 random crop and random horizontal flip for training.

    Returns:
      A `CifarData`: images float32 `[B, 32, 32, 3]` normalised with the train
      mean and std, labels int32 `[B]`.

    Raises:
      DataNotFoundError: if the data directory does not exist, is empty or
        has no prepared `cifar10/3.0.2`.
      ValueError: if an argument is out of range.
    """
    # Cheap argument checks first: a bad call fails before any I/O.
    batch_size = common.check_positive_int("batch_size", batch_size)
    eval_batch_size = (
        batch_size
        if eval_batch_size is None
        else (common.check_positive_int("eval_batch_size", eval_batch_size))
    )
    seed = common.check_seed(seed)
    start_epoch, end_epoch = common.check_epoch_range(start_epoch, end_epoch)
    validation_examples = common.check_non_negative_int("validation_examples", validation_examples)
    if max_train_examples is not None:
        common.check_positive_int("max_train_examples", max_train_examples)

    directory, source = resolve_data_dir(data_dir)
    check_prepared(directory, source)

    # Imported here, after the checks: tfds takes seconds to import and is not
    # needed to fail fast.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder(f"{TFDS_NAME}:{TFDS_VERSION}", data_dir=directory)
    num_train_split = builder.info.splits["train"].num_examples
    if validation_examples >= num_train_split:
        raise ValueError(
            f"validation_examples must be in [0, {num_train_split}) (examples "
            f"held out from the {num_train_split}-example train split; 0 uses the "
            f"test split), got {validation_examples}."
        )
    train_part = num_train_split - validation_examples
    num_train = common.check_max_examples("max_train_examples", max_train_examples, train_part)
    steps_per_epoch = common.check_steps(batch_size, num_train)

    train_images, train_labels = _read_split(builder, "train")
    test_images, test_labels = _read_split(builder, "test")
    num_test = int(test_labels.shape[0])

    train_epochs = common.train_epochs_fn(
        _example_fn(train_images, train_labels, 0, augment), num_examples=num_train, batch_size=batch_size, seed=seed, augment=augment
    )

    test = common.make_eval_dataset(
        _example_fn(test_images, test_labels, 0, False),
        num_examples=num_test,
        batch_size=eval_batch_size,
        vectorized=True,
    )
    if validation_examples:
        # The tail of the train split: disjoint from the training part, which is
        # (a prefix of) the head.
        validation = common.make_eval_dataset(
            _example_fn(train_images, train_labels, train_part, False),
            num_examples=validation_examples,
            batch_size=eval_batch_size,
            vectorized=True,
        )
        num_validation = validation_examples
    else:
        validation, num_validation = test, num_test

    return CifarData(
        train=train_epochs(start_epoch, end_epoch),
        validation=validation,
        test=test,
        steps_per_epoch=steps_per_epoch,
        num_train_examples=num_train,
        num_validation_examples=num_validation,
        num_classes=NUM_CLASSES,
        image_shape=IMAGE_SHAPE,
        num_test_examples=num_test,
        class_names=tuple(builder.info.features["label"].names),
        batch_size=batch_size,
        train_epochs=train_epochs,
    )
