"""Tests of energynet_tf/io_utils.py: atomic writes and the one-process-per-directory lock."""

import json
import os
import subprocess
import sys

import pytest

from energynet_tf import io_utils

HOLD = """
import sys, time
from energynet_tf import io_utils
lock = io_utils.DirectoryLock(sys.argv[1], "holder command")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_atomic_write_json_round_trips(tmp_path):
    path = tmp_path / "a" / "b.json"
    io_utils.atomic_write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(io_utils.DirectoryInUseError) as info:
            io_utils.DirectoryLock(str(tmp_path), "second").acquire()
        message = str(info.value)
        assert f"process {holder.pid} (holder command)" in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: it is taken over, with a note naming it.
    lock = io_utils.DirectoryLock(str(tmp_path), "third")
    note = lock.acquire()
    assert note is not None and f"left by process {holder.pid}" in note
    lock.release()
    # A cleanly released lock names no holder: the next one takes it silently.
    again = io_utils.DirectoryLock(str(tmp_path), "fourth")
    assert again.acquire() is None
    again.release()


def _full_device(monkeypatch, after_bytes=0):
    """Makes every os.fsync fail with ENOSPC, as a full device does at the flush."""
    import errno

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_device_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    io_utils.atomic_write_json(str(path), {"a": 1})
    _full_device(monkeypatch)
    with pytest.raises(io_utils.NoSpaceError) as info:
        io_utils.atomic_write_json(str(path), {"a": 2})
    assert str(path) in str(info.value) and "bytes needed" in str(info.value)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]
    with pytest.raises(io_utils.NoSpaceError):
        io_utils.atomic_write_npz(str(tmp_path / "p.npz"), {"x": __import__("numpy").zeros(3)})
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_no_space_is_recognised_through_wrapping_errors():
    import errno

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("Unable to synchronously create file") from inner
    except RuntimeError as e:
        assert io_utils.is_no_space(e)
    assert io_utils.is_no_space(ValueError("write failed: [Errno 28] No space left on device"))
    assert not io_utils.is_no_space(OSError(errno.EACCES, "Permission denied"))


def test_no_space_path_names_the_file_of_python_and_tensorflow_errors(tmp_path):
    import errno

    import tensorflow as tf

    assert io_utils.no_space_path(io_utils.NoSpaceError(tmp_path / "a.json")) == str(tmp_path / "a.json")
    assert io_utils.no_space_path(OSError(errno.ENOSPC, "No space left on device", "/x/b.keras")) == "/x/b.keras"
    wrapped = tf.errors.ResourceExhaustedError(None, None, "{{function_node x}} /d/events.out.tfevents.1; No space left on device")
    assert io_utils.no_space_path(wrapped) == "/d/events.out.tfevents.1"
    try:
        try:
            raise wrapped
        except tf.errors.ResourceExhaustedError as inner:
            raise RuntimeError("writing failed") from inner
    except RuntimeError as outer:
        assert io_utils.is_no_space(outer) and io_utils.no_space_path(outer) == "/d/events.out.tfevents.1"
    assert io_utils.no_space_path(OSError(errno.ENOSPC, "No space left on device")) is None


def _fill(directory):
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
        try:
            f.close()
        except OSError:
            pass


def test_tensorboard_on_a_full_device_raises_an_error_naming_its_event_file(small_disk):
    import keras
    import numpy as np

    _fill(small_disk)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    with pytest.raises(Exception) as info:
        model.fit(np.zeros((8, 4)), np.zeros((8, 2)), epochs=1, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(str(small_disk / "tensorboard"))])
    # What the trainers' and tools' one line is made from (trainers.common, energynet_tf.cli).
    assert io_utils.is_no_space(info.value)
    assert io_utils.no_space_path(info.value).startswith(str(small_disk / "tensorboard" / "train" / "events.out"))
