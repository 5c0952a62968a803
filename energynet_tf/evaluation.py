"""What the gates chose, image by image: per-image energy, paths, skip ratios by class, threshold sweeps.

The Keras metrics (`metrics.py`) give running means; a mean cannot tell a
network that spends 45% of the energy on every image from one that spends 10%
on easy images and 80% on hard ones. This module keeps every test image's
decisions and summarises their distribution (docs/design.md §3.3:
`per_image_energy`, `distinct_paths`, `selective_blocks`, `savings_by_class`).
"""

import weakref

import numpy as np

# A gated block is "selective" if its test skip ratio lies in this range:
# some images skip it and others run it.
SELECTIVE_RANGE = (0.05, 0.95)
DEFAULT_THRESHOLD = 0.5
# The fields of `summarise` that metrics.json and results.json carry.
SUMMARY_KEYS = ("per_image_energy", "distinct_paths", "selective_blocks", "savings_by_class",
                "skip_ratio_by_class", "gate_logits")


def check_threshold(threshold, name="threshold"):
    """Returns `threshold` as a float in (0, 1).

    Raises:
        ValueError: naming `name` for a value that is not a number in (0, 1).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"Argument `{name}` must be a number in (0, 1); received: {threshold!r}")
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Argument `{name}` must be in (0, 1) (a gate runs its block iff its probability "
                         f"is > {name}); received: {threshold!r}")
    return threshold


def collect(model, dataset, threshold=DEFAULT_THRESHOLD, max_examples=None):
    """Runs `model` over `dataset` at inference; returns every image's label, prediction and decisions.

    Args:
        model: an `EnergyNet` (gated or baseline).
        dataset: batches of `(images, labels)`.
        threshold: the gate threshold (a block runs iff its gate's probability is > it).
        max_examples: stop after this many images (None: the whole dataset).

    Returns:
        A dict of numpy arrays: `labels` (n,), `predictions` (n,),
        `decisions` (n, num_gates) uint8 (1: the block ran), `gate_logits`
        (n, num_gates) float32 (the gates' logits; +inf for a baseline) and
        `energy` (n,) float32, each image's normalised energy (gates charged).
    """
    import tensorflow as tf

    threshold = check_threshold(threshold)
    step = _step_function(model)
    labels, predictions, decisions, logits, energy = [], [], [], [], []
    seen = 0
    t = tf.constant(threshold, tf.float32)
    for x, y in dataset:
        p, d, prob, e = step(x, t)
        prob = np.asarray(prob, np.float64)
        with np.errstate(divide="ignore"):
            logits.append(np.log(prob) - np.log1p(-prob))
        labels.append(np.asarray(y).reshape(-1))
        predictions.append(np.asarray(p))
        decisions.append(np.asarray(d).astype(np.uint8))
        energy.append(np.asarray(e, np.float32))
        seen += len(labels[-1])
        if max_examples is not None and seen >= max_examples:
            break
    cut = slice(0, max_examples)
    num_gates = model.num_gates
    return {
        "labels": np.concatenate(labels)[cut].astype(np.int64),
        "predictions": np.concatenate(predictions)[cut].astype(np.int64),
        "decisions": (np.concatenate(decisions) if decisions else np.zeros((0, num_gates), np.uint8))[cut],
        "gate_logits": np.concatenate(logits)[cut].astype(np.float32),
        "energy": np.concatenate(energy)[cut],
    }


# One traced inference step per model: the threshold is a tensor argument, so
# a sweep over thresholds traces the network once.
_STEPS = weakref.WeakKeyDictionary()


def _step_function(model):
    import tensorflow as tf

    step = _STEPS.get(model)
    if step is None:
        # No AutoGraph: the forward pass has no tensor-dependent Python control
        # flow, and converting it costs seconds per trace (3.3 s vs 0.4 s for
        # ResNet-8 here), paid by every run's final evaluation.
        @tf.function(reduce_retracing=True, autograph=False)
        def step(x, t):
            out = model.forward(x, training=False, threshold=t)
            return (tf.argmax(out["logits"], axis=-1), out["decisions"], out["probabilities"],
                    model.inference_energy(out["decisions"]))

        _STEPS[model] = step
    return step


def _percentiles(values):
    values = np.asarray(values, np.float64)
    return {
        "mean": float(values.mean()), "std": float(values.std()),
        "p10": float(np.percentile(values, 10)), "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "min": float(values.min()), "max": float(values.max()),
    }


def summarise(decisions, labels, energy, num_classes, gate_logits=None):
    """The distribution of what the gates chose over a set of images.

    Args:
        decisions: `(n, num_gates)` 0/1 decisions (1: the block ran).
        labels: `(n,)` integer classes.
        energy: `(n,)` each image's normalised energy, gates charged.
        num_classes: number of classes.
        gate_logits: optional `(n, num_gates)` gate logits, for `gate_logits`.

    Returns:
        A dict: `per_image_energy` ({mean, std, p10, p50, p90, min, max} of
        `energy`), `distinct_paths` (distinct rows of `decisions`),
        `selective_blocks` (gated blocks, numbered from 1, whose skip ratio is in
        `SELECTIVE_RANGE`), `savings_by_class` (1 - mean energy of each class's
        images; None for a class with none), `skip_ratio_by_class` (per class,
        the skip ratio of every gated block), and with `gate_logits`,
        `gate_logits` (per gate: mean, per-image std and the mean distance to
        0 of the logit: a gate can only choose per image if its std is
        comparable to its distance from the threshold).

    Raises:
        ValueError: for inconsistent shapes or no images.
    """
    decisions = np.asarray(decisions)
    labels = np.asarray(labels).reshape(-1)
    energy = np.asarray(energy, np.float64).reshape(-1)
    if decisions.ndim != 2 or decisions.shape[0] != labels.shape[0] or energy.shape[0] != labels.shape[0]:
        raise ValueError(f"decisions {decisions.shape}, labels {labels.shape} and energy {energy.shape} must "
                         "describe the same images")
    if labels.shape[0] == 0:
        raise ValueError("no images to summarise")
    skipped = 1.0 - decisions.astype(np.float64)
    skip_ratio = skipped.mean(axis=0)
    low, high = SELECTIVE_RANGE
    by_class_energy, by_class_skip = [], []
    for c in range(num_classes):
        mine = labels == c
        if not mine.any():
            by_class_energy.append(None)
            by_class_skip.append(None)
            continue
        by_class_energy.append(float(1.0 - energy[mine].mean()))
        by_class_skip.append([float(v) for v in skipped[mine].mean(axis=0)])
    out = {
        "per_image_energy": _percentiles(energy),
        "distinct_paths": int(len(np.unique(decisions.astype(np.uint8), axis=0))) if decisions.shape[1] else 1,
        "selective_blocks": [i + 1 for i, r in enumerate(skip_ratio) if low <= r <= high],
        "savings_by_class": by_class_energy,
        "skip_ratio_by_class": by_class_skip,
    }
    if gate_logits is not None and decisions.shape[1]:
        logits = np.asarray(gate_logits, np.float64)
        finite = np.where(np.isfinite(logits), logits, np.sign(logits) * 50.0)
        out["gate_logits"] = [
            {"mean": float(finite[:, i].mean()), "std": float(finite[:, i].std()),
             "mean_abs": float(np.abs(finite[:, i]).mean())}
            for i in range(logits.shape[1])]
    return out


def evaluate(model, dataset, threshold=DEFAULT_THRESHOLD, max_examples=None):
    """Accuracy, energy savings and the per-image summary of `model` on `dataset` at `threshold`.

    Returns:
        `(summary, arrays)`: `summary` is `summarise`'s dict plus `threshold`,
        `accuracy`, `energy_savings` and `examples`; `arrays` is `collect`'s.
    """
    arrays = collect(model, dataset, threshold, max_examples)
    summary = summarise(arrays["decisions"], arrays["labels"], arrays["energy"], model.num_classes,
                        arrays["gate_logits"])
    summary.update({
        "threshold": float(threshold),
        "accuracy": float((arrays["predictions"] == arrays["labels"]).mean()),
        "energy_savings": float(1.0 - arrays["energy"].mean()),
        "examples": int(len(arrays["labels"])),
    })
    return summary, arrays


def has_gates(model):
    """Whether `model` decides per image: a gated EnergyNet (a baseline has gate slots, no gates)."""
    return not getattr(model, "baseline", False) and bool(getattr(model, "num_gates", 0))


def deal_paths(rng, labels, within_class=False):
    """A permutation of the images: image i runs the path of image `order[i]`.

    Args:
        rng: a `numpy.random.Generator`.
        labels: the images' labels, shape `(n,)`.
        within_class: deal each image the path of an image of its own class
            (the permutation stays inside every class).

    Returns:
        `order`, an int array of shape `(n,)` holding each index once.
    """
    labels = np.asarray(labels).reshape(-1)
    if not within_class:
        return rng.permutation(len(labels))
    order = np.arange(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order[members] = members[rng.permutation(len(members))]
    return order


def shuffle_control(model, dataset, arrays, rounds=5, seed=0, within_class=False, progress=None):
    """Accuracy when every image runs another image's path: what the per-image choice is worth.

    Each round deals the images' decision vectors (`collect`'s, at one
    threshold) out again in a random permutation and runs the network with
    those decisions (`gate_override`). The paths, how often each is taken and
    the mean energy stay exactly the same; only which image gets which path
    changes. The learned assignment's accuracy minus the shuffled one is what
    the gates' choice per image is worth; it is 0 for a static pattern (every
    permutation deals the same path) and near 0 for gates that are
    conditional but choose no better than a coin of the same skip ratios.
    With `within_class`, each image gets the path of another image of its
    own class: what the choice is worth beyond the class (0 for gates whose
    path is a function of the class alone).

    Args:
        model: a gated `EnergyNet`.
        dataset: the batches `arrays` was collected from, in the same order
            (an evaluation split; a shuffled dataset is refused).
        arrays: `collect(model, dataset, ...)`'s dict.
        rounds: permutations to average over (>= 1).
        seed: seed of the permutations.
        within_class: permute only among the images of one class
            (`deal_paths`).
        progress: None or `progress(k, rounds, accuracy)` after each round.

    Returns:
        A dict: `accuracy` (the learned assignment), `shuffled_accuracy`
        (one per round), `shuffled_mean`, `shuffled_std`,
        `decision_value_points` (100 x (accuracy - shuffled_mean)),
        `rounds`, `seed`, `within_class`, `examples`.

    Raises:
        ValueError: for a model without gates, `rounds` < 1, or a dataset
            whose labels do not come back in `arrays`' order.
    """
    import tensorflow as tf

    if not has_gates(model):
        raise ValueError("Argument `model` must have gates (num_gates > 0) for the shuffle control; received a "
                         "network without gates")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"Argument `rounds` must be a positive integer; received: {rounds!r}")
    labels, decisions = arrays["labels"], arrays["decisions"].astype(np.float32)
    n = len(labels)
    accuracy = float((arrays["predictions"] == labels).mean())

    @tf.function(reduce_retracing=True, autograph=False)
    def step(x, override):
        return tf.argmax(model.forward(x, training=False, gate_override=override)["logits"], axis=-1)

    rng = np.random.default_rng(seed)
    shuffled = []
    for k in range(rounds):
        dealt = decisions[deal_paths(rng, labels, within_class)]
        correct, seen = 0, 0
        for x, y in dataset:
            y = np.asarray(y).reshape(-1)[: n - seen]
            if not np.array_equal(y, labels[seen:seen + len(y)]):
                raise ValueError("Argument `dataset` must yield the images of `arrays` in the same order (an "
                                 f"unshuffled evaluation split); the labels differ from image {seen} on")
            x = x[: len(y)]
            correct += int((np.asarray(step(x, tf.constant(dealt[seen:seen + len(y)]))) == y).sum())
            seen += len(y)
            if seen >= n:
                break
        if seen != n:
            raise ValueError(f"Argument `dataset` must hold the {n} images of `arrays`; it ended after {seen}")
        shuffled.append(correct / n)
        if progress is not None:
            progress(k + 1, rounds, shuffled[-1])
    mean = float(np.mean(shuffled))
    return {
        "accuracy": accuracy,
        "shuffled_accuracy": [float(a) for a in shuffled],
        "shuffled_mean": mean,
        "shuffled_std": float(np.std(shuffled)),
        "decision_value_points": 100.0 * (accuracy - mean),
        "rounds": int(rounds),
        "seed": int(seed),
        "within_class": bool(within_class),
        "examples": int(n),
    }


def default_thresholds():
    """0.05, 0.10, ..., 0.95."""
    return [round(0.05 * k, 2) for k in range(1, 20)]


def threshold_sweep(model, dataset, thresholds=None, max_examples=None, progress=None):
    """Accuracy and energy savings of one trained model at several gate thresholds.

    A threshold is an operating point chosen at deployment: no retraining.

    Args:
        model: an `EnergyNet`.
        dataset: batches of `(images, labels)` (the validation split: nothing
            is chosen on the test set).
        thresholds: the thresholds (default `default_thresholds()`).
        max_examples: use the first N images only.
        progress: None or `progress(k, n, row)` called after each threshold.

    Returns:
        A list of dicts {threshold, accuracy, energy_savings, distinct_paths,
        selective_blocks}, in the order of `thresholds`.
    """
    thresholds = default_thresholds() if thresholds is None else [check_threshold(t) for t in thresholds]
    rows = []
    for k, t in enumerate(thresholds):
        summary, _ = evaluate(model, dataset, t, max_examples)
        row = {key: summary[key] for key in ("threshold", "accuracy", "energy_savings", "distinct_paths")}
        row["selective_blocks"] = len(summary["selective_blocks"])
        rows.append(row)
        if progress is not None:
            progress(k + 1, len(thresholds), row)
    return rows

