"""Batch-1 latency of a baseline and of EnergyNet exports, next to the predicted savings.

    python -m tools.bench_latency --data_dir=../shared/data/tensorflow_datasets
    python -m tools.bench_latency --data_dir=... --model_dir=runs/energynet38 --out=latency.json

One run measures, side by side and interleaved (so that the load of a shared
machine hits every variant alike), the baseline network and an EnergyNet of
the same depth with all gates open, half of them closed (every other gate),
all closed, and with a policy that depends on the input, on real CIFAR-10 test
images at batch size 1, in TFLite (`ai_edge_litert`, 1 thread) and in the
TensorFlow runtime (the SavedModel's serving signature, 1 intra-op and 1
inter-op thread). The policy is the trained model's with `--model_dir`;
without it, a synthetic input-dependent policy on a randomly initialised
network (`gate_programs.set_input_dependent_gates`: each gate opens for about
`--open_fraction` of the images); latency does not depend on the weights
otherwise. A "masked" row runs the same policy the way training does (every
block runs and is multiplied by its decision), which is where gated ResNets'
missing speed-up comes from.

The images are timed in chunks of `--chunk` consecutive images: within a
chunk the variants run one after another in an order shuffled per chunk, each
warm (two untimed images, then the chunk, as a deployed model runs), and every
round goes through all the chunks; TFLite and the TF runtime are timed in
separate passes. A variant's latency is the mean over images of each image's
median over the rounds. Its ratio to the baseline is paired: per (round,
chunk) cell, the variant's time on the chunk's images divided by the
baseline's on the same images, timed seconds apart, so drift in a shared
machine's load cancels out; per chunk the median over the rounds, the chunks
weighted by the baseline's time (`paired_ratio`). The range printed with a
ratio is that of the same estimate from each round alone. Reported with each:
the predicted MAC and energy ratios (1 - savings, gates included, docs/design.md §1.3)
computed from the decisions the export returned, and the measured latency
ratio to the baseline. Goals checked: TFLite all-open overhead <= 5%, and with
the policy, latency ratio <= 1.05 x the MAC ratio.

The "oracle" line times, for each image, a static network holding only the
blocks its learned decisions open (no gates, no control flow; one TFLite
model per decision pattern, for the `--oracle_patterns` most frequent ones,
on the images that have them). It is what any implementation of the same
skipping can at best reach in the same runtime, so "learned / oracle" is the
price of deciding at run time, and "oracle / baseline" against the MAC ratio
shows how far latency follows MACs on this machine.

The "breakdown" line splits the all-open overhead: "gates only" runs every
block with the gates computed but no `IF`, "branches only" runs every block
in an `IF` with no gates (`export_probes.convert_overhead_probe_to_tflite`).
`--keep_models=DIR` keeps the exported models, e.g. to profile them, and
`benchmarks.litert_keep_branches` makes a runtime copy to run this tool against
(docs/export.md, "Where the all-open overhead goes").

With `--batch_size=B` (default 16; 0 skips), the policy is also timed at batch
size B with the two batched skipping methods ("gather": each block runs on the
examples whose gate is open; "dense": a block runs on the whole batch if any
example needs it) against the baseline, all with resizable TFLite models.
"""

import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError

flags.DEFINE_string("data_dir", None, "tfds data directory holding cifar10/3.0.2 (default: $TFDS_DATA_DIR).")
flags.DEFINE_string("model_dir", None, "A trained run (directory with model.keras, or a .keras file) for the learned policy; default: a synthetic input-dependent policy on a random depth-38 network.")
flags.DEFINE_integer("depth", 38, "Depth of the networks without --model_dir.")
flags.DEFINE_float("open_fraction", 0.5, "Without --model_dir: fraction of images for which each synthetic gate opens.")
flags.DEFINE_integer("examples", 200, "CIFAR-10 test images timed at batch size 1.")
flags.DEFINE_integer("rounds", 5, "Times each image is timed per variant (interleaved rounds).")
flags.DEFINE_integer("chunk", 20, "Images a variant runs in a row before the next variant takes the same images.")
flags.DEFINE_integer("tf_examples", 100, "Images timed in the TensorFlow runtime (slower); 0 skips it.")
flags.DEFINE_integer("batch_size", 16, "Also time the policy at this batch size (gather vs dense vs baseline); 0 skips.")
flags.DEFINE_integer("batch_repeats", 10, "Batches of --batch_size timed per variant and round.")
flags.DEFINE_integer("oracle_patterns", 12, "Oracle: static subnetworks built for the learned policy's this many most frequent decision patterns (0 skips the oracle).")
flags.DEFINE_bool("breakdown", True, "Also time the all-open overhead's two parts: gates without IF, IF branches without gates.")
flags.DEFINE_string("out", None, "Write the results as JSON to this file.")
flags.DEFINE_string("keep_models", None, "Keep the exported models (SavedModels and .tflite files) in this new directory, e.g. to profile them.")
flags.DEFINE_integer("seed", 0, "Seed of the random networks.")

FLAGS = flags.FLAGS



def _check_flags():
    for name in ("examples", "rounds", "chunk"):
        if getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name}={getattr(FLAGS, name)} must be >= 1")
    for name in ("tf_examples", "batch_size", "batch_repeats", "oracle_patterns"):
        if getattr(FLAGS, name) < 0:
            raise UsageError(f"--{name}={getattr(FLAGS, name)} must be >= 0")
    if not 0.0 <= FLAGS.open_fraction <= 1.0:
        raise UsageError(f"--open_fraction={FLAGS.open_fraction} must be in [0, 1]")
    if FLAGS.model_dir and not os.path.exists(FLAGS.model_dir):
        raise UsageError(f"--model_dir={FLAGS.model_dir} does not exist")
    if FLAGS.out and os.path.isdir(FLAGS.out):
        raise UsageError(f"--out={FLAGS.out} is a directory; give a file name")
    if FLAGS.keep_models and os.path.exists(FLAGS.keep_models):
        raise UsageError(f"--keep_models={FLAGS.keep_models} exists; give a new directory")


def _load_images(count):
    from energynet_tf.data import cifar

    try:
        data = cifar.load_cifar10(FLAGS.data_dir, batch_size=1, eval_batch_size=count, validation_examples=0, augment=False)
    except cifar.DataNotFoundError as e:
        raise UsageError(str(e)) from None
    return next(iter(data.test))[0].numpy()


def _load_trained(path):
    import keras

    from energynet_tf import model as _  # noqa: F401  (registers the classes)

    file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise UsageError(f"--model_dir={path} has no model.keras")
    model = keras.saving.load_model(file, compile=False)
    if getattr(model, "gate", None) is None:
        raise UsageError(f"--model_dir={path} is a baseline; give an EnergyNet run")
    return model


def _convert(model, name, workdir, saved_batched="gather", tflite_batched="single"):
    """Exports as `tools.export` does by default (SavedModel "gather", TFLite "single")."""
    from energynet_tf import export

    saved = os.path.join(workdir, name + "_saved_model")
    export.save_saved_model(model, saved, batched=saved_batched)
    tflite = os.path.join(workdir, name + ".tflite")
    with open(tflite, "wb") as f:
        f.write(export.convert_to_tflite(model, batched=tflite_batched))
    return saved, tflite


class _Timed:
    """One timed variant: what the timing loops record for it."""

    signature = None  # a SavedModel signature, for the TF-runtime pass

    def __init__(self, name):
        self.name = name
        self.times = {"tflite": {}, "tf": {}}
        self.cells = {"tflite": {}, "tf": {}}
        self.decisions = {}


def _invoke_timed(interpreter, input_index, images):
    """Sets the input, runs the interpreter and returns the seconds `invoke` took."""
    interpreter.set_tensor(input_index, images)
    start = time.perf_counter()
    interpreter.invoke()
    return time.perf_counter() - start


def _interpreter(path):
    """`(interpreter, input index)` of a one-input .tflite file, 1 thread."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter, interpreter.get_input_details()[0]["index"]


class _Variant(_Timed):
    """An export: its TFLite model and, with `with_tf`, its SavedModel signature."""

    def __init__(self, name, saved, tflite, with_tf):
        import tensorflow as tf

        from energynet_tf import export

        super().__init__(name)
        self.interpreter, self.input, self.outputs = export.tflite_interpreter(tflite, num_threads=1)
        self.batch = 1
        if with_tf:
            self._loaded = tf.saved_model.load(saved)
            self.signature = self._loaded.signatures[export.SERVING_KEY]

    def tflite(self, images, index=None):
        if images.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input, list(images.shape), strict=True)
            self.interpreter.allocate_tensors()
            self.batch = images.shape[0]
        elapsed = _invoke_timed(self.interpreter, self.input, images)
        return elapsed, self.interpreter.get_tensor(self.outputs["decisions"])

    def tf(self, images):
        import tensorflow as tf

        x = tf.constant(images)
        start = time.perf_counter()
        out = self.signature(images=x)
        decisions = out["decisions"].numpy()
        return time.perf_counter() - start, decisions


class _Oracle(_Timed):
    """Per image, the static subnetwork of its learned decisions (TFLite only).

    `patterns` maps a decision tuple to its subnetwork's .tflite path; images
    whose pattern has no subnetwork are not timed.
    """

    def __init__(self, patterns, decisions):
        super().__init__("oracle")
        self.runners = {pattern: _interpreter(path) for pattern, path in patterns.items()}
        self.pattern_of = {i: tuple(int(v) for v in d) for i, d in enumerate(decisions)}

    def covers(self, index):
        return self.pattern_of.get(index) in self.runners

    def tflite(self, images, index=None):
        if not self.covers(index):
            return None, None
        pattern = self.pattern_of[index]
        return _invoke_timed(*self.runners[pattern], images), np.asarray([pattern], np.float32)


class _Probe(_Timed):
    """A batch-1 TFLite model with one input and no decisions output (TFLite only)."""

    def __init__(self, name, path):
        super().__init__(name)
        self.interpreter, self.input = _interpreter(path)

    def tflite(self, images, index=None):
        return _invoke_timed(self.interpreter, self.input, images), None


def _time_batch1(variants, images, tf_count, rounds, order, chunk):
    """Times each variant on every image at batch size 1, in chunks, one runtime at a time.

    Per round and chunk of `chunk` consecutive images of `order`, the
    variants, in an order shuffled per chunk, each run two untimed images and
    then the chunk (warm, as a deployed model runs). Each variant keeps its
    times per image (`times`) and per cell (`cells`: {(round, chunk):
    {image: seconds}}), the same cells for every variant. The TF runtime is
    timed in a separate pass, so its memory traffic does not evict TFLite's
    weights.
    """
    import random

    shuffle = random.Random(0)
    for runtime, count in (("tflite", len(images)), ("tf", tf_count)):
        timed = [v for v in variants if runtime == "tflite" or v.signature is not None]
        indices = [i for i in order if i < count]
        if not indices or not timed:
            continue
        chunks = [indices[k:k + chunk] for k in range(0, len(indices), chunk)]
        for round_ in range(rounds):
            for chunk_index, part in enumerate(chunks):
                shuffle.shuffle(timed)
                for variant in timed:
                    run = variant.tflite if runtime == "tflite" else (lambda x, i, v=variant: v.tf(x))
                    for i in (part * 2)[:2]:  # warm-up
                        run(images[i:i + 1], i)
                    cell = {}
                    for i in part:
                        t, d = run(images[i:i + 1], i)
                        if t is None:
                            continue
                        cell[i] = t
                        variant.times[runtime].setdefault(i, []).append(t)
                        if runtime == "tflite" and d is not None:
                            variant.decisions[i] = d[0]
                    variant.cells[runtime][(round_, chunk_index)] = cell
    result = {}
    for variant in variants:
        row = {}
        for runtime, per_image in variant.times.items():
            if per_image:
                row[runtime + "_ms"] = 1e3 * float(np.mean([np.median(v) for v in per_image.values()]))
        result[variant.name] = row
    return result


def paired_ratio(cells, base_cells):
    """A variant's latency over a baseline's, paired per (round, chunk) cell.

    In each cell both timed the same images seconds apart, so their ratio is
    free of drift in the machine's load. A chunk's ratio is its median over
    the rounds (robust to a stall in one of them), and the chunks combine
    weighted by the baseline's time on them: for a variant whose cost differs
    between chunks (a learned policy), this is the ratio of mean latencies.

    Args:
        cells: the variant's cells, {(round, chunk): {image index: seconds}}.
        base_cells: the baseline's cells, timed alongside.

    Returns:
        `(ratio, (lowest, highest), rounds)`: the ratio, the range of the same
        estimate computed from each round alone, and the number of rounds;
        None if no cell has an image timed by both.
    """
    ratio, weight = {}, {}
    for key, cell in cells.items():
        base = base_cells.get(key, {})
        common = [i for i in cell if i in base]
        if common:
            weight[key] = sum(base[i] for i in common)
            ratio[key] = sum(cell[i] for i in common) / weight[key]
    if not ratio:
        return None
    chunks = sorted({c for _, c in ratio})
    rounds = sorted({r for r, _ in ratio})
    w = {c: float(np.median([weight[k] for k in ratio if k[1] == c])) for c in chunks}

    def combine(values):  # {chunk: ratio}, weighted by the baseline's time
        return sum(w[c] * v for c, v in values.items()) / sum(w[c] for c in values)

    overall = combine({c: float(np.median([ratio[k] for k in ratio if k[1] == c])) for c in chunks})
    per_round = [combine({c: ratio[(r, c)] for c in chunks if (r, c) in ratio}) for r in rounds]
    return overall, (min(per_round), max(per_round)), len(rounds)


def _mean_over(variant, indices):
    return 1e3 * float(np.mean([np.median(variant.times["tflite"][i]) for i in indices]))


def _time_batched(variants, images, batch_size, repeats, rounds, with_tf):
    batches = [images[(i * batch_size) % (len(images) - batch_size + 1):][:batch_size] for i in range(repeats)]
    times = {v.name: {"tflite": [], "tf": []} for v in variants}
    for variant in variants:
        variant.tflite(batches[0])
        if with_tf:
            variant.tf(batches[0])
    for _ in range(rounds):
        for x in batches:
            for variant in variants:
                times[variant.name]["tflite"].append(variant.tflite(x)[0])
                if with_tf:
                    times[variant.name]["tf"].append(variant.tf(x)[0])
    return {
        name: {f"{rt}_ms": 1e3 * float(np.median(v)) for rt, v in t.items() if v}
        for name, t in times.items()
    }


def _predicted(table, decisions):
    from energynet_tf import metrics

    d = np.asarray(decisions, np.float32)
    return {
        "mac_ratio": float(np.mean(metrics.normalised_macs(table, d))),
        "energy_ratio": float(np.mean(metrics.normalised_energy(table, d))),
        "open_fraction": float(d.mean()),
    }


def run():
    _check_flags()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from energynet_tf import export
    from energynet_tf.export import gate_programs
    from tools import export_probes
    from energynet_tf.model import EnergyNet

    started = time.time()
    calibration = 100 if not FLAGS.model_dir else 0
    images = _load_images(FLAGS.examples + calibration + 4 * FLAGS.batch_size)
    bench_images = images[: FLAGS.examples]
    batch_images = images[FLAGS.examples: FLAGS.examples + FLAGS.batch_size * 4] if FLAGS.batch_size else None
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.model_dir:
        model = _load_trained(FLAGS.model_dir)
        policy = f"learned (trained run {FLAGS.model_dir})"
    else:
        model = EnergyNet(depth=FLAGS.depth)
        decisions = gate_programs.set_input_dependent_gates(model, images[-calibration:], open_fraction=FLAGS.open_fraction)
        policy = f"synthetic input-dependent (random depth-{FLAGS.depth} network, each gate open for {decisions.mean():.0%} of its calibration images)"
    baseline = EnergyNet(depth=model.depth, num_classes=model.num_classes, image_shape=model.image_shape, baseline=True)
    table = model.energy_table
    import tempfile

    if FLAGS.keep_models:
        os.makedirs(FLAGS.keep_models)
    workdir = FLAGS.keep_models or tempfile.mkdtemp(prefix="bench-latency-")
    print(f"policy: {policy}; converting ...", flush=True)
    exports = {"baseline": _convert(baseline, "baseline", workdir), "learned": _convert(model, "learned", workdir)}
    exports["masked"] = _convert(model, "masked", workdir, "mask", "mask")
    # The other batched method of each runtime: SavedModel and TFLite "dense".
    exports["learned_other"] = _convert(model, "learned_other", workdir, "dense", "dense")
    if FLAGS.batch_size:  # resizable TFLite models for the batched rows
        batched_tflite = {
            "baseline": export.convert_to_tflite(baseline, "dense"),
            "gather": export.convert_to_tflite(model, "gather"),
        }
    learned_probe = _Variant("probe", *exports["learned"], with_tf=False)
    learned_decisions = np.stack([learned_probe.tflite(bench_images[i:i + 1])[1][0] for i in range(len(bench_images))])
    oracle_patterns = {}
    if FLAGS.oracle_patterns:
        import collections

        counts = collections.Counter(tuple(int(v) for v in d) for d in learned_decisions)
        for k, (pattern, _) in enumerate(counts.most_common(FLAGS.oracle_patterns)):
            path = os.path.join(workdir, f"oracle_{k}.tflite")
            with open(path, "wb") as f:
                f.write(export_probes.convert_subnetwork_to_tflite(model, pattern))
            oracle_patterns[pattern] = path
    gates = model.num_gates
    for name, pattern in (("all_open", [1] * gates), ("half_closed", [i % 2 == 0 for i in range(gates)]), ("all_closed", [0] * gates)):
        gate_programs.force_gate_decisions(model, pattern)  # the trained policy is exported already
        exports[name] = _convert(model, name, workdir)
    probes = {}  # name: .tflite path
    for probe in export_probes.OVERHEAD_PROBES if FLAGS.breakdown else ():  # every block runs in both, whatever the gates' weights
        probes[f"{probe}_only"] = os.path.join(workdir, f"{probe}_only.tflite")
        with open(probes[f"{probe}_only"], "wb") as f:
            f.write(export_probes.convert_overhead_probe_to_tflite(model, probe))
    print(f"converted in {time.time() - started:.0f}s; timing {FLAGS.examples} images x {FLAGS.rounds} rounds ...", flush=True)

    order = ["baseline", "all_open", "half_closed", "all_closed", "learned", "learned_other", "masked"]
    variants = [_Variant(name, *exports[name], with_tf=FLAGS.tf_examples > 0) for name in order]
    if oracle_patterns:
        variants.append(_Oracle(oracle_patterns, learned_decisions))
    variants += [_Probe(name, path) for name, path in probes.items()]
    # Images grouped by decision pattern, so that the oracle (one model per
    # pattern) also runs each of its models on consecutive images.
    order = sorted(range(len(bench_images)), key=lambda i: (tuple(learned_decisions[i]), i))
    measured = _time_batch1(variants, bench_images, FLAGS.tf_examples, FLAGS.rounds, order, FLAGS.chunk)
    rows = []
    by_variant = {v.name: v for v in variants}
    for variant in variants:
        if variant.name == "oracle" or variant.name in probes:
            continue
        if variant.name == "baseline":
            predicted = {"mac_ratio": 1.0, "energy_ratio": 1.0, "open_fraction": 1.0}
        else:
            predicted = _predicted(table, [variant.decisions[i] for i in sorted(variant.decisions)])
        if variant.name == "masked":
            predicted = dict(predicted, note="same decisions as learned, but every block runs (multiplied by 0/1)")
        if variant.name == "learned_other":
            predicted = dict(predicted, note="learned with the other batched method: SavedModel and TFLite 'dense'")
        row = {"variant": variant.name, **predicted, **measured[variant.name]}
        for runtime in ("tflite", "tf"):
            ratio = paired_ratio(variant.cells[runtime], by_variant["baseline"].cells[runtime]) if variant.cells[runtime] else None
            if ratio:
                row[runtime + "_ratio"], row[runtime + "_ratio_range"], row[runtime + "_rounds"] = ratio
        rows.append(row)
    by_name = {r["variant"]: r for r in rows}
    oracle = None
    if oracle_patterns:
        covered = [i for i in range(len(bench_images)) if by_variant["oracle"].covers(i)]
        on = {name: _mean_over(by_variant[name], covered) for name in ("baseline", "learned", "oracle")}
        keep = set(covered)
        cells = {
            name: {key: {i: t for i, t in c.items() if i in keep} for key, c in by_variant[name].cells["tflite"].items()}
            for name in ("baseline", "learned", "oracle")
        }
        paired = {
            "oracle_ratio": paired_ratio(cells["oracle"], cells["baseline"]),
            "learned_ratio": paired_ratio(cells["learned"], cells["baseline"]),
            "learned_over_oracle": paired_ratio(cells["learned"], cells["oracle"]),
        }
        oracle = {
            "patterns": len(oracle_patterns),
            "images": len(covered),
            "mac_ratio": _predicted(table, learned_decisions[covered])["mac_ratio"],
            **{f"{name}_ms": value for name, value in on.items()},
            **{key: value[0] for key, value in paired.items()},
            **{key + "_range": value[1] for key, value in paired.items()},
        }
    breakdown = None
    if probes:
        breakdown = {}
        for name in probes:
            ratio, spread, _ = paired_ratio(by_variant[name].cells["tflite"], by_variant["baseline"].cells["tflite"])
            breakdown[name] = {"tflite_ms": measured[name]["tflite_ms"], "tflite_ratio": ratio, "tflite_ratio_range": spread}
        breakdown["all_open"] = {key: by_name["all_open"][key] for key in ("tflite_ms", "tflite_ratio", "tflite_ratio_range")}
    all_open, learned = by_name["all_open"], by_name["learned"]
    goals = {
        "tflite_all_open_overhead": all_open["tflite_ratio"] - 1.0,
        "tflite_all_open_overhead_range": [r - 1.0 for r in all_open["tflite_ratio_range"]],
        "tflite_all_open_overhead_ok": all_open["tflite_ratio"] - 1.0 <= 0.05,
        "tflite_learned_ratio": learned["tflite_ratio"],
        "tflite_learned_ratio_range": list(learned["tflite_ratio_range"]),
        "tflite_learned_bound": 1.05 * learned["mac_ratio"],
        "tflite_learned_ok": learned["tflite_ratio"] <= 1.05 * learned["mac_ratio"],
    }
    batched = None
    if FLAGS.batch_size:
        batch_variants = []
        for name, saved, content in (
            ("baseline", exports["baseline"][0], batched_tflite["baseline"]),
            ("gather", exports["learned"][0], batched_tflite["gather"]),
            ("dense", *exports["learned_other"]),
        ):
            if isinstance(content, bytes):
                path = os.path.join(workdir, f"batched_{name}.tflite")
                with open(path, "wb") as f:
                    f.write(content)
                content = path
            batch_variants.append(_Variant(name, saved, content, with_tf=FLAGS.tf_examples > 0))
        batched = _time_batched(batch_variants, batch_images, FLAGS.batch_size, FLAGS.batch_repeats, FLAGS.rounds, FLAGS.tf_examples > 0)
        dense = batch_variants[2]
        decisions = np.concatenate([
            dense.tflite(batch_images[i:i + FLAGS.batch_size])[1]
            for i in range(0, len(batch_images) - FLAGS.batch_size + 1, FLAGS.batch_size)
        ])
        batched["predicted"] = _predicted(table, decisions)
        for name in ("gather", "dense"):
            for runtime in ("tflite", "tf"):
                key = runtime + "_ms"
                if key in batched[name]:
                    batched[name][runtime + "_ratio"] = batched[name][key] / batched["baseline"][key]

    result = {
        "command": "python -m tools.bench_latency " + " ".join(sys.argv[1:]),
        "policy": policy,
        "depth": model.depth,
        "examples": FLAGS.examples,
        "tf_examples": FLAGS.tf_examples,
        "rounds": FLAGS.rounds,
        "threads": {"tflite": 1, "tf_intra_op": 1, "tf_inter_op": 1},
        "rows": rows,
        "chunk": FLAGS.chunk,
        "oracle": oracle,
        "breakdown": breakdown,
        "goals": goals,
        "batched": {"batch_size": FLAGS.batch_size, **batched} if batched else None,
        "seconds": round(time.time() - started, 1),
    }
    _print(result)
    if FLAGS.out:
        from energynet_tf import io_utils

        io_utils.atomic_write_json(FLAGS.out, result)
    if FLAGS.keep_models:
        print(f"models kept in {workdir}", flush=True)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _ratio(value, spread):
    return "-" if value is None else f"{value:.3f} ({spread[0]:.3f}-{spread[1]:.3f})"


def _print(result):
    print(f"\n{result['command']}\npolicy: {result['policy']}; batch 1, {result['examples']} CIFAR-10 test images "
          f"(TF runtime: first {result['tf_examples']}), {result['rounds']} rounds in chunks of {result['chunk']}, 1 thread; "
          "ratios paired per chunk (range over the rounds)")
    print("| variant | open blocks | predicted MAC ratio | predicted energy ratio | TFLite ms | TFLite ratio | TF ms | TF ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['variant']} | {r['open_fraction']:.0%} | {r['mac_ratio']:.3f} | {r['energy_ratio']:.3f} | "
              f"{_fmt(r.get('tflite_ms'), '.3f')} | {_ratio(r.get('tflite_ratio'), r.get('tflite_ratio_range'))} | "
              f"{_fmt(r.get('tf_ms'), '.2f')} | {_ratio(r.get('tf_ratio'), r.get('tf_ratio_range'))} |")
    g = result["goals"]
    spread = g["tflite_all_open_overhead_range"]
    print(f"goal: TFLite all-open overhead {g['tflite_all_open_overhead']:+.1%} (rounds {spread[0]:+.1%} to {spread[1]:+.1%}; "
          f"<= 5%: {'met' if g['tflite_all_open_overhead_ok'] else 'NOT met'}); "
          f"learned latency ratio {_ratio(g['tflite_learned_ratio'], g['tflite_learned_ratio_range'])} vs bound 1.05 x MAC ratio = "
          f"{g['tflite_learned_bound']:.3f} ({'met' if g['tflite_learned_ok'] else 'NOT met'})")
    d = result.get("breakdown")
    if d:
        print("all-open overhead breakdown (TFLite ratio to the baseline): " + ", ".join(
            f"{name.replace('_', ' ')} {_ratio(v['tflite_ratio'], v['tflite_ratio_range'])}" for name, v in d.items()))
    o = result.get("oracle")
    if o:
        print(f"oracle (static subnetwork of each image's decisions; {o['patterns']} patterns, {o['images']} images): "
              f"baseline {o['baseline_ms']:.3f} ms, oracle {o['oracle_ms']:.3f} ms (ratio {_ratio(o['oracle_ratio'], o['oracle_ratio_range'])}, "
              f"MAC ratio {o['mac_ratio']:.3f}), learned {o['learned_ms']:.3f} ms (ratio {_ratio(o['learned_ratio'], o['learned_ratio_range'])}; "
              f"{_ratio(o['learned_over_oracle'], o['learned_over_oracle_range'])}x the oracle)")
    b = result.get("batched")
    if b:
        p = b["predicted"]
        print(f"batch {b['batch_size']}, policy open {p['open_fraction']:.0%}, predicted MAC ratio {p['mac_ratio']:.3f}:")
        for name in ("baseline", "gather", "dense"):
            r = b[name]
            print(f"  {name}: TFLite {_fmt(r.get('tflite_ms'), '.2f')} ms (ratio {_fmt(r.get('tflite_ratio', 1.0 if name == 'baseline' else None), '.3f')}), "
                  f"TF {_fmt(r.get('tf_ms'), '.2f')} ms (ratio {_fmt(r.get('tf_ratio', 1.0 if name == 'baseline' and 'tf_ms' in r else None), '.3f')})")
    print(f"done in {result['seconds']:.0f}s", flush=True)


def main(argv):
    cli.run_tool(run, argv)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
