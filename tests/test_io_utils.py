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
