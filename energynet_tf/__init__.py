"""EnergyNet-TF: energy-aware dynamic inference for TensorFlow/Keras."""

__version__ = "0.1.0"
