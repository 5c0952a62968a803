"""Export of an EnergyNet in which skipped blocks really do not run.

Training multiplies a skipped block by zero (`block(x, decision=m)`), so the
block still runs. The serving graph built here uses real control flow instead:
for each gated block, `tf.cond` chooses between running the block and its
shortcut, so a closed gate removes the block's work. The same graph is saved
as a SavedModel and converted to TFLite, where each `tf.cond` becomes an `IF`
op whose untaken branch (a subgraph of its own) is not invoked.

Batches. At batch size 1 a block either runs or not. For a batch whose
decisions differ there are two methods:

* "gather" (the SavedModel's default) runs the block only on the examples
  whose gate is open::

      all open  -> the block on the whole batch (no copies)
      none open -> the shortcut only
      some open -> s = shortcut(x); the residual branch on x[open] only;
                   the outputs are stitched back in batch order with a gather

* "dense" runs the block on the whole batch when any example's gate is open
  and selects per example; its cost is all-or-nothing per batch, but all its
  shapes are static.

The TFLite model's default is "single": its input has batch size 1 (the
on-device case) and each gated block is one `IF` on that image's decision,
with the plain block in one branch and the shortcut in the other: no
per-example select, no dynamic shapes. `load_exported` feeds a larger batch
one image at a time. An `IF` op copies its inputs into the branch subgraph
and the result back, and "dense"'s per-example select is one more pass over
the block's output; at batch 1 "single" is the fastest (docs/export.md has
the measurements). `tflite_batched="dense"` gives a resizable batch.

Outputs of the serving signature `serving_default` (input `images`, float32
`(batch, height, width, channels)`, normalised as in training):

* `logits` `(batch, num_classes)`;
* `decisions` `(batch, num_gates)`: 1.0 where gate i ran block i + 1, else 0.0
  (all ones for a baseline);
* `probabilities` `(batch, num_gates)`: the gates' probabilities;
* `energy` `(batch,)`: the normalised inference energy of each example,
  `(E_fixed + E_gates + sum_b m_b E_b) / E_total` (docs/design.md §1.3).

The SavedModel checks its input at run time (rank, height, width, channels)
and fails with an `InvalidArgumentError` naming the expected and received
shapes; a wrong dtype is refused by the signature. `load_exported` wraps a
SavedModel or a TFLite file in a Python callable that checks NumPy inputs
first and raises `ValueError`/`TypeError`.

Example:

    model = keras.saving.load_model("runs/r38/model.keras")
    paths = export_model(model, "exports/r38")
    served = load_exported("exports/r38", backend="tflite")
    out = served(images)          # dict of NumPy arrays
"""

# The public API: what a user calls. Modules: `common` (names, `ExportError`),
# `serving` (the serving graph, SavedModel), `tflite`, `quantize` (int8),
# `package` (`export_model`), `loading` (`load_exported`), and
# `gate_programs` (gates set to given decisions: calibration, tests, benchmarks).
from energynet_tf.export.common import (  # noqa: F401
    BATCHED_METHODS,
    DEFAULT_BATCHED_METHOD,
    DEFAULT_TFLITE_BATCHED_METHOD,
    FORMAT_VERSION,
    INPUT_NAME,
    INT8_TFLITE_FILE,
    METADATA_FILE,
    OUTPUT_KEYS,
    SAVED_MODEL_DIR,
    SERVING_KEY,
    TFLITE_BATCHED_METHODS,
    TFLITE_FILE,
    ExportError,
)
from energynet_tf.export.loading import ExportedModel, load_exported, tflite_interpreter  # noqa: F401
from energynet_tf.export.package import export_model  # noqa: F401
from energynet_tf.export.quantize import convert_to_tflite_int8, keep_output_float, merge_calibrations  # noqa: F401
from energynet_tf.export.serving import check_model, float32_model, save_saved_model, serving_function  # noqa: F401
from energynet_tf.export.tflite import convert_to_tflite, tflite_op_counts  # noqa: F401
