"""SCALE-Sim 3.0.0-compatible cost reports from the analytical estimator (docs/systolic.md).

Usage:
  python -m tools.systolic_cost --topology=T.csv --config=C.cfg --outdir=O
      [--e_mac=1 --e_rf=1 --e_sram=6 --e_dram=200 --rf_accesses_per_mac=3]

Reads SCALE-Sim's own topology CSV and .cfg (CALC interface-bandwidth mode) and writes,
in O, SCALE-Sim's COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv and
DETAILED_ACCESS_REPORT.csv (same header lines, columns and numbers as SCALE-Sim, one
row per layer in topology order) plus ENERGY_REPORT.csv (the docs/design.md §1.3 energy terms
per layer, with the given normalised costs).

A bad input file or flag is reported in one line naming the file, line and value, with
exit status 2 and no output written.
"""

import argparse
import os
import sys

# Keep TensorFlow's C++ start-up chatter out of the report output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from energynet_tf import scalesim_io  # noqa: E402
from energynet_tf import systolic  # noqa: E402


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message):
        self.exit(2, f"systolic_cost: error: {message}\n")


def _parser():
    parser = _ArgumentParser(prog="python -m tools.systolic_cost", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", required=True, help="SCALE-Sim topology CSV")
    parser.add_argument("--config", required=True, help="SCALE-Sim .cfg file")
    parser.add_argument("--outdir", required=True, help="output directory for the reports")
    defaults = systolic.EnergyCosts()
    parser.add_argument("--e_mac", type=float, default=defaults.mac, help="energy of a MAC")
    parser.add_argument("--e_rf", type=float, default=defaults.rf,
                        help="energy of a register-file access")
    parser.add_argument("--e_sram", type=float, default=defaults.sram,
                        help="energy of an SRAM access")
    parser.add_argument("--e_dram", type=float, default=defaults.dram,
                        help="energy of a DRAM access")
    parser.add_argument("--rf_accesses_per_mac", type=float,
                        default=defaults.rf_accesses_per_mac,
                        help="register-file accesses per MAC")
    return parser


def run(topology, config, outdir, costs=systolic.EnergyCosts()):
    """Reads the inputs, estimates every layer and writes the four reports.

    Args:
      topology: path of the SCALE-Sim topology CSV.
      config: path of the SCALE-Sim .cfg.
      outdir: output directory (created if needed).
      costs: `systolic.EnergyCosts` of ENERGY_REPORT.csv.

    Returns:
      The per-layer counts and energies (`systolic.estimate`).

    Raises:
      scalesim_io.ScaleSimFormatError: on a bad input file; nothing is written then.
    """
    cfg = scalesim_io.read_config(config)
    layers = scalesim_io.read_topology(topology)
    accelerator = cfg.accelerator
    counts = systolic.estimate_counts(layers, accelerator)
    for i, layer in enumerate(layers):
        if counts["compute_cycles"][i] == 0:
            # SCALE-Sim divides by the cycle count for its utilisation and bandwidth columns.
            raise scalesim_io.ScaleSimFormatError(
                topology, None, f"layer {layer.name!r} takes 0 cycles on a "
                f"{accelerator.array_rows}x{accelerator.array_cols} array, which SCALE-Sim "
                "cannot report (it divides by the cycle count)")
    energies = systolic.energy_terms(counts, costs)
    reports = scalesim_io.format_reports(layers, accelerator, counts, costs, energies)
    scalesim_io.write_reports(outdir, reports)
    counts.update(energies)
    return counts


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        costs = systolic.EnergyCosts(mac=args.e_mac, rf=args.e_rf, sram=args.e_sram,
                                     dram=args.e_dram,
                                     rf_accesses_per_mac=args.rf_accesses_per_mac)
    except ValueError as e:
        print(f"systolic_cost: error: {e}", file=sys.stderr)
        return 2
    try:
        counts = run(args.topology, args.config, args.outdir, costs)
    except scalesim_io.ScaleSimFormatError as e:
        print(f"systolic_cost: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # includes systolic.UnsupportedLayerError
        # E.g. an SRAM below 100 words (AcceleratorConfig): name the config file.
        print(f"systolic_cost: error: {args.config}: {e}", file=sys.stderr)
        return 2
    print(f"{len(counts['macs'])} layers, {int(counts['macs'].sum())} MACs, "
          f"energy {float(counts['energy'].sum()):.6g} -> {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
