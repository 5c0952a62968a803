"""Reliability of the trainer: SIGKILL and resume, determinism, NaN handling."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fake_data_dir(tmp_path_factory):
    from energynet_tf.data import testing

    return testing.make_fake_cifar10(str(tmp_path_factory.mktemp("cifar")))


def _args(data_dir, model_dir, *extra):
    return [sys.executable, "-m", "trainers.cifar", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
            "--depth=8", "--phase1_epochs=3", "--phase2_epochs=2", "--phase3_epochs=1",
            "--batch_size=16", "--eval_batch_size=50", "--max_train_examples=128",
            "--validation_examples=50", "--seed=7", *extra]


def _env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TFDS_DATA_DIR", None)
    return env


def _run(args):
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    metrics.pop("wall_seconds")
    return metrics


@pytest.fixture(scope="module")
def uninterrupted(fake_data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("a") / "run")
    _run(_args(fake_data_dir, model_dir))
    return model_dir


@pytest.mark.slow  # 25 s; the kill-and-resume tests compare with the uninterrupted run, which needs the same
def test_same_seed_gives_identical_metrics(uninterrupted, fake_data_dir, tmp_path):
    again = str(tmp_path / "run")
    _run(_args(fake_data_dir, again))
    assert _metrics(again) == _metrics(uninterrupted)


def _kill_after_epoch_lines(args, epochs_to_see, rng):
    """Starts training, waits for `epochs_to_see` new 'epoch N done' lines, then SIGKILLs at a random moment."""
    process = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    seen = 0
    deadline = time.time() + 240
    for line in process.stdout:
        if " done in " in line and line.startswith("epoch "):
            seen += 1
            if seen >= epochs_to_see:
                break
        if time.time() > deadline:
            break
    # Somewhere inside the next epoch, its validation or its checkpoint write.
    time.sleep(rng.uniform(0.0, 0.6))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def _kill_when_written(args, target):
    """Starts training and SIGKILLs it as soon as `target` (a checkpoint file) exists."""
    process = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert target.exists()


@pytest.mark.slow  # 33 s; the kill inside an epoch and the full-disk rerun check exact resumes in CI
def test_sigkill_at_random_moments_then_resume_gives_the_same_metrics(uninterrupted, fake_data_dir, tmp_path):
    rng = random.Random(1234)
    model_dir = str(tmp_path / "run")
    # Checkpoints every 2 of the 8 steps of an epoch: most kills land inside an
    # epoch and the run resumes at the step (the uninterrupted run made none).
    args = _args(fake_data_dir, model_dir, "--checkpoint_every_steps=2")
    kills = 0
    # An epoch of this tiny run takes well under a second: a kill may come
    # after the run has finished, so try until two kills land or the run is done.
    for _ in range(6):
        if kills == 2 or os.path.exists(os.path.join(model_dir, "metrics.json")):
            break
        code = _kill_after_epoch_lines(args, 1, rng)
        if code == -signal.SIGKILL:
            kills += 1
    assert kills >= 2
    # Never a half-written file: the index of every checkpoint is complete and
    # no metrics.json exists before the end.
    assert not os.path.exists(os.path.join(model_dir, "metrics.json")) or _metrics(model_dir)
    result = _run(args)
    assert "Resuming" in result.stdout
    assert _metrics(model_dir) == _metrics(uninterrupted)


def test_a_kill_inside_an_epoch_resumes_at_the_step_with_the_same_metrics(uninterrupted, fake_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    args = _args(fake_data_dir, model_dir, "--checkpoint_every_steps=3")
    rng = random.Random(99)
    epoch, step = rng.randrange(1, 5), rng.choice((3, 6))
    _kill_when_written(args, model_dir / "checkpoints" / f"epoch-{epoch:04d}-step-{step:06d}.json")
    result = _run(args)
    assert f"(epoch {epoch} + " in result.stdout  # resumed inside the epoch, not at its start
    assert _metrics(model_dir) == _metrics(uninterrupted)


REINFORCE = ("--reinforce_phases=2,3", "--policy_weight=0.5", "--exploration=0.2", "--batch_shaping_weight=0.05")


@pytest.mark.slow  # over 25 s; opt-in with `pytest -m slow` (BUILD.md, "Test")
def test_a_kill_inside_the_reinforcement_stage_resumes_to_the_same_metrics(fake_data_dir, tmp_path):
    # Shorter phases than _args: 1 straight-through epoch, then 2 of reinforcement.
    short = ("--phase1_epochs=1", "--phase2_epochs=2", "--phase3_epochs=0", *REINFORCE)
    whole = tmp_path / "whole"
    _run(_args(fake_data_dir, whole, *short))
    metrics = _metrics(whole)
    # Phase II is the reinforcement stage: the policy loss is on and logged.
    assert [h["policy_weight"] for h in metrics["history"]] == [0.0, 0.5, 0.5]
    assert all("mean_reward" in h and "policy_entropy" in h for h in metrics["history"])
    model_dir = tmp_path / "run"
    args = _args(fake_data_dir, model_dir, *short, "--checkpoint_every_steps=3")
    # Epoch 3 (phase II's second), after 3 of its 8 steps.
    _kill_when_written(args, model_dir / "checkpoints" / "epoch-0002-step-000003.json")
    result = _run(args)
    assert "(epoch 2 + 3 steps" in result.stdout
    assert _metrics(model_dir) == metrics


def _new_modes(tmp_path):
    """The paths-worth-choosing modes at once: from scratch on one decay with its phase III reference,
    stochastic depth in the gate warm-up and in-place distillation."""
    reference = tmp_path / "baseline_metrics.json"
    reference.write_text(json.dumps({"history": [{"val_accuracy": a} for a in (0.0, 0.0, 0.0, 0.0, 0.0)]}))
    return ("--phase1_epochs=2", "--phase2_epochs=2", "--phase3_epochs=1", "--cosine_epochs=5",
            "--gate_warmup_epochs=1", "--drop_blocks=0.5", "--inplace_distill=0.5", "--inplace_temperature=2",
            f"--restore_reference={reference}")


# With -m slow (76 s for one kill on a 2-core AVX2 host): in CI, test_a_kill_inside_an_epoch_resumes_at_the_step...
# checks the exact resume, test_terms.py that the dropped blocks are a pure function of the step, and
# test_callbacks.py the one-decay state's round trip.
@pytest.mark.slow
@pytest.mark.parametrize("kills", [("epoch-0000-step-000003",), ("epoch-0000-step-000003", "epoch-0002-step-000003")])
def test_kills_in_the_warm_up_and_in_phase2_of_the_new_modes_resume_to_the_same_metrics(
        fake_data_dir, tmp_path, kills):
    modes = _new_modes(tmp_path)
    whole = tmp_path / "whole"
    _run(_args(fake_data_dir, whole, *modes))
    metrics = _metrics(whole)
    assert metrics["epochs"] == 5 and "phase II goes on" in metrics["phase3_reason"]
    model_dir = tmp_path / "run"
    args = _args(fake_data_dir, model_dir, *modes, "--checkpoint_every_steps=3")
    # Inside the warm-up (blocks dropped at random), then inside phase II (gates deciding).
    for kill in kills:
        _kill_when_written(args, model_dir / "checkpoints" / f"{kill}.json")
    result = _run(args)
    last = int(kills[-1].split("-")[1])
    assert f"(epoch {last} + 3 steps" in result.stdout
    assert _metrics(model_dir) == metrics


@pytest.mark.slow  # 14 s; test_callbacks.py::test_nan_guard_stops_training checks the guard in CI
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(fake_data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    # Phase I trains normally; phase II's absurd learning rate makes the loss NaN.
    args = _args(fake_data_dir, model_dir, "--lr2=1e30")
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN or infinite" in errors[0] and "epoch-0003.keras" in errors[0]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(model_dir, "metrics.json"))
    with open(os.path.join(model_dir, "checkpoints", "latest.json")) as f:
        assert json.load(f)["epoch"] == 3


# SIGINT is opt-in (16 s): test_a_second_ctrl_c_stops_at_once... and test_runs.py's Ctrl-C test run it in CI.
@pytest.mark.parametrize("signum, status, name", [
    pytest.param(signal.SIGINT, 130, "SIGINT", marks=pytest.mark.slow), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_during_training_stops_with_one_line_and_keeps_the_last_checkpoint(
        fake_data_dir, tmp_path, signum, status, name):
    model_dir = tmp_path / "run"
    args = _args(fake_data_dir, model_dir, "--phase1_epochs=40")
    process = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for line in process.stdout:
            if line.startswith("epoch 2 done"):
                time.sleep(random.uniform(0.0, 0.5))  # somewhere inside epoch 3
                process.send_signal(signum)
                break
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, err[-2000:]
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert f"interrupted ({name})" in errors[0] and "resume with the same command: python -m trainers.cifar " in errors[0]
    assert f"--model_dir={model_dir}" in errors[0]
    # The signal's own checkpoint: the step reached inside epoch 3 (or, at an
    # epoch's last step or in its validation, that epoch's own checkpoint).
    assert "kept the checkpoint at epoch " in errors[0]
    assert "Traceback" not in err
    checkpoints = model_dir / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    pointer = json.loads((checkpoints / "latest.json").read_text())
    # (A signal that lands between "epoch 2 done" and epoch 2's own checkpoint
    # stops right after that checkpoint: epoch 2 + 0 steps.)
    assert 8 * pointer["epoch"] + pointer["step"] >= 8 * 2 and (checkpoints / pointer["weights"]).exists(), (pointer, errors)
    reached = errors[0].split(" in epoch ")[1].split(";")[0]  # "3 at step 5/8"
    epoch, step = int(reached.split()[0]), int(reached.split("step ")[1].split("/")[0])
    assert 8 * pointer["epoch"] + pointer["step"] == 8 * (epoch - 1) + step, (pointer, errors)  # nothing trained is lost


def test_a_second_ctrl_c_stops_at_once_and_the_newest_checkpoint_is_whole(fake_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    args = _args(fake_data_dir, model_dir, "--phase1_epochs=40", "--checkpoint_every_steps=1")
    process = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for line in process.stdout:
            if line.startswith("epoch 2 done"):
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGINT)
                break
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "interrupted (SIGINT)" in errors[0], err[-2000:]
    checkpoints = model_dir / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    pointer = json.loads((checkpoints / "latest.json").read_text())
    assert (checkpoints / pointer["weights"]).exists() and (checkpoints / pointer["state"]).exists()
    # The newest checkpoint loads: the run resumes from it.
    from energynet_tf import training

    weights, state = training.RunCheckpoints(str(checkpoints)).latest()
    assert state["epoch"] >= 2


def test_a_damaged_dataset_stops_the_trainer_before_anything_is_written(fake_data_dir, tmp_path):
    import glob
    import shutil

    copy = tmp_path / "tfds"
    shutil.copytree(fake_data_dir, copy)
    shard = sorted(glob.glob(str(copy / "cifar10" / "3.0.2" / "cifar10-test.tfrecord*")))[0]
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    model_dir = tmp_path / "run"
    result = subprocess.run(_args(copy, model_dir), cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and shard in errors[0] and "CIFAR-10 test split" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not model_dir.exists()


def test_a_full_disk_stops_with_one_line_keeps_the_last_checkpoint_and_the_rerun_resumes(
        uninterrupted, fake_data_dir, small_disk):
    model_dir = small_disk / "run"
    args = _args(fake_data_dir, model_dir, "--checkpoint_every_steps=2")
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 4, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "no space left on the device writing" in errors[0] and "free space" in errors[0]
    assert "the last complete checkpoint (epoch" in errors[0] or "no checkpoint yet" in errors[0]
    leftovers = [name for _, _, files in os.walk(model_dir) for name in files if name.startswith(".tmp-")]
    assert leftovers == []
    # More space, the same command: it resumes and ends where an uninterrupted run ends.
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    again = _run(args)
    assert "Resuming" in again.stdout or "no checkpoint yet" in errors[0]
    assert _metrics(model_dir) == _metrics(uninterrupted)


def _fake_tiny_imagenet(root, wnids=("n01000001", "n02000002", "n03000003", "n04000004"), per_class=8, val=8):
    """An extracted Tiny ImageNet directory of generated 64x64 JPEGs."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"

    def jpeg(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).numpy())

    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    for wnid in wnids:
        for k in range(per_class):
            jpeg(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
    for i in range(val):
        jpeg(base / "val" / "images" / f"val_{i}.JPEG")
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{wnids[i % len(wnids)]}\t0\t0\t63\t63\n" for i in range(val)))
    return base


@pytest.mark.slow  # 26 s; test_a_damaged_dataset_stops_the_trainer_before_anything_is_written runs in CI
def test_a_damaged_jpeg_mid_run_saves_the_step_names_the_file_and_the_rerun_resumes(tmp_path):
    from energynet_tf.data import common
    from energynet_tf.data import tiny_imagenet as ti

    base = _fake_tiny_imagenet(tmp_path / "data")
    held, batch = 8, 4
    train = ti.read_index(ti._open(str(tmp_path / "data")))[1][:-held]
    # The image the first epoch reads in its fourth step (seed 0): steps 1-3 train, then the read fails.
    victim = base / train[int(common.epoch_permutation(0, 0, len(train))[3 * batch])][0]
    intact = victim.read_bytes()
    victim.write_bytes(intact[: len(intact) // 2])
    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "trainers.tiny_imagenet", f"--data_dir={tmp_path / 'data'}",
            f"--model_dir={model_dir}", "--depth=8", "--baseline", "--phase1_epochs=1", f"--batch_size={batch}",
            "--eval_batch_size=8", "--image_size=32", f"--validation_examples={held}"]
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"Tiny ImageNet train split: {victim} is damaged" in errors[0]
    assert "training stopped in epoch 1 at step 3/6" in errors[0] and "kept the checkpoint at epoch 0 + 3 steps" in errors[0]
    assert (model_dir / "checkpoints" / "epoch-0000-step-000003.keras").exists()
    # The file replaced, the same command resumes at that step; a damaged test image then stops the
    # evaluation after training, and once it is replaced the same command only evaluates.
    victim.write_bytes(intact)
    test_image = base / "val" / "images" / "val_5.JPEG"
    test_intact = test_image.read_bytes()
    test_image.write_bytes(b"")
    resumed = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert "Resuming from" in resumed.stdout and "(epoch 0 + 3 steps" in resumed.stdout, resumed.stdout[-2000:]
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"Tiny ImageNet test split: {test_image} is damaged" in errors[0]
    assert "training finished but the test evaluation could not; kept the checkpoint at epoch 1" in errors[0]
    test_image.write_bytes(test_intact)
    again = _run(args)
    assert "Resuming from" in again.stdout and "(epoch 1, " in again.stdout, again.stdout[-2000:]
    assert json.loads((model_dir / "metrics.json").read_text())["epochs"] == 1
