"""SCALE-Sim 3.0.0-compatible cost reports from the analytical estimator (docs/systolic.md).

Usage:
  python -m tools.systolic_cost --topology=T.csv --config=C.cfg --outdir=O
      [--e_mac=1 --e_rf=1 --e_sram=6 --e_dram=200 --rf_accesses_per_mac=3]
  python -m tools.systolic_cost --keras_model=M.keras [--config=C.cfg] --outdir=O

Reads SCALE-Sim's own topology CSV (or a saved Keras model: its Conv2D and Dense calls,
`topology.model_topology`, also written as O/topology.csv) and .cfg (CALC
interface-bandwidth mode; without --config, the project's default accelerator: 32x32
output stationary, 64 kB SRAMs) and writes,
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--topology", help="SCALE-Sim topology CSV")
    source.add_argument("--keras_model", help="a saved Keras model (.keras); its Conv2D and Dense layers are costed")
    parser.add_argument("--config", help="SCALE-Sim .cfg file (required with --topology)")
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
      topology: path of the SCALE-Sim topology CSV, or the layers (`systolic.LayerShape`s).
      config: path of the SCALE-Sim .cfg, or None for `systolic.AcceleratorConfig()`.
      outdir: output directory (created if needed).
      costs: `systolic.EnergyCosts` of ENERGY_REPORT.csv.

    Returns:
      The per-layer counts and energies (`systolic.estimate`).

    Raises:
      scalesim_io.ScaleSimFormatError: on a bad input file; nothing is written then.
    """
    accelerator = scalesim_io.read_config(config).accelerator if config else systolic.AcceleratorConfig()
    layers = scalesim_io.read_topology(topology) if isinstance(topology, str) else list(topology)
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


class UnsupportedModelError(ValueError):
    """A saved model the cost model cannot read or cost; the message names the file and the layer."""


# Layers that multiply and accumulate but are not a Conv2D or a Dense: the cost model has no row for them.
_UNCOSTED = ("Conv1D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
             "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "EinsumDense", "MultiHeadAttention",
             "LSTM", "GRU", "SimpleRNN", "ConvLSTM2D")


def keras_model_layers(path):
    """The Conv2D and Dense calls of the saved Keras model at `path`, as topology rows.

    Raises:
        UnsupportedModelError: if the file is missing or not a Keras model, or a
            layer is one the cost model does not cover (dilated or grouped
            convolutions, and the layer types of `_UNCOSTED`).
    """
    if not os.path.isfile(path):
        raise UnsupportedModelError(f"--keras_model={path}: no such file")
    import keras

    import energynet_tf  # noqa: F401  (registers the project's own models for loading)
    from energynet_tf import topology

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - any reason a file is not a loadable model is one line
        raise UnsupportedModelError(f"--keras_model={path}: not a loadable Keras model "
                                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer).__name__ in _UNCOSTED:
            raise UnsupportedModelError(
                f"--keras_model={path}: layer {layer.name!r} is a {type(layer).__name__}, which the cost model "
                "does not cover (it costs Conv2D and Dense layers)")
    try:
        return topology.model_topology(model)
    except ValueError as e:
        raise UnsupportedModelError(f"--keras_model={path}: {e}") from None


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.topology and not args.config:
        print("systolic_cost: error: --config is required with --topology", file=sys.stderr)
        return 2
    try:
        costs = systolic.EnergyCosts(mac=args.e_mac, rf=args.e_rf, sram=args.e_sram,
                                     dram=args.e_dram,
                                     rf_accesses_per_mac=args.rf_accesses_per_mac)
    except ValueError as e:
        print(f"systolic_cost: error: {e}", file=sys.stderr)
        return 2
    topology = args.topology
    if args.keras_model:
        try:
            if args.config:
                scalesim_io.read_config(args.config)  # a bad .cfg is reported before TensorFlow loads
            topology = keras_model_layers(args.keras_model)
        except (scalesim_io.ScaleSimFormatError, UnsupportedModelError) as e:
            print(f"systolic_cost: error: {e}", file=sys.stderr)
            return 2
    try:
        counts = run(topology, args.config, args.outdir, costs)
        if args.keras_model:
            scalesim_io.write_topology(os.path.join(args.outdir, "topology.csv"), topology)
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
