"""Fixtures shared by the test modules: generated CIFAR-10 and running the tools as a user would."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smallest recipe the tools accept: ResNet-8 on 64 images, one epoch per phase.
TINY_BUDGET = ["--depth=8", "--epochs=3", "--branch_epoch=1", "--phase1_epochs=1", "--phase2_epochs=1",
               "--phase3_epochs=0", "--max_train_examples=64", "--set=batch_size=16,validation_examples=50"]
TINY_TRAINER = ["--depth=8", "--phase1_epochs=1", "--phase2_epochs=1", "--phase3_epochs=0", "--batch_size=16",
                "--max_train_examples=64", "--validation_examples=50"]


@pytest.fixture(scope="session")
def fake_cifar_dir(tmp_path_factory):
    """A prepared tfds `cifar10` 3.0.2 of generated images (200 train, 50 test)."""
    from energynet_tf.data import testing

    return testing.make_fake_cifar10(str(tmp_path_factory.mktemp("fake_cifar")))


def tool_env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TFDS_DATA_DIR", None)
    env.pop("KERASTUNER_TUNER_ID", None)
    return env


def run_module(module, *args, timeout=600):
    """Runs `python -m module args...` from the repository; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=tool_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_module(module, *args):
    """Starts `python -m module args...`; stdout is a line-buffered pipe."""
    return subprocess.Popen([sys.executable, "-u", "-m", module, *args], cwd=REPO, env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupt_after(process, needle, timeout=600):
    """Reads `process`'s output until a line contains `needle`, then sends SIGTERM; returns the output."""
    import signal
    import threading

    timer = threading.Timer(timeout, process.kill)
    timer.start()
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if needle in line:
                process.send_signal(signal.SIGTERM)
                break
        rest = process.communicate(timeout=120)[0]
        seen.append(rest or "")
    finally:
        timer.cancel()
    return "".join(seen)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only); the test is skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# The tools' end-to-end module fixtures take 30-100 s each (BUILD.md, "Test").
# With `--dist loadfile` a worker that picks one of them up last leaves the other
# core idle for its whole run; handing the longest files out first (the
# longest-processing-time rule) keeps both cores busy to the end.
_LONGEST_FILES_FIRST = ("test_reproduce.py", "test_reliability.py", "test_search_alpha.py", "test_export.py",
                        "test_trials.py", "test_static_front.py", "test_plots.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
