"""Tests of energynet_tf.scalesim_io: SCALE-Sim .cfg / topology readers and report writers."""

import glob
import os

import pytest

from energynet_tf import scalesim_io
from energynet_tf import systolic
from tools import make_systolic_golden

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden", "systolic")

# The golden generator's own .cfg writer: one SCALE-Sim config format in the repo.
CONFIG = make_systolic_golden.config_text(
    rows=12, cols=14, dataflow="ws", ifmap_kb=2, filter_kb=3, ofmap_kb=1, run_name="test")

TOPOLOGY = """\
Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
conv1, 34, 34, 3, 3, 3, 16, 1,

fc, 1, 1, 1, 1, 64, 10, 1, 2:4,
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_read_config(tmp_path):
    cfg = scalesim_io.read_config(write(tmp_path, "c.cfg", CONFIG))
    assert cfg.run_name == "test"
    assert cfg.accelerator == systolic.AcceleratorConfig(
        array_rows=12, array_cols=14, dataflow="ws", ifmap_sram_kb=2, filter_sram_kb=3,
        ofmap_sram_kb=1)


@pytest.mark.parametrize("old, new, needle, message, value", [
    ("Dataflow : ws", "Dataflow : xs", "Dataflow", "unknown dataflow", "xs"),
    ("Dataflow : ws", "Dataflow : OS", "Dataflow", "unknown dataflow", "OS"),
    ("ArrayHeight:    12", "ArrayHeight:    0", "ArrayHeight", "must be positive", "0"),
    ("IfmapSramSzkB:    2", "IfmapSramSzkB:    -4", "IfmapSramSzkB", "must be positive",
     "-4"),
    ("OfmapSramSzkB:    1", "OfmapSramSzkB:    1.5", "OfmapSramSzkB", "must be an integer",
     "1.5"),
    ("IfmapOffset:    0", "IfmapOffset:    -1", "IfmapOffset", "must be >= 0", "-1"),
    ("InterfaceBandwidth: CALC", "InterfaceBandwidth: USER", "InterfaceBandwidth",
     "only InterfaceBandwidth CALC", "USER"),
    ("UseRamulatorTrace: False", "UseRamulatorTrace: True", "UseRamulatorTrace",
     "Ramulator", "True"),
    ("IfmapCustomLayout: False", "IfmapCustomLayout: True", "IfmapCustomLayout",
     "not supported", "True"),
    ("SparsitySupport : false", "SparsitySupport : true", "SparsitySupport",
     "not supported", "true"),
    ("BlockSize : 8", "BlockSize : 8\nBlockSize : 4", "BlockSize : 4", "duplicate key", None),
    ("[layout]", "[layout]\n  indented", "indented", "indented", None),
])
def test_read_config_errors_name_line_and_value(tmp_path, old, new, needle, message, value):
    text = CONFIG.replace(old, new)
    path = write(tmp_path, "c.cfg", text)
    with pytest.raises(scalesim_io.ScaleSimFormatError, match=message) as info:
        scalesim_io.read_config(path)
    error = info.value
    assert error.path == path and error.line == line_of(text, needle)
    assert str(error).startswith(f"{path}:{error.line}: ")
    if value is not None:
        assert error.value == value and repr(value) in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("section", ["general", "architecture_presets", "layout",
                                     "sparsity", "run_presets"])
def test_read_config_missing_section(tmp_path, section):
    text = CONFIG.replace(f"[{section}]", "[renamed]")
    with pytest.raises(scalesim_io.ScaleSimFormatError,
                       match=rf"missing section \[{section}\]"):
        scalesim_io.read_config(write(tmp_path, "c.cfg", text))


def test_read_config_missing_key_and_file(tmp_path):
    with pytest.raises(scalesim_io.ScaleSimFormatError, match="missing key 'arraywidth'"):
        scalesim_io.read_config(write(tmp_path, "c.cfg", CONFIG.replace("ArrayWidth:", "#")))
    with pytest.raises(scalesim_io.ScaleSimFormatError, match="file not found"):
        scalesim_io.read_config(str(tmp_path / "missing.cfg"))


def test_read_topology_rows_sparsity_and_blank_lines(tmp_path):
    layers = scalesim_io.read_topology(write(tmp_path, "t.csv", TOPOLOGY))
    assert layers == [systolic.LayerShape("conv1", 34, 34, 3, 3, 3, 16, 1),
                      systolic.LayerShape("fc", 1, 1, 1, 1, 64, 10, 1)]


def test_read_topology_depthwise_layers_split_per_channel(tmp_path):
    # SCALE-Sim treats any layer whose name contains "DP" as depthwise.
    text = TOPOLOGY.splitlines()[0] + "\nconvDP, 10, 10, 3, 3, 3, 4, 1,\n"
    layers = scalesim_io.read_topology(write(tmp_path, "t.csv", text))
    assert [(l.name, l.channels) for l in layers] == [
        ("convDPChannel_0", 1), ("convDPChannel_1", 1), ("convDPChannel_2", 1)]


@pytest.mark.parametrize("row, message, value", [
    ("conv1, 34, 34, 3, 3, 3, 16, 1", "must end with a comma",
     "conv1, 34, 34, 3, 3, 3, 16, 1"),
    ("conv1, 34, 34, 3, 3, 3, 16,", "found 7 fields", None),
    ("conv1, 34, x, 3, 3, 3, 16, 1,", "IFMAP Width must be an integer", "x"),
    ("conv1, 34, 34, 3, 3, 0, 16, 1,", "Channels must be positive", "0"),
    ("conv1, 34, 34, 3, 3, 3, -2, 1,", "Num Filter must be positive", "-2"),
    ("conv1, 4, 34, 5, 3, 3, 16, 1,", "filter is larger", "5x3 filter on 4x34"),
    ("conv1, 34, 34, 3, 3, 3, 16, 1, 2,", "sparsity must be N:M", "2"),
    (", 34, 34, 3, 3, 3, 16, 1,", "empty layer name", None),
])
def test_read_topology_errors_name_line_and_value(tmp_path, row, message, value):
    text = TOPOLOGY.replace("conv1, 34, 34, 3, 3, 3, 16, 1,", row)
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(scalesim_io.ScaleSimFormatError, match=message) as info:
        scalesim_io.read_topology(path)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}:2: ")
    if value is not None:
        assert info.value.value == value


def test_read_topology_without_layers(tmp_path):
    with pytest.raises(scalesim_io.ScaleSimFormatError, match="no layers"):
        scalesim_io.read_topology(write(tmp_path, "t.csv", TOPOLOGY.splitlines()[0] + "\n"))


def test_write_topology_round_trip(tmp_path):
    layers = [systolic.LayerShape("a", 13, 9, 5, 3, 3, 5, 1),
              systolic.LayerShape("b", 1, 1, 1, 1, 7, 2, 1)]
    path = str(tmp_path / "t.csv")
    scalesim_io.write_topology(path, layers)
    assert scalesim_io.read_topology(path) == layers
    assert open(path).read().splitlines()[1] == "a, 13, 9, 5, 3, 3, 5, 1,"


def golden_cases():
    return sorted(os.path.basename(d) for d in glob.glob(os.path.join(GOLDEN_DIR, "*"))
                  if os.path.isdir(d))


@pytest.mark.parametrize("case", golden_cases())
def test_fold_averages_match_scalesim_floats(case):
    # Mapping efficiency and compute utilisation are float averages over folds: the
    # sequential sum must round exactly like SCALE-Sim's.
    case_dir = os.path.join(GOLDEN_DIR, case)
    cfg = scalesim_io.read_config(os.path.join(case_dir, "config.cfg"))
    layers = scalesim_io.read_topology(os.path.join(case_dir, "topology.csv"))
    rows = scalesim_io.read_report(os.path.join(case_dir, "COMPUTE_REPORT.csv"))[1:]
    for layer, row in zip(layers, rows):
        mapping, compute = scalesim_io.fold_averages(layer, cfg.accelerator)
        assert (repr(mapping), repr(compute)) == (row[5], row[6]), (case, layer.name)


def test_write_reports_is_all_or_nothing(tmp_path):
    outdir = tmp_path / "out"
    scalesim_io.write_reports(str(outdir), {"A.csv": "a\n", "B.csv": "b\n"})
    assert sorted(os.listdir(outdir)) == ["A.csv", "B.csv"]
    assert (outdir / "B.csv").read_text() == "b\n"
