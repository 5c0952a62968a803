"""The EnergyNet model: a gated ResNet trained on cross-entropy + alpha * energy."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from energynet_tf import backbone
from energynet_tf import blocks as blocks_lib
from energynet_tf import energy as energy_lib
from energynet_tf import evaluation
from energynet_tf import gates as gates_lib
from energynet_tf import metrics as metrics_lib
from energynet_tf import reinforce
from energynet_tf import systolic
from energynet_tf import terms as terms_lib

PACKAGE = "energynet_tf"


def _as_dataclass(value, cls, name):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"Argument `{name}` has unknown keys {unknown}; expected keys from {sorted(known)}"
            )
        return cls(**value)
    raise TypeError(
        f"Argument `{name}` must be a {cls.__name__} or a dict; received: {value!r}"
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class EnergyNet(keras.Model):
    """A residual network whose blocks are skipped per input by RNN gates.

    Block 0 always runs; the gate fed by block i's output decides block i + 1
    (docs/design.md §1.2). Training minimises cross-entropy + `alpha` * the normalised
    expected energy `(E_fixed + sum_b p_b E_b) / E_total` (docs/design.md §1.3), with
    hard decisions in the forward pass and straight-through gradients.

    Args:
        depth: 8, 14, 20, 26, 32, 38, 44, 56, 74, 110 (CIFAR ResNets) or 50 (ResNet-50).
        num_classes: number of classes.
        image_shape: `(height, width, channels)` of the inputs; the energy
            table depends on it.
        baseline: build the same network without gates (every block runs).
        gate_units: width of the gates' projections and shared LSTM cell.
        gate_bias_init: initial bias of the gates' output unit; positive
            starts with the gates open.
        alpha: initial energy weight; a non-trainable variable that callbacks
            change with `assign`.
        accelerator: `systolic.AcceleratorConfig` (or its dict) for the energy table.
        energy_costs: `systolic.EnergyCosts` (or its dict).
        weight_decay: coupled L2 weight decay: `weight_decay / 2 * sum(w**2)`
            over every trainable weight is added to the training loss, so
            its gradient is `weight_decay * w`, as in the CIFAR ResNet
            recipe (He et al. 2016) and PyTorch's SGD. 0 disables it.
        zero_init_residual: start each residual branch's last BN gamma at
            zero, so every block begins as its shortcut (Goyal et al. 2017).
        gate_lr_multiplier: initial value of `gate_lr_multiplier`, a
            non-trainable variable that scales the gates' gradients (their
            learning rate with SGD); 0 freezes the gates. Callbacks change it.
        gate_noise: initial value of `gate_noise`, a non-trainable variable:
            the scale of the logistic noise on the gates' logits in training
            (1: each decision is a Bernoulli(p) sample; 0: deterministic
            `p > 0.5`); see `gates.straight_through`. Inference is always
            deterministic.
        energy_term: "expected": the loss charges `sum_b p_b E_b` (soft
            probabilities, docs/design.md §1.3); "decisions": it charges the energy of
            the decisions taken in the forward pass, `sum_b m_b E_b`, with the
            same straight-through gradient as the cross-entropy's. The two
            have the same gradient for deterministic gates; with `gate_noise`
            only "decisions" weighs the energy and the cross-entropy through
            the same noisy sigmoid (with "expected", sampled gates open fully).
        removed_blocks: gated blocks (numbered from 1, as the gates: block
            b is decided by gate b - 1) that a `baseline` network never runs:
            each outputs its shortcut (the projection where the shape
            changes), exactly as a closed gate. A plain network of a fixed
            skip pattern (e.g. the one a trained EnergyNet learned), trained
            from scratch; its energy counts only the blocks it runs, against
            the same E_total as the full network.
        policy_weight: initial value of `policy_weight`, a non-trainable
            variable: 0 trains the gates straight-through (cross-entropy +
            alpha * energy); > 0 is the reinforcement stage (SkipNet's and the
            EnergyNet authors' second stage): each gate's decision is sampled
            from `exploration`'s mixture of its probability, the blocks train on
            the cross-entropy of the path that ran, and the gates only on
            `policy_weight` times the REINFORCE loss of each image's return,
            minus its cross-entropy and alpha times the energy of the blocks
            it ran (`reinforce.returns_to_go`; leave-one-out baseline).
        exploration: initial value of `exploration`, a non-trainable variable
            in [0, 1]: the reinforcement stage samples each decision from
            `exploration / 2 + (1 - exploration) * p`, so saturated gates
            still explore.
        batch_shaping_weight: initial value of `batch_shaping_weight`, a
            non-trainable variable: the weight of Bejnordi et al.'s
            batch-shaping loss on the gates' probabilities (0: off).
        batch_shaping_prior: `(a, b)` of its Beta prior (default (0.6, 0.4):
            mass at both ends, gates on for about 60% of the images).
        gate_losses: which of the extra gate losses the training step
            builds, from ("reinforce", "batch_shaping"); None: those whose
            initial weight (`policy_weight`, `batch_shaping_weight`) is > 0.
            Their weights are variables a schedule changes during a run, but
            the training graph is traced once: a loss left out here stays
            off whatever its weight (a schedule that needs it refuses the
            model), and leaving them out keeps the step of a plain
            straight-through run as small as before (its trace 1.5 s shorter).
        loss_terms: more training signals (`terms.LossTerm` objects, or their
            serialised dicts), summed after the built-in ones that the
            arguments above define (`terms.builtin_terms`: the energy, the
            REINFORCE and batch-shaping gate losses, the L2 weight decay);
            e.g. `[terms.InplaceDistillation(1.0, 1.0)]`. Saved in the config.
        drop_blocks: P in [0, 1): while the gates are forced open (the gate
            warm-up), each gated block is skipped at random per image in
            training, with a survival probability falling linearly with
            depth from 1 to 1 - P at the last gated block (stochastic depth,
            Huang et al. 2016), so that every block is skippable before the
            gates decide. A skipped block outputs its shortcut, unscaled, as
            a closed gate does. Never at inference, nor once the warm-up ends.
        **kwargs: base model arguments (`name`, ...).

    Raises:
        ValueError: for an unsupported depth, a bad shape, a negative alpha
            or bad `removed_blocks`.
    """

    def __init__(
        self,
        depth=38,
        num_classes=10,
        image_shape=(32, 32, 3),
        baseline=False,
        gate_units=10,
        gate_bias_init=1.0,
        alpha=0.1,
        accelerator=None,
        energy_costs=None,
        weight_decay=0.0,
        zero_init_residual=False,
        gate_lr_multiplier=1.0,
        gate_noise=0.0,
        energy_term="expected",
        removed_blocks=(),
        policy_weight=0.0,
        exploration=0.0,
        batch_shaping_weight=0.0,
        batch_shaping_prior=(0.6, 0.4),
        gate_losses=None,
        loss_terms=None,
        drop_blocks=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.spec = backbone.backbone_spec(depth)
        self.depth = depth
        self._configure(num_classes, image_shape, baseline, gate_units, gate_bias_init, alpha, accelerator,
                        energy_costs, weight_decay, zero_init_residual, gate_lr_multiplier, gate_noise, energy_term,
                        removed_blocks, policy_weight, exploration, batch_shaping_weight, batch_shaping_prior,
                        gate_losses, loss_terms, drop_blocks)

    def _configure(self, num_classes, image_shape, baseline, gate_units, gate_bias_init, alpha, accelerator,
                   energy_costs, weight_decay, zero_init_residual, gate_lr_multiplier, gate_noise, energy_term,
                   removed_blocks, policy_weight, exploration, batch_shaping_weight, batch_shaping_prior,
                   gate_losses, loss_terms=None, drop_blocks=0.0):
        """Checks the arguments every gated network shares, builds the structure (`_make_structure`) and
        the variables, and builds the model."""
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Argument `num_classes` must be an int >= 2; received: {num_classes!r}"
            )
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in image_shape):
            raise ValueError(
                "Argument `image_shape` must be three positive ints (height, width, "
                f"channels); received: {image_shape!r}"
            )
        alpha = float(alpha)
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"Argument `alpha` must be finite and >= 0; received: {alpha!r}")
        for name, value in (("weight_decay", weight_decay), ("gate_lr_multiplier", gate_lr_multiplier),
                            ("gate_noise", gate_noise), ("policy_weight", policy_weight),
                            ("exploration", exploration), ("batch_shaping_weight", batch_shaping_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"Argument `{name}` must be a finite number >= 0; received: {value!r}")
        if exploration > 1:
            raise ValueError(f"Argument `exploration` must be in [0, 1]; received: {exploration!r}")
        prior = tuple(batch_shaping_prior) if hasattr(batch_shaping_prior, "__len__") else ()
        if len(prior) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and np.isfinite(v) and v > 0 for v in prior):
            raise ValueError("Argument `batch_shaping_prior` must be two positive numbers (a, b) of a Beta "
                             f"distribution; received: {batch_shaping_prior!r}")
        self.batch_shaping_prior = tuple(float(v) for v in prior)
        if gate_losses is None:
            gate_losses = tuple(name for name, weight in (("reinforce", policy_weight),
                                                          ("batch_shaping", batch_shaping_weight)) if weight > 0)
        if isinstance(gate_losses, str) or any(g not in ("reinforce", "batch_shaping") for g in gate_losses):
            raise ValueError("Argument `gate_losses` must hold names from ('reinforce', 'batch_shaping'); "
                             f"received: {gate_losses!r}")
        self.gate_losses = tuple(sorted(set(gate_losses)))
        if energy_term not in ("expected", "decisions"):
            raise ValueError(
                f"Argument `energy_term` must be 'expected' or 'decisions'; received: {energy_term!r}")
        self.energy_term = energy_term
        if (isinstance(drop_blocks, bool) or not isinstance(drop_blocks, (int, float, np.number))
                or not np.isfinite(drop_blocks) or not 0 <= drop_blocks < 1):
            raise ValueError(f"Argument `drop_blocks` must be a number in [0, 1); received: {drop_blocks!r}")
        self.drop_blocks = float(drop_blocks)
        # Plain lists of plain objects, kept out of Keras' tracking (terms hold no variables).
        object.__setattr__(self, "extra_loss_terms", terms_lib.check_extra_terms(loss_terms))
        object.__setattr__(self, "_builtin_terms", terms_lib.builtin_terms(
            energy_term, self.gate_losses, self.batch_shaping_prior, float(weight_decay)))
        object.__setattr__(self, "_teacher_term", None)
        self.weight_decay = float(weight_decay)
        self.zero_init_residual = bool(zero_init_residual)
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.baseline = bool(baseline)
        self.gate_units = gate_units
        self.gate_bias_init = float(gate_bias_init)
        self.accelerator = _as_dataclass(accelerator, systolic.AcceleratorConfig, "accelerator")
        self.energy_costs = _as_dataclass(energy_costs, systolic.EnergyCosts, "energy_costs")

        self._make_structure(removed_blocks)
        self.alpha = self.add_weight(
            name="alpha",
            shape=(),
            initializer=keras.initializers.Constant(alpha),
            trainable=False,
        )
        # 1.0 while training runs every block whatever the gates decide (gate
        # warm-up, set by `callbacks.AlphaPhases`): a closed block gets no
        # gradient for its own weights, so gates that close before the blocks
        # have learned keep them useless and closed.
        self.gates_forced_open = self.add_weight(
            name="gates_forced_open",
            shape=(),
            initializer="zeros",
            trainable=False,
        )
        # Scales the gates' gradients: 0 while the gates are frozen (they
        # must not learn before the blocks they guard have), or a separate
        # learning rate for the few gate weights.
        self.gate_lr_multiplier = self.add_weight(
            name="gate_lr_multiplier",
            shape=(),
            initializer=keras.initializers.Constant(float(gate_lr_multiplier)),
            trainable=False,
        )
        self.gate_noise = self.add_weight(
            name="gate_noise",
            shape=(),
            initializer=keras.initializers.Constant(float(gate_noise)),
            trainable=False,
        )
        self.policy_weight = self.add_weight(
            name="policy_weight", shape=(), initializer=keras.initializers.Constant(float(policy_weight)),
            trainable=False)
        self.exploration = self.add_weight(
            name="exploration", shape=(), initializer=keras.initializers.Constant(float(exploration)),
            trainable=False)
        self.batch_shaping_weight = self.add_weight(
            name="batch_shaping_weight", shape=(),
            initializer=keras.initializers.Constant(float(batch_shaping_weight)), trainable=False)
        # 1.0 once the reinforcement stage has softened the gates (`soften_gates`):
        # saved with checkpoints, so a resumed run does not soften them twice.
        self.gates_softened = self.add_weight(
            name="gates_softened", shape=(), initializer="zeros", trainable=False)
        self._noise_seed = keras.random.SeedGenerator(1337, name="gate_noise_seed")
        self.energy_tracker = metrics_lib.EnergyMetrics(self.energy_table, name="energy_metrics")
        self.skip_tracker = metrics_lib.SkipRatios(self.num_gates, name="skip_ratios")
        self.ce_tracker = keras.metrics.Mean(name="cross_entropy")
        # Each image's return, -(CE + alpha * energy), and the gates' mean
        # entropy: whether a policy still explores (0: saturated gates).
        self.reward_tracker = keras.metrics.Mean(name="mean_reward")
        self.entropy_tracker = keras.metrics.Mean(name="policy_entropy")
        self.build((None,) + image_shape)

    # -- construction -------------------------------------------------------
    def _make_structure(self, removed_blocks):
        """Sets `energy_table`, `num_gates`, `removed_blocks` and the layers (a converted model has its own)."""
        self.plan = backbone.network_plan(self.spec, self.image_shape)
        self.energy_table = energy_lib.energy_table(
            self.spec,
            self.image_shape,
            self.num_classes,
            gate_units=None if self.baseline else self.gate_units,
            accelerator=self.accelerator,
            costs=self.energy_costs,
        )
        self.num_gates = self.spec.num_blocks - 1
        self.removed_blocks = self._check_removed_blocks(removed_blocks)
        self._build_layers()

    def _check_removed_blocks(self, removed_blocks):
        if isinstance(removed_blocks, (str, bytes)) or not hasattr(removed_blocks, "__iter__"):
            raise ValueError(f"Argument `removed_blocks` must be a list of gated block numbers; "
                             f"received: {removed_blocks!r}")
        removed = []
        for b in removed_blocks:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= self.num_gates:
                raise ValueError(f"Argument `removed_blocks` must hold gated block numbers in [1, {self.num_gates}] "
                                 f"(block 0 always runs); received: {list(removed_blocks)!r}")
            removed.append(int(b))
        if len(set(removed)) != len(removed):
            raise ValueError(f"Argument `removed_blocks` repeats a block; received: {list(removed_blocks)!r}")
        if removed and not self.baseline:
            raise ValueError("Argument `removed_blocks` is for a plain network (`baseline=True`): a gated "
                             "network's gates decide which blocks run")
        return tuple(sorted(removed))

    def fixed_decisions(self):
        """A baseline's decisions, the same for every image: 1 per gated block, 0 where removed.

        Returns:
            A float32 numpy array of shape `(num_gates,)`.
        """
        decisions = np.ones((self.num_gates,), np.float32)
        for b in self.removed_blocks:
            decisions[b - 1] = 0.0
        return decisions

    def _build_layers(self):
        # Every layer comes from the one walk of the stage table
        # (`backbone.network_plan`), which the energy table counts too.
        # The backbone takes the model's dtype policy (a mixed policy computes it in
        # float16/bfloat16 with float32 variables); the gate and the classifier
        # stay float32: the decisions, the energy and the loss are float32
        # (docs/experiments/mixed-precision.md).
        policy = self.dtype_policy
        stem = self.plan.stem
        self.stem_conv = keras.layers.Conv2D(
            stem.filters, stem.kernel, strides=stem.strides, padding="same", use_bias=False,
            kernel_initializer="he_normal", name="stem_conv", dtype=policy)
        self.stem_pool = (keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool", dtype=policy)
                          if stem.pool else None)
        self.stem_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="stem_bn", dtype=policy)
        self.res_blocks = [
            blocks_lib.BLOCK_CLASSES[plan.block](
                plan.filters, plan.strides, plan.projection, zero_init_residual=self.zero_init_residual,
                name=plan.name, dtype=policy)
            for plan in self.plan.blocks
        ]
        self.gate = None
        if not self.baseline and self.num_gates > 0:
            self.gate = gates_lib.RNNGate(
                self.num_gates, self.gate_units, self.gate_bias_init, name="gate", dtype="float32")
        for b in self.removed_blocks:
            # The residual branch never runs: its weights are not trained (nor
            # counted as trainable); a projection shortcut still runs.
            for layer in self.res_blocks[b].residual_convs + self.res_blocks[b].residual_bns:
                layer.trainable = False
        self.head_pool = keras.layers.GlobalAveragePooling2D(name="head_pool", dtype=policy)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier", dtype="float32")

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.stem_conv.build(shape)
        shape = self.stem_conv.compute_output_shape(shape)
        self.stem_bn.build(shape)
        if self.stem_pool is not None:
            shape = self.stem_pool.compute_output_shape(shape)
        for plan, block in zip(self.plan.blocks, self.res_blocks):
            if plan.gate is not None and self.gate is not None:
                self.gate.build_projection(plan.gate, shape[-1])
            block.build(shape)
            shape = block.compute_output_shape(shape)
        if self.gate is not None:
            self.gate.build(None)
        self.classifier.build((None, shape[-1]))
        self.built = True

    # -- structure ------------------------------------------------------------
    # The stem, the walk over the blocks and the head are the network's one
    # definition: `forward`, the exported serving graph (`export/serving.py`)
    # and the gate-programming helpers all run through them, each with its own
    # way of deciding and skipping a gated block.
    def stem(self, inputs, training=False):
        """The layers before block 0: convolution, BN, ReLU (and max pool)."""
        x = ops.relu(self.stem_bn(self.stem_conv(inputs), training=training))
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        return x

    def walk(self, x, decide=None, run=None, training=False):
        """Runs the residual blocks on the stem's output `x`, in order.

        Args:
            x: the stem's output.
            decide: None (every block runs), or `decide(gate_index, x)`
                returning the decision of gated block `gate_index + 1` from its
                input `x`; called once per gate, in order, so it may carry the
                gates' recurrent state.
            run: `run(block, x, decision)` returning a gated block's output
                for `decision`; default: `block(x, decision=decision)`, the
                training-time blend.
            training: training mode of the blocks run without `run`.

        Returns:
            The last block's output.
        """
        for plan, block in zip(self.plan.blocks, self.res_blocks):
            if plan.gate is not None and plan.gate + 1 in self.removed_blocks:
                x = block.shortcut(x, training=training)
                continue
            if plan.gate is None or decide is None:
                x = block(x, training=training)
                continue
            decision = decide(plan.gate, x)
            x = block(x, decision=decision, training=training) if run is None else run(block, x, decision)
        return x

    def head(self, x):
        """Global average pooling and the classifier: logits."""
        return self.classifier(self.head_pool(x))

    # -- forward --------------------------------------------------------------
    def _check_inputs(self, inputs):
        if not (inputs.dtype.is_floating if hasattr(inputs.dtype, "is_floating")
                else np.issubdtype(np.dtype(inputs.dtype), np.floating)):
            raise TypeError(
                f"EnergyNet expects float images of shape (batch,) + {self.image_shape}; "
                f"received dtype {inputs.dtype}"
            )
        shape = tuple(inputs.shape)
        if len(shape) != 4 or any(
            s is not None and s != e for s, e in zip(shape[1:], self.image_shape)
        ):
            raise ValueError(
                f"EnergyNet expects images of shape (batch,) + {self.image_shape}; "
                f"received shape {shape}"
            )

    @property
    def loss_terms(self):
        """The training signals the step sums after the cross-entropy, in order (`terms`)."""
        teacher = [self._teacher_term] if self._teacher_term is not None else []
        return list(self._builtin_terms) + list(self.extra_loss_terms) + teacher

    def full_path_logits(self, inputs, training=False):
        """The logits with every block running and no gate computed (the removed blocks of a plain network aside)."""
        return self.head(self.walk(self.stem(inputs, training=training), decide=None, training=training))

    def forward(self, inputs, training=False, gate_override=None, gate_uniform=None, threshold=None,
                drop_uniform=None):
        """Runs the network and returns logits with the gates' decisions.

        Args:
            inputs: float images, shape `(batch,) + image_shape`.
            training: training mode (batch statistics, straight-through masks).
            gate_override: None for the learned gates, or a float tensor of
                shape `(batch, num_gates)` or `(num_gates,)` of 0/1 decisions
                that replace them (the gates still run, for their cost).
            gate_uniform: None, or `(batch, num_gates)` uniform (0, 1) samples
                for the training noise of the gates (`train_step` draws them
                from the optimizer's step count, so a resumed run draws the
                same noise); None draws from the model's seed generator.
            threshold: None (0.5) or the probability above which a gated
                block runs at inference, in (0, 1): an operating point chosen
                at deployment (lower runs more blocks). A Python number or a
                scalar tensor; training always decides at 0.5.
            drop_uniform: None, or `(batch, num_gates)` uniform (0, 1)
                samples: in training, while the gates are forced open, gated
                block b (from 1) runs where its sample is below its survival
                probability `1 - drop_blocks * b / num_gates` (`train_step`
                draws them from the step count, as `gate_uniform`).

        Returns:
            A dict with `logits` `(batch, num_classes)`, `probabilities` (gate
            probabilities, `(batch, num_gates)`), `masks` (the decisions used,
            with straight-through gradients in training) and `decisions`
            (the hard 0/1 decisions, no gradient); in training of a gated
            network also `behaviour`, the probabilities the reinforcement
            stage samples from (`reinforce.explore`).
        """
        self._check_inputs(inputs)
        if threshold is not None and isinstance(threshold, (int, float, np.number)):
            evaluation.check_threshold(threshold)
        x = self.stem(inputs, training=training)
        batch = ops.shape(inputs)[0]
        probabilities, masks = [], []
        states = [None]
        if gate_override is not None:
            gate_override = ops.convert_to_tensor(gate_override, dtype="float32")
            if len(gate_override.shape) == 1:
                gate_override = ops.broadcast_to(gate_override[None, :], (batch, self.num_gates))

        behaviour = []

        def decide(index, x):
            p, states[0] = self.gate(x, gate_index=index, states=states[0], training=training)
            if gate_override is not None:
                m = gate_override[:, index]
            elif not training:
                m = gates_lib.straight_through(p, False, threshold=threshold)
            else:
                if gate_uniform is None:
                    # The draw straight_through would make: one stream for both ways of deciding.
                    u = keras.random.uniform(ops.shape(p), minval=1e-6, maxval=1.0 - 1e-6, dtype=p.dtype,
                                             seed=self._noise_seed)
                else:
                    u = ops.cast(gate_uniform[:, index], p.dtype)
                m = gates_lib.straight_through(
                    p, True, floor=self.gates_forced_open, noise=self.gate_noise, uniform=u)
                b = p
                if "reinforce" in self.gate_losses:
                    # The reinforcement stage (policy_weight > 0): a sample of the
                    # behaviour policy, with no gradient (the gates learn from the
                    # policy loss; the blocks from the cross-entropy of this path).
                    b = reinforce.explore(p, self.exploration)
                    sampled = ops.maximum(reinforce.sample_decisions(b, u), ops.cast(self.gates_forced_open, p.dtype))
                    rl = ops.cast(ops.greater(self.policy_weight, 0.0), p.dtype)
                    m = rl * ops.stop_gradient(sampled) + (1.0 - rl) * m
                if drop_uniform is not None:
                    # Stochastic depth in the gate warm-up only: forced-open gates are dropped at random.
                    survival = 1.0 - self.drop_blocks * (index + 1) / self.num_gates
                    keep = ops.cast(ops.less(ops.cast(drop_uniform[:, index], p.dtype), survival), p.dtype)
                    m = m * (1.0 - ops.cast(self.gates_forced_open, p.dtype) * (1.0 - keep))
                behaviour.append(b)
            probabilities.append(p)
            masks.append(m)
            return m

        x = self.walk(x, decide=None if self.gate is None else decide, training=training)
        logits = self.head(x)
        if masks:
            probabilities = ops.stack(probabilities, axis=1)
            masks = ops.stack(masks, axis=1)
        else:
            # A baseline: every block runs (but the removed ones).
            fixed = ops.convert_to_tensor(self.fixed_decisions(), dtype=logits.dtype)
            probabilities = ops.broadcast_to(fixed[None, :], (batch, self.num_gates))
            masks = probabilities
        decisions = ops.stop_gradient(ops.cast(ops.greater(masks, 0.5), logits.dtype))
        out = {
            "logits": logits,
            "probabilities": probabilities,
            "masks": masks,
            "decisions": decisions,
        }
        if behaviour:
            out["behaviour"] = ops.stack(behaviour, axis=1)
        return out

    def call(self, inputs, training=False):
        return self.forward(inputs, training=training)["logits"]

    # -- energy ---------------------------------------------------------------
    def expected_energy(self, probabilities):
        """Normalised expected energy per example, `(E_fixed + sum_b p_b E_b) / E_total`.

        Args:
            probabilities: `(batch, num_gates)` gate probabilities.

        Returns:
            A `(batch,)` tensor, differentiable in `probabilities`.
        """
        return metrics_lib.normalised_energy(self.energy_table, probabilities, include_gates=False)

    def inference_energy(self, decisions):
        """Normalised energy per example with hard decisions and the gates' cost.

        Args:
            decisions: `(batch, num_gates)` 0/1 decisions.

        Returns:
            A `(batch,)` tensor `(E_fixed + E_gates + sum_b m_b E_b) / E_total`.
        """
        return metrics_lib.normalised_energy(self.energy_table, decisions)

    # -- training -------------------------------------------------------------
    def _step_uniform(self, x, stream):
        """`(batch, num_gates)` uniform samples of the training step, a pure function of its count and `stream`.

        A run resumed from a checkpoint (which holds the optimizer's step
        count) draws the same samples. Replica r trains on rows [r * b,
        (r + 1) * b) of the global batch (distribute.shard_of_batches): it
        takes the same rows of the global batch's samples, so an example's
        samples do not depend on the number of replicas.
        """
        step = ops.cast(self.optimizer.iterations, "int32")
        seed = tf.stack([stream, step])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        context = tf.distribute.get_replica_context()
        if replicas > 1 and context is not None:
            local = ops.shape(x)[0]
            noise = tf.random.stateless_uniform((local * replicas, self.num_gates), seed=seed, dtype=tf.float32)
            start = ops.cast(context.replica_id_in_sync_group, "int32") * local
            return noise[start:start + local]
        return tf.random.stateless_uniform((ops.shape(x)[0], self.num_gates), seed=seed, dtype=tf.float32)

    def _step(self, data, training):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        gate_uniform = drop_uniform = None
        if training and self.gate is not None and getattr(self, "optimizer", None) is not None:
            gate_uniform = self._step_uniform(x, 1337)
            if self.drop_blocks > 0:
                drop_uniform = self._step_uniform(x, 7331)
        out = self.forward(x, training=training, gate_uniform=gate_uniform, drop_uniform=drop_uniform)
        # Keras loss objects already divide by the number of replicas; the
        # hand-made terms must be scaled the same way (docs/design.md §4).
        ce = self.compute_loss(x=x, y=y, y_pred=out["logits"], sample_weight=sample_weight, training=training)
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Each image's cross-entropy: its return in the reinforcement stage, and the logged mean reward.
        out["image_cross_entropy"] = keras.losses.sparse_categorical_crossentropy(
            ops.reshape(y, (-1,)), out["logits"], from_logits=True)
        terms = [t for t in self.loss_terms if training or not t.training_only]
        full_logits = None
        if training and any(t.needs_full_path for t in terms):
            full_logits = self.full_path_logits(x, training=True)
        step = terms_lib.Step(x=x, y=y, sample_weight=sample_weight, out=out, cross_entropy=ce,
                              image_cross_entropy=out["image_cross_entropy"], training=training,
                              full_logits=full_logits)
        loss = ce
        for term in terms:
            loss = loss + term(self, step) / num_replicas
        return x, y, sample_weight, out, ce, loss

    def set_teacher(self, teacher, weight, temperature=4.0):
        """Adds a distillation term from a frozen `teacher` to the training loss (None removes it).

        The training loss gains `weight * T^2 * KL(softmax(t / T) || softmax(s / T))`
        between the teacher's logits `t` (inference mode, no gradient) and
        this network's `s` (Hinton et al. 2015). With the network's own
        weights at the branch epoch as the teacher (`--distill_weight`, the
        trainers), the gated network is pulled towards what the full network
        predicted: no extra training data or epochs, one extra forward pass
        per step. The teacher is not part of the model (not saved, not
        trained); set it before `fit` (the training step is traced once).

        Args:
            teacher: a Keras model mapping the same images to logits, or None.
            weight: the term's weight, > 0.
            temperature: T, > 0.

        Raises:
            ValueError: for a weight or temperature that is not > 0.
        """
        term = None
        if teacher is not None:
            for name, value in (("weight", weight), ("temperature", temperature)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                        or value <= 0:
                    raise ValueError(f"Argument `{name}` must be a finite number > 0; received: {value!r}")
            teacher.trainable = False
            term = terms_lib.TeacherDistillation(teacher, weight, temperature)
        # Not tracked: the teacher's weights are neither trained nor saved with this model.
        object.__setattr__(self, "_teacher_term", term)

    def distillation_loss(self, teacher_logits, logits, temperature):
        """`T^2 * KL(softmax(t / T) || softmax(s / T))`, averaged over the batch (`terms.tempered_kl`)."""
        return terms_lib.tempered_kl(teacher_logits, logits, temperature)

    def soften_gates(self, temperature):
        """Divides every gate's logit by `temperature` once (the shared output unit's kernel and bias).

        Gates that straight-through training saturated (|logit| of 5-10) give
        REINFORCE nothing to learn from: a saturated sigmoid barely moves with
        its logit and a sampled policy explores nothing. The EnergyNet
        authors' second stage set the gates' temperature too (`hotter(0.05)`,
        sharpening gates their first stage left soft); here a temperature > 1
        softens them. Done once per model (`gates_softened`), so a resumed run
        does not soften twice.

        Returns:
            True if the gates were softened now.
        """
        if self.gate is None or temperature == 1.0 or float(self.gates_softened.numpy()) > 0:
            return False
        dense = self.gate.output_dense
        dense.kernel.assign(dense.kernel / temperature)
        dense.bias.assign(dense.bias / temperature)
        self.gates_softened.assign(1.0)
        return True

    def l2_penalty(self):
        """`weight_decay / 2 * sum(w**2)` over the trainable weights (coupled L2; `terms.WeightDecay`)."""
        return terms_lib.WeightDecay(self.weight_decay)(self, None) if self.weight_decay > 0 else 0.0

    def _gate_variable_ids(self):
        if self.gate is None:
            return set()
        return {id(v) for v in self.gate.trainable_weights}

    def _update_metrics(self, x, y, sample_weight, out, ce, loss):
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = ops.shape(out["logits"])[0]
        self._loss_tracker.update_state(loss * num_replicas, sample_weight=batch)
        self.ce_tracker.update_state(ce * num_replicas, sample_weight=batch)
        self.energy_tracker.update_state(out["decisions"], out["probabilities"])
        self.skip_tracker.update_state(out["decisions"])
        reward = -(out["image_cross_entropy"] + ops.cast(self.alpha, "float32") * self.inference_energy(out["decisions"]))
        self.reward_tracker.update_state(reward)
        if self.gate is not None:
            self.entropy_tracker.update_state(ops.mean(reinforce.entropy(out["probabilities"]), axis=1))
        return self.compute_metrics(x, y, out["logits"], sample_weight=sample_weight)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            x, y, sample_weight, out, ce, loss = self._step(data, training=True)
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.trainable_weights)
        gate_ids = self._gate_variable_ids()
        if gate_ids:
            scale = ops.cast(self.gate_lr_multiplier, "float32")
            gradients = [
                g * ops.cast(scale, g.dtype) if id(w) in gate_ids and g is not None else g
                for g, w in zip(gradients, self.trainable_weights)
            ]
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._update_metrics(x, y, sample_weight, out, ce, loss)

    def test_step(self, data):
        x, y, sample_weight, out, ce, loss = self._step(data, training=False)
        return self._update_metrics(x, y, sample_weight, out, ce, loss)

    # -- serialisation ----------------------------------------------------------
    def load_own_variables(self, store):
        """Loads the model's own variables (`alpha`, `gates_forced_open`, ...).

        Files of earlier versions hold a prefix of this list (`alpha` only,
        then also `gates_forced_open`, then `gate_lr_multiplier`, then
        `gate_noise`); the missing ones keep their constructor values.
        """
        variables = (self.alpha, self.gates_forced_open, self.gate_lr_multiplier, self.gate_noise,
                     self.policy_weight, self.exploration, self.batch_shaping_weight, self.gates_softened)
        if len(store.keys()) < len(variables):
            for i in range(len(store.keys())):
                variables[i].assign(store[str(i)])
            return
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "num_classes": self.num_classes,
                "image_shape": list(self.image_shape),
                "baseline": self.baseline,
                "gate_units": self.gate_units,
                "gate_bias_init": self.gate_bias_init,
                "alpha": float(self.alpha.numpy()) if hasattr(self, "alpha") else 0.1,
                "accelerator": dataclasses.asdict(self.accelerator),
                "energy_costs": dataclasses.asdict(self.energy_costs),
                "weight_decay": self.weight_decay,
                "zero_init_residual": self.zero_init_residual,
                "gate_lr_multiplier": (
                    float(self.gate_lr_multiplier.numpy()) if hasattr(self, "gate_lr_multiplier") else 1.0),
                "gate_noise": float(self.gate_noise.numpy()) if hasattr(self, "gate_noise") else 0.0,
                "energy_term": self.energy_term,
                "removed_blocks": list(self.removed_blocks),
                "policy_weight": float(self.policy_weight.numpy()) if hasattr(self, "policy_weight") else 0.0,
                "exploration": float(self.exploration.numpy()) if hasattr(self, "exploration") else 0.0,
                "batch_shaping_weight": (
                    float(self.batch_shaping_weight.numpy()) if hasattr(self, "batch_shaping_weight") else 0.0),
                "batch_shaping_prior": list(self.batch_shaping_prior),
                "gate_losses": list(self.gate_losses),
                "loss_terms": [keras.saving.serialize_keras_object(t) for t in self.extra_loss_terms],
                "drop_blocks": self.drop_blocks,
            }
        )
        return config

