"""Resumable training and evaluation of an EnergyNet (used by the trainers)."""

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from energynet_tf import callbacks as callbacks_lib
from energynet_tf import io_utils
from energynet_tf import metrics as metrics_lib


class TrainingError(RuntimeError):
    """Training could not go on (for example a NaN loss); the message says why."""


class Interrupted(Exception):
    """Training was stopped by a signal; the message says where it stood and what was kept.

    Attributes:
        exit_status: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


class Position(keras.callbacks.Callback):
    """Remembers the epoch and step training has reached (for the message of an interruption)."""

    def __init__(self):
        super().__init__()
        self.epoch = None
        self.step = 0
        self.batch_offset = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, self.batch_offset

    def on_train_batch_end(self, batch, logs=None):
        self.step = batch + 1 + self.batch_offset

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0


class RunCheckpoints:
    """Epoch checkpoints of a run: weights and optimizer (`.keras`) plus run state (JSON).

    Each epoch writes `epoch-NNNN.keras` (model and optimizer variables, with
    Keras' own tracking: `tf.train.Checkpoint` misses layers held in lists)
    and `epoch-NNNN.json` (epoch, schedule state, wall time, history), each
    through a temporary file and a rename, then points `latest.json` at them,
    also atomically. A kill at any moment leaves the previous checkpoint
    whole. Only the last `keep` checkpoints are kept, plus those of the
    `pinned` epochs (for example the epoch another run starts from).

    Args:
        directory: the checkpoint directory.
        keep: how many checkpoints to keep.
        pinned: epochs whose checkpoints are never removed.
    """

    def __init__(self, directory, keep=2, pinned=()):
        self.directory = directory
        self.keep = keep
        self.pinned = frozenset(int(e) for e in pinned)

    @property
    def _pointer(self):
        return os.path.join(self.directory, "latest.json")

    def latest(self):
        """Returns `(weights_path, state)` of the newest intact checkpoint, or None.

        `latest.json` names the newest checkpoint; if it is missing or
        damaged, the epoch files are searched. A checkpoint whose `.keras`
        archive fails its CRC check or whose state JSON cannot be read is
        reported in one line on stderr and renamed `*.damaged` (kept for the
        user, ignored from then on), and the next older one is tried.

        Raises:
            TrainingError: if checkpoint files exist but none is intact (names them).
        """
        if not os.path.isdir(self.directory):
            return None
        candidates = self._epochs()
        pointed = None
        try:
            with open(self._pointer) as f:
                pointer = json.load(f)
            pointed = (int(pointer["epoch"]), int(pointer.get("step", 0)))
        except FileNotFoundError:
            if candidates:
                _warn(f"{self._pointer} is missing; looking at the checkpoint files instead")
        except (OSError, ValueError, KeyError, TypeError) as e:
            _warn(f"{self._pointer} is damaged ({type(e).__name__}: {e}); looking at the checkpoint files instead")
        if pointed is not None:
            # A kill between a checkpoint's two files and the pointer's update
            # leaves a newer one without its state: not damage, just unfinished.
            candidates = [c for c in candidates if c <= pointed or os.path.exists(
                os.path.join(self.directory, _checkpoint_name(*c) + ".json"))]
        tried = []
        for epoch, step in sorted(candidates, reverse=True):
            name = _checkpoint_name(epoch, step)
            weights = os.path.join(self.directory, name + ".keras")
            state_path = os.path.join(self.directory, name + ".json")
            problem = _check_checkpoint(weights, state_path, epoch, step)
            if problem is None:
                with open(state_path) as f:
                    return weights, json.load(f)
            tried.append(name)
            _warn(f"checkpoint {name} in {self.directory} is damaged ({problem}); renamed *.damaged, "
                  "trying the one before")
            for path in (weights, state_path):
                if os.path.exists(path):
                    os.replace(path, path + ".damaged")
        if tried:
            raise TrainingError(
                f"no intact checkpoint in {self.directory}: {', '.join(tried)} are damaged (kept as *.damaged); "
                "start a new --model_dir or restore the files")
        return None

    def _epochs(self):
        """Positions `(epochs completed, steps into the next)` that have a state file or a weights file."""
        positions = set()
        for f in os.listdir(self.directory):
            if f.startswith("epoch-") and (f.endswith(".json") or f.endswith(".keras")):
                position = _parse_name(f.rsplit(".", 1)[0])
                if position is not None:
                    positions.add(position)
        return sorted(positions)

    def save(self, model, epoch, state, step=0):
        """Writes the checkpoint of `epoch` epochs completed plus `step` steps into the next."""
        os.makedirs(self.directory, exist_ok=True)
        name = _checkpoint_name(epoch, step)
        io_utils.atomic_save_model(model, os.path.join(self.directory, name + ".keras"))
        io_utils.atomic_write_json(os.path.join(self.directory, name + ".json"), state)
        io_utils.atomic_write_json(self._pointer, {"epoch": epoch, "step": step, "weights": name + ".keras",
                                                   "state": name + ".json"})
        self._prune()

    def _prune(self):
        positions = sorted(p for p in (_parse_name(f[:-5]) for f in os.listdir(self.directory)
                                       if f.startswith("epoch-") and f.endswith(".json")) if p is not None)
        for epoch, step in positions[: -self.keep]:
            if step == 0 and epoch in self.pinned:
                continue
            for suffix in (".keras", ".json"):
                path = os.path.join(self.directory, _checkpoint_name(epoch, step) + suffix)
                if os.path.exists(path):
                    os.remove(path)


def _checkpoint_name(epoch, step=0):
    return f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step else "")


def _parse_name(name):
    """`(epoch, step)` of a checkpoint's base name, or None."""
    parts = name.split("-")
    try:
        if len(parts) == 2 and parts[0] == "epoch":
            return int(parts[1]), 0
        if len(parts) == 4 and parts[0] == "epoch" and parts[2] == "step":
            return int(parts[1]), int(parts[3])
    except ValueError:
        return None
    return None


def _warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _check_checkpoint(weights, state_path, epoch, step=0):
    """None if the checkpoint pair of `(epoch, step)` is intact, else what is wrong with it."""
    import zipfile

    try:
        with open(state_path) as f:
            state = json.load(f)
        if (int(state["epoch"]) != epoch or int(state.get("step", 0)) != step or "schedule_state" not in state
                or "history" not in state):
            return f"{os.path.basename(state_path)} does not describe epoch {epoch}, step {step}"
    except FileNotFoundError:
        return f"{os.path.basename(state_path)} is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{os.path.basename(state_path)}: {type(e).__name__}: {e}"
    try:
        with zipfile.ZipFile(weights) as archive:
            bad = archive.testzip()
            if bad is not None:
                return f"{os.path.basename(weights)}: {bad} fails its CRC check"
            if "model.weights.h5" not in archive.namelist():
                return f"{os.path.basename(weights)} holds no weights"
    except FileNotFoundError:
        return f"{os.path.basename(weights)} is missing"
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        return f"{os.path.basename(weights)}: {type(e).__name__}: {e}"
    return None


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a `RunCheckpoints` checkpoint after each epoch whose loss is finite, and within epochs.

    Within an epoch it saves every `every_steps` steps and when a stop was
    requested (`StopRequest`: Ctrl-C or SIGTERM), then raises
    `KeyboardInterrupt` so that the interrupted epoch never reaches its end
    (no validation, no epoch checkpoint of a partial epoch). A step
    checkpoint holds the running values of the epoch's metrics, so the
    resumed epoch reports what an uninterrupted one would.

    Args:
        checkpoints: a `RunCheckpoints`.
        schedule_callback: the phase schedule (its state is saved).
        guard: the `NonFiniteLossGuard` (nothing is saved once it tripped).
        clock: returns the run's wall seconds.
        history: the list of epoch logs (appended to).
        steps_per_epoch: steps per epoch.
        every_steps: save within epochs every this many steps (0: never).
        stop_request: a `StopRequest`, or None.
    """

    def __init__(self, checkpoints, schedule_callback, guard, clock, history, steps_per_epoch=None,
                 every_steps=0, stop_request=None):
        super().__init__()
        self.checkpoints = checkpoints
        self.schedule_callback = schedule_callback
        self.guard = guard
        self.clock = clock
        self.history = history
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.stop_request = stop_request
        self.batch_offset = 0  # steps already done in the epoch a run resumed inside
        self.restore_metrics = None  # metric values to restore when that epoch begins
        self._epoch = 0
        self.saved_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.restore_metrics is not None:
            # The metrics are running sums that fit() reset when the resumed
            # epoch began (and builds lazily, so not before its first step):
            # adding the saved sums gives, bit for bit, the uninterrupted
            # epoch's (float addition is commutative).
            for variable in self.model.metrics_variables:
                saved = self.restore_metrics.get(variable.path)
                if saved is not None:
                    variable.assign(np.asarray(saved, dtype=variable.dtype) + np.asarray(variable))
            self.restore_metrics = None
        if self.guard.tripped:
            return
        step = batch + 1 + self.batch_offset
        stop = self.stop_request is not None and self.stop_request.signum is not None
        due = self.every_steps and step % self.every_steps == 0
        if (stop or due) and self.steps_per_epoch and step < self.steps_per_epoch:
            state = {
                "epoch": self._epoch,
                "step": step,
                "schedule_state": self.schedule_callback.get_state(),
                "wall_seconds": self.clock(),
                "history": self.history,
                "metrics_values": {v.path: np.asarray(v).tolist() for v in self.model.metrics_variables},
            }
            self.checkpoints.save(self.model, self._epoch, state, step=step)
            self.saved_step = (self._epoch, step)
        if stop:
            raise self.stop_request.interrupt()

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        if self.guard.tripped:
            return
        self.history.append(_jsonable(logs))
        state = {
            "epoch": epoch + 1,
            "schedule_state": self.schedule_callback.get_state(),
            "wall_seconds": self.clock(),
            "history": self.history,
        }
        self.checkpoints.save(self.model, epoch + 1, state)


class StopRequest:
    """Turns the first Ctrl-C or SIGTERM into a request that training honours at the next step.

    The first signal is remembered (`signum`); `EpochCheckpoint` then saves
    the current step and stops. A second signal stops at once (the last
    checkpoint on disk is whole: every write is atomic). Handlers are
    installed only in the main thread and restored by `restore()`.
    """

    def __init__(self):
        import signal
        import threading

        self.signum = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:
            raise self.interrupt(signum)
        self.signum = signum

    def interrupt(self, signum=None):
        """The `KeyboardInterrupt` that carries the exit status of the signal."""
        error = KeyboardInterrupt()
        error.exit_status = 128 + int(signum or self.signum)
        return error

    def restore(self):
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class ProgressLogger(keras.callbacks.Callback):
    """Prints compact progress: step rate, loss, accuracy, energy savings."""

    def __init__(self, steps_per_epoch, batch_size, every=50, stream=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.every = every
        self.stream = stream or sys.stdout
        self.batch_offset = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1  # steps of this process (the rate's numerator)
        batch += self.batch_offset
        if (batch + 1) % self.every == 0 or batch + 1 == self.steps_per_epoch:
            logs = logs or {}
            rate = done * self.batch_size / max(time.time() - self._start, 1e-9)
            print(
                f"epoch {self._epoch + 1} step {batch + 1}/{self.steps_per_epoch} "
                f"{rate:.0f} img/s loss {float(logs.get('loss', float('nan'))):.4f} "
                f"acc {float(logs.get('accuracy', float('nan'))):.4f} "
                f"energy_savings {float(logs.get('energy_savings', float('nan'))):.4f}",
                file=self.stream, flush=True,
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keys = ("loss", "accuracy", "energy_savings", "val_loss", "val_accuracy",
                "val_energy_savings", "val_block_energy_savings", "alpha", "phase", "lr")
        parts = [f"{k} {float(logs[k]):.4f}" for k in keys if k in logs]
        print(f"epoch {epoch + 1} done in {time.time() - self._start:.0f}s: " + ", ".join(parts),
              file=self.stream, flush=True)
        self.batch_offset = 0


class SkipRatioBoard(keras.callbacks.Callback):
    """Writes per-block skip ratios under `skip_ratio/` in TensorBoard."""

    def __init__(self, log_dir, num_gates):
        super().__init__()
        self.num_gates = num_gates
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "skip_ratios"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        with self.writer.as_default():
            for prefix in ("", "val_"):
                for i in range(self.num_gates):
                    key = prefix + metrics_lib.skip_key(i)
                    if key in logs:
                        tf.summary.scalar(f"{prefix}skip_ratio/block_{i + 1:02d}", float(logs[key]), step=epoch)
        self.writer.flush()


def _jsonable(logs):
    return {k: float(v) for k, v in (logs or {}).items()}


def make_optimizer(momentum=0.9, weight_decay=None, nesterov=True):
    """SGD with Nesterov momentum; the LR is set by the schedule.

    The recipe's weight decay is the model's coupled L2 (`EnergyNet(weight_decay=...)`);
    `weight_decay` here is Keras' decoupled decay (`w -= lr * wd * w`), about
    ten times weaker at momentum 0.9 for the same number, and off by default.
    """
    return keras.optimizers.SGD(
        learning_rate=0.0, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def compile_model(model, optimizer, top5=False):
    """Compiles `model` with cross-entropy on logits and accuracy metrics."""
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if top5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
    )


def evaluation_metrics(model, dataset, top5=False):
    """Evaluates a compiled `EnergyNet` on `dataset`; returns the `test_*` and savings numbers of `metrics.json`."""
    test = model.evaluate(dataset, return_dict=True, verbose=0)
    out = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "test_cross_entropy": float(test["cross_entropy"]),
        "energy_savings": float(test["energy_savings"]),
        "block_energy_savings": float(test["block_energy_savings"]),
        "mac_savings": float(test["mac_savings"]),
        "normalised_energy": float(test["energy"]),
        "skip_ratio_per_block": metrics_lib.skip_ratios_from_logs(test, model.num_gates),
    }
    if top5:
        out["test_top5_accuracy"] = float(test["top5_accuracy"])
    return out


def train_and_evaluate(
    model,
    data,
    model_dir,
    schedule,
    batch_size,
    optimizer,
    top5=False,
    verbose=True,
    extra_metrics=None,
    extra_callbacks=(),
    keep_checkpoints=2,
    pinned_epochs=(),
    evaluate_test=True,
    checkpoint_every_steps=0,
):
    """Trains `model` through the alpha phases, resuming from `model_dir`, and evaluates it.

    Args:
        model: an `EnergyNet` (its `baseline` flag selects a one-phase schedule).
        data: a `data.common.ClassificationData` (its `train_epochs(start,
            end)` gives the training stream of any epoch range, so a resumed
            run sees exactly the batches an uninterrupted run would).
        model_dir: where checkpoints, TensorBoard logs, `metrics.json` and
            `model.keras` go; an existing checkpoint there is resumed.
        schedule: a `callbacks.PhaseSchedule` (for a baseline, phase I's epochs
            and learning rate are used and alpha is 0).
        batch_size: training batch size (for progress output).
        optimizer: a Keras optimizer (its learning rate is set per step).
        top5: also report top-5 accuracy.
        verbose: print progress.
        extra_metrics: dict merged into `metrics.json`.
        extra_callbacks: more Keras callbacks.
        keep_checkpoints: how many epoch checkpoints to keep.
        pinned_epochs: epochs whose checkpoints are kept whatever `keep_checkpoints` says.
        evaluate_test: evaluate on `data.test`; without it `metrics.json` holds
            no `test_*` numbers (a search selects on validation only).
        checkpoint_every_steps: also checkpoint within epochs every this many
            steps (0: at epoch ends only); a run resumes at the exact step.

    Returns:
        The dict written to `metrics.json`.

    Raises:
        TrainingError: if the loss became NaN or infinite (the last good
            checkpoint is kept).
        Interrupted: on Ctrl-C or SIGTERM, after saving the current step.
    """
    os.makedirs(model_dir, exist_ok=True)
    compile_model(model, optimizer, top5=top5)
    optimizer.build(model.trainable_variables)
    checkpoints = RunCheckpoints(
        os.path.join(model_dir, "checkpoints"), keep=keep_checkpoints, pinned=pinned_epochs)

    steps_per_epoch = data.steps_per_epoch
    if model.baseline:
        phases = callbacks_lib.ConstantSchedule(
            schedule.phase1_epochs, schedule.lr1, steps_per_epoch,
            warmup_epochs=schedule.warmup_epochs, verbose=verbose)
    else:
        # Tiny ImageNet's claim is top-5: its phases are decided on top-5 accuracy.
        phases = callbacks_lib.AlphaPhases(
            schedule, steps_per_epoch, verbose=verbose,
            monitor="val_top5_accuracy" if top5 else "val_accuracy",
            validation_examples=data.num_validation_examples or None)
    max_epochs = phases.schedule.max_epochs

    start_epoch, start_step = 0, 0
    state = {"wall_seconds": 0.0, "history": []}
    latest = checkpoints.latest()
    if latest is not None:
        weights, state = latest
        model.load_weights(weights)
        start_epoch, start_step = int(state["epoch"]), int(state.get("step", 0))
        phases.set_state(state["schedule_state"])
        if verbose:
            where = f"epoch {start_epoch}" + (f" + {start_step} steps" if start_step else "")
            print(f"Resuming from {weights} ({where}, phase {phases.phase})", flush=True)
    history = list(state["history"])
    previous_wall = float(state["wall_seconds"])
    started = time.time()

    def clock():
        return previous_wall + (time.time() - started)

    guard = callbacks_lib.NonFiniteLossGuard()
    stop = StopRequest()
    saver = EpochCheckpoint(checkpoints, phases, guard, clock, history, steps_per_epoch=steps_per_epoch,
                            every_steps=checkpoint_every_steps, stop_request=stop)
    tensorboard_dir = os.path.join(model_dir, "tensorboard")
    position = Position()
    progress = ProgressLogger(steps_per_epoch, batch_size) if verbose else None
    callbacks = [
        phases,
        guard,
        keras.callbacks.TensorBoard(tensorboard_dir, write_graph=False),
        SkipRatioBoard(tensorboard_dir, model.num_gates),
        position,
    ]
    if progress is not None:
        callbacks.append(progress)
    callbacks.extend(extra_callbacks)
    # Last: a step checkpoint sees the step's logs after every other callback.
    callbacks.append(saver)

    def fit(first, end, skip=0):
        # `skip` steps of epoch `first` were trained before an interruption:
        # the stream skips them and the batch-aware callbacks count from there.
        for callback in (phases, saver, position, progress):
            if callback is not None:
                callback.batch_offset = skip
        stream = data.train_epochs(first, end)
        model.fit(
            stream.skip(skip) if skip else stream,
            epochs=end,
            initial_epoch=first,
            steps_per_epoch=steps_per_epoch - skip,
            validation_data=data.validation,
            callbacks=callbacks,
            shuffle=False,  # the stream is already shuffled per epoch, reproducibly
            verbose=0,
        )

    resumed_epoch = start_epoch
    try:
        if not phases.finished and start_epoch < max_epochs:
            if start_step:
                saver.restore_metrics = state.get("metrics_values")
                fit(start_epoch, start_epoch + 1, skip=start_step)
                start_epoch += 1
            if not phases.finished and not guard.tripped and start_epoch < max_epochs:
                fit(start_epoch, max_epochs)
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM: the current step was saved (StopRequest); a
        # second signal stops at once, and the newest checkpoint is whole.
        status = getattr(e, "exit_status", 130)
        kept = checkpoints.latest()
        where = (f"in epoch {position.epoch + 1} at step {position.step}/{steps_per_epoch}"
                 if position.epoch is not None else "before the first step")
        kept_text = "no checkpoint yet (an interrupted first epoch starts again)"
        if kept:
            kept_state = kept[1]
            at = f"epoch {kept_state['epoch']}" + (f" + {kept_state['step']} steps" if kept_state.get("step") else "")
            kept_text = f"kept the checkpoint at {at} ({kept[0]})"
        raise Interrupted(
            f"interrupted ({'SIGTERM' if status == 143 else 'SIGINT'}) {where}; {kept_text}; "
            "rerun the same command to resume", status) from None
    finally:
        stop.restore()
    if guard.tripped:
        latest = checkpoints.latest()
        raise TrainingError(
            f"the loss became NaN or infinite in epoch {guard.bad_epoch + 1} "
            f"(batch {guard.bad_batch + 1}); training stopped and the last good checkpoint "
            f"({latest[0] if latest else 'none'}) was kept. Lower the learning rate or alpha."
        )
    epochs_run = resumed_epoch + len(history) - len(state["history"])
    table = model.energy_table
    metrics = {
        "baseline_energy": table.total_energy,
        "phases": phases.phases,
        "phase3_reason": phases.phase3_reason,
        "epochs": epochs_run,
        "wall_seconds": clock(),
        "energy_table": table.as_dict(),
        "history": history,
        "baseline": bool(model.baseline),
    }
    if evaluate_test:
        metrics.update(evaluation_metrics(model, data.test, top5=top5))
    if history:
        last = history[-1]
        for key in ("val_accuracy", "val_energy_savings", "val_block_energy_savings", "val_mac_savings",
                    "val_top5_accuracy"):
            if key in last:
                metrics["final_" + key] = last[key]
    metrics.update(extra_metrics or {})
    io_utils.atomic_save_model(model, os.path.join(model_dir, "model.keras"))
    io_utils.atomic_write_json(os.path.join(model_dir, "metrics.json"), metrics)
    return metrics
