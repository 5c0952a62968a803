"""The three-phase alpha schedule: a plain dataclass, no TensorFlow (the trainers' run configuration nests it)."""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class PhaseSchedule:
    """The three-phase alpha schedule of EnergyNet (docs/design.md §1.4).

    Phase I trains with `alpha1` until `target_accuracy` (the baseline's
    validation accuracy) is reached or `phase1_epochs` have run. Phase II
    retrains the phase I model with `alpha2`. Phase III (`alpha3`) runs only
    if phase II lost more than `restore_threshold` points of phase I's
    validation accuracy. Each phase has its own cosine-decayed learning rate,
    starting at `lr1`, `lr2` or `lr3`, after `warmup_epochs` of linear warm-up
    in phase I. For the first `gate_warmup_epochs` of phase I every block runs
    in training whatever its gate decides and the gates are frozen (their
    gradients are multiplied by 0), so blocks learn before gates can close
    them. Otherwise the gates' gradients are multiplied by
    `gate_lr_multiplier` (their own learning rate, with SGD). In phase II
    alpha ramps linearly from `alpha1` to `alpha2` over its first
    `alpha_ramp_epochs` epochs (0: a step). In phase III the gates' gradients
    are multiplied by `phase3_gate_lr_multiplier` instead when it is set (0
    freezes the gates: phase III then retrains the backbone under the skip
    pattern phase II chose, instead of letting alpha 0.1 reopen blocks).

    With `cosine_epochs` > 0 the learning rate does not restart at the
    phases: it follows one cosine from `lr1` to 0 over `cosine_epochs`
    epochs, of which the run's first epoch is number `cosine_start_epoch`
    (so a run started from epoch 7 of a 15-epoch baseline, with
    `cosine_start_epoch=7` and `cosine_epochs=15`, continues the baseline's
    own decay). The phases then change alpha and the gates' multiplier only;
    `lr2` and `lr3` are unused. The phase III test then compares phase I's
    validation accuracy, taken mid-decay, with phase II's, taken at a lower
    learning rate (docs/experiments/cpu-preset.md, "the no-restart arm").

    The reinforcement stage: the phases listed in `reinforce_phases` (e.g.
    (2, 3)) train the gates by REINFORCE instead of straight-through
    (`model.EnergyNet`'s `policy_weight`): each decision is sampled (from
    `exploration`'s mixture of the gate's probability), the blocks train on
    the cross-entropy of the path that ran, and the gates on `policy_weight`
    times the policy loss of each image's return, minus its cross-entropy and
    the phase's alpha times the energy of the blocks it ran. When the first
    reinforcement phase begins, every gate's logit is divided by
    `reinforce_temperature` once (`EnergyNet.soften_gates`): > 1 softens
    gates that straight-through training saturated.

    Batch-shaping (Bejnordi et al. 2020): `batch_shaping_weight` weighs the
    loss that matches each gate's probabilities over a batch to a Beta prior,
    in the phases listed in `batch_shaping_phases` (default every phase; the
    paper anneals its weight away, so e.g. (1,) makes the gates conditional in
    phase I and leaves phases II and III to the cross-entropy and the energy); `energy_warmup_epochs` holds alpha at 0 for the
    first epochs of phase I, so the gates first learn to be conditional and
    only then to save energy (the paper adds its sparsity loss after a warm-up).

    The phase III test: phase III runs if the drop from phase I's to phase
    II's validation accuracy, in points, exceeds `restore_threshold` plus
    `restore_z` standard errors of the difference of two accuracies measured
    on the validation set (binomial; with 5,000 images and accuracy near 90%
    one standard error is about 0.6 points). `restore_z` 0 is the paper's test.

    The phase III test under one decay (`cosine_epochs` > 0 with
    `restore_reference`): phase I's accuracy is taken at a higher learning
    rate than phase II's, so comparing the two says little. Instead phase II's
    validation accuracy is compared with the baseline's at the same epoch of
    the same decay (`restore_reference`: a baseline run directory or its
    `metrics.json`, whose per-epoch `history` is read when the test is made),
    with the same threshold and standard error. Phase III runs (alpha3, its
    own gate multiplier) for `phase3_epochs` if phase II lost more than that;
    otherwise phase II goes on at alpha2 for those epochs, so either way the
    run uses its whole budget and the learning rate reaches 0 at its last
    epoch. A reference that cannot be read, or has no value for that epoch,
    falls back to the phase I comparison, and the recorded reason says so.

    Raises:
        ValueError: naming the field, for a negative or non-finite value.
    """

    phase1_epochs: int = 160
    phase2_epochs: int = 40
    phase3_epochs: int = 20
    alpha1: float = 0.1
    alpha2: float = 0.9
    alpha3: float = 0.1
    lr1: float = 0.1
    lr2: float = 0.01
    lr3: float = 0.001
    restore_threshold: float = 0.1
    target_accuracy: float = None
    warmup_epochs: int = 0
    gate_warmup_epochs: int = 0
    gate_lr_multiplier: float = 1.0
    alpha_ramp_epochs: int = 0
    restore_z: float = 0.0
    phase3_gate_lr_multiplier: float = None
    cosine_epochs: int = 0
    cosine_start_epoch: int = 0
    reinforce_phases: tuple = ()
    policy_weight: float = 0.01
    exploration: float = 0.1
    batch_shaping_weight: float = 0.0
    batch_shaping_phases: tuple = (1, 2, 3)
    energy_warmup_epochs: int = 0
    reinforce_temperature: float = 1.0
    restore_reference: str = None

    def __post_init__(self):
        for name in ("reinforce_phases", "batch_shaping_phases"):
            phases = getattr(self, name)
            if isinstance(phases, list):
                phases = tuple(phases)
            if (not isinstance(phases, tuple) or len(set(phases)) != len(phases)
                    or any(p not in (1, 2, 3) or isinstance(p, bool) for p in phases)):
                raise ValueError(f"PhaseSchedule.{name} must hold distinct phases from 1, 2, 3; "
                                 f"received: {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(sorted(phases)))
        for name in ("phase1_epochs", "phase2_epochs", "phase3_epochs", "warmup_epochs", "gate_warmup_epochs",
                     "alpha_ramp_epochs", "cosine_epochs", "cosine_start_epoch", "energy_warmup_epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"PhaseSchedule.{name} must be an int >= 0; received: {value!r}")
        if self.phase1_epochs < 1:
            raise ValueError(f"PhaseSchedule.phase1_epochs must be >= 1; received: {self.phase1_epochs}")
        for name in ("alpha1", "alpha2", "alpha3", "lr1", "lr2", "lr3", "restore_threshold",
                     "gate_lr_multiplier", "restore_z", "policy_weight", "exploration", "batch_shaping_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"PhaseSchedule.{name} must be a finite number >= 0; received: {value!r}")
        if not isinstance(self.reinforce_temperature, (int, float)) or isinstance(self.reinforce_temperature, bool) \
                or not math.isfinite(self.reinforce_temperature) or self.reinforce_temperature <= 0:
            raise ValueError(f"PhaseSchedule.reinforce_temperature must be a finite number > 0; received: "
                             f"{self.reinforce_temperature!r}")
        if self.exploration > 1:
            raise ValueError(f"PhaseSchedule.exploration must be in [0, 1]; received: {self.exploration!r}")
        if self.reinforce_phases and self.policy_weight == 0:
            raise ValueError("PhaseSchedule.policy_weight must be > 0 when reinforce_phases is set; received: 0")
        value = self.phase3_gate_lr_multiplier
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(
                f"PhaseSchedule.phase3_gate_lr_multiplier must be a finite number >= 0 or None; received: {value!r}")
        if self.cosine_epochs and self.cosine_start_epoch >= self.cosine_epochs:
            raise ValueError(
                f"PhaseSchedule.cosine_start_epoch must be below cosine_epochs={self.cosine_epochs}; "
                f"received: {self.cosine_start_epoch}")
        if self.restore_reference is not None:
            if not isinstance(self.restore_reference, str) or not self.restore_reference:
                raise ValueError("PhaseSchedule.restore_reference must be a baseline run directory or metrics.json "
                                 f"path (or None); received: {self.restore_reference!r}")
            if not self.cosine_epochs:
                raise ValueError("PhaseSchedule.restore_reference is for one decay (cosine_epochs > 0); received "
                                 f"{self.restore_reference!r} with cosine_epochs=0")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError(
                f"PhaseSchedule.target_accuracy must be in (0, 1] or None; received: {self.target_accuracy!r}"
            )

    @property
    def max_epochs(self):
        """Epochs if every phase runs to its end."""
        return self.phase1_epochs + self.phase2_epochs + self.phase3_epochs

    def alpha(self, phase, epochs_into_phase=None):
        """Alpha of `phase`; in phase II, `epochs_into_phase` (float) follows the ramp; 0 in phase I's energy warm-up."""
        if phase == 1 and epochs_into_phase is not None and epochs_into_phase < self.energy_warmup_epochs:
            return 0.0
        if phase == 2 and self.alpha_ramp_epochs > 0 and epochs_into_phase is not None:
            fraction = min(max(epochs_into_phase / self.alpha_ramp_epochs, 0.0), 1.0)
            return self.alpha1 + fraction * (self.alpha2 - self.alpha1)
        return {1: self.alpha1, 2: self.alpha2, 3: self.alpha3}[phase]

    def policy(self, phase):
        """The policy loss's weight in `phase`: `policy_weight` in a reinforcement phase, else 0."""
        return self.policy_weight if phase in self.reinforce_phases else 0.0

    def shaping(self, phase):
        """The batch-shaping loss's weight in `phase`: `batch_shaping_weight` in `batch_shaping_phases`, else 0."""
        return self.batch_shaping_weight if phase in self.batch_shaping_phases else 0.0

    def gate_multiplier(self, phase):
        """The factor on the gates' gradients in `phase` (after any gate warm-up)."""
        if phase == 3 and self.phase3_gate_lr_multiplier is not None:
            return self.phase3_gate_lr_multiplier
        return self.gate_lr_multiplier

    def learning_rate(self, phase, epochs_into_phase, epochs_into_run):
        """The learning rate at a point of training.

        Args:
            phase: 1, 2 or 3.
            epochs_into_phase: epochs (float, fractions for steps) since the
                phase began.
            epochs_into_run: epochs (float) since this run's first epoch.

        Returns:
            The phase's own cosine from `lr1`, `lr2` or `lr3` (after phase
            I's linear warm-up), or, with `cosine_epochs` > 0, the one cosine
            across phases.
        """
        if self.cosine_epochs:
            progress = (self.cosine_start_epoch + epochs_into_run) / self.cosine_epochs
            warmup = min(self.warmup_epochs / self.cosine_epochs, 1.0)
            return cosine_lr(self.lr1, progress, warmup)
        length = max({1: self.phase1_epochs, 2: self.phase2_epochs, 3: self.phase3_epochs}[phase], 1)
        warmup = min(self.warmup_epochs / length, 1.0) if phase == 1 else 0.0
        return cosine_lr({1: self.lr1, 2: self.lr2, 3: self.lr3}[phase], epochs_into_phase / length, warmup)


def cosine_lr(base_lr, progress, warmup=0.0):
    """Cosine decay from `base_lr` to 0 over `progress` in [0, 1], after linear warm-up."""
    if warmup > 0 and progress < warmup:
        return base_lr * (progress / warmup)
    if warmup > 0:
        progress = (progress - warmup) / (1.0 - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
