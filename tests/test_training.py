"""Tests of energynet_tf/training.py: checkpoints that survive damage."""

import json

import keras
import pytest

from energynet_tf import training


def _model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def _state(epoch):
    return {"epoch": epoch, "schedule_state": {"phase": 1}, "wall_seconds": float(epoch), "history": [{}] * epoch}


@pytest.fixture
def three_epochs(tmp_path):
    checkpoints = training.RunCheckpoints(str(tmp_path / "checkpoints"), keep=3)
    model = _model()
    for epoch in (1, 2, 3):
        checkpoints.save(model, epoch, _state(epoch))
    return checkpoints, tmp_path / "checkpoints"


def test_latest_is_the_newest_intact_checkpoint(three_epochs):
    checkpoints, _ = three_epochs
    weights, state = checkpoints.latest()
    assert weights.endswith("epoch-0003.keras") and state["epoch"] == 3


@pytest.mark.parametrize("damage", ["truncate_weights", "garble_weights", "remove_weights", "truncate_state",
                                    "remove_state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(three_epochs, damage, capsys):
    checkpoints, directory = three_epochs
    weights, state = directory / "epoch-0003.keras", directory / "epoch-0003.json"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garble_weights":
        data = bytearray(weights.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        weights.write_bytes(bytes(data))
    elif damage == "remove_weights":
        weights.unlink()
    elif damage == "truncate_state":
        state.write_text(state.read_text()[:10])
    else:
        state.unlink()
    path, restored = checkpoints.latest()
    assert path.endswith("epoch-0002.keras") and restored["epoch"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint epoch-0003" in err[0] and "is damaged" in err[0]
    # Nothing the user may still need is deleted: the damaged files are kept aside.
    kept = sorted(p.name for p in directory.iterdir() if p.name.endswith(".damaged"))
    assert kept and all(name.startswith("epoch-0003") for name in kept)
    keras.Model.load_weights(_model(), path)


@pytest.mark.parametrize("content", [None, "", "{not json", '{"epoch": "x"}'])
def test_a_missing_or_damaged_pointer_is_replaced_by_the_files(three_epochs, content, capsys):
    checkpoints, directory = three_epochs
    pointer = directory / "latest.json"
    if content is None:
        pointer.unlink()
    else:
        pointer.write_text(content)
    path, state = checkpoints.latest()
    assert path.endswith("epoch-0003.keras") and state["epoch"] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latest.json" in err[0]


def test_an_unfinished_newer_checkpoint_is_not_damage(three_epochs, capsys):
    checkpoints, directory = three_epochs
    # A kill after the weights of epoch 4 were written but before its state and the pointer.
    (directory / "epoch-0004.keras").write_bytes((directory / "epoch-0003.keras").read_bytes())
    path, state = checkpoints.latest()
    assert path.endswith("epoch-0003.keras") and state["epoch"] == 3
    assert capsys.readouterr().err == ""
    assert (directory / "epoch-0004.keras").exists()


def test_no_intact_checkpoint_stops_with_one_line_naming_the_files(three_epochs):
    checkpoints, directory = three_epochs
    for epoch in (1, 2, 3):
        (directory / f"epoch-{epoch:04d}.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(training.TrainingError, match="epoch-0003, epoch-0002, epoch-0001 are damaged") as info:
        checkpoints.latest()
    assert "\n" not in str(info.value)


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    assert training.RunCheckpoints(str(tmp_path / "none")).latest() is None
    (tmp_path / "empty").mkdir()
    assert training.RunCheckpoints(str(tmp_path / "empty")).latest() is None


def test_state_of_another_epoch_is_damage(three_epochs):
    checkpoints, directory = three_epochs
    (directory / "epoch-0003.json").write_text(json.dumps(_state(7)))
    path, state = checkpoints.latest()
    assert state["epoch"] == 2
