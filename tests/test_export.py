"""Tests of energynet_tf/export.py: Keras vs SavedModel vs TFLite, real skipping, input checks."""

import collections
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from energynet_tf import export
from energynet_tf.export import gate_programs
from energynet_tf.export import quantize
from tools import export_probes
from energynet_tf.model import EnergyNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "..", "shared", "data", "tensorflow_datasets")
SHAPE = (32, 32, 3)
# Logits tolerance of the float32 exports (the 1e-4).
ATOL = 1e-4


def _random_images(count, seed=0):
    # Per-example offsets and scales: pooled features, hence gates, differ.
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count,) + SHAPE) * rng.uniform(0.5, 2.0, size=(count, 1, 1, 1))
    return (images + rng.uniform(-1.0, 1.0, size=(count, 1, 1, 1))).astype(np.float32)


def _model(policy, images, depth=8, seed=0):
    """A small EnergyNet whose gates are all open, all closed, or input-dependent."""
    keras.utils.set_random_seed(seed)
    if policy == "baseline":
        return EnergyNet(depth=depth, baseline=True)
    model = EnergyNet(depth=depth)
    if policy == "open":
        # The learned gate computation, pushed to "run" by the output bias.
        model.gate.output_dense.bias.assign([50.0])
    elif policy == "closed":
        model.gate.output_dense.bias.assign([-50.0])
    elif policy == "learned":
        # Input-dependent decisions: half of the images open each gate.
        gate_programs.set_input_dependent_gates(model, images, open_fraction=0.5)
    elif policy == "pattern":
        gate_programs.force_gate_decisions(model, [i % 2 == 0 for i in range(model.num_gates)])
    return model


def _keras(model, images):
    out = model.forward(tf.constant(images), training=False)
    return {
        "logits": out["logits"].numpy(),
        "decisions": out["decisions"].numpy(),
        "probabilities": out["probabilities"].numpy(),
        "energy": np.asarray(model.inference_energy(out["decisions"])),
    }


def _run(served, images, batch):
    outs = [served(images[i:i + batch]) for i in range(0, len(images), batch)]
    return {key: np.concatenate([o[key] for o in outs]) for key in export.OUTPUT_KEYS}


def _assert_parity(got, want, atol=ATOL):
    # Decisions are identical; none of these test inputs sits near p = 0.5.
    assert np.abs(want["probabilities"] - 0.5).min() > 1e-3
    np.testing.assert_array_equal(got["decisions"], want["decisions"])
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=atol)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["energy"], want["energy"], rtol=1e-6)


IMAGES = _random_images(6)
POLICIES = ("open", "closed", "learned", "baseline")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Exports of each policy's model: {policy: (model, export directory)}."""
    result = {}
    for policy in POLICIES:
        model = _model(policy, IMAGES)
        out = tmp_path_factory.mktemp("export") / policy
        export.export_model(model, out)
        result[policy] = (model, str(out))
    return result


def test_test_models_have_the_intended_policies(exports):
    decisions = {p: _keras(m, IMAGES)["decisions"] for p, (m, _) in exports.items()}
    assert decisions["open"].all() and decisions["baseline"].all()
    assert not decisions["closed"].any()
    # The learned policy differs between the examples of one batch, so the
    # batched export takes its "run on the open examples only" path.
    learned = decisions["learned"]
    assert 0 < learned.mean() < 1
    assert all(0 < learned[:, g].mean() < 1 for g in range(learned.shape[1]))


@pytest.mark.parametrize("backend", ["saved_model", "tflite"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("batch", [1, 6, 4])
def test_export_matches_keras_on_random_images(exports, policy, backend, batch):
    model, out = exports[policy]
    served = export.load_exported(out, backend=backend, num_threads=1)
    _assert_parity(_run(served, IMAGES, batch), _keras(model, IMAGES))


def test_energy_output_is_the_normalised_energy_of_the_decisions(exports):
    model, out = exports["learned"]
    got = export.load_exported(out)(IMAGES)
    table = model.energy_table
    expected = (table.fixed_energy + table.gate_energy + got["decisions"] @ np.asarray(table.block_energy)) / table.total_energy
    np.testing.assert_allclose(got["energy"], expected, rtol=1e-6)
    # All closed: only the fixed layers and the gates are spent.
    closed = export.load_exported(exports["closed"][1])(IMAGES)["energy"]
    np.testing.assert_allclose(closed, (table.fixed_energy + table.gate_energy) / table.total_energy, rtol=1e-6)
    np.testing.assert_allclose(export.load_exported(exports["baseline"][1])(IMAGES)["energy"], 1.0, rtol=1e-6)


def test_per_gate_pattern_and_dense_method_match_keras(tmp_path):
    images = _random_images(5, seed=3)
    model = _model("pattern", images, depth=14)
    want = _keras(model, images)
    np.testing.assert_array_equal(want["decisions"][0], [1, 0, 1, 0, 1])
    export.save_saved_model(model, tmp_path / "gather")
    learned = _model("learned", images, depth=14)
    for name, batched in (("dense", "dense"), ("gather_learned", "gather")):
        export.save_saved_model(learned, tmp_path / name, batched=batched)
    signature = lambda name: tf.saved_model.load(str(tmp_path / name)).signatures[export.SERVING_KEY]
    got = signature("gather")(images=tf.constant(images))
    _assert_parity({k: v.numpy() for k, v in got.items()}, want)
    want = _keras(learned, images)
    for name in ("dense", "gather_learned"):
        got = signature(name)(images=tf.constant(images))
        _assert_parity({k: v.numpy() for k, v in got.items()}, want)


def test_tflite_single_takes_one_image_and_dense_a_resizable_batch(tmp_path):
    images = _random_images(6, seed=4)
    model = _model("learned", images, depth=8)
    want = _keras(model, images)
    for batched, batch_dim in (("single", 1), ("dense", -1)):
        path = tmp_path / f"{batched}.tflite"
        path.write_bytes(export.convert_to_tflite(model, batched))
        interpreter, index, _ = export.tflite_interpreter(path)
        details = [d for d in interpreter.get_input_details() if d["index"] == index][0]
        assert details["shape_signature"][0] == batch_dim
        main = export.tflite_op_counts(str(path))[0][1]
        assert main["IF"] == model.num_gates
        branch_ops = set().union(*(c for _, c in export.tflite_op_counts(str(path))[1:]))
        # "single" branches are the plain block: no per-example select.
        assert ("SELECT_V2" in branch_ops) == (batched == "dense")
    for batched in ("single", "dense"):
        tmp = tmp_path / f"export_{batched}"
        export.export_model(model, tmp, tflite_batched=batched)
        got = export.load_exported(tmp, backend="tflite")(images)
        _assert_parity(got, want)
    with pytest.raises(ValueError, match="`batched` must be one of"):
        export.convert_to_tflite(model, "sideways")


@pytest.mark.slow  # 14 s; like the overhead probes, the sub-network export serves tools.bench_latency only
def test_subnetwork_of_an_images_decisions_gives_its_logits(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    images = _random_images(3, seed=5)
    model = _model("learned", images, depth=14)
    want = _keras(model, images)
    for i in range(len(images)):
        content = export_probes.convert_subnetwork_to_tflite(model, want["decisions"][i])
        main = export.tflite_op_counts(content)
        assert len(main) == 1 and "IF" not in main[0][1]
        assert main[0][1]["CONV_2D"] == _fixed_convs(model) + sum(
            len(b.convs) for d, b in zip(want["decisions"][i], model.res_blocks[1:]) if d
        ) + sum(int(b.projection) for b in model.res_blocks[1:])
        runner = Interpreter(model_content=content).get_signature_runner(export.SERVING_KEY)
        got = runner(images=images[i:i + 1])["logits"]
        np.testing.assert_allclose(got, want["logits"][i:i + 1], atol=ATOL)
    with pytest.raises(ValueError, match="`open_blocks` must have 5 entries"):
        export_probes.convert_subnetwork_to_tflite(model, [1, 0])


@pytest.mark.slow  # 15 s; the probes serve tools.bench_latency only (a benchmark), not the exports
def test_overhead_probes_give_the_all_open_logits_with_gates_or_branches_only():
    from ai_edge_litert.interpreter import Interpreter

    images = _random_images(2, seed=7)
    model = _model("open", images, depth=14)
    want = _keras(model, images)
    assert want["decisions"].all()
    gate_ops = {"LOGISTIC", "TANH", "SPLIT"}
    for probe in export_probes.OVERHEAD_PROBES:
        content = export_probes.convert_overhead_probe_to_tflite(model, probe)
        main = export.tflite_op_counts(content)[0][1]
        if probe == "gates":
            assert "IF" not in main and gate_ops <= set(main)
            assert main["CONV_2D"] == _fixed_convs(model) + sum(len(b.convs) + int(b.projection) for b in model.res_blocks[1:])
        else:
            assert main["IF"] == model.num_gates and not gate_ops & set(main)
            assert main["CONV_2D"] == _fixed_convs(model)
        runner = Interpreter(model_content=content).get_signature_runner(export.SERVING_KEY)
        for i in range(len(images)):
            out = runner(images=images[i:i + 1])
            np.testing.assert_allclose(out["logits"], want["logits"][i:i + 1], atol=ATOL)
            if probe == "gates":
                np.testing.assert_allclose(
                    tf.sigmoid(out["gate_logits"]).numpy(), want["probabilities"][i:i + 1], atol=1e-5
                )
    with pytest.raises(ValueError, match="`probe` must be one of"):
        export_probes.convert_overhead_probe_to_tflite(model, "both")
    with pytest.raises(ValueError, match="must be a gated EnergyNet"):
        export_probes.convert_overhead_probe_to_tflite(_model("baseline", images), "gates")


# -- the skipping is real ------------------------------------------------------


def _fixed_convs(model):
    """Convolutions that always run: the stem and block 0's."""
    return 1 + len(model.res_blocks[0].convs) + int(model.res_blocks[0].projection)


def test_tflite_has_one_if_per_gate_and_the_block_convs_in_branches(exports):
    model, out = exports["learned"]
    subgraphs = export.tflite_op_counts(os.path.join(out, export.TFLITE_FILE))
    main_name, main = subgraphs[0]
    assert main["IF"] == model.num_gates
    # No convolution of a gated block is in the main graph: each lives in a
    # branch subgraph that the IF op invokes only when it is taken.
    assert main["CONV_2D"] == _fixed_convs(model)
    branch_convs = sum(c["CONV_2D"] for _, c in subgraphs[1:])
    assert branch_convs > 0
    assert not any(name.startswith("CUSTOM") or name == "FLEX" for _, c in subgraphs for name in c)
    # The baseline has no control flow at all.
    base = export.tflite_op_counts(os.path.join(exports["baseline"][1], export.TFLITE_FILE))
    assert len(base) == 1 and "IF" not in base[0][1]


def test_saved_model_graph_puts_gated_blocks_inside_cond_branches(exports):
    model, out = exports["learned"]
    graph = tf.saved_model.load(os.path.join(out, "saved_model")).signatures[export.SERVING_KEY].graph
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    branches, conds = set(), 0
    for f in library.values():
        for node in f.node_def:
            if node.op in ("If", "StatelessIf"):
                conds += 1
                branches.update({node.attr["then_branch"].func.name, node.attr["else_branch"].func.name})
    # Outer cond per gate, plus the inner "some open / none open" cond.
    assert conds == 2 * model.num_gates
    outside = sum(
        node.op == "Conv2D" for name, f in library.items() if name not in branches for node in f.node_def
    )
    assert outside == _fixed_convs(model)


_STEP_STATS = r"""
import collections, json, sys
import numpy as np, tensorflow as tf
path, images = sys.argv[1], np.load(sys.argv[2])
result = []
with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    sig = tf.compat.v1.saved_model.load(sess, ["serve"], path).signature_def["serving_default"]
    for image in images:
        meta = tf.compat.v1.RunMetadata()
        sess.run(sig.outputs["logits"].name, {sig.inputs["images"].name: image[None]},
                 options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                 run_metadata=meta)
        ops = [n.timeline_label.split(" = ")[1].split("(")[0] for d in meta.step_stats.dev_stats
               for n in d.node_stats if " = " in n.timeline_label]
        result.append(sum("Conv2D" in op for op in ops))
print(json.dumps(result))
"""


def test_closed_blocks_are_not_executed_by_the_tf_runtime(exports, tmp_path):
    # Step statistics list the nodes TensorFlow actually executed: the
    # convolutions of a closed block must not be among them.
    model, out = exports["learned"]
    np.save(tmp_path / "images.npy", IMAGES)
    proc = subprocess.run(
        [sys.executable, "-c", _STEP_STATS, os.path.join(out, "saved_model"), str(tmp_path / "images.npy")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    executed = json.loads(proc.stdout.strip().splitlines()[-1])
    decisions = _keras(model, IMAGES)["decisions"]
    expected = [
        _fixed_convs(model)
        + sum(
            int(block.projection) + len(block.convs) * int(d)
            for block, d in zip(model.res_blocks[1:], row)
        )
        for row in decisions
    ]
    assert executed == expected


@pytest.mark.slow
def test_closed_blocks_cost_no_tflite_time(tmp_path):
    # Timed, so kept out of CI (`pytest -m slow`); the structural tests above
    # check the skipping without a clock, tools/bench_latency.py measures it.
    # Latency is the observable of skipping in TFLite: with every gate closed
    # the model runs the stem, block 0, the projections, the gates and the head.
    images = _random_images(1)
    timings = {}
    interpreters = {}
    for policy in ("open", "closed"):
        model = _model(policy, images, depth=14)
        path = tmp_path / f"{policy}.tflite"
        path.write_bytes(export.convert_to_tflite(model))
        interpreter, index, _ = export.tflite_interpreter(path, num_threads=1)
        interpreter.set_tensor(index, images)
        interpreters[policy] = interpreter
        timings[policy] = []
    for _ in range(5):
        for policy, interpreter in interpreters.items():
            interpreter.invoke()
    for _ in range(40):
        for policy, interpreter in interpreters.items():
            start = time.perf_counter()
            interpreter.invoke()
            timings[policy].append(time.perf_counter() - start)
    ratio = np.median(timings["closed"]) / np.median(timings["open"])
    # Predicted by MACs: about 0.3 for depth 14; a multiplied-by-zero block would give 1.
    assert ratio < 0.6, timings


# -- int8 ------------------------------------------------------------------------


def test_int8_quantises_every_branch_and_keeps_energy_exact(tmp_path):
    images = _random_images(24, seed=5)
    model = _model("learned", images)
    content, info = export.convert_to_tflite_int8(model, images[:16])
    assert info["batch_size"] == 1 and info["calibration_examples"] == 16
    from tensorflow.lite.python import schema_py_generated as schema

    flat = quantize._read_flatbuffer(content)  # pylint: disable=protected-access
    conv = [
        i for i, code in enumerate(flat.operatorCodes)
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.CONV_2D
    ]
    conv_types = collections.Counter(
        g.tensors[op.inputs[1]].type for g in flat.subgraphs for op in (g.operators or []) if op.opcodeIndex in conv
    )
    # Every convolution has int8 weights, those of blocks the calibration
    # images never opened or never closed included.
    assert set(conv_types) == {schema.TensorType.INT8}, conv_types
    path = tmp_path / "int8.tflite"
    path.write_bytes(content)
    served = export.load_exported(path, num_threads=1)
    got = served(images)  # a batch of 24 goes through the batch-1 model one by one
    table = model.energy_table
    expected = (table.fixed_energy + table.gate_energy + got["decisions"] @ np.asarray(table.block_energy)) / table.total_energy
    np.testing.assert_allclose(got["energy"], expected, rtol=1e-6)
    want = _keras(model, images)
    assert (got["decisions"] == want["decisions"]).mean() >= 0.9
    assert (got["logits"].argmax(1) == want["logits"].argmax(1)).mean() >= 0.75


def test_int8_needs_representative_images():
    model = _model("open", IMAGES)
    with pytest.raises(export.ExportError, match="representative images"):
        export.convert_to_tflite_int8(model, None)


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["saved_model", "tflite"])
def test_load_exported_refuses_bad_input_clearly(exports, backend):
    served = export.load_exported(exports["learned"][1], backend=backend)
    with pytest.raises(TypeError, match=r"expected float32 images of shape \(batch,\) \+ \(32, 32, 3\); received dtype uint8 \(uint8 pixels must be normalised"):
        served(np.zeros((1,) + SHAPE, np.uint8))
    with pytest.raises(TypeError, match="received dtype int64"):
        served(np.zeros((1,) + SHAPE, np.int64))
    with pytest.raises(ValueError, match=r"received shape \(1, 31, 32, 3\)"):
        served(np.zeros((1, 31, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"received one image of shape \(32, 32, 3\) \(add a batch axis"):
        served(np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match=r"received shape \(1, 32, 32, 3, 1\)"):
        served(np.zeros((1,) + SHAPE + (1,), np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        served(np.zeros((0,) + SHAPE, np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        served(np.full((1,) + SHAPE, np.nan, np.float32))
    # float64 is converted, and the model still works after refusals.
    np.testing.assert_allclose(served(IMAGES.astype(np.float64))["logits"], served(IMAGES)["logits"], atol=1e-6)


_RAW_SIGNATURE = r"""
import json, sys
import numpy as np, tensorflow as tf
f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
result = {}
for name, x in [("h31", np.zeros((1, 31, 32, 3), np.float32)), ("rank3", np.zeros((32, 32, 3), np.float32)),
                ("rank5", np.zeros((1, 32, 32, 3, 1), np.float32)), ("float64", np.zeros((1, 32, 32, 3), np.float64)),
                ("ok", np.zeros((2, 32, 32, 3), np.float32))]:
    try:
        result[name] = ["ok", list(f(images=tf.constant(x))["logits"].shape)]
    except Exception as e:
        result[name] = [type(e).__name__, getattr(e, "message", str(e))]
print(json.dumps(result))
"""


def test_saved_model_signature_refuses_bad_shapes_without_crashing(exports):
    # A restored signature does not check shapes itself: before the in-graph
    # check, a rank-3 input aborted the process inside oneDNN. Run in a child
    # process so that a crash fails this test only.
    out = os.path.join(exports["learned"][1], "saved_model")
    proc = subprocess.run([sys.executable, "-c", _RAW_SIGNATURE, out], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] == ["ok", [2, 10]]
    for name, shape in (("h31", "[1 31 32 3]"), ("rank3", "[32 32 3]")):
        kind, message = result[name]
        assert kind == "InvalidArgumentError"
        assert "expected float32 images of shape (batch, 32, 32, 3); received shape" in message
        assert shape in message
    assert result["rank5"][0] == "InvalidArgumentError" and "[1 32 32 3 1]" in result["rank5"][1]
    assert result["float64"][0] == "InvalidArgumentError" and "expected to be a float tensor but is a double" in result["float64"][1]


def test_tflite_interpreter_refuses_other_image_sizes(exports):
    interpreter, index, _ = export.tflite_interpreter(os.path.join(exports["learned"][1], export.TFLITE_FILE))
    with pytest.raises(ValueError, match="Dimension mismatch"):
        interpreter.set_tensor(index, np.zeros((1, 31, 32, 3), np.float32))
    with pytest.raises(ValueError, match="expected type FLOAT32"):
        interpreter.set_tensor(index, np.zeros((1,) + SHAPE, np.float64))
    # Only the batch dimension may be resized.
    with pytest.raises(Exception, match="unknown dimensions"):
        interpreter.resize_tensor_input(index, [1, 31, 32, 3], strict=True)


def test_export_refuses_non_empty_directory_and_non_models(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    model = _model("open", IMAGES)
    with pytest.raises(export.ExportError, match="not empty"):
        export.export_model(model, tmp_path / "taken")
    with pytest.raises(export.ExportError, match="EnergyNet"):
        export.export_model(keras.Sequential([keras.layers.Dense(1)]), tmp_path / "other")
    with pytest.raises(export.ExportError, match="not found"):
        export.load_exported(tmp_path / "missing")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


# -- real images -----------------------------------------------------------------


@pytest.mark.integration
def test_export_matches_keras_on_cifar10_images(exports):
    from energynet_tf.data import cifar

    try:
        data = cifar.load_cifar10(DATA_DIR, batch_size=16, eval_batch_size=16, validation_examples=0)
    except cifar.DataNotFoundError as e:
        pytest.skip(str(e))
    images = next(iter(data.test))[0].numpy()
    for policy, (model, out) in exports.items():
        if policy == "learned":
            # Re-derive the input-dependent policy on real images.
            model = _model("learned", images)
            out = out + "_cifar"
            export.export_model(model, out)
        want = _keras(model, images)
        for backend in ("saved_model", "tflite"):
            served = export.load_exported(out, backend=backend, num_threads=1)
            for batch in (1, 16):
                _assert_parity(_run(served, images, batch), want)


def _soft_gate_model(images, depth=14):
    """Input-dependent gates (half of `images` open each) whose probabilities spread over about (0.1, 0.9)."""
    keras.utils.set_random_seed(5)
    model = EnergyNet(depth=depth)
    gate_programs.set_input_dependent_gates(model, images, open_fraction=0.5, margin=3.0)
    return model


@pytest.mark.parametrize("quantile", [0.25, pytest.param(0.75, marks=pytest.mark.slow)])
def test_export_at_another_threshold_matches_keras_at_that_threshold(tmp_path, quantile):
    images = _random_images(12, seed=7)
    model = _soft_gate_model(images)
    at_half = _keras(model, images)
    # A threshold midway between two neighbouring gate probabilities: no
    # probability sits on it, and it changes decisions (else the test proves nothing).
    p = np.unique(at_half["probabilities"])
    k = int(quantile * (len(p) - 1))
    threshold = float(0.5 * (p[k] + p[k + 1]))
    out = model.forward(tf.constant(images), threshold=threshold)
    want = dict(at_half, logits=out["logits"].numpy(), decisions=out["decisions"].numpy(),
                energy=np.asarray(model.inference_energy(out["decisions"])))
    assert (want["decisions"] != at_half["decisions"]).any()
    paths = export.export_model(model, tmp_path / "e", threshold=threshold)
    with open(paths["metadata"]) as f:
        assert json.load(f)["gate_threshold"] == threshold
    for backend, batch in (("saved_model", 5), ("tflite", 1)):
        served = export.load_exported(str(tmp_path / "e"), backend=backend, num_threads=1)
        got = _run(served, images, batch)
        np.testing.assert_array_equal(got["decisions"], want["decisions"])
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(got["energy"], want["energy"], rtol=1e-6)


def test_export_refuses_a_bad_threshold(tmp_path):
    with pytest.raises(export.ExportError, match="threshold"):
        export.export_model(EnergyNet(depth=8), tmp_path / "e", threshold=1.0, tflite=False)
    assert not (tmp_path / "e").exists()


def test_a_plain_network_with_removed_blocks_exports_its_fixed_pattern(tmp_path):
    keras.utils.set_random_seed(1)
    model = EnergyNet(depth=14, baseline=True, removed_blocks=[1, 4])
    images = _random_images(4, seed=2)
    want = _keras(model, images)
    np.testing.assert_array_equal(want["decisions"], np.tile([0, 1, 1, 0, 1], (4, 1)))
    paths = export.export_model(model, tmp_path / "e")
    for backend in ("saved_model", "tflite"):
        got = _run(export.load_exported(str(tmp_path / "e"), backend=backend, num_threads=1), images, 1)
        np.testing.assert_array_equal(got["decisions"], want["decisions"])
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(got["energy"], want["energy"], rtol=1e-6)
    assert os.path.exists(paths["tflite"])


def test_a_converted_keras_resnet_exports_with_real_skipping_and_parity(tmp_path):
    import energynet_tf
    from test_convert import _randomise_bn, cifar_resnet

    keras.utils.set_random_seed(3)
    original = cifar_resnet(blocks_per_stage=(2, 2, 2), widths=(8, 16, 32))
    _randomise_bn(original)
    model = energynet_tf.from_keras(original)
    images = _random_images(6, seed=4)
    gate_programs.set_input_dependent_gates(model, images, open_fraction=0.5)
    want = _keras(model, images)
    assert 0 < want["decisions"].mean() < 1
    paths = export.export_model(model, tmp_path / "e")
    for backend, batch in (("saved_model", 4), ("tflite", 1)):
        _assert_parity(_run(export.load_exported(str(tmp_path / "e"), backend=backend, num_threads=1), images,
                            batch), want)
    subgraphs = export.tflite_op_counts(paths["tflite"])
    main = subgraphs[0][1]
    # One IF per gate; every gated branch's two convolutions live in IF branches, never in the main graph
    # (which keeps the stem's and unit 0's; a projection runs in both branches of its unit's IF).
    assert main["IF"] == model.num_gates == 5 and main["CONV_2D"] == 1 + 2
    assert sum(c.get("CONV_2D", 0) for _, c in subgraphs[1:]) >= 2 * model.num_gates
    meta = json.loads(open(paths["metadata"]).read())
    assert meta["model"]["source"] == "cifar_resnet" and meta["model"]["depth"] is None


def test_a_mixed_precision_model_exports_a_float32_graph_with_parity(tmp_path):
    keras.utils.set_random_seed(0)
    model = EnergyNet(depth=8, dtype="mixed_bfloat16")
    gate_programs.set_input_dependent_gates(model, IMAGES, open_fraction=0.5)
    want = _keras(export.float32_model(model), IMAGES)
    assert 0 < want["decisions"].mean() < 1
    export.export_model(model, tmp_path / "e")
    for backend, batch in (("saved_model", 6), ("tflite", 1)):
        _assert_parity(_run(export.load_exported(str(tmp_path / "e"), backend=backend, num_threads=1), IMAGES,
                            batch), want)
