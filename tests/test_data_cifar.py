"""Tests of the CIFAR-10 pipeline (energynet_tf/data/cifar.py).

The fast tests prepare a tiny genuine tfds `cifar10` 3.0.2 directory: the real
tfds builder runs on fake CIFAR binary batches (the download is patched to
return them), so the files are those the real data has, only 250 examples.
Every fake image carries its index in pixel (0, 0), channels 0 and 1, so
examples can be told apart after the pipeline.

Run: python3 -m pytest tests/test_data_cifar.py   (-m integration for the
real data at ../shared/data/tensorflow_datasets).
"""

import os
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from energynet_tf.data import cifar
from energynet_tf.data import common
from energynet_tf.data import testing
from energynet_tf.data.common import DataNotFoundError

NUM_TRAIN_SPLIT = 200  # 5 fake batch files of 40.
NUM_TEST_SPLIT = 50
VAL = 50  # validation_examples used by most tests.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA_DIR = os.path.join(REPO, "..", "shared", "data", "tensorflow_datasets")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A prepared tfds data dir with a 200/50-example fake cifar10 3.0.2."""
    return testing.make_fake_cifar10(
        str(tmp_path_factory.mktemp("cifar")),
        train_per_file=NUM_TRAIN_SPLIT // 5,
        num_test=NUM_TEST_SPLIT,
    )


@pytest.fixture
def no_download():
    """Fails the test if anything tries to download or prepare a dataset."""

    def fail(*args, **kwargs):
        raise AssertionError("the pipeline tried to download or prepare data")

    with (
        mock.patch.object(tfds.download.DownloadManager, "download", fail),
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", fail),
    ):
        yield


def collect(ds):
    """All batches of `ds` as a list of (images, labels) numpy pairs."""
    return [(x.numpy(), y.numpy()) for x, y in ds]


def ids_of(images):
    """Recovers the fake ids from normalised, un-augmented images."""
    raw = images[:, 0, 0, :2] * np.array(cifar.STD[:2]) + np.array(cifar.MEAN[:2])
    raw = np.rint(raw * 255).astype(np.int64)
    return raw[:, 0] + 256 * raw[:, 1]


def concat(batches):
    return (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))


def load(data_dir, **kwargs):
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("validation_examples", VAL)
    return cifar.load_cifar10(data_dir, **kwargs)


# ----------------------------------------------------------------------------
# Shapes, splits, normalisation.


def test_shapes_dtypes_and_sizes(data_dir, no_download):
    data = load(data_dir, end_epoch=2, eval_batch_size=32)
    assert isinstance(data, cifar.CifarData)
    assert data.num_train_examples == NUM_TRAIN_SPLIT - VAL
    assert data.steps_per_epoch == (NUM_TRAIN_SPLIT - VAL) // 16
    assert data.num_validation_examples == VAL
    assert data.num_test_examples == NUM_TEST_SPLIT
    assert data.num_classes == 10 and data.image_shape == (32, 32, 3)
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10
    images, labels = data.train.element_spec
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (16,) and labels.dtype == tf.int32
    train = collect(data.train)
    assert len(train) == 2 * data.steps_per_epoch  # remainder dropped per epoch
    validation = collect(data.validation)
    assert [len(y) for _, y in validation] == [32, 18]  # eval keeps the remainder
    assert validation[0][0].dtype == np.float32 and validation[0][1].dtype == np.int32


def test_eval_images_are_the_stored_images_normalised(data_dir):
    data = load(data_dir, eval_batch_size=64)
    images, labels = concat(collect(data.test))
    builder = tfds.builder("cifar10:3.0.2", data_dir=data_dir)
    raw_images, raw_labels = tfds.as_numpy(
        builder.as_dataset(split="test", as_supervised=True, batch_size=-1, shuffle_files=False)
    )
    expected = (raw_images / 255.0 - np.array(cifar.MEAN)) / np.array(cifar.STD)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)
    assert cifar.MEAN == (0.4914, 0.4822, 0.4465)
    assert cifar.STD == (0.2470, 0.2435, 0.2616)


def test_validation_is_tail_of_train_split_and_disjoint(data_dir):
    # batch_size 10 divides the 150 training examples: one epoch sees all.
    data = load(data_dir, batch_size=10, augment=False)
    train_images, train_labels = concat(collect(data.train))
    val_images, val_labels = concat(collect(data.validation))
    train_ids, val_ids = ids_of(train_images), ids_of(val_images)
    np.testing.assert_array_equal(train_labels, train_ids % 10)
    np.testing.assert_array_equal(val_labels, val_ids % 10)
    assert len(set(train_ids)) == NUM_TRAIN_SPLIT - VAL
    assert len(set(val_ids)) == VAL
    assert not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == set(range(NUM_TRAIN_SPLIT))
    # The validation set does not depend on the seed or max_train_examples.
    other = load(data_dir, seed=5, max_train_examples=20)
    np.testing.assert_array_equal(ids_of(concat(collect(other.validation))[0]), val_ids)


def test_validation_examples_zero_uses_test_split(data_dir):
    data = load(data_dir, validation_examples=0, batch_size=20)
    assert data.num_train_examples == NUM_TRAIN_SPLIT
    assert data.num_validation_examples == NUM_TEST_SPLIT
    val_ids = ids_of(concat(collect(data.validation))[0])
    test_ids = ids_of(concat(collect(data.test))[0])
    np.testing.assert_array_equal(val_ids, test_ids)
    assert set(val_ids) == set(range(1000, 1000 + NUM_TEST_SPLIT))


def test_max_train_examples_is_a_prefix_of_the_training_part(data_dir):
    data = load(data_dir, batch_size=10, augment=False, max_train_examples=30, end_epoch=3)
    assert data.num_train_examples == 30 and data.steps_per_epoch == 3
    ids = ids_of(concat(collect(data.train))[0])
    assert len(ids) == 90
    # The first 30 examples in storage order are what a 170-example
    # validation tail leaves.
    tail = load(data_dir, batch_size=10, validation_examples=NUM_TRAIN_SPLIT - 30)
    head = set(range(NUM_TRAIN_SPLIT)) - set(ids_of(concat(collect(tail.validation))[0]))
    assert len(head) == 30
    for epoch_ids in ids.reshape(3, 30):
        assert set(epoch_ids) == head


# ----------------------------------------------------------------------------
# Augmentation and the reproducible stream.


def _find_pad_crop_flip(augmented, original, padding=4):
    """Returns (dy, dx, flipped) if `augmented` is a padded crop of `original`."""
    pad_value = (0.0 - np.array(cifar.MEAN)) / np.array(cifar.STD)
    size = original.shape[0]
    padded = np.broadcast_to(pad_value, (size + 2 * padding,) * 2 + (3,)).copy()
    padded[padding : padding + size, padding : padding + size] = original
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy : dy + size, dx : dx + size]
            for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
                if np.allclose(candidate, augmented, atol=1e-5):
                    return dy, dx, flipped
    return None


def test_augmentation_changes_images_keeps_labels(data_dir):
    plain_x, plain_y = concat(collect(load(data_dir, augment=False, seed=3).train))
    aug_x, aug_y = concat(collect(load(data_dir, augment=True, seed=3).train))
    # Same order (the shuffle does not depend on augment), same labels.
    np.testing.assert_array_equal(plain_y, aug_y)
    assert np.mean([not np.allclose(a, p) for a, p in zip(aug_x, plain_x)]) > 0.9
    found = [_find_pad_crop_flip(a, p) for a, p in zip(aug_x[:48], plain_x[:48])]
    assert None not in found, "an augmented image is not a pad-4 crop/flip"
    assert {flipped for _, _, flipped in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 10  # shifts vary


def test_augmentation_of_an_example_differs_between_epochs(data_dir):
    data = load(data_dir, seed=2, end_epoch=2, batch_size=10)
    images = concat(collect(data.train))[0].reshape(2, 150, 32, 32, 3)
    by_index = []
    for epoch in (0, 1):
        order = common.epoch_permutation(2, epoch, 150).numpy()
        by_index.append(images[epoch][np.argsort(order)])
    differs = [not np.allclose(a, b) for a, b in zip(*by_index)]
    assert np.mean(differs) > 0.9


def test_epoch_stream_same_from_start_or_resumed(data_dir, no_download):
    full = load(data_dir, seed=7, start_epoch=0, end_epoch=3)
    steps = full.steps_per_epoch
    from_start = collect(full.train)
    resumed = collect(load(data_dir, seed=7, start_epoch=2, end_epoch=3).train)
    assert len(resumed) == steps
    for (x0, y0), (x1, y1) in zip(from_start[2 * steps :], resumed):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    # Iterating again in the same process gives the same stream; so does the
    # train_epochs factory for a sub-range.
    again = collect(full.train)
    for (x0, _), (x1, _) in zip(from_start, again):
        np.testing.assert_array_equal(x0, x1)
    middle = collect(full.train_epochs(1, 2))
    for (x0, _), (x1, _) in zip(from_start[steps : 2 * steps], middle):
        np.testing.assert_array_equal(x0, x1)


def test_stream_is_independent_of_global_seed(data_dir):
    tf.random.set_seed(1)
    first = collect(load(data_dir, seed=4).train)
    tf.random.set_seed(2)
    tf.random.uniform([3])  # consume global RNG state
    second = collect(load(data_dir, seed=4).train)
    for (x0, _), (x1, _) in zip(first, second):
        np.testing.assert_array_equal(x0, x1)


def test_epochs_and_seeds_differ(data_dir):
    data = load(data_dir, seed=0, end_epoch=2, augment=False, batch_size=10)
    assert data.steps_per_epoch == 15
    ids = ids_of(concat(collect(data.train))[0]).reshape(2, -1)
    assert sorted(ids[0]) == sorted(ids[1])  # each epoch is a permutation
    assert not np.array_equal(ids[0], ids[1])
    # The stream follows common.epoch_permutation over the training part.
    np.testing.assert_array_equal(
        ids[1],
        ids[0][np.argsort(common.epoch_permutation(0, 0, 150).numpy())][
            common.epoch_permutation(0, 1, 150).numpy()
        ],
    )
    other_seed = load(data_dir, seed=1, augment=False, batch_size=10)
    assert not np.array_equal(ids[0], ids_of(concat(collect(other_seed.train))[0]))


def test_permutation_is_pure_function_of_seed_and_epoch():
    a = common.epoch_permutation(3, 5, 1000).numpy()
    common.epoch_permutation(3, 4, 1000)
    b = common.epoch_permutation(3, 5, 1000).numpy()
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == list(range(1000))
    assert not np.array_equal(a, common.epoch_permutation(3, 6, 1000).numpy())


# ----------------------------------------------------------------------------
# Finding the data, failing fast.


def _assert_fast_not_found(data_dir, *needles, source_env=None):
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        cifar.load_cifar10(data_dir)
    elapsed = time.monotonic() - start
    assert elapsed < 3, f"took {elapsed:.1f}s: it must not retry a download"
    message = str(info.value)
    assert "\n" not in message
    assert "--data_dir=DIR" in message and "TFDS_DATA_DIR=DIR" in message
    assert "../shared/data/tensorflow_datasets" in message
    for needle in needles:
        assert needle in message, message
    assert isinstance(info.value, FileNotFoundError)
    return message


def test_missing_dataset_fails_fast_without_download(tmp_path, no_download):
    (tmp_path / "other").mkdir()  # not empty, but no cifar10
    message = _assert_fast_not_found(
        str(tmp_path), str(tmp_path), os.path.join("cifar10", "3.0.2"), "not prepared"
    )
    assert "data_dir=" in message


def test_wrong_version_is_named(tmp_path, no_download):
    (tmp_path / "cifar10" / "3.0.1").mkdir(parents=True)
    _assert_fast_not_found(str(tmp_path), "found versions: 3.0.1")


def test_data_dir_does_not_exist(tmp_path, no_download):
    _assert_fast_not_found(str(tmp_path / "nope"), "does not exist", str(tmp_path / "nope"))


def test_data_dir_is_empty(tmp_path, no_download):
    _assert_fast_not_found(str(tmp_path), "is empty", str(tmp_path))


def test_data_dir_is_a_file(tmp_path, no_download):
    path = tmp_path / "file"
    path.write_text("x")
    _assert_fast_not_found(str(path), "not a directory")


def test_tfds_data_dir_environment_fallback(data_dir, tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    assert cifar.load_cifar10(batch_size=50, validation_examples=VAL).num_train_examples == 150
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "missing"))
    message = _assert_fast_not_found(None, "TFDS_DATA_DIR=", "does not exist")
    assert str(tmp_path / "missing") in message
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cifar.resolve_data_dir(None) == (
        os.path.join(str(tmp_path), "tensorflow_datasets"),
        "tfds default",
    )


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(batch_size=0), "batch_size must be a positive integer (>= 1), got 0"),
        (dict(batch_size=-3), "got -3"),
        (dict(batch_size=2.5), "got 2.5"),
        (dict(batch_size=True), "got True"),
        (dict(eval_batch_size=0), "eval_batch_size must be a positive integer"),
        (dict(max_train_examples=0), "max_train_examples must be a positive integer"),
        (dict(validation_examples=-1), "validation_examples must be a non-negative"),
        (dict(start_epoch=3, end_epoch=3), "end_epoch must be greater than start_epoch"),
        (dict(start_epoch=-1), "start_epoch must be a non-negative integer"),
        (dict(seed="1"), "seed must be an integer"),
    ],
)
def test_bad_arguments_fail_before_any_io(kwargs, needle, tmp_path):
    # The directory does not exist: the argument error must come first.
    with pytest.raises(ValueError) as info:
        cifar.load_cifar10(str(tmp_path / "nope"), **kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(validation_examples=200), "validation_examples must be in [0, 200)"),
        (dict(max_train_examples=151), "max_train_examples must be None or an integer in [1, 150]"),
        (dict(batch_size=151), "batch_size must be at most the number of training examples (150)"),
        (dict(max_train_examples=10, batch_size=16), "got batch_size=16"),
    ],
)
def test_arguments_checked_against_dataset_size(data_dir, kwargs, needle):
    kwargs.setdefault("validation_examples", VAL)
    with pytest.raises(ValueError) as info:
        cifar.load_cifar10(data_dir, **kwargs)
    assert needle in str(info.value)


# ----------------------------------------------------------------------------
# The real data.


@pytest.mark.integration
@pytest.mark.skipif(
    not os.path.isdir(os.path.join(REAL_DATA_DIR, "cifar10", "3.0.2")),
    reason="real CIFAR-10 not at ../shared/data/tensorflow_datasets",
)
def test_real_cifar10(no_download):
    version_dir = os.path.join(REAL_DATA_DIR, "cifar10", "3.0.2")
    before = sorted(os.listdir(version_dir))
    # Default split; batch 1000 divides the 45,000 training examples.
    data = cifar.load_cifar10(os.path.relpath(REAL_DATA_DIR), batch_size=1000, augment=False)
    assert (data.num_train_examples, data.num_validation_examples) == (45000, 5000)
    assert data.num_test_examples == 10000 and data.steps_per_epoch == 45
    test_labels = concat(collect(data.test))[1]
    np.testing.assert_array_equal(np.bincount(test_labels, minlength=10), [1000] * 10)
    # One un-augmented epoch plus the validation tail is the whole train split:
    # 5,000 per class and normalised statistics ~ 0 and 1.
    total, total_sq, labels = np.zeros(3), np.zeros(3), []
    for x, y in data.train.concatenate(data.validation):
        # Per-batch sums in TF (fast), accumulated in float64.
        total += tf.reduce_sum(x, [0, 1, 2]).numpy()
        total_sq += tf.reduce_sum(tf.square(x), [0, 1, 2]).numpy()
        labels.append(y.numpy())
    n = 50000 * 32 * 32
    mean = total / n
    std = np.sqrt(total_sq / n - mean**2)
    np.testing.assert_allclose(mean, 0, atol=2e-3)
    np.testing.assert_allclose(std, 1, atol=2e-3)
    np.testing.assert_array_equal(np.bincount(np.concatenate(labels)), [5000] * 10)
    # Nothing was written into the read-only data folder.
    assert sorted(os.listdir(version_dir)) == before


# ----------------------------------------------------------------------------
# Damaged files: one error naming the file and the split.


def _damaged_copy(data_dir, tmp_path, split, damage):
    import glob
    import shutil
    import struct

    copy = str(tmp_path / "tfds")
    shutil.copytree(data_dir, copy)
    shard = sorted(glob.glob(os.path.join(copy, "cifar10", "3.0.2", f"cifar10-{split}.tfrecord*")))[0]
    data = bytearray(open(shard, "rb").read())
    if damage == "truncated":
        data = data[: len(data) // 2 + 7]  # mid-record: an interrupted copy
    elif damage == "record boundary":
        length = struct.unpack("<Q", bytes(data[:8]))[0]
        data = data[: 8 + 4 + length + 4]  # exactly one whole record left
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    with open(shard, "wb") as f:
        f.write(bytes(data))
    return copy, shard


@pytest.mark.parametrize("split, damage, reason", [
    ("train", "truncated", r"(truncated record at \d+|\d+ records instead of the 200)"),
    ("train", "record boundary", "1 records instead of the 200"),
    ("test", "flipped", r"corrupted record at \d+"),
])
def test_a_damaged_shard_is_named_with_its_split(data_dir, tmp_path, split, damage, reason):
    copy, shard = _damaged_copy(data_dir, tmp_path, split, damage)
    with pytest.raises(common.DataCorruptError) as info:
        load(copy)
    message = str(info.value)
    import re

    assert f"CIFAR-10 {split} split" in message and shard in message and re.search(reason, message), message
    assert "copy the dataset again" in message and "\n" not in message
    assert isinstance(info.value, DataNotFoundError)  # the programs' one-line data errors
