"""keras-tuner search over EnergyNet's phase-II alpha: every trial's accuracy AND energy, and the front.

    python -m tools.search_alpha --data_dir=../shared/data/tensorflow_datasets --out=runs/search \
        --depth=20 --max_trials=6 --max_train_examples=10000 --epochs=10 --branch_epoch=6 \
        --phase1_epochs=1 --phase2_epochs=2 --phase3_epochs=1

The recipe is a `tools.reproduce` preset (`--preset`, `--set`, and the budget
flags below): one baseline is trained once in `O/baseline/`, and every trial
starts from its checkpoint of `branch_epoch` and trains the gates through the
project's three alpha phases (`trainers.cifar`, run as a subprocess into the
trial's directory under `O/search/`). `EnergyNetHyperModel.build(hp)` defines
the search space: alpha of phase II (a geometric grid with `--oracle=grid`,
log-uniform otherwise) and, with `--gate_lr_multipliers`, the gates' learning
rate. Each trial reports validation accuracy, energy savings, block-only and
MAC savings to keras-tuner's oracle, whose project directory holds the state:
rerun the same command to resume (an interrupted trial resumes from its own
checkpoint). Nothing is selected on the test set: trials train with
`--noevaluate_test`, and the test split is evaluated once at the end, only for
the members of the validation front.

Writes `O/trials.csv` (every finished trial), `O/front.csv` (the Pareto-optimal
trials on validation accuracy and savings, with their test numbers) and
`O/front.png` (trials, front, the full baseline and, if `O/static.csv` or
`--static_csv` exists, the static-depth front of `tools.static_front`).
`--accuracy_floor=X` reports the trial that saves the most energy at
validation accuracy >= X.

Distributed search (keras-tuner's own mode: one oracle, many workers). Set
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` (where the chief serves
the oracle) and `KERASTUNER_TUNER_ID` (`chief` for the chief, any other id,
e.g. `tuner0`, for a worker) and run the same command in every process, with
an `--out` on a filesystem every process sees. The chief trains the baseline,
serves the oracle until every trial is done, then evaluates the front and
writes the tables; each worker waits for the baseline, then takes trials from
the oracle until it has none left. The chief waits for its workers: if every
worker dies, stop the chief and rerun all of them (trials resume).
"""

import csv
import dataclasses
import json
import math
import os
import time

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError
from tools import presets
from tools import runs
from tools import stats

FLAGS = flags.FLAGS

# Budget flags that override fields of the preset (None: the preset's value).
BUDGET_FLAGS = ("depth", "epochs", "branch_epoch", "phase1_epochs", "phase2_epochs", "phase3_epochs",
                "max_train_examples", "seed")
METRICS = ("val_accuracy", "val_energy_savings", "val_block_energy_savings", "val_mac_savings")
TEST_METRICS = ("test_accuracy", "energy_savings", "block_energy_savings", "mac_savings")


def _define_flags():
    flags.DEFINE_string("data_dir", None, "tfds directory holding cifar10/3.0.2 (or TFDS_DATA_DIR).")
    flags.DEFINE_string("out", None, "Output directory: the baseline, keras-tuner's project, trials.csv, front.csv, front.png.")
    flags.DEFINE_integer("max_trials", 6, "Trials of the search.")
    flags.DEFINE_enum("oracle", "grid", ["grid", "random", "bayesian"], "keras-tuner oracle.")
    flags.DEFINE_float("alpha_min", 0.3, "Smallest phase-II alpha searched.")
    flags.DEFINE_float("alpha_max", 3.0, "Largest phase-II alpha searched.")
    flags.DEFINE_list("gate_lr_multipliers", [], "Also search the gates' learning-rate multiplier over these values (empty: the preset's).")
    flags.DEFINE_float("accuracy_floor", None, "Report the trial that saves the most energy at validation accuracy >= this (a fraction).")
    flags.DEFINE_string("static_csv", None, "A tools.static_front static.csv to draw (default: O/static.csv if it exists).")
    flags.DEFINE_enum("preset", "cpu", sorted(presets.PRESETS), "The recipe: a tools.reproduce preset.")
    flags.DEFINE_string("set", None, "Changes to the preset, key=value,... (as in tools.reproduce).")
    flags.DEFINE_integer("depth", None, "Network depth (default: the preset's).")
    flags.DEFINE_integer("epochs", None, "Total epoch budget of each trial, the baseline's included (default: the preset's).")
    flags.DEFINE_integer("branch_epoch", None, "Trials start from the baseline's checkpoint of this epoch.")
    flags.DEFINE_integer("phase1_epochs", None, "Phase I epochs of each trial.")
    flags.DEFINE_integer("phase2_epochs", None, "Phase II epochs of each trial.")
    flags.DEFINE_integer("phase3_epochs", None, "Phase III epochs of each trial (run only if phase II lost accuracy).")
    flags.DEFINE_integer("max_train_examples", None, "Train on the first N training examples.")
    flags.DEFINE_integer("seed", None, "Seed of the baseline and of every trial (the same for all: common random numbers).")
    flags.DEFINE_boolean("echo", False, "Print the trainers' own progress lines too (they always go to the logs).")


def recipe_from_flags():
    """The preset with `--set` and the budget flags applied.

    Raises:
        UsageError: for bad values (the preset's own checks).
    """
    preset = presets.parse_overrides(presets.PRESETS[FLAGS.preset], FLAGS.set)
    changes = {name: getattr(FLAGS, name) for name in BUDGET_FLAGS if getattr(FLAGS, name) is not None}
    if "epochs" in changes or "branch_epoch" in changes:
        # A new budget: the phases fill what follows the branch unless given.
        epochs = changes.get("epochs", preset.epochs)
        branch = changes.get("branch_epoch", preset.branch_epoch)
        if not any(k in changes for k in ("phase1_epochs", "phase2_epochs", "phase3_epochs")) and epochs > branch:
            gated = epochs - branch
            p1 = max(1, gated // 4)
            p3 = max(0, gated // 4) if gated - p1 >= 2 else 0
            changes.update(phase1_epochs=p1, phase2_epochs=gated - p1 - p3, phase3_epochs=p3)
    try:
        return dataclasses.replace(preset, **changes)
    except TypeError as e:
        raise UsageError(str(e)) from None


def alpha_grid(low, high, n):
    """`n` alphas spaced geometrically from `low` to `high` (rounded to 3 significant digits)."""
    if n == 1:
        return [float(f"{math.sqrt(low * high):.3g}")]
    return [float(f"{low * (high / low) ** (k / (n - 1)):.3g}") for k in range(n)]


def make_hypermodel(recipe, alpha_min, alpha_max, grid_size=None, gate_lr_multipliers=()):
    """The `keras_tuner.HyperModel` of the search (imported lazily: keras-tuner loads TensorFlow)."""
    import keras_tuner

    class EnergyNetHyperModel(keras_tuner.HyperModel):
        """EnergyNet's recipe with phase-II alpha (and optionally the gate LR) as hyperparameters.

        A trial is one run of the project's trainer, so `build(hp)` returns the
        trial's recipe (a `tools.presets.Preset`), not an untrained Keras
        model that nobody would train: the trainer builds and trains the
        network, with checkpoints a rerun resumes from.
        """

        def build(self, hp):
            if grid_size:
                alpha = hp.Choice("alpha2", alpha_grid(alpha_min, alpha_max, grid_size), ordered=True)
            else:
                alpha = hp.Float("alpha2", alpha_min, alpha_max, sampling="log")
            changes = {"alpha2": float(alpha)}
            if gate_lr_multipliers:
                changes["gate_lr_multiplier"] = float(
                    hp.Choice("gate_lr_multiplier", list(gate_lr_multipliers), ordered=True))
            return dataclasses.replace(recipe, **changes)

    return EnergyNetHyperModel(name="energynet")


def make_tuner(hypermodel, oracle_name, max_trials, seed, directory, data_dir, branch_checkpoint, echo=False):
    """The keras-tuner tuner whose trials run the trainer; its project is `directory/search`."""
    import keras_tuner
    from keras_tuner.engine import base_tuner

    objective = [keras_tuner.Objective("val_accuracy", "max"), keras_tuner.Objective("val_energy_savings", "max")]
    oracles = {
        "grid": keras_tuner.oracles.GridSearchOracle,
        "random": keras_tuner.oracles.RandomSearchOracle,
        "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    }
    # keras-tuner treats seed 0 as "no seed" (docs/design.md §4): shift by one so every seed is reproducible.
    oracle = oracles[oracle_name](objective=objective, max_trials=max_trials, seed=seed + 1)

    class AlphaSearch(base_tuner.BaseTuner):
        """Runs each trial as a trainer run and reports every metric that matters to the oracle."""

        def run_trial(self, trial):
            recipe = self.hypermodel.build(trial.hyperparameters)
            trial_dir = self.get_trial_dir(trial.trial_id)
            values = ", ".join(f"{k}={v}" for k, v in trial.hyperparameters.values.items())
            print(f"[search_alpha] trial {trial.trial_id}: {values}", flush=True)
            metrics = runs.run_trainer(
                f"trial {trial.trial_id}", os.path.join(trial_dir, "run"),
                [f"--data_dir={data_dir}", *recipe.energynet_flags(branch_checkpoint), "--noevaluate_test"],
                os.path.join(trial_dir, "trainer.log"), echo=echo)
            result = {key: float(metrics["final_" + key]) for key in METRICS}
            result["epochs"] = float(metrics["epochs"])
            # keras-tuner's multi-objective value (the sum, what guided oracles maximise).
            result[self.oracle.objective.name] = float(self.oracle.objective.get_value(result))
            print(f"[search_alpha] trial {trial.trial_id}: validation accuracy {100 * result['val_accuracy']:.2f}%, "
                  f"energy savings {100 * result['val_energy_savings']:.1f}%", flush=True)
            return result

    return AlphaSearch(oracle=oracle, hypermodel=hypermodel, directory=directory, project_name="search",
                       overwrite=False)


def distribution():
    """(distributed, worker) from keras-tuner's variables; a half-set configuration is a UsageError.

    keras-tuner's rule: the search is distributed when `KERASTUNER_ORACLE_IP`
    is set; the process whose `KERASTUNER_TUNER_ID` contains "chief" serves
    the oracle, every other one is a worker taking trials from it.
    """
    env = os.environ
    if "KERASTUNER_ORACLE_IP" not in env:
        return False, False
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not env.get(name):
            raise UsageError(f"KERASTUNER_ORACLE_IP is set but {name} is not; a distributed search needs "
                             "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID (chief or a worker id)")
    port = env["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"KERASTUNER_ORACLE_PORT={port!r} must be a port number in 1..65535")
    return True, "chief" not in env["KERASTUNER_TUNER_ID"]


def finished_trials(tuner):
    """Rows for trials.csv: every completed trial's hyperparameters and metrics, by trial id."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        if trial.status != "COMPLETED":
            continue
        row = {"trial_id": trial_id, **{k: float(v) for k, v in trial.hyperparameters.values.items()}}
        for key in (*METRICS, "epochs"):
            row[key] = float(trial.metrics.get_last_value(key))
        row["model_dir"] = os.path.join(tuner.get_trial_dir(trial_id), "run")
        rows.append(row)
    return rows


def best_under_floor(rows, floor):
    """The row that saves the most energy at validation accuracy >= `floor` (None if none does)."""
    eligible = [r for r in rows if r["val_accuracy"] >= floor]
    return max(eligible, key=lambda r: (r["val_energy_savings"], r["val_accuracy"])) if eligible else None


def _write_csv(path, rows):
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_front(rows, front, baseline, static_rows, recipe, path):
    """front.png: trials (validation), their front on test, the full baseline and the static-depth front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    reference = baseline["baseline_energy"]
    ax.scatter([100 * r["val_energy_savings"] for r in rows], [100 * r["val_accuracy"] for r in rows],
               color="tab:orange", alpha=0.4, s=28, label="EnergyNet trials (validation)")
    for r in rows:
        ax.annotate(f"α={r['alpha2']:g}", (100 * r["val_energy_savings"], 100 * r["val_accuracy"]),
                    fontsize=7, alpha=0.7, xytext=(3, 3), textcoords="offset points")
    xs = [100 * runs.savings_against(r["test"], reference) for r in front]
    ys = [100 * r["test"]["test_accuracy"] for r in front]
    ax.plot(xs, ys, "-*", color="tab:red", ms=11, label="EnergyNet front (test)")
    ax.plot([0], [100 * baseline["test_accuracy"]], "s", color="tab:blue", ms=9,
            label=f"baseline ResNet-{recipe.depth} (test)")
    if static_rows:
        sx = [100 * (1 - r["energy"] / reference) for r in static_rows]
        sy = [100 * r["test_accuracy"] for r in static_rows]
        ax.plot(sx, sy, "--o", color="tab:gray", label="static depths (plain ResNets, test)")
        for r, x, y in zip(static_rows, sx, sy):
            ax.annotate(f"{r['depth']}", (x, y), fontsize=8, xytext=(4, -10), textcoords="offset points",
                        color="tab:gray")
    every_x = [100 * r["val_energy_savings"] for r in rows] + xs + [0.0]
    ax.set_xlim(min(every_x) - 4, max(every_x) + 9)  # room for the labels
    ax.set_xlabel(f"energy savings against the full ResNet-{recipe.depth}, gates charged (%)")
    ax.set_ylabel("accuracy (%)")
    budget = (f"{recipe.epochs} epochs"
              + (f", {recipe.max_train_examples} training images" if recipe.max_train_examples else ""))
    ax.set_title(f"CIFAR-10, EnergyNet-{recipe.depth} alpha search ({budget})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main():
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory (e.g. --out=runs/search)")
    if FLAGS.max_trials < 1:
        raise UsageError(f"--max_trials={FLAGS.max_trials} must be a positive integer")
    if not 0 < FLAGS.alpha_min <= FLAGS.alpha_max < float("inf"):
        raise UsageError(f"--alpha_min={FLAGS.alpha_min} and --alpha_max={FLAGS.alpha_max} must satisfy "
                         "0 < alpha_min <= alpha_max")
    if FLAGS.accuracy_floor is not None and not 0 < FLAGS.accuracy_floor <= 1:
        raise UsageError(f"--accuracy_floor={FLAGS.accuracy_floor} must be in (0, 1] (a fraction, not a percentage)")
    try:
        multipliers = [float(v) for v in FLAGS.gate_lr_multipliers]
    except ValueError:
        raise UsageError(f"--gate_lr_multipliers={','.join(FLAGS.gate_lr_multipliers)} must be numbers") from None
    if any(not m >= 0 for m in multipliers):
        raise UsageError(f"--gate_lr_multipliers={','.join(FLAGS.gate_lr_multipliers)} must be >= 0")
    if FLAGS.static_csv and not os.path.exists(FLAGS.static_csv):
        raise UsageError(f"--static_csv={FLAGS.static_csv}: no such file")
    recipe = recipe_from_flags()
    data_dir = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    if not data_dir:
        raise UsageError("--data_dir is required (or TFDS_DATA_DIR): the tfds directory holding cifar10/3.0.2")
    data_dir = os.path.abspath(data_dir)
    out = os.path.abspath(FLAGS.out)
    grid_size = FLAGS.max_trials if FLAGS.oracle == "grid" else None
    config = {"recipe": dataclasses.asdict(recipe), "oracle": FLAGS.oracle, "alpha_min": FLAGS.alpha_min,
              "alpha_max": FLAGS.alpha_max, "grid_size": grid_size, "gate_lr_multipliers": multipliers}
    state_path = os.path.join(out, "search_config.json")
    distributed, worker = distribution()
    if os.path.exists(state_path):
        with open(state_path) as f:
            previous = json.load(f)
        if {k: v for k, v in previous.items() if k != "max_trials"} != config:
            raise UsageError(f"--out={FLAGS.out} holds a search of another configuration; use the same flags "
                             "(--max_trials may grow) or a new --out")
    elif not worker:
        runs.check_trainer_flags("cifar", [f"--data_dir={data_dir}", *recipe.baseline_flags(),
                                           f"--model_dir={os.path.join(out, 'baseline')}"])
    from energynet_tf import io_utils

    os.makedirs(out, exist_ok=True)
    if not worker:
        # Workers share the chief's --out by design; each trial's run directory has its trainer's lock.
        runs.lock_directory(out)
        io_utils.atomic_write_json(state_path, {**config, "max_trials": FLAGS.max_trials})
    started = time.time()
    baseline_dir = os.path.join(out, "baseline")
    branch = os.path.join(baseline_dir, "checkpoints", f"epoch-{recipe.branch_epoch:04d}.keras")
    if worker:
        # Workers wait for the chief's baseline rather than train it twice.
        while not runs.is_finished(baseline_dir):
            time.sleep(10)
        baseline = runs.load_metrics(baseline_dir)
    else:
        print(f"[search_alpha] 1/3 baseline ResNet-{recipe.depth}, {recipe.epochs} epochs", flush=True)
        baseline = runs.run_trainer("baseline", baseline_dir, [f"--data_dir={data_dir}", *recipe.baseline_flags()],
                                    os.path.join(out, "baseline.log"), echo=FLAGS.echo)
    if not os.path.exists(branch):
        raise UsageError(f"the baseline's checkpoint of epoch {recipe.branch_epoch} is missing ({branch}); "
                         "use a new --out")
    hypermodel = make_hypermodel(recipe, FLAGS.alpha_min, FLAGS.alpha_max, grid_size, multipliers)
    tuner = make_tuner(hypermodel, FLAGS.oracle, FLAGS.max_trials, recipe.seed, out, data_dir, branch,
                       echo=FLAGS.echo)
    if worker:
        # A worker's oracle is keras-tuner's client of the chief's: it has no trial table of its own.
        print(f"[search_alpha] 2/3 worker {os.environ['KERASTUNER_TUNER_ID']}: taking trials from the oracle at "
              f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}", flush=True)
    else:
        where = (f" (serving the oracle at {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
                 " to the workers)" if distributed else "")
        print(f"[search_alpha] 2/3 search: {FLAGS.max_trials} trials, oracle {FLAGS.oracle}, from the baseline's "
              f"epoch {recipe.branch_epoch}; {len(finished_trials(tuner))} finished earlier{where}", flush=True)
    tuner.search()
    if worker:
        print("[search_alpha] worker: the oracle has no more trials", flush=True)
        return
    rows = finished_trials(tuner)
    failed = [t for t in tuner.oracle.trials.values() if t.status in ("FAILED", "INVALID")]
    if failed:
        print(f"[search_alpha] {len(failed)} trial(s) failed: "
              + ", ".join(f"{t.trial_id} ({os.path.join(tuner.get_trial_dir(t.trial_id), 'trainer.log')})"
                          for t in failed), flush=True)
    if not rows:
        raise UsageError("no trial finished; see the trainer logs under " + os.path.join(out, "search"))
    front_idx = stats.pareto_front([(r["val_energy_savings"], r["val_accuracy"]) for r in rows])
    print(f"[search_alpha] 3/3 test evaluation of the {len(front_idx)} front members "
          f"({time.time() - started:.0f}s so far)", flush=True)
    front = []
    for i in front_idx:
        rows[i]["on_front"] = True
        test = runs.evaluate_on_test(rows[i]["model_dir"])
        for key in TEST_METRICS:
            rows[i]["test_" + key if not key.startswith("test_") else key] = test[key]
        front.append({**rows[i], "test": test})
    for r in rows:
        r.setdefault("on_front", False)
    _write_csv(os.path.join(out, "trials.csv"), rows)
    _write_csv(os.path.join(out, "front.csv"), [{k: v for k, v in f.items() if k != "test"} for f in front])
    static_csv = FLAGS.static_csv or os.path.join(out, "static.csv")
    static_rows = None
    if os.path.exists(static_csv):
        from tools import static_front

        static_rows = static_front.read_static_csv(static_csv)
    plot_front(rows, front, baseline, static_rows, recipe, os.path.join(out, "front.png"))
    for f in front:
        print(f"[search_alpha] front: alpha2={f['alpha2']:g}: validation {100 * f['val_accuracy']:.2f}% at "
              f"{100 * f['val_energy_savings']:.1f}% savings; test {100 * f['test']['test_accuracy']:.2f}% at "
              f"{100 * f['test']['energy_savings']:.1f}%", flush=True)
    if FLAGS.accuracy_floor is not None:
        best = best_under_floor(rows, FLAGS.accuracy_floor)
        selection = {"accuracy_floor": FLAGS.accuracy_floor, "trial": best}
        if best is None:
            print(f"[search_alpha] no trial reaches validation accuracy {100 * FLAGS.accuracy_floor:.2f}%", flush=True)
        else:
            print(f"[search_alpha] at validation accuracy >= {100 * FLAGS.accuracy_floor:.2f}%, trial "
                  f"{best['trial_id']} (alpha2={best['alpha2']:g}) saves the most: "
                  f"{100 * best['val_energy_savings']:.1f}% at {100 * best['val_accuracy']:.2f}%", flush=True)
        io_utils.atomic_write_json(os.path.join(out, "selection.json"), selection)
    print(f"[search_alpha] wrote {out}/trials.csv, front.csv, front.png ({time.time() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, runs.exit_on_sigterm)
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
