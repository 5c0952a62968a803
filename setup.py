"""EnergyNet-TF: energy-aware dynamic inference (EnergyNet, NeurIPS 2018 workshop) for TF/Keras."""

import os

import setuptools

# The TensorFlow distribution: the small CPU-only `tensorflow-cpu` on x86_64 by
# default; with ENERGYNET_TF_GPU=1 in the environment of `pip install`,
# `tensorflow[and-cuda]` (the CUDA libraries too) INSTEAD of it, so that a GPU
# machine never gets two TensorFlow packages installed over each other (an
# extra cannot replace a requirement, only add one). README, "Install".
TENSORFLOW_CPU = [
    "tensorflow-cpu>=2.21,<2.22; platform_machine == 'x86_64'",
    "tensorflow>=2.21,<2.22; platform_machine != 'x86_64'",
]
TENSORFLOW_GPU = ["tensorflow[and-cuda]>=2.21,<2.22"]


def tensorflow_requirements(environ=os.environ):
    """The TensorFlow requirement for this install: GPU if `ENERGYNET_TF_GPU` is set to a true value."""
    value = environ.get("ENERGYNET_TF_GPU", "").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes"):
        raise SystemExit(f"ENERGYNET_TF_GPU must be 1 or 0, got {value!r}")
    return TENSORFLOW_GPU if value in ("1", "true", "yes") else TENSORFLOW_CPU


# Tested ranges (TF 2.21 + Keras 3.15 on Python 3.11, CPU). TF 2.21 no longer
# pulls in tensorboard, which keras-tuner needs; tfds 4.9.10 imports
# importlib_resources without depending on it: both are named here.
INSTALL_REQUIRES = [
    "keras>=3.15,<3.16",
    "tensorflow-datasets>=4.9.10,<4.10",
    "importlib_resources>=6",
    "keras-tuner>=1.4.8,<1.5",
    "tensorboard>=2.21,<2.22",
    "absl-py>=2.1,<3",
    "numpy>=1.26,<3",
    "ai-edge-litert>=2.3,<2.4",
    "matplotlib>=3.8,<4",
]

if __name__ == "__main__":  # (pip runs this file as __main__; the tests import it)
    setuptools.setup(
        name="energynet-tf",
        version="0.1.0",
        description=__doc__,
        long_description=open("README.md").read(),
        long_description_content_type="text/markdown",
        python_requires=">=3.10,<3.14",
        packages=setuptools.find_packages(include=["energynet_tf", "energynet_tf.*", "trainers", "tools"]),
        install_requires=tensorflow_requirements() + INSTALL_REQUIRES,
        extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4"]},
    )
