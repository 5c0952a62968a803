"""Tests of energynet_tf/cli.py: the CPU a run says it ran on, and the bfloat16 warning on CPUs that emulate it."""

import os
import subprocess
import sys

import pytest

from energynet_tf import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def test_cpu_flags_read_the_first_flags_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(AVX2_ONLY)
    assert cli.cpu_flags(str(path)) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cli.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("cpuinfo, described", [
    ("model name\t: AMD EPYC\n" + AVX2_ONLY, "AMD EPYC, 2 CPUs, avx2 (no avx512)"),
    ("model name\t: Xeon\n" + AVX512_BF16, "Xeon, 1 CPUs, avx512, avx512_bf16"),
    ("processor\t: 0\nflags\t\t: fpu sse2\n", "unknown model, 1 CPUs, no avx2"),
])
def test_cpu_description_names_the_model_cpus_and_vector_unit(tmp_path, cpuinfo, described):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cli.cpu_description(str(path)) == described
    assert cli.cpu_description(str(tmp_path / "missing")) == "unknown CPU"


@pytest.mark.parametrize("precision, flags, warned", [
    ("bfloat16", {"avx2", "fma"}, True),
    ("bfloat16", {"avx2", "avx512_bf16"}, False),
    ("bfloat16", {"amx_bf16"}, False),
    ("bfloat16", set(), False),  # features unknown: no claim
    ("float32", {"avx2"}, False),
    ("float16", {"avx2"}, False),
])
def test_the_bfloat16_warning_is_given_where_bfloat16_is_emulated(precision, flags, warned):
    message = cli.precision_warning(precision, flags)
    assert (message is not None) == warned
    if warned:
        assert "slowdown" in message and "avx512_bf16" in message and "\n" not in message


def test_the_trainer_warns_in_one_line_before_training_also_with_check_only(tmp_path):
    from energynet_tf.data import testing

    data = testing.make_fake_cifar10(str(tmp_path / "cifar"))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2_ONLY)
    env = dict(os.environ, PYTHONPATH=REPO, ENERGYNET_TF_CPUINFO=str(cpuinfo))
    args = [sys.executable, "-m", "trainers.cifar", f"--data_dir={data}", f"--model_dir={tmp_path / 'm'}",
            "--depth=8", "--check_only", "--validation_examples=50"]
    result = subprocess.run(args + ["--mixed_precision=bfloat16"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: --mixed_precision")]
    assert len(warnings) == 1 and "slowdown" in warnings[0]
