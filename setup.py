"""EnergyNet-TF: energy-aware dynamic inference (EnergyNet, NeurIPS 2018 workshop) for TF/Keras."""

import setuptools

# Tested ranges (TF 2.21 + Keras 3.15 on Python 3.11, CPU). TF 2.21 no longer
# pulls in tensorboard, which keras-tuner needs; tfds 4.9.10 imports
# importlib_resources without depending on it: both are named here.
INSTALL_REQUIRES = [
    "tensorflow-cpu>=2.21,<2.22; platform_machine == 'x86_64'",
    "tensorflow>=2.21,<2.22; platform_machine != 'x86_64'",
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

setuptools.setup(
    name="energynet-tf",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=setuptools.find_packages(include=["energynet_tf", "energynet_tf.*", "trainers", "tools"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4"]},
)
