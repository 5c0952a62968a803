"""Tests of tools/budget_trend.py on hand-made reproduction results."""

import json
import os
import subprocess
import sys

import pytest

from tools import budget_trend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _results(seed, epochs, drop, gap, savings=0.5):
    return {"config": {"seed": seed, "epochs": epochs}, "accuracy_drop_points": drop, "static_gap_points": gap,
            "baseline": {"test_accuracy": 0.9}, "energynet": {"test_accuracy": 0.9 - drop / 100,
                                                             "energy_savings": savings}}


def test_one_line_per_recipe_budgets_ascending_means_over_seeds():
    loaded = [("preset", {0: _results(0, 30, 1.0, -0.2), 1: _results(1, 30, 2.0, None)}),
              ("preset", {0: _results(0, 15, 2.3, -0.84)}),
              ("distill", {0: _results(0, 15, 1.5, 0.1, savings=0.4)})]
    result = budget_trend.trend(loaded)
    assert [p["epochs"] for p in result["preset"]] == [15, 30]
    assert result["preset"][1]["mean_accuracy_drop_points"] == pytest.approx(1.5)
    # A seed outside its front has no gap; the mean is over the seeds that have one.
    assert result["preset"][1]["mean_static_gap_points"] == pytest.approx(-0.2)
    assert result["distill"][0]["mean_energy_savings"] == pytest.approx(0.4)
    text = budget_trend.markdown(result, "cmd")
    assert "| preset | 30 | 0,1 | +1.50 | -0.20 | 50.0% | n/a | n/a,n/a |" in text


def test_the_per_image_spread_is_carried_per_seed_and_averaged():
    spread = _results(0, 30, 1.0, -0.2)
    spread["energynet"].update(per_image_energy={"std": 0.05}, selective_blocks=[8, 14, 16])
    static = _results(1, 30, 2.0, -0.4)
    static["energynet"].update(per_image_energy={"std": 0.01}, selective_blocks=[])
    point = budget_trend.trend([("preset", {0: spread, 1: static})])["preset"][0]
    assert point["per_image_energy_std"] == [0.05, 0.01]
    assert point["mean_per_image_energy_std"] == pytest.approx(0.03)
    assert point["selective_blocks"] == [3, 0]
    assert "| preset | 30 | 0,1 | +1.50 | -0.30 | 50.0% | 3.00% | 3,0 |" in budget_trend.markdown(
        {"preset": [point]}, "cmd")


def test_a_run_without_plain_networks_uses_the_front_of_its_budget_and_seed():
    with_front = _results(0, 15, 2.2, -0.84)
    with_front["static_front"] = [{"energy": 0.3, "test_accuracy": 0.80}, {"energy": 0.5, "test_accuracy": 0.86}]
    reused = _results(0, 15, 1.0, None)
    del reused["static_gap_points"]
    reused["energynet"]["normalised_energy"] = 0.45
    other_seed = _results(1, 15, 1.0, None)
    del other_seed["static_gap_points"]
    result = budget_trend.trend([("preset", {0: with_front}), ("rl", {0: reused, 1: other_seed})])
    # The front at 0.45 of the energy: 0.80 + 0.75 * 0.06 = 0.845; the run has 0.89.
    assert result["rl"][0]["static_gap_points"][0] == pytest.approx(4.5)
    # No run of seed 1 holds plain networks: no gap rather than another seed's.
    assert result["rl"][0]["static_gap_points"][1] is None
    assert result["preset"][0]["static_gap_points"] == [-0.84]


def test_two_reproductions_of_one_budget_for_one_recipe_are_refused():
    loaded = [("preset", {0: _results(0, 15, 2.3, -0.84)}), ("preset", {1: _results(1, 15, 2.0, -0.5)})]
    with pytest.raises(budget_trend.UsageError, match="two reproductions of 15 epochs"):
        budget_trend.trend(loaded)
    with pytest.raises(budget_trend.UsageError, match="not recipe=directory"):
        budget_trend.parse_runs(["preset"])


def test_the_tool_writes_its_files_and_names_a_missing_directory(tmp_path):
    for name, epochs in (("a15", 15), ("a30", 30)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results(0, epochs, 2.0 - epochs / 30, -0.5)))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tools.budget_trend", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    out = tmp_path / "out"
    result = run(f"--runs=preset={tmp_path / 'a15'},preset={tmp_path / 'a30'}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p["epochs"] for p in json.loads((out / "budget_trend.json").read_text())["recipes"]["preset"]] == [15, 30]
    assert (out / "budget_trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run(f"--runs=preset={tmp_path / 'nothing'}", f"--out={tmp_path / 'out2'}")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "--runs:" in errors[0] and "is not a directory" in errors[0]
    assert not (tmp_path / "out2").exists()
