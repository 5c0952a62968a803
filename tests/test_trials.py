"""Tests of tools/trials.py: seeded runs of one trainer configuration, on generated data."""

import json
import os

import pytest

from conftest import TINY_TRAINER, error_lines, interrupt_after, run_module, start_module


@pytest.fixture(scope="module")
def tiny_trials(fake_cifar_dir, tmp_path_factory):
    """Two seeded trials, the tool interrupted once after the first and rerun."""
    out = str(tmp_path_factory.mktemp("trials") / "out")
    args = ["--n=2", f"--out={out}", "--", f"--data_dir={fake_cifar_dir}", *TINY_TRAINER]
    interrupted = interrupt_after(start_module("tools.trials", *args), "[trials] seed 0:")
    result = run_module("tools.trials", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, interrupted, result


def test_trials_summarise_every_seed_with_intervals(tiny_trials):
    out, _, result = tiny_trials
    with open(os.path.join(out, "trials.json")) as f:
        summary = json.load(f)
    assert [t["seed"] for t in summary["trials"]] == [0, 1]
    accuracies = [t["test_accuracy"] for t in summary["trials"]]
    s = summary["summary"]["test_accuracy"]
    assert s["n"] == 2 and s["mean"] == pytest.approx(sum(accuracies) / 2)
    assert s["low"] <= s["mean"] <= s["high"]
    for key in ("energy_savings", "block_energy_savings", "mac_savings"):
        assert summary["summary"][key]["n"] == 2
    for seed in (0, 1):
        with open(os.path.join(out, f"seed-{seed}", "config.json")) as f:
            assert json.load(f)["seed"] == seed
    table = open(os.path.join(out, "trials.md")).read()
    assert "95% confidence interval" in table and "| test accuracy |" in table


def test_rerun_after_an_interruption_does_not_rerun_finished_trials(tiny_trials):
    _, interrupted, result = tiny_trials
    assert "[trials] seed 0:" in interrupted and "[trials] seed 1:" not in interrupted
    assert "trial 1/2 (seed 0): finished earlier" in result.stdout
    assert "trial 2/2 (seed 1)" in result.stdout


def test_another_configuration_in_the_same_out_is_refused(tiny_trials, fake_cifar_dir):
    out, _, _ = tiny_trials
    result = run_module("tools.trials", "--n=2", f"--out={out}", "--", f"--data_dir={fake_cifar_dir}",
                        *TINY_TRAINER, "--alpha2=2")
    assert result.returncode == 2 and "another configuration" in error_lines(result)[0]


@pytest.mark.parametrize("args, needle", [
    (["--n=0"], "--n=0 must be a positive integer"),
    (["--n=2", "--", "--seed=3"], "--seed is set by tools.trials"),
    (["--n=2", "--", "--model_dir=x"], "--model_dir is set by tools.trials"),
    (["--n=2", "--", "depth=8"], "unexpected argument 'depth=8'"),
    (["--n=2", "--", "--depth=9"], "trainer flags rejected: --depth=9: RunConfig.depth must be one of"),
    (["--n=2", "--", "--data_dir=/nonexistent"], "trainer flags rejected: "),
])
def test_bad_flags_get_one_line_and_write_nothing(args, needle, tmp_path):
    out = tmp_path / "out"
    result = run_module("tools.trials", f"--out={out}", *args)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1500:]
    assert not out.exists()
