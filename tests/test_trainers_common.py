"""Tests of trainers/common.py helpers that need no subprocess."""

import json

import keras
import numpy as np
import pytest

from energynet_tf.model import EnergyNet
from trainers import common


def test_init_from_baseline_copies_the_backbone(tmp_path):
    keras.utils.set_random_seed(0)
    baseline = EnergyNet(depth=8, baseline=True)
    for v in baseline.weights:
        if v.trainable:
            v.assign(np.random.default_rng(1).normal(size=v.shape).astype("float32"))
    baseline.save(tmp_path / "model.keras")
    gated = EnergyNet(depth=8)
    gate_before = [w.numpy().copy() for w in gated.gate.weights]
    common.init_from_baseline(gated, str(tmp_path))
    for name in ["stem_conv", "stem_bn", "classifier", "block00", "block01", "block02"]:
        for a, b in zip(gated.get_layer(name).weights, baseline.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(gated.gate.weights, gate_before):
        np.testing.assert_array_equal(a.numpy(), b)
    # With every gate forced open, the gated network computes the baseline.
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    opened = gated.forward(x, gate_override=np.ones(gated.num_gates, "float32"))["logits"]
    np.testing.assert_allclose(opened.numpy(), baseline(x).numpy(), rtol=1e-5, atol=1e-5)


def test_init_from_a_model_of_another_shape_is_refused(tmp_path):
    EnergyNet(depth=14, baseline=True).save(tmp_path / "m.keras")
    with pytest.raises(common.UsageError, match="depth-14"):
        common.init_from_baseline(EnergyNet(depth=8), str(tmp_path / "m.keras"))


def test_check_run_dir_names_the_differing_setting(tmp_path):
    from energynet_tf.schedule import PhaseSchedule
    from trainers.run_config import RunConfig

    config = RunConfig(model_dir=str(tmp_path), depth=8, seed=0)
    (tmp_path / "config.json").write_text(json.dumps(RunConfig(model_dir=str(tmp_path), depth=8, seed=3).to_dict()))
    with pytest.raises(common.UsageError, match=r"seed=3.*seed=0"):
        common.check_run_dir(config)
    # Nested settings are named by their path.
    other = RunConfig(model_dir=str(tmp_path), depth=8, schedule=PhaseSchedule(alpha2=0.5))
    (tmp_path / "config.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(common.UsageError, match=r"schedule.alpha2=0.5.*schedule.alpha2=0.9"):
        common.check_run_dir(config)
    # A run keeps its precision: resuming under another one is refused, naming it.
    (tmp_path / "config.json").write_text(json.dumps(RunConfig(model_dir=str(tmp_path), depth=8, seed=0,
                                                               mixed_precision="bfloat16").to_dict()))
    with pytest.raises(common.UsageError, match=r"mixed_precision='bfloat16'.*mixed_precision='float32'"):
        common.check_run_dir(config)
    # Where the data lives, and the strategy, may change between a run and its resumption.
    moved = RunConfig(model_dir=str(tmp_path), depth=8, data_dir="/elsewhere", strategy="mirrored")
    (tmp_path / "config.json").write_text(json.dumps(moved.to_dict()))
    common.check_run_dir(config)


def test_run_directories_of_the_flat_format_still_resume(tmp_path):
    from trainers.run_config import RunConfig

    # An earlier version's config.json: the schedule's fields at the top level,
    # fields added since (strategy, decoupled_weight_decay, ...) missing.
    flat = {"model_dir": str(tmp_path), "depth": 8, "phase1_epochs": 3, "alpha2": 1.5, "lr1": 0.05,
            "accelerator": {"array_rows": 32, "array_cols": 32, "dataflow": "os", "ifmap_sram_kb": 64,
                            "filter_sram_kb": 64, "ofmap_sram_kb": 64}}
    (tmp_path / "config.json").write_text(json.dumps(flat))
    config = RunConfig.from_dict(dict(flat))
    assert config.schedule.alpha2 == 1.5 and config.decoupled_weight_decay == 0.0
    common.check_run_dir(config)
    import dataclasses

    with pytest.raises(common.UsageError, match="decoupled_weight_decay=0.0.*0.0001"):
        common.check_run_dir(dataclasses.replace(config, decoupled_weight_decay=1e-4))


@pytest.mark.parametrize("fields, needle", [
    ({"batch_size": 0}, "RunConfig.batch_size must be a positive integer; received: 0"),
    ({"depth": 21}, "RunConfig.depth must be one of"),
    ({"strategy": "gpu"}, "RunConfig.strategy must be one of"),
    ({"distill_weight": 0.5}, "RunConfig.distill_weight must be 0 without init_from"),
    ({"distill_weight": -1.0, "init_from": "b.keras"}, "RunConfig.distill_weight must be a finite number >= 0"),
    ({"distill_temperature": 0.0}, "RunConfig.distill_temperature must be a finite number > 0"),
    ({"mixed_precision": "half"}, r"RunConfig.mixed_precision must be one of \('float32', 'bfloat16', 'float16'\)"),
    ({"momentum": 1.0}, r"RunConfig.momentum must be in \[0, 1\)"),
    ({"pin_checkpoints": (0,)}, "RunConfig.pin_checkpoints must be a tuple of epochs >= 1"),
    ({"baseline": True, "depth": 8, "removed_blocks": (3,)}, r"removed_blocks must be gated block numbers in \[1, 2\]"),
    ({"baseline": True, "removed_blocks": (1, 1)}, "removed_blocks must be distinct"),
    ({"batch_shaping_prior": (0.0, 1.0)}, "batch_shaping_prior must be two positive numbers"),
    ({"batch_shaping_prior": (0.5,)}, "batch_shaping_prior must be two positive numbers"),
])
def test_run_config_names_the_refused_field(fields, needle, tmp_path):
    from trainers.run_config import RunConfig

    with pytest.raises(ValueError, match=needle):
        RunConfig(model_dir=str(tmp_path), **fields)


def test_unknown_keys_in_a_config_file_are_refused(tmp_path):
    from trainers.run_config import RunConfig

    with pytest.raises(ValueError, match="unknown run configuration keys: colour"):
        RunConfig.from_dict({"model_dir": str(tmp_path), "colour": "red"})


def test_main_guard_keeps_the_traceback_of_anything_but_the_projects_errors(capsys):
    def bug():
        raise ValueError("a bug, not bad input")

    with pytest.raises(ValueError, match="a bug"):
        common.main_guard(bug)

    def bad_input():
        raise common.UsageError("--depth=21 is not supported")

    with pytest.raises(SystemExit) as exit_info:
        common.main_guard(bad_input)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --depth=21 is not supported"


@pytest.mark.parametrize("precision, policy", [("float32", "float32"), ("bfloat16", "mixed_bfloat16"),
                                               ("float16", "mixed_float16")])
def test_mixed_precision_builds_the_model_under_its_policy(precision, policy, tmp_path):
    from trainers.run_config import RunConfig

    config = RunConfig(model_dir=str(tmp_path), depth=8, mixed_precision=precision)
    model = common.build_model(config, num_classes=10, image_shape=(32, 32, 3))
    assert model.dtype_policy.name == policy and model.gate.compute_dtype == "float32"
    assert RunConfig.from_dict(config.to_dict()).mixed_precision == precision


def test_distill_weight_makes_the_init_from_model_the_teacher(tmp_path):
    import keras
    import numpy as np

    from energynet_tf.model import EnergyNet
    from trainers.run_config import RunConfig

    keras.utils.set_random_seed(3)
    baseline = EnergyNet(depth=8, baseline=True)
    baseline.save(tmp_path / "model.keras")
    gated = EnergyNet(depth=8)
    assert common.attach_teacher(gated, RunConfig(model_dir=str(tmp_path / "r"), depth=8)) is None
    config = RunConfig(model_dir=str(tmp_path / "r"), depth=8, init_from=str(tmp_path), distill_weight=0.5,
                       distill_temperature=2.0)
    teacher = common.attach_teacher(gated, config)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(teacher(x).numpy(), baseline(x).numpy())
    term = gated.loss_terms[-1]
    assert (term.weight, term.temperature) == (0.5, 2.0) and term.teacher is teacher and not teacher.trainable


def test_phase_lists_survive_config_json(tmp_path):
    from energynet_tf.schedule import PhaseSchedule
    from trainers.run_config import RunConfig

    config = RunConfig(model_dir=str(tmp_path), schedule=PhaseSchedule(reinforce_phases=(2, 3),
                                                                        batch_shaping_phases=(1,)))
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.schedule.batch_shaping_phases == (1,) and again.schedule.reinforce_phases == (2, 3)
    assert not again.differences(config)
    # A config.json written before the field existed is the old behaviour: every phase.
    old = config.to_dict()
    del old["schedule"]["batch_shaping_phases"]
    assert RunConfig.from_dict(old).schedule.batch_shaping_phases == (1, 2, 3)
