"""Command-line plumbing shared by trainers/ and tools/: one-line errors, exit status 2."""

import sys

from absl import flags

# Exit status of a program stopped by a full device (docs: docs/experiments/reliability.md, "Bad input").
NO_SPACE_STATUS = 4
from absl import logging


class UsageError(Exception):
    """A bad flag, path or file: reported as one `error: ...` line, exit status 2 (or `exit_status`)."""

    def __init__(self, message, exit_status=2):
        super().__init__(message)
        self.exit_status = exit_status


def fail(message, status=2):
    """Prints `error: message` on stderr and exits with `status`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def parse_flags_or_exit(argv):
    """absl flags parser for `app.run` that reports bad flags in one line, exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(e)


def reject_arguments(argv):
    """Raises `UsageError` for positional arguments (a mistyped flag lands there)."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value")


def _raise_interrupt(signum, frame):
    del frame
    error = KeyboardInterrupt()
    error.exit_status = 128 + signum
    raise error


def run_tool(run, argv):
    """Runs `run()` as a tool's main: `UsageError` becomes one line and exit status 2.

    Ctrl-C and SIGTERM become one line and exit status 130 and 143; a tool's
    files are written atomically (and its trainers keep their checkpoints),
    so nothing partial is left and a rerun resumes.
    """
    import signal

    logging.set_verbosity(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # A tool started in the background by a non-interactive shell (`cmd &`,
    # nohup) inherits SIGINT ignored, and `kill -INT` would silently do
    # nothing; the tool promises that SIGINT stops it cleanly, so it says so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        reject_arguments(argv)
        run()
    except UsageError as e:
        fail(e, e.exit_status)
    except KeyboardInterrupt as e:
        status = getattr(e, "exit_status", 130)
        fail(f"interrupted ({'SIGTERM' if status == 143 else 'SIGINT'}); nothing partial was written; "
             "rerun the same command to resume", status)
    except Exception as e:  # noqa: BLE001 - only a full device is turned into one line here
        from energynet_tf import io_utils

        if not io_utils.is_no_space(e):
            raise
        # A tool's own output (results, figures, an export) on a full device: its
        # files are written atomically, and the trainers' runs keep their checkpoints.
        path = io_utils.no_space_path(e)
        what = e if isinstance(e, io_utils.NoSpaceError) else (
            f"no space left on the device{' writing ' + path if path else ''}")
        fail(f"{what}; free space and "
             "rerun the same command to resume (finished runs are not rerun)", NO_SPACE_STATUS)


# CPU features that compute bfloat16 natively; without them TensorFlow emulates it on the CPU.
NATIVE_BFLOAT16 = ("avx512_bf16", "amx_bf16")


def cpu_flags(path=None):
    """The CPU's feature flags: the first `flags` line of /proc/cpuinfo (an empty set where unreadable).

    Args:
        path: the cpuinfo file (default: `$ENERGYNET_TF_CPUINFO`, else /proc/cpuinfo; tests stub it).
    """
    import os

    path = path or os.environ.get("ENERGYNET_TF_CPUINFO") or "/proc/cpuinfo"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_description(path=None):
    """The CPU a wall time was measured on, in one line: model, logical CPUs and its widest vector unit.

    E.g. "AMD EPYC, 2 CPUs, avx2 (no avx512)". Wall times on 2-core AVX-512 and
    AVX2-only hosts differ by about 2.4x, so every recorded one carries this.

    Args:
        path: the cpuinfo file (default: `$ENERGYNET_TF_CPUINFO`, else /proc/cpuinfo; tests stub it).

    Returns:
        The description, or "unknown CPU" where the file cannot be read.
    """
    import os

    path = path or os.environ.get("ENERGYNET_TF_CPUINFO") or "/proc/cpuinfo"
    model, processors = None, 0
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "processor":
                    processors += 1
                elif key.strip() == "model name" and model is None:
                    model = value.strip()
    except OSError:
        return "unknown CPU"
    flags = cpu_flags(path)
    if "avx512f" in flags:
        vector = "avx512" + (", avx512_bf16" if "avx512_bf16" in flags else "")
    elif "avx2" in flags:
        vector = "avx2 (no avx512)"
    else:
        vector = "no avx2"
    return f"{model or 'unknown model'}, {processors or '?'} CPUs, {vector}"


def precision_warning(precision, flags=None):
    """One line if `precision` is a slowdown on this CPU (bfloat16 without native support), else None.

    Args:
        precision: the `--mixed_precision` value.
        flags: the CPU's feature flags (default: `cpu_flags()`).
    """
    if precision != "bfloat16":
        return None
    flags = cpu_flags() if flags is None else set(flags)
    if not flags or flags & set(NATIVE_BFLOAT16):
        return None  # native bfloat16, or a CPU whose features cannot be read (no claim either way)
    return ("--mixed_precision=bfloat16 on a CPU without native bfloat16 (no avx512_bf16 or amx_bf16) runs "
            "emulated and is a slowdown, not a speed-up (ResNet-38 on an AVX2-only host: 9.8 img/s against 62-75 "
            "in float32); it helps on CPUs with avx512_bf16 or AMX (about 1.18x) and on GPUs")


def warn_precision(precision):
    """Prints `precision_warning` on stderr as one `warning: ...` line, if there is one."""
    message = precision_warning(precision)
    if message:
        print(f"warning: {message}", file=sys.stderr, flush=True)

