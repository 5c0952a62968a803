"""Tests of tools/static_front.py: plain ResNets of several depths on one budget."""

import os

import pytest

from conftest import error_lines, run_module
from tools import static_front

BUDGET = ["--set=epochs=2,branch_epoch=1,phase1_epochs=1,phase2_epochs=0,phase3_epochs=0,batch_size=16,"
          "max_train_examples=64,validation_examples=50"]


@pytest.fixture(scope="module")
def front(fake_cifar_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("static") / "out")
    result = run_module("tools.static_front", f"--data_dir={fake_cifar_dir}", f"--out={out}", "--depths=14,8",
                        *BUDGET)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, result


def test_static_csv_has_every_depth_relative_to_the_deepest(front):
    out, _ = front
    rows = static_front.read_static_csv(os.path.join(out, "static.csv"))
    assert [r["depth"] for r in rows] == [8, 14]
    assert rows[1]["relative_energy"] == 1.0 and rows[1]["energy_savings_vs_deepest"] == 0.0
    assert 0.3 < rows[0]["relative_energy"] < 0.7  # one block per stage instead of two, plus the stem and head
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["epochs"] == 2
        assert os.path.exists(os.path.join(r["model_dir"], "model.keras"))


def test_rerun_does_not_retrain(front, fake_cifar_dir):
    out, _ = front
    result = run_module("tools.static_front", f"--data_dir={fake_cifar_dir}", f"--out={out}", "--depths=8,14",
                        *BUDGET)
    assert result.returncode == 0
    assert result.stdout.count("finished earlier") == 2


@pytest.mark.parametrize("args, needle", [
    (["--depths=8,27"], "27 is not a CIFAR ResNet depth"),
    (["--depths=8,x"], "'x' is not an integer"),
    (["--depths=50"], "50 is not a CIFAR ResNet depth"),
    (["--set=epochs=0"], "branch_epoch must be in"),
])
def test_bad_flags_get_one_line_and_write_nothing(args, needle, tmp_path):
    out = tmp_path / "out"
    result = run_module("tools.static_front", "--data_dir=/nonexistent", f"--out={out}", *args)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and needle in error_lines(result)[0], result.stderr[-1500:]
    assert not out.exists()
