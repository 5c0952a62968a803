"""Figures from run directories: accuracy vs energy, skip ratios, energy per class, easy and hard images.

    python -m tools.plots --runs=runs/reproduce/baseline,runs/reproduce/energynet --out=runs/figures

Reads each run's `metrics.json`, `config.json` and `model.keras` (CIFAR-10
runs; a trainer run directory or a `tools.reproduce` arm). Writes to `O/`:

- `accuracy_vs_energy.png`: test accuracy against energy savings (gates
  charged) of every run, baselines marked as squares;
- `skip_ratios.png`: the per-block skip ratio on the test set of every gated run;
- `energy_per_class_<run>.png`: the distribution of the energy each test image
  spent, per class (which classes EnergyNet finds easy), for each gated run;
- `examples_<run>.png`: the test images that ran the fewest and the most blocks;
- `energy_histogram_<run>.png`: the histogram of each test image's energy, the
  baseline's (1.0) marked: one bar means every image spends the same;
- `skip_by_class_<run>.png`: blocks x classes heat map of the skip ratios;
- `per_image_<run>.npz`: the per-image numbers behind the last two (label,
  prediction, executed blocks, normalised energy).
"""

import json
import os

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError
from tools import runs as runs_lib

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_list("runs", [], "Run directories (comma-separated), each with metrics.json and model.keras.")
    flags.DEFINE_list("labels", [], "A label per run for the legends (default: the directory names).")
    flags.DEFINE_string("out", None, "Output directory for the figures.")
    flags.DEFINE_integer("examples", 8, "Images per row in examples_<run>.png.")
    flags.DEFINE_integer("max_test_examples", None, "Use only the first N test images for the per-image figures.")


def load_run(path):
    """A run's metrics and config.

    Raises:
        UsageError: if `path` is not a finished CIFAR-10 run directory.
    """
    metrics = runs_lib.load_metrics(path)
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read config.json ({e})") from None
    if "test_accuracy" not in metrics:
        raise UsageError(f"{path} was trained without test evaluation (--noevaluate_test); "
                         "its test numbers come from tools.search_alpha's front")
    return {"path": path, "metrics": metrics, "config": config}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_energy(runs, labels, path):
    """Test accuracy against energy savings; baselines as squares, gated runs as stars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (run, label) in enumerate(zip(runs, labels)):
        m = run["metrics"]
        baseline = m.get("baseline", False)
        ax.plot([100 * m["energy_savings"]], [100 * m["test_accuracy"]], "s" if baseline else "*",
                ms=10 if baseline else 15, color=colors[k % len(colors)],
                label=f"{label}: {100 * m['test_accuracy']:.2f}%"
                      + (" (baseline)" if baseline else f", {round(100 * m['energy_savings'], 1) + 0.0:.1f}% saved"))
        if baseline:
            ax.axhline(100 * m["test_accuracy"], color=colors[k % len(colors)], ls=":", lw=1)
    ax.set_xlabel("energy savings, gates charged (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(-3, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Test accuracy and energy of each run (CIFAR-10 test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_skip_ratios(runs, labels, path):
    """Grouped bars: the share of test images that skip each gated block, per run."""
    import numpy as np

    plt = _plt()
    gated = [(r, l) for r, l in zip(runs, labels) if not r["metrics"].get("baseline", False)]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * max(len(r["metrics"]["skip_ratio_per_block"]) for r, _ in gated)
                                        * max(1, len(gated) / 2)), 3.8))
    width = 0.8 / len(gated)
    for k, (run, label) in enumerate(gated):
        ratios = run["metrics"]["skip_ratio_per_block"]
        x = np.arange(1, len(ratios) + 1) + (k - (len(gated) - 1) / 2) * width
        ax.bar(x, [100 * r for r in ratios], width=width, label=label)
    n = max(len(r["metrics"]["skip_ratio_per_block"]) for r, _ in gated)
    ax.set_xticks(range(1, n + 1))
    ax.set_xlabel("gated block (1 = the second residual block; the first always runs)")
    ax.set_ylabel("test images that skip it (%)")
    ax.set_ylim(0, 102)
    ax.grid(axis="y", alpha=0.3)
    # Right of the axes: inside, the legend hides the bars of the last blocks.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title("Per-block skip ratio on the test split")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def per_image(run, max_examples=None):
    """Runs a gated run's model over its test split; returns per-image arrays.

    Returns:
        A dict of numpy arrays: `images` (uint8-range floats for display),
        `labels`, `predictions`, `decisions` (1: the gated block ran),
        `blocks` (residual blocks executed, the ungated first one included)
        and `energy` (normalised, gates charged), and `class_names`.
    """
    import keras
    import numpy as np

    import energynet_tf  # noqa: F401  (registers the classes)
    from energynet_tf import evaluation
    from energynet_tf.data import cifar

    config = run["config"]
    data = cifar.load_cifar10(config["data_dir"], batch_size=config["batch_size"],
                              eval_batch_size=config["eval_batch_size"], seed=config["seed"],
                              validation_examples=config["validation_examples"],
                              max_train_examples=config["max_train_examples"])
    model = keras.saving.load_model(os.path.join(run["path"], "model.keras"), compile=False)
    arrays = evaluation.collect(model, data.test, max_examples=max_examples)
    images = []
    for x, _ in data.test:
        images.append(np.asarray(x))
        if max_examples is not None and sum(len(i) for i in images) >= max_examples:
            break
    raw = np.concatenate(images)[:len(arrays["labels"])] * np.asarray(cifar.STD) + np.asarray(cifar.MEAN)
    return {
        "images": np.clip(raw, 0, 1),
        "labels": arrays["labels"],
        "predictions": arrays["predictions"],
        "decisions": arrays["decisions"],
        "blocks": 1 + arrays["decisions"].sum(axis=1),
        "energy": arrays["energy"],
        "class_names": list(data.class_names),
    }


def plot_energy_per_class(stats, label, path):
    """Box plots of the per-image energy by class, classes sorted by their mean energy."""
    import numpy as np

    plt = _plt()
    names = stats["class_names"]
    groups = [(names[c], 100 * stats["energy"][stats["labels"] == c]) for c in range(len(names))]
    groups = [g for g in groups if len(g[1])]
    groups.sort(key=lambda g: g[1].mean())
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.boxplot([g[1] for g in groups], showmeans=True, whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels([f"{g[0]}\n{g[1].mean():.1f}%" for g in groups], fontsize=8)
    ax.set_ylabel("energy spent per image (% of the full network)")
    ax.grid(axis="y", alpha=0.3)
    correct = stats["labels"] == stats["predictions"]
    ax.set_title(f"{label}: energy per test image by class (box 25-75%, whiskers 5-95%, triangle mean)\n"
                 f"mean {100 * stats['energy'].mean():.1f}%; right {100 * stats['energy'][correct].mean():.1f}%, "
                 f"wrong {100 * stats['energy'][~correct].mean() if (~correct).any() else float('nan'):.1f}%",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    del np


def plot_examples(stats, label, per_row, path):
    """Two rows of test images: those that ran the fewest blocks and those that ran the most."""
    import numpy as np

    plt = _plt()
    order = np.lexsort((stats["energy"], stats["blocks"]))
    per_row = min(per_row, len(order))
    rows = [("fewest blocks", order[:per_row]), ("most blocks", order[::-1][:per_row])]
    fig, axes = plt.subplots(2, per_row, figsize=(1.5 * per_row, 5.2), squeeze=False)
    names = stats["class_names"]
    for r, (title, idx) in enumerate(rows):
        for c, i in enumerate(idx):
            ax = axes[r][c]
            ax.imshow(stats["images"][i], interpolation="nearest")
            ok = stats["labels"][i] == stats["predictions"][i]
            ax.set_title(f"{names[stats['labels'][i]]}\n{int(stats['blocks'][i])} blocks"
                         + ("" if ok else f"\n(said {names[stats['predictions'][i]]})"),
                         fontsize=7, color="black" if ok else "tab:red")
            ax.axis("off")
        axes[r][0].text(-0.15, 0.5, title, transform=axes[r][0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=9)
    fig.suptitle(f"{label}: test images that ran the fewest and the most residual blocks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_energy_histogram(series, path, title="Energy per test image"):
    """Histogram of each image's normalised energy, one series per run, the baseline's energy (1.0) marked.

    Args:
        series: a list of `(label, energies)`; energies normalised to the
            baseline's E_total, gates charged.
        path: the PNG to write.
        title: the figure's title.
    """
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    top = max(1.05, max(float(np.max(e)) for _, e in series) + 0.02)
    bins = np.arange(0.0, top + 0.005, 0.01)
    colors = ["tab:orange", "tab:purple", "tab:green", "tab:brown"]
    for k, (label, energies) in enumerate(series):
        energies = np.asarray(energies, np.float64)
        # Later series as outlines: a filled bar at the same energy would hide the first.
        ax.hist(energies, bins=bins, color=colors[k % len(colors)], alpha=0.75 if k == 0 else 1.0,
                histtype="stepfilled" if k == 0 else "step", lw=1.0 if k == 0 else 2.0,
                label=f"{label}: mean {energies.mean():.3f}, std {energies.std():.4f}, "
                      f"{len(energies)} images")
    ax.axvline(1.0, color="tab:blue", ls="--", lw=1.5, label="baseline (every block runs): 1.0")
    ax.set_xlim(0, top)
    ax.set_xlabel("energy of the image / the baseline network's energy (gates charged)")
    ax.set_ylabel("test images (1%-wide bins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    spread = max(float(np.std(e)) for _, e in series)
    ax.set_title(title + ("\n(one bar: every image spends the same energy, a static pruning)" if spread < 0.005 else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_skip_heatmap(skip_ratio_by_class, class_names, path, title="Skip ratio by block and class"):
    """Blocks x classes heat map of the share of each class's test images that skip each gated block.

    Args:
        skip_ratio_by_class: per class, the skip ratio of every gated block
            (None for a class with no images), as in `metrics.json`.
        class_names: the classes' names.
        path: the PNG to write.
        title: the figure's title.
    """
    import numpy as np

    plt = _plt()
    num_gates = max(len(r) for r in skip_ratio_by_class if r is not None)
    matrix = np.array([r if r is not None else [np.nan] * num_gates for r in skip_ratio_by_class]).T
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(class_names), 1.2 + 0.32 * num_gates))
    image = ax.imshow(100 * matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for b in range(num_gates):
        for c in range(len(class_names)):
            if np.isfinite(matrix[b, c]):
                v = 100 * matrix[b, c]
                ax.text(c, b, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 50 else "black")
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(num_gates))
    ax.set_yticklabels([str(b + 1) for b in range(num_gates)], fontsize=8)
    ax.set_ylabel("gated block")
    fig.colorbar(image, ax=ax, label="test images of the class that skip the block (%)")
    uniform = bool(np.nanmax(np.nanmax(matrix, axis=1) - np.nanmin(matrix, axis=1)) < 0.05)
    ax.set_title(title + ("\n(every class skips the same blocks)" if uniform else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main():
    if not FLAGS.runs:
        raise UsageError("--runs is required: comma-separated run directories")
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory for the figures")
    if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.runs):
        raise UsageError(f"--labels has {len(FLAGS.labels)} labels for {len(FLAGS.runs)} runs")
    if FLAGS.examples < 1:
        raise UsageError(f"--examples={FLAGS.examples} must be a positive integer")
    if FLAGS.max_test_examples is not None and FLAGS.max_test_examples < 1:
        raise UsageError(f"--max_test_examples={FLAGS.max_test_examples} must be a positive integer")
    runs = [load_run(os.path.abspath(p)) for p in FLAGS.runs]
    for run in runs:
        if run["config"].get("dataset") != "cifar10":
            raise UsageError(f"{run['path']}: the figures support CIFAR-10 runs; this is "
                             f"{run['config'].get('dataset')!r}")
        if not os.path.exists(os.path.join(run["path"], "model.keras")):
            raise UsageError(f"{run['path']} has no model.keras")
    labels = FLAGS.labels or [os.path.basename(r["path"].rstrip(os.sep)) for r in runs]
    out = os.path.abspath(FLAGS.out)
    os.makedirs(out, exist_ok=True)
    written = []
    plot_accuracy_vs_energy(runs, labels, os.path.join(out, "accuracy_vs_energy.png"))
    written.append("accuracy_vs_energy.png")
    gated = [(r, l) for r, l in zip(runs, labels) if not r["metrics"].get("baseline", False)]
    if gated:
        plot_skip_ratios(runs, labels, os.path.join(out, "skip_ratios.png"))
        written.append("skip_ratios.png")
    import numpy as np

    for run, label in gated:
        print(f"[plots] {label}: per-image energy on the test split", flush=True)
        stats = per_image(run, FLAGS.max_test_examples)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
        np.savez(os.path.join(out, f"per_image_{safe}.npz"),
                 **{k: v for k, v in stats.items() if k not in ("images", "class_names")},
                 class_names=np.asarray(stats["class_names"]))
        plot_energy_per_class(stats, label, os.path.join(out, f"energy_per_class_{safe}.png"))
        plot_examples(stats, label, FLAGS.examples, os.path.join(out, f"examples_{safe}.png"))
        plot_energy_histogram([(label, stats["energy"])], os.path.join(out, f"energy_histogram_{safe}.png"),
                              f"{label}: energy per test image")
        from energynet_tf import evaluation

        summary = evaluation.summarise(stats["decisions"], stats["labels"], stats["energy"],
                                       len(stats["class_names"]))
        plot_skip_heatmap(summary["skip_ratio_by_class"], stats["class_names"],
                          os.path.join(out, f"skip_by_class_{safe}.png"), f"{label}: test skip ratio by block and class")
        written += [f"energy_per_class_{safe}.png", f"examples_{safe}.png", f"energy_histogram_{safe}.png",
                    f"skip_by_class_{safe}.png", f"per_image_{safe}.npz"]
    print(f"[plots] wrote {', '.join(written)} to {out}", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
