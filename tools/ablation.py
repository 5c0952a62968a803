"""An ablation table: several `tools.reproduce` outputs (arms), each over seeds, against the static front.

    python -m tools.ablation --out=runs/ablation20 \
        --arms=current=runs/abl20/current,reinforce=runs/abl20/rl_T5_w1,distill=runs/abl20/distill_w1

Each arm is a `tools.reproduce --out` directory, run with `--seeds` (its
`seed-<N>/results.json`) or once (its `results.json`). For every arm and seed
the table reads EnergyNet's test accuracy, energy savings (gates charged),
`selective_blocks`, `distinct_paths`, the per-image energy std, its training
wall time and time per epoch against the baseline's (with the CPU the
reproduction ran on), what the per-image choice is worth where
`shuffle_control.json` / `shuffle_control_within_class.json` (`tools.evaluate
--shuffle_control=N [--shuffle_within_class] --out=...`) lie beside the
results.json, and
computes `static_gap_points` against the static front of the same seed: the
plain networks in that seed's `results.json` (`--static_depths`) or, for an
arm run without them, in the first arm's results of that seed (arms that
share a baseline through `--reuse_baseline` share its front), or else the
front of `--static_csv` (`tools.static_front`'s CSV; one seed, said so in the
table). Each quantity gets its mean and standard deviation over the seeds, and
each arm its difference to the first arm, paired by seed.

Writes `O/ablation.json`, `O/ablation.md` and `O/ablation.png` (accuracy
against energy savings: every seed's point, each arm's mean, the fronts).
"""

import csv
import json
import math
import os

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf import io_utils
from energynet_tf.cli import UsageError
from tools import stats

FLAGS = flags.FLAGS

# (key in a row, label, scale for the table, unit)
QUANTITIES = (
    ("test_accuracy", "test accuracy", 100.0, "%"),
    ("energy_savings", "energy savings", 100.0, "%"),
    ("static_gap_points", "static gap (points)", 1.0, ""),
    ("selective_blocks", "selective blocks", 1.0, ""),
    ("distinct_paths", "distinct paths", 1.0, ""),
    ("per_image_energy_std", "per-image energy std (of E_total)", 1.0, ""),
    ("choice_worth_points", "choice worth (points)", 1.0, ""),
    ("choice_worth_within_class_points", "within class (points)", 1.0, ""),
    ("wall_seconds", "EnergyNet training", 1.0, " s"),
    ("epoch_time_ratio", "time per epoch vs baseline", 1.0, "x"),
)
# Digits in the table (2 where not named).
DIGITS = {"per_image_energy_std": 4, "selective_blocks": 1, "distinct_paths": 1, "wall_seconds": 0}
# `tools.evaluate --shuffle_control=N --out=...` files beside an arm's (or seed's) results.json.
SHUFFLE_FILES = {"choice_worth_points": "shuffle_control.json",
                 "choice_worth_within_class_points": "shuffle_control_within_class.json"}


def _define_flags():
    flags.DEFINE_list("arms", [], "label=directory,...: each a tools.reproduce --out (with or without --seeds); "
                                  "the first is the reference the others are compared with.")
    flags.DEFINE_string("out", None, "Output directory: ablation.json, ablation.md, ablation.png.")
    flags.DEFINE_string("static_csv", None, "A tools.static_front CSV used for seeds whose results hold no "
                                            "static front (optional).")


def parse_arms(items, flag="--arms", name="label", unique=True):
    """`[(label, directory)]` from `label=directory` items.

    Args:
        items: the flag's list.
        flag, name: the flag and what its labels are, for the errors.
        unique: refuse a label given twice.

    Raises:
        UsageError: for an item that is not label=directory, a repeated label (`unique`), or no items.
    """
    arms = []
    for item in items:
        label, sep, directory = item.partition("=")
        if not sep or not label.strip() or not directory.strip():
            raise UsageError(f"{flag}: {item!r} is not {name}=directory")
        if unique and label.strip() in [a for a, _ in arms]:
            raise UsageError(f"{flag}: the {name} {label.strip()!r} appears twice")
        arms.append((label.strip(), directory.strip()))
    if not arms:
        raise UsageError(f"{flag} is required: {name}=directory,... of tools.reproduce outputs")
    return arms


def load_arm(directory, flag="--arms"):
    """`{seed: results}` of one `tools.reproduce` output (`flag` names the flag in errors).

    Raises:
        UsageError: for a directory with neither `seed-<N>/results.json` nor `results.json`, or an unreadable file.
    """
    if not os.path.isdir(directory):
        raise UsageError(f"{flag}: {directory} is not a directory")
    paths = [os.path.join(directory, name, "results.json") for name in sorted(os.listdir(directory))
             if name.startswith("seed-") and os.path.exists(os.path.join(directory, name, "results.json"))]
    if not paths and os.path.exists(os.path.join(directory, "results.json")):
        paths = [os.path.join(directory, "results.json")]
    if not paths:
        raise UsageError(f"{flag}: {directory} holds no finished reproduction (no results.json, "
                         "no seed-<N>/results.json)")
    out = {}
    for path in paths:
        try:
            with open(path) as f:
                results = json.load(f)
            seed = int(results["config"]["seed"])
            results["energynet"]["test_accuracy"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{flag}: {path} is not a reproduction's results ({e})") from None
        results["choice_worth"] = {key: _shuffle_points(os.path.join(os.path.dirname(path), name), flag)
                                   for key, name in SHUFFLE_FILES.items()}
        out[seed] = results
    return out


def read_static_csv(path):
    """The `(energy, accuracy)` front of a `tools.static_front` CSV.

    Raises:
        UsageError: for a missing or malformed file.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [(float(r["relative_energy"]), float(r["test_accuracy"])) for r in rows]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UsageError(f"--static_csv={path} is not a tools.static_front CSV ({e})") from None


def _shuffle_points(path, flag):
    """`decision_value_points` of a `tools.evaluate --shuffle_control` file (None where there is none)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return float(json.load(f)["shuffle_control"]["decision_value_points"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{flag}: {path} is not a tools.evaluate --shuffle_control output ({e})") from None


def _epoch_time_ratio(energynet, baseline):
    """EnergyNet's training seconds per epoch over the baseline's (None where either is missing)."""
    try:
        ratio = (energynet["wall_seconds"] / energynet["epochs"]) / (baseline["wall_seconds"] / baseline["epochs"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return float(ratio)


def _front_of(results):
    front = results.get("static_front")
    if not front:
        return None
    return [(float(p["energy"]), float(p["test_accuracy"])) for p in front]


def row(results, front, front_source):
    """One arm's numbers for one seed (the table's quantities), its gap against `front` (None: no front)."""
    energynet = results["energynet"]
    energy = energynet.get("normalised_energy", 1.0 - energynet["energy_savings"])
    gap = None
    note = "no static front for this seed"
    if front is not None:
        measured = stats.static_gap_points(front, energy, energynet["test_accuracy"])
        gap, note = measured["gap_points"], measured["note"]
    per_image = energynet.get("per_image_energy") or {}
    selective = energynet.get("selective_blocks")
    return {
        "seed": int(results["config"]["seed"]),
        "test_accuracy": float(energynet["test_accuracy"]),
        "energy_savings": float(energynet["energy_savings"]),
        "normalised_energy": float(energy),
        "static_gap_points": gap,
        "static_gap_note": note,
        "front_source": front_source,
        "selective_blocks": None if selective is None else len(selective),
        "distinct_paths": energynet.get("distinct_paths"),
        "per_image_energy_std": per_image.get("std"),
        "choice_worth_points": (results.get("choice_worth") or {}).get("choice_worth_points"),
        "choice_worth_within_class_points": (results.get("choice_worth") or {}).get("choice_worth_within_class_points"),
        "wall_seconds": energynet.get("wall_seconds"),
        "epoch_time_ratio": _epoch_time_ratio(energynet, results["baseline"]),
        "cpu": results.get("cpu"),
        "baseline_test_accuracy": float(results["baseline"]["test_accuracy"]),
        "skip_ratio_per_block": energynet.get("skip_ratio_per_block"),
    }


def summarise(values):
    """`{mean, std, n}` of the values that are not None (`std` None for fewer than two)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std, "n": len(values)}


def build(arms, static_csv_front=None):
    """The ablation: per arm, its rows per seed, their summaries and the paired differences to the first arm.

    Args:
        arms: `[(label, {seed: results})]`, the reference first.
        static_csv_front: `(energy, accuracy)` pairs used where a seed's results hold no front.

    Returns:
        A dict with `arms` (label, rows, summary, versus_reference) and `fronts` (per seed).
    """
    fronts = {}
    for seed in sorted({s for _, by_seed in arms for s in by_seed}):
        # The reference arm first: arms that reuse its baseline share its plain networks.
        for results in [by_seed.get(seed) for _, by_seed in arms]:
            if results is not None and _front_of(results):
                fronts[seed] = {"points": _front_of(results), "source": f"seed {seed}'s own plain networks"}
                break
        else:
            if static_csv_front:
                fronts[seed] = {"points": static_csv_front, "source": "--static_csv"}
    out = []
    for label, by_seed in arms:
        rows = []
        for seed, results in sorted(by_seed.items()):
            front = fronts.get(seed)
            rows.append(row(results, front and front["points"], front and front["source"]))
        summary = {key: summarise(r[key] for r in rows) for key, *_ in QUANTITIES}
        paired = []
        for r in rows:
            ref = next((x for x in out[0]["rows"] if x["seed"] == r["seed"]), None) if out else None
            if ref is not None:
                paired.append({"seed": r["seed"],
                               "accuracy_points": 100.0 * (r["test_accuracy"] - ref["test_accuracy"]),
                               "gap_points": None if r["static_gap_points"] is None or ref["static_gap_points"] is None
                               else r["static_gap_points"] - ref["static_gap_points"]})
        versus = None
        if out:
            versus = {"seeds": [p["seed"] for p in paired],
                      "accuracy_points": summarise(p["accuracy_points"] for p in paired),
                      "gap_points": summarise(p["gap_points"] for p in paired)}
        out.append({"label": label, "rows": rows, "summary": summary, "versus_reference": versus})
    return {"arms": out, "fronts": {str(k): v for k, v in fronts.items()}}


def _cell(s, scale, unit, digits=2, seeds=None):
    if s["mean"] is None:
        return "n/a"
    text = f"{scale * s['mean']:.{digits}f}{unit}"
    text += f" ± {scale * s['std']:.{digits}f}" if s["std"] is not None else ""
    # A mean over fewer seeds than the arm has (the others outside the front) must say so.
    return text + (f" ({s['n']} of {seeds} seeds)" if seeds is not None and s["n"] < seeds else "")


def markdown(ablation, command):
    """The ablation as Markdown: one row per arm (mean ± std over seeds), then every seed's row."""
    reference = ablation["arms"][0]["label"]
    lines = ["# Ablation", "", f"Command: `{command}`", "",
             f"Mean ± standard deviation over the seeds; \"vs {reference}\" is the paired difference "
             "(same seed) in points. Static gap: EnergyNet's test accuracy minus the plain networks' interpolated "
             "at its energy (negative: a plain shallower ResNet does better; n/a outside the front).", "",
             "| arm | seeds | " + " | ".join(label for _, label, _, _ in QUANTITIES)
             + f" | accuracy vs {reference} | gap vs {reference} |",
             "|---|---|" + "---|" * (len(QUANTITIES) + 2)]
    for arm in ablation["arms"]:
        s = arm["summary"]
        seeds = len(arm["rows"])
        cells = [_cell(s[key], scale, unit, DIGITS.get(key, 2), seeds) for key, _, scale, unit in QUANTITIES]
        versus = arm["versus_reference"]
        cells += ["-", "-"] if versus is None else [_cell(versus["accuracy_points"], 1.0, "", seeds=seeds),
                                                    _cell(versus["gap_points"], 1.0, "", seeds=seeds)]
        lines.append(f"| {arm['label']} | {len(arm['rows'])} | " + " | ".join(cells) + " |")
    lines += ["", "| arm | seed | test accuracy | energy savings | static gap | selective | paths | "
                  "per-image std | choice worth | within class | training | per epoch vs baseline | CPU | baseline | "
                  "skip ratio per gated block |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ablation["arms"]:
        for r in arm["rows"]:
            gap = "n/a" if r["static_gap_points"] is None else f"{r['static_gap_points']:+.2f}"
            skips = ", ".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in (r["skip_ratio_per_block"] or []))
            std = "n/a" if r["per_image_energy_std"] is None else f"{r['per_image_energy_std']:.4f}"
            worth, within, wall, ratio = (_number(r[k], f) for k, f in (
                ("choice_worth_points", "{:+.2f}"), ("choice_worth_within_class_points", "{:+.2f}"),
                ("wall_seconds", "{:,.0f} s"), ("epoch_time_ratio", "{:.2f}x")))
            lines.append(f"| {arm['label']} | {r['seed']} | {100 * r['test_accuracy']:.2f}% | "
                         f"{100 * r['energy_savings']:.1f}% | {gap} | {r['selective_blocks']} | {r['distinct_paths']} | "
                         f"{std} | {worth} | {within} | {wall} | {ratio} | {r['cpu'] or 'n/a'} | "
                         f"{100 * r['baseline_test_accuracy']:.2f}% | {skips} |")
    lines += ["", "Fronts: " + "; ".join(f"seed {seed}: {front['source']} ("
                                         + ", ".join(f"{100 * a:.2f}% at {e:.3f}" for e, a in front["points"]) + ")"
                                         for seed, front in sorted(ablation["fronts"].items()))]
    return "\n".join(lines) + "\n"


def _number(value, fmt):
    return "n/a" if value is None else fmt.format(value)


def plot(ablation, path):
    """Test accuracy against energy savings: each seed's point, each arm's mean, each seed's static front."""
    from tools import plots

    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for seed, front in sorted(ablation["fronts"].items()):
        points = sorted(front["points"])
        ax.plot([100 * (1 - e) for e, _ in points], [100 * a for _, a in points], "-", color="grey",
                marker="D", ms=4, alpha=0.4 + 0.6 / (1 + int(seed)),
                label="plain ResNets (static front), per seed" if seed == min(ablation["fronts"]) else None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, arm in enumerate(ablation["arms"]):
        # Past the colour cycle, another marker: no two arms look alike.
        color, marker = colors[k % len(colors)], ("*", "s", "^", "P")[(k // len(colors)) % 4]
        xs = [100 * r["energy_savings"] for r in arm["rows"]]
        ys = [100 * r["test_accuracy"] for r in arm["rows"]]
        ax.scatter(xs, ys, color=color, alpha=0.5, s=25, marker="o" if marker == "*" else marker)
        s = arm["summary"]
        ax.errorbar(100 * s["energy_savings"]["mean"], 100 * s["test_accuracy"]["mean"],
                    xerr=None if s["energy_savings"]["std"] is None else 100 * s["energy_savings"]["std"],
                    yerr=None if s["test_accuracy"]["std"] is None else 100 * s["test_accuracy"]["std"],
                    color=color, marker=marker, ms=12 if marker == "*" else 8, capsize=3,
                    label=f"{arm['label']} (mean ± std, {len(xs)} seeds)" if len(xs) > 1 else f"{arm['label']} (1 seed)")
    ax.set_xlabel("energy savings, gates charged (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    # Beside the axes: with many arms a legend inside would cover their seeds.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("Ablation: every arm's seeds against the plain networks of the same budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main(command):
    arms = parse_arms(FLAGS.arms)
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory (e.g. --out=runs/ablation)")
    loaded = [(label, load_arm(directory)) for label, directory in arms]
    csv_front = read_static_csv(FLAGS.static_csv) if FLAGS.static_csv else None
    ablation = build(loaded, csv_front)
    ablation["command"] = command
    os.makedirs(FLAGS.out, exist_ok=True)
    io_utils.atomic_write_text(os.path.join(FLAGS.out, "ablation.json"), json.dumps(ablation, indent=2) + "\n")
    io_utils.atomic_write_text(os.path.join(FLAGS.out, "ablation.md"), markdown(ablation, command))
    plot(ablation, os.path.join(FLAGS.out, "ablation.png"))
    for arm in ablation["arms"]:
        s = arm["summary"]
        print(f"[ablation] {arm['label']}: {len(arm['rows'])} seed(s), test accuracy "
              f"{_cell(s['test_accuracy'], 100.0, '%')}, savings {_cell(s['energy_savings'], 100.0, '%')}, "
              f"static gap {_cell(s['static_gap_points'], 1.0, '')}", flush=True)
    print(f"[ablation] wrote {FLAGS.out}/ablation.json, ablation.md, ablation.png", flush=True)


def _entry(argv):
    import sys

    command = "python -m tools.ablation " + " ".join(sys.argv[1:])
    cli.run_tool(lambda: main(command), argv)


if __name__ == "__main__":
    _define_flags()
    app.run(_entry, flags_parser=cli.parse_flags_or_exit)
