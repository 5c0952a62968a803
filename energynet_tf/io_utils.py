"""Atomic file writes: a reader never sees a half-written file."""

import errno
import json
import os
import re
import tempfile


class NoSpaceError(OSError):
    """The device filled up while a file was written; the file was not replaced and no partial file is left.

    Attributes:
        path: the file that could not be written.
        needed: bytes the write needed, or None if unknown.
    """

    def __init__(self, path, needed=None):
        self.path, self.needed = os.fspath(path), needed
        size = f" ({needed:,} bytes needed)" if needed else ""
        super().__init__(errno.ENOSPC, f"no space left on the device writing {self.path}{size}; nothing "
                                       "partial was left there")

    def __str__(self):
        return self.strerror


def is_no_space(error):
    """True if `error` (any exception) says the device is full (ENOSPC, also as wrapped by h5py or zipfile)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_path(error):
    """The file a full-device `error` was writing, or None if it does not say.

    Python's `OSError` has `filename`; TensorFlow's writers (TensorBoard's
    event files, SavedModel) raise `tf.errors.OpError`s whose message is
    `"... <path>; No space left on device"`.
    """
    while error is not None:
        path = getattr(error, "path", None) or getattr(error, "filename", None)
        if path:
            return os.fspath(path)
        match = re.search(r"(\S+); No space left on device", str(error))
        if match:
            return match.group(1)
        error = error.__cause__ or error.__context__
    return None


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file and `os.replace`.

    Args:
        path: destination file.
        text: the content.
    """
    _atomic_write(path, text.encode("utf-8"))


def _atomic_write(path, content):
    """Writes bytes to `path` through a temporary file; `NoSpaceError` if the device is full."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as e:
        if is_no_space(e):
            raise NoSpaceError(path, len(content)) from None
        raise
    try:
        # mkstemp creates the file readable by its owner only; results are for everyone to read.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if is_no_space(e):
            raise NoSpaceError(path, len(content)) from None
        raise


def atomic_write_json(path, obj):
    """Writes `obj` as indented, key-sorted JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_npz(path, arrays):
    """Writes a dict of numpy arrays to `path` (an uncompressed `.npz`) atomically."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _atomic_write(path, buffer.getvalue())


def atomic_save_model(model, path):
    """Saves a Keras model to `path` (a `.keras` file) atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        # Interrupted mid-write (Ctrl-C, SIGTERM) or a full device: leave no partial file behind.
        if os.path.exists(tmp):
            os.remove(tmp)
        if is_no_space(e):
            raise NoSpaceError(path) from None
        raise


class DirectoryInUseError(Exception):
    """Another live process holds the run directory's lock; the message names it."""


class DirectoryLock:
    """One process per run directory: an exclusive `flock` on `directory/.lock`.

    The kernel releases the lock when its process dies (even by SIGKILL), so
    a lock left by a dead process is simply taken over; its file still names
    the dead holder, which `acquire` reports in one line. The file records the
    holder's pid and command line for the error message of a second process.

    Args:
        directory: the run directory (created if missing).
        command: the command line recorded for other processes to report.
        name: the lock file's name in `directory` (an export, whose directory
            appears only at its end, locks `.<name>.lock` beside it).
        holder: what the error message calls the locked thing (default: `directory`).
    """

    def __init__(self, directory, command, name=".lock", holder=None):
        self.path = os.path.join(directory, name)
        self.command = command
        self.holder = holder or directory
        self._file = None

    def acquire(self):
        """Takes the lock.

        Returns:
            None, or a one-line note if the lock of a process that died was taken over.

        Raises:
            DirectoryInUseError: naming the live holder's pid and command.
        """
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip().split("\n", 1)
            f.close()
            pid = holder[0] if holder and holder[0] else "?"
            command = holder[1] if len(holder) > 1 else "?"
            raise DirectoryInUseError(
                f"{self.holder} is in use by process {pid} ({command}); "
                "wait for it to finish or stop it, or use another directory") from None
        f.seek(0)
        previous = f.read().strip().split("\n", 1)
        note = None
        if previous and previous[0] and previous[0] != str(os.getpid()):
            note = (f"note: took over the lock of {self.holder} left by process {previous[0]}, "
                    "which is no longer running")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n{self.command}\n")
        f.flush()
        self._file = f
        return note

    def release(self):
        """Releases the lock and empties its file (an empty file names no holder)."""
        if self._file is not None:
            import fcntl

            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        note = self.acquire()
        if note:
            import sys

            print(note, file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc):
        self.release()
        return False
