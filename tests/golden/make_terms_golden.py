"""Writes tests/golden/terms_golden.npz: the training loss and the weights after two steps of EnergyNet-8
for each combination of the training signals, on a fixed batch and seed.

Run at the commit before the signals became `energynet_tf.terms` (the values pin that the refactored
step gives the same losses and the same runs); `tests/test_terms.py` compares against it.

    python tests/golden/make_terms_golden.py
"""

import os
import sys

os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402

CASES = {
    "expected": dict(energy_term="expected"),
    "decisions_noise": dict(energy_term="decisions", gate_noise=1.0),
    "weight_decay": dict(energy_term="decisions", gate_noise=1.0, weight_decay=1e-3),
    "batch_shaping": dict(energy_term="decisions", gate_noise=1.0, batch_shaping_weight=0.5,
                          batch_shaping_prior=(0.8, 0.2)),
    "reinforce": dict(energy_term="decisions", gate_noise=1.0, policy_weight=0.3, exploration=0.2),
    "reinforce_off": dict(energy_term="decisions", gate_noise=1.0, gate_losses=("reinforce", "batch_shaping"),
                          batch_shaping_weight=0.1),
    "teacher": dict(energy_term="decisions", gate_noise=1.0, weight_decay=1e-4),
}


def run_case(name, options):
    import keras
    import tensorflow as tf

    from energynet_tf.model import EnergyNet
    from energynet_tf import training

    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8, image_shape=(16, 16, 3), alpha=0.3, **options)
    teacher = None
    if name == "teacher":
        keras.utils.set_random_seed(1)
        teacher = EnergyNet(depth=8, image_shape=(16, 16, 3), baseline=True)
        model.set_teacher(teacher, weight=0.7, temperature=3.0)
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    training.compile_model(model, optimizer)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, size=(8,)).astype("int32")
    losses = []
    for _ in range(2):
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(logs["loss"])
    return np.asarray(losses, np.float64), np.concatenate([w.numpy().ravel() for w in model.weights])


def main():
    out = {}
    for name, options in CASES.items():
        losses, weights = run_case(name, options)
        out[name + "/losses"] = losses
        out[name + "/weights"] = weights
        print(name, losses)
    np.savez(os.path.join(os.path.dirname(__file__), "terms_golden.npz"), **out)


if __name__ == "__main__":
    main()
