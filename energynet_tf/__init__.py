"""EnergyNet-TF: energy-aware dynamic inference for TensorFlow/Keras.

`import energynet_tf` registers the package's Keras objects (EnergyNet, its
blocks, gate and metrics), so that `keras.saving.load_model(path,
safe_mode=True)` loads a saved EnergyNet. `energynet_tf.from_keras(model)`
turns a functional Keras residual network into one (`convert.py`). Registration needs Keras, and
importing Keras starts TensorFlow (seconds, and start-up lines on stderr),
which the TensorFlow-free tools (the SCALE-Sim-compatible cost estimator, the
command-line error paths) must not pay for. So: if Keras is already imported,
the objects are registered now; otherwise right after Keras's first import.
`ConvertedEnergyNet` (`convert.py`, a subclass of `EnergyNet`) is imported
right after `model.py` has finished executing, however that import began, so
that `model` never imports `convert` (the two depend one way).
"""

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def register_keras_objects():
    """Registers the package's Keras classes (imports TensorFlow and Keras)."""
    model = sys.modules.get("energynet_tf.model")
    if model is not None and not hasattr(model, "EnergyNet"):
        return  # model.py is importing Keras right now; the finder waiting for it imports convert after
    from energynet_tf import model  # noqa: F401,F811  (imports blocks, gates, metrics, terms)
    from energynet_tf import convert  # noqa: F401  (ConvertedEnergyNet)


def __getattr__(name):
    # `energynet_tf.from_keras` without importing Keras when the package is imported.
    if name in ("from_keras", "ConversionError"):
        from energynet_tf import convert

        return getattr(convert, name)
    raise AttributeError(f"module 'energynet_tf' has no attribute {name!r}")


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Runs `then()` once the module `target` has finished executing.

    It stays on `sys.meta_path` until the module is actually executed: a mere
    `importlib.util.find_spec("keras")` (an "is it installed?" check, as some
    libraries make) must not use it up.

    Args:
        target: the module's full name.
        then: a function of no arguments.
    """

    _searching = False

    def __init__(self, target, then):
        self.target = target
        self.then = then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.target or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module
        finder = self

        def exec_module(module):
            original(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            finder.then()

        # Wrap this one spec's loader call only.
        spec.loader = _Loader(loader, exec_module)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, exec_module):
        self._loader = loader
        self._exec_module = exec_module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _waiting_for(target):
    return any(isinstance(f, _RunAfterImport) and f.target == target for f in sys.meta_path)


# `convert` (ConvertedEnergyNet subclasses EnergyNet) right after `model.py`, so that model need not import it.
if "energynet_tf.model" not in sys.modules and not _waiting_for("energynet_tf.model"):
    sys.meta_path.insert(0, _RunAfterImport("energynet_tf.model",
                                            lambda: importlib.import_module("energynet_tf.convert")))
if "keras" in sys.modules:
    register_keras_objects()
elif not _waiting_for("keras"):
    sys.meta_path.insert(0, _RunAfterImport("keras", register_keras_objects))
