"""Tiny genuine tfds datasets for tests and smoke runs (no download, no network)."""

import os
from unittest import mock

import numpy as np

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _write_batch(path, ids, rng, black=False):
    """Writes CIFAR binary records: a label byte, then 3072 CHW pixel bytes."""
    images = rng.integers(0, 256, (len(ids), 3, 32, 32), dtype=np.uint8)
    if black:
        images[:] = 0
    else:
        # The example's id sits in pixel (0, 0), channels 0 and 1, so tests can
        # tell examples apart after the pipeline.
        images[:, 0, 0, 0] = ids % 256
        images[:, 1, 0, 0] = ids // 256
    labels = (ids % 10).astype(np.uint8)
    np.concatenate([labels[:, None], images.reshape(len(ids), -1)], 1).tofile(path)


def make_fake_cifar10(root, train_per_file=40, num_test=50, seed=0, black=False):
    """Prepares a tiny `cifar10` 3.0.2 with tfds' own builder on fake CIFAR files.

    The real builder runs on fake binary batches (its download is patched to
    return them), so the prepared files have exactly the real data's format.

    Args:
        root: an empty directory to work in.
        train_per_file: examples in each of the five train batch files.
        num_test: test examples (ids start at 1000, so they differ from train ids).
        seed: seed of the random pixels.
        black: every image all zeros (labels still vary): every example is the
            same after augmentation (a zero-padded crop of black is black), so
            per-replica batch-norm statistics equal the global batch's.

    Returns:
        The tfds data directory to pass as `data_dir`.
    """
    import tensorflow_datasets as tfds

    raw = os.path.join(root, "raw", "cifar-10-batches-bin")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(5):
        ids = np.arange(train_per_file * i, train_per_file * (i + 1))
        _write_batch(os.path.join(raw, f"data_batch_{i + 1}.bin"), ids, rng, black)
    _write_batch(os.path.join(raw, "test_batch.bin"), np.arange(1000, 1000 + num_test), rng, black)
    with open(os.path.join(raw, "batches.meta.txt"), "w") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    out = os.path.join(root, "tfds")
    builder = tfds.builder("cifar10:3.0.2", data_dir=out)
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=os.path.join(root, "raw")
    ):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
        )
    return out
