"""Training speed of 2 workers (MultiWorkerMirroredStrategy on loopback) against 1, side by side.

    python -m tools.bench_workers --data_dir=../shared/data/tensorflow_datasets --depth=20 --rounds=3

Each round trains the same baseline run (`trainers.cifar`, same global batch,
`--max_train_examples` images, 2 epochs) once in one process and once as two
workers on 127.0.0.1, in turn, and reads the training speed of the second epoch from
the chief's last progress line of that epoch (images/s of its training steps;
the first epoch includes tracing and start-up, validation is not counted). It
prints each round's images/s and the ratio, then the median ratio. On one
machine the two workers share its cores, so this measures the cost of the
collectives and of computing half batches, not a speed-up; on separate
machines each worker has its own.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError
from tools import runs

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RATE = re.compile(r"^epoch 2 step (\d+)/\1 (\d+) img/s")


def _define_flags():
    flags.DEFINE_string("data_dir", None, "tfds directory holding cifar10/3.0.2 (or TFDS_DATA_DIR).")
    flags.DEFINE_integer("depth", 20, "Network depth.")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.")
    flags.DEFINE_integer("max_train_examples", 5120, "Training images per epoch.")
    flags.DEFINE_integer("rounds", 3, "Rounds of (1 process, 2 workers).")
    flags.DEFINE_integer("timeout", 1800, "Seconds allowed for one run.")


def _epoch_rate(output):
    """Images per second of the second epoch's training steps (its last progress line), from the chief's output."""
    for line in output.splitlines():
        match = _RATE.match(line)
        if match:
            return float(match.group(2))
    raise RuntimeError("no progress line for the end of epoch 2 in the trainer's output:\n" + output[-2000:])


def _run(workers, data_dir, scratch):
    """Trains once with `workers` processes; returns the chief's training images/s in the second epoch."""
    model_dir = tempfile.mkdtemp(dir=scratch)
    args = [sys.executable, "-m", "trainers.cifar", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
            f"--depth={FLAGS.depth}", "--baseline", "--phase1_epochs=2", f"--batch_size={FLAGS.batch_size}",
            f"--max_train_examples={FLAGS.max_train_examples}", "--validation_examples=50", "--noevaluate_test",
            "--checkpoint_every_steps=0"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    processes = []
    cluster = {"worker": [f"127.0.0.1:{p}" for p in runs.free_ports(workers)]} if workers > 1 else None
    for index in range(workers):
        extra = {}
        if cluster:
            extra["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(args + (["--strategy=multi_worker"] if cluster else []), cwd=REPO,
                                          env=dict(env, **extra), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=FLAGS.timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(model_dir, ignore_errors=True)
    for process, output in zip(processes, outputs):
        if process.returncode != 0:
            raise RuntimeError(f"a {workers}-worker run failed (exit {process.returncode}):\n{output[-2000:]}")
    return _epoch_rate(outputs[0])


def main():
    data_dir = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    if not data_dir:
        raise UsageError("--data_dir is required (or TFDS_DATA_DIR): the tfds directory holding cifar10/3.0.2")
    for name in ("rounds", "batch_size", "max_train_examples"):
        if getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name}={getattr(FLAGS, name)} must be a positive integer")
    if FLAGS.batch_size % 2:
        raise UsageError(f"--batch_size={FLAGS.batch_size} must be even (two workers split it)")
    images = (FLAGS.max_train_examples // FLAGS.batch_size) * FLAGS.batch_size
    ratios = []
    scratch = tempfile.mkdtemp(prefix="bench-workers-")
    try:
        for r in range(FLAGS.rounds):
            one = _run(1, data_dir, scratch)
            two = _run(2, data_dir, scratch)
            ratios.append(two / one)
            print(f"[bench_workers] round {r + 1}/{FLAGS.rounds}: 1 process {one:.0f} img/s, "
                  f"2 workers {two:.0f} img/s, speed ratio (2 workers / 1) {two / one:.2f}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"[bench_workers] median speed ratio, 2 workers over 1 process: {statistics.median(ratios):.2f} "
          f"(ResNet-{FLAGS.depth}, global batch {FLAGS.batch_size}, {images} images per epoch, "
          f"{FLAGS.rounds} rounds, {time.strftime('%Y-%m-%d')})", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(lambda argv: cli.run_tool(main, argv), flags_parser=cli.parse_flags_or_exit)
