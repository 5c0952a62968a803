"""Tests of tools/runs.py: running a trainer from a tool, and stopping it the way a terminal does."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from conftest import REPO, tool_env

# Stands in for a trainer: records every signal it gets, and on SIGTERM
# "saves" and exits, as the trainers do (a second signal would stop them at once).
FAKE_TRAINER = textwrap.dedent("""
    import signal, sys, time
    record = sys.argv[1]
    def handle(signum, frame):
        with open(record, "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
        if signum == signal.SIGTERM:
            time.sleep(0.5)  # the step being saved
            sys.exit(143)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    print("training", flush=True)
    time.sleep(120)
""")

# A tool that runs the fake trainer through runs.run_trainer, as tools.reproduce does.
TOOL = textwrap.dedent("""
    import sys
    from energynet_tf import cli
    from tools import runs
    trainer, record, model_dir, log = sys.argv[1:5]
    runs.trainer_command = lambda name, flags: [sys.executable, trainer, record]
    cli.run_tool(lambda: runs.run_trainer("fake", model_dir, [], log), [sys.argv[0]])
""")


def test_ctrl_c_in_a_terminal_reaches_the_trainer_once(tmp_path):
    trainer = tmp_path / "trainer.py"
    trainer.write_text(FAKE_TRAINER)
    record, log = tmp_path / "signals.txt", tmp_path / "fake.log"
    # The tool in its own process group, as a shell runs a foreground job.
    tool = subprocess.Popen([sys.executable, "-c", TOOL, str(trainer), str(record), str(tmp_path / "run"), str(log)],
                            cwd=REPO, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (log.exists() and "training" in log.read_text()):
            time.sleep(0.1)
        assert "training" in log.read_text()
        os.killpg(tool.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        _, err = tool.communicate(timeout=60)
    finally:
        if tool.poll() is None:
            tool.kill()
    assert tool.returncode == 130, err
    assert "interrupted (SIGINT)" in err
    # One signal, the tool's SIGTERM: the trainer saved its step and exited by itself.
    assert record.read_text().split() == ["SIGTERM"]


# The same tool, with the terminal's SIGTERM arriving while `Popen` is starting the trainer (it waits there for
# the child's exec): the window in which a loaded machine once left a trainer running with nobody to stop it.
TOOL_INTERRUPTED_AT_START = textwrap.dedent("""
    import os, signal, subprocess, sys
    from energynet_tf import cli
    from tools import runs
    trainer, record, model_dir, log = sys.argv[1:5]
    runs.trainer_command = lambda name, flags: [sys.executable, trainer, record]
    started, real_popen = [], subprocess.Popen
    def popen_interrupted_while_starting(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)
        return started[-1]
    runs.subprocess.Popen = popen_interrupted_while_starting
    try:
        cli.run_tool(lambda: runs.run_trainer("fake", model_dir, [], log), [sys.argv[0]])
    finally:
        print("trainer still running" if started and started[0].poll() is None else "trainer stopped", flush=True)
""")


def test_an_interrupt_while_the_trainer_starts_stops_the_trainer_too(tmp_path):
    trainer = tmp_path / "trainer.py"
    trainer.write_text(FAKE_TRAINER)
    record, log = tmp_path / "signals.txt", tmp_path / "fake.log"
    result = subprocess.run([sys.executable, "-c", TOOL_INTERRUPTED_AT_START, str(trainer), str(record),
                             str(tmp_path / "run"), str(log)], cwd=REPO, env=tool_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "interrupted (SIGTERM)" in result.stderr
    assert "trainer stopped" in result.stdout, result.stdout


def test_a_tool_that_stops_with_an_error_leaves_no_holder_in_its_lock(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent("""
        import sys
        from energynet_tf import cli
        from tools import runs
        def run():
            runs.lock_directory(sys.argv[1])
            raise cli.UsageError("bad input, found after the lock was taken")
        cli.run_tool(run, [sys.argv[0]])
    """)
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, env=tool_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        # The second run finds the lock free and unnamed: no "took over the lock" note.
        assert "took over" not in result.stderr
    assert (out / ".lock").read_text() == ""


def test_a_trainer_stopped_by_a_full_disk_gives_the_tool_its_line_and_exit_status_4(tmp_path):
    trainer = tmp_path / "trainer.py"
    trainer.write_text(textwrap.dedent("""
        import sys
        print("error: no space left on the device writing /d/run/checkpoints/epoch-0003.keras; nothing partial "
              "was left there; the last complete checkpoint (epoch 2) is kept: /d/run/checkpoints/epoch-0002.keras; "
              "free space on that device and rerun the same command to resume", file=sys.stderr)
        sys.exit(4)
    """))
    log = tmp_path / "fake.log"
    result = subprocess.run([sys.executable, "-c", TOOL, str(trainer), str(tmp_path / "signals.txt"),
                             str(tmp_path / "run"), str(log)], cwd=REPO, env=tool_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 4, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: the fake run failed (exit status 4): no space left on the device writing "
                               "/d/run/checkpoints/epoch-0003.keras")
    assert "epoch-0002.keras" in lines[0] and str(log) in lines[0]
