"""Flags and the run driver shared by the trainers (flags live only in trainers/)."""

import json
import os
import sys
import time

# Keep TensorFlow's C++ start-up chatter out of the progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

FLAGS = flags.FLAGS



from energynet_tf import cli  # noqa: E402
from energynet_tf.cli import UsageError  # noqa: E402  (re-exported for the trainers)


def define_flags(default_depth, default_batch_size=128):
    """Defines the flags common to the trainers."""
    flags.DEFINE_string("data_dir", None, "Data directory (see the trainer's doc); falls back to TFDS_DATA_DIR.")
    flags.DEFINE_string("model_dir", None, "Run directory: checkpoints, TensorBoard logs, metrics.json, config.json, model.keras. Rerun with the same directory to resume.")
    flags.DEFINE_integer("depth", default_depth, "Network depth: 8, 14, 20, 26, 32, 38, 44, 56, 74, 110 (CIFAR ResNets) or 50 (ResNet-50).")
    flags.DEFINE_boolean("baseline", False, "Train the baseline: the same network without gates.")
    flags.DEFINE_integer("epochs", None, "Epochs per phase (EnergyNet: overrides --phase{1,2,3}_epochs) or in total (--baseline: overrides --phase1_epochs).")
    flags.DEFINE_integer("phase1_epochs", 160, "Phase I (alpha1) epochs at most; also the baseline's epochs.")
    flags.DEFINE_integer("phase2_epochs", 40, "Phase II (alpha2) epochs.")
    flags.DEFINE_integer("phase3_epochs", 20, "Phase III (alpha3) epochs, run only if phase II lost more than --restore_threshold points.")
    flags.DEFINE_float("alpha1", 0.1, "Energy weight of phase I.")
    flags.DEFINE_float("alpha2", 0.9, "Energy weight of phase II.")
    flags.DEFINE_float("alpha3", 0.1, "Energy weight of phase III.")
    flags.DEFINE_float("lr1", 0.1, "Peak learning rate of phase I (and of a baseline); cosine decay within each phase.")
    flags.DEFINE_float("lr2", 0.01, "Learning rate at the start of phase II.")
    flags.DEFINE_float("lr3", 0.001, "Learning rate at the start of phase III.")
    flags.DEFINE_integer("cosine_epochs", 0, "0: the learning rate restarts at each phase (--lr1/--lr2/--lr3, cosine within each). N > 0: one cosine from --lr1 to 0 over N epochs across the phases, the run's first epoch being --cosine_start_epoch (e.g. continue the decay of the baseline run --init_from was taken from).")
    flags.DEFINE_integer("cosine_start_epoch", 0, "With --cosine_epochs: the epoch of the one cosine at which this run starts (the --init_from checkpoint's epoch).")
    flags.DEFINE_integer("warmup_epochs", 0, "Linear learning-rate warm-up epochs at the start of phase I.")
    flags.DEFINE_integer("gate_warmup_epochs", 0, "First epochs of phase I in which every block runs in training whatever its gate decides (the gates still learn).")
    flags.DEFINE_float("restore_threshold", 0.1, "Phase III runs if phase II lost more than this many points of validation accuracy.")
    flags.DEFINE_float("target_accuracy", None, "End phase I early once validation accuracy reaches this (the baseline's), in [0, 1].")
    flags.DEFINE_integer("batch_size", default_batch_size, "Training batch size.")
    flags.DEFINE_integer("eval_batch_size", 256, "Evaluation batch size.")
    flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
    flags.DEFINE_integer("max_train_examples", None, "Train on the first N training examples only (smoke runs).")
    flags.DEFINE_float("weight_decay", 1e-4, "Coupled L2 weight decay on every weight (its gradient weight_decay * w is added, as in the CIFAR ResNet recipe).")
    flags.DEFINE_boolean("zero_init_residual", True, "Start each residual branch's last BN gamma at zero (blocks begin as their shortcuts).")
    flags.DEFINE_float("gate_lr_multiplier", 1.0, "The gates' learning rate as a multiple of the backbone's.")
    flags.DEFINE_float("phase3_gate_lr_multiplier", None, "The gates' learning-rate multiple in phase III (unset: --gate_lr_multiplier; 0 freezes the gates, so phase III retrains the backbone under phase II's skip pattern).")
    flags.DEFINE_float("decoupled_weight_decay", 0.0, "Keras SGD's decoupled weight decay (w -= lr * wd * w), off by default; 1e-4 with --weight_decay=0 is this project's recipe before the coupled decay (for ablations).")
    flags.DEFINE_float("gate_noise", 1.0, "Scale of the logistic noise on the gates' logits in training (1: each decision is a Bernoulli(p) sample; 0: deterministic p > 0.5).")
    flags.DEFINE_enum("energy_term", "decisions", ["expected", "decisions"], "What the loss charges: the energy of the decisions taken (straight-through gradient) or the expected energy of the soft probabilities.")
    flags.DEFINE_integer("alpha_ramp_epochs", 0, "Phase II ramps alpha linearly from alpha1 to alpha2 over this many epochs (0: a step).")
    flags.DEFINE_float("restore_z", 0.0, "Phase III runs if phase II lost more than restore_threshold plus this many standard errors of validation accuracy (0: the paper's test).")
    flags.DEFINE_integer("keep_checkpoints", 2, "Checkpoints to keep in model_dir/checkpoints (epoch ends and steps).")
    flags.DEFINE_integer("checkpoint_every_steps", 100, "Also checkpoint within an epoch every this many steps (0: at epoch ends only); a rerun resumes at that step. Ctrl-C and SIGTERM save the current step.")
    flags.DEFINE_list("pin_checkpoints", [], "Epochs whose checkpoints are never removed (e.g. the epoch an EnergyNet run starts from).")
    flags.DEFINE_float("momentum", 0.9, "SGD (Nesterov) momentum.")
    flags.DEFINE_integer("gate_units", 10, "Width of the gates' projections and shared LSTM cell.")
    flags.DEFINE_float("gate_bias_init", 1.0, "Initial bias of the gates' output unit (positive: gates start open).")
    flags.DEFINE_list("reinforce_phases", [], "Phases (1, 2, 3) that train the gates by REINFORCE (the authors' and SkipNet's second stage): decisions sampled, the blocks trained on the cross-entropy of the path that ran, the gates on --policy_weight times the policy loss of each image's return, -(its cross-entropy + the phase's alpha x the energy of the blocks it ran). E.g. 2,3: phase I straight-through, then reinforcement.")
    flags.DEFINE_float("policy_weight", 0.01, "Weight of the REINFORCE policy loss in --reinforce_phases (the authors' 0.01).")
    flags.DEFINE_float("reinforce_temperature", 1.0, "When the first --reinforce_phases phase begins, every gate's logit is divided by this once (> 1 softens gates that straight-through training saturated, so the sampled policy explores and its gradient is not ~0).")
    flags.DEFINE_float("exploration", 0.1, "In --reinforce_phases each decision is sampled from exploration/2 + (1 - exploration) * p, so saturated gates still explore; in [0, 1].")
    flags.DEFINE_float("batch_shaping_weight", 0.0, "Weight of the batch-shaping loss (Bejnordi et al. 2020) that matches each gate's probabilities over a batch to a Beta prior (0: off).")
    flags.DEFINE_list("batch_shaping_prior", ["0.6", "0.4"], "The Beta prior (a, b) of --batch_shaping_weight.")
    flags.DEFINE_list("batch_shaping_phases", ["1", "2", "3"], "Phases (1, 2, 3) in which --batch_shaping_weight applies (e.g. 1: the gates learn to be conditional in phase I, then the cross-entropy and the energy alone train them).")
    flags.DEFINE_integer("energy_warmup_epochs", 0, "Alpha is held at 0 for the first N epochs of phase I (with batch-shaping: gates learn to be conditional before they learn to save).")
    flags.DEFINE_list("removed_blocks", [], "With --baseline: gated blocks (numbered from 1, as the skip ratios) that the plain network never runs, each replaced by its shortcut: a fixed skip pattern trained from scratch (e.g. the blocks a trained EnergyNet skips for most images). Energies stay relative to the full network.")
    flags.DEFINE_string("init_from", None, "A baseline's model.keras (or run directory) whose weights initialise the backbone.")
    flags.DEFINE_integer("array_rows", 32, "Systolic array rows of the accelerator in the energy model.")
    flags.DEFINE_integer("array_cols", 32, "Systolic array columns.")
    flags.DEFINE_enum("dataflow", "os", ["os", "ws", "is"], "Dataflow: output, weight or input stationary.")
    flags.DEFINE_float("ifmap_sram_kb", 64, "Ifmap SRAM size in kB.")
    flags.DEFINE_float("filter_sram_kb", 64, "Filter SRAM size in kB.")
    flags.DEFINE_float("ofmap_sram_kb", 64, "Ofmap SRAM size in kB.")
    flags.DEFINE_boolean("deterministic", True, "TensorFlow op determinism: the same seed gives the same run.")
    flags.DEFINE_boolean("verbose", True, "Print progress.")
    flags.DEFINE_boolean("evaluate_test", True, "Evaluate the final model on the test split (searches turn it off: nothing is selected on the test set).")
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy: default (one device), mirrored (every local GPU), multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG; run the same command on every worker, with a --model_dir all of them see) or tpu. --batch_size is the global batch; only the chief writes. A run may resume under another strategy.")
    flags.DEFINE_enum("mixed_precision", "float32", ["float32", "bfloat16", "float16"], "The backbone's compute dtype: float32, or Keras' mixed_bfloat16 / mixed_float16 policy (variables, gates, energy and loss stay float32; float16 scales the loss). Recorded in config.json; a run resumes only with the precision it started with.")
    flags.DEFINE_float("distill_weight", 0.0, "With --init_from: the training loss adds this weight times T^2 KL(teacher || network) at temperature --distill_temperature, the teacher being the --init_from model (the network's own weights at the branch epoch, every block running): no extra data or epochs, one extra forward pass per step. 0: off.")
    flags.DEFINE_float("distill_temperature", 4.0, "The temperature T of --distill_weight.")
    flags.DEFINE_string("restore_reference", None, "With --cosine_epochs (one decay): a baseline run directory (or its metrics.json) of the same decay; the phase III test compares phase II's validation accuracy with the baseline's at the same epoch, and a phase II that kept it goes on at alpha2 to the end of the budget (read when the test is made; energynet_tf.schedule.PhaseSchedule).")
    flags.DEFINE_float("inplace_distill", None, "In-place distillation from the full path, W in [0, 1] (unset: off): every training step also runs every block (the full path, trained on the labels) and trains the gated path on W * T^2 * KL(full || gated) + (1 - W) * CE, the full path's logits detached, in one optimizer step (about 2x the step's cost).")
    flags.DEFINE_float("inplace_temperature", 1.0, "The temperature T of --inplace_distill (Adaptive Depth Networks use 1).")
    flags.DEFINE_float("drop_blocks", 0.0, "Stochastic depth in the gate warm-up, P in [0, 1): each gated block is skipped at random per image while the gates are forced open (--gate_warmup_epochs), survival falling linearly with depth to 1 - P at the last gated block; never at inference. 0: off.")
    flags.DEFINE_boolean("check_only", False, "Check the flags, the run directory and the data, then exit 0 without writing anything.")


def check_flags(extra_config):
    """Fills the run configuration in from the flags; returns a `run_config.RunConfig`.

    Every value is validated by the configuration (`RunConfig`,
    `PhaseSchedule`, `AcceleratorConfig`), in one place; this maps the flags
    onto it and names the flag of a refused value.

    Args:
        extra_config: the trainer's own `RunConfig` fields (dataset, validation split).

    Raises:
        UsageError: naming the flag, the value and what is allowed.
    """
    import dataclasses
    import re

    from energynet_tf.schedule import PhaseSchedule
    from energynet_tf.systolic.config import AcceleratorConfig
    from trainers.run_config import RunConfig

    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required: the run directory (e.g. --model_dir=runs/energynet38)")
    if FLAGS.epochs is not None and FLAGS.epochs < 1:
        raise UsageError(f"--epochs={FLAGS.epochs} must be a positive integer (or left unset)")
    try:
        pinned = tuple(sorted({int(e) for e in FLAGS.pin_checkpoints}))
    except ValueError:
        raise UsageError(f"--pin_checkpoints={','.join(FLAGS.pin_checkpoints)} must be a comma-separated list of epochs") from None
    try:
        reinforce_phases = tuple(int(p) for p in FLAGS.reinforce_phases)
    except ValueError:
        raise UsageError(f"--reinforce_phases={','.join(FLAGS.reinforce_phases)} must be a comma-separated list of "
                         "phases (1, 2, 3)") from None
    try:
        shaping_phases = tuple(int(p) for p in FLAGS.batch_shaping_phases)
    except ValueError:
        raise UsageError(f"--batch_shaping_phases={','.join(FLAGS.batch_shaping_phases)} must be a comma-separated "
                         "list of phases (1, 2, 3)") from None
    try:
        prior = tuple(float(v) for v in FLAGS.batch_shaping_prior)
    except ValueError:
        raise UsageError(f"--batch_shaping_prior={','.join(FLAGS.batch_shaping_prior)} must be two numbers a,b") from None
    try:
        removed = tuple(sorted(int(b) for b in FLAGS.removed_blocks))
    except ValueError:
        raise UsageError(f"--removed_blocks={','.join(FLAGS.removed_blocks)} must be a comma-separated list of "
                         "gated block numbers") from None
    phase_epochs = [FLAGS.phase1_epochs, FLAGS.phase2_epochs, FLAGS.phase3_epochs]
    if FLAGS.epochs is not None:
        phase_epochs = [FLAGS.epochs] * 3
    if FLAGS.baseline:
        phase_epochs = [phase_epochs[0], 0, 0]
    schedule_fields = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(PhaseSchedule)}
    schedule_fields.update(phase1_epochs=phase_epochs[0], phase2_epochs=phase_epochs[1],
                           phase3_epochs=phase_epochs[2], reinforce_phases=reinforce_phases,
                           batch_shaping_phases=shaping_phases)
    accelerator_fields = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(AcceleratorConfig)}
    top = {f.name: FLAGS[f.name].value for f in dataclasses.fields(RunConfig)
           if f.name in FLAGS and f.name not in ("schedule", "accelerator", "pin_checkpoints", "removed_blocks",
                                                 "batch_shaping_prior")
           and f.name not in extra_config}
    try:
        config = RunConfig(schedule=PhaseSchedule(**schedule_fields),
                           accelerator=AcceleratorConfig(**accelerator_fields),
                           pin_checkpoints=pinned, removed_blocks=removed, batch_shaping_prior=prior, **top,
                           **extra_config)
    except ValueError as e:
        # "RunConfig.batch_size ...", "PhaseSchedule.alpha2 ...": each field is its flag's name.
        match = re.search(r"\b(?:RunConfig|PhaseSchedule|AcceleratorConfig)\.(\w+)", str(e))
        if match and match.group(1) in FLAGS:
            name = match.group(1)
            value = FLAGS[name].value
            value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            raise UsageError(f"--{name}={value}: {e}") from None
        raise UsageError(str(e)) from None
    if config.init_from is not None and not os.path.exists(_model_file(config.init_from)):
        raise UsageError(f"--init_from={config.init_from}: no such model file ({_model_file(config.init_from)})")
    return config


def _model_file(path):
    return os.path.join(path, "model.keras") if os.path.isdir(path) else path


def check_run_dir(config):
    """Refuses a model_dir that holds a run of a different configuration.

    Raises:
        UsageError: naming the first differing setting.
    """
    from trainers.run_config import RunConfig

    path = os.path.join(config.model_dir, "config.json")
    if os.path.isdir(config.model_dir) and not os.path.exists(path):
        if os.path.exists(os.path.join(config.model_dir, "checkpoints")):
            raise UsageError(f"--model_dir={config.model_dir} has checkpoints but no config.json; use a new directory")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            previous = RunConfig.from_dict(json.load(f))
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"--model_dir={config.model_dir}: cannot read {path} ({e}); use a new directory") from None
    differences = previous.differences(config)
    if differences:
        key, before, now = differences[0]
        raise UsageError(
            f"--model_dir={config.model_dir} holds a run with {key}={before!r}, "
            f"but this run has {key}={now!r}; use the same flags to resume or a new --model_dir"
        )


def build_model(config, num_classes, image_shape):
    """Builds the run's `EnergyNet` from its resolved configuration."""
    from energynet_tf.model import EnergyNet
    from energynet_tf.terms import InplaceDistillation

    return EnergyNet(
        depth=config.depth,
        num_classes=num_classes,
        image_shape=image_shape,
        baseline=config.baseline,
        gate_units=config.gate_units,
        gate_bias_init=config.gate_bias_init,
        alpha=config.schedule.alpha1,
        accelerator=config.accelerator,
        weight_decay=config.weight_decay,
        zero_init_residual=config.zero_init_residual,
        # gate_lr_multiplier is not set here: the phase schedule assigns it each epoch.
        gate_noise=config.gate_noise,
        energy_term=config.energy_term,
        removed_blocks=config.removed_blocks,
        # policy_weight, exploration and batch_shaping_weight are set by the phase schedule each epoch.
        batch_shaping_prior=config.batch_shaping_prior,
        gate_losses=(("reinforce",) if config.schedule.reinforce_phases else ())
        + (("batch_shaping",) if config.schedule.batch_shaping_weight > 0 else ()),
        loss_terms=[] if config.inplace_distill is None else [
            InplaceDistillation(config.inplace_distill, config.inplace_temperature)],
        drop_blocks=config.drop_blocks,
        dtype=None if config.mixed_precision == "float32" else f"mixed_{config.mixed_precision}",
    )


def init_from_baseline(model, path):
    """Copies a baseline's backbone weights (stem, blocks, head) into `model`."""
    import keras

    source = keras.saving.load_model(_model_file(path), compile=False)
    if source.depth != model.depth or source.image_shape != model.image_shape or source.num_classes != model.num_classes:
        raise UsageError(
            f"--init_from={path} is a depth-{source.depth} model for {source.image_shape} images and "
            f"{source.num_classes} classes; this run needs depth {model.depth}, {model.image_shape}, {model.num_classes}"
        )
    layers = ["stem_conv", "stem_bn", "classifier"] + [b.name for b in model.res_blocks]
    for name in layers:
        model.get_layer(name).set_weights(source.get_layer(name).get_weights())


def attach_teacher(model, config):
    """With `config.distill_weight` > 0, makes the `--init_from` model `model`'s distillation teacher.

    Returns:
        The teacher, or None.
    """
    if config.distill_weight <= 0:
        return None
    import keras

    teacher = keras.saving.load_model(_model_file(config.init_from), compile=False)
    model.set_teacher(teacher, config.distill_weight, config.distill_temperature)
    return teacher


def run(config, make_model, make_data, top5=False, check_only=False):
    """Builds, trains and evaluates; writes config.json first.

    Args:
        config: the resolved configuration from `check_flags`.
        make_model: `f(config)` returning an `EnergyNet`.
        make_data: `f(config)` returning a `data.common.ClassificationData`.
        top5: report top-5 accuracy.
        check_only: stop after checking the run directory and the data
            (tools check a trainer configuration this way before writing).

    Returns:
        The metrics dict (None with `check_only`).
    """
    from energynet_tf import cli

    # Before TensorFlow starts, and with --check_only too: a user learns it before a long run.
    cli.warn_precision(config.mixed_precision)
    import tensorflow as tf

    from energynet_tf import distribute

    check_run_dir(config)
    if config.strategy == "multi_worker":
        try:
            distribute.check_tf_config(os.environ.get("TF_CONFIG"))
        except ValueError as e:
            raise UsageError(f"--strategy=multi_worker: {e}") from None
    if config.deterministic:
        # Op determinism alone is not enough on CPU: oneDNN kernels running
        # concurrently on the inter-op pool change float summation order
        # between runs (seen here: 1e-5 relative after one epoch, then
        # different gate decisions). One inter-op thread keeps every kernel's
        # own intra-op parallelism, at no measurable cost (BUILD.md).
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()
    strategy = None
    if not check_only:
        # MultiWorkerMirroredStrategy configures collective ops: before any other TensorFlow op.
        try:
            strategy = distribute.make_strategy(config.strategy)
        except ValueError as e:
            raise UsageError(f"--strategy={config.strategy}: {e}") from None
    # Data problems (missing dataset, bad sizes) surface before anything is written.
    try:
        data = make_data(config)
    except ValueError as e:
        # The loaders check the sizes and seed the flags gave them.
        raise UsageError(f"the data: {e}") from None
    if check_only:
        if config.verbose:
            print(f"check_only: the flags, --model_dir and the data are usable ({data.steps_per_epoch} steps per epoch)", flush=True)
        return None
    if config.batch_size % strategy.num_replicas_in_sync:
        raise UsageError(f"--batch_size={config.batch_size} is the global batch: it must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas")
    if distribute.is_chief(strategy):
        return _run_in(config, config.model_dir, strategy, make_model, data, top5)
    # A non-chief worker computes what the chief computes (collective ops need
    # every worker) but writes into a scratch directory, deleted at the end;
    # it resumes from the chief's checkpoints.
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="energynet-worker-")
    if config.verbose:
        print(f"worker {strategy.cluster_resolver.task_type} {strategy.cluster_resolver.task_id}: the chief "
              f"writes {config.model_dir}; this worker resumes from it and writes nothing there", flush=True)
    try:
        return _run_in(config, scratch, strategy, make_model, data, top5, resume_dir=config.model_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_in(config, write_dir, strategy, make_model, data, top5, resume_dir=None):
    """Builds the model in `strategy`'s scope and trains it, writing into `write_dir`."""
    import keras

    from energynet_tf import distribute
    from energynet_tf import io_utils
    from energynet_tf import training

    # One process per run directory: a second trainer on it stops here (io_utils.DirectoryLock).
    with io_utils.DirectoryLock(write_dir, " ".join(sys.argv)):
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            try:
                model = make_model(config)
            except ValueError as e:
                raise UsageError(f"the model: {e}") from None
            if config.init_from:
                init_from_baseline(model, config.init_from)
            attach_teacher(model, config)
        os.makedirs(write_dir, exist_ok=True)
        io_utils.atomic_write_json(os.path.join(write_dir, "config.json"), config.to_dict())
        if config.verbose:
            table = model.energy_table
            print(
                f"EnergyNet depth {config.depth}{' baseline' if config.baseline else ''}: "
                f"{model.count_params():,} parameters, {0 if config.baseline else model.num_gates} gates; E_total {table.total_energy:.4g}, "
                f"E_fixed {table.fixed_energy / table.total_energy:.1%}, E_gates {table.gate_energy / table.total_energy:.3%} of E_total",
                flush=True,
            )
        with strategy.scope():
            optimizer = training.make_optimizer(momentum=config.momentum,
                                                weight_decay=config.decoupled_weight_decay or None)
        metrics = training.train_and_evaluate(
            model,
            data,
            write_dir,
            config.schedule,
            config.batch_size,
            optimizer,
            top5=top5,
            verbose=config.verbose,
            keep_checkpoints=config.keep_checkpoints,
            pinned_epochs=config.pin_checkpoints,
            evaluate_test=config.evaluate_test,
            checkpoint_every_steps=config.checkpoint_every_steps,
            strategy=strategy,
            resume_dir=resume_dir,
        )
        if distribute.is_multi_worker(strategy):
            # Every worker holds the same variables after a synchronous job: a digest each can print.
            resolver = strategy.cluster_resolver
            print(f"worker {resolver.task_type} {resolver.task_id}: weights sha256 "
                  f"{distribute.weights_digest(model)}", flush=True)
        return metrics


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so both stop training the same way."""

    exit_status = 143


def _on_sigterm(signum, frame):
    del signum, frame
    raise _Terminated()


# Exit status of a run stopped by a full device (2: usage or data, 3: training failed, 130/143: signals).
NO_SPACE_STATUS = cli.NO_SPACE_STATUS


def _no_space_message(error):
    """One line for a full device: the path, the checkpoint kept, and what to do."""
    from energynet_tf import io_utils
    from energynet_tf import training

    path = io_utils.no_space_path(error)
    what = str(error) if isinstance(error, io_utils.NoSpaceError) else (
        f"no space left on the device{' writing ' + str(path) if path else ''}")
    kept = "no checkpoint yet"
    model_dir = FLAGS.model_dir if "model_dir" in FLAGS else None
    if model_dir:
        latest = training.RunCheckpoints(os.path.join(model_dir, "checkpoints")).latest(read_only=True)
        if latest is not None:
            kept = (f"the last complete checkpoint ({training.checkpoint_position(latest[1])}) is kept: "
                    f"{latest[0]}")
    return f"{what}; {kept}; free space on that device and rerun the same command to resume"


def main_guard(fn):
    """Runs `fn()`; the project's usage and data errors print one line to stderr and exit with status 2.

    `UsageError` (bad flags, and values the library refused at the trainers'
    input boundary: data sizes, the model's and the schedule's arguments),
    `DataNotFoundError` and `DirectoryInUseError` are one line; any other
    exception keeps its traceback.

    Ctrl-C (SIGINT) and SIGTERM print one line saying where training stood,
    which checkpoint is kept and how to resume, and exit with 130 and 143.
    """
    import signal

    logging.set_verbosity(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    start = time.time()
    try:
        metrics = fn()
    except UsageError as e:
        cli.fail(e, 2)
    except KeyboardInterrupt as e:
        # Outside training (start-up, evaluation, saving): nothing partial is left (atomic writes).
        # A second Ctrl-C while this line prints stops at once.
        cli.fail(f"interrupted ({'SIGTERM' if isinstance(e, _Terminated) else 'SIGINT'}) outside training; "
                 "the run's checkpoints are whole; rerun the same command to resume", getattr(e, "exit_status", 130))
    except Exception as e:  # noqa: BLE001 - only the known kinds below are turned into one line
        # Imported here: a bad flag must be reported before TensorFlow loads.
        from energynet_tf import training
        from energynet_tf.data import common as data_common

        from energynet_tf import io_utils

        # The project's own usage and data errors are one line; anything else
        # (a ValueError from a bug included) keeps its traceback.
        if isinstance(e, (data_common.DataNotFoundError, io_utils.DirectoryInUseError)):
            cli.fail(e, 2)
        if isinstance(e, training.TrainingError):
            cli.fail(e, 3)
        if io_utils.is_no_space(e):
            cli.fail(_no_space_message(e), NO_SPACE_STATUS)
        import tensorflow as tf

        if isinstance(e, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
            # A peer died or cannot be reached: this worker cannot go on alone.
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            telling = [line for line in lines if any(w in line for w in ("unhealthy", "aborted", "Connection", "/job:"))]
            detail = (telling or lines or [""])[0][:300]
            cli.fail(f"another worker stopped or cannot be reached ({type(e).__name__}: {detail}); rerun every "
                     "worker's command to resume the job from the chief's last checkpoint", 3)
        if isinstance(e, training.Interrupted):
            import shlex

            trainer = os.path.splitext(os.path.basename(sys.argv[0]))[0]
            resume = " ".join(["python -m trainers." + trainer] + [shlex.quote(a) for a in sys.argv[1:]])
            cli.fail(f"{e}: {resume}", e.exit_status)
        raise
    if metrics is not None and FLAGS.verbose:
        summary = {k: metrics[k] for k in ("test_accuracy", "energy_savings", "block_energy_savings", "mac_savings", "epochs") if k in metrics}
        print(f"done in {time.time() - start:.0f}s: {json.dumps(summary)}", flush=True)


parse_flags_or_exit = cli.parse_flags_or_exit
