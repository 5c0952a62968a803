"""The systolic-array cost model: SCALE-Sim 3.0.0's counts, number for number.

`systolic.config` holds the TensorFlow-free dataclasses (`AcceleratorConfig`,
`EnergyCosts`, `LayerShape`) and the shared integer check; `systolic.estimator`
computes the counts and energies in TensorFlow (docs/systolic.md). Names of
both are available here; the estimator's, and TensorFlow with them, are
imported on first use, so code that only builds configurations stays
TensorFlow-free.
"""

from energynet_tf.systolic.config import (  # noqa: F401
    COUNT_KEYS,
    DATAFLOWS,
    ENERGY_KEYS,
    AcceleratorConfig,
    EnergyCosts,
    LayerShape,
    UnsupportedLayerError,
    is_int,
)


def __getattr__(name):
    # PEP 562: `systolic.estimate` and the estimator's other names load TensorFlow only when used.
    import importlib

    estimator = importlib.import_module("energynet_tf.systolic.estimator")
    try:
        return getattr(estimator, name)
    except AttributeError:
        raise AttributeError(f"module 'energynet_tf.systolic' has no attribute {name!r}") from None
