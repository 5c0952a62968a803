"""fit() with the custom train_step under tf.distribute.MirroredStrategy (2 logical CPUs)."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import numpy as np, keras, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from energynet_tf.model import EnergyNet
    from energynet_tf import training

    rng = np.random.default_rng(0)
    half = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, 4)
    # Both replicas get the same 4 examples, so per-replica batch-norm statistics
    # equal the global ones and the two runs must agree.
    x, y = np.concatenate([half, half]), np.concatenate([labels, labels])

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = EnergyNet(depth=8, alpha=0.9, gate_bias_init=0.2)
            training.compile_model(model, keras.optimizers.SGD(0.5))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        logs = model.fit(ds, epochs=1, verbose=0).history
        return model, {k: v[0] for k, v in logs.items()}

    one, logs_one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two, logs_two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    diff = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(one.weights, two.weights))
    print("MAXDIFF", diff)
    for key in ("loss", "cross_entropy", "expected_energy", "energy_savings"):
        print("LOG", key, logs_one[key], logs_two[key])
""")


def test_mirrored_strategy_matches_one_device():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    diff = float(next(l for l in lines if l.startswith("MAXDIFF")).split()[1])
    # Same weights after one step: the cross-entropy (a Keras loss, already
    # divided by the replicas) and the hand-made energy term are both scaled right.
    assert diff < 1e-5, result.stdout
    for line in lines:
        if line.startswith("LOG"):
            _, key, a, b = line.split()
            assert abs(float(a) - float(b)) <= 1e-5 * max(1.0, abs(float(a))), line
