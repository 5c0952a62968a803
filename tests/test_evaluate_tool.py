"""Tests of tools/evaluate.py: a trained model at a gate threshold, and the sweep, as a user runs it."""

import json
import os

import numpy as np
import pytest

from conftest import TINY_TRAINER, error_lines, run_module


@pytest.fixture(scope="module")
def trained(fake_cifar_dir, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("run") / "m")
    result = run_module("trainers.cifar", f"--data_dir={fake_cifar_dir}", f"--model_dir={run}", *TINY_TRAINER)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_test_split_at_half_reproduces_the_runs_metrics(trained, tmp_path):
    out = tmp_path / "e.json"
    result = run_module("tools.evaluate", f"--model_dir={trained}", "--split=test", f"--out={out}",
                        f"--per_image={tmp_path / 'p.npz'}", "--shuffle_control=2")
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(out.read_text())
    metrics = json.loads(open(os.path.join(trained, "metrics.json")).read())
    assert got["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert got["energy_savings"] == pytest.approx(metrics["energy_savings"], abs=1e-5)
    assert got["per_image_energy"] == pytest.approx(metrics["per_image_energy"], abs=1e-6)
    assert got["distinct_paths"] == metrics["distinct_paths"]
    assert got["selective_blocks"] == metrics["selective_blocks"]
    for mine, theirs in zip(got["savings_by_class"], metrics["savings_by_class"]):
        assert (mine is None and theirs is None) or mine == pytest.approx(theirs, abs=1e-6)
    arrays = np.load(tmp_path / "p.npz")
    assert arrays["decisions"].shape == (got["examples"], 2)
    assert "threshold_sweep" not in got
    control = got["shuffle_control"]
    assert control["rounds"] == 2 and len(control["shuffled_accuracy"]) == 2
    assert control["accuracy"] == pytest.approx(got["accuracy"])
    assert control["decision_value_points"] == pytest.approx(100 * (got["accuracy"] - control["shuffled_mean"]))
    assert "[evaluate] shuffled paths, permutation 2/2" in result.stdout
    assert "per-image choice worth" in result.stdout


def test_shuffle_within_class_keeps_the_json_fields_and_says_so(trained, tmp_path):
    out = tmp_path / "w.json"
    result = run_module("tools.evaluate", f"--model_dir={trained}", "--split=test", f"--out={out}",
                        "--shuffle_control=2", "--shuffle_within_class")
    assert result.returncode == 0, result.stderr[-2000:]
    control = json.loads(out.read_text())["shuffle_control"]
    assert control["within_class"] is True and len(control["shuffled_accuracy"]) == 2
    assert "per-image choice worth beyond the class" in result.stdout
    assert "dealt at random within each class" in result.stdout


def test_sweep_on_the_validation_split(trained, tmp_path):
    out = tmp_path / "s.json"
    result = run_module("tools.evaluate", f"--model_dir={trained}", "--sweep", "--thresholds=0.2,0.5,0.8",
                        f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["split"] == "validation" and got["examples"] == 50  # the run's held-out images
    sweep = got["threshold_sweep"]
    assert [r["threshold"] for r in sweep] == [0.2, 0.5, 0.8]
    assert [r["energy_savings"] for r in sweep] == sorted(r["energy_savings"] for r in sweep)
    assert sweep[1]["accuracy"] == pytest.approx(got["accuracy"])
    assert "[evaluate] threshold 0.80 (3/3)" in result.stdout


@pytest.mark.parametrize("args, needle", [
    ([], "--model_dir is required"),
    (["--model_dir=/nonexistent"], "neither a run directory nor"),
    (["--threshold=1.5"], "--threshold=1.5 must be in (0, 1)"),
    (["--thresholds=0.2"], "--thresholds needs --sweep"),
    (["--sweep", "--thresholds=0.2,x"], "not a number"),
    (["--sweep", "--thresholds=0"], "not in (0, 1)"),
    (["--shuffle_control=-1"], "--shuffle_control=-1 must be >= 0"),
    (["--shuffle_within_class"], "--shuffle_within_class needs --shuffle_control=N"),
])
def test_bad_flags_get_one_line(args, needle, trained, tmp_path):
    if args and not args[0].startswith("--model_dir"):
        args = [f"--model_dir={trained}", *args]
    result = run_module("tools.evaluate", f"--out={tmp_path}/e.json", *args)
    assert result.returncode == 2, result.stderr[-1500:]
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1500:]
    assert not (tmp_path / "e.json").exists()


def test_a_keras_file_needs_data(trained, tmp_path):
    result = run_module("tools.evaluate", f"--model_dir={os.path.join(trained, 'model.keras')}")
    assert result.returncode == 2
    assert "--data_dir is required" in error_lines(result)[0]


def test_shuffle_control_of_a_network_without_gates_gets_one_line(trained, tmp_path):
    import shutil

    import keras

    from energynet_tf.model import EnergyNet

    # The trained run's config (its data and split) with a baseline network in place of its model.
    run = tmp_path / "baseline_run"
    run.mkdir()
    shutil.copy(os.path.join(trained, "config.json"), run / "config.json")
    model = EnergyNet(depth=8, baseline=True)
    model(keras.ops.zeros((1, 32, 32, 3)))
    model.save(run / "model.keras")
    result = run_module("tools.evaluate", f"--model_dir={run}", "--shuffle_control=2", f"--out={tmp_path / 'e.json'}")
    assert result.returncode == 2, result.stderr[-1500:]
    assert len(error_lines(result)) == 1 and "has no gates" in error_lines(result)[0]
    assert not (tmp_path / "e.json").exists()
