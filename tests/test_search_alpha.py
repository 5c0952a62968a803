"""Tests of tools/search_alpha.py: the keras-tuner alpha search, on generated data."""

import csv
import json
import os

import pytest

from conftest import TINY_BUDGET, error_lines, interrupt_after, run_module, start_module
from tools import runs
from tools import search_alpha


@pytest.fixture(scope="module")
def search(fake_cifar_dir, tmp_path_factory):
    """A two-trial grid search, interrupted when its second trial starts, and rerun."""
    out = str(tmp_path_factory.mktemp("search") / "out")
    args = [f"--data_dir={fake_cifar_dir}", f"--out={out}", "--max_trials=2", "--alpha_min=0.5",
            "--alpha_max=4", "--accuracy_floor=0.01", *TINY_BUDGET]
    interrupted = interrupt_after(start_module("tools.search_alpha", *args), "[search_alpha] trial 1: alpha2=")
    result = run_module("tools.search_alpha", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, interrupted, result


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_trial_records_accuracy_and_energy(search):
    out, _, _ = search
    rows = _rows(os.path.join(out, "trials.csv"))
    assert sorted(float(r["alpha2"]) for r in rows) == [0.5, 4.0]
    for r in rows:
        for key in ("val_accuracy", "val_energy_savings", "val_block_energy_savings", "val_mac_savings"):
            assert 0 <= float(r[key]) + 0.01 <= 1.01, (key, r[key])
        with open(os.path.join(r["model_dir"], "config.json")) as f:
            config = json.load(f)
        assert config["schedule"]["alpha2"] == float(r["alpha2"])
        assert config["init_from"].endswith(os.path.join("baseline", "checkpoints", "epoch-0001.keras"))
        metrics = json.load(open(os.path.join(r["model_dir"], "metrics.json")))
        # Trials never look at the test split; only the front's members are evaluated, at the end.
        assert "test_accuracy" not in metrics
        assert (r["on_front"] == "True") == os.path.exists(os.path.join(r["model_dir"], "test.json"))


def test_front_holds_the_pareto_optimal_trials_with_their_test_numbers(search):
    out, _, _ = search
    rows = _rows(os.path.join(out, "trials.csv"))
    front = _rows(os.path.join(out, "front.csv"))
    points = [(float(r["val_energy_savings"]), float(r["val_accuracy"])) for r in rows]
    for f in front:
        x, y = float(f["val_energy_savings"]), float(f["val_accuracy"])
        assert not any(px >= x and py >= y and (px, py) != (x, y) for px, py in points)
        assert f["test_accuracy"] != ""
    with open(os.path.join(out, "front.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    selection = json.load(open(os.path.join(out, "selection.json")))
    eligible = [r for r in rows if float(r["val_accuracy"]) >= 0.01]
    assert float(selection["trial"]["val_energy_savings"]) == max(float(r["val_energy_savings"]) for r in eligible)


def test_an_interrupted_search_resumes_with_keras_tuners_state(search):
    out, interrupted, result = search
    assert "[search_alpha] trial 0: validation" in interrupted
    assert "trial 1: validation" not in interrupted
    assert "1 finished earlier" in result.stdout
    # Trial 0 trained once: its log has one start-up line.
    log = open(os.path.join(out, "search", "trial_0", "trainer.log")).read()
    assert log.count("EnergyNet depth 8:") == 1
    assert "baseline: finished earlier" in result.stdout or "[baseline] finished earlier" in result.stdout


def test_static_front_is_drawn_when_present(search, tmp_path):
    out, _, _ = search
    rows = _rows(os.path.join(out, "trials.csv"))
    assert rows  # the figure itself is looked at in BUILD.md; here: a static.csv is read without error
    static = tmp_path / "static.csv"
    static.write_text("depth,test_accuracy,energy,relative_energy,energy_savings_vs_deepest,epochs,wall_seconds,model_dir\n"
                      "8,0.1,1.0e6,0.5,0.5,3,1.0,x\n14,0.12,2.0e6,1.0,0.0,3,1.0,y\n")
    result = run_module("tools.search_alpha", "--data_dir=/unused", f"--out={out}", "--max_trials=2",
                        "--alpha_min=0.5", "--alpha_max=4", f"--static_csv={static}", *TINY_BUDGET)
    assert result.returncode == 0, result.stderr[-2000:]


def test_alpha_grid_is_geometric():
    assert search_alpha.alpha_grid(0.5, 4.0, 4) == [0.5, 1.0, 2.0, 4.0]
    assert search_alpha.alpha_grid(1.0, 9.0, 1) == [3.0]


@pytest.mark.parametrize("args, needle", [
    (["--max_trials=0"], "--max_trials=0 must be a positive integer"),
    (["--alpha_min=2", "--alpha_max=1"], "must satisfy 0 < alpha_min <= alpha_max"),
    (["--accuracy_floor=85"], "a fraction, not a percentage"),
    (["--gate_lr_multipliers=1,x"], "must be numbers"),
    (["--set=depht=8"], "key=value with a key from"),
    (["--epochs=10", "--branch_epoch=10"], "branch_epoch must be in"),
    (["--static_csv=/nonexistent.csv"], "no such file"),
])
def test_bad_flags_get_one_line_and_write_nothing(args, needle, tmp_path):
    out = tmp_path / "out"
    result = run_module("tools.search_alpha", "--data_dir=/nonexistent", f"--out={out}", *args)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1500:]
    assert not out.exists()


def test_missing_data_fails_fast_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = run_module("tools.search_alpha", f"--data_dir={tmp_path}/none", f"--out={out}", *TINY_BUDGET,
                        timeout=120)
    assert result.returncode == 2 and "CIFAR-10 data directory does not exist" in error_lines(result)[0]
    assert not out.exists()


@pytest.mark.slow  # over 25 s; opt-in with `pytest -m slow` (BUILD.md, "Test")
def test_distributed_search_runs_every_trial_exactly_once(fake_cifar_dir, tmp_path):
    """keras-tuner's chief serves the oracle on loopback; two workers take the three trials."""
    import subprocess
    import sys

    from conftest import REPO, tool_env

    out = tmp_path / "out"
    args = [f"--data_dir={fake_cifar_dir}", f"--out={out}", "--max_trials=3", "--alpha_min=0.5", "--alpha_max=4",
            *TINY_BUDGET]
    env = dict(tool_env(), KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(runs.free_ports(1)[0]))
    processes = {
        name: subprocess.Popen([sys.executable, "-u", "-m", "tools.search_alpha", *args], cwd=REPO,
                               env=dict(env, KERASTUNER_TUNER_ID=name), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for name in ("chief", "tuner0", "tuner1")
    }
    outputs = {}
    try:
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=480)[0]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for name, process in processes.items():
        assert process.returncode == 0, (name, outputs.get(name, "")[-3000:])
    started = {name: sorted(line.split(":")[0].split()[-1] for line in text.splitlines()
                            if line.startswith("[search_alpha] trial") and "alpha2=" in line)
               for name, text in outputs.items()}
    # The chief only serves the oracle; every trial ran on exactly one worker.
    assert started["chief"] == []
    assert sorted(started["tuner0"] + started["tuner1"]) == ["0", "1", "2"], started
    for name in ("tuner0", "tuner1"):
        assert "the oracle has no more trials" in outputs[name]
    rows = _rows(os.path.join(out, "trials.csv"))
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2"]
    assert sorted(float(r["alpha2"]) for r in rows) == [0.5, 1.41, 4.0]
    for r in rows:
        log = open(os.path.join(out, "search", f"trial_{r['trial_id']}", "trainer.log")).read()
        assert log.count("EnergyNet depth 8:") == 1
    assert os.path.exists(os.path.join(out, "front.png"))


@pytest.mark.parametrize("env, needle", [
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_TUNER_ID": "chief"}, "KERASTUNER_ORACLE_PORT is not"),
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "99999", "KERASTUNER_TUNER_ID": "chief"},
     "KERASTUNER_ORACLE_PORT='99999'"),
])
def test_half_configured_distribution_gets_one_line(env, needle, monkeypatch):
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(search_alpha.UsageError, match=needle):
        search_alpha.distribution()
