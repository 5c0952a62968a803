"""Tests of tools/systolic_cost.py: SCALE-Sim's files in, SCALE-Sim's reports out."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from energynet_tf import scalesim_io
from energynet_tf import systolic
from tools import systolic_cost

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(REPO_ROOT, "tests", "golden", "systolic")


def golden_cases():
    return sorted(os.path.basename(d) for d in glob.glob(os.path.join(GOLDEN_DIR, "*"))
                  if os.path.isdir(d))


def run_tool(case_dir, outdir, *flags):
    return systolic_cost.main([f"--topology={os.path.join(case_dir, 'topology.csv')}",
                               f"--config={os.path.join(case_dir, 'config.cfg')}",
                               f"--outdir={outdir}", *flags])


@pytest.mark.parametrize("case", golden_cases())
def test_reports_are_byte_identical_to_scalesim(case, tmp_path):
    case_dir = os.path.join(GOLDEN_DIR, case)
    assert run_tool(case_dir, tmp_path / "out") == 0
    for name in scalesim_io.REPORT_FILES:
        ours = (tmp_path / "out" / name).read_text().splitlines()
        theirs = open(os.path.join(case_dir, name)).read().splitlines()
        assert ours[0] == theirs[0], f"{case}/{name}: header differs"
        assert len(ours) == len(theirs), f"{case}/{name}: {len(ours)} lines, SCALE-Sim {len(theirs)}"
        header = [h.strip() for h in theirs[0].split(",")]
        for number, (a, b) in enumerate(zip(ours[1:], theirs[1:]), start=1):
            fa, fb = a.split(", "), b.split(", ")
            bad = [f"'{header[i]}': SCALE-Sim {y}, ours {x}" for i, (x, y) in enumerate(zip(fa, fb))
                   if x != y]
            assert not bad and a == b, f"{case}/{name} layer {number - 1}: " + "; ".join(bad)


def test_energy_report(tmp_path):
    case_dir = os.path.join(GOLDEN_DIR, "resnet38_32x32_os")
    assert run_tool(case_dir, tmp_path / "a") == 0
    assert run_tool(case_dir, tmp_path / "b", "--e_dram=100", "--e_sram=3") == 0
    rows_a = scalesim_io.read_report(str(tmp_path / "a" / "ENERGY_REPORT.csv"))
    rows_b = scalesim_io.read_report(str(tmp_path / "b" / "ENERGY_REPORT.csv"))
    assert rows_a[0] == [h.strip() for h in
                         scalesim_io.ENERGY_REPORT_HEADER.strip().rstrip(",").split(",")]
    layers = scalesim_io.read_topology(os.path.join(case_dir, "topology.csv"))
    cfg = scalesim_io.read_config(os.path.join(case_dir, "config.cfg"))
    expected = systolic.estimate(layers, cfg.accelerator)
    assert [r[1] for r in rows_a[1:]] == [l.name for l in layers]
    np.testing.assert_array_equal([float(r[-1]) for r in rows_a[1:]], expected["energy"])
    cheaper = systolic.estimate(layers, cfg.accelerator,
                                systolic.EnergyCosts(dram=100, sram=3))
    np.testing.assert_array_equal([float(r[-1]) for r in rows_b[1:]], cheaper["energy"])


@pytest.fixture
def good_inputs(tmp_path):
    case_dir = os.path.join(GOLDEN_DIR, "odd_12x14_os")
    config = open(os.path.join(case_dir, "config.cfg")).read()
    topology = open(os.path.join(case_dir, "topology.csv")).read()
    return config, topology


def line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("which, old, new, needle, value", [
    ("config", "[sparsity]", "[sparsity_off]", None, None),
    ("config", "Dataflow : os", "Dataflow : rs", "Dataflow", "'rs'"),
    ("config", "ArrayHeight:    12", "ArrayHeight:    0", "ArrayHeight", "'0'"),
    ("config", "OfmapSramSzkB:    64", "OfmapSramSzkB:    -64", "OfmapSramSzkB", "'-64'"),
    ("topology", "rect_s2, 12, 17, 3, 3, 5, 7, 2,", "rect_s2, 12, 17, 3, 3, 5, 7, 2",
     "rect_s2", "2'"),
    ("topology", "rect_s2, 12, 17, 3, 3, 5, 7, 2,", "rect_s2, 12, 17, 3, 3, 5, 0, 2,",
     "rect_s2", "'0'"),
    ("topology", "rect_s2, 12, 17, 3, 3, 5, 7, 2,", "rect_s2, 12, 17, 3, 3, five, 7, 2,",
     "rect_s2", "'five'"),
])
def test_bad_files_one_line_error_exit_2_no_output(tmp_path, capsys, good_inputs, which,
                                                    old, new, needle, value):
    config, topology = good_inputs
    texts = {"config": config, "topology": topology}
    assert old in texts[which]
    texts[which] = texts[which].replace(old, new)
    (tmp_path / "c.cfg").write_text(texts["config"])
    (tmp_path / "t.csv").write_text(texts["topology"])
    outdir = tmp_path / "out"
    status = systolic_cost.main([f"--topology={tmp_path / 't.csv'}",
                                 f"--config={tmp_path / 'c.cfg'}", f"--outdir={outdir}"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("systolic_cost: error: ")
    path = str(tmp_path / ("c.cfg" if which == "config" else "t.csv"))
    if needle is None:
        assert f"{path}: missing section [sparsity]" in err
    else:
        assert f"{path}:{line_of(texts[which], needle)}: " in err
        assert value in err
    assert not outdir.exists()


def test_missing_file_and_bad_flag(tmp_path, capsys, good_inputs):
    config, _ = good_inputs
    (tmp_path / "c.cfg").write_text(config)
    status = systolic_cost.main([f"--topology={tmp_path / 'missing.csv'}",
                                 f"--config={tmp_path / 'c.cfg'}", f"--outdir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert status == 2 and f"{tmp_path / 'missing.csv'}: file not found" in err
    status = systolic_cost.main([f"--topology={tmp_path / 'missing.csv'}",
                                 f"--config={tmp_path / 'c.cfg'}", f"--outdir={tmp_path / 'o'}",
                                 "--e_dram=-1"])
    err = capsys.readouterr().err
    assert status == 2 and "EnergyCosts.dram" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        systolic_cost.main(["--config=x.cfg"])
    assert info.value.code == 2
    assert not (tmp_path / "o").exists()


def test_command_line_exit_status_and_stderr(tmp_path, good_inputs):
    # The real entry point: errors come before TensorFlow is imported, so stderr is one line.
    config, topology = good_inputs
    (tmp_path / "c.cfg").write_text(config.replace("Dataflow : os", "Dataflow : wss"))
    (tmp_path / "t.csv").write_text(topology)
    proc = subprocess.run(
        [sys.executable, "-m", "tools.systolic_cost", f"--topology={tmp_path / 't.csv'}",
         f"--config={tmp_path / 'c.cfg'}", f"--outdir={tmp_path / 'out'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"{tmp_path / 'c.cfg'}:" in proc.stderr and "'wss'" in proc.stderr
    assert not (tmp_path / "out").exists()


def _saved(tmp_path, name, build):
    import keras

    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(build(inputs)))
    path = str(tmp_path / f"{name}.keras")
    keras.Model(inputs, outputs).save(path)
    return path


def test_keras_model_gives_the_reports_of_its_topology(tmp_path):
    import keras

    from energynet_tf import topology

    path = _saved(tmp_path, "m", lambda x: keras.layers.Conv2D(8, 3, strides=2, name="c2")(
        keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)))
    config = os.path.join(GOLDEN_DIR, "resnet38_32x32_os", "config.cfg")
    assert systolic_cost.main([f"--keras_model={path}", f"--config={config}", f"--outdir={tmp_path / 'k'}"]) == 0
    rows = scalesim_io.read_topology(str(tmp_path / "k" / "topology.csv"))
    assert rows == topology.model_topology(keras.saving.load_model(path))
    assert [r.name for r in rows] == ["c1", "c2", "dense"]
    assert systolic_cost.main([f"--topology={tmp_path / 'k' / 'topology.csv'}", f"--config={config}",
                               f"--outdir={tmp_path / 't'}"]) == 0
    for name in scalesim_io.REPORT_FILES + (scalesim_io.ENERGY_REPORT_FILE,):
        assert (tmp_path / "k" / name).read_text() == (tmp_path / "t" / name).read_text()
    # Without --config: the project's default accelerator.
    assert systolic_cost.main([f"--keras_model={path}", f"--outdir={tmp_path / 'd'}"]) == 0
    energy = scalesim_io.read_report(str(tmp_path / "d" / "ENERGY_REPORT.csv"))
    np.testing.assert_array_equal([float(r[-1]) for r in energy[1:]],
                                  systolic.estimate(rows, systolic.AcceleratorConfig())["energy"])


@pytest.mark.parametrize("kind, needle", [
    ("dilated", "--keras_model={path}: Layer 'dilated': dilated convolutions are not supported"),
    ("grouped", "--keras_model={path}: Layer 'grouped': grouped convolutions are not supported"),
    ("depthwise", "--keras_model={path}: layer 'depthwise' is a DepthwiseConv2D, which the cost model does not cover"),
    ("missing", "--keras_model={path}: no such file"),
    ("garbage", "--keras_model={path}: not a loadable Keras model"),
])
def test_keras_model_the_cost_model_cannot_cover_is_one_line(tmp_path, capsys, kind, needle):
    import keras

    builds = {
        "dilated": lambda x: keras.layers.Conv2D(4, 3, dilation_rate=2, name="dilated")(x),
        "grouped": lambda x: keras.layers.Conv2D(6, 3, groups=3, name="grouped")(x),
        "depthwise": lambda x: keras.layers.DepthwiseConv2D(3, name="depthwise")(x),
    }
    path = str(tmp_path / f"{kind}.keras")
    if kind in builds:
        path = _saved(tmp_path, kind, builds[kind])
    elif kind == "garbage":
        open(path, "w").write("not a zip")
    assert systolic_cost.main([f"--keras_model={path}", f"--outdir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"systolic_cost: error: {needle.format(path=path)}" or (
        err.startswith(f"systolic_cost: error: {needle.format(path=path)}") and "\n" not in err), err
    assert not (tmp_path / "o").exists()


def test_topology_needs_config_and_the_two_sources_exclude_each_other(tmp_path, capsys):
    assert systolic_cost.main([f"--topology={tmp_path / 't.csv'}", f"--outdir={tmp_path / 'o'}"]) == 2
    assert "--config is required with --topology" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        systolic_cost.main(["--topology=a.csv", "--keras_model=m.keras", f"--outdir={tmp_path / 'o'}"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
