"""The budget trend: does EnergyNet's accuracy drop and static gap close as training gets longer?

    python -m tools.budget_trend --out=runs/trend \
        --runs=preset=runs/repro_cpu,preset=runs/repro_cpu_30,distill=runs/repro_distill,distill=runs/repro_distill_30

Each `--runs` item is `recipe=directory`, a `tools.reproduce --out` (run with
`--static_depths`, so its `results.json` holds `static_gap_points`; with
`--seeds`, every `seed-<N>/results.json` counts). A run without plain
networks of its own (say `--reuse_baseline` of another recipe's run) is
measured against the front of a run of the same budget and seed in the list
(the plain networks depend only on the baseline's budget, depth and seed).
Items with the same recipe
are one line; the budget of each point is its preset's `epochs`. Writes
`O/budget_trend.json`, `O/budget_trend.md` and `O/budget_trend.png` (the
accuracy drop against the baseline and the static gap, in points, and the
per-image energy std, in % of E_total, against the training budget in
epochs; each point the mean over its seeds, with every seed drawn).
"""

import json
import os

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf import io_utils
from energynet_tf.cli import UsageError
from tools import ablation

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_list("runs", [], "recipe=directory,...: tools.reproduce outputs; the same recipe at several "
                                  "budgets makes one line.")
    flags.DEFINE_string("out", None, "Output directory: budget_trend.json, budget_trend.md, budget_trend.png.")


def parse_runs(items):
    """`[(recipe, directory)]` from `recipe=directory` items (a recipe may repeat: one per budget).

    Raises:
        UsageError: for an item that is not recipe=directory, or no items.
    """
    return ablation.parse_arms(items, "--runs", "recipe", unique=False)


def trend(loaded):
    """Per recipe, one point per budget: the accuracy drop and static gap of every seed and their means.

    Args:
        loaded: `[(recipe, {seed: results})]`.

    Returns:
        `{recipe: [{epochs, seeds, accuracy_drop_points, static_gap_points, ...}, ...]}`, budgets ascending.

    Raises:
        UsageError: when one recipe has two directories of the same budget.
    """
    fronts = {}
    for _, by_seed in loaded:
        for results in by_seed.values():
            front = ablation._front_of(results)
            if front:
                fronts.setdefault((int(results["config"]["epochs"]), int(results["config"]["seed"])), front)

    def gap(results):
        if "static_front" in results or (results.get("static_gap_points") is not None):
            return results.get("static_gap_points")
        front = fronts.get((int(results["config"]["epochs"]), int(results["config"]["seed"])))
        return None if front is None else ablation.row(results, front, None)["static_gap_points"]

    out = {}
    for recipe, by_seed in loaded:
        epochs = {int(r["config"]["epochs"]) for r in by_seed.values()}
        for budget in sorted(epochs):
            rows = [r for r in by_seed.values() if int(r["config"]["epochs"]) == budget]
            points = out.setdefault(recipe, [])
            if any(p["epochs"] == budget for p in points):
                raise UsageError(f"--runs: recipe {recipe!r} has two reproductions of {budget} epochs")
            drops = [float(r["accuracy_drop_points"]) for r in rows]
            gaps = [gap(r) for r in rows]
            # Whether the gates decide per image as training gets longer (None for runs without per-image fields).
            spread = [ablation.row(r, None, None) for r in rows]
            stds = [x["per_image_energy_std"] for x in spread]
            points.append({
                "epochs": budget,
                "seeds": sorted(int(r["config"]["seed"]) for r in rows),
                "accuracy_drop_points": drops,
                "static_gap_points": gaps,
                "energy_savings": [float(r["energynet"]["energy_savings"]) for r in rows],
                "per_image_energy_std": stds,
                "selective_blocks": [x["selective_blocks"] for x in spread],
                "mean_accuracy_drop_points": ablation.summarise(drops)["mean"],
                "mean_static_gap_points": ablation.summarise(gaps)["mean"],
                "mean_energy_savings": ablation.summarise(r["energynet"]["energy_savings"] for r in rows)["mean"],
                "mean_per_image_energy_std": ablation.summarise(stds)["mean"],
            })
        out[recipe].sort(key=lambda p: p["epochs"])
    return out


def markdown(result, command):
    """The trend as a Markdown table: recipe, budget, seeds, accuracy drop, static gap, savings, per-image spread."""
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = ["# Accuracy drop and static gap against the training budget", "", f"Command: `{command}`", "",
             "Accuracy drop: the baseline's test accuracy minus EnergyNet's (points; positive: EnergyNet is "
             "below). Static gap: EnergyNet's test accuracy minus the plain networks' of the same energy "
             "(points; negative: a plain shallower ResNet does better). Per-image energy std: of the test "
             "images' energies, in % of E_total (0: every image runs the same blocks). Selective blocks: "
             "skipped by 5-95% of the test images. Means over the seeds.", "",
             "| recipe | epochs | seeds | accuracy drop | static gap | energy savings | per-image energy std "
             "| selective blocks |", "|---|---|---|---|---|---|---|---|"]
    for recipe, points in result.items():
        for p in points:
            selective = ",".join("n/a" if v is None else str(v) for v in p.get("selective_blocks", [])) or "n/a"
            lines.append(f"| {recipe} | {p['epochs']} | {','.join(map(str, p['seeds']))} | "
                         f"{fmt(p['mean_accuracy_drop_points'], '+.2f')} | {fmt(p['mean_static_gap_points'], '+.2f')} | "
                         f"{fmt(p['mean_energy_savings'] and 100 * p['mean_energy_savings'], '.1f')}% | "
                         f"{pct(p.get('mean_per_image_energy_std'))} | {selective} |")
    return "\n".join(lines) + "\n"


def plot(result, path):
    """Three panels against the budget: accuracy drop, static gap (0 marked), per-image energy std; a line per recipe."""
    from tools import plots

    plt = plots._plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (recipe, points) in enumerate(result.items()):
        color = colors[k % len(colors)]
        for ax, key, scale in zip(axes, ("accuracy_drop_points", "static_gap_points", "per_image_energy_std"),
                                  (1.0, 1.0, 100.0)):
            kept = [p for p in points if p.get(f"mean_{key}") is not None]
            ax.plot([p["epochs"] for p in kept], [scale * p[f"mean_{key}"] for p in kept], "-o", color=color,
                    label=recipe)
            for p in points:
                values = [scale * v for v in p.get(key, []) if v is not None]
                ax.scatter([p["epochs"]] * len(values), values, color=color, alpha=0.35, s=18)
    axes[0].set_title("baseline minus EnergyNet (points; 0: equal accuracy)", fontsize=10)
    axes[1].set_title("EnergyNet minus the plain ResNets of its energy (points)", fontsize=10)
    axes[2].set_title("per-image energy std (% of E_total; 0: one path for all)", fontsize=10)
    budgets = sorted({p["epochs"] for points in result.values() for p in points})
    for ax in axes:
        ax.set_xticks(budgets)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("training budget (epochs per arm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("points")
    axes[2].set_ylabel("% of E_total")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(command):
    items = parse_runs(FLAGS.runs)
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory (e.g. --out=runs/trend)")
    loaded = [(recipe, ablation.load_arm(directory, "--runs")) for recipe, directory in items]
    result = trend(loaded)
    os.makedirs(FLAGS.out, exist_ok=True)
    io_utils.atomic_write_text(os.path.join(FLAGS.out, "budget_trend.json"),
                               json.dumps({"command": command, "recipes": result}, indent=2) + "\n")
    io_utils.atomic_write_text(os.path.join(FLAGS.out, "budget_trend.md"), markdown(result, command))
    plot(result, os.path.join(FLAGS.out, "budget_trend.png"))
    print(f"[budget_trend] wrote {FLAGS.out}/budget_trend.json, budget_trend.md, budget_trend.png", flush=True)


def _entry(argv):
    import sys

    command = "python -m tools.budget_trend " + " ".join(sys.argv[1:])
    cli.run_tool(lambda: main(command), argv)


if __name__ == "__main__":
    _define_flags()
    app.run(_entry, flags_parser=cli.parse_flags_or_exit)
