"""The static-depth control: plain ResNets of several depths on one budget, their accuracy and energy.

    python -m tools.static_front --data_dir=../shared/data/tensorflow_datasets --out=runs/static \
        --depths=8,14,20 --preset=cpu --set=epochs=10,...

Trains the baseline (no gates) of every depth with the budget of a
`tools.reproduce` preset (epochs, learning rate, batch, seed, data subset) in
`O/depth-<N>/` and writes `O/static.csv`: test accuracy and energy of each,
relative to the deepest. If EnergyNet's dynamic skipping is worth anything,
its accuracy-energy front lies above this one (`tools.search_alpha` draws
both). Rerun to resume; finished depths are not retrained.
"""

import csv
import dataclasses
import os

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError
from tools import presets
from tools import runs

FLAGS = flags.FLAGS

COLUMNS = ("depth", "test_accuracy", "energy", "relative_energy", "energy_savings_vs_deepest", "epochs",
           "wall_seconds", "model_dir")


def _define_flags():
    flags.DEFINE_string("data_dir", None, "tfds directory holding cifar10/3.0.2 (or TFDS_DATA_DIR).")
    flags.DEFINE_string("out", None, "Output directory: one run directory per depth and static.csv.")
    flags.DEFINE_list("depths", ["8", "14", "20", "26", "32", "38"], "Depths of the plain ResNets.")
    flags.DEFINE_enum("preset", "cpu", sorted(presets.PRESETS), "The budget: a tools.reproduce preset (its baseline arm).")
    flags.DEFINE_string("set", None, "Changes to the preset, key=value,... (as in tools.reproduce).")
    flags.DEFINE_boolean("echo", False, "Print the trainers' own progress lines too (they always go to O/logs/).")


def parse_depths(values, flag="--depths", shallower_than=None):
    """The depths as sorted, distinct ints.

    Args:
        values: the flag's strings.
        flag: the flag's name, for the messages.
        shallower_than: None, or a depth every value must be below.

    Raises:
        UsageError: for a depth that is not a CIFAR ResNet depth (6n+2), a
            repeated one, one not below `shallower_than`, or none.
    """
    from energynet_tf import backbone

    depths = []
    for v in values:
        try:
            d = int(v)
        except ValueError:
            raise UsageError(f"{flag}: {v!r} is not an integer") from None
        if d not in backbone.CIFAR_DEPTHS:
            raise UsageError(f"{flag}: {d} is not a CIFAR ResNet depth (6n+2); allowed: "
                             f"{', '.join(str(x) for x in backbone.CIFAR_DEPTHS)}")
        if shallower_than is not None and d >= shallower_than:
            raise UsageError(f"{flag}: {d} is not shallower than the preset's depth {shallower_than} "
                             "(the baseline is the front's deepest point)")
        if d in depths:
            raise UsageError(f"{flag}: {d} is repeated")
        depths.append(d)
    if not depths and shallower_than is None:
        raise UsageError(f"{flag} is empty")
    return sorted(depths)


def rows(results):
    """static.csv rows from `{depth: metrics}`; energies relative to the deepest network."""
    deepest = results[max(results)]["baseline_energy"]
    out = []
    for depth in sorted(results):
        m = results[depth]
        out.append({
            "depth": depth, "test_accuracy": m["test_accuracy"], "energy": m["baseline_energy"],
            "relative_energy": m["baseline_energy"] / deepest,
            "energy_savings_vs_deepest": 1.0 - m["baseline_energy"] / deepest,
            "epochs": m["epochs"], "wall_seconds": m["wall_seconds"], "model_dir": m.get("model_dir", ""),
        })
    return out


def read_static_csv(path):
    """Reads a static.csv written by this tool; returns its rows with numbers as numbers."""
    with open(path) as f:
        out = []
        for row in csv.DictReader(f):
            for key in COLUMNS:
                if key not in ("model_dir",):
                    row[key] = float(row[key])
            row["depth"] = int(row["depth"])
            out.append(row)
    return out


def train_front(out, depths, preset, data_dir, echo=False, check_flags=True):
    """Trains (or resumes) the plain ResNet of every depth on `preset`'s baseline budget in `out/depth-<N>/`.

    Writes `out/static.csv` at the end. Finished depths are not retrained.

    Args:
        out: the front's directory (absolute).
        depths: sorted CIFAR ResNet depths.
        preset: a `tools.presets.Preset` (its baseline arm's recipe; its depth is replaced).
        data_dir: the tfds directory (absolute).
        echo: print the trainers' own progress lines too.
        check_flags: check the trainer's flags once before the first run.

    Returns:
        `{depth: metrics}` of the finished runs (each with its `model_dir`).

    Raises:
        UsageError: if `out` holds a front of another budget, or a run failed.
    """
    plans = {d: [f"--data_dir={data_dir}", *dataclasses.replace(preset, depth=d).baseline_flags()] for d in depths}
    state_path = os.path.join(out, "static_state.json")
    config = {"preset": dataclasses.asdict(preset)}
    previous = runs.previous_config(state_path)
    if previous is not None and presets.with_defaults(previous.get("preset")) != config["preset"]:
        raise UsageError(f"{out} holds a static front of another budget; use the same preset and --set, "
                         "or a new output directory")
    if previous is None and check_flags:
        runs.check_trainer_flags("cifar", [*plans[depths[0]], f"--model_dir={os.path.join(out, f'depth-{depths[0]}')}"])
    runs.claim_out(out, state_path, config)
    results = {}
    for k, depth in enumerate(depths):
        model_dir = os.path.join(out, f"depth-{depth}")
        print(f"[static_front] {k + 1}/{len(depths)}: ResNet-{depth}, {preset.epochs} epochs", flush=True)
        metrics = runs.run_trainer(f"ResNet-{depth}", model_dir, plans[depth],
                                   os.path.join(out, "logs", f"depth-{depth}.log"), echo=echo)
        metrics["model_dir"] = model_dir
        results[depth] = metrics
        print(f"[static_front] ResNet-{depth}: test accuracy {100 * metrics['test_accuracy']:.2f}%", flush=True)
    table = rows(results)
    tmp = os.path.join(out, "static.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    os.replace(tmp, os.path.join(out, "static.csv"))
    return results


def main():
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory (e.g. --out=runs/static)")
    depths = parse_depths(FLAGS.depths)
    preset = presets.parse_overrides(presets.PRESETS[FLAGS.preset], FLAGS.set)
    data_dir = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    if not data_dir:
        raise UsageError("--data_dir is required (or TFDS_DATA_DIR): the tfds directory holding cifar10/3.0.2")
    out = os.path.abspath(FLAGS.out)
    results = train_front(out, depths, preset, os.path.abspath(data_dir), echo=FLAGS.echo)
    for row in rows(results):
        print(f"[static_front] ResNet-{row['depth']}: {100 * row['test_accuracy']:.2f}% at "
              f"{100 * row['relative_energy']:.1f}% of ResNet-{max(depths)}'s energy", flush=True)
    print(f"[static_front] wrote {out}/static.csv", flush=True)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, runs.exit_on_sigterm)
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
