"""Keras callbacks: the alpha phase schedule, training guards, checkpoints, progress and TensorBoard extras."""

import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from energynet_tf import distribute
from energynet_tf import metrics as metrics_lib
from energynet_tf.schedule import PhaseSchedule  # noqa: F401 - the schedule AlphaPhases drives


class AlphaPhases(keras.callbacks.Callback):
    """Drives `model.alpha` and the learning rate through the three phases.

    Each epoch it assigns `alpha` (a non-trainable variable of the model) and
    sets the learning rate per step; it writes `phase`, `alpha` and `lr` into
    the epoch's logs. At the end of phase II it compares validation accuracy
    with phase I's and decides whether phase III runs, recording why in
    `phase3_reason`. It stops training when the schedule is over. Its state
    (`get_state`/`set_state`) is saved with checkpoints so an interrupted run
    resumes in the right phase.

    Args:
        schedule: a `PhaseSchedule`.
        steps_per_epoch: training steps per epoch (for the per-step LR).
        monitor: the validation accuracy key of the logs.
        verbose: print phase transitions.
    """

    def __init__(self, schedule, steps_per_epoch, monitor="val_accuracy", verbose=True,
                 validation_examples=None):
        super().__init__()
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"Argument `steps_per_epoch` must be an int >= 1; received: {steps_per_epoch!r}")
        if schedule.restore_z > 0 and not (isinstance(validation_examples, int) and validation_examples > 0):
            raise ValueError(
                "Argument `validation_examples` must be a positive int when the schedule's "
                f"restore_z > 0 (the phase III test needs it); received: {validation_examples!r}")
        self.validation_examples = validation_examples
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.monitor = monitor
        self.verbose = verbose
        self.phase = 1
        self.phase_start_epoch = 0
        self.phases = []  # finished phases: {phase, alpha, epochs, val_accuracy}
        self.phase3_reason = None
        self.finished = False
        # Under one decay with a reference, a phase II that kept its accuracy goes on to the end of the budget.
        self.phase2_extended = False
        self._reference_problem = None
        self._epoch = 0
        self.batch_offset = 0  # steps already done in the epoch a run resumed inside

    # -- state ----------------------------------------------------------------
    def get_state(self):
        """A JSON-serialisable snapshot of the schedule's progress."""
        return {
            "phase": self.phase,
            "phase_start_epoch": self.phase_start_epoch,
            "phases": self.phases,
            "phase3_reason": self.phase3_reason,
            "finished": self.finished,
            "phase2_extended": self.phase2_extended,
        }

    def set_state(self, state):
        """Restores a snapshot from `get_state`."""
        self.phase = int(state["phase"])
        self.phase_start_epoch = int(state["phase_start_epoch"])
        self.phases = list(state["phases"])
        self.phase3_reason = state["phase3_reason"]
        self.finished = bool(state["finished"])
        self.phase2_extended = bool(state.get("phase2_extended", False))

    # -- hooks ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        needed = (["reinforce"] if self.schedule.reinforce_phases else []) + (
            ["batch_shaping"] if self.schedule.batch_shaping_weight > 0 else [])
        missing = [n for n in needed if n not in getattr(self.model, "gate_losses", needed)]
        if missing:
            raise ValueError(f"the schedule needs the gate losses {missing}, which the model's training step "
                             f"does not build; build it with gate_losses={tuple(needed)}")
        if self.finished:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        forced = self.phase == 1 and epoch - self.phase_start_epoch < self.schedule.gate_warmup_epochs
        if hasattr(self.model, "gates_forced_open"):
            self.model.gates_forced_open.assign(1.0 if forced else 0.0)
        if hasattr(self.model, "gate_lr_multiplier"):
            self.model.gate_lr_multiplier.assign(0.0 if forced else self.schedule.gate_multiplier(self.phase))
        if hasattr(self.model, "soften_gates") and self.phase in self.schedule.reinforce_phases:
            if self.model.soften_gates(self.schedule.reinforce_temperature) and self.verbose:
                print(f"[phases] the reinforcement stage begins: every gate's logit divided by "
                      f"{self.schedule.reinforce_temperature}", flush=True)
        if hasattr(self.model, "policy_weight"):
            self.model.policy_weight.assign(self.schedule.policy(self.phase))
            self.model.exploration.assign(self.schedule.exploration)
            self.model.batch_shaping_weight.assign(self.schedule.shaping(self.phase))
        self._set_lr(epoch, self.batch_offset)

    def on_train_batch_begin(self, batch, logs=None):
        self._set_lr(self._epoch, batch + self.batch_offset)

    def _set_lr(self, epoch, batch):
        into_phase = (epoch - self.phase_start_epoch) + batch / self.steps_per_epoch
        lr = self.schedule.learning_rate(self.phase, into_phase, epoch + batch / self.steps_per_epoch)
        self.model.optimizer.learning_rate.assign(lr)
        self._lr = lr
        self.model.alpha.assign(self.schedule.alpha(self.phase, into_phase))

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        logs = logs if logs is not None else {}
        logs["phase"] = float(self.phase)
        logs["alpha"] = float(self.model.alpha.numpy())
        logs["lr"] = float(self._lr)
        if hasattr(self.model, "gate_lr_multiplier"):
            logs["gate_lr_multiplier"] = float(self.model.gate_lr_multiplier.numpy())
        if self.schedule.reinforce_phases:
            logs["policy_weight"] = float(self.model.policy_weight.numpy())
        accuracy = logs.get(self.monitor, logs.get("accuracy"))
        epochs_in_phase = epoch + 1 - self.phase_start_epoch
        schedule = self.schedule
        if self.phase == 1:
            reached = (
                schedule.target_accuracy is not None
                and accuracy is not None
                and accuracy >= schedule.target_accuracy
            )
            if reached or epochs_in_phase >= schedule.phase1_epochs:
                self._end_phase(epoch, accuracy, "target accuracy reached" if reached else "epochs done")
                if schedule.phase2_epochs == 0:
                    self._finish("phase III did not run: no phase II (phase2_epochs = 0)")
        elif self.phase == 2:
            if self.phase2_extended:
                if epochs_in_phase >= schedule.phase2_epochs + schedule.phase3_epochs:
                    self._end_phase(epoch, accuracy, "epochs done (went on to the end of the decay)")
                    self._finish(None)
            elif epochs_in_phase >= schedule.phase2_epochs:
                if not schedule.restore_reference:
                    self._end_phase(epoch, accuracy, "epochs done")
                    self._decide_phase3()
                else:
                    reference = self._reference_accuracy(epoch)
                    if reference is None:  # (why is in the reason)
                        reference = self.phases[0]["val_accuracy"]
                    self._decide_phase3_one_decay(epoch, accuracy, reference)
        elif self.phase == 3:
            if epochs_in_phase >= schedule.phase3_epochs:
                self._end_phase(epoch, accuracy, "epochs done")
                self._finish(None)

    def _end_phase(self, epoch, accuracy, why):
        record = {
            "phase": self.phase,
            "alpha": self.schedule.alpha(self.phase, float("inf")),
            "epochs": epoch + 1 - self.phase_start_epoch,
            "val_accuracy": None if accuracy is None else float(accuracy),
            "monitor": self.monitor,
            "ended_because": why,
        }
        self.phases.append(record)
        if self.verbose:
            print(f"[phases] phase {self.phase} ended after {record['epochs']} epochs ({why}); "
                  f"val_accuracy {record['val_accuracy']}", flush=True)
        self.phase += 1
        self.phase_start_epoch = epoch + 1

    def _decay_epoch(self, epoch):
        """Epochs of the one decay completed at the end of this run's `epoch` (0-based)."""
        return self.schedule.cosine_start_epoch + epoch + 1

    def _reference_accuracy(self, epoch):
        """The reference baseline's validation accuracy at the same epoch of the decay, or None (and why)."""
        import json

        path = self.schedule.restore_reference
        path = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
        at = self._decay_epoch(epoch)
        self._reference_problem = None
        try:
            with open(path) as f:
                history = json.load(f)["history"]
            value = history[at - 1][self.monitor]
            return float(value)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            self._reference_problem = (f"the reference {path} gave no {self.monitor} at epoch {at}: "
                                       f"{type(e).__name__}: {e}")
            return None

    def _threshold(self, a, b):
        """The drop (points) above which phase III runs, and its text, for accuracies `a` and `b`."""
        threshold = self.schedule.restore_threshold
        if self.schedule.restore_z > 0:
            n = self.validation_examples
            se = 100.0 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)
            threshold = round(threshold + self.schedule.restore_z * se, 2)
            return threshold, (f"{threshold} threshold ({self.schedule.restore_threshold} + "
                               f"{self.schedule.restore_z} x {se:.2f} standard error on {n} images)")
        return threshold, f"{threshold} threshold"

    def _decide_phase3_one_decay(self, epoch, accuracy, reference):
        """The phase III test under one decay: phase II's accuracy against the baseline's at the same epoch.

        `reference` is phase I's accuracy when the baseline's could not be
        read (`_reference_problem` says why, and the reason repeats it).
        """
        at = self._decay_epoch(epoch)
        if accuracy is None or reference is None:
            self._end_phase(epoch, accuracy, "epochs done")
            self._finish(f"phase III did not run: no `{self.monitor}` in the logs to compare")
            return
        drop = 100.0 * (reference - accuracy)
        threshold, text = self._threshold(reference, accuracy)
        if self._reference_problem:
            compared = (f"phase II is {drop:.2f} points below phase I ({100 * reference:.2f}% -> "
                        f"{100 * accuracy:.2f}%; {self._reference_problem})")
        else:
            compared = (f"phase II is {drop:.2f} points below the baseline at epoch {at} of the decay "
                        f"({100 * reference:.2f}% -> {100 * accuracy:.2f}%)")
        if drop > threshold and self.schedule.phase3_epochs > 0:
            self._end_phase(epoch, accuracy, "epochs done")
            self.phase3_reason = f"phase III ran: {compared}, more than the {text}"
            if self.verbose:
                print(f"[phases] {self.phase3_reason}", flush=True)
            return
        if drop > threshold:
            why = f"phase III did not run: {compared} (> {threshold}) but phase3_epochs is 0"
        else:
            why = f"phase III did not run: {compared}, within the {text}"
        if self.schedule.phase3_epochs == 0:
            self._end_phase(epoch, accuracy, "epochs done")
            self._finish(why)
            return
        self.phase2_extended = True
        self.phase3_reason = f"{why}; phase II goes on at alpha2 for the {self.schedule.phase3_epochs} epochs left"
        if self.verbose:
            print(f"[phases] {self.phase3_reason}", flush=True)

    def _decide_phase3(self):
        phase1, phase2 = self.phases[0]["val_accuracy"], self.phases[1]["val_accuracy"]
        if phase1 is None or phase2 is None:
            reason = f"phase III did not run: no `{self.monitor}` in the logs to compare"
            self._finish(reason)
            return
        drop = 100.0 * (phase1 - phase2)
        threshold, threshold_text = self._threshold(phase1, phase2)
        if drop > threshold and self.schedule.phase3_epochs > 0:
            self.phase3_reason = (
                f"phase III ran: phase II lost {drop:.2f} points of validation accuracy "
                f"({100 * phase1:.2f}% -> {100 * phase2:.2f}%), more than the {threshold_text}"
            )
            if self.verbose:
                print(f"[phases] {self.phase3_reason}", flush=True)
        elif drop > threshold:
            self._finish(
                f"phase III did not run: phase II lost {drop:.2f} points (> {threshold}) "
                "but phase3_epochs is 0"
            )
        else:
            self._finish(
                f"phase III did not run: phase II lost {drop:.2f} points of validation accuracy "
                f"({100 * phase1:.2f}% -> {100 * phase2:.2f}%), within the {threshold_text}"
            )

    def _finish(self, reason):
        if reason is not None:
            self.phase3_reason = reason
            if self.verbose:
                print(f"[phases] {reason}", flush=True)
        self.finished = True
        self.model.stop_training = True


class ConstantSchedule(AlphaPhases):
    """Baseline training: one phase with alpha held at 0 and a cosine learning rate.

    ("Constant" is alpha: the learning rate follows the cosine schedule of phase I.)
    """

    def __init__(self, epochs, lr, steps_per_epoch, warmup_epochs=0, cosine_epochs=0, cosine_start_epoch=0,
                 **kwargs):
        schedule = PhaseSchedule(
            phase1_epochs=epochs, phase2_epochs=0, phase3_epochs=0,
            alpha1=0.0, lr1=lr, warmup_epochs=warmup_epochs,
            cosine_epochs=cosine_epochs, cosine_start_epoch=cosine_start_epoch,
        )
        super().__init__(schedule, steps_per_epoch, **kwargs)

    def _finish(self, reason):
        # A baseline has no phases II/III to explain.
        super()._finish(None)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.bad_batch = None
        self.bad_epoch = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.bad_batch, self.bad_epoch = batch, self._epoch
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if self.bad_batch is None and loss is not None and not np.isfinite(float(loss)):
            self.bad_batch, self.bad_epoch = -1, epoch
            self.model.stop_training = True

    @property
    def tripped(self):
        return self.bad_batch is not None


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
                    distribute.assign_sum(variable, np.asarray(saved, dtype=variable.dtype) + np.asarray(variable))
            self.restore_metrics = None
        if self.guard.tripped:
            return
        step = batch + 1 + self.batch_offset
        stop = self.stop_request is not None and self.stop_request.signum is not None
        due = self.every_steps and step % self.every_steps == 0
        # At an epoch's last step the epoch checkpoint follows (after validation);
        # a stop requested then is honoured in on_epoch_end, after that save.
        if (stop or due) and self.steps_per_epoch and step < self.steps_per_epoch:
            self.save_step(step)
            if stop:
                raise self.stop_request.interrupt()

    def save_step(self, step):
        """Checkpoints the current epoch at `step` steps, with the epoch's running metric values.

        Also called after training stopped inside an epoch for a reason of
        its own (a damaged data file): the model then holds the weights of
        `step` steps, since the failed step never ran its update.
        """
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
        if self.stop_request is not None and self.stop_request.signum is not None:
            raise self.stop_request.interrupt()


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
