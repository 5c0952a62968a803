"""Diagnostic: a scratch copy of LiteRT whose IF op keeps its branches' memory.

    python -m benchmarks.litert_keep_branches --out=/tmp/litert_keep
    PYTHONPATH=/tmp/litert_keep python -m tools.bench_latency --data_dir=...

LiteRT's `IF` kernel ends every execution with `ReleaseMemory()` on the branch
it ran (unless the interpreter preserves all tensors, which also turns off
tensor-memory reuse in the whole model), so the next execution re-plans the
branch's tensors and re-prepares its XNNPACK operators. A gated network pays
that once per gated block and image. This tool measures what that costs: it
copies the installed `ai_edge_litert` package to `--out` and turns
`tflite::Subgraph::ReleaseMemory()` in the copy's library into `return
kTfLiteOk` (three bytes: `xor eax, eax; ret`), so that executed branches keep
their arenas. Put `--out` first on `PYTHONPATH` to run anything against the
copy; the installed package is never modified. It is for measurement only:
the copy never frees a branch's tensors (more memory), the patch is x86-64
only, and deployments run the stock runtime.
"""

import importlib.util
import os
import shutil
import struct
import subprocess

from absl import app
from absl import flags

from energynet_tf import cli

FLAGS = flags.FLAGS

SYMBOL = "_ZN6tflite8Subgraph13ReleaseMemoryEv"  # tflite::Subgraph::ReleaseMemory()
RETURN_OK = bytes([0x31, 0xC0, 0xC3])  # xor eax, eax; ret: returns 0 == kTfLiteOk
_EM_X86_64 = 62
_PT_LOAD = 1


def installed_package():
    """The directory of the installed `ai_edge_litert` package.

    Raises:
        cli.UsageError: if the package is not installed.
    """
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise cli.UsageError("ai_edge_litert is not installed (pip install ai-edge-litert)")
    return list(spec.submodule_search_locations)[0]


def symbol_address(library, symbol=SYMBOL):
    """The virtual address of `symbol` in the ELF file `library`, or None.

    Raises:
        cli.UsageError: if binutils' `nm` is missing.
    """
    try:
        listing = subprocess.run(["nm", library], check=False, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise cli.UsageError("`nm` (binutils) is needed to find the symbol; apt-get install binutils") from None
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == symbol and parts[1] in "tT":
            return int(parts[0], 16)
    return None


def file_offset(content, address):
    """Where virtual `address` of a little-endian x86-64 ELF file lies in `content`.

    Raises:
        cli.UsageError: if `content` is not such a file or no loaded segment
            holds `address`.
    """
    if content[:4] != b"\x7fELF" or content[4] != 2 or content[5] != 1:
        raise cli.UsageError("expected a little-endian 64-bit ELF library")
    (machine,) = struct.unpack_from("<H", content, 18)
    if machine != _EM_X86_64:
        raise cli.UsageError(f"the patch is x86-64 code; this library is for ELF machine {machine}")
    phoff, = struct.unpack_from("<Q", content, 32)
    phentsize, phnum = struct.unpack_from("<HH", content, 54)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", content, phoff + i * phentsize)
        if p_type == _PT_LOAD and p_vaddr <= address < p_vaddr + p_filesz:
            return address - p_vaddr + p_offset
    raise cli.UsageError(f"no loaded segment holds address {address:#x}")


def patch_copy(out):
    """Copies ai_edge_litert into `out` and patches ReleaseMemory; returns the patched library's path.

    Raises:
        cli.UsageError: if `out` exists, or the library or symbol is not found.
    """
    if os.path.exists(out):
        raise cli.UsageError(f"--out={out} exists; give a new directory")
    source = installed_package()
    libraries = sorted(f for f in os.listdir(source) if f.endswith(".so"))
    found = [(f, a) for f, a in ((f, symbol_address(os.path.join(source, f))) for f in libraries) if a is not None]
    if not found:
        raise cli.UsageError(f"no library in {source} defines {SYMBOL}; this LiteRT build is not supported")
    name, address = found[0]
    with open(os.path.join(source, name), "rb") as f:
        content = bytearray(f.read())
    offset = file_offset(content, address)  # before copying: a failure leaves nothing behind
    content[offset:offset + len(RETURN_OK)] = RETURN_OK
    target = os.path.join(out, "ai_edge_litert")
    shutil.copytree(source, target)
    path = os.path.join(target, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def run():
    if not FLAGS.out:
        raise cli.UsageError("--out is required")
    path = patch_copy(FLAGS.out)
    print(f"patched {path}: IF branches keep their memory.\n"
          f"Run against it with PYTHONPATH={os.path.abspath(FLAGS.out)}{os.pathsep}$PYTHONPATH", flush=True)


def main(argv):
    cli.run_tool(run, argv)


if __name__ == "__main__":
    # Defined here, not at import: the tests import this module beside tools
    # that have an --out flag too.
    flags.DEFINE_string("out", None, "Directory to create the patched copy of ai_edge_litert in (must not exist).")
    app.run(main, flags_parser=cli.parse_flags_or_exit)
