"""Tests of tools/bench_workers.py: its checks (the measurement itself is in BUILD.md)."""

import pytest

from conftest import error_lines, run_module


@pytest.mark.parametrize("args, needle", [
    (["--batch_size=15"], "--batch_size=15 must be even"),
    (["--rounds=0"], "--rounds=0 must be a positive integer"),
    ([], "--data_dir is required"),
])
def test_bad_settings_get_one_line(args, needle, fake_cifar_dir):
    data = [] if not args else [f"--data_dir={fake_cifar_dir}"]
    result = run_module("tools.bench_workers", *data, *args, timeout=120)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1000:]


@pytest.mark.slow  # over 25 s; opt-in with `pytest -m slow` (BUILD.md, "Test")
def test_one_round_on_generated_data_reports_a_ratio(fake_cifar_dir):
    result = run_module("tools.bench_workers", f"--data_dir={fake_cifar_dir}", "--depth=8", "--batch_size=16",
                        "--max_train_examples=96", "--rounds=1", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "round 1/1: 1 process" in result.stdout
    assert "median speed ratio, 2 workers over 1 process:" in result.stdout
