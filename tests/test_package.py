"""Tests of energynet_tf/__init__.py: `import energynet_tf` is enough to load saved models."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, timeout=180):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("m") / "m.keras")
    result = _python(f"from energynet_tf.model import EnergyNet; EnergyNet(depth=8, alpha=0.3).save({path!r})")
    assert result.returncode == 0, result.stderr[-2000:]
    return path


@pytest.mark.parametrize("imports", [
    "import energynet_tf; import keras",
    "import keras; import energynet_tf",
    # An "is Keras installed?" probe between the two imports must not use up the registration.
    "import energynet_tf, importlib.util; importlib.util.find_spec('keras'); import keras",
])
def test_package_import_registers_the_keras_objects_in_a_fresh_process(saved_model, imports):
    result = _python(f"{imports}\n"
                     f"m = keras.saving.load_model({saved_model!r}, safe_mode=True)\n"
                     "print(type(m).__name__, float(m.alpha.numpy()))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["EnergyNet", "0.30000001192092896"]


def test_without_the_package_import_keras_cannot_find_the_class(saved_model):
    # The control: what the package import fixes.
    result = _python(f"import keras\nkeras.saving.load_model({saved_model!r}, safe_mode=True)")
    assert result.returncode != 0 and "EnergyNet" in result.stderr


def test_package_import_alone_does_not_start_tensorflow():
    result = _python("import sys, energynet_tf, energynet_tf.cli\n"
                     "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]
