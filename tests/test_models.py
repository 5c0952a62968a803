"""Tests of the shipped models in models/: checksums, loading, what they are."""

import hashlib
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "models")
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "tensorflow_datasets")


def _sums():
    with open(os.path.join(MODELS, "SHA256SUMS")) as f:
        return [line.split() for line in f if line.strip()]


def test_checksums_match_and_both_models_are_listed():
    sums = _sums()
    assert sorted(rel for _, rel in sums) == ["cifar10/baseline/model.keras", "cifar10/energynet/model.keras"]
    for digest, rel in sums:
        with open(os.path.join(MODELS, rel), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, rel
    total = sum(os.path.getsize(os.path.join(MODELS, rel)) for _, rel in sums)
    assert total < 20 * 2**20


def test_models_load_safely_after_the_package_import():
    import keras

    import energynet_tf  # noqa: F401
    from energynet_tf.model import EnergyNet

    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    baseline = keras.saving.load_model(os.path.join(MODELS, "cifar10/baseline/model.keras"), safe_mode=True)
    energynet = keras.saving.load_model(os.path.join(MODELS, "cifar10/energynet/model.keras"), safe_mode=True)
    for model in (baseline, energynet):
        assert isinstance(model, EnergyNet) and getattr(model, "optimizer", None) is None
        assert model.forward(x)["logits"].shape == (3, 10)
    assert baseline.baseline and baseline.gate is None
    assert not energynet.baseline and energynet.num_gates == energynet.spec.num_blocks - 1
    assert baseline.depth == energynet.depth


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "cifar10")), reason="real CIFAR-10 not at ../shared/data")
def test_shipped_energynet_skips_blocks_on_real_test_images():
    import keras

    import energynet_tf  # noqa: F401
    from energynet_tf.data import cifar

    model = keras.saving.load_model(os.path.join(MODELS, "cifar10/energynet/model.keras"), safe_mode=True)
    data = cifar.load_cifar10(DATA, batch_size=128, eval_batch_size=500)
    images, labels = next(iter(data.test))
    out = model.forward(images)
    accuracy = float(np.mean(np.argmax(out["logits"], 1) == labels.numpy()))
    assert accuracy > 0.7
    assert float(np.mean(model.inference_energy(out["decisions"]))) < 1.0
