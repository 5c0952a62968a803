"""Draws docs/images/front_page.png: accuracy against energy of the plain ResNets and the EnergyNets, one budget.

    python docs/figures/front_page.py

Reads docs/static_cpu.csv (the plain ResNets, ResNet-38 is the baseline) and docs/figures/front_points.json
(each EnergyNet point with the page that measured it).
"""

import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)


def main():
    with open(os.path.join(DOCS, "static_cpu.csv")) as f:
        plain = sorted((float(r["relative_energy"]), 100 * float(r["test_accuracy"]), int(r["depth"]))
                       for r in csv.DictReader(f))
    with open(os.path.join(HERE, "front_points.json")) as f:
        spec = json.load(f)
    fig, ax = plt.subplots(figsize=(7.5, 5.4))
    ax.plot([p[0] for p in plain], [p[1] for p in plain], "-o", color="0.35", label="plain ResNets (same budget)")
    for energy, accuracy, depth in plain:
        name = f"ResNet-{depth}" + (" (baseline)" if depth == 38 else "")
        ax.annotate(name, (energy, accuracy), textcoords="offset points", xytext=(4, -12), fontsize=8, color="0.3")
    markers = ["s", "D", "^", "v", "P"]
    for k, point in enumerate(spec["points"]):
        ax.plot(point["energy"], 100 * point["test_accuracy"], markers[k % len(markers)], markersize=9,
                label=point["label"], zorder=3)
    ax.set_xlabel("energy per image (fraction of the baseline ResNet-38's, gates charged)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(spec["budget"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    out = os.path.join(DOCS, "images", "front_page.png")
    fig.savefig(out, dpi=130)
    print(out)


if __name__ == "__main__":
    main()
