"""Tests of tools/plots.py: figures from run directories (two seeded gated runs and a baseline)."""

import os

import numpy as np
import pytest

from conftest import TINY_TRAINER, error_lines, run_module


@pytest.fixture(scope="module")
def figures(fake_cifar_dir, tmp_path_factory):
    # One tiny gated run, shown twice under two labels (each file runs on one test worker).
    run = str(tmp_path_factory.mktemp("run") / "m")
    trained = run_module("trainers.cifar", f"--data_dir={fake_cifar_dir}", f"--model_dir={run}", *TINY_TRAINER)
    assert trained.returncode == 0, trained.stderr[-2000:]
    runs = [run, run]
    out = str(tmp_path_factory.mktemp("figures"))
    result = run_module("tools.plots", f"--runs={','.join(runs)}", "--labels=first,second", f"--out={out}",
                        "--examples=4")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, runs


def test_writes_every_figure(figures):
    out, _ = figures
    names = ["accuracy_vs_energy.png", "skip_ratios.png", "energy_per_class_first.png", "examples_first.png",
             "energy_per_class_second.png", "examples_second.png", "energy_histogram_first.png",
             "skip_by_class_first.png", "energy_histogram_second.png", "skip_by_class_second.png"]
    for name in names:
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_per_image_numbers_agree_with_the_runs_metrics(figures):
    import json

    out, runs = figures
    per_image = np.load(os.path.join(out, "per_image_first.npz"))
    metrics = json.load(open(os.path.join(runs[0], "metrics.json")))
    # The mean of the per-image energies is the run's test energy; accuracy likewise.
    assert 1 - per_image["energy"].mean() == pytest.approx(metrics["energy_savings"], abs=1e-5)
    assert (per_image["labels"] == per_image["predictions"]).mean() == pytest.approx(metrics["test_accuracy"])
    num_blocks = len(metrics["skip_ratio_per_block"]) + 1
    assert per_image["blocks"].min() >= 1 and per_image["blocks"].max() <= num_blocks
    assert len(per_image["class_names"]) == 10
    # The trainer kept the same per-image arrays and summarised them in metrics.json.
    kept = np.load(os.path.join(runs[0], "per_image.npz"))
    np.testing.assert_array_equal(kept["decisions"], per_image["decisions"])
    np.testing.assert_allclose(kept["energy"], per_image["energy"], rtol=1e-6)
    assert metrics["per_image_energy"]["mean"] == pytest.approx(float(per_image["energy"].mean()), abs=1e-6)
    assert metrics["distinct_paths"] == len(np.unique(per_image["decisions"], axis=0))
    assert len(metrics["skip_ratio_by_class"]) == 10 and len(metrics["savings_by_class"]) == 10


@pytest.mark.parametrize("args, needle", [
    ([], "--runs is required"),
    (["--runs=/nonexistent"], "holds no finished run"),
    (["--runs=a,b", "--labels=x"], "1 labels for 2 runs"),
    (["--runs=a", "--examples=0"], "--examples=0 must be"),
])
def test_bad_flags_get_one_line(args, needle, tmp_path):
    result = run_module("tools.plots", f"--out={tmp_path}/figs", *args)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1500:]
    assert not (tmp_path / "figs").exists()
