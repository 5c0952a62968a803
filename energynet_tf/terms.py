"""Training signals as parts: small serialisable loss terms that `EnergyNet`'s training step sums.

Each term takes its configuration in its constructor and returns one scalar
from a training step's outputs (`Step`), the way Keras composes regularizers
and losses: `EnergyNet._step` adds the compiled cross-entropy and then every
term of `EnergyNet.loss_terms`, each divided by the number of replicas (Keras
loss objects already divide by it; hand-made terms must be scaled the same
way, docs/design.md §4). Mutable weights (alpha, the policy and batch-shaping
weights) stay non-trainable variables of the model that the phase callback
assigns; a term reads them from the model, so a schedule changes them without
retracing the step.

Adding a signal is a class here (registered, with `get_config`) and a flag
that appends it to the model's `loss_terms` (`trainers/common.py`).
"""

import abc
import dataclasses
from typing import Any, Optional

import keras
import numpy as np
from keras import ops

from energynet_tf import reinforce

PACKAGE = "energynet_tf"


@dataclasses.dataclass
class Step:
    """What a training or evaluation step hands its loss terms.

    Attributes:
        x, y, sample_weight: the batch.
        out: `EnergyNet.forward`'s outputs of the gated path (`logits`,
            `probabilities`, `masks`, `decisions`, in training `behaviour`).
        cross_entropy: the compiled loss (already divided by the replicas).
        image_cross_entropy: each image's cross-entropy of the gated path.
        training: whether this is a training step.
        full_logits: in training, when a term `needs_full_path`, the logits
            of the same images with every block running (else None).
    """

    x: Any
    y: Any
    sample_weight: Any
    out: dict
    cross_entropy: Any
    image_cross_entropy: Any
    training: bool
    full_logits: Optional[Any] = None


def _check_number(name, value, low, high=None, low_open=False, high_open=False, owner="LossTerm"):
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        span = ("(" if low_open else "[") + f"{low}, " + ("inf)" if high is None else f"{high}" + (
            ")" if high_open else "]"))
        raise ValueError(f"Argument `{name}` of {owner} must be a finite number in {span}; received: {value!r}")
    return float(value)


class LossTerm(abc.ABC):
    """One training signal: `term(model, step)` is a scalar the model adds to its loss.

    Attributes:
        training_only: the term is left out of evaluation steps.
        needs_full_path: the step must also run every block (`Step.full_logits`).
        serialised: the term is part of the model's config (a runtime term,
            such as a teacher model's, is not).
    """

    training_only = False
    needs_full_path = False
    serialised = True

    @abc.abstractmethod
    def __call__(self, model, step):
        """The term's scalar for `model` (an `EnergyNet`) and `step` (a `Step`), before the replica scaling."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


def _reinforce_stage(model, step):
    """1.0 in the reinforcement stage (a REINFORCE term and `policy_weight` > 0), else 0.0 (a tensor)."""
    return ops.cast(ops.greater(model.policy_weight, 0.0), step.cross_entropy.dtype)


def _gated_training(model, step):
    """Whether the step trains gates (training, with gates, whose forward pass sampled a behaviour)."""
    return step.training and "behaviour" in step.out


@keras.saving.register_keras_serializable(package=PACKAGE)
class Energy(LossTerm):
    """`alpha` times the batch's mean normalised energy (docs/design.md §1.3).

    Args:
        charge: "expected": the soft probabilities, `(E_fixed + sum_b p_b
            E_b) / E_total`; "decisions": the straight-through masks the
            forward pass ran (`model.EnergyNet`'s `energy_term`).
    """

    def __init__(self, charge="expected"):
        if charge not in ("expected", "decisions"):
            raise ValueError(f"Argument `charge` of Energy must be 'expected' or 'decisions'; received: {charge!r}")
        self.charge = charge

    def __call__(self, model, step):
        charged = step.out["masks"] if self.charge == "decisions" else step.out["probabilities"]
        energy = ops.mean(model.expected_energy(charged))
        alpha = ops.cast(model.alpha, step.cross_entropy.dtype)
        if _gated_training(model, step) and any(isinstance(t, Reinforce) for t in model.loss_terms):
            # The reinforcement stage charges the energy in each image's return only.
            return (1.0 - _reinforce_stage(model, step)) * alpha * energy
        return alpha * energy

    def get_config(self):
        return {"charge": self.charge}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Reinforce(LossTerm):
    """`policy_weight` times the REINFORCE loss of each image's return (`reinforce`; training only).

    The return is minus the image's cross-entropy and alpha times the energy
    of the blocks it ran from each gate on, with a leave-one-out baseline.
    The decisions themselves are sampled by the forward pass (the model's
    `gate_losses` holds "reinforce").
    """

    training_only = True

    def __call__(self, model, step):
        if not _gated_training(model, step):
            return ops.zeros((), step.cross_entropy.dtype)
        alpha = ops.cast(model.alpha, step.cross_entropy.dtype)
        returns = reinforce.returns_to_go(
            ops.stop_gradient(step.image_cross_entropy), step.out["masks"],
            np.asarray(model.energy_table.block_energy, np.float32) / model.energy_table.total_energy, alpha)
        advantages = reinforce.leave_one_out_advantages(returns)
        policy = reinforce.policy_loss(step.out["behaviour"], step.out["masks"], advantages)
        return ops.cast(model.policy_weight, step.cross_entropy.dtype) * policy


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchShaping(LossTerm):
    """`batch_shaping_weight` times Bejnordi et al.'s batch-shaping loss on the gates (training only).

    Args:
        prior: `(a, b)` of the Beta prior each gate's probabilities over a
            batch are matched to.
    """

    training_only = True

    def __init__(self, prior=(0.6, 0.4)):
        prior = tuple(prior) if hasattr(prior, "__len__") else ()
        if len(prior) != 2:
            raise ValueError(f"Argument `prior` of BatchShaping must be two positive numbers (a, b); "
                             f"received: {prior!r}")
        self.prior = tuple(_check_number("prior", v, 0, low_open=True, owner="BatchShaping") for v in prior)

    def __call__(self, model, step):
        if not _gated_training(model, step):
            return ops.zeros((), step.cross_entropy.dtype)
        a, b = self.prior
        shaping = reinforce.batch_shaping_loss(step.out["probabilities"], a, b)
        return ops.cast(model.batch_shaping_weight, step.cross_entropy.dtype) * shaping

    def get_config(self):
        return {"prior": list(self.prior)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightDecay(LossTerm):
    """Coupled L2: `weight_decay / 2 * sum(w**2)` over the trainable weights (gradient `weight_decay * w`).

    Args:
        weight_decay: > 0.
    """

    def __init__(self, weight_decay):
        self.weight_decay = _check_number("weight_decay", weight_decay, 0, low_open=True, owner="WeightDecay")

    def __call__(self, model, step):
        total = ops.sum(ops.stack([ops.sum(ops.square(w)) for w in model.trainable_weights]))
        return 0.5 * self.weight_decay * total

    def get_config(self):
        return {"weight_decay": self.weight_decay}


def tempered_kl(teacher_logits, logits, temperature):
    """`T^2 * KL(softmax(t / T) || softmax(s / T))`, averaged over the batch (Hinton et al. 2015)."""
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(logits, "float32") / temperature
    target = ops.softmax(t, axis=-1)
    kl = ops.sum(target * (ops.log_softmax(t, axis=-1) - ops.log_softmax(s, axis=-1)), axis=-1)
    return temperature * temperature * ops.mean(kl)


class TeacherDistillation(LossTerm):
    """`weight * T^2 * KL(teacher || network)` to a frozen teacher model's logits (training only).

    A runtime term (`EnergyNet.set_teacher`): the teacher is not part of the
    model, so the term is not in its config.

    Args:
        teacher: a Keras model mapping the same images to logits (run in
            inference mode, no gradient).
        weight, temperature: > 0.
    """

    training_only = True
    serialised = False

    def __init__(self, teacher, weight, temperature=4.0):
        self.teacher = teacher
        self.weight = _check_number("weight", weight, 0, low_open=True, owner="TeacherDistillation")
        self.temperature = _check_number("temperature", temperature, 0, low_open=True, owner="TeacherDistillation")

    def __call__(self, model, step):
        if not step.training:
            return ops.zeros((), "float32")
        teacher_logits = ops.stop_gradient(self.teacher(step.x, training=False))
        return self.weight * tempered_kl(teacher_logits, step.out["logits"], self.temperature)

    def get_config(self):
        return {"weight": self.weight, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package=PACKAGE)
class InplaceDistillation(LossTerm):
    """In-place distillation from the full path (Adaptive Depth Networks; slimmable networks' in-place KD).

    In each training step the full path (every block running) is trained on
    the labels and the gated path (the gates' sampled decisions) on
    `weight * T^2 * KL(full || gated) + (1 - weight) * CE(gated)`, the full
    path's logits detached in the KL, both in one optimizer step. The model's
    compiled cross-entropy already charges the gated path once, so the term is

        CE(full) + weight * T^2 * KL(stop_gradient(full) || gated) - weight * CE(gated)

    (the hand-made cross-entropies are batch means without sample weights).

    Args:
        weight: W in [0, 1]: 1 teaches the gated path by the full path
            alone, 0 by the labels alone (the full path still trains).
        temperature: T > 0 (Adaptive Depth Networks use 1).
    """

    training_only = True
    needs_full_path = True

    def __init__(self, weight=1.0, temperature=1.0):
        self.weight = _check_number("weight", weight, 0, 1, owner="InplaceDistillation")
        self.temperature = _check_number("temperature", temperature, 0, low_open=True, owner="InplaceDistillation")

    def __call__(self, model, step):
        if not step.training or step.full_logits is None:
            return ops.zeros((), "float32")
        y = ops.reshape(step.y, (-1,))
        full_ce = ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, ops.cast(step.full_logits, "float32"), from_logits=True))
        gated_ce = ops.mean(step.image_cross_entropy)
        kl = tempered_kl(ops.stop_gradient(step.full_logits), step.out["logits"], self.temperature)
        return full_ce + self.weight * kl - self.weight * gated_ce

    def get_config(self):
        return {"weight": self.weight, "temperature": self.temperature}


def builtin_terms(energy_term, gate_losses, batch_shaping_prior, weight_decay):
    """The terms `EnergyNet`'s own arguments define, in the order the training step sums them."""
    terms = [Energy(energy_term)]
    if "reinforce" in gate_losses:
        terms.append(Reinforce())
    if "batch_shaping" in gate_losses:
        terms.append(BatchShaping(batch_shaping_prior))
    if weight_decay > 0:
        terms.append(WeightDecay(weight_decay))
    return terms


def check_extra_terms(terms):
    """`terms` (LossTerm objects or their serialised dicts) as a list of `LossTerm`s.

    Raises:
        ValueError: for something that is not a `LossTerm`, or a built-in
            term (those come from `EnergyNet`'s own arguments).
    """
    if terms is None:
        return []
    if isinstance(terms, (str, bytes, dict, LossTerm)) or not hasattr(terms, "__iter__"):
        raise ValueError(f"Argument `loss_terms` must be a list of LossTerm objects; received: {terms!r}")
    out = []
    for term in terms:
        if isinstance(term, dict):
            term = keras.saving.deserialize_keras_object(term)
        if not isinstance(term, LossTerm):
            raise ValueError(f"Argument `loss_terms` must hold LossTerm objects; received: {term!r}")
        if isinstance(term, (Energy, Reinforce, BatchShaping, WeightDecay)):
            raise ValueError(f"Argument `loss_terms`: {type(term).__name__} is set by EnergyNet's own arguments "
                             "(energy_term, gate_losses, batch_shaping_prior, weight_decay); received it in loss_terms")
        if not term.serialised:
            raise ValueError(f"Argument `loss_terms`: {type(term).__name__} is a runtime term (set_teacher); "
                             "received it in loss_terms")
        out.append(term)
    return out

