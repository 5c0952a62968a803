"""Reading and writing SCALE-Sim 3.0.0's files: .cfg, topology CSV and reports.

The readers accept what SCALE-Sim 3.0.0 accepts for a CALC-mode convolution run and
reject, with a `ScaleSimFormatError` naming the file, line and value, what it would
crash on, silently misread, or run in a mode the estimator does not reproduce. The
writers produce SCALE-Sim's report files byte for byte (header lines, column order,
number formatting, including its floating-point averages) from
`systolic.estimate_counts` results.

"""

import dataclasses
import os
from typing import Dict, List, Sequence

from energynet_tf import systolic

# The sections and keys SCALE-Sim's scale_config.read_conf_file() reads (lower case, as
# configparser stores them).
_REQUIRED = {
    "general": ("run_name",),
    "architecture_presets": ("arrayheight", "arraywidth", "ifmapsramszkb", "filtersramszkb",
                             "ofmapsramszkb", "ifmapoffset", "filteroffset", "ofmapoffset",
                             "dataflow", "readrequestbuffer", "writerequestbuffer"),
    "layout": ("ifmapcustomlayout", "filtercustomlayout", "ifmapsrambankbandwidth",
               "ifmapsrambanknum", "ifmapsrambankport", "filtersrambankbandwidth",
               "filtersrambanknum", "filtersrambankport"),
    "sparsity": ("sparsitysupport",),
    "run_presets": ("interfacebandwidth", "useramulatortrace"),
}
_POSITIVE_INTS = ("arrayheight", "arraywidth", "ifmapsramszkb", "filtersramszkb",
                  "ofmapsramszkb", "readrequestbuffer", "writerequestbuffer",
                  "ifmapsrambankbandwidth", "ifmapsrambanknum", "ifmapsrambankport",
                  "filtersrambankbandwidth", "filtersrambanknum", "filtersrambankport")
_OFFSETS = ("ifmapoffset", "filteroffset", "ofmapoffset")
# configparser.RawConfigParser.BOOLEAN_STATES.
_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True,
             "0": False, "no": False, "false": False, "off": False}

TOPOLOGY_FIELDS = ("IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width",
                   "Channels", "Num Filter", "Strides")

COMPUTE_REPORT_HEADER = (
    "LayerID, Total Cycles (incl. prefetch), Total Cycles, Stall Cycles, Overall Util %, "
    "Mapping Efficiency %, Compute Util %,\n")
BANDWIDTH_REPORT_HEADER = (
    "LayerID, Avg IFMAP SRAM BW, Avg FILTER SRAM BW, Avg OFMAP SRAM BW, "
    "Avg IFMAP DRAM BW, Avg FILTER DRAM BW, Avg OFMAP DRAM BW,\n")
DETAILED_REPORT_HEADER = (
    "LayerID, "
    "SRAM IFMAP Start Cycle, SRAM IFMAP Stop Cycle, SRAM IFMAP Reads, "
    "SRAM Filter Start Cycle, SRAM Filter Stop Cycle, SRAM Filter Reads, "
    "SRAM OFMAP Start Cycle, SRAM OFMAP Stop Cycle, SRAM OFMAP Writes, "
    "DRAM IFMAP Start Cycle, DRAM IFMAP Stop Cycle, DRAM IFMAP Reads, "
    "DRAM Filter Start Cycle, DRAM Filter Stop Cycle, DRAM Filter Reads, "
    "DRAM OFMAP Start Cycle, DRAM OFMAP Stop Cycle, DRAM OFMAP Writes,\n")
ENERGY_REPORT_HEADER = (
    "LayerID, Layer Name, MACs, RF Accesses, SRAM Accesses, DRAM Accesses, "
    "MAC Energy, RF Energy, SRAM Energy, DRAM Energy, Total Energy,\n")

# (counts key, SCALE-Sim prints it as a float) per detailed-report column: the start and
# stop cycles come out of float trace matrices, the access counts are ints.
DETAILED_COLUMNS = (
    ("sram_ifmap_start_cycle", True), ("sram_ifmap_stop_cycle", True),
    ("sram_ifmap_reads", False),
    ("sram_filter_start_cycle", True), ("sram_filter_stop_cycle", True),
    ("sram_filter_reads", False),
    ("sram_ofmap_start_cycle", True), ("sram_ofmap_stop_cycle", True),
    ("sram_ofmap_writes", False),
    ("dram_ifmap_start_cycle", True), ("dram_ifmap_stop_cycle", True),
    ("dram_ifmap_reads", False),
    ("dram_filter_start_cycle", True), ("dram_filter_stop_cycle", True),
    ("dram_filter_reads", False),
    ("dram_ofmap_start_cycle", True), ("dram_ofmap_stop_cycle", True),
    ("dram_ofmap_writes", False),
)
COMPUTE_COLUMNS = ("total_cycles_incl_prefetch", "compute_cycles", "stall_cycles",
                   "overall_util", "mapping_efficiency", "compute_util")
BANDWIDTH_COLUMNS = ("avg_ifmap_sram_bw", "avg_filter_sram_bw", "avg_ofmap_sram_bw",
                     "avg_ifmap_dram_bw", "avg_filter_dram_bw", "avg_ofmap_dram_bw")

REPORT_FILES = ("COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv")
ENERGY_REPORT_FILE = "ENERGY_REPORT.csv"


class ScaleSimFormatError(ValueError):
    """A SCALE-Sim input file that cannot be used: names the file, line and value.

    Attributes:
      path: the file.
      line: 1-based line number, or None when the problem is not on one line.
      value: the offending text, or None.
    """

    def __init__(self, path, line, message, value=None):
        self.path, self.line, self.value = path, line, value
        where = f"{path}:{line}" if line is not None else f"{path}"
        text = f"{where}: {message}"
        if value is not None:
            text += f" (got {value!r})"
        super().__init__(text)


@dataclasses.dataclass(frozen=True)
class ScaleSimConfig:
    """A parsed SCALE-Sim .cfg.

    Attributes:
      run_name: `[general] run_name` (SCALE-Sim's output sub-folder).
      accelerator: the `systolic.AcceleratorConfig` it describes.
    """

    run_name: str
    accelerator: systolic.AcceleratorConfig


def _read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise ScaleSimFormatError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScaleSimFormatError(path, None, f"cannot read the file: {e}") from None


def _parse_ini(path):
    """A configparser-compatible reader that remembers where each value is.

    Returns {section: {key: (value, line)}} with lower-case keys. Like configparser
    (strict mode): `key = value` or `key: value`, '#' and ';' comment lines, duplicate
    sections or keys are errors. Continuation lines are not used by SCALE-Sim's files
    and are rejected.
    """
    sections = {}
    current = None
    for number, raw in enumerate(_read_lines(path), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if raw[0].isspace() and current is not None:
            raise ScaleSimFormatError(path, number, "unexpected indented line", raw)
        if line.startswith("["):
            if not line.endswith("]"):
                raise ScaleSimFormatError(path, number, "malformed section header", raw)
            name = line[1:-1].strip()
            if name in sections:
                raise ScaleSimFormatError(path, number, f"duplicate section [{name}]", raw)
            sections[name] = {}
            current = name
            continue
        if current is None:
            raise ScaleSimFormatError(path, number, "a key before the first [section]", raw)
        positions = [p for p in (line.find("="), line.find(":")) if p > 0]
        if not positions:
            raise ScaleSimFormatError(path, number, "expected 'key = value' or 'key: value'", raw)
        cut = min(positions)
        key, value = line[:cut].strip().lower(), line[cut + 1:].strip()
        if key in sections[current]:
            raise ScaleSimFormatError(path, number, f"duplicate key {key!r} in [{current}]", raw)
        sections[current][key] = (value, number)
    return sections


def read_config(path) -> ScaleSimConfig:
    """Reads a SCALE-Sim 3.0.0 .cfg file.

    Args:
      path: the .cfg file.

    Returns:
      A `ScaleSimConfig`.

    Raises:
      ScaleSimFormatError: on a missing section or key, a size that is not a positive
        int, an unknown dataflow, or a mode the estimator does not reproduce (USER
        bandwidth, Ramulator traces, custom layouts, sparsity).
    """
    ini = _parse_ini(path)
    for section, keys in _REQUIRED.items():
        if section not in ini:
            raise ScaleSimFormatError(path, None, f"missing section [{section}]")
        for key in keys:
            if key not in ini[section]:
                raise ScaleSimFormatError(path, None, f"missing key {key!r} in [{section}]")

    def get(section, key):
        return ini[section][key]

    arch = ini["architecture_presets"]
    values = {}
    for section in ("architecture_presets", "layout"):
        for key in _POSITIVE_INTS:
            if key not in ini[section]:
                continue
            text, line = ini[section][key]
            try:
                number = int(text)
            except ValueError:
                raise ScaleSimFormatError(path, line, f"{key} must be an integer", text) from None
            if number <= 0:
                raise ScaleSimFormatError(path, line, f"{key} must be positive", text)
            values[key] = number
    for key in _OFFSETS:
        text, line = arch[key]
        try:
            offset = int(text)
        except ValueError:
            raise ScaleSimFormatError(path, line, f"{key} must be an integer", text) from None
        # SCALE-Sim marks "no request" with address -1: a negative offset could turn a real
        # address into -1 and silently drop it.
        if offset < 0:
            raise ScaleSimFormatError(path, line, f"{key} must be >= 0", text)

    text, line = arch["dataflow"]
    if text not in systolic.DATAFLOWS:
        # SCALE-Sim only warns here and then runs output stationary.
        raise ScaleSimFormatError(path, line, "unknown dataflow (expected os, ws or is)", text)
    dataflow = text

    text, line = get("run_presets", "interfacebandwidth")
    if text != "CALC":
        message = ("only InterfaceBandwidth CALC is supported" if text == "USER" else
                   "InterfaceBandwidth must be CALC or USER")
        raise ScaleSimFormatError(path, line, message, text)
    text, line = get("run_presets", "useramulatortrace")
    if text == "True":  # SCALE-Sim compares with the string 'True'; anything else is off.
        raise ScaleSimFormatError(path, line, "Ramulator traces are not supported", text)
    for key in ("ifmapcustomlayout", "filtercustomlayout"):
        text, line = get("layout", key)
        if text.lower() not in _BOOLEANS:
            raise ScaleSimFormatError(path, line, f"{key} must be a boolean", text)
        if _BOOLEANS[text.lower()]:
            raise ScaleSimFormatError(path, line, f"{key} = True is not supported", text)
    text, line = get("sparsity", "sparsitysupport")
    if text.lower() == "true":
        raise ScaleSimFormatError(path, line, "SparsitySupport = true is not supported", text)

    run_name, line = get("general", "run_name")
    if not run_name:
        raise ScaleSimFormatError(path, line, "run_name is empty", run_name)
    accelerator = systolic.AcceleratorConfig(
        array_rows=values["arrayheight"], array_cols=values["arraywidth"], dataflow=dataflow,
        ifmap_sram_kb=values["ifmapsramszkb"], filter_sram_kb=values["filtersramszkb"],
        ofmap_sram_kb=values["ofmapsramszkb"])
    return ScaleSimConfig(run_name=run_name, accelerator=accelerator)


def read_topology(path) -> List[systolic.LayerShape]:
    """Reads a SCALE-Sim 3.0.0 convolution topology CSV.

    The first line is a header. Each row is `name, H, W, R, S, C, K, stride,` with the
    trailing comma SCALE-Sim requires (it drops the last field), optionally followed by
    an N:M sparsity field before that comma. As in SCALE-Sim, a layer whose name contains
    "DP" is depthwise: it becomes C one-channel layers named `<name>Channel_<i>`.

    Args:
      path: the topology file.

    Returns:
      The layers, as `systolic.LayerShape`s, in file order.

    Raises:
      ScaleSimFormatError: on a malformed row, a size that is not a positive int, a filter
        larger than the input, or a file without layers.
    """
    layers = []
    lines = _read_lines(path)
    for number, raw in enumerate(lines, start=1):
        row = raw.strip()
        if number == 1 or not row:
            continue  # SCALE-Sim skips the first line (the header) and blank lines.
        if not row.endswith(","):
            raise ScaleSimFormatError(path, number, "a topology row must end with a comma", raw)
        fields = [f.strip() for f in row.split(",")[:-1]]
        if len(fields) not in (8, 9):
            raise ScaleSimFormatError(
                path, number, "expected 'name, H, W, R, S, C, K, stride,' (8 fields and an "
                f"optional N:M sparsity field); found {len(fields)} fields", raw)
        name = fields[0]
        if not name:
            raise ScaleSimFormatError(path, number, "empty layer name", raw)
        numbers = []
        for label, text in zip(TOPOLOGY_FIELDS, fields[1:8]):
            try:
                value = int(text)
            except ValueError:
                raise ScaleSimFormatError(path, number, f"{label} must be an integer", text) from None
            if value <= 0:
                raise ScaleSimFormatError(path, number, f"{label} must be positive", text)
            numbers.append(value)
        if len(fields) == 9:
            parts = fields[8].split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
                raise ScaleSimFormatError(path, number, "sparsity must be N:M", fields[8])
        h, w, r, s, c, k, stride = numbers
        if r > h or s > w:
            raise ScaleSimFormatError(path, number, "the filter is larger than the ifmap",
                                      f"{r}x{s} filter on {h}x{w}")
        if "DP" in name:
            layers.extend(systolic.LayerShape(f"{name}Channel_{i}", h, w, r, s, 1, k, stride)
                          for i in range(c))
        else:
            layers.append(systolic.LayerShape(name, h, w, r, s, c, k, stride))
    if not layers:
        raise ScaleSimFormatError(path, len(lines) or None, "no layers in the topology")
    return layers


def write_topology(path, layers: Sequence[systolic.LayerShape]):
    """Writes layers as a SCALE-Sim topology CSV (header line, trailing commas)."""
    lines = ["Layer name, " + ", ".join(TOPOLOGY_FIELDS) + ","]
    for layer in layers:
        lines.append(", ".join([layer.name] + [str(v) for v in layer.as_tuple()]) + ",")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------------------
def _sequential_mean_percent(values):
    """sum(values) / len(values) * 100 exactly as SCALE-Sim computes it.

    SCALE-Sim averages per-fold ratios with Python 3.11's left-to-right sum(); later
    Pythons' sum() compensates rounding, so the loop is explicit.
    """
    total = 0
    for v in values:
        total += v
    return total / len(values) * 100


def fold_averages(layer: systolic.LayerShape, config: systolic.AcceleratorConfig):
    """SCALE-Sim's 'Mapping Efficiency %' and 'Compute Util %' of one layer.

    Both are averages over folds (column folds outermost) of per-fold float ratios, so
    they are recomputed fold by fold in SCALE-Sim's order to match its rounding.
    """
    rows, cols, df = config.array_rows, config.array_cols, config.dataflow
    ho = -(-(layer.ifmap_h - layer.filter_h + layer.stride) // layer.stride)
    wo = -(-(layer.ifmap_w - layer.filter_w + layer.stride) // layer.stride)
    npix, window, k = ho * wo, layer.filter_h * layer.filter_w * layer.channels, layer.num_filters
    if df == "os":
        sr, sc, t = npix, k, window
        cycles = t + rows + cols - 2
    elif df == "ws":
        # The compute-util cycles of ws and is come from a fold matrix whose height is the
        # fold's lines (rows + lines of the skewed block), plus its width - 1.
        sr, sc, t = window, k, npix
        cycles = 2 * rows + 2 * cols + t - 3
    else:
        sr, sc, t = window, npix, k
        cycles = 2 * rows + 2 * cols + t - 3
    row_folds, col_folds = -(-sr // rows), -(-sc // cols)
    mapping, compute = [], []
    for fc in range(col_folds):
        cu = min(cols, sc - fc * cols)
        for fr in range(row_folds):
            ru = min(rows, sr - fr * rows)
            mapping.append(ru * cu / (rows * cols))
            compute.append(ru * cu * t / (rows * cols * cycles))
    return _sequential_mean_percent(mapping), _sequential_mean_percent(compute)


def report_values(layers: Sequence[systolic.LayerShape], config: systolic.AcceleratorConfig,
                  counts: Dict) -> List[Dict]:
    """Per-layer report values (ints and Python floats) as SCALE-Sim computes them.

    Args:
      layers: the layers.
      config: the accelerator.
      counts: `systolic.estimate_counts(layers, config)`.

    Returns:
      One dict per layer with the counts keys plus the float columns of the compute and
      bandwidth reports.

    Raises:
      ZeroDivisionError: where SCALE-Sim divides by a zero cycle count too.
    """
    out = []
    macs_units = config.array_rows * config.array_cols
    for i, layer in enumerate(layers):
        v = {key: int(counts[key][i]) for key in systolic.COUNT_KEYS}
        cycles = v["compute_cycles"]
        v["overall_util"] = (v["macs"] * 100) / (cycles * macs_units)
        v["mapping_efficiency"], v["compute_util"] = fold_averages(layer, config)
        v["avg_ifmap_sram_bw"] = v["sram_ifmap_reads"] / cycles
        v["avg_filter_sram_bw"] = v["sram_filter_reads"] / cycles
        v["avg_ofmap_sram_bw"] = v["sram_ofmap_writes"] / cycles
        for operand, count in (("ifmap", "dram_ifmap_reads"), ("filter", "dram_filter_reads"),
                               ("ofmap", "dram_ofmap_writes")):
            span = v[f"dram_{operand}_stop_cycle"] - v[f"dram_{operand}_start_cycle"] + 1
            v[f"avg_{operand}_dram_bw"] = float(v[count]) / float(span)
        out.append(v)
    return out


def _format(value, as_float=False):
    # Python's repr of a float (shortest round trip) is also how numpy 1.26 prints
    # np.float64, which SCALE-Sim's cycle columns are.
    return repr(float(value)) if as_float or isinstance(value, float) else str(int(value))


def format_reports(layers, config, counts, costs=None, energies=None) -> Dict[str, str]:
    """Returns {file name: text} of SCALE-Sim's three reports and ENERGY_REPORT.csv.

    Args:
      layers: the layers.
      config: the accelerator.
      counts: `systolic.estimate_counts(layers, config)`.
      costs: the `systolic.EnergyCosts` of the energy report.
      energies: `systolic.energy_terms(counts, costs)`.
    """
    values = report_values(layers, config, counts)
    compute = [COMPUTE_REPORT_HEADER]
    bandwidth = [BANDWIDTH_REPORT_HEADER]
    detail = [DETAILED_REPORT_HEADER]
    for lid, v in enumerate(values):
        compute.append(", ".join([str(lid)] + [_format(v[c]) for c in COMPUTE_COLUMNS]) + ",\n")
        bandwidth.append(", ".join([str(lid)] + [_format(v[c]) for c in BANDWIDTH_COLUMNS]) +
                         ",\n")
        detail.append(", ".join([str(lid)] + [_format(v[c], f) for c, f in DETAILED_COLUMNS]) +
                      ",\n")
    reports = {"COMPUTE_REPORT.csv": "".join(compute),
               "BANDWIDTH_REPORT.csv": "".join(bandwidth),
               "DETAILED_ACCESS_REPORT.csv": "".join(detail)}
    if energies is not None:
        costs = costs or systolic.EnergyCosts()
        energy = [ENERGY_REPORT_HEADER]
        for lid, (layer, v) in enumerate(zip(layers, values)):
            sram = v["sram_ifmap_reads"] + v["sram_filter_reads"] + v["sram_ofmap_writes"]
            dram = v["dram_ifmap_reads"] + v["dram_filter_reads"] + v["dram_ofmap_writes"]
            rf = costs.rf_accesses_per_mac * v["macs"]
            items = [str(lid), layer.name, str(v["macs"]), repr(float(rf)), str(sram), str(dram)]
            items += [repr(float(energies[key][lid])) for key in systolic.ENERGY_KEYS]
            energy.append(", ".join(items) + ",\n")
        reports[ENERGY_REPORT_FILE] = "".join(energy)
    return reports


def write_reports(outdir, reports: Dict[str, str]):
    """Writes report texts into `outdir` all or nothing (temporary files, then renames)."""
    os.makedirs(outdir, exist_ok=True)
    temps = []
    try:
        for name, text in reports.items():
            temp = os.path.join(outdir, f".{name}.tmp")
            with open(temp, "w", encoding="utf-8") as f:
                f.write(text)
            temps.append((temp, os.path.join(outdir, name)))
        for temp, final in temps:
            os.replace(temp, final)
    finally:
        for temp, _ in temps:
            if os.path.exists(temp):
                os.remove(temp)


def read_report(path) -> List[List[str]]:
    """Reads a SCALE-Sim report CSV: [header fields] followed by one field list per row."""
    rows = []
    for line in _read_lines(path):
        if line.strip():
            rows.append([f.strip() for f in line.rstrip().rstrip(",").split(",")])
    return rows
