"""Training throughput of EnergyNet variants, measured side by side in one run.

    python -m tools.bench_train_speed --depth=20 --steps=8 --repeats=3
    python -m tools.bench_train_speed --depth=38 --compare=precision   # float32 vs bfloat16
    python -m tools.bench_train_speed --depth=20 --compare=signals     # the step cost of each training signal

Each variant runs in its own process (threading must be set before TensorFlow
starts), alternating A, B, C, A, B, C, ... so that load on the machine hits
every variant alike; it prints the median images/s and the ratio to the
first variant. `--compare=modes` (default): gated EnergyNet with the trainer's
deterministic mode (one inter-op thread + op determinism), gated without it,
and the baseline (no gates) in deterministic mode. `--compare=precision`: the
gated EnergyNet in deterministic mode under `--mixed_precision` float32 and
bfloat16 (the trainers' flag). `--compare=signals`: the baseline's step
against the gated step, the gated step with in-place distillation
(`--inplace_distill`: a second forward and backward pass through every
block) and the gate warm-up's step with `--drop_blocks`.
"""

import json
import statistics
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags():
    # Defined only when run as a program: tools.reproduce imports `measure`.
    flags.DEFINE_integer("depth", 20, "Network depth.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_integer("steps", 8, "Timed training steps per measurement (after 2 warm-up steps).")
    flags.DEFINE_integer("repeats", 3, "Measurements per variant.")
    flags.DEFINE_enum("compare", "modes", ["modes", "precision", "signals"], "Which variants: the deterministic mode "
                      "and the gates (modes), the compute precision (precision), or the training signals' step cost "
                      "against the baseline's (signals).")

_WORKER = r"""
import json, sys, time
import numpy as np
depth, batch, steps, baseline, deterministic, precision, signals = json.loads(sys.argv[1])
import tensorflow as tf
if deterministic:
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
import keras
from energynet_tf.model import EnergyNet
from energynet_tf import terms
from energynet_tf import training
keras.utils.set_random_seed(0)
inplace = signals.get("inplace_distill")
model = EnergyNet(depth=depth, baseline=baseline, dtype=None if precision == "float32" else "mixed_" + precision,
                  drop_blocks=signals.get("drop_blocks", 0.0),
                  loss_terms=[] if inplace is None else [terms.InplaceDistillation(inplace, 1.0)],
                  # --compare=signals: the trainers' settings (coupled L2 on both; sampled gates charged as run).
                  **({} if not signals.get("trainer") else {"weight_decay": 1e-4} if baseline else
                     {"weight_decay": 1e-4, "gate_noise": 1.0, "energy_term": "decisions"}))
training.compile_model(model, training.make_optimizer())
if signals.get("warm_up"):
    model.gates_forced_open.assign(1.0)
model.optimizer.learning_rate.assign(0.05)
rng = np.random.default_rng(0)
x = rng.normal(size=(batch * 2, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, batch * 2)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
start = time.perf_counter()
model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
print(json.dumps({"images_per_s": steps * batch / (time.perf_counter() - start)}))
"""

_PAIR_WORKER = r"""
import json, sys, time
import numpy as np
depth, batch, steps, rounds = json.loads(sys.argv[1])
import tensorflow as tf
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
import keras
from energynet_tf.model import EnergyNet
from energynet_tf import training
rng = np.random.default_rng(0)
x = rng.normal(size=(batch * 2, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, batch * 2)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
models = {}
for name, baseline in (("energynet", False), ("baseline", True)):
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=depth, baseline=baseline, weight_decay=1e-4, gate_noise=1.0, energy_term="decisions")
    training.compile_model(model, training.make_optimizer())
    model.optimizer.learning_rate.assign(0.01)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
    models[name] = model
rates = {name: [] for name in models}
for r in range(rounds):
    order = ("energynet", "baseline") if r % 2 == 0 else ("baseline", "energynet")
    for name in order:
        start = time.perf_counter()
        models[name].fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        rates[name].append(steps * batch / (time.perf_counter() - start))
print(json.dumps(rates))
"""


def measure_pair(depth, batch_size, steps, rounds):
    """Training images/s of EnergyNet and its baseline, alternated in one fresh process.

    Both models live in the same process and take turns (ABBA order), so
    that load on the machine and per-process effects hit both alike.

    Returns:
        `{"energynet": [img/s per round], "baseline": [...]}`.
    """
    args = json.dumps([depth, batch_size, steps, rounds])
    out = subprocess.run([sys.executable, "-c", _PAIR_WORKER, args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


VARIANTS = (
    ("gated, deterministic (trainer default)", False, True, "float32"),
    ("gated, not deterministic", False, False, "float32"),
    ("baseline, deterministic", True, True, "float32"),
)
PRECISION_VARIANTS = (
    ("gated, float32 (trainer default)", False, True, "float32"),
    ("gated, --mixed_precision=bfloat16", False, True, "bfloat16"),
)  # (float16 is for GPUs: on this CPU it runs emulated, at 0.2-0.3x of float32)
SIGNAL_VARIANTS = (
    ("baseline (no gates)", True, True, "float32", {"trainer": True}),
    ("gated (energy term)", False, True, "float32", {"trainer": True}),
    ("gated + --inplace_distill=1", False, True, "float32", {"trainer": True, "inplace_distill": 1.0}),
    ("gate warm-up + --drop_blocks=0.5", False, True, "float32", {"trainer": True, "drop_blocks": 0.5,
                                                                  "warm_up": True}),
)


def measure(depth, batch_size, steps, baseline, deterministic=True, precision="float32", signals=None):
    """Training images/s of one variant, in a fresh process (synthetic data).

    Args:
        signals: None, or {"inplace_distill": W, "drop_blocks": P, "warm_up": bool} for the gated model.
    """
    args = json.dumps([depth, batch_size, steps, baseline, deterministic, precision, signals or {}])
    out = subprocess.run([sys.executable, "-c", _WORKER, args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main(argv):
    del argv
    variants = {"precision": PRECISION_VARIANTS, "signals": SIGNAL_VARIANTS}.get(FLAGS.compare, VARIANTS)
    variants = [v if len(v) == 5 else v + ({},) for v in variants]
    results = {v[0]: [] for v in variants}
    for r in range(FLAGS.repeats):
        for name, baseline, deterministic, precision, signals in variants:
            value = measure(FLAGS.depth, FLAGS.batch_size, FLAGS.steps, baseline, deterministic, precision, signals)
            results[name].append(value)
            print(f"repeat {r + 1}: {name}: {value:.1f} img/s", flush=True)
    reference = statistics.median(results[variants[0][0]])
    print(f"\nResNet-{FLAGS.depth}, batch {FLAGS.batch_size}, {FLAGS.steps} steps x {FLAGS.repeats} repeats (median img/s, ratio to the first):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:42s} {median:7.1f}  {median / reference:5.2f}x")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
