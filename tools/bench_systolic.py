"""Times the systolic cost estimator against real SCALE-Sim 3.0.0 on ResNet-38.

Usage:
  python -m tools.bench_systolic [--scalesim_python=PY] [--repeats=20]
      [--rows=32 --cols=32 --dataflow=os --sram_kb=64]

In one run: estimates the 40-layer CIFAR ResNet-38 topology (docs/design.md §1.1) with
`systolic.estimate_counts` (after one warm-up call, which traces the tf.functions; the
median of --repeats calls is reported), runs SCALE-Sim on the same topology and
configuration, checks that the two produce the same report files, and prints the time
ratio. SCALE-Sim's time is its own simulation (scalesim.run_scale()), measured inside
its process, so interpreter start-up and imports are excluded on both sides.

SCALE-Sim runs with the python of its virtual environment (it needs numpy<2): the
--scalesim_python flag, else $SCALESIM_VENV/bin/python, else
~/.cache/energynet_tf/scalesim-venv/bin/python (`python -m tools.make_systolic_golden`
creates that venv). Without one, the SCALE-Sim half is skipped with a message.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from energynet_tf import scalesim_io  # noqa: E402
from energynet_tf import systolic  # noqa: E402
from tools import make_systolic_golden as golden  # noqa: E402

# Runs inside the SCALE-Sim venv: argv = config, topology, layout, outdir; prints the
# simulation time as JSON on the last line.
_TIMED_RUNNER = """
import json, sys, time
from scalesim.scale_sim import scalesim
sim = scalesim(save_disk_space=True, verbose=False, config=sys.argv[1],
               topology=sys.argv[2], layout=sys.argv[3])
start = time.perf_counter()
sim.run_scale(top_path=sys.argv[4])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def default_scalesim_python():
    venv = os.environ.get("SCALESIM_VENV", golden.DEFAULT_VENV)
    return os.path.join(venv, "bin", "python")


def time_estimator(layers, config, repeats):
    """Returns (counts, first-call seconds, median seconds of the next `repeats` calls)."""
    start = time.perf_counter()
    counts = systolic.estimate_counts(layers, config)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        counts = systolic.estimate_counts(layers, config)
        times.append(time.perf_counter() - start)
    return counts, first, statistics.median(times)


def time_scalesim(python, layers, config):
    """Runs SCALE-Sim; returns ({report file: text}, simulation seconds, wall seconds)."""
    cfg_text = golden.config_text(rows=config.array_rows, cols=config.array_cols,
                                  dataflow=config.dataflow, ifmap_kb=config.ifmap_sram_kb,
                                  filter_kb=config.filter_sram_kb,
                                  ofmap_kb=config.ofmap_sram_kb)
    with tempfile.TemporaryDirectory() as workdir:
        paths = {}
        for name, text in (("config.cfg", cfg_text), ("topology.csv", golden.topology_text(
            [(l.name,) + l.as_tuple() for l in layers])), ("layout.csv", "Layer name,\n")):
            paths[name] = os.path.join(workdir, name)
            with open(paths[name], "w") as f:
                f.write(text)
        outdir = os.path.join(workdir, "out")
        start = time.perf_counter()
        proc = subprocess.run([python, "-c", _TIMED_RUNNER, paths["config.cfg"],
                               paths["topology.csv"], paths["layout.csv"], outdir],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError("SCALE-Sim failed:\n" + proc.stderr[-3000:])
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        run_dir = os.path.join(outdir, os.listdir(outdir)[0])
        reports = {}
        for name in scalesim_io.REPORT_FILES:
            with open(os.path.join(run_dir, name)) as f:
                reports[name] = f.read()
    return reports, seconds, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scalesim_python", default=None,
                        help="python of a venv with scalesim==3.0.0 (default: see above)")
    parser.add_argument("--repeats", type=int, default=20, help="timed estimator calls")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--cols", type=int, default=32)
    parser.add_argument("--dataflow", default="os", choices=systolic.DATAFLOWS)
    parser.add_argument("--sram_kb", type=int, default=64, help="each of the three SRAMs")
    args = parser.parse_args(argv)

    config = systolic.AcceleratorConfig(
        array_rows=args.rows, array_cols=args.cols, dataflow=args.dataflow,
        ifmap_sram_kb=args.sram_kb, filter_sram_kb=args.sram_kb, ofmap_sram_kb=args.sram_kb)
    layers = [systolic.LayerShape(*row) for row in golden.resnet38_layers()]
    print(f"ResNet-38: {len(layers)} layers; {config}")

    counts, first, median = time_estimator(layers, config, max(1, args.repeats))
    print(f"estimator: {median * 1e3:.2f} ms per call (median of {args.repeats}; "
          f"first call with tracing {first:.2f} s)")

    python = args.scalesim_python or default_scalesim_python()
    if not os.path.exists(python):
        print(f"SCALE-Sim: skipped, no python at {python} (pass --scalesim_python, set "
              "SCALESIM_VENV, or create the venv with python -m tools.make_systolic_golden)")
        return 0
    reports, seconds, wall = time_scalesim(python, layers, config)
    print(f"SCALE-Sim 3.0.0: {seconds:.2f} s simulation ({wall:.2f} s with start-up)")
    ours = scalesim_io.format_reports(layers, config, counts)
    same = [name for name in scalesim_io.REPORT_FILES if ours[name] == reports[name]]
    print("reports identical to SCALE-Sim's: " +
          ("yes (" + ", ".join(same) + ")" if len(same) == len(scalesim_io.REPORT_FILES)
           else "NO; identical only: " + (", ".join(same) or "none")))
    print(f"speed-up: {seconds / median:.0f}x (SCALE-Sim simulation / estimator median)")
    return 0 if len(same) == len(scalesim_io.REPORT_FILES) else 1


if __name__ == "__main__":
    sys.exit(main())
