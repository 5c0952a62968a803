"""Resumable training and evaluation of an EnergyNet (used by the trainers)."""

import json
import os
import sys
import time

import keras
import tensorflow as tf

from energynet_tf import callbacks as callbacks_lib
from energynet_tf import distribute
from energynet_tf import evaluation
from energynet_tf import io_utils
from energynet_tf import metrics as metrics_lib
from energynet_tf.data import common as data_common

# What a damaged or vanished data file raises while the pipeline reads it.
_DATA_READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError)


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

    def latest(self, read_only=False):
        """Returns `(weights_path, state)` of the newest intact checkpoint, or None.

        `latest.json` names the newest checkpoint; if it is missing or
        damaged, the epoch files are searched. A checkpoint whose `.keras`
        archive fails its CRC check or whose state JSON cannot be read is
        reported in one line on stderr and renamed `*.damaged` (kept for the
        user, ignored from then on), and the next older one is tried.
        With `read_only` (a process that does not own the directory, such as
        a non-chief worker) nothing is renamed.

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
            if read_only:
                _warn(f"checkpoint {name} in {self.directory} is damaged ({problem}); trying the one before")
                continue
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
        try:
            io_utils.atomic_save_model(model, os.path.join(self.directory, name + ".keras"))
            io_utils.atomic_write_json(os.path.join(self.directory, name + ".json"), state)
            io_utils.atomic_write_json(self._pointer, {"epoch": epoch, "step": step, "weights": name + ".keras",
                                                       "state": name + ".json"})
        except io_utils.NoSpaceError:
            # A full device: this checkpoint is not whole; drop its files (the
            # previous checkpoint, and the pointer to it, stay as they were).
            for suffix in (".keras", ".json"):
                path = os.path.join(self.directory, name + suffix)
                if os.path.exists(path) and not self._is_pointed_to(name):
                    os.remove(path)
            raise
        self._prune()

    def _is_pointed_to(self, name):
        try:
            with open(self._pointer) as f:
                return json.load(f).get("weights") == name + ".keras"
        except (OSError, ValueError):
            return False

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


def _first_damaged(data, splits):
    """One line naming the first damaged file of `splits` (`ClassificationData.find_damaged`), or None."""
    find = getattr(data, "find_damaged", None)
    if find is None:
        return None
    for split in splits:
        damaged = find(split)
        if damaged:
            return damaged
    return None


def _kept_text(checkpoints):
    """'kept the checkpoint at epoch E (+ S steps) (path)', or that there is none yet."""
    kept = checkpoints.latest(read_only=True)
    if kept is None:
        return "no checkpoint yet (an interrupted first epoch starts again)"
    return f"kept the checkpoint at {checkpoint_position(kept[1])} ({kept[0]})"


def _where(position, steps_per_epoch):
    """'in epoch E at step S/N' from a `callbacks.Position`, or 'before the first step'."""
    if position.epoch is None:
        return "before the first step"
    return f"in epoch {position.epoch + 1} at step {position.step}/{steps_per_epoch}"


def checkpoint_position(state):
    """'epoch E' or 'epoch E + S steps': where a checkpoint's state (`RunCheckpoints.latest()[1]`) stands."""
    return f"epoch {state['epoch']}" + (f" + {state['step']} steps" if state.get("step") else "")


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


def evaluation_metrics(model, dataset, top5=False, multi_worker=None, per_image_path=None):
    """Evaluates a compiled `EnergyNet` on `dataset`; returns the `test_*` and savings numbers of `metrics.json`.

    Besides the means, every image's decisions are kept and summarised
    (`evaluation.summarise`: `per_image_energy`, `distinct_paths`,
    `selective_blocks`, `savings_by_class`, `skip_ratio_by_class`,
    `gate_logits`).

    Args:
        model: a compiled `EnergyNet`.
        dataset: batches of `(images, labels)`.
        top5: also report top-5 accuracy.
        multi_worker: a `distribute.MultiWorkerTrainer` under
            MultiWorkerMirroredStrategy (whose `evaluate()` Keras cannot run).
        per_image_path: None, or an `.npz` file to write the per-image arrays
            to (`labels`, `predictions`, `decisions`, `gate_logits`, `energy`).
    """
    if multi_worker is not None:
        test = multi_worker.evaluate(dataset)
    else:
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
    summary, arrays = evaluation.evaluate(model, dataset)
    out.update({key: summary[key] for key in evaluation.SUMMARY_KEYS if key in summary})
    if per_image_path is not None:
        io_utils.atomic_write_npz(per_image_path, arrays)
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
    strategy=None,
    resume_dir=None,
):
    """Trains `model` through the alpha phases, resuming from `model_dir`, and evaluates it.

    Args:
        model: an `EnergyNet` (its `baseline` flag selects a one-phase schedule).
        data: a `data.common.ClassificationData` (its `train_epochs(start,
            end)` gives the training stream of any epoch range, so a resumed
            run sees exactly the batches an uninterrupted run would).
        model_dir: where checkpoints, TensorBoard logs, `metrics.json` and
            `model.keras` go; an existing checkpoint there is resumed.
        schedule: a `schedule.PhaseSchedule` (for a baseline, phase I's epochs
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
        strategy: the `tf.distribute.Strategy` the model and optimizer were
            built in (None: the current one). Under MultiWorkerMirroredStrategy
            training runs in `distribute.MultiWorkerTrainer`, each worker on
            its slice of every global batch, and Ctrl-C and SIGTERM stop the
            process at once (a stop of one worker alone cannot be agreed on):
            rerun every worker to resume from the last checkpoint.
        resume_dir: where to look for the checkpoint to resume from (default
            `model_dir`); a non-chief worker resumes from the chief's run
            directory and writes into a scratch `model_dir`.

    Returns:
        The dict written to `metrics.json`.

    Raises:
        TrainingError: if the loss became NaN or infinite (the last good
            checkpoint is kept).
        Interrupted: on Ctrl-C or SIGTERM, after saving the current step.
    """
    os.makedirs(model_dir, exist_ok=True)
    strategy = strategy or tf.distribute.get_strategy()
    multi_worker = distribute.is_multi_worker(strategy)
    with strategy.scope():
        compile_model(model, optimizer, top5=top5)
        optimizer.build(model.trainable_variables)
    checkpoints = RunCheckpoints(
        os.path.join(model_dir, "checkpoints"), keep=keep_checkpoints, pinned=pinned_epochs)
    resume_from = checkpoints
    if resume_dir is not None and os.path.abspath(resume_dir) != os.path.abspath(model_dir):
        resume_from = RunCheckpoints(os.path.join(resume_dir, "checkpoints"))

    steps_per_epoch = data.steps_per_epoch
    if model.baseline:
        phases = callbacks_lib.ConstantSchedule(
            schedule.phase1_epochs, schedule.lr1, steps_per_epoch,
            warmup_epochs=schedule.warmup_epochs, cosine_epochs=schedule.cosine_epochs,
            cosine_start_epoch=schedule.cosine_start_epoch, verbose=verbose)
    else:
        # Tiny ImageNet's claim is top-5: its phases are decided on top-5 accuracy.
        phases = callbacks_lib.AlphaPhases(
            schedule, steps_per_epoch, verbose=verbose,
            monitor="val_top5_accuracy" if top5 else "val_accuracy",
            validation_examples=data.num_validation_examples or None)
    max_epochs = phases.schedule.max_epochs

    start_epoch, start_step = 0, 0
    state = {"wall_seconds": 0.0, "history": []}
    latest = resume_from.latest(read_only=resume_from is not checkpoints)
    if latest is not None:
        weights, state = latest
        with strategy.scope():
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
    stop = None if multi_worker else callbacks_lib.StopRequest()
    saver = callbacks_lib.EpochCheckpoint(checkpoints, phases, guard, clock, history, steps_per_epoch=steps_per_epoch,
                            every_steps=checkpoint_every_steps, stop_request=stop)
    tensorboard_dir = os.path.join(model_dir, "tensorboard")
    position = callbacks_lib.Position()
    progress = callbacks_lib.ProgressLogger(steps_per_epoch, batch_size) if verbose else None
    callbacks = [
        phases,
        guard,
        keras.callbacks.TensorBoard(tensorboard_dir, write_graph=False),
        callbacks_lib.SkipRatioBoard(tensorboard_dir, model.num_gates),
        position,
    ]
    if progress is not None:
        callbacks.append(progress)
    callbacks.extend(extra_callbacks)
    # Last: a step checkpoint sees the step's logs after every other callback.
    callbacks.append(saver)

    trainer = distribute.MultiWorkerTrainer(model, strategy) if multi_worker else None

    def fit(first, end, skip=0):
        # `skip` steps of epoch `first` were trained before an interruption:
        # the stream skips them and the batch-aware callbacks count from there.
        for callback in (phases, saver, position, progress):
            if callback is not None:
                callback.batch_offset = skip
        if trainer is not None:
            def worker_stream(num_workers, index):
                stream = data.train_epochs(first, end)
                stream = stream.skip(skip) if skip else stream
                return distribute.shard_of_batches(stream, data.batch_size, num_workers, index)

            trainer.fit(worker_stream, epochs=end, initial_epoch=first, steps_per_epoch=steps_per_epoch - skip,
                        validation_data=data.validation, callbacks=callbacks)
            return
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

    try:
        first = start_epoch  # the first epoch to run from its beginning
        if not phases.finished and start_epoch < max_epochs:
            if start_step:
                saver.restore_metrics = state.get("metrics_values")
                fit(start_epoch, start_epoch + 1, skip=start_step)
                first += 1
            if not phases.finished and not guard.tripped and first < max_epochs:
                fit(first, max_epochs)
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM: the current step was saved (StopRequest); a
        # second signal stops at once, and the newest checkpoint is whole.
        status = getattr(e, "exit_status", 130)
        raise Interrupted(
            f"interrupted ({'SIGTERM' if status == 143 else 'SIGINT'}) {_where(position, steps_per_epoch)}; "
            f"{_kept_text(checkpoints)}; resume with the same command", status) from None
    except _DATA_READ_ERRORS:
        damaged = _first_damaged(data, ("train", "validation"))
        if damaged is None:
            raise  # not the data: keep the error as it is
        where = _where(position, steps_per_epoch)
        if position.epoch is not None:
            # The failed step never ran its update: the model holds `position.step` steps' weights.
            done = (position.epoch, position.step)
            if (not multi_worker and not guard.tripped and 0 < position.step < steps_per_epoch
                    and done not in ((start_epoch, start_step), saver.saved_step)):
                saver.save_step(position.step)
        raise data_common.DataCorruptError(
            f"{damaged}; training stopped {where}; {_kept_text(checkpoints)}; then rerun the same command "
            "to resume") from None
    finally:
        if stop is not None:
            stop.restore()
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
        try:
            metrics.update(evaluation_metrics(model, data.test, top5=top5, multi_worker=trainer,
                                              per_image_path=os.path.join(model_dir, "per_image.npz")))
        except _DATA_READ_ERRORS:
            damaged = _first_damaged(data, ("test",))
            if damaged is None:
                raise
            raise data_common.DataCorruptError(
                f"{damaged}; training finished but the test evaluation could not; {_kept_text(checkpoints)}; "
                "then rerun the same command to evaluate") from None
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
