"""Tests of tools/reproduce.py: the side-by-side reproduction, on tiny generated data."""

import json
import os
import subprocess
import sys

import pytest

from tools import presets
from tools import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ("depth=14,epochs=3,branch_epoch=1,phase1_epochs=1,phase2_epochs=1,phase3_epochs=0,"
        "batch_size=16,max_train_examples=64,validation_examples=50,lr1=0.05,lr2=0.05")


@pytest.fixture(scope="module")
def fake_data_dir(tmp_path_factory):
    from energynet_tf.data import testing

    return testing.make_fake_cifar10(str(tmp_path_factory.mktemp("cifar")))


def run_tool(*args, timeout=400):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TFDS_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "tools.reproduce", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def reproduction(fake_data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("repro") / "out")
    result = run_tool(f"--data_dir={fake_data_dir}", f"--out={out}", f"--set={TINY}",
                      "--speed_rounds=1", "--speed_steps=1", "--static_depths=8", "--learned_pattern",
                      "--thresholds=0.3,0.5,0.7")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result


def test_writes_results_table_and_figure(reproduction):
    out, result = reproduction
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    for arm in ("baseline", "energynet"):
        for key in ("test_accuracy", "energy_savings", "block_energy_savings", "mac_savings",
                    "skip_ratio_per_block", "wall_seconds"):
            assert key in results[arm], (arm, key)
    assert results["baseline"]["energy_savings"] == 0
    assert len(results["energynet"]["skip_ratio_per_block"]) == 5
    assert results["accuracy_drop_points"] == pytest.approx(
        100 * (results["baseline"]["test_accuracy"] - results["energynet"]["test_accuracy"]))
    assert isinstance(results["goal"]["met"], bool)
    assert len(results["training_step_time"]["step_time_ratio_per_round"]) == 1
    assert results["commit"]
    assert "CPUs" in results["cpu"]  # the machine every wall time in it ran on
    markdown = open(os.path.join(out, "results.md")).read()
    assert "| baseline |" in markdown and "| EnergyNet |" in markdown and "Goal" in markdown
    with open(os.path.join(out, "accuracy_vs_energy.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "[reproduce] 1/3 baseline" in result.stdout and "[reproduce] 2/3 EnergyNet" in result.stdout


def test_static_front_gap_per_image_fields_and_threshold_sweep(reproduction):
    from tools import stats

    out, result = reproduction
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    front = results["static_front"]
    assert [p["depth"] for p in front] == [8, 14]
    assert front[-1]["energy"] == 1.0 and front[-1]["test_accuracy"] == results["baseline"]["test_accuracy"]
    with open(os.path.join(out, "static", "depth-8", "metrics.json")) as f:
        static8 = json.load(f)
    assert front[0]["test_accuracy"] == static8["test_accuracy"]
    assert front[0]["energy"] == pytest.approx(static8["baseline_energy"] / results["baseline_energy"])
    assert 0 < front[0]["energy"] < 1
    energy = 1 - results["energynet"]["energy_savings"]
    gap = stats.static_gap_points([(p["energy"], p["test_accuracy"]) for p in front], energy,
                                  results["energynet"]["test_accuracy"])
    assert results["static_gap_points"] == gap["gap_points"]
    # Per image, at the top level and per arm.
    e = results["per_image_energy"]
    assert set(e) == {"mean", "std", "p10", "p50", "p90", "min", "max"}
    assert e["min"] <= e["p10"] <= e["p50"] <= e["p90"] <= e["max"]
    assert e["mean"] == pytest.approx(energy, abs=1e-5)
    assert results["distinct_paths"] >= 1 and isinstance(results["selective_blocks"], list)
    assert len(results["savings_by_class"]) == 10
    assert results["baseline"]["distinct_paths"] == 1 and results["baseline"]["per_image_energy"]["std"] < 1e-6
    assert [r["threshold"] for r in results["threshold_sweep"]] == [0.3, 0.5, 0.7]
    savings = [r["energy_savings"] for r in results["threshold_sweep"]]
    assert savings == sorted(savings)  # a higher threshold never runs more blocks
    # The learned pattern: trained with the blocks skipped by most validation images removed, or said why not.
    with open(os.path.join(out, "energynet", "metrics.json")) as f:
        removed = reproduce.learned_pattern(json.load(f))
    if removed:
        assert results["learned_pattern"]["removed_blocks"] == removed
        with open(os.path.join(out, "pattern", "config.json")) as f:
            assert json.load(f)["removed_blocks"] == removed
    else:
        assert "no learned pattern to train" in result.stdout
    markdown = open(os.path.join(out, "results.md")).read()
    assert "Static gap" in markdown and "Per image" in markdown and "| 0.30 |" in markdown
    for name in ("per_image_energy.png", "skip_by_class.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _run_metrics(validation, test):
    last = {f"val_skip_{i + 1:02d}": r for i, r in enumerate(validation)}
    return {"skip_ratio_per_block": test, "history": [{}, dict(last, val_accuracy=0.5)]}


def test_learned_pattern_takes_the_blocks_most_validation_images_skip_never_the_test_images():
    assert reproduce.learned_pattern(_run_metrics([0.0, 0.51, 0.5, 1.0, 0.2], [0.0] * 5)) == [2, 4]
    assert reproduce.learned_pattern(_run_metrics([0.0, 0.1], [1.0, 1.0])) == []
    with pytest.raises(reproduce.UsageError, match="validation skip ratios"):
        reproduce.learned_pattern({"skip_ratio_per_block": [1.0, 1.0], "history": [{"accuracy": 0.5}]})


@pytest.mark.parametrize("depths, needle", [
    ("9", "not a CIFAR ResNet depth"),
    ("14,38", "not shallower than the preset's depth 38"),
    ("14,14", "repeated"),
    ("x", "not an integer"),
])
def test_bad_static_depths_get_one_line_and_write_nothing(depths, needle, tmp_path):
    out = tmp_path / "o"
    result = run_tool("--data_dir=/nonexistent", f"--out={out}", f"--static_depths={depths}", timeout=120)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1000:]
    assert not out.exists()


def test_energynet_spends_the_same_epoch_budget_from_the_baselines_checkpoint(reproduction):
    out, _ = reproduction
    with open(os.path.join(out, "baseline", "metrics.json")) as f:
        baseline = json.load(f)
    with open(os.path.join(out, "energynet", "config.json")) as f:
        energynet_config = json.load(f)
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert baseline["epochs"] == 3
    assert energynet_config["init_from"].endswith(os.path.join("baseline", "checkpoints", "epoch-0001.keras"))
    # The branch checkpoint is pinned: kept although later epochs were saved.
    assert os.path.exists(energynet_config["init_from"])
    assert results["energynet_epochs_counted"] <= 3
    assert energynet_config["seed"] == json.load(open(os.path.join(out, "baseline", "config.json")))["seed"]


def test_rerun_resumes_without_training_again_and_ships_the_models(reproduction, fake_data_dir, tmp_path):
    import hashlib

    import keras
    import numpy as np

    import energynet_tf  # noqa: F401

    out, _ = reproduction
    before = json.load(open(os.path.join(out, "results.json")))
    ship = tmp_path / "models"
    result = run_tool(f"--data_dir={fake_data_dir}", f"--out={out}", f"--set={TINY}", "--speed_rounds=1",
                      "--speed_steps=1", f"--ship_dir={ship}", "--thresholds=0.3,0.5,0.7")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[baseline] finished earlier" in result.stdout and "[energynet] finished earlier" in result.stdout
    after = json.load(open(os.path.join(out, "results.json")))
    assert after["baseline"] == before["baseline"] and after["energynet"] == before["energynet"]
    assert after["training_step_time"] == before["training_step_time"]
    lines = (ship / "SHA256SUMS").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["cifar10/baseline/model.keras", "cifar10/energynet/model.keras"]
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    for line in lines:
        digest, rel = line.split()
        assert hashlib.sha256((ship / rel).read_bytes()).hexdigest() == digest
        shipped = keras.saving.load_model(ship / rel, safe_mode=True)
        assert getattr(shipped, "optimizer", None) is None
        trained = keras.saving.load_model(os.path.join(out, rel.split("/")[1], "model.keras"), compile=False)
        np.testing.assert_array_equal(shipped.predict(x, verbose=0), trained.predict(x, verbose=0))
    readme = (ship / "README.md").read_text()
    assert "python -m tools.reproduce" in readme and "test accuracy" in readme


def test_another_configuration_in_the_same_out_is_refused(reproduction, fake_data_dir):
    out, _ = reproduction
    result = run_tool(f"--data_dir={fake_data_dir}", f"--out={out}", f"--set={TINY},seed=3")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "another configuration" in error_lines(result)[0]


@pytest.mark.parametrize("setting, needle", [
    ("depht=8", "key=value with a key from"),
    ("epochs=ten", "must be a number"),
    ("zero_init_residual=maybe", "must be true or false"),
    ("epochs=30,branch_epoch=20,phase1_epochs=1", "must fill the budget"),
    ("branch_epoch=40", "branch_epoch must be in"),
])
def test_bad_settings_get_one_line(setting, needle, tmp_path):
    result = run_tool("--data_dir=/nonexistent", f"--out={tmp_path}", f"--set={setting}")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1000:]


def test_missing_data_fails_fast_with_one_line(tmp_path):
    result = run_tool(f"--data_dir={tmp_path}/nothing", f"--out={tmp_path}/o", f"--set={TINY}", timeout=120)
    assert result.returncode == 2
    assert "the baseline run failed" in error_lines(result)[0]


def test_presets_fill_their_budgets():
    for name, preset in reproduce.PRESETS.items():
        gated = preset.phase1_epochs + preset.phase2_epochs + preset.phase3_epochs
        assert preset.branch_epoch + gated == preset.epochs, name
    paper = reproduce.PRESETS["paper"]
    assert (paper.depth, paper.epochs) == (38, 220)


def test_overrides_are_typed():
    preset = reproduce.parse_overrides(reproduce.PRESETS["cpu"], "seed=4,alpha2=0.5,max_train_examples=none")
    assert (preset.seed, preset.alpha2, preset.max_train_examples) == (4, 0.5, None)
    assert isinstance(preset.seed, int) and isinstance(preset.alpha2, float)
    ablation = reproduce.parse_overrides(
        reproduce.PRESETS["cpu"], "zero_init_residual=false,decoupled_weight_decay=1e-4,weight_decay=0,"
        "phase3_gate_lr_multiplier=0")
    assert ablation.zero_init_residual is False and ablation.phase3_gate_lr_multiplier == 0.0
    assert "--nozero_init_residual" in ablation.baseline_flags()
    assert "--decoupled_weight_decay=0.0001" in ablation.baseline_flags()
    assert "--phase3_gate_lr_multiplier=0.0" in ablation.energynet_flags("b.keras")
    shaped = reproduce.parse_overrides(reproduce.PRESETS["cpu"], "batch_shaping_weight=0.01,batch_shaping_phases=1")
    assert {"--batch_shaping_weight=0.01", "--batch_shaping_phases=1"} <= set(shaped.energynet_flags("b.keras"))
    assert not any("prior" in f for f in shaped.energynet_flags("b.keras"))
    skewed = reproduce.parse_overrides(shaped, "batch_shaping_prior=0.8+0.2")
    assert "--batch_shaping_prior=0.8,0.2" in skewed.energynet_flags("b.keras")
    for bad in ("0.8", "0.8+0", "a+b", "1+2+3", "-1+2"):
        with pytest.raises(reproduce.UsageError, match="batch_shaping_prior must be two positive numbers a\\+b"):
            reproduce.parse_overrides(shaped, f"batch_shaping_prior={bad}")
    for bad in ("batch_shaping_phases=4", "batch_shaping_phases=1+1", "batch_shaping_phases="):
        with pytest.raises(reproduce.UsageError, match="batch_shaping_phases must be distinct phases"):
            reproduce.parse_overrides(reproduce.PRESETS["cpu"], bad)
    continued = reproduce.parse_overrides(reproduce.PRESETS["cpu"], "lr_restarts=false").energynet_flags("b.keras")
    # EnergyNet continues the baseline's cosine (peak lr, 15 epochs, from epoch 7) instead of restarting it.
    assert {"--lr1=0.1", "--cosine_epochs=15", "--cosine_start_epoch=7"} <= set(continued)
    assert not any(f.startswith(("--lr2", "--lr3")) for f in continued)
    default = reproduce.PRESETS["cpu"]
    assert not any("cosine" in f for f in default.energynet_flags("b.keras"))
    assert "--zero_init_residual" in default.baseline_flags()
    assert not any("decoupled" in f or "phase3_gate" in f for f in default.energynet_flags("b.keras"))
    assert not any("mixed_precision" in f for f in default.baseline_flags())
    bf16 = reproduce.parse_overrides(reproduce.PRESETS["cpu"], "mixed_precision=bfloat16")
    assert "--mixed_precision=bfloat16" in bf16.baseline_flags() and "--mixed_precision=bfloat16" in \
        bf16.energynet_flags("b.keras")
    distilled = reproduce.parse_overrides(reproduce.PRESETS["cpu"], "distill_weight=0.5,distill_temperature=3")
    assert {"--distill_weight=0.5", "--distill_temperature=3.0"} <= set(distilled.energynet_flags("b.keras"))
    assert not any("distill" in f for f in distilled.baseline_flags() + default.energynet_flags("b.keras"))
    wide = reproduce.parse_overrides(reproduce.PRESETS["cpu"], "gate_units=32")
    assert "--gate_units=32" in wide.energynet_flags("b.keras") and not any(
        "gate_units" in f for f in wide.baseline_flags() + default.energynet_flags("b.keras"))
    with pytest.raises(reproduce.UsageError, match="preset field mixed_precision must be float32, bfloat16 or float16"):
        reproduce.parse_overrides(reproduce.PRESETS["cpu"], "mixed_precision=half")


def test_stored_configurations_without_newer_fields_still_match():
    import dataclasses

    stored = dataclasses.asdict(reproduce.PRESETS["cpu"])
    for added in ("zero_init_residual", "decoupled_weight_decay", "phase3_gate_lr_multiplier", "lr_restarts",
                  "mixed_precision", "distill_weight", "distill_temperature", "gate_units", "batch_shaping_prior",
                  "gate_warmup_epochs", "inplace_distill", "inplace_temperature", "drop_blocks"):
        del stored[added]
    assert presets.with_defaults(stored) == dataclasses.asdict(reproduce.PRESETS["cpu"])


def test_seeds_reuse_finished_reproductions_and_write_the_spread(reproduction, fake_data_dir, tmp_path):
    import shutil

    out, _ = reproduction
    # A finished seed-0 reproduction in the --seeds layout: nothing is retrained.
    shutil.copytree(out, tmp_path / "spread" / "seed-0")
    result = run_tool(f"--data_dir={fake_data_dir}", f"--out={tmp_path / 'spread'}", f"--set={TINY}", "--seeds=0",
                      "--speed_rounds=1", "--speed_steps=1", "--thresholds=0.3,0.5,0.7")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[baseline] finished earlier" in result.stdout
    spread = json.load(open(tmp_path / "spread" / "seeds.json"))
    single = json.load(open(os.path.join(out, "results.json")))
    assert spread["seeds"] == [0]
    assert spread["energynet_test_accuracy"]["mean"] == single["energynet"]["test_accuracy"]
    assert "| 0 |" in (tmp_path / "spread" / "seeds.md").read_text()


def test_seed_spread_statistics():
    def result(seed, base, energynet, savings):
        return {"config": {"seed": seed}, "baseline": {"test_accuracy": base},
                "energynet": {"test_accuracy": energynet, "energy_savings": savings, "block_energy_savings": savings},
                "accuracy_drop_points": 100 * (base - energynet)}

    spread = reproduce.seed_spread([result(0, 0.80, 0.78, 0.40), result(1, 0.82, 0.79, 0.44), result(2, 0.81, 0.80, 0.42)])
    assert spread["baseline_test_accuracy"]["mean"] == pytest.approx(0.81)
    assert spread["accuracy_drop_points"]["mean"] == pytest.approx(2.0)
    # Student t with 2 degrees of freedom: 4.303 * std / sqrt(3).
    assert spread["baseline_test_accuracy"]["half_width"] == pytest.approx(4.3027 * 0.01 / 3 ** 0.5, rel=1e-4)
    assert "Seed spread of both arms (3 seeds)" in reproduce.seeds_markdown(spread, "cmd", reproduce.PRESETS["cpu"])


@pytest.mark.parametrize("seeds, needle", [("0,x", "'x' is not an integer"), ("1,1", "negative or repeated")])
def test_bad_seeds_get_one_line(seeds, needle, tmp_path):
    result = run_tool("--data_dir=/nonexistent", f"--out={tmp_path}/o", f"--seeds={seeds}")
    assert result.returncode == 2 and needle in error_lines(result)[0]


def test_a_trainers_one_line_reaches_the_tools_error(fake_data_dir, tmp_path):
    import glob
    import shutil

    copy = tmp_path / "tfds"
    shutil.copytree(fake_data_dir, copy)
    shard = sorted(glob.glob(str(copy / "cifar10" / "3.0.2" / "cifar10-train.tfrecord*")))[0]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    result = run_tool(f"--data_dir={copy}", f"--out={tmp_path}/o", f"--set={TINY}", timeout=200)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "the baseline run failed (exit status 2): CIFAR-10 train split:" in lines[0] and shard in lines[0]


@pytest.mark.slow  # over 25 s; opt-in with `pytest -m slow` (BUILD.md, "Test")
def test_another_arm_reuses_a_finished_baseline_and_a_different_one_is_refused(reproduction, fake_data_dir, tmp_path):
    out, _ = reproduction
    arm = tmp_path / "arm"
    result = run_tool(f"--data_dir={fake_data_dir}", f"--out={arm}", f"--set={TINY},alpha2=2.0", "--speed_rounds=0",
                      f"--reuse_baseline={out}", "--thresholds=0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "baseline reused from" in result.stdout and "[baseline] finished earlier" in result.stdout
    mine = json.load(open(arm / "results.json"))
    theirs = json.load(open(os.path.join(out, "results.json")))
    assert mine["baseline"] == theirs["baseline"] and mine["config"]["alpha2"] == 2.0
    refused = run_tool(f"--data_dir={fake_data_dir}", f"--out={tmp_path / 'other'}", f"--set={TINY},seed=5",
                       f"--reuse_baseline={out}")
    assert refused.returncode == 2
    assert "is another baseline" in error_lines(refused)[0] and "seed" in error_lines(refused)[0]


EARLY = ("branch_epoch=0,lr_restarts=false,gate_warmup_epochs=3,phase1_epochs=5,phase2_epochs=8,phase3_epochs=2,"
         "inplace_distill=1,inplace_temperature=2,drop_blocks=0.5")


def test_the_early_gating_mode_trains_from_scratch_on_one_decay_with_the_baseline_as_phase3_reference():
    early = reproduce.parse_overrides(reproduce.PRESETS["cpu"], EARLY)
    flags_ = early.energynet_flags(None, "runs/r/baseline")
    assert not any(f.startswith("--init_from") for f in flags_)
    assert {"--lr1=0.1", "--cosine_epochs=15", "--cosine_start_epoch=0", "--gate_warmup_epochs=3",
            "--inplace_distill=1.0", "--inplace_temperature=2.0", "--drop_blocks=0.5",
            "--restore_reference=runs/r/baseline"} <= set(flags_)
    # Every arm gets the baseline's epochs; the baseline keeps epoch 1 for arms that branch there.
    assert early.phase1_epochs + early.phase2_epochs + early.phase3_epochs == early.epochs
    assert "--pin_checkpoints=1,7" in reproduce.PRESETS["cpu"].baseline_flags()
    # The restarting recipe has no one-decay reference and none of the new flags.
    default = reproduce.PRESETS["cpu"].energynet_flags("b.keras", "runs/r/baseline")
    assert not any(f.startswith(("--restore_reference", "--inplace", "--drop_blocks", "--gate_warmup")) for f in default)


@pytest.mark.parametrize("change, needle", [
    ("inplace_distill=1.5", "inplace_distill must be in [0, 1]"),
    ("inplace_distill=0.5,inplace_temperature=0", "inplace_temperature must be > 0"),
    ("drop_blocks=1", "drop_blocks must be in [0, 1)"),
    ("drop_blocks=0.5", "drop_blocks needs gate_warmup_epochs > 0"),
    ("branch_epoch=0,phase1_epochs=8,distill_weight=0.5", "distill_weight must be 0 with branch_epoch=0"),
])
def test_bad_new_preset_fields_are_refused(change, needle):
    with pytest.raises(reproduce.UsageError) as info:
        reproduce.parse_overrides(reproduce.PRESETS["cpu"], change)
    assert needle in str(info.value)
