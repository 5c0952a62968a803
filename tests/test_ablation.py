"""Tests of tools/ablation.py on hand-made reproduction results."""

import json
import os
import subprocess
import sys

import pytest

from tools import ablation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRONT = [{"depth": 8, "energy": 0.3, "test_accuracy": 0.50}, {"depth": 14, "energy": 0.7, "test_accuracy": 0.60},
         {"depth": 20, "energy": 1.0, "test_accuracy": 0.62}]


def _results(seed, accuracy, savings, selective=(), paths=1, std=0.0, front=True):
    out = {
        "config": {"seed": seed},
        "baseline": {"test_accuracy": 0.62},
        "energynet": {"test_accuracy": accuracy, "energy_savings": savings, "normalised_energy": 1.0 - savings,
                      "selective_blocks": list(selective), "distinct_paths": paths,
                      "per_image_energy": {"std": std}, "skip_ratio_per_block": [1.0, 0.0, 0.5]},
    }
    if front:
        out["static_front"] = FRONT
    return out


def _write(directory, by_seed):
    for seed, results in by_seed.items():
        path = os.path.join(directory, f"seed-{seed}")
        os.makedirs(path)
        with open(os.path.join(path, "results.json"), "w") as f:
            json.dump(results, f)
    return str(directory)


def test_rows_gaps_summaries_and_paired_differences(tmp_path):
    current = {0: _results(0, 0.55, 0.5), 1: _results(1, 0.57, 0.5)}
    # The second arm was run with --reuse_baseline and no plain networks of its own.
    lever = {0: _results(0, 0.58, 0.5, selective=(1, 3), paths=5, std=0.06, front=False),
             1: _results(1, 0.58, 0.6, selective=(2,), paths=3, std=0.04, front=False)}
    result = ablation.build([("current", current), ("lever", lever)])
    ref, arm = result["arms"]
    # Front at energy 0.5: halfway between (0.3, 50%) and (0.7, 60%) is 55%.
    assert [r["static_gap_points"] for r in ref["rows"]] == pytest.approx([0.0, 2.0])
    # At energy 0.4: 52.5%, so 58% is +5.5.
    assert [r["static_gap_points"] for r in arm["rows"]] == pytest.approx([3.0, 5.5])
    assert arm["rows"][0]["front_source"] == "seed 0's own plain networks"
    assert arm["summary"]["test_accuracy"]["mean"] == pytest.approx(0.58)
    assert arm["summary"]["selective_blocks"]["mean"] == pytest.approx(1.5)
    assert arm["summary"]["per_image_energy_std"]["std"] == pytest.approx(0.0141421356)
    assert ref["versus_reference"] is None
    assert arm["versus_reference"]["accuracy_points"]["mean"] == pytest.approx(2.0)
    assert arm["versus_reference"]["gap_points"]["mean"] == pytest.approx(3.25)
    text = ablation.markdown(result, "cmd")
    assert "| lever | 2 | 58.00% ± 0.00 |" in text and "+5.50" in text


def test_energy_outside_the_front_has_no_gap_and_a_csv_front_is_used_when_no_seed_has_one():
    open_gates = {0: _results(0, 0.62, -0.01, front=False)}
    result = ablation.build([("all open", open_gates)], static_csv_front=[(0.3, 0.5), (1.0, 0.62)])
    r = result["arms"][0]["rows"][0]
    assert r["static_gap_points"] is None and "outside" in r["static_gap_note"]
    assert r["front_source"] == "--static_csv"
    assert result["arms"][0]["summary"]["static_gap_points"] == {"mean": None, "std": None, "n": 0}
    assert "n/a" in ablation.markdown(result, "cmd")


def test_a_mean_over_fewer_seeds_than_the_arm_has_says_how_many():
    current = {0: _results(0, 0.55, 0.5), 1: _results(1, 0.57, 0.5)}
    # Seed 1 spends less than the cheapest plain network: no gap for it.
    lever = {0: _results(0, 0.58, 0.5, front=False), 1: _results(1, 0.40, 0.9, front=False)}
    text = ablation.markdown(ablation.build([("current", current), ("lever", lever)]), "cmd")
    row = next(line for line in text.splitlines() if line.startswith("| lever | 2 |"))
    assert "| 3.00 (1 of 2 seeds) |" in row
    assert "| 1.00 ± 1.41 |" in next(line for line in text.splitlines() if line.startswith("| current | 2 |"))


def test_choice_worth_wall_time_and_cpu_come_from_the_files_beside_the_results(tmp_path):
    results = _results(0, 0.58, 0.5)
    results["baseline"].update(wall_seconds=1500.0, epochs=15)
    results["energynet"].update(wall_seconds=1600.0, epochs=8)
    results["cpu"] = "AMD EPYC, 2 CPUs, avx2 (no avx512)"
    directory = _write(tmp_path / "arm", {0: results})
    seed_dir = os.path.join(directory, "seed-0")
    for name, points in (("shuffle_control.json", 4.25), ("shuffle_control_within_class.json", 1.5)):
        with open(os.path.join(seed_dir, name), "w") as f:
            json.dump({"shuffle_control": {"decision_value_points": points}}, f)
    row = ablation.build([("arm", ablation.load_arm(directory))])["arms"][0]["rows"][0]
    assert row["choice_worth_points"] == 4.25 and row["choice_worth_within_class_points"] == 1.5
    # 200 s per epoch against 100: twice the baseline's.
    assert row["wall_seconds"] == 1600.0 and row["epoch_time_ratio"] == pytest.approx(2.0)
    text = ablation.markdown(ablation.build([("arm", ablation.load_arm(directory))]), "cmd")
    assert "| +4.25 | +1.50 | 1,600 s | 2.00x | AMD EPYC, 2 CPUs, avx2 (no avx512) |" in text
    # Without the files and the times: n/a, not an error.
    bare = ablation.build([("arm", {0: _results(0, 0.58, 0.5)})])["arms"][0]["rows"][0]
    assert bare["choice_worth_points"] is None and bare["epoch_time_ratio"] is None and bare["cpu"] is None
    with open(os.path.join(seed_dir, "shuffle_control.json"), "w") as f:
        f.write("{}")
    with pytest.raises(ablation.UsageError, match="is not a tools.evaluate --shuffle_control output"):
        ablation.load_arm(directory)


def test_bad_arms_are_refused(tmp_path):
    broken = tmp_path / "broken" / "seed-0"
    broken.mkdir(parents=True)
    (broken / "results.json").write_text("{not json")
    with pytest.raises(ablation.UsageError, match="results.json is not a reproduction's results"):
        ablation.load_arm(str(tmp_path / "broken"))
    (tmp_path / "front.csv").write_text("depth,accuracy\n8,0.5\n")
    with pytest.raises(ablation.UsageError, match="is not a tools.static_front CSV"):
        ablation.read_static_csv(str(tmp_path / "front.csv"))
    with pytest.raises(ablation.UsageError, match="not label=directory"):
        ablation.parse_arms(["current"])
    with pytest.raises(ablation.UsageError, match="appears twice"):
        ablation.parse_arms(["a=x", "a=y"])
    with pytest.raises(ablation.UsageError, match="--arms is required"):
        ablation.parse_arms([])


def test_the_tool_writes_table_json_and_figure_and_refuses_an_empty_arm(tmp_path):
    first = _write(tmp_path / "a", {0: _results(0, 0.55, 0.5), 1: _results(1, 0.56, 0.52)})
    second = _write(tmp_path / "b", {0: _results(0, 0.57, 0.45, front=False), 1: _results(1, 0.54, 0.5, front=False)})
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tools.ablation", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    out = tmp_path / "out"
    result = run(f"--arms=current={first},lever={second}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "ablation.json").read_text())["arms"][1]["label"] == "lever"
    assert "| current | 2 |" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run(f"--arms=current={first},none={tmp_path / 'empty'}", f"--out={tmp_path / 'out2'}")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "holds no finished reproduction" in errors[0]
    assert not (tmp_path / "out2").exists()
