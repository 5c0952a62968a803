"""Resumable training and evaluation of an EnergyNet (used by the trainers)."""

import json
import os
import sys
import time

import keras
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

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step = batch + 1


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
                pointed = int(json.load(f)["epoch"])
        except FileNotFoundError:
            if candidates:
                _warn(f"{self._pointer} is missing; looking at the checkpoint files instead")
        except (OSError, ValueError, KeyError, TypeError) as e:
            _warn(f"{self._pointer} is damaged ({type(e).__name__}: {e}); looking at the checkpoint files instead")
        if pointed is not None:
            # A kill between a checkpoint's two files and the pointer's update
            # leaves a newer epoch without its state: not damage, just unfinished.
            candidates = [e for e in candidates if e <= pointed or os.path.exists(
                os.path.join(self.directory, f"epoch-{e:04d}.json"))]
        tried = []
        for epoch in sorted(candidates, reverse=True):
            name = f"epoch-{epoch:04d}"
            weights = os.path.join(self.directory, name + ".keras")
            state_path = os.path.join(self.directory, name + ".json")
            problem = _check_checkpoint(weights, state_path, epoch)
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
        """Epochs that have a state file or a weights file."""
        epochs = set()
        for f in os.listdir(self.directory):
            if f.startswith("epoch-") and (f.endswith(".json") or f.endswith(".keras")) and f[6:10].isdigit():
                epochs.add(int(f[6:10]))
        return sorted(epochs)

    def save(self, model, epoch, state):
        """Writes the checkpoint of `epoch` (1-based: epochs completed)."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epoch:04d}"
        io_utils.atomic_save_model(model, os.path.join(self.directory, name + ".keras"))
        io_utils.atomic_write_json(os.path.join(self.directory, name + ".json"), state)
        io_utils.atomic_write_json(self._pointer, {"epoch": epoch, "weights": name + ".keras", "state": name + ".json"})
        self._prune(epoch)

    def _prune(self, epoch):
        epochs = sorted(
            int(f[6:10]) for f in os.listdir(self.directory) if f.startswith("epoch-") and f.endswith(".json")
        )
        for old in epochs[: -self.keep]:
            if old in self.pinned:
                continue
            for suffix in (".keras", ".json"):
                path = os.path.join(self.directory, f"epoch-{old:04d}{suffix}")
                if os.path.exists(path):
                    os.remove(path)


def _warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _check_checkpoint(weights, state_path, epoch):
    """None if the checkpoint pair of `epoch` is intact, else what is wrong with it."""
    import zipfile

    try:
        with open(state_path) as f:
            state = json.load(f)
        if int(state["epoch"]) != epoch or "schedule_state" not in state or "history" not in state:
            return f"{os.path.basename(state_path)} does not describe epoch {epoch}"
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
    """Saves a `RunCheckpoints` checkpoint after each epoch whose loss is finite."""

    def __init__(self, checkpoints, schedule_callback, guard, clock, history):
        super().__init__()
        self.checkpoints = checkpoints
        self.schedule_callback = schedule_callback
        self.guard = guard
        self.clock = clock
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
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


class ProgressLogger(keras.callbacks.Callback):
    """Prints compact progress: step rate, loss, accuracy, energy savings."""

    def __init__(self, steps_per_epoch, batch_size, every=50, stream=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.every = every
        self.stream = stream or sys.stdout

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0 or batch + 1 == self.steps_per_epoch:
            logs = logs or {}
            rate = (batch + 1) * self.batch_size / max(time.time() - self._start, 1e-9)
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

    Returns:
        The dict written to `metrics.json`.

    Raises:
        TrainingError: if the loss became NaN or infinite (the last good
            checkpoint is kept).
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

    start_epoch = 0
    state = {"wall_seconds": 0.0, "history": []}
    latest = checkpoints.latest()
    if latest is not None:
        weights, state = latest
        model.load_weights(weights)
        start_epoch = int(state["epoch"])
        phases.set_state(state["schedule_state"])
        if verbose:
            print(f"Resuming from {weights} (epoch {start_epoch}, phase {phases.phase})", flush=True)
    history = list(state["history"])
    previous_wall = float(state["wall_seconds"])
    started = time.time()

    def clock():
        return previous_wall + (time.time() - started)

    guard = callbacks_lib.NonFiniteLossGuard()
    saver = EpochCheckpoint(checkpoints, phases, guard, clock, history)
    tensorboard_dir = os.path.join(model_dir, "tensorboard")
    callbacks = [
        phases,
        guard,
        saver,
        keras.callbacks.TensorBoard(tensorboard_dir, write_graph=False),
        SkipRatioBoard(tensorboard_dir, model.num_gates),
    ]
    if verbose:
        callbacks.append(ProgressLogger(steps_per_epoch, batch_size))
    callbacks.extend(extra_callbacks)

    position = Position()
    callbacks.append(position)
    if not phases.finished and start_epoch < max_epochs:
        try:
            model.fit(
                data.train_epochs(start_epoch, max_epochs),
                epochs=max_epochs,
                initial_epoch=start_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_data=data.validation,
                callbacks=callbacks,
                shuffle=False,  # the stream is already shuffled per epoch, reproducibly
                verbose=0,
            )
        except KeyboardInterrupt as e:
            # Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the trainer.
            # Checkpoints are written atomically, so the last one is whole.
            status = getattr(e, "exit_status", 130)
            kept = checkpoints.latest()
            where = (f"in epoch {position.epoch + 1} at step {position.step}/{steps_per_epoch}"
                     if position.epoch is not None else "before the first step")
            raise Interrupted(
                f"interrupted ({'SIGTERM' if status == 143 else 'SIGINT'}) {where}; "
                + (f"kept the checkpoint of epoch {kept[1]['epoch']} ({kept[0]})" if kept
                   else "no checkpoint yet (an interrupted first epoch starts again)")
                + "; rerun the same command to resume", status) from None
    if guard.tripped:
        latest = checkpoints.latest()
        raise TrainingError(
            f"the loss became NaN or infinite in epoch {guard.bad_epoch + 1} "
            f"(batch {guard.bad_batch + 1}); training stopped and the last good checkpoint "
            f"({latest[0] if latest else 'none'}) was kept. Lower the learning rate or alpha."
        )
    epochs_run = start_epoch + len(history) - len(state["history"])
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
