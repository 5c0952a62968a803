"""Trainer runs as subprocesses, shared by the tools that train (reproduce, trials, searches).

Each run is a normal trainer run directory: rerunning a tool resumes an
interrupted run from its checkpoints and does not rerun a finished one.
"""

import atexit
import json
import os
import signal
import subprocess
import sys
import threading

from energynet_tf.cli import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Keep TensorFlow's C++ start-up chatter out of the tools' progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TRAINERS = ("cifar", "tiny_imagenet")


def is_finished(model_dir):
    """True if `model_dir` holds a finished run (its `metrics.json`)."""
    return os.path.exists(os.path.join(model_dir, "metrics.json"))


def load_metrics(model_dir):
    """The `metrics.json` of a finished run.

    Raises:
        UsageError: if the run has not finished or the file cannot be read.
    """
    path = os.path.join(model_dir, "metrics.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{model_dir} holds no finished run (no metrics.json)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def free_ports(n):
    """`n` TCP ports of 127.0.0.1 that are free now (for loopback clusters: workers, keras-tuner's oracle)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def trainer_command(trainer, trainer_flags):
    """The command line that runs `trainers.<trainer>` with `trainer_flags`."""
    if trainer not in TRAINERS:
        raise UsageError(f"trainer must be one of {', '.join(TRAINERS)}; received: {trainer!r}")
    return [sys.executable, "-m", f"trainers.{trainer}", *trainer_flags]


def _env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def check_trainer_flags(trainer, trainer_flags):
    """Runs the trainer with `--check_only`: flags, run directory and data are checked, nothing is written.

    Raises:
        UsageError: with the trainer's own one-line error.
    """
    result = subprocess.run(trainer_command(trainer, [*trainer_flags, "--check_only"]), cwd=REPO, env=_env(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
        message = lines[-1][len("error: "):] if lines else (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UsageError(f"trainer flags rejected: {message}")


def run_trainer(name, model_dir, trainer_flags, log, trainer="cifar", echo=True):
    """Runs (or resumes) one trainer run in `model_dir`; returns its metrics.

    Args:
        name: label of the run in the progress output.
        model_dir: the run directory (`--model_dir`).
        trainer_flags: the trainer's other flags.
        log: file that receives the trainer's whole output (appended).
        trainer: `cifar` or `tiny_imagenet`.
        echo: also print the trainer's output, each line prefixed with `name`.

    Returns:
        The run's `metrics.json` as a dict.

    Raises:
        UsageError: if the trainer failed (its output is in `log`).
    """
    if is_finished(model_dir):
        print(f"[{name}] finished earlier ({os.path.join(model_dir, 'metrics.json')})", flush=True)
        return load_metrics(model_dir)
    command = trainer_command(trainer, [f"--model_dir={model_dir}", *trainer_flags])
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a") as log_file:
        # The trainer has its own session: a Ctrl-C in the terminal reaches
        # this tool only, which then sends the trainer exactly one SIGTERM. (In
        # the tool's process group the trainer got the Ctrl-C and then this
        # SIGTERM: a second signal, which stops at once, before the current
        # step is saved.)
        process, pending = _spawn_deferring_interrupts(
            command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        try:
            for signum in pending:
                # An interrupt that came while the trainer was starting, raised here, where it stops the trainer.
                signal.raise_signal(signum)
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if echo and not _is_runtime_chatter(line):
                    print(f"  {name}: {line}", end="", flush=True)
            status = process.wait()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the trainer saves its current step
            # and exits (its one line goes to the log); a rerun resumes there.
            # A second interrupt meanwhile kills it (its newest checkpoint on
            # disk is whole: every write is atomic).
            try:
                process.terminate()
                for line in process.stdout:
                    log_file.write(line)
                process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
            raise
    if status != 0:
        line = last_error_line(log)
        raise UsageError(f"the {name} run failed (exit status {status})" + (f": {line}" if line else "")
                         + f"; its output is in {log}", exit_status=status if status in (3, 4) else 2)
    return load_metrics(model_dir)


def last_error_line(log):
    """The trainer's own one-line `error: ...` report at the end of `log`, without the prefix (None if none)."""
    try:
        with open(log, errors="replace") as f:
            lines = f.read().splitlines()[-200:]
    except OSError:
        return None
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None


def _is_runtime_chatter(line):
    # TensorFlow's C++ start-up lines; everything of ours is kept.
    return line.startswith(("WARNING: All log messages", "I0000", "W0000", "To enable the following"))


def git_commit():
    """The checkout's commit, marked if the working tree has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _spawn_deferring_interrupts(command, **popen_args):
    """Starts `command` with Ctrl-C and SIGTERM held until the child exists; returns it and the held signals.

    An interrupt raised inside `Popen` (it waits there for the child's exec) would leave a trainer running in its
    own session with nobody to stop it, holding its run directory's lock. The caller raises the held signals
    again once it can stop the child. Outside the main thread (where handlers cannot be set) nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        return subprocess.Popen(command, **popen_args), []
    pending = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: pending.append(signum)) for signum in watched}
    try:
        process = subprocess.Popen(command, **popen_args)
    except BaseException:
        _restore(previous)
        for signum in pending:  # no child to stop: the interrupt is not lost
            signal.raise_signal(signum)
        raise
    _restore(previous)
    return process, pending


def _restore(handlers):
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def exit_on_sigterm(signum, frame):
    """SIGTERM handler for tools: unwinds like Ctrl-C, so a running trainer is stopped too."""
    del frame
    sys.exit(128 + signum)


def evaluate_on_test(model_dir):
    """Evaluates a finished run's `model.keras` on its dataset's test split, once; cached in `test.json`.

    Searches train with `--noevaluate_test` and call this only for the runs
    they report (a search never selects on the test set).

    Returns:
        The `test_*` and savings numbers (`training.evaluation_metrics`).

    Raises:
        UsageError: if the run is not a finished CIFAR-10 run.
    """
    path = os.path.join(model_dir, "test.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{model_dir}: cannot read config.json ({e})") from None
    if config.get("dataset") != "cifar10":
        raise UsageError(f"{model_dir}: test evaluation here supports CIFAR-10 runs; this is {config.get('dataset')!r}")
    if not os.path.exists(os.path.join(model_dir, "model.keras")):
        raise UsageError(f"{model_dir} has no model.keras: the run has not finished")
    import keras

    import energynet_tf  # noqa: F401  (registers the classes)
    from energynet_tf import io_utils
    from energynet_tf import training
    from energynet_tf.data import cifar

    data = cifar.load_cifar10(config["data_dir"], batch_size=config["batch_size"],
                              eval_batch_size=config["eval_batch_size"], seed=config["seed"],
                              validation_examples=config["validation_examples"],
                              max_train_examples=config["max_train_examples"])
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    training.compile_model(model, training.make_optimizer())
    result = training.evaluation_metrics(model, data.test)
    result["baseline_energy"] = model.energy_table.total_energy  # E_total of this network, gates included
    io_utils.atomic_write_json(path, result)
    return result


def savings_against(run_metrics, reference_energy):
    """Energy savings of a run against another network's whole energy (e.g. the deepest static baseline).

    `energy_savings` of a run is relative to its own `E_total` (which for
    EnergyNet includes its gates); this puts runs of different networks on one
    axis: `1 - (1 - energy_savings) * E_total / reference_energy`.
    """
    return 1.0 - (1.0 - run_metrics["energy_savings"]) * run_metrics["baseline_energy"] / reference_energy


def lock_directory(directory, name=".lock", holder=None):
    """Holds `directory` for this process until it exits or the lock is released (`io_utils.DirectoryLock`).

    Raises:
        UsageError: if a live process holds it (naming its pid and command).
    """
    from energynet_tf import io_utils

    lock = io_utils.DirectoryLock(directory, " ".join(sys.argv), name=name, holder=holder)
    try:
        note = lock.acquire()
    except io_utils.DirectoryInUseError as e:
        raise UsageError(str(e)) from None
    if note:
        print(note, file=sys.stderr, flush=True)
    # Released at any exit Python sees (success, an error, Ctrl-C, SIGTERM),
    # so the file stops naming this process; only a process that really died
    # (SIGKILL) leaves its name for the next run's take-over note.
    atexit.register(lock.release)
    return lock


def previous_config(state_path):
    """The configuration a tool recorded in its `--out` earlier, or None for a new `--out`."""
    if not os.path.exists(state_path):
        return None
    with open(state_path) as f:
        return json.load(f)


def claim_out(out, state_path, config):
    """Creates `out`, holds it for this process and records `config` in `state_path`."""
    from energynet_tf import io_utils

    os.makedirs(out, exist_ok=True)
    lock_directory(out)
    io_utils.atomic_write_json(state_path, config)
