"""Tiny ImageNet input pipeline from the original archive's layout.

Reads `tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG,
val/images/*.JPEG, val/val_annotations.txt}` either from the .zip itself
(read-only: its JPEG bytes are read into memory, nothing is extracted or
written) or from the extracted directory (files are read by the pipeline).
`words.txt`, the bounding boxes and the unlabelled `test/` are not used.

Labels: the index of the class's wnid in `sorted(wnids.txt)` (the order of
torchvision's `ImageFolder` over `train/`, which the reference code used).

Order of the training part, from which `max_train_examples` keeps the first
N: image k of every class (classes in label order, images in the numeric order
of their file names) before image k + 1 of any class, so a prefix is
class-balanced. `test` is the archive's labelled `val` split in the order of
`val_annotations.txt` (its test split has no labels; the papers that report
Tiny ImageNet report this split). Validation, which the alpha schedule decides
on, is held out from the training images: the last `validation_examples` of
the class-interleaved order (a multiple of 200 keeps it class-balanced), so
that nothing is decided on the reported test set. `validation_examples=0`
validates on the `val` split itself, as the authors' code did.

Images are 64x64 JPEGs, some grayscale (decoded with 3 channels). Training
augmentation: zero-pad 8, random 64x64 crop, random horizontal flip; then a
bilinear resize to `image_size` (224 by default, as the authors' code fed
upscaled images to the ImageNet stem; 64 keeps the native size) and ImageNet
mean/std normalisation. See `common.py` for the reproducibility scheme.
"""

import dataclasses
import os
import re
import zipfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from energynet_tf.data import common
from energynet_tf.data.common import DataNotFoundError

ROOT_NAME = "tiny-imagenet-200"
# Looked for, in this order, inside a directory given as `path`.
ZIP_NAMES = ("tiny-imagenet-200.zip", "tiny-imagenet-200-subset.zip")
NUM_CLASSES = 200
NATIVE_SIZE = 64
PADDING = 8
DEFAULT_IMAGE_SIZE = 224
# ImageNet statistics, in [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_FIX = (
    f"point path (the trainer's --data_dir) at {ZIP_NAMES[0]}, its "
    f"extracted {ROOT_NAME}/ directory or a directory holding either, e.g. "
    f"../shared/data/{ZIP_NAMES[1]}"
)


@dataclasses.dataclass(frozen=True)
class TinyImageNetData(common.ClassificationData):
    """Tiny ImageNet datasets; see `common.ClassificationData` for the fields.

    `test` is the labelled `val` split; `validation` is held out from the
    training images (or is the `val` split when `validation_examples` is 0).
    """

    num_classes: int = NUM_CLASSES
    image_shape: Tuple[int, int, int] = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3)


# ----------------------------------------------------------------------------
# Reading the archive: a directory or a zip, behind one small interface.


class _DirSource:
    """The extracted `tiny-imagenet-200/` directory."""

    def __init__(self, root: str):
        self.root = root

    def describe(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read_text(self, rel: str) -> str:
        if not os.path.isfile(self.describe(rel)):
            raise DataNotFoundError(f"Tiny ImageNet file not found: {self.describe(rel)}; {_FIX}.")
        with open(self.describe(rel), encoding="utf-8") as f:
            return f.read()

    def list_dir(self, rel: str) -> List[str]:
        if not os.path.isdir(self.describe(rel)):
            raise DataNotFoundError(
                f"Tiny ImageNet directory not found: {self.describe(rel)}; {_FIX}."
            )
        return os.listdir(self.describe(rel))

    def encoded(self, rels: Sequence[str]) -> Tuple[tf.Tensor, bool]:
        # File names: the pipeline reads each file when it needs it.
        return tf.constant([self.describe(r) for r in rels], tf.string), True

    def close(self):
        pass


class _ZipSource:
    """The archive itself, opened read-only."""

    def __init__(self, zip_path: str, prefix: str, zip_file: zipfile.ZipFile):
        self.zip_path, self.prefix, self.zip = zip_path, prefix, zip_file
        self.names = set(zip_file.namelist())

    def describe(self, rel: str) -> str:
        return f"{self.zip_path}:{self.prefix}{rel}"

    def read_text(self, rel: str) -> str:
        if self.prefix + rel not in self.names:
            raise DataNotFoundError(f"Tiny ImageNet file not found: {self.describe(rel)}; {_FIX}.")
        return self.zip.read(self.prefix + rel).decode("utf-8")

    def list_dir(self, rel: str) -> List[str]:
        start = self.prefix + rel.rstrip("/") + "/"
        entries = {
            n[len(start) :].split("/", 1)[0]
            for n in self.names
            if n.startswith(start) and len(n) > len(start)
        }
        if not entries and start not in self.names:
            raise DataNotFoundError(
                f"Tiny ImageNet directory not found: {self.describe(rel)}; {_FIX}."
            )
        return sorted(entries)

    def encoded(self, rels: Sequence[str]) -> Tuple[tf.Tensor, bool]:
        # JPEG bytes in memory (the full train split is ~250 MB): no extraction.
        # Every member's CRC is checked as it is read, before any training.
        data = []
        for r in rels:
            try:
                data.append(self.zip.read(self.prefix + r))
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise common.DataCorruptError(
                    f"Tiny ImageNet archive {common.display_path(self.zip_path)} is damaged: member "
                    f"{self.prefix + r} cannot be read ({e}); the archive is cut short or its bytes changed "
                    "(an interrupted or bad copy?); copy it again (check it against its checksum) and rerun."
                ) from None
        return tf.constant(data, tf.string), False

    def close(self):
        self.zip.close()


def _open_zip(zip_path: str) -> _ZipSource:
    """Opens a Tiny ImageNet zip and finds the folder holding wnids.txt."""
    try:
        zip_file = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"path must be a Tiny ImageNet .zip or directory, got a file that is "
            f"not a valid zip: {common.display_path(zip_path)} ({e})."
        ) from e
    candidates = [n for n in zip_file.namelist() if n == "wnids.txt" or n.endswith("/wnids.txt")]
    if not candidates:
        raise DataNotFoundError(
            f"Tiny ImageNet zip has no {ROOT_NAME}/wnids.txt: "
            f"{common.display_path(zip_path)}; {_FIX}."
        )
    # The shallowest wnids.txt is the archive's root.
    wnids = min(candidates, key=lambda n: (n.count("/"), n))
    return _ZipSource(zip_path, wnids[: -len("wnids.txt")], zip_file)


def _open(path) -> object:
    """Returns the source for `path`: a zip, the root, or a parent of either."""
    if path is None:
        raise ValueError(f"path must be the Tiny ImageNet .zip or directory, got None; {_FIX}.")
    path = os.path.expanduser(os.fspath(path))
    shown = common.display_path(path)
    if not os.path.exists(path):
        raise DataNotFoundError(f"Tiny ImageNet path does not exist: {shown}; {_FIX}.")
    if os.path.isfile(path):
        return _open_zip(path)
    if not os.listdir(path):
        raise DataNotFoundError(f"Tiny ImageNet directory is empty: {shown}; {_FIX}.")
    searched = [os.path.join(path, "wnids.txt"), os.path.join(path, ROOT_NAME, "wnids.txt")]
    for wnids in searched:
        if os.path.isfile(wnids):
            return _DirSource(os.path.dirname(wnids))
    for name in ZIP_NAMES:
        searched.append(os.path.join(path, name))
        if os.path.isfile(searched[-1]):
            return _open_zip(searched[-1])
    raise DataNotFoundError(
        f"Tiny ImageNet not found in {shown}: searched {', '.join(searched)}; {_FIX}."
    )


def _natural_key(name: str):
    # n01443537_12.JPEG sorts after n01443537_2.JPEG, as the archive numbers them.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith((".jpeg", ".jpg"))


def read_index(source) -> Tuple[List[str], List[Tuple[str, int]], List[Tuple[str, int]]]:
    """Lists the classes and the labelled train and val files of an archive.

    Args:
      source: an opened archive (directory or zip).

    Returns:
      `(wnids, train, val)`: the sorted wnids (label order), and lists of
      `(relative path, label)` for train (class-interleaved order) and val
      (annotation order).

    Raises:
      DataNotFoundError: if a listed file or directory is missing.
      ValueError: if wnids.txt or val_annotations.txt is malformed.
    """
    wnids = source.read_text("wnids.txt").split()
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(
            f"{source.describe('wnids.txt')} must list distinct wnids, one a line, "
            f"got {len(wnids)} lines with {len(set(wnids))} distinct."
        )
    wnids = sorted(wnids)
    labels: Dict[str, int] = {w: i for i, w in enumerate(wnids)}

    per_class = []
    for wnid in wnids:
        rel = f"train/{wnid}/images"
        files = sorted((f for f in source.list_dir(rel) if _is_jpeg(f)), key=_natural_key)
        if not files:
            raise DataNotFoundError(
                f"Tiny ImageNet class {wnid} has no JPEG images in {source.describe(rel)}; {_FIX}."
            )
        per_class.append([(f"{rel}/{f}", labels[wnid]) for f in files])
    # Image k of every class before image k + 1 of any: a prefix is balanced.
    longest = max(len(files) for files in per_class)
    train = [files[k] for k in range(longest) for files in per_class if k < len(files)]

    annotations = "val/val_annotations.txt"
    present = set(source.list_dir("val/images"))
    val = []
    for line_number, line in enumerate(source.read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in labels:
            raise ValueError(
                f"{source.describe(annotations)} line {line_number} must be "
                f"'<file>\\t<wnid in wnids.txt>\\t...', got {line!r}."
            )
        if fields[0] not in present:
            raise DataNotFoundError(
                f"Tiny ImageNet file not found: "
                f"{source.describe('val/images/' + fields[0])} (listed in "
                f"{annotations} line {line_number}); {_FIX}."
            )
        val.append((f"val/images/{fields[0]}", labels[fields[1]]))
    if not val:
        raise DataNotFoundError(
            f"Tiny ImageNet has no validation images listed in "
            f"{source.describe(annotations)}; {_FIX}."
        )
    return wnids, train, val


# ----------------------------------------------------------------------------
# The pipeline.


def _example_fn(
    encoded: tf.Tensor, is_path: bool, labels: tf.Tensor, image_size: int, augment: bool
):
    """Returns `(index, key) -> (image, label)` over the given files."""

    def example(index, key):
        image = _decode_checked(encoded, is_path, index)
        if augment and key is not None:
            # Crop at the native size, then resize: the same augmentation whatever
            # image_size, and 12x fewer pixels to pad and crop at 224.
            image = common.pad_crop_flip(image, key, PADDING)
        if image_size != NATIVE_SIZE:
            image = tf.image.resize(
                image,
                (image_size, image_size),
                method="bilinear",
                antialias=image_size < NATIVE_SIZE,
            )
        return common.normalize(image, MEAN, STD), tf.gather(labels, index)

    return example


def _decode_checked(encoded: tf.Tensor, is_path: bool, index) -> tf.Tensor:
    """The image at `index`, decoded as the pipeline decodes it (an error if the file is damaged)."""
    data = tf.gather(encoded, index)
    if is_path:
        data = tf.io.read_file(data)
    # channels=3: some Tiny ImageNet JPEGs are grayscale.
    return tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), (NATIVE_SIZE, NATIVE_SIZE, 3))


def _damage_finder(splits: Dict[str, Tuple[tf.Tensor, bool, List[str]]]):
    """`find_damaged(split)` over `{split: (encoded, is_path, file descriptions)}` (see `ClassificationData`).

    Every image of the split is read and decoded once, in parallel; the ones
    that fail are dropped (`ignore_errors`), so the missing indices are the
    damaged files. Only run after a read failed: the extracted directory's
    files are decoded as training reads them, not checked up front.
    """

    def find_damaged(split: str) -> Optional[str]:
        if split not in splits:
            return None
        encoded, is_path, names = splits[split]
        decoded = tf.data.Dataset.range(len(names)).map(
            # A pixel, not the shape: the static shape would let the decode be optimised away.
            lambda i: (i, _decode_checked(encoded, is_path, i)[0, 0, 0]),
            num_parallel_calls=common.AUTOTUNE, deterministic=True)
        seen = np.zeros(len(names), bool)
        for indices, _ in decoded.ignore_errors().batch(4096):
            seen[indices.numpy()] = True
        bad = np.flatnonzero(~seen)
        if not bad.size:
            return None
        first = int(bad[0])
        try:
            _decode_checked(encoded, is_path, first)
            reason = "cannot be read"
        except (tf.errors.OpError, ValueError) as e:
            text = str(getattr(e, "message", e)).splitlines()[0]
            reason = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", text).strip().rstrip(".")
        more = f" (and {bad.size - 1} more files of that split)" if bad.size > 1 else ""
        return (f"Tiny ImageNet {split} split: {common.display_path(names[first])} is damaged ({reason}){more}; "
                "the file is cut short or its bytes changed (an interrupted or bad copy?): extract or copy the "
                "archive again (check it against its checksum)")

    return find_damaged


def default_validation_examples(num_train: int, num_classes: int = NUM_CLASSES) -> int:
    """10% of the training images, rounded down to a multiple of the classes (at least one per class)."""
    return max(num_classes, (num_train // 10) // num_classes * num_classes)


def load_tiny_imagenet(
    path,
    *,
    batch_size: int = 128,
    eval_batch_size: Optional[int] = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    start_epoch: int = 0,
    end_epoch: int = 1,
    max_train_examples: Optional[int] = None,
    max_eval_examples: Optional[int] = None,
    augment: bool = True,
    validation_examples: int = 0,
) -> TinyImageNetData:
    """Indexes Tiny ImageNet and builds the train/validation/test pipelines.

    Args:
      path: `tiny-imagenet-200.zip` (or the subset zip), the extracted
        `tiny-imagenet-200/` directory, or a directory holding one of them.
      batch_size: training batch size; the remainder of each epoch is dropped.
      eval_batch_size: validation/test batch size; None means `batch_size`.
      image_size: output height and width; images are resized from 64x64 with
        bilinear interpolation (64 keeps them as they are).
      seed: seed of the shuffling and augmentation.
      start_epoch: first epoch of `train` (0-based).
      end_epoch: one past the last epoch of `train`.
      max_train_examples: None, or keep only the first N training examples
        (class-balanced, see the module docstring).
      max_eval_examples: None, or keep only the first N val examples.
      augment: pad-8 random crop and random horizontal flip for training.
      validation_examples: training images held out (from the end of the
        class-interleaved order) as the validation set; None holds out
        `default_validation_examples` of them; 0 validates on the `val`
        split, which is also the test set.

    Returns:
      A `TinyImageNetData`: images float32 `[B, image_size, image_size, 3]`
      normalised with the ImageNet mean and std, labels int32 `[B]`.

    Raises:
      DataNotFoundError: if `path`, or a file the archive needs, is missing.
      ValueError: if an argument is out of range or the archive is malformed.
    """
    batch_size = common.check_positive_int("batch_size", batch_size)
    eval_batch_size = (
        batch_size
        if eval_batch_size is None
        else (common.check_positive_int("eval_batch_size", eval_batch_size))
    )
    image_size = common.check_positive_int("image_size", image_size)
    seed = common.check_seed(seed)
    start_epoch, end_epoch = common.check_epoch_range(start_epoch, end_epoch)
    for name, value in (
        ("max_train_examples", max_train_examples),
        ("max_eval_examples", max_eval_examples),
    ):
        if value is not None:
            common.check_positive_int(name, value)
    if validation_examples is not None and (not common._is_int(validation_examples) or validation_examples < 0):
        raise ValueError(f"validation_examples must be None or an integer >= 0, got {validation_examples!r}.")

    source = _open(path)
    try:
        wnids, train, val = read_index(source)
        held = []
        if validation_examples is None:
            validation_examples = default_validation_examples(len(train), len(wnids))
        if validation_examples:
            if validation_examples >= len(train):
                raise ValueError(
                    f"validation_examples must be smaller than the {len(train)} training images, "
                    f"got {validation_examples}.")
            train, held = train[: len(train) - validation_examples], train[len(train) - validation_examples:]
        num_train = common.check_max_examples("max_train_examples", max_train_examples, len(train))
        num_val = common.check_max_examples("max_eval_examples", max_eval_examples, len(val))
        steps_per_epoch = common.check_steps(batch_size, num_train)
        train, val = train[:num_train], val[:num_val]
        train_encoded, train_is_path = source.encoded([rel for rel, _ in train])
        val_encoded, val_is_path = source.encoded([rel for rel, _ in val])
        splits = {"train": (train_encoded, train_is_path, [source.describe(rel) for rel, _ in train]),
                  "test": (val_encoded, val_is_path, [source.describe(rel) for rel, _ in val])}
        splits["validation"] = splits["test"]
        if held:
            held_encoded, held_is_path = source.encoded([rel for rel, _ in held])
            splits["validation"] = (held_encoded, held_is_path, [source.describe(rel) for rel, _ in held])
    finally:
        source.close()
    train_labels = tf.constant([label for _, label in train], tf.int32)
    val_labels = tf.constant([label for _, label in val], tf.int32)

    train_epochs = common.train_epochs_fn(
        _example_fn(train_encoded, train_is_path, train_labels, image_size, augment), num_examples=num_train, batch_size=batch_size, seed=seed, augment=augment
    )

    test = common.make_eval_dataset(
        _example_fn(val_encoded, val_is_path, val_labels, image_size, False),
        num_examples=num_val,
        batch_size=eval_batch_size,
    )
    validation = test
    if held:
        held_labels = tf.constant([label for _, label in held], tf.int32)
        validation = common.make_eval_dataset(
            _example_fn(held_encoded, held_is_path, held_labels, image_size, False),
            num_examples=len(held),
            batch_size=eval_batch_size,
        )

    return TinyImageNetData(
        train=train_epochs(start_epoch, end_epoch),
        validation=validation,
        test=test,
        steps_per_epoch=steps_per_epoch,
        num_train_examples=num_train,
        num_validation_examples=len(held) if held else num_val,
        num_classes=len(wnids),
        image_shape=(image_size, image_size, 3),
        num_test_examples=num_val,
        class_names=tuple(wnids),
        batch_size=batch_size,
        train_epochs=train_epochs,
        find_damaged=_damage_finder(splits),
    )
