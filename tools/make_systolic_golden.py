"""Regenerates the SCALE-Sim 3.0.0 golden reports used by tests/test_systolic.py.

Runs the real SCALE-Sim (PyPI `scalesim==3.0.0`) in its own virtual environment
(it needs numpy<2), one run per case, and stores the case's inputs and SCALE-Sim's
report files under `tests/golden/systolic/<case>/`:

  topology.csv, config.cfg                      the inputs, in SCALE-Sim's formats
  COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv,
  DETAILED_ACCESS_REPORT.csv                    SCALE-Sim's own outputs, verbatim

Usage:
  python -m tools.make_systolic_golden [--venv=DIR] [--outdir=DIR] [--cases=a,b]
      [--jobs=2] [--list]

The virtual environment is created when missing (`python3 -m venv DIR` then
`pip install scalesim==3.0.0 numpy==1.26.4 pandas==2.2.3`). Its default is
$SCALESIM_VENV or ~/.cache/energynet_tf/scalesim-venv (outside the repository).

This script imports neither TensorFlow nor the project, so it runs anywhere.
"""

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

SCALESIM_REQUIREMENTS = ("scalesim==3.0.0", "numpy==1.26.4", "pandas==2.2.3")
DEFAULT_VENV = os.environ.get(
    "SCALESIM_VENV",
    os.path.join(os.path.expanduser("~"), ".cache", "energynet_tf", "scalesim-venv"))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTDIR = os.path.join(REPO_ROOT, "tests", "golden", "systolic")
REPORT_FILES = ("COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv")

TOPOLOGY_HEADER = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, "
                   "Channels, Num Filter, Strides,")

_CONFIG_TEMPLATE = """\
[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:    {ifmap_kb}
FilterSramSzkB:   {filter_kb}
OfmapSramSzkB:    {ofmap_kb}
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Dataflow : {dataflow}
Bandwidth : 10
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""

# Runs inside the SCALE-Sim venv: argv = config, topology, layout, outdir.
_RUNNER = """
import sys
from scalesim.scale_sim import scalesim
sim = scalesim(save_disk_space=True, verbose=False, config=sys.argv[1],
               topology=sys.argv[2], layout=sys.argv[3])
sim.run_scale(top_path=sys.argv[4])
"""


def config_text(rows=32, cols=32, dataflow="os", ifmap_kb=64, filter_kb=64, ofmap_kb=64,
                run_name="golden"):
    """Returns a SCALE-Sim .cfg (CALC bandwidth mode) with the given settings."""
    return _CONFIG_TEMPLATE.format(rows=rows, cols=cols, dataflow=dataflow, ifmap_kb=ifmap_kb,
                                   filter_kb=filter_kb, ofmap_kb=ofmap_kb, run_name=run_name)


def topology_text(layers):
    """Returns a SCALE-Sim topology CSV for (name, H, W, R, S, C, K, stride) tuples."""
    lines = [TOPOLOGY_HEADER]
    for layer in layers:
        lines.append(", ".join(str(v) for v in layer) + ",")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# The golden cases.
# ----------------------------------------------------------------------------------------
def _same(name, hw, k, s, c, f):
    """A 'same'-padded square conv as SCALE-Sim sees it: H_eff = (Ho - 1) * s + k."""
    ho = -(-hw // s)
    h_eff = (ho - 1) * s + k
    return (name, h_eff, h_eff, k, k, c, f, s)


def resnet38_distinct_layers():
    """Every distinct layer of CIFAR ResNet-38 (docs/design.md §1.1) in SCALE-Sim's view."""
    return [
        _same("stem", 32, 3, 1, 3, 16),
        _same("s1_conv", 32, 3, 1, 16, 16),
        _same("s2_conv1", 32, 3, 2, 16, 32),
        _same("s2_proj", 32, 1, 2, 16, 32),
        _same("s2_conv", 16, 3, 1, 32, 32),
        _same("s3_conv1", 16, 3, 2, 32, 64),
        _same("s3_proj", 16, 1, 2, 32, 64),
        _same("s3_conv", 8, 3, 1, 64, 64),
        ("fc", 1, 1, 1, 1, 64, 10, 1),
    ]


def resnet38_layers():
    """The full CIFAR ResNet-38 topology (40 rows: 37 convs, 2 projections, the dense head)."""
    distinct = {row[0]: row for row in resnet38_distinct_layers()}
    layers = [distinct["stem"]]
    for stage in (1, 2, 3):
        for block in range(6):
            for conv in (1, 2):
                if stage > 1 and block == 0 and conv == 1:
                    row = distinct["s%d_conv1" % stage]
                else:
                    row = distinct["s%d_conv" % stage]
                layers.append(("s%d_b%d_conv%d" % (stage, block, conv),) + row[1:])
            if stage > 1 and block == 0:
                layers.append(("s%d_b0_proj" % stage,) + distinct["s%d_proj" % stage][1:])
    layers.append(distinct["fc"])
    return layers


def resnet50_distinct_layers(image_size=224, classes=200):
    """Every distinct layer of ResNet-50 (bottleneck stages [3, 4, 6, 3]) in SCALE-Sim's view."""
    layers = [_same("conv1", image_size, 7, 2, 3, 64)]
    hw = -(-image_size // 2)
    hw = -(-hw // 2)  # 3x3 stride-2 max pool (not counted).
    in_ch = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        stride = 1 if stage == 0 else 2
        out_ch = 4 * width
        p = "s%d" % (stage + 1)
        # First block: 1x1 reduce, 3x3 (carries the stride), 1x1 expand, projection.
        layers.append(_same(p + "_b0_conv1", hw, 1, 1, in_ch, width))
        layers.append(_same(p + "_b0_conv2", hw, 3, stride, width, width))
        out_hw = -(-hw // stride)
        layers.append(_same(p + "_conv3", out_hw, 1, 1, width, out_ch))
        layers.append(_same(p + "_b0_proj", hw, 1, stride, in_ch, out_ch))
        if blocks > 1:
            layers.append(_same(p + "_conv1", out_hw, 1, 1, out_ch, width))
            layers.append(_same(p + "_conv2", out_hw, 3, 1, width, width))
        hw, in_ch = out_hw, out_ch
    layers.append(("fc", 1, 1, 1, 1, in_ch, classes, 1))
    return layers


ODD_LAYERS = [
        # Non-square inputs, 5x3 filters, strides 2 and 3, windows that hang off the edge
        # (SCALE-Sim's ceil output size), channels/filters not multiples of the array.
    ("rect_5x3", 13, 9, 5, 3, 3, 5, 1),
    ("rect_s2", 12, 17, 3, 3, 5, 7, 2),
    ("rect_s3_hang", 14, 11, 3, 2, 4, 9, 3),
    ("k7_s2", 21, 21, 7, 7, 3, 13, 2),
    ("k1_s3_skip", 16, 10, 1, 1, 6, 11, 3),
    ("one_channel", 9, 9, 3, 3, 1, 17, 1),
    ("one_filter", 9, 7, 3, 3, 19, 1, 1),
    ("dense_like", 1, 1, 1, 1, 37, 23, 1),
    ("pointwise", 6, 6, 1, 1, 40, 33, 1),
    ("full_window", 5, 5, 5, 5, 2, 3, 1),
    ("k1_s3_all_invalid", 5, 7, 1, 1, 3, 4, 3),
]

# Layers big enough that 1-2 kB SRAMs force every operand to be re-fetched.
REFETCH_LAYERS = [
    ("rf_conv", 18, 18, 3, 3, 16, 20, 1),
    ("rf_s2", 17, 15, 3, 3, 12, 24, 2),
    ("rf_1x1", 12, 12, 1, 1, 48, 40, 1),
    ("rf_5x3", 14, 10, 5, 3, 8, 12, 1),
]


def gate_layers():
    """The gates' own layers of EnergyNet (docs/design.md §1.2) as dense rows: projection to 10,
    the shared LSTM cell ([x, h] -> 4 gates) and the output unit."""
    return [("gate_proj16", 1, 1, 1, 1, 16, 10, 1), ("gate_proj64", 1, 1, 1, 1, 64, 10, 1),
            ("gate_lstm", 1, 1, 1, 1, 20, 40, 1), ("gate_out", 1, 1, 1, 1, 10, 1, 1)]


def resnet50_224_subset():
    """A few full-size ResNet-50 layers at 224x224 (SCALE-Sim needs ~1 min for each)."""
    keep = ("conv1", "s1_b0_conv2", "s3_conv1", "s4_conv2", "fc")
    return [row for row in resnet50_distinct_layers(224) if row[0] in keep]


def golden_cases():
    """Returns {case name: (config kwargs, layers)}."""
    cases = {}
    for df in ("os", "ws", "is"):
        # The networks on the default accelerator (32x32, 64 kB SRAMs).
        cases["resnet38_32x32_%s" % df] = (dict(rows=32, cols=32, dataflow=df),
                                           resnet38_distinct_layers() + gate_layers())
        cases["resnet50_64px_32x32_%s" % df] = (dict(rows=32, cols=32, dataflow=df),
                                                resnet50_distinct_layers(64))
        # ResNet-38 on a small array with small SRAMs: real layers that re-fetch.
        cases["resnet38_8x8_small_sram_%s" % df] = (
            dict(rows=8, cols=8, dataflow=df, ifmap_kb=8, filter_kb=4, ofmap_kb=2),
            resnet38_distinct_layers())
        for rows, cols in ((8, 8), (32, 32), (12, 14)):
            cases["odd_%dx%d_%s" % (rows, cols, df)] = (dict(rows=rows, cols=cols, dataflow=df),
                                                         ODD_LAYERS)
            # 1 kB SRAMs: every operand is re-fetched and the ofmap drains during the run.
            cases["refetch_%dx%d_%s" % (rows, cols, df)] = (
                dict(rows=rows, cols=cols, dataflow=df, ifmap_kb=1, filter_kb=1, ofmap_kb=1),
                REFETCH_LAYERS)
        cases["odd_12x14_mixed_sram_%s" % df] = (
            dict(rows=12, cols=14, dataflow=df, ifmap_kb=2, filter_kb=3, ofmap_kb=1), ODD_LAYERS)
    cases["resnet50_224px_32x32_os"] = (dict(rows=32, cols=32, dataflow="os"),
                                        resnet50_224_subset())
    return cases


# ----------------------------------------------------------------------------------------
# Running SCALE-Sim.
# ----------------------------------------------------------------------------------------
def ensure_venv(venv):
    """Creates the SCALE-Sim virtual environment at `venv` if it is missing; returns its python."""
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        probe = subprocess.run([python, "-c", "import scalesim"], capture_output=True)
        if probe.returncode == 0:
            return python
    print("Creating the SCALE-Sim virtual environment in %s" % venv, flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *SCALESIM_REQUIREMENTS],
                   check=True)
    return python


def run_scalesim(python, config, topology, workdir):
    """Runs SCALE-Sim on the given .cfg and topology texts; returns {report file: text}."""
    cfg_path = os.path.join(workdir, "config.cfg")
    topo_path = os.path.join(workdir, "topology.csv")
    layout_path = os.path.join(workdir, "layout.csv")
    with open(cfg_path, "w") as f:
        f.write(config)
    with open(topo_path, "w") as f:
        f.write(topology)
    # SCALE-Sim opens the layout file even when no custom layout is used: header only.
    with open(layout_path, "w") as f:
        f.write("Layer name,\n")
    outdir = os.path.join(workdir, "out")
    proc = subprocess.run([python, "-c", _RUNNER, cfg_path, topo_path, layout_path, outdir],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("SCALE-Sim failed:\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
    run_dirs = [d for d in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, d))]
    if len(run_dirs) != 1:
        raise RuntimeError("unexpected SCALE-Sim output layout: %r" % run_dirs)
    reports = {}
    for name in REPORT_FILES:
        with open(os.path.join(outdir, run_dirs[0], name)) as f:
            reports[name] = f.read()
    return reports


def _make_case(python, outdir, name, cfg_kwargs, layers):
    start = time.time()
    config = config_text(**cfg_kwargs)
    topology = topology_text(layers)
    with tempfile.TemporaryDirectory() as workdir:
        reports = run_scalesim(python, config, topology, workdir)
    case_dir = os.path.join(outdir, name)
    tmp_dir = case_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    with open(os.path.join(tmp_dir, "config.cfg"), "w") as f:
        f.write(config)
    with open(os.path.join(tmp_dir, "topology.csv"), "w") as f:
        f.write(topology)
    for fname, text in reports.items():
        with open(os.path.join(tmp_dir, fname), "w") as f:
            f.write(text)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.rename(tmp_dir, case_dir)
    return name, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=DEFAULT_VENV,
                        help="SCALE-Sim virtual environment (created when missing)")
    parser.add_argument("--outdir", default=DEFAULT_OUTDIR, help="golden directory")
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel SCALE-Sim runs")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    cases = golden_cases()
    if args.list:
        for name, (cfg, layers) in cases.items():
            print("%-28s %s, %d layers" % (name, cfg, len(layers)))
        return 0
    names = [n for n in args.cases.split(",") if n] or list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error("unknown cases: %s" % ", ".join(unknown))

    python = ensure_venv(args.venv)
    os.makedirs(args.outdir, exist_ok=True)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(_make_case, python, args.outdir, n, *cases[n]) for n in names]
        for future in concurrent.futures.as_completed(futures):
            name, seconds = future.result()
            print("%-28s %6.1f s" % (name, seconds), flush=True)
    print("%d cases in %.1f s -> %s" % (len(names), time.time() - start, args.outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
