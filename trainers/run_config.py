"""A trainer run's configuration: one frozen dataclass, validated in one place, saved as config.json.

The flags only fill it in (`common.check_flags`). It nests the phase schedule
(`schedule.PhaseSchedule`) and the accelerator (`systolic.AcceleratorConfig`),
which validate their own fields; `RunConfig` validates the rest. A bad value
raises `ValueError` naming the field (`RunConfig.batch_size`,
`PhaseSchedule.alpha2`, `AcceleratorConfig.array_rows`); each field has the
name of the flag that sets it, so the trainers report `--batch_size=0: ...`.

`to_dict()` is what config.json holds; `from_dict()` reads it back for a
resume, including the flat files of earlier versions (the schedule's fields
at the top level, fields added since missing).
"""

import dataclasses
import math
from typing import Optional, Tuple, Union

from energynet_tf import backbone
from energynet_tf.schedule import PhaseSchedule
from energynet_tf.systolic.config import AcceleratorConfig

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")  # distribute.STRATEGIES, without TensorFlow
ENERGY_TERMS = ("expected", "decisions")
PRECISIONS = ("float32", "bfloat16", "float16")  # --mixed_precision: the backbone's compute dtype
DATASETS = ("cifar10", "tiny_imagenet")

# Fields that may change between a run and its resumption.
RESUMABLE = ("model_dir", "data_dir", "verbose", "keep_checkpoints", "pin_checkpoints", "evaluate_test",
             "checkpoint_every_steps", "strategy")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a trainer run.

    Attributes:
        model_dir: the run directory.
        data_dir: where the dataset is (None: the loader's default search).
        dataset: "cifar10" or "tiny_imagenet".
        depth: network depth (`backbone.SUPPORTED_DEPTHS`).
        baseline: the network without gates.
        schedule: the three alpha phases (a baseline uses phase I's epochs and LR).
        accelerator: the systolic array of the energy model.
        batch_size, eval_batch_size: global batch sizes.
        seed: seed of initialisation, shuffling and augmentation.
        max_train_examples: train on the first N examples (None: all).
        validation_examples: held-out examples (Tiny ImageNet: "auto" for 10%).
        image_size, max_eval_examples: Tiny ImageNet's input size and test cap.
        weight_decay: coupled L2; decoupled_weight_decay: Keras SGD's decay.
        zero_init_residual: residual branches' last BN gamma starts at zero.
        gate_noise, energy_term, gate_units, gate_bias_init: the gates.
        removed_blocks: gated blocks (from 1) a baseline never runs: a plain
            network of a fixed skip pattern (`model.EnergyNet`).
        batch_shaping_prior: the Beta prior (a, b) of the batch-shaping loss
            (its weight is the schedule's `batch_shaping_weight`).
        momentum: SGD (Nesterov) momentum.
        init_from: a baseline's model file whose weights start the backbone.
        keep_checkpoints, checkpoint_every_steps, pin_checkpoints: checkpoints.
        deterministic: TensorFlow op determinism and one inter-op thread.
        verbose: print progress.
        evaluate_test: evaluate the final model on the test split.
        strategy: the `tf.distribute` strategy (`distribute.make_strategy`).
        mixed_precision: "float32", or "bfloat16"/"float16": the backbone
            computes in that dtype (Keras' `mixed_*` policy; variables, gates,
            energy and loss stay float32; float16 scales the loss). Not
            resumable under another value: a run keeps its precision.
        distill_weight, distill_temperature: > 0: the training loss adds
            this weight times the tempered KL to the `init_from` model's
            logits (`EnergyNet.set_teacher`); 0: off.
        inplace_distill, inplace_temperature: None: off; W in [0, 1]: every
            training step also runs the full path (every block), trained on
            the labels, and teaches the gated path by `W * T^2 * KL(full ||
            gated) + (1 - W) * CE` (`terms.InplaceDistillation`).
        drop_blocks: P in [0, 1): in the gate warm-up each gated block is
            skipped at random per image, survival falling linearly to 1 - P
            at the last block (`EnergyNet`'s `drop_blocks`); 0: off.

    Raises:
        ValueError: naming the field, what was expected and what was received.
    """

    model_dir: str
    data_dir: Optional[str] = None
    dataset: str = "cifar10"
    depth: int = 38
    baseline: bool = False
    schedule: PhaseSchedule = PhaseSchedule()
    accelerator: AcceleratorConfig = AcceleratorConfig()
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 0
    max_train_examples: Optional[int] = None
    validation_examples: Union[int, str] = 5000
    image_size: Optional[int] = None
    max_eval_examples: Optional[int] = None
    weight_decay: float = 1e-4
    decoupled_weight_decay: float = 0.0
    zero_init_residual: bool = True
    gate_noise: float = 1.0
    energy_term: str = "decisions"
    gate_units: int = 10
    gate_bias_init: float = 1.0
    removed_blocks: Tuple[int, ...] = ()
    batch_shaping_prior: Tuple[float, float] = (0.6, 0.4)
    momentum: float = 0.9
    init_from: Optional[str] = None
    keep_checkpoints: int = 2
    checkpoint_every_steps: int = 100
    pin_checkpoints: Tuple[int, ...] = ()
    deterministic: bool = True
    verbose: bool = True
    evaluate_test: bool = True
    strategy: str = "default"
    mixed_precision: str = "float32"
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    inplace_distill: Optional[float] = None
    inplace_temperature: float = 1.0
    drop_blocks: float = 0.0

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"RunConfig.{name} must be {expected}; received: {getattr(self, name)!r}")

        if not isinstance(self.model_dir, str) or not self.model_dir:
            fail("model_dir", "a directory path")
        if self.dataset not in DATASETS:
            fail("dataset", f"one of {DATASETS}")
        if self.depth not in backbone.SUPPORTED_DEPTHS:
            fail("depth", f"one of {', '.join(map(str, backbone.SUPPORTED_DEPTHS))}")
        if not isinstance(self.schedule, PhaseSchedule):
            fail("schedule", "a PhaseSchedule")
        if not isinstance(self.accelerator, AcceleratorConfig):
            fail("accelerator", "an AcceleratorConfig")
        for name in ("batch_size", "eval_batch_size", "gate_units", "keep_checkpoints"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "a positive integer")
        for name in ("seed", "checkpoint_every_steps"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                fail(name, "a positive integer or None")
        if not (self.validation_examples == "auto" or (_is_int(self.validation_examples)
                                                        and self.validation_examples >= 0)):
            fail("validation_examples", "an integer >= 0 (or 'auto' for Tiny ImageNet)")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 32):
            fail("image_size", "an integer >= 32 or None")
        for name in ("weight_decay", "decoupled_weight_decay", "gate_noise", "momentum"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                fail(name, "a finite number >= 0")
        if self.momentum >= 1:
            fail("momentum", "in [0, 1)")
        if not _is_number(self.gate_bias_init):
            fail("gate_bias_init", "a finite number")
        if self.energy_term not in ENERGY_TERMS:
            fail("energy_term", f"one of {ENERGY_TERMS}")
        if self.strategy not in STRATEGIES:
            fail("strategy", f"one of {STRATEGIES}")
        if self.mixed_precision not in PRECISIONS:
            fail("mixed_precision", f"one of {PRECISIONS}")
        if not _is_number(self.distill_weight) or self.distill_weight < 0:
            fail("distill_weight", "a finite number >= 0")
        if not _is_number(self.distill_temperature) or self.distill_temperature <= 0:
            fail("distill_temperature", "a finite number > 0")
        if self.distill_weight > 0 and not self.init_from:
            fail("distill_weight", "0 without init_from (the teacher is the init_from model)")
        if self.inplace_distill is not None:
            if not _is_number(self.inplace_distill) or not 0 <= self.inplace_distill <= 1:
                fail("inplace_distill", "a number in [0, 1] (or unset: off)")
            if self.baseline:
                fail("inplace_distill", "unset for a baseline (with no gates the full path is the only path)")
        if not _is_number(self.inplace_temperature) or self.inplace_temperature <= 0:
            fail("inplace_temperature", "a finite number > 0")
        if not _is_number(self.drop_blocks) or not 0 <= self.drop_blocks < 1:
            fail("drop_blocks", "a number in [0, 1)")
        if self.drop_blocks > 0 and self.baseline:
            fail("drop_blocks", "0 for a baseline (it drops blocks in the gate warm-up of a gated network)")
        if self.drop_blocks > 0 and self.schedule.gate_warmup_epochs == 0:
            fail("drop_blocks", "0 without a gate warm-up (--gate_warmup_epochs > 0): it applies only there")
        if not isinstance(self.pin_checkpoints, tuple) or any(not _is_int(e) or e < 1 for e in self.pin_checkpoints):
            fail("pin_checkpoints", "a tuple of epochs >= 1")
        if not isinstance(self.removed_blocks, tuple) or any(not _is_int(b) or b < 1 for b in self.removed_blocks):
            fail("removed_blocks", "a tuple of gated block numbers >= 1")
        if len(set(self.removed_blocks)) != len(self.removed_blocks):
            fail("removed_blocks", "distinct block numbers")
        if self.removed_blocks:
            if not self.baseline:
                fail("removed_blocks", "empty unless baseline is set (a gated network's gates choose the blocks)")
            num_gates = backbone.backbone_spec(self.depth).num_blocks - 1
            if max(self.removed_blocks) > num_gates:
                fail("removed_blocks", f"gated block numbers in [1, {num_gates}] for depth {self.depth}")
        prior = self.batch_shaping_prior
        if (not isinstance(prior, tuple) or len(prior) != 2
                or not all(_is_number(v) and v > 0 for v in prior)):
            fail("batch_shaping_prior", "two positive numbers (a, b)")
        for name in ("baseline", "zero_init_residual", "deterministic", "verbose", "evaluate_test"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")

    def to_dict(self):
        """The JSON form written as config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Reads `to_dict()`'s form back, or the flat config.json of earlier versions.

        Raises:
            ValueError: for unknown keys or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a run configuration must be a JSON object; received: {type(data).__name__}")
        data = dict(data)
        schedule_fields = {f.name for f in dataclasses.fields(PhaseSchedule)}
        schedule = dict(data.pop("schedule", {}) or {})
        for name in list(data):
            if name in schedule_fields:  # an earlier version's flat file
                schedule[name] = data.pop(name)
        accelerator = data.pop("accelerator", {}) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run configuration keys: {', '.join(unknown)}")
        for name in ("pin_checkpoints", "removed_blocks", "batch_shaping_prior"):
            if name in data:
                data[name] = tuple(data[name])
        for name in ("reinforce_phases", "batch_shaping_phases"):
            if name in schedule:
                schedule[name] = tuple(schedule[name])
        return cls(schedule=PhaseSchedule(**schedule), accelerator=AcceleratorConfig(**accelerator), **data)

    def differences(self, other):
        """Dotted names of the fields (not `RESUMABLE`) whose values differ from `other`'s, with both values."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in RESUMABLE:
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if dataclasses.is_dataclass(mine):
                # Where the phase III reference lies is not what the run is (a hard-linked copy is the same).
                out += [(f"{f.name}.{g.name}", getattr(mine, g.name), getattr(theirs, g.name))
                        for g in dataclasses.fields(mine) if getattr(mine, g.name) != getattr(theirs, g.name)
                        and g.name != "restore_reference"]
            elif mine != theirs:
                out.append((f.name, mine, theirs))
        return out
