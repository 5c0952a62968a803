"""Systolic-array cost estimator that reproduces SCALE-Sim 3.0.0 number for number.

EnergyNet's energy term (docs/design.md §1.3) needs, per layer, the MAC count and the accesses
to each memory level of a systolic-array accelerator. The paper took them from the
SCALE-Sim simulator; this module computes the same numbers analytically in TensorFlow.
SCALE-Sim 3.0.0 (PyPI `scalesim`) in its default CALC interface-bandwidth mode is the
reference: every count equals SCALE-Sim's, quirks included (docs/systolic.md lists them).

How SCALE-Sim works, and how each part is reproduced here:

* Mapping. A convolution is a GEMM: the ifmap operand matrix has one row per output
  pixel (Npix = Ho * Wo, with SCALE-Sim's Ho = ceil((H - R + s) / s)) and one column per
  window element (R * S * C, ordered (ky, kx, c)); the filter matrix is
  (R * S * C) x K. The dataflow picks which two GEMM dimensions map onto the array rows
  and columns (Sr, Sc) and which one streams in time (T): os (Npix, K, RSC),
  ws (RSC, K, Npix), is (RSC, Npix, K). The work is cut into ceil(Sr / rows) x
  ceil(Sc / cols) folds, column folds outermost. Each fold is a fixed number of
  "demand lines" (cycles): SCALE-Sim writes, per cycle, which operand addresses the array
  reads or writes, with skews and gaps; the counts below are closed forms of those
  matrices.
* SRAM counts are the sizes of the per-fold operand slices (padding included).
* DRAM reads come from SCALE-Sim's estimate-bandwidth read buffer. It groups the
  distinct addresses it sees into sets of floor(size / 100) words and, each time 50 sets
  are complete (an "epoch" of E = 50 * floor(size / 100) distinct addresses), fetches
  them and FORGETS them: an address seen in an earlier epoch is fetched again. DRAM reads
  are therefore the sum over epochs of the distinct addresses in each epoch. When the
  operand touches fewer than E distinct addresses this is just the touched count; the
  filter streams have a periodic structure that gives a closed form either way; the
  ifmap stream of a layer whose touched ifmap reaches E is replayed exactly, per layer
  (`_epoch_scan`).
* DRAM writes come from SCALE-Sim's write buffer, which drains half of the ofmap SRAM
  in lines of `cols` words whenever more than half is full. Without a drain during the
  run (ofmap traffic <= half the SRAM) the result is closed form; otherwise the drains
  are replayed per layer (`_ofmap_drains`), an event loop over drains, not over words.

All counts are int64 and exact. `estimate` runs the batched closed forms in one
`tf.function` (vectorised over layers, traced once per dataflow) and the exact replays
only for the layers that need them.
"""

import dataclasses
import functools
import math
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from energynet_tf.systolic.config import (
    COUNT_KEYS,
    AcceleratorConfig,
    EnergyCosts,
    LayerShape,
    UnsupportedLayerError,
    _ACTIVE_SETS,
    _CALC_READ_BANDWIDTH,
    _SETS_PER_BUFFER,
    _sram_words,
)



@dataclasses.dataclass(frozen=True)
class _Constants:
    """The integer constants of SCALE-Sim's memory model for one configuration."""

    rows: int
    cols: int
    dataflow: str
    ifmap_set: int      # Words per read-buffer set: floor(words / 100).
    filter_set: int
    ifmap_epoch: int    # Distinct addresses per prefetch epoch: 50 sets.
    filter_epoch: int
    ofmap_words: int    # Write buffer size in words.
    ofmap_half: int     # A drain starts when more than this many words wait.
    ofmap_drain_lines: int  # Lines of `cols` words per drain: ceil(half / cols).

    _FIELDS = ("rows", "cols", "ifmap_set", "filter_set", "ifmap_epoch", "filter_epoch",
               "ofmap_words", "ofmap_half", "ofmap_drain_lines")

    def as_tensor(self):
        """The integer constants as an int64 vector (a tf.function argument: no retracing)."""
        return tf.constant([getattr(self, name) for name in self._FIELDS], tf.int64)

    @classmethod
    def from_tensor(cls, values, dataflow):
        """Inside a tf.function: the constants as scalar tensors."""
        return cls(dataflow=dataflow, **{name: values[i] for i, name in enumerate(cls._FIELDS)})

    @classmethod
    def from_config(cls, config):
        ifmap_set = _sram_words(config.ifmap_sram_kb) // _SETS_PER_BUFFER
        filter_set = _sram_words(config.filter_sram_kb) // _SETS_PER_BUFFER
        ofmap_words = _sram_words(config.ofmap_sram_kb)
        # write_buffer.py: active = ceil(words * 0.5), drain buffer = words - active.
        ofmap_half = ofmap_words - int(math.ceil(ofmap_words * 0.5))
        return cls(rows=config.array_rows, cols=config.array_cols, dataflow=config.dataflow,
                   ifmap_set=ifmap_set, filter_set=filter_set,
                   ifmap_epoch=_ACTIVE_SETS * ifmap_set, filter_epoch=_ACTIVE_SETS * filter_set,
                   ofmap_words=ofmap_words, ofmap_half=ofmap_half,
                   ofmap_drain_lines=-(-ofmap_half // config.array_cols))


# ----------------------------------------------------------------------------------------
# Integer helpers (int64 tensors; tf.math.floordiv rounds toward -inf like Python).
# ----------------------------------------------------------------------------------------
_BIG = np.iinfo(np.int64).max // 4  # "No such element"; sums of two stay in range.


def _cdiv(a, b):
    return -((-a) // b)


def _tri(m):
    """m * (m + 1) / 2 for m > 0, else 0."""
    m = tf.maximum(m, 0)
    return m * (m + 1) // 2


def _tri_floor_inverse(x):
    """Largest w >= 0 with w * (w + 1) / 2 <= x (x >= 0), exactly."""
    xf = tf.cast(tf.maximum(x, 0), tf.float64)
    w = tf.cast(tf.floor((tf.sqrt(8.0 * xf + 1.0) - 1.0) / 2.0), tf.int64)
    # The float estimate can be off by one either way for huge x: correct it.
    w = tf.where(_tri(w) > x, w - 1, w)
    w = tf.where(_tri(w + 1) <= x, w + 1, w)
    return tf.maximum(w, 0)


def _skew_count(z, nrows, ncols):
    """Elements on the first z lines of a skewed nrows x ncols block.

    SCALE-Sim's skew puts element (row i, column c) of a block on line i + c, so the
    first z lines hold sum_c clamp(z - c, 0, nrows) elements.
    """
    return _tri(z) - _tri(z - ncols) - _tri(z - nrows) + _tri(z - nrows - ncols)


def _skew_line(u, nrows, ncols):
    """Line of the u-th element (0-based, line-major order) of a skewed block."""
    a = tf.minimum(nrows, ncols)
    b = tf.maximum(nrows, ncols)
    # Region 1, lines 0 .. a - 1: the count grows as a triangle.
    z1 = _tri_floor_inverse(u) + 1
    # Region 2, lines a .. b - 1: a elements per line.
    z2 = (2 * u + a * a - a) // (2 * tf.maximum(a, 1)) + 1
    # Region 3, the last lines: nrows * ncols minus a reversed triangle.
    z3 = a + b - 1 - _tri_floor_inverse(nrows * ncols - u - 1)
    z = tf.where(u < _tri(a), z1, tf.where(u < _skew_count(b, nrows, ncols), z2, z3))
    return z - 1


def _clamp_count(y, lo, hi, ncols):
    """#{c in [0, ncols): lo <= y - c < hi}: elements of a skewed block on line y."""
    first = tf.maximum(y - hi + 1, 0)
    last = tf.minimum(ncols - 1, y - lo)
    return tf.maximum(last - first + 1, 0)


# ----------------------------------------------------------------------------------------
# Layer geometry.
# ----------------------------------------------------------------------------------------
class _Geometry:
    """SCALE-Sim's derived quantities for a batch of layers (int64 tensors, shape [N])."""

    def __init__(self, params, k):
        params = tf.cast(params, tf.int64)
        h, w, r, s_, c, nf, st = [params[:, i] for i in range(7)]
        self.k = k
        self.h, self.w, self.r, self.s, self.c, self.nf, self.st = h, w, r, s_, c, nf, st
        # topology_utils.py: ofmap = int(math.ceil((H - R + stride) / stride)).
        self.ho = _cdiv(h - r + st, st)
        self.wo = _cdiv(w - s_ + st, st)
        self.npix = self.ho * self.wo
        self.window = r * s_ * c
        self.macs = self.npix * self.window * nf
        rows, cols = k.rows, k.cols
        if k.dataflow == "os":
            sr, sc, t = self.npix, nf, self.window
            self.lines_per_fold = t + rows + cols - 2
        elif k.dataflow == "ws":
            sr, sc, t = self.window, nf, self.npix
            self.lines_per_fold = t + 2 * rows + cols - 2
        else:
            sr, sc, t = self.window, self.npix, nf
            self.lines_per_fold = t + 2 * rows + cols - 2
        self.sr, self.sc, self.t = sr, sc, t
        self.row_folds = _cdiv(sr, rows)
        self.col_folds = _cdiv(sc, cols)
        self.rows_last = sr - (self.row_folds - 1) * rows
        self.cols_last = sc - (self.col_folds - 1) * cols
        self.rows_first = tf.minimum(sr, rows)
        self.num_folds = self.row_folds * self.col_folds
        self.total_lines = self.num_folds * self.lines_per_fold

    def rows_in_fold(self, fr):
        return tf.minimum(self.sr - fr * self.k.rows, self.k.rows)

    def cols_in_fold(self, fc):
        return tf.minimum(self.sc - fc * self.k.cols, self.k.cols)

    def window_fields(self, expand=False):
        """The fields the ifmap address needs; [N, 1] when `expand` (to broadcast)."""
        names = ("h", "w", "r", "s", "c", "st", "wo", "window")
        values = [getattr(self, n) for n in names]
        if expand:
            values = [v[:, None] for v in values]
        return _WindowFields(*values)

    def touched_ifmap(self):
        """Distinct ifmap words read: touched rows x touched columns x channels."""
        def touched(extent, k, out):
            last = extent - (out - 1) * self.st
            return (out - 1) * tf.minimum(k, self.st) + tf.minimum(tf.maximum(last, 0), k)
        return touched(self.h, self.r, self.ho) * touched(self.w, self.s, self.wo) * self.c


@dataclasses.dataclass(frozen=True)
class _WindowFields:
    """Layer fields that locate window element j of output pixel p in the ifmap.

    SCALE-Sim orders a window (ky, kx, c) and marks the parts of a window that hang off
    the ifmap (its ceil output size allows that) with address -1: no read.
    """

    h: "tf.Tensor"
    w: "tf.Tensor"
    r: "tf.Tensor"
    s: "tf.Tensor"
    c: "tf.Tensor"
    st: "tf.Tensor"
    wo: "tf.Tensor"
    window: "tf.Tensor"

    def extent(self, p):
        """(ky_max, kx_max) of pixel p: its largest valid filter row and column (may be < 0)."""
        oy, ox = p // self.wo, p % self.wo
        return (tf.minimum(self.r - 1, self.h - 1 - oy * self.st),
                tf.minimum(self.s - 1, self.w - 1 - ox * self.st))

    def split(self, j):
        ky, rem = j // (self.s * self.c), j % (self.s * self.c)
        return ky, rem // self.c, rem % self.c

    def address(self, p, j):
        """Ifmap word address of (pixel p, window element j), -1 where clipped."""
        oy, ox = p // self.wo, p % self.wo
        ky, kx, ch = self.split(j)
        y, x = oy * self.st + ky, ox * self.st + kx
        return tf.where((y < self.h) & (x < self.w), (y * self.w + x) * self.c + ch,
                        -tf.ones_like(p))

    def largest_valid_le(self, p, j):
        """Largest valid window element <= j of pixel p, or -1."""
        ky_max, kx_max = self.extent(p)
        ky, kx, _ = self.split(j)
        full = (ky_max * self.s + kx_max) * self.c + self.c - 1
        same_row = (ky * self.s + kx_max) * self.c + self.c - 1
        out = tf.where((ky <= ky_max) & (kx <= kx_max), j,
                       tf.where(ky > ky_max, full, same_row))
        return tf.where((ky_max < 0) | (kx_max < 0), -tf.ones_like(out), out)

    def smallest_valid_ge(self, p, j):
        """Smallest valid window element >= j of pixel p, or _BIG."""
        ky_max, kx_max = self.extent(p)
        ky, kx, _ = self.split(j)
        next_row = (ky + 1) * self.s * self.c
        out = tf.where((ky <= ky_max) & (kx <= kx_max), j,
                       tf.where(ky < ky_max, next_row, _BIG + 0 * j))
        return tf.where((ky_max < 0) | (kx_max < 0) | (j >= self.window), _BIG + 0 * out, out)


# ----------------------------------------------------------------------------------------
# Read-buffer (DRAM read) model.
# ----------------------------------------------------------------------------------------
def _prefetch_start(first_line, distinct, triggered, set_words):
    """Report cycle of the first DRAM read (read_buffer_estimate_bw.py).

    If an epoch completes, the first prefetch (50 sets at 10 words per cycle) ends the
    cycle before the first request. Otherwise complete_all_prefetches() fetches the
    ceil(D / set) sets, whole, ending at cycle -1.
    """
    sets = _cdiv(distinct, set_words)
    never = -_cdiv(sets * set_words, _CALC_READ_BANDWIDTH)
    first = first_line - _cdiv(_ACTIVE_SETS * set_words, _CALC_READ_BANDWIDTH)
    return tf.where(triggered, first, never)


def _os_filter_epochs(g, epoch):
    """Filter epochs for os: column fold fc reads block F(fc) (T x cols) once per row fold.

    Blocks of different column folds are disjoint and a block repeats in the same order,
    so the epoch state evolves per column fold in closed form; the loop runs over column
    folds (vectorised over layers). Returns (DRAM reads, stream index of the last epoch
    end or -1).
    """
    row_fold_count = g.row_folds
    full_block = g.t * g.k.cols

    def body(fc, count, reads, last):
        active = fc < g.col_folds
        block = g.t * g.cols_in_fold(fc)
        base = fc * row_fold_count * full_block
        # Block >= epoch: any E consecutive words are distinct, so every read is a fetch.
        ntrig = (count + row_fold_count * block) // epoch
        big_last = tf.where(ntrig > 0, base + ntrig * epoch - count - 1, last)
        big_count = count + row_fold_count * block - ntrig * epoch
        big_reads = reads + row_fold_count * block
        # Block < epoch: the block is fetched once; if an epoch ends inside it (after its
        # first a words), the next epoch fetches the rest and, at the next row fold, those
        # a words again.
        fits = count + block < epoch
        a = epoch - count
        again = row_fold_count >= 2
        small_last = tf.where(fits, last, base + a - 1)
        small_count = tf.where(fits, count + block, tf.where(again, block, block - a))
        small_reads = reads + block + tf.where(fits | ~again, tf.zeros_like(a), a)
        big = block >= epoch
        return (fc + 1,
                tf.where(active, tf.where(big, big_count, small_count), count),
                tf.where(active, tf.where(big, big_reads, small_reads), reads),
                tf.where(active, tf.where(big, big_last, small_last), last))

    zeros = tf.zeros_like(g.t)
    max_cf = tf.reduce_max(g.col_folds)
    _, _, reads, last = tf.while_loop(
        lambda fc, *_: fc < max_cf, body,
        (tf.constant(0, tf.int64), zeros, zeros, zeros - 1))
    return reads, last


def _filter_dram(g, k):
    """Filter DRAM reads and first/last DRAM cycles, in closed form for all dataflows."""
    epoch = k.filter_epoch
    rows, lf = k.rows, g.lines_per_fold
    total = g.window * g.nf  # Distinct filter words.
    minus_one = -tf.ones_like(total)
    if k.dataflow == "os":
        reads, last = _os_filter_epochs(g, epoch)
        x = tf.maximum(last, 0)
        chunk = g.row_folds * g.t * k.cols
        fc = x // chunk
        v = x - fc * chunk
        cu = g.cols_in_fold(fc)
        fr = v // (g.t * cu)
        last_line = (fc * g.row_folds + fr) * lf + _skew_line(v % (g.t * cu), g.t, cu)
        first_line = tf.zeros_like(total)
    elif k.dataflow == "ws":
        # Every filter word is read exactly once: an epoch ends every E words.
        reads = total
        last = tf.where(total >= epoch, (total // epoch) * epoch - 1, minus_one)
        x = tf.maximum(last, 0)
        chunk = g.window * k.cols
        fc = x // chunk
        v = x - fc * chunk
        cu = g.cols_in_fold(fc)
        fr = v // (rows * cu)
        u = v - fr * rows * cu
        # Weights are loaded in reverse: the fold's ru rows sit on its lines rows - ru ...
        last_line = (fc * g.row_folds + fr) * lf + rows - g.rows_in_fold(fr) + u // cu
        first_line = rows - g.rows_first
    else:
        # The whole filter is swept once per column fold: as soon as it exceeds an epoch,
        # every read is a fetch.
        stream = g.col_folds * total
        wraps = total >= epoch
        reads = tf.where(wraps, stream, total)
        last = tf.where(wraps, (stream // epoch) * epoch - 1, minus_one)
        x = tf.maximum(last, 0)
        rep = x // total
        v = x - rep * total
        fr = v // (rows * g.nf)
        u = v - fr * rows * g.nf
        last_line = ((rep * g.row_folds + fr) * lf + rows +
                     _skew_line(u, g.nf, g.rows_in_fold(fr)))
        first_line = rows + tf.zeros_like(total)
    triggered = last >= 0
    start = _prefetch_start(first_line, total, triggered, k.filter_set)
    stop = tf.where(triggered, last_line + 1, minus_one)
    return reads, start, stop


# ----------------------------------------------------------------------------------------
# First and last demand lines of each SRAM trace.
# ----------------------------------------------------------------------------------------
def _ifmap_sram_lines(g, k):
    """First and last demand line holding a valid (not clipped) ifmap address."""
    rows, cols, lf = k.rows, k.cols, g.lines_per_fold
    f = g.window_fields(expand=True)
    # Only pixels up to p_star (the last with a valid top-left corner) read anything.
    p_star = (tf.minimum(g.ho - 1, (g.h - 1) // g.st) * g.wo +
              tf.minimum(g.wo - 1, (g.w - 1) // g.st))
    if k.dataflow == "os":
        # Fold (fc, fr) reads pixels fr*rows + r, element j on line j + r; the last fold
        # with a valid read is the one holding p_star.
        fr = p_star // rows
        r = tf.range(rows, dtype=tf.int64)[None, :]
        p = fr[:, None] * rows + r
        jmax = f.largest_valid_le(p, f.window - 1)
        t = tf.where((p <= p_star[:, None]) & (jmax >= 0), jmax + r, -tf.ones_like(jmax))
        last = ((g.col_folds - 1) * g.row_folds + fr) * lf + tf.reduce_max(t, axis=1)
        first = tf.zeros_like(g.t)
    elif k.dataflow == "ws":
        # The last fold reads every pixel p for window block [j0, j0 + ru), element on line
        # rows + p + (j - j0). Only the last output row / column can be clipped, so the
        # largest pixel of each of the four clipping classes is enough.
        j0 = (g.row_folds - 1) * rows
        jl = j0 + g.rows_last - 1
        ho, wo = g.ho[:, None], g.wo[:, None]
        cand = tf.concat([(ho - 1) * wo + wo - 1, (ho - 1) * wo + wo - 2,
                          (ho - 2) * wo + wo - 1, (ho - 2) * wo + wo - 2], axis=1)
        exists = tf.concat([ho >= 1, wo >= 2, ho >= 2, (ho >= 2) & (wo >= 2)], axis=1)
        cand = tf.maximum(cand, 0)
        jv = f.largest_valid_le(cand, jl[:, None])
        val = tf.where(exists & (jv >= j0[:, None]), cand + jv - j0[:, None],
                       -tf.ones_like(jv))
        last = (g.num_folds - 1) * lf + rows + tf.reduce_max(val, axis=1)
        first = rows + tf.zeros_like(g.t)
    else:
        # Fold (fc, fr): line i reads window element fr*rows + rows - 1 - i of pixels
        # fc*cols + c. The last fold with a valid read: the pixel block of p_star, the last
        # window block any of its pixels reads.
        fc = p_star // cols
        c = tf.range(cols, dtype=tf.int64)[None, :]
        p = fc[:, None] * cols + c
        ok = p <= p_star[:, None]
        jmax = tf.where(ok, f.largest_valid_le(p, f.window - 1), -tf.ones_like(p))
        fr = tf.reduce_max(jmax, axis=1) // rows
        j0 = fr * rows
        jmin = tf.where(ok, f.smallest_valid_ge(p, j0[:, None]), _BIG + tf.zeros_like(p))
        jmin = tf.reduce_min(jmin, axis=1)
        last = (fc * g.row_folds + fr) * lf + rows - 1 - (jmin - j0)
        first = rows - g.rows_first
    return first, last


def _filter_sram_lines(g, k):
    rows, lf = k.rows, g.lines_per_fold
    last_fold = (g.num_folds - 1) * lf
    zeros = tf.zeros_like(g.t)
    if k.dataflow == "os":
        return zeros, last_fold + g.t - 1 + g.cols_last - 1
    if k.dataflow == "ws":
        return rows - g.rows_first, last_fold + rows - 1
    return rows + zeros, last_fold + rows + g.nf - 1 + g.rows_last - 1


def _ofmap_sram_lines(g, k):
    rows, lf = k.rows, g.lines_per_fold
    last_fold = (g.num_folds - 1) * lf
    if k.dataflow == "os":
        return (g.t - 1 + rows - g.rows_first,
                last_fold + g.t - 1 + rows - 1 + g.cols_last - 1)
    # ws and is: 2 * rows - 1 lines of prefix, then a skewed T x cols block.
    return (2 * rows - 1 + tf.zeros_like(g.t),
            last_fold + 2 * rows - 1 + g.t - 1 + g.cols_last - 1)


# ----------------------------------------------------------------------------------------
# The batched closed forms.
# ----------------------------------------------------------------------------------------
def _closed_forms(params, k):
    """All counts that have closed forms, plus flags for the layers needing a replay."""
    g = _Geometry(params, k)
    rows, cols = k.rows, k.cols
    out = {"macs": g.macs, "num_folds": g.num_folds}
    if k.dataflow == "os":
        out["sram_ifmap_reads"] = g.col_folds * g.npix * g.window
        out["sram_filter_reads"] = g.row_folds * g.window * g.nf
        # systolic_compute_os.py adds the padded fold's rows + cols to the ofmap writes of
        # every fold (it sums a shape): reproduced, not fixed.
        out["sram_ofmap_writes"] = g.npix * g.nf + g.num_folds * (rows + cols)
        ofmap_stream = g.npix * g.nf
    elif k.dataflow == "ws":
        out["sram_ifmap_reads"] = g.col_folds * g.npix * g.window
        out["sram_filter_reads"] = g.window * g.nf
        out["sram_ofmap_writes"] = g.row_folds * g.npix * g.nf
        ofmap_stream = out["sram_ofmap_writes"]
    else:
        out["sram_ifmap_reads"] = g.npix * g.window
        out["sram_filter_reads"] = g.col_folds * g.window * g.nf
        out["sram_ofmap_writes"] = g.row_folds * g.npix * g.nf
        ofmap_stream = out["sram_ofmap_writes"]

    # The memory system serves one demand line per cycle; the run ends on the last line.
    last_line = g.total_lines - 1
    out["compute_cycles"] = last_line
    out["stall_cycles"] = tf.zeros_like(last_line)

    first, last = _ifmap_sram_lines(g, k)
    out["sram_ifmap_start_cycle"], out["sram_ifmap_stop_cycle"] = first + 1, last + 1
    first_f, last_f = _filter_sram_lines(g, k)
    # Read traces log the cycle a request is served: one cycle of SRAM latency.
    out["sram_filter_start_cycle"], out["sram_filter_stop_cycle"] = first_f + 1, last_f + 1
    out["sram_ofmap_start_cycle"], out["sram_ofmap_stop_cycle"] = _ofmap_sram_lines(g, k)

    # Ifmap DRAM: the touched words, unless they fill an epoch (then replayed).
    touched = g.touched_ifmap()
    out["ifmap_replay"] = touched >= k.ifmap_epoch
    out["ifmap_first_line"] = first
    out["dram_ifmap_reads"] = touched
    out["dram_ifmap_start_cycle"] = _prefetch_start(first, touched, out["ifmap_replay"],
                                                    k.ifmap_set)
    out["dram_ifmap_stop_cycle"] = -tf.ones_like(touched)
    # Filter DRAM: closed form in every case.
    (out["dram_filter_reads"], out["dram_filter_start_cycle"],
     out["dram_filter_stop_cycle"]) = _filter_dram(g, k)
    # Ofmap DRAM: without a drain during the run, everything drains at the end, one line
    # of `cols` words per cycle from the last cycle on; otherwise replayed.
    out["ofmap_replay"] = ofmap_stream > k.ofmap_half
    out["dram_ofmap_writes"] = ofmap_stream
    out["dram_ofmap_start_cycle"] = last_line
    out["dram_ofmap_stop_cycle"] = last_line + _cdiv(ofmap_stream, cols) - 1
    return out


def _constants_spec():
    return tf.TensorSpec([len(_Constants._FIELDS)], tf.int64)


@functools.lru_cache(maxsize=None)
def _closed_form_fn(dataflow):
    """The batched closed forms for one dataflow, as a tf.function (cached)."""
    @tf.function(input_signature=[tf.TensorSpec([None, 7], tf.int64), _constants_spec()],
                 autograph=False)
    def fn(params, constants):
        return _closed_forms(params, _Constants.from_tensor(constants, dataflow))
    return fn


# ----------------------------------------------------------------------------------------
# Exact replays, per layer, for the layers that need them.
# ----------------------------------------------------------------------------------------
def _ifmap_stream(g, k):
    """The ifmap read stream of one layer, in SCALE-Sim's order, without null requests.

    Returns (addresses, demand lines, lines per repetition, repetitions). For os and ws
    the folds of one column fold do not depend on it and repeat col_folds times: one
    repetition is materialised.
    """
    rows, cols = k.rows, k.cols
    lf = g.lines_per_fold[0]
    row_fold_count, cf = g.row_folds[0], g.col_folds[0]
    window, npix = g.window[0], g.npix[0]
    rng = lambda n: tf.range(n, dtype=tf.int64)
    if k.dataflow == "os":
        # Fold fr: element j of pixel fr*rows + r on line j + r, ordered by (line, r).
        fr, t, r = rng(row_fold_count)[:, None, None], rng(window + rows - 1)[None, :, None], rng(rows)
        p, j, line = fr * rows + r, t - r, fr * lf + t + 0 * r
        mask = (j >= 0) & (j < window) & (p < npix)
        reps, lines_per_rep = cf, row_fold_count * lf
    elif k.dataflow == "ws":
        # Fold fr: element (pixel p, column c), window j = fr*rows + c, on line rows + p + c.
        fr, t, c = rng(row_fold_count)[:, None, None], rng(npix + rows - 1)[None, :, None], rng(rows)
        p, j, line = t - c, fr * rows + c, fr * lf + rows + t + 0 * c
        mask = (p >= 0) & (p < npix) & (j < window)
        reps, lines_per_rep = cf, row_fold_count * lf
    else:
        # Fold (fc, fr): line i reads window j = fr*rows + rows - 1 - i of pixels fc*cols + c.
        fc, fr = rng(cf)[:, None, None, None], rng(row_fold_count)[None, :, None, None]
        i, c = rng(rows)[:, None], rng(cols)
        p, j, line = fc * cols + c, fr * rows + rows - 1 - i, (fc * row_fold_count + fr) * lf + i + 0 * c
        mask = (j < window) & (p < npix)
        reps, lines_per_rep = tf.constant(1, tf.int64), cf * row_fold_count * lf
    idx = tf.where(mask)  # Positions of the requests, in stream order.
    p, j, line = [tf.gather_nd(tf.broadcast_to(x, tf.shape(mask, out_type=tf.int64)), idx)
                  for x in (p, j, line)]
    # Addresses from small per-pixel and per-window-element tables: no divisions over the
    # (large) stream. Clipped window elements (address -1) are not requests.
    f = g.window_fields()
    f = _WindowFields(*[getattr(f, fl.name)[0] for fl in dataclasses.fields(f)])
    pix = rng(npix)
    oy, ox = pix // f.wo, pix % f.wo
    ky_max, kx_max = f.extent(pix)
    ky, kx, ch = f.split(rng(window))
    base = (oy * f.st * f.w + ox * f.st) * f.c
    offset = (ky * f.w + kx) * f.c + ch
    keep = ((tf.gather(ky, j) <= tf.gather(ky_max, p)) &
            (tf.gather(kx, j) <= tf.gather(kx_max, p)))
    addr = tf.gather(base, p) + tf.gather(offset, j)
    return tf.boolean_mask(addr, keep), tf.boolean_mask(line, keep), lines_per_rep, reps


def _epoch_scan(addr, line, lines_per_rep, reps, epoch, num_addresses, distinct, all_new):
    """Replays the read buffer's epochs over an address stream repeated `reps` times.

    An epoch ends on the E-th address not yet seen in it, and the next epoch starts from
    scratch. Each epoch end is found over a window of the stream: the first occurrence
    of every address in the window (a segment minimum over the address space) marks the
    new addresses, a cumulative sum finds the E-th. The window starts at the previous
    epoch's length and doubles until it holds E new addresses.

    Args:
      addr: int64 [n] addresses of one repetition, in request order.
      line: int64 [n] demand line of each address within its repetition.
      lines_per_rep: demand lines per repetition.
      reps: repetitions.
      epoch: E, distinct addresses per epoch.
      num_addresses: an upper bound of the addresses, plus one.
      distinct: the number of distinct addresses (sizes the first window).
      all_new: True if no address repeats within any E consecutive requests (windows that
        do not overlap): then every request is a fetch and epochs end every E requests.

    Returns:
      (DRAM reads, demand line of the last epoch end or -1).
    """
    n_rep = tf.size(addr, out_type=tf.int64)
    total = n_rep * reps
    zero = tf.constant(0, tf.int64)
    addr32 = tf.cast(addr, tf.int32)  # The caller checks that addresses fit.
    num_addresses = tf.cast(num_addresses, tf.int32)
    epoch32 = tf.cast(epoch, tf.int32)

    def window_at(q, width):
        """Requests q .. q + width - 1 of the repeated stream (width <= one repetition)."""
        s = q % n_rep
        head = tf.minimum(width, n_rep - s)
        return tf.concat([addr32[s:s + head], addr32[:width - head]], axis=0)

    def find_epoch_end(q, width):
        def cond(width, found, done, end, distinct):
            return ~found & ~done

        def body(width, found, done, end, distinct):
            # A window of one whole repetition holds every address: an epoch ends within it
            # (the replay only runs when the ifmap has at least E distinct addresses).
            width = tf.minimum(tf.minimum(width, total - q), n_rep)
            window = window_at(q, width)
            pos = tf.range(tf.cast(width, tf.int32))
            # The first occurrence of each address in the window is new to the epoch.
            first = tf.math.unsorted_segment_min(pos, window, num_addresses)
            count = tf.cumsum(tf.cast(tf.gather(first, window) == pos, tf.int32))
            distinct = tf.cast(count[-1], tf.int64)
            found = distinct >= epoch
            # count is non-decreasing: the E-th new request is after the entries below E.
            end = q + tf.reduce_sum(tf.cast(count < epoch32, tf.int64))
            # (width == n_rep without an epoch end cannot happen; it only guards the loop.)
            done = (q + width >= total) | (width >= n_rep)
            return 2 * width, found, done, end, distinct

        _, found, _, end, distinct = tf.while_loop(
            cond, body, (width, tf.constant(False), tf.constant(False), zero, zero))
        return found, end, distinct

    def body(q, reads, last, width):
        found, end, distinct = find_epoch_end(q, width)
        next_width = tf.maximum(epoch, (end + 1 - q) * 5 // 4)
        return (tf.where(found, end + 1, total), reads + tf.where(found, epoch, distinct),
                tf.where(found, end, last), next_width)

    def replay():
        # First window: E times the average reuse of an address, plus a quarter.
        reuse = n_rep // tf.maximum(distinct, 1)
        width = tf.maximum(epoch, epoch * tf.maximum(reuse, 1) * 5 // 4)
        _, reads, last, _ = tf.while_loop(lambda q, *_: q < total, body,
                                          (zero, zero, tf.constant(-1, tf.int64), width))
        return reads, last

    def closed_form():
        return total, tf.where(total >= epoch, (total // epoch) * epoch - 1,
                               tf.constant(-1, tf.int64))

    reads, last = tf.cond(all_new, closed_form, replay)
    safe = tf.maximum(last, 0)
    last_line = tf.where(last >= 0,
                         (safe // n_rep) * lines_per_rep + tf.gather(line, safe % n_rep),
                         tf.constant(-1, tf.int64))
    return reads, last_line


@functools.lru_cache(maxsize=None)
def _ifmap_epochs_fn(dataflow):
    """Per-layer exact ifmap DRAM replay for one dataflow (tf.function, cached)."""
    @tf.function(input_signature=[tf.TensorSpec([7], tf.int64), _constants_spec()],
                 autograph=False)
    def fn(params, constants):
        k = _Constants.from_tensor(constants, dataflow)
        g = _Geometry(params[None, :], k)
        addr, line, lines_per_rep, reps = _ifmap_stream(g, k)
        # Windows that do not overlap read each address once per repetition.
        all_new = (g.r[0] <= g.st[0]) & (g.s[0] <= g.st[0])
        return _epoch_scan(addr, line, lines_per_rep, reps, k.ifmap_epoch,
                           g.h[0] * g.w[0] * g.c[0], g.touched_ifmap()[0], all_new)
    return fn


def _ofmap_line_counts(g, k):
    """Ofmap words written on each demand line of one layer (int64 [total_lines])."""
    rows, cols = k.rows, k.cols
    row_fold_count, cf = g.row_folds[0], g.col_folds[0]
    fc = tf.repeat(tf.range(cf, dtype=tf.int64), tf.cast(row_fold_count, tf.int32))
    fr = tf.tile(tf.range(row_fold_count, dtype=tf.int64), tf.cast(cf[None], tf.int32))
    y = tf.range(g.lines_per_fold[0], dtype=tf.int64)[None, :]
    cu = tf.minimum(g.sc[0] - fc * cols, cols)[:, None]
    if k.dataflow == "os":
        # Prefix of T - 1 lines, then the fold's rows, flipped (valid rows at the bottom).
        ru = tf.minimum(g.sr[0] - fr * rows, rows)[:, None]
        counts = _clamp_count(y - (g.t[0] - 1), rows - ru, rows + 0 * ru, cu)
    else:
        counts = _clamp_count(y - (2 * rows - 1), 0 * cu, g.t[0] + 0 * cu, cu)
    return tf.reshape(counts, [-1])


def _ofmap_drains(line_counts, words, half, drain_lines, width, slots=8):
    """Replays SCALE-Sim's write buffer (write_buffer.py), one loop iteration per drain.

    Words are appended to lines of `width` words. When more than `half` words wait and no
    drain is in flight, the open line is closed (even if partial) and up to `drain_lines`
    lines are drained, one per cycle; the drain ends on its last cycle. A drained chunk
    counts lines * width words minus the empty slots of its LAST line only: a partial
    line drained inside a chunk counts as full and also frees that many words (SCALE-Sim's
    bookkeeping, reproduced). At the end everything left drains from the last cycle on.

    Returns:
      (DRAM writes, first drain cycle, last drain cycle, unsupported): `unsupported` flags
      a write-buffer stall (a full buffer during a drain) or more than `slots` partial
      lines waiting, neither of which this replay models.
    """
    cum = tf.cumsum(line_counts)
    n = cum[-1]
    total_lines = tf.size(line_counts, out_type=tf.int64)
    big = tf.constant(_BIG, tf.int64)

    def words_before(line):
        # Drains can run past the last demand line: clamp into the table.
        idx = tf.minimum(tf.maximum(line - 1, 0), total_lines - 1)
        return tf.where(line >= 1, tf.gather(cum, idx), 0 * line)

    def close_line(m, nlines, pidx, ppad):
        """Closes a segment of m words: its full lines and, if any, one partial line."""
        full, rem = m // width, m % width
        slot = tf.one_hot(tf.argmax(tf.cast(pidx == big, tf.int32), output_type=tf.int32),
                          slots, on_value=True, off_value=False)
        add = rem > 0
        overflow = add & ~tf.reduce_any(pidx == big)
        pidx = tf.where(slot & add, nlines + full, pidx)
        ppad = tf.where(slot & add, width - rem, ppad)
        return nlines + full + tf.cast(add, tf.int64), pidx, ppad, overflow

    def pad_of(idx, pidx, ppad):
        return tf.reduce_sum(tf.where(pidx == idx, ppad, 0 * ppad))

    # used = words - free space: it can go below 0 through the bookkeeping above.
    def body(e, used, drain_end, ptr, nlines, seg, pidx, ppad, writes, first, stop, bad):
        pending = tf.maximum(words_before(drain_end) - e, 0)  # Words while a drain runs.
        stalled = (pending > 0) & (used + pending >= words)
        # The next drain starts on the first word, once the drain in flight is over, that
        # leaves more than `half` words waiting.
        trig = tf.maximum(e + pending, e + half - used)
        happens = (trig < n) & ~stalled
        cycle = tf.searchsorted(cum, tf.reshape(trig, [1]), side="right",
                                out_type=tf.int64)[0]
        nlines2, pidx2, ppad2, overflow = close_line(trig - seg + 1, nlines, pidx, ppad)
        nl = tf.minimum(drain_lines, nlines2 - ptr)
        data = nl * width - pad_of(ptr + nl - 1, pidx2, ppad2)
        ptr2 = ptr + nl
        pidx2 = tf.where(pidx2 < ptr2, big, pidx2)
        ppad2 = tf.where(pidx2 == big, 0 * ppad2, ppad2)
        pick = lambda a, b: tf.where(happens, a, b)
        return (pick(trig + 1, n), pick(used + trig - e + 1 - data, used + n - e),
                pick(cycle + nl - 1, drain_end), pick(ptr2, ptr), pick(nlines2, nlines),
                pick(trig + 1, seg), pick(pidx2, pidx), pick(ppad2, ppad),
                pick(writes + data, writes), pick(tf.minimum(first, cycle), first),
                pick(tf.maximum(stop, cycle + nl - 1), stop),
                bad | stalled | (happens & overflow))

    zero = tf.constant(0, tf.int64)
    init = (zero, zero, zero, zero, zero, zero, tf.fill([slots], big),
            tf.zeros([slots], tf.int64), zero, big, -big, tf.constant(False))
    (_, _, _, ptr, nlines, seg, pidx, ppad, writes, first, stop, bad) = tf.while_loop(
        lambda e, *state: (e < n) & ~state[-1], body, init)
    # End of the layer (empty_all_buffers): close the open line, drain what is left in
    # chunks of drain_lines lines, one line per cycle from the last cycle on.
    nlines, pidx, ppad, overflow = close_line(n - seg, nlines, pidx, ppad)
    left = nlines - ptr
    chunk_last = ((pidx - ptr + 1) % drain_lines == 0) | (pidx == nlines - 1)
    writes += left * width - tf.reduce_sum(tf.where((pidx != big) & chunk_last, ppad,
                                                    0 * ppad))
    end_cycle = total_lines - 1
    first = tf.where(left > 0, tf.minimum(first, end_cycle), first)
    stop = tf.where(left > 0, tf.maximum(stop, end_cycle + left - 1), stop)
    return writes, first, stop, bad | overflow


@functools.lru_cache(maxsize=None)
def _ofmap_drains_fn(dataflow):
    """Per-layer exact ofmap DRAM replay for one dataflow (tf.function, cached)."""
    @tf.function(input_signature=[tf.TensorSpec([7], tf.int64), _constants_spec()],
                 autograph=False)
    def fn(params, constants):
        k = _Constants.from_tensor(constants, dataflow)
        g = _Geometry(params[None, :], k)
        return _ofmap_drains(_ofmap_line_counts(g, k), k.ofmap_words, k.ofmap_half,
                             k.ofmap_drain_lines, k.cols)
    return fn


# ----------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------
def _layer_params(layers):
    if isinstance(layers, LayerShape) or not isinstance(layers, Sequence):
        raise ValueError("Argument `layers` must be a sequence of LayerShape; received: "
                         f"{type(layers).__name__}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, LayerShape):
            raise ValueError(f"Argument `layers` must hold LayerShape objects; element {i} is "
                             f"{layer!r}")
    return np.array([layer.as_tuple() for layer in layers], dtype=np.int64).reshape(-1, 7)


def estimate_counts(layers: Sequence[LayerShape],
                    config: AcceleratorConfig = AcceleratorConfig()) -> Dict[str, np.ndarray]:
    """Returns SCALE-Sim 3.0.0's per-layer counts (int64 arrays keyed by `COUNT_KEYS`).

    Args:
      layers: the layers, as SCALE-Sim topology rows.
      config: the accelerator.

    Returns:
      A dict of int64 numpy arrays of shape [len(layers)], keys `COUNT_KEYS`.

    Raises:
      ValueError: if an argument has the wrong type.
      UnsupportedLayerError: if SCALE-Sim's write buffer would stall (not seen in
        SCALE-Sim's CALC mode: the replay checks it rather than assume it), or an ifmap
        has 2**31 words or more.
    """
    if not isinstance(config, AcceleratorConfig):
        raise ValueError(f"Argument `config` must be an AcceleratorConfig; received: {config!r}")
    params = _layer_params(layers)
    if params.shape[0] == 0:
        return {key: np.zeros([0], np.int64) for key in COUNT_KEYS}
    k = _Constants.from_config(config)
    constants = k.as_tensor()
    # Networks repeat layer shapes: estimate each distinct shape once.
    params, inverse = np.unique(params, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    layers = [layers[i] for i in np.unique(inverse, return_index=True)[1]]
    out = _closed_form_fn(k.dataflow)(tf.constant(params), constants)
    out = {key: value.numpy() for key, value in out.items()}
    for i in np.flatnonzero(out["ifmap_replay"]):
        if params[i, 0] * params[i, 1] * params[i, 4] >= 2**31:
            raise UnsupportedLayerError(f"layer {layers[i].name!r}: ifmaps of 2**31 words or more "
                                      "are not supported by the ifmap DRAM replay")
        reads, last_line = _ifmap_epochs_fn(k.dataflow)(tf.constant(params[i]), constants)
        out["dram_ifmap_reads"][i] = reads.numpy()
        out["dram_ifmap_stop_cycle"][i] = last_line.numpy() + 1
    for i in np.flatnonzero(out["ofmap_replay"]):
        writes, first, stop, unsupported = _ofmap_drains_fn(k.dataflow)(tf.constant(params[i]),
                                                                        constants)
        if bool(unsupported.numpy()):
            raise UnsupportedLayerError(
                f"SCALE-Sim's write buffer would stall on layer {layers[i].name!r} with {config}; "
                "this estimator does not model write-buffer stalls")
        out["dram_ofmap_writes"][i] = writes.numpy()
        out["dram_ofmap_start_cycle"][i] = first.numpy()
        out["dram_ofmap_stop_cycle"][i] = stop.numpy()
    # SCALE-Sim's 'Total Cycles (incl. prefetch)': last DRAM write - first DRAM read.
    out["total_cycles_incl_prefetch"] = out["dram_ofmap_stop_cycle"] - np.minimum(
        out["dram_ifmap_start_cycle"], out["dram_filter_start_cycle"])
    return {key: np.asarray(out[key], np.int64)[inverse] for key in COUNT_KEYS}


def energy_terms(counts: Dict[str, np.ndarray],
                 costs: EnergyCosts = EnergyCosts()) -> Dict[str, np.ndarray]:
    """Returns the docs/design.md §1.3 energy terms (float64 arrays) for counts from `estimate_counts`.

    Layer energy = e_MAC * MACs + e_RF * (rf_accesses_per_mac * MACs)
    + e_SRAM * (SRAM reads + writes) + e_DRAM * (DRAM reads + writes).
    """
    if not isinstance(costs, EnergyCosts):
        raise ValueError(f"Argument `costs` must be an EnergyCosts; received: {costs!r}")
    macs = np.asarray(counts["macs"], np.float64)
    sram = np.asarray(counts["sram_ifmap_reads"] + counts["sram_filter_reads"] +
                      counts["sram_ofmap_writes"], np.float64)
    dram = np.asarray(counts["dram_ifmap_reads"] + counts["dram_filter_reads"] +
                      counts["dram_ofmap_writes"], np.float64)
    out = {
        "energy_mac": costs.mac * macs,
        "energy_rf": costs.rf * costs.rf_accesses_per_mac * macs,
        "energy_sram": costs.sram * sram,
        "energy_dram": costs.dram * dram,
    }
    out["energy"] = out["energy_mac"] + out["energy_rf"] + out["energy_sram"] + out["energy_dram"]
    return out


def estimate(layers: Sequence[LayerShape], config: AcceleratorConfig = AcceleratorConfig(),
             costs: EnergyCosts = EnergyCosts()) -> Dict[str, np.ndarray]:
    """Per-layer SCALE-Sim 3.0.0 counts and docs/design.md §1.3 energy terms.

    Args:
      layers: the layers, as SCALE-Sim topology rows (see `topology.model_topology`).
      config: the accelerator (default: 32x32 output stationary, 64 kB SRAMs).
      costs: the normalised energy costs.

    Returns:
      A dict of numpy arrays of shape [len(layers)]: the int64 counts of `COUNT_KEYS`
      (macs, compute_cycles, sram_ifmap_reads, sram_filter_reads, sram_ofmap_writes,
      dram_ifmap_reads, dram_filter_reads, dram_ofmap_writes, SCALE-Sim's start/stop
      cycles, ...) and the float64 `ENERGY_KEYS` (energy_mac, energy_rf, energy_sram,
      energy_dram and their sum, energy).

    Raises:
      ValueError: if an argument has the wrong type.
    """
    counts = estimate_counts(layers, config)
    counts.update(energy_terms(counts, costs))
    return counts
