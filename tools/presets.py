"""The presets of `tools.reproduce`: one side-by-side reproduction's fields, and `--set` changes to them.

Owned here, imported by every tool that runs a reproduction's recipe
(`tools.reproduce`, `tools.static_front`, `tools.search_alpha`), so that none
of them imports another tool for it (docs/architecture.md). No TensorFlow.
"""

import dataclasses

from energynet_tf.cli import UsageError


@dataclasses.dataclass(frozen=True)
class Preset:
    """One side-by-side reproduction.

    Attributes:
        depth: CIFAR ResNet depth of both arms.
        epochs: training epochs of each arm (EnergyNet's include its warm-up).
        branch_epoch: EnergyNet's gate warm-up: it starts from the baseline's
            checkpoint of this epoch; 0: EnergyNet trains from scratch on the
            whole budget (its warm-up is `gate_warmup_epochs` of phase I).
        phase1_epochs, phase2_epochs, phase3_epochs: EnergyNet's gated epochs
            after the warm-up (phase III runs only if phase II lost accuracy);
            they add up to `epochs - branch_epoch`.
        alpha1, alpha2, alpha3: energy weights of the phases.
        lr: the baseline's peak learning rate (cosine decay to 0 over `epochs`).
        lr1, lr2, lr3: peak learning rates of EnergyNet's phases (cosine
            decay within each phase).
        gate_lr_multiplier: the gates' learning rate over the backbone's.
        gate_noise: scale of the logistic noise on the gates' logits in
            training (1: sampled decisions; `gates.straight_through`).
        energy_term: what the loss charges ("decisions" or "expected"; `model.EnergyNet`).
        alpha_ramp_epochs: phase II ramps alpha over this many epochs.
        restore_threshold, restore_z: the phase III test (`callbacks.PhaseSchedule`).
        weight_decay: coupled L2 weight decay of both arms.
        decoupled_weight_decay: Keras SGD's decoupled decay of both arms (0:
            off; for the weight-decay ablation).
        zero_init_residual: both arms start each residual branch's last BN
            gamma at zero.
        phase3_gate_lr_multiplier: the gates' learning rate over the
            backbone's in phase III (None: `gate_lr_multiplier`; 0 freezes them).
        lr_restarts: EnergyNet's learning rate restarts at each phase (`lr1`,
            `lr2`, `lr3`, cosine within each); false: it continues the
            baseline's cosine from `branch_epoch` to `epochs` across the
            phases (`lr1`-`lr3` unused).
        reinforce_phases: EnergyNet's phases trained by REINFORCE, e.g. "2,3"
            ("": none; `schedule.PhaseSchedule`).
        policy_weight, exploration, reinforce_temperature: the
            reinforcement stage's policy-loss weight, exploration and the
            softening of the gates when it begins.
        batch_shaping_weight: the batch-shaping loss's weight (0: off).
        batch_shaping_phases: the phases it applies in, joined by "+" (e.g. "1").
        batch_shaping_prior: its Beta prior "a+b" (the gates' probabilities
            over a batch are matched to Beta(a, b); mean a / (a + b) is the
            share of images that run each block).
        energy_warmup_epochs: EnergyNet's first epochs of phase I with alpha 0.
        batch_size: training batch size.
        seed: seed of both arms.
        max_train_examples: train on the first N training examples (None: all).
        validation_examples: examples held out from the training split.
        mixed_precision: both arms' `--mixed_precision` (float32, bfloat16 or float16).
        distill_weight, distill_temperature: EnergyNet distilled from the
            baseline's branch-epoch checkpoint (its own weights; 0: off).
        gate_units: width of EnergyNet's gate projections and LSTM (the paper's 10).
        gate_warmup_epochs: EnergyNet's first epochs of phase I with every
            block running and the gates frozen (`--gate_warmup_epochs`).
        inplace_distill, inplace_temperature: None: off; W in [0, 1]: the
            full path trained on the labels in every step and the gated path
            on `W * T^2 * KL(full || gated) + (1 - W) * CE` (`--inplace_distill`).
        drop_blocks: stochastic depth in EnergyNet's gate warm-up (`--drop_blocks`).

    With `lr_restarts` false (one decay) EnergyNet's phase III test compares
    phase II with the baseline's validation accuracy at the same epoch of the
    decay, and a phase II that kept it goes on to the end of the budget
    (`--restore_reference`, `schedule.PhaseSchedule`).
    """

    depth: int
    epochs: int
    branch_epoch: int
    phase1_epochs: int
    phase2_epochs: int
    phase3_epochs: int
    alpha1: float = 0.1
    alpha2: float = 0.9
    alpha3: float = 0.1
    lr: float = 0.1
    lr1: float = 0.01
    lr2: float = 0.01
    lr3: float = 0.001
    gate_lr_multiplier: float = 1.0
    gate_noise: float = 1.0
    energy_term: str = "decisions"
    alpha_ramp_epochs: int = 0
    restore_threshold: float = 0.1
    restore_z: float = 1.0
    weight_decay: float = 1e-4
    decoupled_weight_decay: float = 0.0
    zero_init_residual: bool = True
    phase3_gate_lr_multiplier: float = None
    lr_restarts: bool = True
    reinforce_phases: str = ""
    policy_weight: float = 0.01
    exploration: float = 0.1
    reinforce_temperature: float = 1.0
    batch_shaping_weight: float = 0.0
    batch_shaping_phases: str = "1+2+3"
    batch_shaping_prior: str = "0.6+0.4"
    energy_warmup_epochs: int = 0
    batch_size: int = 128
    seed: int = 0
    max_train_examples: int = None
    validation_examples: int = 5000
    mixed_precision: str = "float32"
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    gate_units: int = 10
    gate_warmup_epochs: int = 0
    inplace_distill: float = None
    inplace_temperature: float = 1.0
    drop_blocks: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("max_train_examples", "phase3_gate_lr_multiplier", "inplace_distill") and value is None:
                continue
            if f.type is bool:
                if not isinstance(value, bool):
                    raise UsageError(f"preset field {f.name} must be true or false; received: {value!r}")
                continue
            if f.name == "mixed_precision":
                if value not in ("float32", "bfloat16", "float16"):
                    raise UsageError("preset field mixed_precision must be float32, bfloat16 or float16; "
                                     f"received: {value!r}")
                continue
            if f.name == "energy_term":
                if value not in ("expected", "decisions"):
                    raise UsageError(f"preset field energy_term must be 'expected' or 'decisions'; received: {value!r}")
                continue
            if f.name == "batch_shaping_prior":
                try:
                    a, b = (float(v) for v in str(value).split("+"))
                    ok = isinstance(value, str) and a > 0 and b > 0
                except ValueError:
                    ok = False
                if not ok:
                    raise UsageError(f"preset field batch_shaping_prior must be two positive numbers a+b of the "
                                     f"Beta prior (e.g. 0.6+0.4); received: {value!r}")
                continue
            if f.name in ("reinforce_phases", "batch_shaping_phases"):
                parts = [p for p in str(value).replace("+", ",").split(",") if p.strip()]
                if not isinstance(value, str) or any(p.strip() not in ("1", "2", "3") for p in parts) \
                        or len(set(parts)) != len(parts) or (f.name == "batch_shaping_phases" and not parts):
                    raise UsageError(f"preset field {f.name} must be distinct phases from 1, 2, 3 joined "
                                     f"by '+' (e.g. 2+3); received: {value!r}")
                continue
            if f.type is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UsageError(f"preset field {f.name} must be an int >= 0; received: {value!r}")
            if f.type is float and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise UsageError(f"preset field {f.name} must be a number >= 0; received: {value!r}")
        if not 0 <= self.branch_epoch < self.epochs:
            raise UsageError(
                f"preset field branch_epoch must be in [0, epochs={self.epochs}); received: {self.branch_epoch}")
        if self.branch_epoch == 0 and self.distill_weight:
            raise UsageError("preset field distill_weight must be 0 with branch_epoch=0 (its teacher is the "
                             "baseline's branch-epoch checkpoint)")
        if self.inplace_distill is not None and not 0 <= self.inplace_distill <= 1:
            raise UsageError(f"preset field inplace_distill must be in [0, 1] (or none: off); received: "
                             f"{self.inplace_distill!r}")
        if self.inplace_temperature <= 0:
            raise UsageError(f"preset field inplace_temperature must be > 0; received: {self.inplace_temperature!r}")
        if not self.drop_blocks < 1:
            raise UsageError(f"preset field drop_blocks must be in [0, 1); received: {self.drop_blocks!r}")
        if self.drop_blocks and not self.gate_warmup_epochs:
            raise UsageError("preset field drop_blocks needs gate_warmup_epochs > 0 (it applies in the warm-up only)")
        gated = self.phase1_epochs + self.phase2_epochs + self.phase3_epochs
        if gated != self.epochs - self.branch_epoch:
            raise UsageError(
                f"EnergyNet's phases must fill the budget: phase1_epochs + phase2_epochs + phase3_epochs = "
                f"{gated}, but epochs - branch_epoch = {self.epochs - self.branch_epoch}")
        if self.phase1_epochs < 1:
            raise UsageError(f"preset field phase1_epochs must be >= 1; received: {self.phase1_epochs}")

    def baseline_flags(self):
        return self._common_flags() + [
            "--baseline", f"--phase1_epochs={self.epochs}", f"--lr1={self.lr}",
            # Epoch 1 too: an arm that branches there can reuse this baseline (--reuse_baseline).
            f"--pin_checkpoints={','.join(str(e) for e in sorted({1, self.branch_epoch} - {0}))}",
        ]

    def energynet_flags(self, branch_checkpoint, baseline_dir=None):
        """The trainer's flags of the EnergyNet arm (`branch_checkpoint`: None with branch_epoch 0)."""
        return self._common_flags() + ([f"--init_from={branch_checkpoint}"] if self.branch_epoch else []) + [
            f"--phase1_epochs={self.phase1_epochs}", f"--phase2_epochs={self.phase2_epochs}",
            f"--phase3_epochs={self.phase3_epochs}",
            f"--alpha1={self.alpha1}", f"--alpha2={self.alpha2}", f"--alpha3={self.alpha3}",
        ] + ([f"--lr1={self.lr1}", f"--lr2={self.lr2}", f"--lr3={self.lr3}"] if self.lr_restarts else [
            f"--lr1={self.lr}", f"--cosine_epochs={self.epochs}", f"--cosine_start_epoch={self.branch_epoch}",
        ]) + [
            f"--gate_lr_multiplier={self.gate_lr_multiplier}", f"--gate_noise={self.gate_noise}",
            f"--energy_term={self.energy_term}",
            f"--alpha_ramp_epochs={self.alpha_ramp_epochs}",
            f"--restore_threshold={self.restore_threshold}", f"--restore_z={self.restore_z}",
        ] + ([f"--reinforce_phases={self.reinforce_phases.replace('+', ',')}", f"--policy_weight={self.policy_weight}",
              f"--exploration={self.exploration}", f"--reinforce_temperature={self.reinforce_temperature}"]
             if self.reinforce_phases else []) + (
            [f"--batch_shaping_weight={self.batch_shaping_weight}",
             f"--batch_shaping_phases={self.batch_shaping_phases.replace('+', ',')}"]
            + ([f"--batch_shaping_prior={self.batch_shaping_prior.replace('+', ',')}"]
               if self.batch_shaping_prior != "0.6+0.4" else [])
            if self.batch_shaping_weight else []) + (
            [f"--energy_warmup_epochs={self.energy_warmup_epochs}"] if self.energy_warmup_epochs else []) + (
            [] if self.phase3_gate_lr_multiplier is None
             else [f"--phase3_gate_lr_multiplier={self.phase3_gate_lr_multiplier}"]) + (
            [f"--distill_weight={self.distill_weight}", f"--distill_temperature={self.distill_temperature}"]
            if self.distill_weight else []) + ([f"--gate_units={self.gate_units}"] if self.gate_units != 10 else []) + (
            [f"--gate_warmup_epochs={self.gate_warmup_epochs}"] if self.gate_warmup_epochs else []) + (
            [f"--inplace_distill={self.inplace_distill}", f"--inplace_temperature={self.inplace_temperature}"]
            if self.inplace_distill is not None else []) + (
            [f"--drop_blocks={self.drop_blocks}"] if self.drop_blocks else []) + (
            [f"--restore_reference={baseline_dir}"] if baseline_dir and not self.lr_restarts else [])

    def _common_flags(self):
        out = [
            f"--depth={self.depth}", f"--batch_size={self.batch_size}", f"--seed={self.seed}",
            f"--weight_decay={self.weight_decay}", f"--validation_examples={self.validation_examples}",
            f"--{'' if self.zero_init_residual else 'no'}zero_init_residual",
        ]
        if self.decoupled_weight_decay:
            out.append(f"--decoupled_weight_decay={self.decoupled_weight_decay}")
        if self.max_train_examples is not None:
            out.append(f"--max_train_examples={self.max_train_examples}")
        if self.mixed_precision != "float32":
            out.append(f"--mixed_precision={self.mixed_precision}")
        return out


PRESETS = {
    # Chosen in docs/experiments/cpu-preset.md: the most faithful comparison that
    # fits 150 minutes here.
    "cpu": Preset(depth=38, epochs=15, branch_epoch=7, phase1_epochs=1, phase2_epochs=5, phase3_epochs=2,
                  alpha2=1.25, lr1=0.055, lr2=0.055, lr3=0.01, gate_lr_multiplier=10.0),
    # The paper's ResNet-38 and phase lengths; the warm-up is its phase I.
    "paper": Preset(depth=38, epochs=220, branch_epoch=160, phase1_epochs=20, phase2_epochs=30,
                    phase3_epochs=10),
}


def with_defaults(config):
    """A stored preset dict with the fields added since it was written set to their defaults."""
    if not isinstance(config, dict):
        return config
    defaults = {f.name: f.default for f in dataclasses.fields(Preset) if f.default is not dataclasses.MISSING}
    return {**{k: v for k, v in defaults.items() if k not in config}, **config}


def parse_overrides(preset, text):
    """Returns `preset` with the `key=value,...` changes of `text` applied.

    Raises:
        UsageError: for an unknown key or a value of the wrong type.
    """
    if not text:
        return preset
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    changes = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise UsageError(f"--set: {item!r} is not key=value with a key from {sorted(fields)}")
        kind = fields[key].type
        try:
            if key in ("max_train_examples", "phase3_gate_lr_multiplier", "inplace_distill") \
                    and value.lower() in ("none", ""):
                changes[key] = None
            elif kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                changes[key] = value.lower() in ("true", "1")
            elif kind is str:
                changes[key] = value
            elif kind is int or key == "max_train_examples":
                changes[key] = int(value)
            else:
                changes[key] = float(value)
        except ValueError:
            what = "true or false" if kind is bool else "a number"
            raise UsageError(f"--set: {key}={value!r} must be {what}") from None
    return dataclasses.replace(preset, **changes)
