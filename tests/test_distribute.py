"""Tests of energynet_tf/distribute.py: strategies, sharding, and training on 2 workers over loopback.

Multi-worker tests start real processes on 127.0.0.1 with ports chosen free at
run time; every process is bounded in time and killed at the end.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import REPO, TINY_TRAINER, error_lines, tool_env
from tools import runs

SCRIPT = textwrap.dedent("""
    import json, os, numpy as np, keras, tensorflow as tf
    # A list of model arguments, each run on one device and on two replicas
    # ("inplace": the in-place distillation term's arguments).
    CASES = json.loads(os.environ.get("ENERGYNET_TEST_MODEL_ARGS", "[{}]"))
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from energynet_tf.model import EnergyNet
    from energynet_tf import terms, training

    rng = np.random.default_rng(0)
    half = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, 4)
    # Both replicas get the same 4 examples, so per-replica batch-norm statistics
    # equal the global ones and the two runs must agree.
    x, y = np.concatenate([half, half]), np.concatenate([labels, labels])

    def run(strategy, extra):
        extra = dict(extra)
        if "inplace" in extra:
            extra["loss_terms"] = [terms.InplaceDistillation(**extra.pop("inplace"))]
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = EnergyNet(depth=8, alpha=0.9, **{"gate_bias_init": 0.2, **extra})
            training.compile_model(model, keras.optimizers.SGD(0.5))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        logs = model.fit(ds, epochs=1, verbose=0).history
        return model, {k: v[0] for k, v in logs.items()}

    for case, extra in enumerate(CASES):
        one, logs_one = run(tf.distribute.OneDeviceStrategy("/cpu:0"), extra)
        two, logs_two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), extra)
        diff = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(one.weights, two.weights))
        print(case, "MAXDIFF", diff)
        print(case, "OPTIMIZER", type(two.optimizer).__name__)
        # A loss-scaled step with non-finite gradients is skipped: the inner optimizer did not count it.
        print(case, "APPLIED", int(getattr(two.optimizer, "inner_optimizer", two.optimizer).iterations.numpy()))
        for key in ("loss", "cross_entropy", "expected_energy", "energy_savings", "mean_reward", "policy_entropy"):
            print(case, "LOG", key, logs_one[key], logs_two[key])
""")


@pytest.mark.parametrize("cases", [
    # The plain step, and in-place distillation's (a second, full-path forward
    # pass and its cross-entropy and KL, summed into the one step), in one process.
    [{}, {"inplace": {"weight": 0.5, "temperature": 2.0}}],
    # The reinforcement stage (saturated open gates without exploration: duplicated
    # examples take the same path, so per-replica batch norm sees the global statistics).
    pytest.param([{"policy_weight": 0.5, "exploration": 0.0, "gate_bias_init": 30.0}], marks=pytest.mark.slow),
    # float16: the LossScaleOptimizer's scaled step, with its all-reduced finiteness check.
    pytest.param([{"dtype": "mixed_float16"}], marks=pytest.mark.slow),
])
def test_mirrored_strategy_matches_one_device(cases):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ENERGYNET_TEST_MODEL_ARGS=json.dumps(cases))
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for case, model_args in enumerate(cases):
        mine = [l.split(" ", 1)[1] for l in lines if l.startswith(f"{case} ")]
        diff = float(next(l for l in mine if l.startswith("MAXDIFF")).split()[1])
        # Same weights after one step: the cross-entropy (a Keras loss, already
        # divided by the replicas) and the hand-made terms are all scaled right.
        float16 = model_args.get("dtype") == "mixed_float16"
        assert ("OPTIMIZER LossScaleOptimizer" in mine) == float16, result.stdout
        assert "APPLIED 1" in mine, result.stdout
        # float16 rounds at about 1e-3 of a value, and the two runs sum their batches
        # in different orders; a wrong scale (of the replicas or the loss) is far larger.
        tolerance = 2e-3 if float16 else 1e-5
        assert diff < tolerance, (model_args, result.stdout)
        for line in mine:
            if line.startswith("LOG"):
                _, key, a, b = line.split()
                assert abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(a))), (model_args, line)
    losses = [next(l for l in lines if l.startswith(f"{case} LOG loss ")) for case in range(len(cases))]
    assert len(set(l.split()[3] for l in losses)) == len(cases), losses  # each case's step is its own


LEAVE_ONE_OUT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from energynet_tf import reinforce

    returns = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    parts = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(returns[3 * context.replica_id_in_sync_group:][:3]))
    got = strategy.run(reinforce.leave_one_out_advantages, args=(parts,))
    got = np.concatenate([t.numpy() for t in strategy.experimental_local_results(got)])
    want = reinforce.leave_one_out_advantages(tf.constant(returns)).numpy()
    print("MAXDIFF", float(np.abs(got - want).max()))
""")


def test_the_reinforce_baseline_is_over_the_global_batch_on_two_replicas():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", LEAVE_ONE_OUT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    diff = float(next(l for l in result.stdout.splitlines() if l.startswith("MAXDIFF")).split()[1])
    assert diff < 1e-6


# -- pieces -------------------------------------------------------------------


def test_shards_of_a_batch_are_its_rows_in_order():
    import tensorflow as tf

    from energynet_tf import distribute

    images = np.arange(24, dtype="float32").reshape(6, 2, 2)
    labels = np.arange(6)
    stream = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
    parts = [next(iter(distribute.shard_of_batches(stream, 6, 3, i))) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([p[1].numpy() for p in parts]), labels)
    np.testing.assert_array_equal(np.concatenate([p[0].numpy() for p in parts]), images)
    assert distribute.shard_of_batches(stream, 6, 1, 0) is stream
    with pytest.raises(ValueError, match=r"global batch size \(6\) must be a multiple of the number of workers \(4\)"):
        distribute.shard_of_batches(stream, 6, 4, 0)


@pytest.mark.parametrize("text, needle", [
    (None, "needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "must name a job"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', r"index must be in \[0, 2\)"),
])
def test_bad_tf_config_is_named(text, needle):
    from energynet_tf import distribute

    with pytest.raises(ValueError, match=needle):
        distribute.check_tf_config(text)


def test_unknown_strategy_is_refused():
    from energynet_tf import distribute

    with pytest.raises(ValueError, match="strategy must be one of default, mirrored, multi_worker, tpu; received: 'gpu'"):
        distribute.make_strategy("gpu")


def test_tpu_strategy_without_a_tpu_is_one_clear_error():
    from energynet_tf import distribute

    with pytest.raises(ValueError, match="strategy 'tpu': TensorFlow finds no TPU here"):
        distribute.make_strategy("tpu")


def test_trainer_with_multi_worker_and_no_tf_config_gets_one_line(fake_cifar_dir, tmp_path):
    env = tool_env()
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "trainers.cifar", f"--data_dir={fake_cifar_dir}",
                             f"--model_dir={tmp_path / 'm'}", "--strategy=multi_worker", *TINY_TRAINER],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "--strategy=multi_worker: strategy 'multi_worker' needs TF_CONFIG" in \
        error_lines(result)[0]
    assert not (tmp_path / "m").exists()


# -- two workers on loopback ----------------------------------------------------


def _start_workers(args, log_dir, tag, ports):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(len(ports)):
        env = dict(tool_env(), TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(os.path.join(log_dir, f"{tag}-{index}.log"), "w")
        processes.append((subprocess.Popen([sys.executable, "-m", "trainers.cifar", *args, "--strategy=multi_worker"],
                                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return processes


def _finish(processes, timeout=300):
    """Waits for every process (killing all past `timeout`); returns their (exit status, output)."""
    deadline = time.time() + timeout
    out = []
    try:
        for process, log in processes:
            process.wait(timeout=max(1, deadline - time.time()))
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
            out.append((process.returncode, open(log.name).read()))
    return out


def _digest(output):
    lines = [line for line in output.splitlines() if "weights sha256" in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0].split()[-1]


def _trainer(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "trainers.cifar", *args], cwd=REPO, env=tool_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def black_cifar_dir(tmp_path_factory):
    """Generated CIFAR-10 whose images are all black: every example is the same after augmentation."""
    from energynet_tf.data import testing

    return testing.make_fake_cifar10(str(tmp_path_factory.mktemp("black_cifar")), black=True)


def _max_relative_difference(a_path, b_path):
    """Largest |a - b| of any variable, over that variable's largest |a| (plus 1e-3: near-zero tensors)."""
    import keras

    import energynet_tf  # noqa: F401 - registers EnergyNet

    a, b = keras.saving.load_model(a_path), keras.saving.load_model(b_path)
    return max(float(np.max(np.abs(x.numpy() - y.numpy())) / (np.max(np.abs(x.numpy())) + 1e-3))
               for x, y in zip(a.weights, b.weights))


@pytest.mark.slow  # over 25 s; opt-in with `pytest -m slow` (BUILD.md, "Test")
def test_two_workers_train_like_one_process_with_the_same_global_batch(black_cifar_dir, tmp_path):
    # Black images and deterministic gates: every example of a global batch is
    # the same, so each worker's batch-norm statistics are the global batch's
    # and two workers must compute what one process computes.
    args = [f"--data_dir={black_cifar_dir}", "--depth=8", "--phase1_epochs=1", "--phase2_epochs=1",
            "--phase3_epochs=0", "--batch_size=16", "--max_train_examples=32", "--validation_examples=50",
            "--gate_noise=0"]
    chief_dir = tmp_path / "two"
    results = _finish(_start_workers([*args, f"--model_dir={chief_dir}"], str(tmp_path), "two", runs.free_ports(2)))
    for status, output in results:
        assert status == 0, output[-3000:]
    # Both workers end with the same variables, bit for bit.
    assert _digest(results[0][1]) == _digest(results[1][1])
    assert "this worker resumes from it and writes nothing there" in results[1][1]
    # Only the chief wrote the run directory.
    assert sorted(os.listdir(chief_dir)) == [".lock", "checkpoints", "config.json", "metrics.json", "model.keras",
                                              "per_image.npz", "tensorboard"]
    one = _trainer(*args, f"--model_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    difference = _max_relative_difference(str(tmp_path / "one" / "model.keras"), str(chief_dir / "model.keras"))
    # Four steps at LR 0.1: float differences of batch 8 vs 16 kernels only
    # (about 1e-3 of a tensor's scale, measured; most tensors agree to 1e-5).
    assert difference < 5e-3, difference
    # The tolerance is tight enough to see a gradient twice too large (a
    # loss summed instead of averaged over the workers would be that).
    double = _trainer(*args, "--lr1=0.2", "--lr2=0.02", f"--model_dir={tmp_path / 'double'}")
    assert double.returncode == 0, double.stderr[-3000:]
    assert _max_relative_difference(str(tmp_path / "one" / "model.keras"),
                                    str(tmp_path / "double" / "model.keras")) > 10 * 5e-3
    chief = json.load(open(chief_dir / "metrics.json"))
    alone = json.load(open(tmp_path / "one" / "metrics.json"))
    assert chief["history"][-1]["accuracy"] == pytest.approx(alone["history"][-1]["accuracy"])
    assert chief["test_accuracy"] == pytest.approx(alone["test_accuracy"])


@pytest.mark.slow  # over 25 s; opt-in with `pytest -m slow` (BUILD.md, "Test")
def test_a_killed_workers_rerun_resumes_the_job_from_the_chiefs_checkpoint(fake_cifar_dir, tmp_path):
    args = [f"--data_dir={fake_cifar_dir}", f"--model_dir={tmp_path / 'run'}", "--depth=8", "--phase1_epochs=2",
            "--phase2_epochs=1", "--phase3_epochs=0", "--batch_size=16", "--max_train_examples=64",
            "--validation_examples=50", "--checkpoint_every_steps=1"]
    ports = runs.free_ports(2)
    processes = _start_workers(args, str(tmp_path), "first", ports)
    latest = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            try:
                # Inside epoch 2: the rerun resumes at a step and restores the epoch's metric sums.
                pointer = json.loads(latest.read_text())
                if pointer["epoch"] >= 1 and pointer["step"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        processes[1][0].send_signal(signal.SIGKILL)
    finally:
        first = _finish(processes, timeout=240)
    kept = json.loads(latest.read_text())
    assert kept["epoch"] < 3, "the job finished before the kill; the test needs a longer run"
    # The surviving worker stops with one line that says what to do.
    assert first[0][0] == 3, first[0][1][-3000:]
    assert "another worker stopped or cannot be reached" in first[0][1]
    assert "rerun every worker's command to resume" in first[0][1]
    second = _finish(_start_workers(args, str(tmp_path), "second", ports))
    for status, output in second:
        assert status == 0, output[-3000:]
        assert f"Resuming from {tmp_path / 'run' / 'checkpoints'}" in output
    assert _digest(second[0][1]) == _digest(second[1][1])
    assert "+ " in second[0][1].split("Resuming from", 1)[1].splitlines()[0]  # "(epoch E + S steps, ...)"
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3
    # The same job uninterrupted: the resumed epoch's restored metric sums
    # count every worker's steps once (an error would be a factor of 2).
    args[1] = f"--model_dir={tmp_path / 'whole'}"
    whole = _finish(_start_workers(args, str(tmp_path), "whole", runs.free_ports(2)))
    assert all(status == 0 for status, _ in whole), whole[0][1][-3000:]
    assert _digest(whole[0][1]) == _digest(second[0][1])
    reference = json.load(open(tmp_path / "whole" / "metrics.json"))
    for resumed, uninterrupted in zip(metrics["history"], reference["history"]):
        for key in ("loss", "accuracy", "energy_savings", "val_accuracy"):
            assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-5), key


@pytest.mark.slow  # over 30 s; test_mirrored_strategy_matches_one_device covers the numbers (BUILD.md, "Test")
def test_mirrored_strategy_trains_like_the_default_one(fake_cifar_dir, tmp_path):
    # On a CPU-only machine MirroredStrategy has one replica: the same run, through the strategy's scope.
    args = [f"--data_dir={fake_cifar_dir}", *TINY_TRAINER]
    default = _trainer(*args, f"--model_dir={tmp_path / 'default'}")
    mirrored = _trainer(*args, f"--model_dir={tmp_path / 'mirrored'}", "--strategy=mirrored")
    assert default.returncode == 0 and mirrored.returncode == 0, mirrored.stderr[-3000:]
    a = json.load(open(tmp_path / "default" / "metrics.json"))
    b = json.load(open(tmp_path / "mirrored" / "metrics.json"))
    for key in ("test_accuracy", "energy_savings", "test_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    # A run may resume under another strategy: the finished mirrored run reruns as a no-op under default.
    again = _trainer(*args, f"--model_dir={tmp_path / 'mirrored'}")
    assert again.returncode == 0, again.stderr[-3000:]
