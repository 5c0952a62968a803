"""Tests of `python -m tools.export` (and the argument checks of tools.bench_latency)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import export
from energynet_tf.model import EnergyNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "..", "shared", "data", "tensorflow_datasets")


def _tool(*args, module="tools.export", timeout=600):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _assert_usage_error(proc, pattern):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the trainer leaves it: model.keras and config.json."""
    directory = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8)
    model.save(directory / "model.keras")
    (directory / "config.json").write_text(json.dumps({"dataset": "cifar10", "depth": 8, "data_dir": DATA_DIR}))
    return directory


def test_export_writes_saved_model_tflite_and_metadata(run_dir, tmp_path):
    out = tmp_path / "nested" / "export"
    proc = _tool(f"--model_dir={run_dir}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["export.json", "model.tflite", "saved_model"]
    assert not [name for name in os.listdir(out.parent) if name.startswith(".export-")]
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == {"depth": 8, "baseline": False, "num_classes": 10, "image_shape": [32, 32, 3], "num_gates": 2,
                             "source": None}
    assert meta["batched_skipping"]["saved_model"] == "gather" and meta["batched_skipping"]["tflite"] == "single"
    assert meta["outputs"] == list(export.OUTPUT_KEYS)
    for backend in ("saved_model", "tflite"):
        check = meta["verification"][backend]
        assert check["decisions_identical"]
        assert check["max_abs_logit_diff_batch1"] < 1e-4 and check["max_abs_logit_diff_batch"] < 1e-4
    signature = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    assert sorted(signature.structured_outputs) == sorted(export.OUTPUT_KEYS)
    got = signature(images=tf.zeros((3, 32, 32, 3)))
    assert got["logits"].shape == (3, 10) and got["decisions"].shape == (3, 2) and got["energy"].shape == (3,)
    assert "wrote" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "--model_dir is required"),
        (("--model_dir={run}",), "--out is required"),
        (("--model_dir={tmp}/missing", "--out={tmp}/o"), "does not exist"),
        (("--model_dir={tmp}", "--out={tmp}/o"), "has no model.keras"),
        (("--model_dir={run}", "--out={tmp}/taken"), "is not empty"),
        (("--model_dir={run}", "--out={tmp}/file"), "is not a directory"),
        (("--model_dir={run}", "--out={tmp}/o", "--batched=sideways"), "sideways"),
        (("--model_dir={run}", "--out={tmp}/o", "--eval_examples=-1"), "--eval_examples=-1 must be >= 0"),
        (("--model_dir={run}", "--out={tmp}/o", "--no_such_flag"), "no_such_flag"),
        (("--model_dir={run}", "--out={tmp}/o", "stray"), "unexpected arguments"),
        (("--model_dir={run}", "--out={run}"), "is not empty"),
        (("--model_dir={run}", "--out={tmp}/o", "--threshold=1"), "--threshold=1.0 must be in (0, 1)"),
    ],
)
def test_bad_flags_and_paths_fail_in_one_line_and_write_nothing(run_dir, tmp_path, args, message):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    before = sorted(os.listdir(tmp_path))
    run_before = sorted(os.listdir(run_dir))
    proc = _tool(*(a.format(run=run_dir, tmp=tmp_path) for a in args))
    _assert_usage_error(proc, message)
    assert sorted(os.listdir(tmp_path)) == before
    assert sorted(os.listdir(run_dir)) == run_before


def test_corrupt_model_and_missing_int8_data_fail_cleanly(tmp_path, run_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.keras").write_bytes(b"not a zip file")
    _assert_usage_error(_tool(f"--model_dir={bad}", f"--out={tmp_path}/o1"), "cannot load")
    proc = _tool(f"--model_dir={run_dir}", f"--out={tmp_path}/o2", "--int8", f"--data_dir={tmp_path}/nodata")
    _assert_usage_error(proc, "nodata")
    assert sorted(os.listdir(tmp_path)) == ["bad"]


def test_bench_latency_refuses_bad_flags(tmp_path):
    _assert_usage_error(_tool("--examples=0", module="tools.bench_latency"), "--examples=0 must be >= 1")
    _assert_usage_error(_tool("--chunk=0", module="tools.bench_latency"), "--chunk=0 must be >= 1")
    _assert_usage_error(_tool("--open_fraction=2", module="tools.bench_latency"), "--open_fraction=2.0 must be in [0, 1]")
    _assert_usage_error(_tool(f"--model_dir={tmp_path}/none", module="tools.bench_latency"), "does not exist")
    _assert_usage_error(_tool(f"--keep_models={tmp_path}", module="tools.bench_latency"), "exists; give a new directory")


@pytest.mark.slow  # 30 s; test_export.py checks the int8 export itself (BUILD.md, "Test")
@pytest.mark.integration
def test_int8_export_reports_accuracy_and_gate_agreement(run_dir, tmp_path):
    if not os.path.isdir(os.path.join(DATA_DIR, "cifar10")):
        pytest.skip(f"CIFAR-10 not prepared in {DATA_DIR}")
    out = tmp_path / "int8"
    proc = _tool(
        f"--model_dir={run_dir}", f"--out={out}", "--int8", "--calibration_examples=32", "--eval_examples=64",
        "--verify_examples=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["export.json", "model.tflite", "model_int8.tflite", "saved_model"]
    meta = json.loads((out / "export.json").read_text())
    report = meta["int8"]
    assert report["examples"] == 64
    for key in ("keras_accuracy", "int8_accuracy", "float_tflite_accuracy", "top1_agreement", "gate_agreement"):
        assert 0.0 <= report[key] <= 1.0
    assert report["float_tflite_accuracy"] == report["keras_accuracy"]
    assert report["gate_agreement"] >= 0.9
    assert report["int8_tflite_bytes"] < 0.5 * report["float_tflite_bytes"]
    assert meta["int8_calibration"]["calibration_examples"] == 32
    served = export.load_exported(out, backend="int8")
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert served(images)["logits"].shape == (2, 10)


def test_a_signal_during_export_leaves_nothing_and_a_live_export_holds_its_directory(run_dir, tmp_path):
    import signal
    import time

    out = tmp_path / "export"
    args = [sys.executable, "-m", "tools.export", f"--model_dir={run_dir}", f"--out={out}", "--verify_examples=0"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".export.export-lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().startswith(str(first.pid))):
            time.sleep(0.05)
        # A second export to the same directory while the first runs: refused, naming it.
        second = _tool(f"--model_dir={run_dir}", f"--out={out}")
        _assert_usage_error(second, f"is in use by process {first.pid}")
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "interrupted (SIGINT)" in lines[0] and "Traceback" not in err
    # Nothing partial: no export directory, no staging directory, no lock file.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_to_a_full_device_stops_with_one_line_leaves_nothing_and_the_rerun_exports(run_dir, small_disk):
    out = small_disk / "export"
    # (The SavedModel alone overflows the 1 MB disk; without the TFLite file both runs are quicker.)
    proc = _tool(f"--model_dir={run_dir}", f"--out={out}", "--verify_examples=0", "--notflite")
    assert proc.returncode == 4, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"no space left on the device writing {out}" in lines[0] and "rerun the same command" in lines[0]
    assert os.listdir(small_disk) == []  # no staging directory, no lock, no half export
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    again = _tool(f"--model_dir={run_dir}", f"--out={out}", "--verify_examples=0", "--notflite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["export.json", "saved_model"]
