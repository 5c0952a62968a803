"""Tests of the Tiny ImageNet pipeline (energynet_tf/data/tiny_imagenet.py).

The fast tests write a tiny fake archive in the original layout (4 classes,
6 train images each with file numbers that sort differently as text, grayscale
JPEGs in one class, 8 val images), as a directory and as a zip.

Run: python3 -m pytest tests/test_data_tiny_imagenet.py   (-m integration for
the real subset at ../shared/data/tiny-imagenet-200-subset.zip).
"""

import hashlib
import os
import shutil
import time
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from energynet_tf.data import tiny_imagenet as ti
from energynet_tf.data.common import DataNotFoundError

WNIDS = ["n03000003", "n01000001", "n04000004", "n02000002"]  # file order
SORTED = sorted(WNIDS)
TRAIN_NUMBERS = [0, 1, 2, 10, 11, 3]  # as text: 0, 1, 10, 11, 2, 3
NATURAL = sorted(TRAIN_NUMBERS)
GRAY_WNID = "n02000002"
VAL = [(f"val_{i}.JPEG", WNIDS[(3 * i + 1) % 4]) for i in range(8)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_ZIP = os.path.join(REPO, "..", "shared", "data", "tiny-imagenet-200-subset.zip")


def _jpeg(rng, gray=False):
    image = rng.integers(0, 256, (64, 64, 1 if gray else 3), dtype=np.uint8)
    return tf.io.encode_jpeg(image, quality=95).numpy()


def _files(rng):
    """{relative path: bytes} of a fake archive under tiny-imagenet-200/."""
    files = {
        "wnids.txt": "".join(w + "\n" for w in WNIDS).encode(),
        "words.txt": "".join(f"{w}\tthing {w}\n" for w in WNIDS).encode(),
    }
    for wnid in WNIDS:
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
        for k in TRAIN_NUMBERS:
            files[f"train/{wnid}/images/{wnid}_{k}.JPEG"] = _jpeg(rng, wnid == GRAY_WNID)
    for name, _ in VAL:
        files[f"val/images/{name}"] = _jpeg(rng)
    files["val/val_annotations.txt"] = "".join(
        f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in VAL
    ).encode()
    return files


def _write_dir(root, files):
    for rel, data in files.items():
        path = os.path.join(root, "tiny-imagenet-200", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tiny-imagenet-200/", b"")
        for rel, data in files.items():
            z.writestr(f"tiny-imagenet-200/{rel}", data)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Paths to the same fake archive: extracted dir, zip, and the files."""
    root = tmp_path_factory.mktemp("tiny")
    files = _files(np.random.default_rng(0))
    _write_dir(str(root / "extracted"), files)
    (root / "zipped").mkdir()
    _write_zip(str(root / "zipped" / "tiny-imagenet-200.zip"), files)
    return dict(
        parent=str(root / "extracted"),
        root=str(root / "extracted" / "tiny-imagenet-200"),
        zip=str(root / "zipped" / "tiny-imagenet-200.zip"),
        zip_parent=str(root / "zipped"),
        files=files,
    )


def collect(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def concat(batches):
    return (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))


def expected_image(data, size=64):
    """The pipeline's un-augmented output for one JPEG, computed directly."""
    image = tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32)
    if size != 64:
        image = tf.image.resize(image, (size, size), method="bilinear")
    return (image.numpy() / 255.0 - np.array(ti.MEAN)) / np.array(ti.STD)


def load(path, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("image_size", 64)
    return ti.load_tiny_imagenet(path, **kwargs)


def _streams_equal(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


# ----------------------------------------------------------------------------
# Finding and reading the archive.


def test_zip_and_directories_give_the_same_data(archive):
    reference = load(archive["zip"], seed=1, end_epoch=2)
    streams = [collect(reference.train), collect(reference.validation)]
    for key in ("root", "parent", "zip_parent"):
        data = load(archive[key], seed=1, end_epoch=2)
        _streams_equal(collect(data.train), streams[0])
        _streams_equal(collect(data.validation), streams[1])


def test_zip_is_only_read(archive):
    digest = hashlib.sha256(open(archive["zip"], "rb").read()).hexdigest()
    listing = sorted(os.listdir(archive["zip_parent"]))
    collect(load(archive["zip"]).train)
    assert hashlib.sha256(open(archive["zip"], "rb").read()).hexdigest() == digest
    assert sorted(os.listdir(archive["zip_parent"])) == listing


def test_labels_sizes_and_eval_images(archive):
    data = load(archive["zip"], eval_batch_size=3)
    assert isinstance(data, ti.TinyImageNetData)
    assert data.class_names == tuple(SORTED) and data.num_classes == 4
    assert data.num_train_examples == 24 and data.steps_per_epoch == 6
    assert data.num_validation_examples == data.num_test_examples == 8
    assert data.image_shape == (64, 64, 3)
    images, labels = concat(collect(data.validation))
    # Annotation order; label = index of the wnid in sorted(wnids.txt).
    np.testing.assert_array_equal(labels, [SORTED.index(w) for _, w in VAL])
    for image, (name, _) in zip(images, VAL):
        expected = expected_image(archive["files"][f"val/images/{name}"])
        np.testing.assert_allclose(image, expected, atol=1e-5)
    assert labels.dtype == np.int32 and images.dtype == np.float32
    # test is the labelled val split.
    _streams_equal(collect(data.test), collect(data.validation))


def test_validation_is_held_out_from_training_and_test_is_the_val_split(archive):
    everything = load(archive["zip"], augment=False, batch_size=24)
    all_images, all_labels = concat(collect(everything.train))
    data = load(archive["zip"], augment=False, batch_size=4, validation_examples=8, eval_batch_size=8)
    assert (data.num_train_examples, data.num_validation_examples, data.num_test_examples) == (16, 8, 8)
    held_images, held_labels = concat(collect(data.validation))
    # The last 8 of the class-interleaved order: two images of each class.
    np.testing.assert_array_equal(np.bincount(held_labels, minlength=4), [2, 2, 2, 2])
    train_images, _ = concat(collect(data.train))
    flat = lambda a: {x.tobytes() for x in a}  # noqa: E731
    assert not flat(held_images) & flat(train_images)
    assert flat(held_images) <= flat(all_images)
    _, test_labels = concat(collect(data.test))
    np.testing.assert_array_equal(test_labels, [SORTED.index(w) for _, w in VAL])
    # None: 10% rounded down to a multiple of the classes, at least one per class.
    assert load(archive["zip"], validation_examples=None).num_validation_examples == 4
    assert ti.default_validation_examples(100_000) == 10_000 and ti.default_validation_examples(5_000) == 400
    with pytest.raises(ValueError, match="validation_examples must be smaller than the 24"):
        load(archive["zip"], validation_examples=24)


def test_grayscale_decoded_to_three_channels(archive):
    data = load(archive["root"], augment=False, batch_size=24)
    images, labels = concat(collect(data.train))
    gray = images[labels == SORTED.index(GRAY_WNID)]
    raw = gray * np.array(ti.STD) + np.array(ti.MEAN)
    np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-5)
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-5)
    assert images.shape == (24, 64, 64, 3)


def test_train_prefix_is_class_interleaved_in_numeric_file_order(archive):
    # The first 8 examples: images 0 and 1 of every class.
    data = load(archive["zip"], augment=False, batch_size=8, max_train_examples=8)
    assert data.num_train_examples == 8 and data.steps_per_epoch == 1
    images, labels = concat(collect(data.train))
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    expected = {}
    for wnid in SORTED:
        for k in NATURAL[:2]:
            data_bytes = archive["files"][f"train/{wnid}/images/{wnid}_{k}.JPEG"]
            expected[(wnid, k)] = expected_image(data_bytes)
    for image, label in zip(images, labels):
        matches = [
            key
            for key, e in expected.items()
            if key[0] == SORTED[label] and np.allclose(image, e, atol=1e-5)
        ]
        assert len(matches) == 1
    # Four examples: one of each class.
    four = load(archive["zip"], augment=False, max_train_examples=4)
    assert sorted(concat(collect(four.train))[1]) == [0, 1, 2, 3]


@pytest.mark.parametrize("size", [224, 32])
def test_image_size_resizes_bilinear(archive, size):
    data = load(archive["zip"], image_size=size, max_eval_examples=2)
    assert data.image_shape == (size, size, 3)
    x, y = data.train.element_spec
    assert x.shape == (4, size, size, 3) and x.dtype == tf.float32
    assert y.shape == (4,) and y.dtype == tf.int32
    images, _ = concat(collect(data.validation))
    assert images.shape == (2, size, size, 3)
    if size > 64:
        expected = expected_image(archive["files"]["val/images/val_0.JPEG"], size)
        np.testing.assert_allclose(images[0], expected, atol=1e-4)


# ----------------------------------------------------------------------------
# Augmentation and the reproducible stream.


def test_augmentation_changes_images_keeps_labels(archive):
    plain_x, plain_y = concat(collect(load(archive["zip"], augment=False, seed=5).train))
    aug_x, aug_y = concat(collect(load(archive["zip"], augment=True, seed=5).train))
    np.testing.assert_array_equal(plain_y, aug_y)
    assert np.mean([not np.allclose(a, p) for a, p in zip(aug_x, plain_x)]) > 0.9
    # Each augmented image is a pad-8 crop (maybe flipped) of the original.
    pad_value = -np.array(ti.MEAN) / np.array(ti.STD)
    for a, p in zip(aug_x[:8], plain_x[:8]):
        padded = np.broadcast_to(pad_value, (80, 80, 3)).copy()
        padded[8:72, 8:72] = p
        assert any(
            np.allclose(c, a, atol=1e-5)
            for dy in range(17)
            for dx in range(17)
            for c in (
                padded[dy : dy + 64, dx : dx + 64],
                padded[dy : dy + 64, dx : dx + 64][:, ::-1],
            )
        )


def test_epoch_stream_same_from_start_or_resumed(archive):
    full = collect(load(archive["zip"], seed=9, end_epoch=3).train)
    assert len(full) == 18
    resumed = collect(load(archive["root"], seed=9, start_epoch=2, end_epoch=3).train)
    _streams_equal(full[12:], resumed)
    # Epochs differ, in order and augmentation.
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(full[:6], full[6:12]))


# ----------------------------------------------------------------------------
# Errors.


def _damaged(archive, tmp_path, remove=(), replace=None):
    """A copy of the extracted archive with files removed or replaced."""
    root = str(tmp_path / "copy")
    shutil.copytree(archive["parent"], root)
    for rel in remove:
        path = os.path.join(root, "tiny-imagenet-200", rel)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for rel, text in (replace or {}).items():
        with open(os.path.join(root, "tiny-imagenet-200", rel), "w") as f:
            f.write(text)
    return root


def _assert_not_found(path, *needles):
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        ti.load_tiny_imagenet(path)
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, FileNotFoundError)
    assert "../shared/data/tiny-imagenet-200-subset.zip" in message
    for needle in needles:
        assert needle in message, message


def test_missing_path(tmp_path):
    _assert_not_found(str(tmp_path / "nope.zip"), "does not exist", str(tmp_path / "nope.zip"))


def test_empty_directory(tmp_path):
    _assert_not_found(str(tmp_path), "is empty", str(tmp_path))


def test_directory_without_archive(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    _assert_not_found(
        str(tmp_path),
        "searched",
        os.path.join(str(tmp_path), "tiny-imagenet-200", "wnids.txt"),
        os.path.join(str(tmp_path), "tiny-imagenet-200.zip"),
    )


def test_zip_without_wnids(tmp_path):
    path = str(tmp_path / "bad.zip")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("something/else.txt", b"x")
    _assert_not_found(path, "has no tiny-imagenet-200/wnids.txt", path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "file.zip"
    path.write_text("not a zip")
    with pytest.raises(ValueError, match="not a valid zip.*file.zip"):
        ti.load_tiny_imagenet(str(path))


def test_missing_val_image_is_named(archive, tmp_path):
    root = _damaged(archive, tmp_path, remove=["val/images/val_3.JPEG"])
    _assert_not_found(
        root, os.path.join("val", "images", "val_3.JPEG"), "val_annotations.txt line 4"
    )


def test_missing_class_directory_is_named(archive, tmp_path):
    root = _damaged(archive, tmp_path, remove=[f"train/{WNIDS[2]}"])
    _assert_not_found(root, os.path.join("train", WNIDS[2], "images"))


def test_missing_annotations_is_named(archive, tmp_path):
    root = _damaged(archive, tmp_path, remove=["val/val_annotations.txt"])
    _assert_not_found(root, os.path.join("val", "val_annotations.txt"))


def test_bad_annotation_line(archive, tmp_path):
    root = _damaged(
        archive,
        tmp_path,
        replace={"val/val_annotations.txt": "val_0.JPEG\tn99999999\t0\t0\t1\t1\n"},
    )
    with pytest.raises(ValueError, match="line 1 must be.*n99999999"):
        ti.load_tiny_imagenet(root)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(batch_size=0), "batch_size must be a positive integer (>= 1), got 0"),
        (dict(image_size=0), "image_size must be a positive integer (>= 1), got 0"),
        (dict(image_size=64.0), "image_size must be a positive integer (>= 1), got 64.0"),
        (dict(max_train_examples=-1), "max_train_examples must be a positive integer"),
        (dict(max_eval_examples=0), "max_eval_examples must be a positive integer"),
        (dict(start_epoch=2, end_epoch=1), "end_epoch must be greater than start_epoch"),
    ],
)
def test_bad_arguments_fail_before_any_io(kwargs, needle, tmp_path):
    with pytest.raises(ValueError) as info:
        ti.load_tiny_imagenet(str(tmp_path / "nope"), **kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(max_train_examples=25), "max_train_examples must be None or an integer in [1, 24]"),
        (dict(max_eval_examples=9), "max_eval_examples must be None or an integer in [1, 8]"),
        (dict(batch_size=25), "at least one full batch, got batch_size=25"),
    ],
)
def test_arguments_checked_against_archive_size(archive, kwargs, needle):
    with pytest.raises(ValueError) as info:
        ti.load_tiny_imagenet(archive["zip"], **kwargs)
    assert needle in str(info.value)


def test_path_none():
    with pytest.raises(ValueError, match="path must be"):
        ti.load_tiny_imagenet(None)


# ----------------------------------------------------------------------------
# The real subset.


@pytest.mark.integration
@pytest.mark.skipif(
    not os.path.isfile(REAL_ZIP), reason="real Tiny ImageNet subset not at ../shared/data"
)
def test_real_tiny_imagenet_subset():
    digest = hashlib.sha256(open(REAL_ZIP, "rb").read()).hexdigest()
    data = ti.load_tiny_imagenet(
        os.path.relpath(REAL_ZIP), batch_size=100, image_size=64, augment=False
    )
    assert data.num_classes == 200 and len(set(data.class_names)) == 200
    assert data.num_train_examples == 5000 and data.steps_per_epoch == 50
    assert data.num_validation_examples == 1000
    images, labels = concat(collect(data.validation))
    np.testing.assert_array_equal(np.bincount(labels, minlength=200), [5] * 200)
    train_labels = concat(collect(data.train))[1]
    np.testing.assert_array_equal(np.bincount(train_labels, minlength=200), [25] * 200)
    # Real pixel statistics, in [0, 1]: Tiny ImageNet's are about
    # mean (0.480, 0.448, 0.398), std (0.277, 0.269, 0.282).
    raw = images.astype(np.float64) * np.array(ti.STD) + np.array(ti.MEAN)
    np.testing.assert_allclose(raw.mean((0, 1, 2)), [0.480, 0.448, 0.398], atol=0.03)
    np.testing.assert_allclose(raw.std((0, 1, 2)), [0.277, 0.269, 0.282], atol=0.03)
    assert raw.min() > -1e-4 and raw.max() < 1 + 1e-4
    # The first 200 training examples cover every class once.
    first = ti.load_tiny_imagenet(
        REAL_ZIP, batch_size=200, image_size=64, max_train_examples=200, augment=False
    )
    assert sorted(concat(collect(first.train))[1]) == list(range(200))
    # The default 224 pipeline.
    big = ti.load_tiny_imagenet(REAL_ZIP, batch_size=8, max_train_examples=16)
    x, y = next(iter(big.train))
    assert x.shape == (8, 224, 224, 3) and y.dtype == tf.int32
    assert hashlib.sha256(open(REAL_ZIP, "rb").read()).hexdigest() == digest


def test_a_damaged_member_of_the_archive_is_named(archive, tmp_path):
    import shutil

    from energynet_tf.data import common

    damaged = tmp_path / "tiny-imagenet-200.zip"
    shutil.copy(archive["zip"], damaged)
    with zipfile.ZipFile(damaged) as z:
        member = next(i for i in z.infolist() if i.filename.endswith(".JPEG"))
    # Change one byte of the member's stored data (after its local header).
    with open(damaged, "r+b") as f:
        f.seek(member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + member.compress_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(common.DataCorruptError) as info:
        load(str(damaged))
    message = str(info.value)
    assert member.filename in message and str(damaged) in message and "CRC" in message
    assert "\n" not in message


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip bytes in the middle of the compressed data
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_find_damaged_names_a_damaged_jpeg_of_the_extracted_directory(archive, tmp_path, how):
    shutil.copytree(archive["root"], tmp_path / "tiny-imagenet-200")
    data = load(str(tmp_path), validation_examples=4)
    assert data.find_damaged("train") is None and data.find_damaged("test") is None
    bad = tmp_path / "tiny-imagenet-200" / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_2.JPEG"
    _damage(bad, how)  # after loading: the directory's files are read as training reads them
    message = data.find_damaged("train")
    assert message.startswith("Tiny ImageNet train split: ") and str(bad) in message and "\n" not in message
    assert "Invalid JPEG data" in message and "function_node" not in message
    assert data.find_damaged("test") is None
    with pytest.raises(tf.errors.InvalidArgumentError):
        collect(data.train)  # what training sees: the decode error, which the trainer turns into the line above
