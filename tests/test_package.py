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


def _requires(tmp_path, env):
    """{section: requirements} setup.py declares under `env`, from its egg-info metadata (nothing installed).

    The section "" holds the unconditional requirements; ":<marker>" those with an environment marker.
    """
    import shutil

    work = tmp_path / ("gpu" if env.get("ENERGYNET_TF_GPU") else "cpu")
    work.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), work / name)
    result = subprocess.run([sys.executable, "setup.py", "-q", "egg_info"], cwd=work, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, **env))
    assert result.returncode == 0, result.stderr[-2000:]
    sections, current = {"": []}, ""
    for line in next(work.glob("*.egg-info")).joinpath("requires.txt").read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        elif line.strip():
            sections[current].append(line.strip())
    return sections


def test_a_gpu_install_asks_for_tensorflow_with_cuda_instead_of_tensorflow_cpu(tmp_path):
    cpu = _requires(tmp_path, {"ENERGYNET_TF_GPU": ""})
    gpu = _requires(tmp_path, {"ENERGYNET_TF_GPU": "1"})
    assert cpu[':platform_machine == "x86_64"'] == ["tensorflow-cpu<2.22,>=2.21"]
    assert cpu[':platform_machine != "x86_64"'] == ["tensorflow<2.22,>=2.21"]
    # One TensorFlow distribution on every machine: the CUDA build replaces the CPU one, never joins it.
    assert [r for r in gpu[""] if r.startswith("tensorflow[")] == ["tensorflow[and-cuda]<2.22,>=2.21"]
    assert not any("tensorflow-cpu" in r or r.startswith("tensorflow<") for reqs in gpu.values() for r in reqs)
    assert [r for r in gpu[""] if not r.startswith("tensorflow[")] == cpu[""]
    assert gpu["test"] == cpu["test"]
    bad = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path('setup.py', run_name='__main__')",
                          "egg_info"], cwd=tmp_path / "cpu", capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, ENERGYNET_TF_GPU="maybe"))
    assert bad.returncode != 0 and "ENERGYNET_TF_GPU must be 1 or 0, got 'maybe'" in bad.stderr
