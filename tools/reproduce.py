"""The baseline and EnergyNet side by side: same data, seed and epoch budget.

    python -m tools.reproduce --preset=cpu --data_dir=../shared/data/tensorflow_datasets --out=runs/reproduce

Trains the baseline (the same ResNet without gates) for `epochs` epochs, then
EnergyNet for the same number of epochs in all: EnergyNet's first
`branch_epoch` epochs are its gate warm-up, in which every block runs and the
gates are frozen, which is exactly the baseline's training, so they are not
rerun: EnergyNet starts from the baseline's checkpoint of that epoch and
trains its gates through the three alpha phases for the remaining epochs.
Both are evaluated on the whole test split. Writes `O/results.json`,
`O/results.md` and `O/accuracy_vs_energy.png`; the two runs live in
`O/baseline/` and `O/energynet/` (each a normal trainer run directory). Rerun
the same command to resume after an interruption; finished runs are not rerun.

Presets (docs/experiments/cpu-preset.md, says why): `cpu` fits 150 minutes on a
2-core CPU; `paper` is the paper's ResNet-38 budget (160/40/20 epochs), for a
GPU machine. `--set=key=value,...` changes preset fields (a shorter
configuration, other seeds); unknown keys are refused.
"""

import dataclasses
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError
from tools import presets
from tools import runs
from tools.presets import PRESETS, Preset, parse_overrides  # noqa: F401  (the tool's names, as before)

# CIFAR-10's classes in label order (tfds' cifar10 features), for the tables.
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Goal of the reproduction (issue: "energy savings at the baseline's accuracy").
GOAL_MAX_ACCURACY_DROP = 0.3  # points
GOAL_MIN_ENERGY_SAVINGS = 0.40


def _step_time_ratio(preset, rounds, steps):
    """EnergyNet's training-step time over the baseline's, both alternated in one fresh process."""
    from tools import bench_train_speed

    rates = bench_train_speed.measure_pair(preset.depth, preset.batch_size, steps, rounds)
    ratios = [b / e for e, b in zip(rates["energynet"], rates["baseline"])]
    for r, ratio in enumerate(ratios):
        print(f"[reproduce] step time, round {r + 1}/{rounds}: EnergyNet {rates['energynet'][r]:.0f} img/s, "
              f"baseline {rates['baseline'][r]:.0f} img/s, ratio {ratio:.2f}", flush=True)
    return {
        "energynet_images_per_s": rates["energynet"],
        "baseline_images_per_s": rates["baseline"],
        "step_time_ratio_per_round": ratios,
        "step_time_ratio_median": statistics.median(ratios),
        "steps": steps,
        "batch_size": preset.batch_size,
    }


def summarise(preset_name, preset, baseline, energynet, speed, commit, wall_seconds, command, static=None,
              pattern=None, sweep=None):
    """The results dict written to results.json.

    Args:
        preset_name, preset: the preset and its resolved fields.
        baseline, energynet: the two arms' metrics.json.
        speed: the training-step timing, or None.
        commit, wall_seconds, command: provenance.
        static: None, or `{depth: metrics}` of the static front's shallower networks.
        pattern: None, or the learned-pattern arm's metrics (with `removed_blocks`).
        sweep: None, or EnergyNet's threshold sweep on the validation split.
    """
    from tools import stats
    drop = 100.0 * (baseline["test_accuracy"] - energynet["test_accuracy"])
    met = drop <= GOAL_MAX_ACCURACY_DROP and energynet["energy_savings"] >= GOAL_MIN_ENERGY_SAVINGS

    def arm(m):
        return {key: m.get(key) for key in (
            "test_accuracy", "energy_savings", "block_energy_savings", "mac_savings", "normalised_energy",
            "skip_ratio_per_block", "phases", "phase3_reason", "epochs", "wall_seconds", "final_val_accuracy",
            "final_val_energy_savings", "per_image_energy", "distinct_paths", "selective_blocks",
            "savings_by_class", "skip_ratio_by_class", "gate_logits")}

    results = {
        "preset": preset_name,
        "config": dataclasses.asdict(preset),
        "command": command,
        "commit": commit,
        "baseline": arm(baseline),
        "energynet": arm(energynet),
        "baseline_energy": baseline["baseline_energy"],
        "accuracy_drop_points": drop,
        "goal": {
            "max_accuracy_drop_points": GOAL_MAX_ACCURACY_DROP,
            "min_energy_savings": GOAL_MIN_ENERGY_SAVINGS,
            "met": met,
        },
        "training_step_time": speed,
        "wall_seconds": wall_seconds,
        "energynet_epochs_counted": preset.branch_epoch + energynet["epochs"],
    }
    # What the gates chose, image by image (docs/design.md §3.3), at top level.
    for key in ("per_image_energy", "distinct_paths", "selective_blocks", "savings_by_class"):
        results[key] = energynet.get(key)
    results["threshold_sweep"] = sweep
    energy = 1.0 - energynet["energy_savings"]
    if static:
        front = static_front_points(dict(baseline, depth=preset.depth), static)
        results["static_front"] = front
        gap = stats.static_gap_points([(p["energy"], p["test_accuracy"]) for p in front], energy,
                                      energynet["test_accuracy"])
        results["static_gap_points"] = gap["gap_points"]
        results["static_gap"] = gap
    if pattern is not None:
        entry = {
            "removed_blocks": pattern["removed_blocks"],
            "test_accuracy": pattern["test_accuracy"],
            "energy_savings": pattern["energy_savings"],
            "epochs": pattern["epochs"],
            "wall_seconds": pattern["wall_seconds"],
        }
        if static:
            gap = stats.static_gap_points([(p["energy"], p["test_accuracy"]) for p in results["static_front"]],
                                          1.0 - pattern["energy_savings"], pattern["test_accuracy"])
            entry["static_gap_points"] = gap["gap_points"]
            entry["static_gap"] = gap
        results["learned_pattern"] = entry
    return results


def results_markdown(results):
    """The side-by-side table of results.md."""
    b, e = results["baseline"], results["energynet"]
    c = results["config"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        f"# EnergyNet-{c['depth']} vs its baseline on CIFAR-10 (preset `{results['preset']}`)",
        "",
        f"Command: `{results['command']}`  ",
        f"Commit: `{results['commit']}`  ",
        f"Budget: {c['epochs']} epochs each (EnergyNet: {c['branch_epoch']} warm-up epochs shared with the "
        f"baseline, then phases of {c['phase1_epochs']}/{c['phase2_epochs']}/{c['phase3_epochs']} epochs at "
        f"most; it ran {results['energynet_epochs_counted']} in all), seed {c['seed']}, batch {c['batch_size']}"
        + (f", first {c['max_train_examples']} training images" if c["max_train_examples"] else "")
        + f"; test: the 10,000-image CIFAR-10 test split.",
        "",
        "| | test accuracy | energy savings (gates charged) | block-only savings | MAC savings | epochs | wall |",
        "|---|---|---|---|---|---|---|",
        f"| baseline | {pct(b['test_accuracy'])} | 0 | 0 | 0 | {b['epochs']} | {b['wall_seconds']:.0f} s |",
        f"| EnergyNet | {pct(e['test_accuracy'])} | {pct(e['energy_savings'])} | {pct(e['block_energy_savings'])} "
        f"| {pct(e['mac_savings'])} | {c['branch_epoch']} + {e['epochs']} | {e['wall_seconds']:.0f} s "
        f"(+ the baseline's first {c['branch_epoch']} epochs) |",
        "",
        f"Accuracy difference: {-results['accuracy_drop_points']:+.2f} points. Goal (at most "
        f"{results['goal']['max_accuracy_drop_points']} points below the baseline, at least "
        f"{100 * results['goal']['min_energy_savings']:.0f}% energy savings): "
        f"**{'met' if results['goal']['met'] else 'not met'}**.",
        "",
        "Per-block skip ratios on the test set (gated blocks 1..N): "
        + ", ".join(f"{r:.2f}" for r in e["skip_ratio_per_block"]) + ".",
        "",
        "EnergyNet's phases: " + "; ".join(
            f"phase {p['phase']} (alpha {p['alpha']}, {p['epochs']} epochs): validation accuracy "
            f"{pct(p['val_accuracy'])}" for p in e["phases"]) + f". {e['phase3_reason'] or ''}",
    ]
    speed = results.get("training_step_time")
    if speed:
        lines += [
            "",
            f"Training-step time, EnergyNet over baseline (both models alternated in one process, "
            f"{speed['steps']} steps of batch {speed['batch_size']}, {len(speed['step_time_ratio_per_round'])} "
            f"rounds): median {speed['step_time_ratio_median']:.2f}x (rounds: "
            + ", ".join(f"{r:.2f}" for r in speed["step_time_ratio_per_round"]) + ").",
        ]
    lines += ["", f"Training wall time, the two runs' sum: {results['wall_seconds']:.0f} s.", ""]
    lines += _per_image_markdown(results) + _static_markdown(results) + _sweep_markdown(results)
    return "\n".join(lines)


def _per_image_markdown(results):
    e = results.get("per_image_energy")
    if not e:
        return []
    selective = results["selective_blocks"]
    by_class = results.get("savings_by_class") or []
    names = CLASS_NAMES if len(by_class) == len(CLASS_NAMES) else [str(c) for c in range(len(by_class))]
    return [
        "## Per image: does any image get a different amount of computation?",
        "",
        "Each test image's energy (normalised to the baseline's, gates charged): mean "
        f"{e['mean']:.4f}, std {e['std']:.4f} ({100 * e['std']:.2f}% of E_total), p10 {e['p10']:.4f}, "
        f"median {e['p50']:.4f}, p90 {e['p90']:.4f}, min {e['min']:.4f}, max {e['max']:.4f}. "
        f"{results['distinct_paths']} distinct skip pattern(s) among the test images; selective blocks "
        f"(skipped by 5-95% of the images): {', '.join(map(str, selective)) if selective else 'none'} "
        f"({len(selective)} of {len(results['energynet']['skip_ratio_per_block'])}).",
        "",
        "Energy savings by class: " + ", ".join(
            f"{n} {100 * v:.1f}%" for n, v in zip(names, by_class) if v is not None) + ".",
        "",
    ]


def _static_markdown(results):
    front = results.get("static_front")
    lines = []
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    if front:
        depth = results["config"]["depth"]
        lines += [
            "## Against plain shallower ResNets on the same budget (the static front)",
            "",
            f"| network | test accuracy | energy (of ResNet-{depth}) | energy savings |",
            "|---|---|---|---|",
        ]
        for p in front:
            lines.append(f"| ResNet-{p['depth']}{' (the baseline)' if p['energy'] == 1.0 else ''} | "
                         f"{pct(p['test_accuracy'])} | {p['energy']:.3f} | {pct(1 - p['energy'])} |")
        e = results["energynet"]
        lines.append(f"| EnergyNet-{depth} | {pct(e['test_accuracy'])} | {1 - e['energy_savings']:.3f} | "
                     f"{pct(e['energy_savings'])} |")
        pattern = results.get("learned_pattern")
        if pattern:
            lines.append(f"| EnergyNet's pattern as a plain network (blocks {', '.join(map(str, pattern['removed_blocks']))} "
                         f"removed) | {pct(pattern['test_accuracy'])} | {1 - pattern['energy_savings']:.3f} | "
                         f"{pct(pattern['energy_savings'])} |")
        gap = results["static_gap"]
        lines.append("")
        if gap["gap_points"] is None:
            lines.append(f"Static gap: not defined: {gap['note']}.")
        else:
            verdict = ("EnergyNet is above the static front" if gap["gap_points"] > 0 else
                       "a plain shallower ResNet of the same energy does better than EnergyNet")
            lines.append(f"**Static gap: {gap['gap_points']:+.2f} points** (EnergyNet's test accuracy minus the "
                         f"static front's, {pct(gap['front_accuracy'])}, interpolated linearly at EnergyNet's "
                         f"energy): {verdict}.")
        if pattern and pattern.get("static_gap"):
            g = pattern["static_gap"]
            lines.append("")
            lines.append("The learned pattern trained from scratch: " + (
                f"{g['gap_points']:+.2f} points against the static front at its energy."
                if g["gap_points"] is not None else f"no gap ({g['note']})."))
        lines.append("")
    elif results.get("learned_pattern"):
        p = results["learned_pattern"]
        lines += [f"EnergyNet's pattern as a plain network (blocks {', '.join(map(str, p['removed_blocks']))} removed): "
                  f"{pct(p['test_accuracy'])} at {pct(p['energy_savings'])} savings.", ""]
    return lines


def _sweep_markdown(results):
    sweep = results.get("threshold_sweep")
    if not sweep:
        return []
    lines = [
        "## Operating points chosen at deployment (gate threshold, validation split)",
        "",
        "One trained EnergyNet; a gated block runs iff its gate's probability is > the threshold "
        "(0.5 in training). Export a chosen point with `python -m tools.export --threshold=T`.",
        "",
        "| threshold | validation accuracy | energy savings | distinct paths |",
        "|---|---|---|---|",
    ]
    for row in sweep:
        lines.append(f"| {row['threshold']:.2f} | {100 * row['accuracy']:.2f}% | {100 * row['energy_savings']:.2f}% "
                     f"| {row['distinct_paths']} |")
    points = {(round(r["accuracy"], 6), round(r["energy_savings"], 6)) for r in sweep}
    lines += ["", f"{len(points)} distinct operating point(s) among {len(sweep)} thresholds"
              + (": the gates are saturated, the curve collapses to a point." if len(points) == 1 else "."), ""]
    return lines


def plot(results, baseline_history, energynet_history, path):
    """accuracy_vs_energy.png: test points of both arms with EnergyNet's validation path, and skip ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, e = results["baseline"], results["energynet"]
    sweep = results.get("threshold_sweep")
    if sweep:
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    gated = [h for h in energynet_history if "val_energy_savings" in h]
    if gated:
        left.plot([100 * h["val_energy_savings"] for h in gated], [100 * h["val_accuracy"] for h in gated],
                  "-o", color="tab:orange", alpha=0.45, ms=3, label="EnergyNet, validation after each epoch")
    base_val = [h["val_accuracy"] for h in baseline_history if "val_accuracy" in h]
    if base_val:
        left.axhline(100 * base_val[-1], color="tab:blue", ls=":", lw=1,
                     label=f"baseline, validation ({100 * base_val[-1]:.2f}%)")
    left.plot([0], [100 * b["test_accuracy"]], "s", color="tab:blue", ms=9,
              label=f"baseline, test ({100 * b['test_accuracy']:.2f}%)")
    left.plot([100 * e["energy_savings"]], [100 * e["test_accuracy"]], "*", color="tab:red", ms=14,
              label=f"EnergyNet, test ({100 * e['test_accuracy']:.2f}%, {100 * e['energy_savings']:.1f}% saved)")
    goal = results["goal"]
    floor = 100 * b["test_accuracy"] - goal["max_accuracy_drop_points"]
    left.fill_between([100 * goal["min_energy_savings"], 100], floor, 100, color="tab:green", alpha=0.12,
                      label=f"goal: >= {100 * goal['min_energy_savings']:.0f}% saved, <= "
                            f"{goal['max_accuracy_drop_points']} points below the baseline (test)")
    ys = [100 * b["test_accuracy"], 100 * e["test_accuracy"]] + [100 * h["val_accuracy"] for h in gated]
    front = results.get("static_front")
    if front:
        xs = [100 * (1 - p["energy"]) for p in front]
        accs = [100 * p["test_accuracy"] for p in front]
        left.plot(xs, accs, "-D", color="tab:gray", ms=5, lw=1.5,
                  label="plain ResNets, same budget, test (static front)")
        for p, x, y in zip(front, xs, accs):
            left.annotate(f"{p['depth']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                          color="tab:gray")
        ys += accs
        gap = results.get("static_gap") or {}
        if gap.get("gap_points") is not None:
            left.annotate(f"static gap {gap['gap_points']:+.2f} points",
                          (100 * e["energy_savings"], 100 * gap["front_accuracy"]), textcoords="offset points",
                          xytext=(8, -14), fontsize=8, color="tab:red")
    pattern = results.get("learned_pattern")
    if pattern:
        left.plot([100 * pattern["energy_savings"]], [100 * pattern["test_accuracy"]], "P", color="tab:purple",
                  ms=10, label=f"EnergyNet's skip pattern as a plain network, test ({100 * pattern['test_accuracy']:.2f}%)")
        ys.append(100 * pattern["test_accuracy"])
    left.set_xlabel("energy savings, gates charged (%)")
    left.set_ylabel("accuracy (%)")
    left.set_xlim(-2, 100)
    left.set_ylim(min(ys) - 2, max(ys) + 1.5)
    left.grid(alpha=0.3)
    left.legend(fontsize=7.5, loc="lower left")
    left.set_title(f"CIFAR-10, ResNet-{results['config']['depth']}, {results['config']['epochs']} epochs each")
    if sweep:
        sx = [100 * r["energy_savings"] for r in sweep]
        sy = [100 * r["accuracy"] for r in sweep]
        middle.plot(sx, sy, "-o", color="tab:orange", ms=4)
        distinct = {(round(a, 4), round(x, 4)) for a, x in zip(sy, sx)}
        for r, x, y in zip(sweep, sx, sy):
            if r["threshold"] in (0.05, 0.5, 0.95):
                middle.annotate(f"t={r['threshold']:.2f}", (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
        middle.set_xlabel("energy savings, gates charged (%)")
        middle.set_ylabel("validation accuracy (%)")
        pad = 1.0 if len(distinct) > 1 else 3.0
        middle.set_xlim(min(sx) - pad, max(sx) + pad)
        middle.set_ylim(min(sy) - pad, max(sy) + pad)
        middle.grid(alpha=0.3)
        low, high = min(r["threshold"] for r in sweep), max(r["threshold"] for r in sweep)
        middle.set_title(f"Gate threshold {low:.2f}-{high:.2f}: {len(distinct)} distinct point(s)"
                         + (" (gates saturated)" if len(distinct) == 1 else ""), fontsize=10)
    ratios = e["skip_ratio_per_block"]
    right.bar(range(1, len(ratios) + 1), [100 * r for r in ratios], color="tab:orange")
    right.set_xlabel("gated block")
    right.set_ylabel("test images that skip it (%)")
    right.set_ylim(0, 100)
    right.set_xticks(range(1, len(ratios) + 1))
    right.grid(axis="y", alpha=0.3)
    right.set_title("EnergyNet's per-block skip ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def ship_models(out, results, ship_dir):
    """Writes both trained models without optimizer state, SHA256SUMS and a README to `ship_dir`.

    Layout: `ship_dir/cifar10/{baseline,energynet}/model.keras`, `ship_dir/SHA256SUMS`
    (`sha256sum -c` format, paths relative to `ship_dir`) and `ship_dir/README.md`.
    """
    import hashlib

    import keras

    import energynet_tf  # noqa: F401  (registers the classes)
    from energynet_tf import io_utils

    sums = []
    for arm in ("baseline", "energynet"):
        model = keras.saving.load_model(os.path.join(out, arm, "model.keras"), compile=False)
        rel = os.path.join("cifar10", arm, "model.keras")
        io_utils.atomic_save_model(model, os.path.join(ship_dir, rel))  # not compiled: no optimizer state
        with open(os.path.join(ship_dir, rel), "rb") as f:
            sums.append(f"{hashlib.sha256(f.read()).hexdigest()}  {rel}")
    io_utils.atomic_write_text(os.path.join(ship_dir, "SHA256SUMS"), "\n".join(sums) + "\n")
    b, e = results["baseline"], results["energynet"]
    c = results["config"]
    readme = "\n".join([
        "# Trained models",
        "",
        f"The `{results['preset']}` preset of `tools.reproduce` (ResNet-{c['depth']}, CIFAR-10, {c['epochs']} "
        "epochs each), trained on this project's 2-core CPU machine.",
        "",
        f"- Command: `{results['command']}`",
        f"- Commit: `{results['commit']}`",
        "",
        "| model | test accuracy (10,000 images) | energy savings (gates charged) | block-only savings | MAC savings |",
        "|---|---|---|---|---|",
        f"| `cifar10/baseline/model.keras` | {100 * b['test_accuracy']:.2f}% | 0 | 0 | 0 |",
        f"| `cifar10/energynet/model.keras` | {100 * e['test_accuracy']:.2f}% | {100 * e['energy_savings']:.2f}% "
        f"| {100 * e['block_energy_savings']:.2f}% | {100 * e['mac_savings']:.2f}% |",
        "",
        "Load them (the package import registers the classes):",
        "",
        "```python",
        "import keras",
        "import energynet_tf",
        "",
        'model = keras.saving.load_model("models/cifar10/energynet/model.keras", safe_mode=True)',
        "out = model.forward(images)  # images normalised as energynet_tf.data.cifar does",
        "```",
        "",
        "Inputs are 32x32x3 float images normalised with the CIFAR-10 training mean and std "
        "(`energynet_tf.data.cifar.MEAN`, `STD`). Check the files with `sha256sum -c SHA256SUMS` here.",
        "",
    ])
    io_utils.atomic_write_text(os.path.join(ship_dir, "README.md"), readme)


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_enum("preset", "cpu", sorted(PRESETS), "Which reproduction: cpu (150 minutes on 2 cores) or paper (GPU).")
    flags.DEFINE_string("data_dir", None, "tfds data directory holding cifar10/3.0.2 (or set TFDS_DATA_DIR).")
    flags.DEFINE_string("out", None, "Output directory: results.json, results.md, accuracy_vs_energy.png and the two runs.")
    flags.DEFINE_string("set", "", "Changes to the preset, key=value,... (e.g. seed=1,epochs=10,branch_epoch=6,...).")
    flags.DEFINE_integer("speed_rounds", 6, "Rounds of the side-by-side training-step timing (0: skip it).")
    flags.DEFINE_integer("speed_steps", 20, "Timed training steps per round and arm.")
    flags.DEFINE_string("ship_dir", None, "Also write both models without optimizer state, with SHA256SUMS and a README, here (e.g. models).")
    flags.DEFINE_list("static_depths", [], "Also train the plain ResNets of these depths (6n+2, shallower than the preset's) on the baseline's budget in O/static/depth-<N>/ (tools.static_front), draw them as a line in accuracy_vs_energy.png and report static_gap_points: EnergyNet's test accuracy minus the static front's at EnergyNet's energy (e.g. 14,20,26,32).")
    flags.DEFINE_boolean("learned_pattern", False, "Also train, from scratch on the baseline's budget, the plain network without the blocks EnergyNet skips for more than half of the validation images (O/pattern/): does the pattern the gates found beat a uniform shallower ResNet of the same energy?")
    flags.DEFINE_string("reuse_baseline", None, "Another reproduction's --out whose finished baseline (same depth, budget, seed and data) this one reuses, hard-linked instead of retrained (with --seeds: each seed-<N>/baseline). For ablations: every EnergyNet arm from one baseline.")
    flags.DEFINE_list("thresholds", [], "Gate thresholds of EnergyNet's operating-point sweep on the validation split (default 0.05, 0.10, ..., 0.95).")
    flags.DEFINE_list("seeds", [], "Run the reproduction once per seed in O/seed-<N>/ and write the seed spread of both arms to O/seeds.json and O/seeds.md (the preset's seed is replaced).")


def _threshold_sweep(out, thresholds):
    """EnergyNet's threshold sweep on its validation split, cached in `out/energynet/threshold_sweep.json`."""
    from energynet_tf import evaluation
    from energynet_tf import io_utils
    from tools import evaluate

    thresholds = evaluation.default_thresholds() if thresholds is None else thresholds
    path = os.path.join(out, "energynet", "threshold_sweep.json")
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if [r["threshold"] for r in cached] == thresholds:
            return cached
    model, dataset, _ = evaluate.load(os.path.join(out, "energynet"), split="validation")
    rows = evaluate.sweep(model, dataset, thresholds)
    io_utils.atomic_write_json(path, rows)
    return rows


def _per_image_figures(out, results):
    """`per_image_energy.png` and `skip_by_class.png` from EnergyNet's per-image arrays; returns the names written."""
    import numpy as np

    from tools import plots

    path = os.path.join(out, "energynet", "per_image.npz")
    written = []
    if not os.path.exists(path):
        print(f"[reproduce] no {path} (a run of an earlier version): per-image figures skipped", flush=True)
        return written
    depth = results["config"]["depth"]
    series = [(f"EnergyNet-{depth}", np.load(path)["energy"])]
    pattern = os.path.join(out, "pattern", "per_image.npz")
    if os.path.exists(pattern):
        series.append(("its skip pattern as a plain network", np.load(pattern)["energy"]))
    plots.plot_energy_histogram(series, os.path.join(out, "per_image_energy.png"),
                                f"EnergyNet-{depth}: energy per test image")
    written.append("per_image_energy.png")
    by_class = results["energynet"].get("skip_ratio_by_class")
    if by_class and results["energynet"]["skip_ratio_per_block"]:
        names = CLASS_NAMES if len(by_class) == len(CLASS_NAMES) else [str(c) for c in range(len(by_class))]
        plots.plot_skip_heatmap(by_class, names, os.path.join(out, "skip_by_class.png"),
                                f"EnergyNet-{depth}: test skip ratio by block and class")
        written.append("skip_by_class.png")
    return written


def _link_baseline(source_out, out, preset):
    """Hard-links `source_out/baseline` into `out/baseline` if it is a finished run of the same baseline."""
    import shutil

    source = os.path.join(source_out, "baseline")
    target = os.path.join(out, "baseline")
    if os.path.exists(target):
        return
    if not runs.is_finished(source):
        raise UsageError(f"--reuse_baseline: {source} holds no finished baseline run")
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    wanted = {"depth": preset.depth, "batch_size": preset.batch_size, "seed": preset.seed,
              "max_train_examples": preset.max_train_examples, "validation_examples": preset.validation_examples,
              "weight_decay": preset.weight_decay, "zero_init_residual": preset.zero_init_residual,
              "baseline": True}
    different = {k: (config.get(k), v) for k, v in wanted.items() if config.get(k) != v}
    schedule = config.get("schedule", {})
    if schedule.get("phase1_epochs") != preset.epochs or schedule.get("lr1") != preset.lr:
        different["epochs/lr"] = ((schedule.get("phase1_epochs"), schedule.get("lr1")), (preset.epochs, preset.lr))
    if different:
        raise UsageError(f"--reuse_baseline: {source} is another baseline ({different}: theirs, this preset's)")
    shutil.copytree(source, target, copy_function=os.link, ignore=shutil.ignore_patterns(".lock"))
    print(f"[reproduce] baseline reused from {source} (hard links)", flush=True)


def reproduce_one(preset, out, data_dir, command, ship_dir=None, static_depths=(), pattern=False, thresholds=None,
                  reuse_baseline=None):
    """Runs (or resumes) one side-by-side reproduction in `out`; returns its results dict.

    Args:
        preset: the resolved `Preset`.
        out: the output directory (absolute).
        data_dir: the tfds directory (absolute).
        command: the command line, for the results.
        ship_dir: also ship both models here.
        static_depths: shallower plain ResNets to train on the baseline's budget (`O/static/`).
        pattern: also train EnergyNet's skip pattern as a plain network (`O/pattern/`).
        thresholds: the gate thresholds of the validation sweep (None: 0.05 ... 0.95).
        reuse_baseline: another reproduction's output directory whose baseline to hard-link.
    """
    os.makedirs(out, exist_ok=True)
    runs.lock_directory(out)
    started = time.time()
    state_path = os.path.join(out, "reproduce_state.json")
    previous = {}
    if os.path.exists(state_path):
        with open(state_path) as f:
            previous = json.load(f)
        if presets.with_defaults(previous.get("config")) != dataclasses.asdict(preset):
            raise UsageError(
                f"{out} holds a reproduction with another configuration "
                f"({previous.get('config')}); use the same preset and --set, or a new --out")
    from energynet_tf import io_utils

    spent = float(previous.get("wall_seconds", 0.0))
    io_utils.atomic_write_json(state_path, {"config": dataclasses.asdict(preset), "wall_seconds": spent})

    if reuse_baseline:
        _link_baseline(reuse_baseline, out, preset)
    print(f"[reproduce] preset {FLAGS.preset}: {json.dumps(dataclasses.asdict(preset))}", flush=True)
    print(f"[reproduce] 1/3 baseline: {preset.epochs} epochs", flush=True)
    baseline_dir = os.path.join(out, "baseline")
    baseline = runs.run_trainer("baseline", baseline_dir, [f"--data_dir={data_dir}", *preset.baseline_flags()],
                                os.path.join(out, "baseline.log"))
    branch = os.path.join(baseline_dir, "checkpoints", f"epoch-{preset.branch_epoch:04d}.keras")
    if preset.branch_epoch == 0:
        branch = None
    elif not os.path.exists(branch) and not os.path.exists(os.path.join(out, "energynet", "metrics.json")):
        raise UsageError(f"the baseline's checkpoint of epoch {preset.branch_epoch} is missing ({branch}); "
                         "rerun the baseline in a new --out")
    print(f"[reproduce] 2/3 EnergyNet: from the baseline's epoch {preset.branch_epoch}, then "
          f"{preset.epochs - preset.branch_epoch} gated epochs at most", flush=True)
    energynet = runs.run_trainer("energynet", os.path.join(out, "energynet"),
                                 [f"--data_dir={data_dir}", *preset.energynet_flags(branch, baseline_dir)],
                                 os.path.join(out, "energynet.log"))
    static = None
    if static_depths:
        from tools import static_front

        print(f"[reproduce] static front: plain ResNet-{', -'.join(map(str, static_depths))} on the baseline's "
              f"budget ({preset.epochs} epochs each)", flush=True)
        static = static_front.train_front(os.path.join(out, "static"), list(static_depths), preset, data_dir,
                                          echo=False, check_flags=False)
    pattern_metrics = None
    if pattern:
        removed = learned_pattern(energynet)
        if not removed:
            print("[reproduce] EnergyNet skips no block for most test images: no learned pattern to train", flush=True)
        else:
            print(f"[reproduce] EnergyNet's skip pattern as a plain network: blocks {removed} removed, "
                  f"{preset.epochs} epochs from scratch", flush=True)
            pattern_metrics = runs.run_trainer(
                "pattern", os.path.join(out, "pattern"),
                [f"--data_dir={data_dir}", *preset.baseline_flags(), f"--removed_blocks={','.join(map(str, removed))}"],
                os.path.join(out, "pattern.log"))
            pattern_metrics["removed_blocks"] = removed
    print("[reproduce] EnergyNet's operating points: gate threshold sweep on the validation split", flush=True)
    sweep = _threshold_sweep(out, thresholds)
    speed = previous.get("training_step_time")
    if speed is None and FLAGS.speed_rounds > 0:
        print(f"[reproduce] 3/3 training-step time, {FLAGS.speed_rounds} alternating rounds", flush=True)
        speed = _step_time_ratio(preset, FLAGS.speed_rounds, FLAGS.speed_steps)
    wall = spent + time.time() - started
    io_utils.atomic_write_json(state_path, {"config": dataclasses.asdict(preset), "wall_seconds": wall,
                                            "training_step_time": speed})
    results = summarise(FLAGS.preset, preset, baseline, energynet, speed, runs.git_commit(),
                        baseline["wall_seconds"] + energynet["wall_seconds"], command, static=static,
                        pattern=pattern_metrics, sweep=sweep)
    results["tool_wall_seconds"] = wall
    # The CPU of this invocation (a reused baseline may have trained elsewhere; its wall time is its own).
    results["cpu"] = cli.cpu_description()
    io_utils.atomic_write_json(os.path.join(out, "results.json"), results)
    io_utils.atomic_write_text(os.path.join(out, "results.md"), results_markdown(results))
    plot(results, baseline.get("history", []), energynet.get("history", []),
         os.path.join(out, "accuracy_vs_energy.png"))
    figures = _per_image_figures(out, results)
    if ship_dir:
        ship_models(out, results, os.path.abspath(ship_dir))
        print(f"[reproduce] shipped the models to {ship_dir}", flush=True)
    print(results_markdown(results), flush=True)
    print(f"[reproduce] wrote {out}/results.json, results.md, {', '.join(['accuracy_vs_energy.png'] + figures)}",
          flush=True)
    return results


def parse_static_depths(values, preset):
    """The `--static_depths` list as sorted ints, each a CIFAR ResNet depth shallower than the preset's.

    Raises:
        UsageError: for a depth that is not 6n+2, repeated, or not shallower than `preset.depth`.
    """
    from tools import static_front  # (it imports this module)

    return static_front.parse_depths(values, "--static_depths", shallower_than=preset.depth)


def learned_pattern(energynet, majority=0.5):
    """The gated blocks (from 1) EnergyNet skips for more than `majority` of the validation images.

    Read from the last epoch's validation skip ratios (`val_skip_NN` of the
    run's history: the final weights on the held-out images), never from the
    test images: the control is chosen without the test set.

    Raises:
        UsageError: if the run has no validation skip ratios (trained with
            `validation_examples=0`).
    """
    from energynet_tf import metrics as metrics_lib

    last = (energynet.get("history") or [{}])[-1]
    num_gates = len(energynet["skip_ratio_per_block"])
    keys = ["val_" + metrics_lib.skip_key(i) for i in range(num_gates)]
    if not all(k in last for k in keys):
        raise UsageError("--learned_pattern reads the skip pattern on the validation images, and EnergyNet's run "
                         "has no validation skip ratios (validation_examples=0?)")
    return [i + 1 for i, k in enumerate(keys) if last[k] > majority]


def static_front_points(baseline, static):
    """The static front as `[{depth, test_accuracy, energy}]`, energies over the baseline's E_total.

    Args:
        baseline: the baseline arm's metrics (the front's deepest point).
        static: `{depth: metrics}` of the shallower plain networks.
    """
    reference = baseline["baseline_energy"]
    points = [{"depth": d, "test_accuracy": m["test_accuracy"], "energy": m["baseline_energy"] / reference,
               "epochs": m["epochs"], "wall_seconds": m["wall_seconds"]} for d, m in sorted(static.items())]
    points.append({"depth": baseline.get("depth"), "test_accuracy": baseline["test_accuracy"], "energy": 1.0,
                   "epochs": baseline["epochs"], "wall_seconds": baseline["wall_seconds"]})
    return points


def parse_seeds(values):
    """The `--seeds` list as distinct ints >= 0.

    Raises:
        UsageError: for a value that is not an int >= 0, or a repeated seed.
    """
    seeds = []
    for v in values:
        try:
            seed = int(v)
        except ValueError:
            raise UsageError(f"--seeds: {v!r} is not an integer") from None
        if seed < 0 or seed in seeds:
            raise UsageError(f"--seeds: {seed} is negative or repeated")
        seeds.append(seed)
    return seeds


def seed_spread(per_seed, level=0.95):
    """Mean and Student-t interval of both arms over the seeds, and of their difference."""
    from tools import stats

    def pick(fn):
        return stats.mean_confidence_interval([fn(r) for r in per_seed], level)

    return {
        "seeds": [r["config"]["seed"] for r in per_seed],
        "level": level,
        "baseline_test_accuracy": pick(lambda r: r["baseline"]["test_accuracy"]),
        "energynet_test_accuracy": pick(lambda r: r["energynet"]["test_accuracy"]),
        "accuracy_drop_points": pick(lambda r: r["accuracy_drop_points"]),
        "energynet_energy_savings": pick(lambda r: r["energynet"]["energy_savings"]),
        "energynet_block_energy_savings": pick(lambda r: r["energynet"]["block_energy_savings"]),
        "per_seed": [{"seed": r["config"]["seed"], "baseline_test_accuracy": r["baseline"]["test_accuracy"],
                      "energynet_test_accuracy": r["energynet"]["test_accuracy"],
                      "energy_savings": r["energynet"]["energy_savings"],
                      "accuracy_drop_points": r["accuracy_drop_points"]} for r in per_seed],
    }


def seeds_markdown(spread, command, preset):
    """The seed spread as a Markdown table."""
    def cell(s, scale=100.0, unit="%"):
        if s["low"] is None:
            return f"{scale * s['mean']:.2f}{unit}"
        return (f"{scale * s['mean']:.2f}{unit} (std {scale * s['std']:.2f}; {spread['level']:.0%} interval "
                f"[{scale * s['low']:.2f}, {scale * s['high']:.2f}])")

    lines = [
        f"# Seed spread of both arms ({len(spread['seeds'])} seeds)",
        "",
        f"Command: `{command}`  ",
        f"Configuration: `{json.dumps({k: v for k, v in dataclasses.asdict(preset).items() if k != 'seed'})}`",
        "",
        "| | mean over seeds |",
        "|---|---|",
        f"| baseline test accuracy | {cell(spread['baseline_test_accuracy'])} |",
        f"| EnergyNet test accuracy | {cell(spread['energynet_test_accuracy'])} |",
        f"| accuracy drop (points) | {cell(spread['accuracy_drop_points'], 1.0, '')} |",
        f"| EnergyNet energy savings | {cell(spread['energynet_energy_savings'])} |",
        f"| EnergyNet block-only savings | {cell(spread['energynet_block_energy_savings'])} |",
        "",
        "| seed | baseline | EnergyNet | drop (points) | energy savings |",
        "|---|---|---|---|---|",
    ]
    for r in spread["per_seed"]:
        lines.append(f"| {r['seed']} | {100 * r['baseline_test_accuracy']:.2f}% | "
                     f"{100 * r['energynet_test_accuracy']:.2f}% | {r['accuracy_drop_points']:.2f} | "
                     f"{100 * r['energy_savings']:.2f}% |")
    return "\n".join(lines) + "\n"


def main():
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory (e.g. --out=runs/reproduce)")
    if FLAGS.speed_rounds < 0 or FLAGS.speed_steps < 1:
        raise UsageError("--speed_rounds must be >= 0 and --speed_steps >= 1")
    preset = parse_overrides(PRESETS[FLAGS.preset], FLAGS.set)
    cli.warn_precision(preset.mixed_precision)
    static_depths = parse_static_depths(FLAGS.static_depths, preset)
    from tools import evaluate

    thresholds = evaluate.parse_thresholds(FLAGS.thresholds)
    seeds = parse_seeds(FLAGS.seeds)
    reuse_baseline = os.path.abspath(FLAGS.reuse_baseline) if FLAGS.reuse_baseline else None
    if reuse_baseline and not os.path.isdir(reuse_baseline):
        raise UsageError(f"--reuse_baseline={FLAGS.reuse_baseline} is not a directory")
    if seeds and FLAGS.ship_dir:
        raise UsageError("--ship_dir ships one reproduction; it cannot be combined with --seeds")
    data_dir = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    if not data_dir:
        raise UsageError("--data_dir is required (or TFDS_DATA_DIR): the tfds directory holding cifar10/3.0.2")
    out = os.path.abspath(FLAGS.out)
    data_dir = os.path.abspath(data_dir)
    command = "python -m tools.reproduce " + " ".join(a for a in sys.argv[1:])
    if not seeds:
        reproduce_one(preset, out, data_dir, command, FLAGS.ship_dir, static_depths, FLAGS.learned_pattern,
                      thresholds, reuse_baseline)
        return
    from energynet_tf import io_utils

    per_seed = []
    for k, seed in enumerate(seeds):
        print(f"[reproduce] seed {seed} ({k + 1}/{len(seeds)})", flush=True)
        per_seed.append(reproduce_one(dataclasses.replace(preset, seed=seed), os.path.join(out, f"seed-{seed}"),
                                      data_dir, command, static_depths=static_depths,
                                      pattern=FLAGS.learned_pattern, thresholds=thresholds,
                                      reuse_baseline=reuse_baseline and os.path.join(reuse_baseline, f"seed-{seed}")))
    spread = seed_spread(per_seed)
    io_utils.atomic_write_json(os.path.join(out, "seeds.json"), spread)
    io_utils.atomic_write_text(os.path.join(out, "seeds.md"), seeds_markdown(spread, command, preset))
    print(seeds_markdown(spread, command, preset), flush=True)
    print(f"[reproduce] wrote {out}/seeds.json and seeds.md", flush=True)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, runs.exit_on_sigterm)
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
