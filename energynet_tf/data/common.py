"""Shared pieces of the input pipelines: errors, argument checks, the stream.

The training stream is a pure function of `(seed, epoch)`: epoch `e` is built
from keys derived only from `(seed, e)`, so a run resumed at epoch `e` sees
exactly the batches an uninterrupted run sees in epoch `e`, whatever this
process iterated before. Every random op is stateless:

* `key_e = [seed, e]` (int64, shape [2]).
* `shuffle_key, augment_key = stateless_split(key_e, 2)`.
* The order of epoch `e` is `stateless_shuffle(range(N), shuffle_key)`.
* Example `i` (its index in the training part, not its position in the epoch)
  is augmented with `stateless_fold_in(augment_key, i)`, which the dataset
  module splits further for each random op (crop, flip).

The images live in memory (decoded uint8, or encoded bytes for large sets) and
an epoch is a `Dataset` over the permuted indices that gathers from them, so
no `Dataset.shuffle` buffer, global seed or iterator state is involved.
"""

import dataclasses
import numbers
import os
from typing import Callable, Optional, Tuple

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# Maps (index, key) -> (image, label). `key` is None for evaluation.
ExampleFn = Callable[[tf.Tensor, Optional[tf.Tensor]], Tuple[tf.Tensor, tf.Tensor]]


class DataNotFoundError(FileNotFoundError):
    """Raised at once when a dataset is not where it was looked for.

    The message is one line: it names the path searched and how to fix it.
    Nothing is ever downloaded.
    """


class DataCorruptError(DataNotFoundError):
    """A data file is there but damaged: cut short (an interrupted copy) or with changed bytes.

    A `DataNotFoundError` for the programs that report data problems in one
    line (the usable data is not where it was looked for); the message names
    the file, the split and what to do.
    """


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """Batched image-classification datasets and their sizes.

    Attributes:
      train: `(images, labels)` batches of epochs `[start_epoch, end_epoch)`
        back to back, each epoch exactly `steps_per_epoch` batches (the
        remainder is dropped). Shuffled, augmented if asked. With Keras, pass
        `steps_per_epoch=steps_per_epoch` to `fit` so that one iterator runs
        through the epochs (without it Keras restarts the stream every epoch).
      validation: un-augmented batches, in a fixed order, not repeated.
      test: un-augmented batches, in a fixed order, not repeated.
      steps_per_epoch: batches per training epoch.
      num_train_examples: examples in the training part (after
        `max_train_examples`); each epoch uses
        `steps_per_epoch * batch_size` of them.
      num_validation_examples: examples in `validation`.
      num_classes: number of classes; labels are in `[0, num_classes)`.
      image_shape: `(height, width, channels)` of one image.
      num_test_examples: examples in `test`.
      class_names: class names, indexed by label.
      batch_size: training batch size.
      train_epochs: `train_epochs(start_epoch, end_epoch)` builds the training
        stream for another range of epochs from the same in-memory data (for
        example one per phase of a schedule); `train` is
        `train_epochs(start_epoch, end_epoch)`.
      find_damaged: None, or `find_damaged(split)` for a data set whose files
        are decoded as they are read (so damage shows up mid-run): reads and
        decodes every example of `"train"`, `"validation"` or `"test"` once and
        returns one line naming the first damaged file and why, or None.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    steps_per_epoch: int
    num_train_examples: int
    num_validation_examples: int
    num_classes: int
    image_shape: Tuple[int, int, int]
    num_test_examples: int = 0
    class_names: Tuple[str, ...] = ()
    batch_size: int = 0
    train_epochs: Optional[Callable[[int, int], tf.data.Dataset]] = None
    find_damaged: Optional[Callable[[str], Optional[str]]] = None


# ----------------------------------------------------------------------------
# Argument checks. Each names the argument, what was expected, what was given.


def _is_int(value) -> bool:
    # bool is an int subclass; `batch_size=True` is a mistake, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int_at_least(name: str, value, minimum: int, kind: str) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be a {kind} integer (>= {minimum}), got {value!r}.")
    return int(value)


def check_positive_int(name: str, value) -> int:
    """Returns `value` as an int if it is an integer >= 1.

    Args:
      name: argument name, for the message.
      value: the value received.

    Returns:
      `int(value)`.

    Raises:
      ValueError: if `value` is not an integer >= 1.
    """
    return _check_int_at_least(name, value, 1, "positive")


def check_non_negative_int(name: str, value) -> int:
    """Returns `value` as an int if it is an integer >= 0.

    Args:
      name: argument name, for the message.
      value: the value received.

    Returns:
      `int(value)`.

    Raises:
      ValueError: if `value` is not an integer >= 0.
    """
    return _check_int_at_least(name, value, 0, "non-negative")


def check_seed(seed) -> int:
    """Returns `seed` as an int if it fits the int64 stateless-RNG key.

    Args:
      seed: the value received.

    Returns:
      `int(seed)`.

    Raises:
      ValueError: if `seed` is not an integer in [-2**63, 2**63).
    """
    if not _is_int(seed) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [-2**63, 2**63), got {seed!r}.")
    return int(seed)


def check_epoch_range(start_epoch, end_epoch) -> Tuple[int, int]:
    """Checks `0 <= start_epoch < end_epoch`.

    Args:
      start_epoch: first epoch of the stream (0-based).
      end_epoch: one past the last epoch of the stream.

    Returns:
      `(start_epoch, end_epoch)` as ints.

    Raises:
      ValueError: if either is not an integer or the range is empty.
    """
    start_epoch = check_non_negative_int("start_epoch", start_epoch)
    end_epoch = check_positive_int("end_epoch", end_epoch)
    if end_epoch <= start_epoch:
        raise ValueError(
            f"end_epoch must be greater than start_epoch (the stream covers "
            f"epochs [start_epoch, end_epoch)), got start_epoch={start_epoch}, "
            f"end_epoch={end_epoch}."
        )
    return start_epoch, end_epoch


def check_max_examples(name: str, value, available: int) -> int:
    """Returns how many of `available` examples to use given a cap `value`.

    Args:
      name: argument name, for the message.
      value: None (use all) or an integer in [1, available].
      available: how many examples there are.

    Returns:
      The number of examples to use.

    Raises:
      ValueError: if `value` is not None and not an integer in [1, available].
    """
    if value is None:
        return available
    if not _is_int(value) or not 1 <= value <= available:
        raise ValueError(
            f"{name} must be None or an integer in [1, {available}] (the "
            f"examples available), got {value!r}."
        )
    return int(value)


def check_steps(batch_size: int, num_examples: int) -> int:
    """Returns the steps per epoch, dropping the remainder batch.

    Args:
      batch_size: training batch size.
      num_examples: training examples per epoch.

    Returns:
      `num_examples // batch_size`.

    Raises:
      ValueError: if there is not one full batch.
    """
    if num_examples < batch_size:
        raise ValueError(
            f"batch_size must be at most the number of training examples "
            f"({num_examples}) so that an epoch has at least one full batch, "
            f"got batch_size={batch_size}."
        )
    return num_examples // batch_size


def display_path(path: str) -> str:
    """Returns `path` with its absolute form, for error messages."""
    path = os.fspath(path)
    absolute = os.path.abspath(path)
    return path if path == absolute else f"{path} ({absolute})"


# ----------------------------------------------------------------------------
# Datasets.


def dataset_options() -> tf.data.Options:
    """Returns options for deterministic, parallel pipelines."""
    options = tf.data.Options()
    # Parallel map calls still deliver elements in order: same batches every run.
    options.deterministic = True
    return options


def epoch_keys(seed: int, epoch: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Returns `(shuffle_key, augment_key)` of one epoch, from `(seed, epoch)`.

    Args:
      seed: the run's seed.
      epoch: the epoch, an int64 scalar tensor.

    Returns:
      Two int64 stateless-RNG keys of shape [2].
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    keys = tf.random.experimental.stateless_split(key, num=2)
    return keys[0], keys[1]


def epoch_permutation(seed: int, epoch, num_examples: int) -> tf.Tensor:
    """Returns the order of the training examples in one epoch.

    Args:
      seed: the run's seed.
      epoch: the epoch (int or int64 scalar tensor).
      num_examples: examples in the training part.

    Returns:
      An int64 permutation of `range(num_examples)`.
    """
    shuffle_key, _ = epoch_keys(seed, tf.convert_to_tensor(epoch, tf.int64))
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64), seed=shuffle_key
    )


def train_epochs_fn(
    example_fn: ExampleFn, *, num_examples: int, batch_size: int, seed: int, augment: bool
) -> Callable[[int, int], tf.data.Dataset]:
    """Returns `train_epochs(start_epoch, end_epoch)` for a loader's `train_epochs` field.

    Args: as for `make_train_stream`.

    Returns:
      A function that checks its epoch range and builds those epochs' stream.
    """

    def train_epochs(first: int, end: int) -> tf.data.Dataset:
        first, end = check_epoch_range(first, end)
        return make_train_stream(
            example_fn,
            num_examples=num_examples,
            batch_size=batch_size,
            seed=seed,
            start_epoch=first,
            end_epoch=end,
            augment=augment,
        )

    return train_epochs


def make_train_stream(
    example_fn: ExampleFn,
    *,
    num_examples: int,
    batch_size: int,
    seed: int,
    start_epoch: int,
    end_epoch: int,
    augment: bool,
) -> tf.data.Dataset:
    """Builds the training batches of epochs `[start_epoch, end_epoch)`.

    Args:
      example_fn: maps `(index, key)` to `(image, label)`; `key` is the
        example's stateless key, or None when `augment` is False.
      num_examples: examples in the training part; indices are
        `range(num_examples)`.
      batch_size: batch size; each epoch drops its remainder.
      seed: the run's seed.
      start_epoch: first epoch.
      end_epoch: one past the last epoch.
      augment: whether `example_fn` receives keys.

    Returns:
      A `tf.data.Dataset` of `(images, labels)` batches, epoch after epoch.
    """

    def one_epoch(epoch):
        shuffle_key, augment_key = epoch_keys(seed, epoch)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), seed=shuffle_key
        )

        def load(index):
            if not augment:
                return example_fn(index, None)
            # Keyed by the example's index, not its position: the augmentation of
            # an example depends on (seed, epoch, index) only.
            key = tf.random.experimental.stateless_fold_in(augment_key, index)
            return example_fn(index, key)

        ds = tf.data.Dataset.from_tensor_slices(order)
        ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        # Batch inside the epoch: no batch straddles two epochs, and every epoch
        # has the same number of steps.
        return ds.batch(batch_size, drop_remainder=True)

    ds = tf.data.Dataset.range(start_epoch, end_epoch).flat_map(one_epoch)
    return ds.prefetch(AUTOTUNE).with_options(dataset_options())


def make_eval_dataset(
    example_fn: ExampleFn, *, num_examples: int, batch_size: int, vectorized: bool = False
) -> tf.data.Dataset:
    """Builds un-augmented batches of `range(num_examples)`, in order.

    Args:
      example_fn: maps `(index, None)` to `(image, label)`.
      num_examples: number of examples.
      batch_size: batch size; the last batch may be smaller.
      vectorized: `example_fn` also maps a vector of indices to a batch; it is
        then called once per batch (for in-memory data, several times faster
        than a call per example).

    Returns:
      A `tf.data.Dataset` of `(images, labels)` batches.
    """
    ds = tf.data.Dataset.range(num_examples)
    if vectorized:
        ds = ds.batch(batch_size).map(
            lambda i: example_fn(i, None), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    else:
        ds = ds.map(
            lambda i: example_fn(i, None), num_parallel_calls=AUTOTUNE, deterministic=True
        ).batch(batch_size)
    return ds.prefetch(AUTOTUNE).with_options(dataset_options())


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
    """Maps uint8 or [0, 255] float pixels to `(x / 255 - mean) / std`.

    Args:
      image: `[..., 3]` pixels in [0, 255].
      mean: per-channel mean of `x / 255`.
      std: per-channel standard deviation of `x / 255`.

    Returns:
      float32 image of the same shape.
    """
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def pad_crop_flip(image: tf.Tensor, key: tf.Tensor, padding: int) -> tf.Tensor:
    """Zero-pads, crops back to the input size at random, flips at random.

    Args:
      image: `[H, W, C]` image (uint8 or float) of a fully known shape.
      key: int64 stateless key of this example.
      padding: pixels of zeros added on each side before cropping.

    Returns:
      The augmented `[H, W, C]` image, same dtype.
    """
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    # The static shape keeps the batch shape known downstream.
    shape = image.shape.as_list()
    # Zeros before normalisation (black), as torchvision's RandomCrop(padding)
    # that the reference recipes use.
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_key)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_key)
