"""Benchmark-only TFLite probes (subnetworks, overhead probes) used by `tools.bench_latency` and its tests."""

import numpy as np

from energynet_tf.export.serving import (  # noqa: F401
    check_model,
    gate_constants,
    _network,
    _run_gated_block,
)
from energynet_tf.export.tflite import (  # noqa: F401
    _convert_batch1,
)


def convert_subnetwork_to_tflite(model, open_blocks):
    """Converts the network with only the blocks in `open_blocks` to a batch-1 TFLite model.

    No gates, no control flow: the stem, block 0, gated block i + 1 where
    `open_blocks[i]` is truthy (its shortcut elsewhere) and the head, as a
    plain static graph. For an image whose gates decide `open_blocks`, its
    logits are the gated model's, so its latency is what any implementation of
    that image's skipping can at best reach on the same runtime: the
    benchmarks' "oracle".

    Args:
        model: a gated `EnergyNet`.
        open_blocks: `num_gates` decisions.

    Returns:
        The TFLite model as bytes; its signature `serving_default` maps
        `images` to `logits`.

    Raises:
        ValueError: if `open_blocks` does not have `num_gates` entries.
    """
    check_model(model)
    pattern = [bool(d) for d in np.asarray(open_blocks).reshape(-1)]
    if len(pattern) != model.num_gates:
        raise ValueError(f"Argument `open_blocks` must have {model.num_gates} entries; received {len(pattern)}")

    def serve(images):
        x = model.walk(model.stem(images), decide=lambda index, x: pattern[index],
                       run=lambda block, x, run: block(x, training=False) if run else block.shortcut(x, training=False))
        return {"logits": model.head(x)}

    return _convert_batch1(model, serve)


OVERHEAD_PROBES = ("gates", "branches")


def convert_overhead_probe_to_tflite(model, probe):
    """Converts one half of the skipping machinery, alone, to a batch-1 TFLite model.

    The all-open export costs more than the plain network for two reasons:
    the gates run, and every gated block sits in an `IF` branch. A probe keeps
    one of the two, so that a benchmark can measure each against the plain
    network side by side (`tools.bench_latency`):

    * "gates": every block runs in the main graph (no control flow) and the
      gates are computed as in the export; their logits are an output, so the
      converter keeps them.
    * "branches": every gated block is an `IF` as in the export, but there
      are no gates: the predicate is `images[0, 0, 0, 0] >= -inf`, true for
      any image without a NaN, which the converter cannot fold away.

    For an image without a NaN, both give the all-open network's logits.

    Args:
        model: a gated `EnergyNet`.
        probe: one of `OVERHEAD_PROBES`.

    Returns:
        The TFLite model as bytes; its signature `serving_default` maps
        `images` to `logits` (and, for "gates", `gate_logits`).

    Raises:
        ValueError: if `probe` is not one of `OVERHEAD_PROBES`, or the model
            has no gates.
    """
    import tensorflow as tf

    if probe not in OVERHEAD_PROBES:
        raise ValueError(f"Argument `probe` must be one of {OVERHEAD_PROBES}; received: {probe!r}")
    check_model(model)
    if model.gate is None:
        raise ValueError("Argument `model` must be a gated EnergyNet; received a baseline")
    constants = gate_constants(model)

    def serve(images):
        if probe == "gates":
            logits, gate_logits, _ = _network(model, images, "ignore", constants)
            return {"logits": logits, "gate_logits": gate_logits}
        always = tf.reshape(tf.greater_equal(images[:, 0, 0, 0], -np.inf), ())
        x = model.walk(model.stem(images), decide=lambda index, x: always,
                       run=lambda block, x, decision: _run_gated_block(block, x, decision, "single"))
        return {"logits": model.head(x)}

    return _convert_batch1(model, serve)
