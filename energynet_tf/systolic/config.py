"""The accelerator, energy costs and layer shapes of the cost model: plain dataclasses, no TensorFlow.

The dataclasses, the SCALE-Sim file readers (`scalesim_io`), the model's
constructor and the command-line tool's input checks use this module alone,
so they never import TensorFlow (about 5 s and its start-up log lines). The
estimator that computes SCALE-Sim's counts is `systolic.estimator`.
"""

import dataclasses
import math

import numpy as np

DATAFLOWS = ("os", "ws", "is")

# The per-layer outputs of `estimate`, in a stable order.
COUNT_KEYS = (
    "macs",
    "compute_cycles",
    "stall_cycles",
    "total_cycles_incl_prefetch",
    "sram_ifmap_reads",
    "sram_filter_reads",
    "sram_ofmap_writes",
    "dram_ifmap_reads",
    "dram_filter_reads",
    "dram_ofmap_writes",
    "sram_ifmap_start_cycle",
    "sram_ifmap_stop_cycle",
    "sram_filter_start_cycle",
    "sram_filter_stop_cycle",
    "sram_ofmap_start_cycle",
    "sram_ofmap_stop_cycle",
    "dram_ifmap_start_cycle",
    "dram_ifmap_stop_cycle",
    "dram_filter_start_cycle",
    "dram_filter_stop_cycle",
    "dram_ofmap_start_cycle",
    "dram_ofmap_stop_cycle",
    "num_folds",
)
ENERGY_KEYS = ("energy_mac", "energy_rf", "energy_sram", "energy_dram", "energy")

# SCALE-Sim hard-codes these (single_layer_sim.py, read_buffer_estimate_bw.py).
_WORD_SIZE_BYTES = 1
_SETS_PER_BUFFER = 100   # A read buffer is cut into 100 sets ...
_ACTIVE_SETS = 50        # ... of which 50 (active_buf_frac 0.5) form one prefetch epoch.
_CALC_READ_BANDWIDTH = 10  # Words per cycle of the first prefetch in CALC mode.


def _sram_words(kb):
    # SCALE-Sim: total_size_elems = floor(1024 * kB / word_size).
    return int(math.floor(1024 * kb / _WORD_SIZE_BYTES))


class UnsupportedLayerError(ValueError):
    """A layer whose SCALE-Sim behaviour this estimator does not reproduce; the message says which."""


def is_int(value):
    """Whether `value` is an integer (Python or NumPy), not a bool: the one integer check of the cost model."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class AcceleratorConfig:
    """A systolic-array accelerator in SCALE-Sim's terms (CALC bandwidth mode).

    Attributes:
      array_rows: processing-element rows (SCALE-Sim `ArrayHeight`).
      array_cols: processing-element columns (SCALE-Sim `ArrayWidth`).
      dataflow: "os" (output stationary), "ws" (weight stationary) or "is" (input
        stationary).
      ifmap_sram_kb: ifmap SRAM size in kB (1 kB = 1024 one-byte words, as in SCALE-Sim).
      filter_sram_kb: filter SRAM size in kB.
      ofmap_sram_kb: ofmap SRAM size in kB.

    SCALE-Sim's other settings do not change its CALC-mode numbers: the word size is
    fixed at 1 byte, the address offsets only shift addresses, and the bandwidth,
    request-buffer and layout settings are used in USER mode only.

    Raises:
      ValueError: in `__post_init__`, naming the field, what is expected and what was
        received.
    """

    array_rows: int = 32
    array_cols: int = 32
    dataflow: str = "os"
    ifmap_sram_kb: float = 64
    filter_sram_kb: float = 64
    ofmap_sram_kb: float = 64

    def __post_init__(self):
        for field in ("array_rows", "array_cols"):
            value = getattr(self, field)
            if not is_int(value) or value < 1:
                raise ValueError(f"AcceleratorConfig.{field} must be a positive int; "
                                 f"received: {value!r}")
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"AcceleratorConfig.dataflow must be one of {DATAFLOWS}; "
                             f"received: {self.dataflow!r}")
        for field in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb"):
            value = getattr(self, field)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"AcceleratorConfig.{field} must be a positive number of kB; "
                                 f"received: {value!r}")
            # SCALE-Sim cuts a read buffer into floor(words / 100)-word sets; below 100 words
            # a set is empty and SCALE-Sim itself fails (a reshape error).
            if _sram_words(value) < _SETS_PER_BUFFER:
                raise ValueError(f"AcceleratorConfig.{field} must hold at least "
                                 f"{_SETS_PER_BUFFER} words (>= {_SETS_PER_BUFFER / 1024:.4f} kB), "
                                 f"as SCALE-Sim needs; received: {value!r}")


@dataclasses.dataclass(frozen=True)
class EnergyCosts:
    """Normalised energy per operation (docs/design.md §1.3; Eyeriss, Chen et al., ISCA 2016).

    Attributes:
      mac: energy of one multiply-accumulate.
      rf: energy of one register-file access.
      sram: energy of one SRAM (global buffer) access.
      dram: energy of one DRAM access.
      rf_accesses_per_mac: register-file accesses per MAC (two operand reads and one
        partial-sum update).

    Raises:
      ValueError: in `__post_init__` if a cost is negative or not a finite number.
    """

    mac: float = 1.0
    rf: float = 1.0
    sram: float = 6.0
    dram: float = 200.0
    rf_accesses_per_mac: float = 3.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"EnergyCosts.{field.name} must be a finite number >= 0; "
                                 f"received: {value!r}")


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One SCALE-Sim topology row: a convolution as SCALE-Sim sees it.

    Attributes:
      name: layer name.
      ifmap_h: input height, padding included (see `topology.conv_layer_shape`).
      ifmap_w: input width, padding included.
      filter_h: filter height (R).
      filter_w: filter width (S).
      channels: input channels (C).
      num_filters: output channels (K).
      stride: the stride, in both directions (SCALE-Sim has one stride per layer).

    Raises:
      ValueError: in `__post_init__` if a size is not a positive int or the filter is
        larger than the input (SCALE-Sim asserts the same).
    """

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filters: int
    stride: int

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"LayerShape.name must be a str; received: {self.name!r}")
        for field in ("ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels",
                      "num_filters", "stride"):
            value = getattr(self, field)
            if not is_int(value) or value < 1:
                raise ValueError(f"LayerShape.{field} of layer {self.name!r} must be a positive "
                                 f"int; received: {value!r}")
        if self.filter_h > self.ifmap_h or self.filter_w > self.ifmap_w:
            raise ValueError(
                f"LayerShape of layer {self.name!r}: the filter ({self.filter_h}x{self.filter_w}) "
                f"must fit in the ifmap ({self.ifmap_h}x{self.ifmap_w}); SCALE-Sim rejects it")

    def as_tuple(self):
        """Returns (ifmap_h, ifmap_w, filter_h, filter_w, channels, num_filters, stride)."""
        return (self.ifmap_h, self.ifmap_w, self.filter_h, self.filter_w, self.channels,
                self.num_filters, self.stride)
