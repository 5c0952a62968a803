"""Tests of trainers/cifar.py: the command line as a user runs it."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What other programs read from metrics.json (README.md, "Each run directory holds").
REQUIRED_METRICS = (
    "test_accuracy", "baseline_energy", "energy_savings", "block_energy_savings", "mac_savings",
    "skip_ratio_per_block", "phases", "epochs", "wall_seconds",
)


@pytest.fixture(scope="module")
def fake_data_dir(tmp_path_factory):
    from energynet_tf.data import testing

    return testing.make_fake_cifar10(str(tmp_path_factory.mktemp("cifar")))


def run_trainer(*args, env=None, timeout=300):
    full_env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.pop("TFDS_DATA_DIR", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "trainers.cifar", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def error_lines(result):
    # TensorFlow's C++ runtime prints start-up lines of its own; ours start with "error:".
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def smoke_args(data_dir, model_dir, *extra):
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--depth=8", "--epochs=1",
            "--batch_size=16", "--eval_batch_size=50", "--max_train_examples=64",
            "--validation_examples=50", *extra]


@pytest.fixture(scope="module")
def smoke_run(fake_data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run") / "m")
    result = run_trainer(*smoke_args(fake_data_dir, model_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def test_smoke_run_writes_the_documented_outputs(smoke_run):
    model_dir, result = smoke_run
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    for key in REQUIRED_METRICS:
        assert key in metrics, key
    assert metrics["epochs"] == 2  # phase I and phase II, one epoch each; phase III decided
    assert [p["phase"] for p in metrics["phases"]][:2] == [1, 2]
    assert {"phase", "alpha", "epochs", "val_accuracy"} <= set(metrics["phases"][0])
    assert metrics["phase3_reason"].startswith("phase III")
    assert len(metrics["skip_ratio_per_block"]) == 2
    assert metrics["baseline_energy"] > 0
    # What the gates chose, image by image (docs/design.md §3.3).
    assert set(metrics["per_image_energy"]) == {"mean", "std", "p10", "p50", "p90", "min", "max"}
    assert metrics["per_image_energy"]["mean"] == pytest.approx(metrics["normalised_energy"], abs=1e-5)
    assert metrics["distinct_paths"] >= 1 and isinstance(metrics["selective_blocks"], list)
    assert len(metrics["savings_by_class"]) == 10 and len(metrics["gate_logits"]) == 2
    assert os.path.exists(os.path.join(model_dir, "per_image.npz"))
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    assert config["depth"] == 8 and config["schedule"]["phase1_epochs"] == 1
    assert config["accelerator"]["array_rows"] == 32
    # config.json reads back as the typed configuration it was written from.
    from trainers.run_config import RunConfig

    assert json.loads(json.dumps(RunConfig.from_dict(config).to_dict())) == config
    assert os.path.exists(os.path.join(model_dir, "model.keras"))
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == [
        "epoch-0001.json", "epoch-0001.keras", "epoch-0002.json", "epoch-0002.keras", "latest.json"]
    events = [f for root, _, files in os.walk(os.path.join(model_dir, "tensorboard")) for f in files]
    assert any(f.startswith("events.out.tfevents") for f in events)
    assert "epoch 1 done" in result.stdout and "alpha 0.1000" in result.stdout


def test_tensorboard_has_energy_alpha_and_skip_scalars(smoke_run):
    import tensorflow as tf

    model_dir, _ = smoke_run
    tags = set()
    for root, _, files in os.walk(os.path.join(model_dir, "tensorboard")):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    tags.add(value.tag)
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_energy_savings", "epoch_alpha", "skip_ratio/block_01"):
        assert tag in tags, sorted(tags)


def test_rerun_resumes_and_changes_nothing(smoke_run, fake_data_dir):
    model_dir, _ = smoke_run
    with open(os.path.join(model_dir, "metrics.json")) as f:
        before = json.load(f)
    result = run_trainer(*smoke_args(fake_data_dir, model_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming" in result.stdout
    with open(os.path.join(model_dir, "metrics.json")) as f:
        after = json.load(f)
    assert after["epochs"] == before["epochs"]
    assert after["test_accuracy"] == before["test_accuracy"]
    assert after["history"] == before["history"]


def test_model_dir_of_another_configuration_is_refused(smoke_run, fake_data_dir):
    model_dir, _ = smoke_run
    stamp = os.path.getmtime(os.path.join(model_dir, "metrics.json"))
    result = run_trainer(*smoke_args(fake_data_dir, model_dir, "--depth=14"))
    assert result.returncode == 2
    assert "depth=8" in result.stderr and "depth=14" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.path.getmtime(os.path.join(model_dir, "metrics.json")) == stamp


def test_missing_data_fails_fast_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "m"
    start = time.time()
    result = run_trainer(f"--data_dir={tmp_path / 'nowhere'}", f"--model_dir={model_dir}", "--depth=8")
    assert result.returncode == 2
    assert time.time() - start < 60
    assert "--data_dir" in result.stderr and "TFDS_DATA_DIR" in result.stderr
    assert len(error_lines(result)) == 1
    assert not model_dir.exists()


@pytest.mark.parametrize("flag, needle", [
    ("--batch_size=0", "--batch_size=0"),
    ("--depth=21", "--depth=21"),
    ("--alpha2=-1", "--alpha2=-1"),
    ("--dataflow=xs", "dataflow"),
    ("--array_rows=0", "--array_rows=0"),
    ("--target_accuracy=92", "--target_accuracy=92"),
    ("--phase3_gate_lr_multiplier=-1", "--phase3_gate_lr_multiplier=-1"),
    ("--decoupled_weight_decay=-1", "--decoupled_weight_decay=-1"),
    ("--cosine_start_epoch=-1", "--cosine_start_epoch=-1"),
    # The new flags, one case each kind (the fields' own checks: test_trainers_common.py, test_callbacks.py).
    ("--removed_blocks=1", "unless baseline is set"),
    ("--baseline --removed_blocks=one", "comma-separated list"),
    ("--reinforce_phases=4", "--reinforce_phases=4"),
    ("--batch_shaping_prior=0.5", "two positive numbers"),
    ("--batch_shaping_phases=one", "--batch_shaping_phases=one must be a comma-separated list"),
    ("--inplace_distill=1.5", "--inplace_distill=1.5: RunConfig.inplace_distill must be a number in [0, 1]"),
    ("--inplace_distill=0.5 --inplace_temperature=0", "--inplace_temperature=0.0"),
    ("--gate_warmup_epochs=1 --drop_blocks=1", "--drop_blocks=1.0: RunConfig.drop_blocks must be a number in [0, 1)"),
])
def test_bad_flags_exit_2_with_one_line(flag, needle, tmp_path, fake_data_dir):
    model_dir = tmp_path / "m"
    result = run_trainer(f"--data_dir={fake_data_dir}", f"--model_dir={model_dir}", "--depth=8", *flag.split())
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0]
    assert "Traceback" not in result.stderr
    assert not model_dir.exists()


def test_empty_data_dir_fails_fast(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_trainer(f"--data_dir={empty}", f"--model_dir={tmp_path / 'm'}", "--depth=8")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "empty" in error_lines(result)[0]
    assert not (tmp_path / "m").exists()


def test_malformed_config_in_model_dir_is_refused(tmp_path, fake_data_dir):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{not json")
    result = run_trainer(*smoke_args(fake_data_dir, model_dir))
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "config.json" in error_lines(result)[0]
    assert sorted(os.listdir(model_dir)) == ["config.json"]
    assert (model_dir / "config.json").read_text() == "{not json"


def test_saved_model_loads_in_safe_mode(smoke_run):
    import keras

    from energynet_tf.model import EnergyNet

    model_dir, _ = smoke_run
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), safe_mode=True)
    assert isinstance(model, EnergyNet) and model.depth == 8


@pytest.mark.slow  # three trainers, 20 s; test_io_utils.py checks DirectoryLock itself (BUILD.md, "Test")
def test_a_second_trainer_on_a_live_run_directory_stops_naming_the_first(fake_data_dir, tmp_path):
    import signal
    import time

    model_dir = tmp_path / "m"
    args = smoke_args(fake_data_dir, model_dir, "--epochs=40")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TFDS_DATA_DIR", None)
    first = subprocess.Popen([sys.executable, "-m", "trainers.cifar", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = model_dir / ".lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().startswith(str(first.pid))):
            time.sleep(0.2)
        assert lock.read_text().startswith(str(first.pid))
        second = run_trainer(*args, timeout=120)
        assert second.returncode == 2
        assert len(error_lines(second)) == 1
        assert f"is in use by process {first.pid}" in error_lines(second)[0]
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The dead holder's lock is taken over with a one-line note; the run resumes.
    third = subprocess.Popen([sys.executable, "-m", "trainers.cifar", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in third.stderr:
            if line.startswith("note: took over the lock"):
                assert f"left by process {first.pid}" in line
                break
        else:
            raise AssertionError("no take-over note")
    finally:
        third.kill()
        third.wait()


@pytest.mark.slow  # the flag end to end; test_trainers_common.py checks its model without a subprocess
def test_mixed_precision_trains_records_its_precision_and_saves_a_mixed_model(fake_data_dir, tmp_path):
    import keras

    import energynet_tf  # noqa: F401  (registers the classes for loading)

    model_dir = tmp_path / "bf16"
    result = run_trainer(*smoke_args(fake_data_dir, model_dir, "--mixed_precision=bfloat16"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((model_dir / "config.json").read_text())["mixed_precision"] == "bfloat16"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and "energy_savings" in metrics
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    assert model.dtype_policy.name == "mixed_bfloat16" and model.gate.compute_dtype == "float32"
