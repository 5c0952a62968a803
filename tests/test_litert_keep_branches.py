"""Tests of `python -m benchmarks.litert_keep_branches` (the diagnostic LiteRT copy).

Opt-in (`-m slow`), like the diagnostic itself: it patches a copy of a third-party library.
"""

import os
import platform
import shutil
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest

from energynet_tf import cli
from energynet_tf import export
from energynet_tf.export import gate_programs
from energynet_tf.model import EnergyNet
from benchmarks import litert_keep_branches as tool

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a TFLite model from argv[1] on the images in argv[2], twice over (so
# that each branch runs again after its first execution), and saves every
# output to argv[3].
_RUNNER = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
import ai_edge_litert
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
images = np.load(sys.argv[2])
outputs = []
for _ in range(2):
    for image in images:
        it.set_tensor(it.get_input_details()[0]["index"], image[None])
        it.invoke()
        outputs.append(np.concatenate([it.get_tensor(d["index"]).ravel() for d in it.get_output_details()]))
np.save(sys.argv[3], np.stack(outputs))
print(ai_edge_litert.__file__)
"""


def _elf(machine=62, segments=((0x1000, 0x2000, 0x500),)):
    """A minimal little-endian ELF64 header with PT_LOAD segments (offset, vaddr, size)."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", header, 18, machine)
    struct.pack_into("<Q", header, 32, 64)  # program headers right after
    struct.pack_into("<HH", header, 54, 56, len(segments))
    for offset, vaddr, size in segments:
        header += struct.pack("<IIQQQQQQ", 1, 5, offset, vaddr, vaddr, size, size, 0x1000)
    return bytes(header)


def test_file_offset_maps_addresses_through_the_loaded_segment():
    content = _elf(segments=((0x1000, 0x2000, 0x500), (0x3000, 0x8000, 0x100)))
    assert tool.file_offset(content, 0x2000) == 0x1000
    assert tool.file_offset(content, 0x2123) == 0x1123
    assert tool.file_offset(content, 0x80FF) == 0x30FF


@pytest.mark.parametrize(
    "content, address, message",
    [
        (b"not an elf file at all" * 4, 0x2000, "64-bit ELF"),
        (_elf(machine=183), 0x2000, "x86-64"),  # aarch64
        (_elf(), 0x2500, "no loaded segment holds address 0x2500"),
    ],
)
def test_file_offset_rejects_what_it_cannot_patch(content, address, message):
    with pytest.raises(cli.UsageError, match=message):
        tool.file_offset(content, address)


def test_existing_out_is_a_usage_error_and_writes_nothing(tmp_path):
    (tmp_path / "keep").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.litert_keep_branches", f"--out={tmp_path / 'keep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: --out={tmp_path / 'keep'} exists; give a new directory"
    ]
    assert list((tmp_path / "keep").iterdir()) == []


@pytest.mark.slow  # a diagnostic that patches a copy of LiteRT's library: opt-in (-m slow)
@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("nm") is None, reason="x86-64 with binutils only")
def test_patched_copy_runs_gated_models_with_identical_outputs(tmp_path):
    package = tool.installed_package()
    if not any(tool.symbol_address(os.path.join(package, f)) for f in os.listdir(package) if f.endswith(".so")):
        pytest.skip(f"this ai_edge_litert build has no symbol {tool.SYMBOL} to patch")
    out = tmp_path / "keep"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.litert_keep_branches", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    patched = proc.stdout.split()[1].rstrip(":")
    installed = os.path.join(tool.installed_package(), os.path.basename(patched))
    address = tool.symbol_address(installed)
    with open(installed, "rb") as f:
        original = f.read()
    with open(patched, "rb") as f:
        copy = f.read()
    offset = tool.file_offset(original, address)
    # Exactly the three bytes at the function's entry differ; the installed library is untouched.
    assert copy[offset:offset + 3] == tool.RETURN_OK != original[offset:offset + 3]
    assert copy[:offset] == original[:offset] and copy[offset + 3:] == original[offset + 3:]

    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8)
    images = np.random.RandomState(0).uniform(-1, 1, (12, 32, 32, 3)).astype(np.float32)
    decisions = gate_programs.set_input_dependent_gates(model, images, open_fraction=0.5)
    assert 0 < decisions.mean() < 1  # both branches of the IFs run
    (tmp_path / "model.tflite").write_bytes(export.convert_to_tflite(model, "single"))
    np.save(tmp_path / "images.npy", images)
    results = {}
    for name, path in (("stock", ""), ("keep", str(out))):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (path, ROOT) if p))
        run = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(tmp_path / "model.tflite"), str(tmp_path / "images.npy"), str(tmp_path / f"{name}.npy")],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().startswith(str(out)) == (name == "keep"), run.stdout
        results[name] = np.load(tmp_path / f"{name}.npy")
    np.testing.assert_array_equal(results["keep"], results["stock"])
    # Repeated executions of the same branches give the same outputs.
    np.testing.assert_array_equal(results["keep"][:12], results["keep"][12:])
