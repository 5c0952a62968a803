"""Distribution strategies for the trainers, and fit() under MultiWorkerMirroredStrategy.

`make_strategy(name)` builds the strategy a trainer's `--strategy` names.
Under `tf.distribute.MultiWorkerMirroredStrategy`, Keras 3's `Model.fit()`
fails with the pinned versions (keras-team/keras#20585): before the first
step it reduces a distributed data batch across workers to build the model
symbolically, and after every step it reduces scalar logs along axis 0; both
raise. `fit` here keeps `fit()`'s callback protocol (the same callbacks, in
the same order, with the same logs) around the model's own `train_step` and
`test_step`, run with `strategy.run`; the logs are the metrics read in
cross-replica context, so every metric is aggregated over all replicas
(Keras' metric variables are on-read sums of totals and counts).

What training means does not change with the strategy:
- the batch size is the global batch: each worker trains on its slice of
  every global batch of the same stream a single process reads
  (`shard_of_batches`), so the stream stays a pure function of seed and epoch;
- the loss and the energy term are averaged over the global batch (Keras'
  losses and the model's energy term both divide by the replicas);
- the gates' training noise of example `i` of a global batch is the same
  under any number of replicas (`model.EnergyNet._step`);
- batch-norm batch statistics are per replica, as in every data-parallel
  ResNet recipe (a replica's slice is its batch-norm batch); the moving
  statistics are averaged over the replicas after every step.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name):
    """Returns the `tf.distribute.Strategy` that `name` stands for.

    Args:
        name: "default" (one device), "mirrored" (every local GPU, or the CPU),
            "multi_worker" (`MultiWorkerMirroredStrategy` from `TF_CONFIG`) or
            "tpu" (the TPU TensorFlow finds).

    Raises:
        ValueError: for an unknown name, a missing or malformed `TF_CONFIG`,
            or no TPU.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise ValueError(f"strategy 'tpu': TensorFlow finds no TPU here ({type(e).__name__}: {e})") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; received: {name!r}")


def check_tf_config(text):
    """Checks a `TF_CONFIG` value for MultiWorkerMirroredStrategy; returns it parsed.

    Raises:
        ValueError: naming what is missing or wrong.
    """
    if not text:
        raise ValueError(
            "strategy 'multi_worker' needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e}): {text[:200]!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG needs a 'cluster' of jobs and addresses; received: {text[:200]!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG's 'task' must name a job of the cluster ({', '.join(cluster)}) and an index; "
                         f"received: {task!r}")
    index = task.get("index")
    jobs = cluster[task["type"]]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs):
        raise ValueError(f"TF_CONFIG's task index must be in [0, {len(jobs)}) for job {task['type']!r}; "
                         f"received: {index!r}")
    return config


def is_multi_worker(strategy):
    """Whether `strategy` spans processes (MultiWorkerMirroredStrategy)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy):
    """Whether this process writes the run's files: the `chief` task, or worker 0 without one."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def shard_of_batches(dataset, batch_size, num_shards, index):
    """Slice `index` of `num_shards` of every `batch_size` batch of `dataset` (batches of `(images, labels)`).

    Worker `index` gets rows `[index * b / n, (index + 1) * b / n)` of each global
    batch of `b` rows, so the workers' slices of a step together are the
    global batch a single process would train on.

    Raises:
        ValueError: if the global batch does not split evenly.
    """
    if num_shards == 1:
        return dataset
    if batch_size % num_shards:
        raise ValueError(f"the global batch size ({batch_size}) must be a multiple of the number of workers "
                         f"({num_shards})")
    size = batch_size // num_shards
    return dataset.map(lambda x, y: (x[index * size:(index + 1) * size], y[index * size:(index + 1) * size]),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def assign_sum(variable, value):
    """Assigns `value` to an on-read summed variable (a metric's total) so that it reads back as `value`.

    In cross-replica context TensorFlow splits the value over the local
    devices only; across workers that would count it once per worker.
    """
    strategy = tf.distribute.get_strategy()
    workers = 1
    if is_multi_worker(strategy):
        workers = strategy.num_replicas_in_sync // max(len(strategy.extended.worker_devices), 1)
    variable.assign(np.asarray(value, dtype=variable.dtype) / workers if workers > 1 else value)


def weights_digest(model):
    """SHA-256 of every variable of `model`, in order: equal on every worker of a synchronous job."""
    import hashlib

    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return digest.hexdigest()


def _to_python(logs):
    return {k: float(np.asarray(v)) for k, v in logs.items()}


class MultiWorkerTrainer:
    """`fit()` and `evaluate()` for a compiled model under MultiWorkerMirroredStrategy.

    Args:
        model: a compiled Keras model, built in `strategy.scope()`.
        strategy: the `MultiWorkerMirroredStrategy`.
    """

    def __init__(self, model, strategy):
        self.model = model
        self.strategy = strategy
        # Keras 3 keeps batch-norm moving statistics per replica (plain
        # mirrored variables, each replica assigning its own): the chief would
        # save the statistics of its own slices only. Averaging them over the
        # replicas after every step keeps every replica's copy equal to the
        # moving average of the replicas' mean batch statistics (the moving
        # average is linear), as TF 2 Keras' on-read mean variables did.
        # Only these: the model's other non-trainable variables (alpha, the
        # gates' switches) are assigned alike on every replica by the callbacks.
        moving = [v for v in model.non_trainable_variables if v.path.endswith(("moving_mean", "moving_variance"))]
        sizes = [int(np.prod(v.shape)) for v in moving]

        def local_values():
            # One vector, so that one collective averages them all.
            return tf.concat([tf.reshape(tf.cast(v.value, tf.float32), [-1]) for v in moving], axis=0)

        @tf.function
        def train_step(iterator):
            strategy.run(model.train_step, args=(next(iterator),))
            if moving:
                means = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(local_values), axis=None)
                for variable, mean in zip(moving, tf.split(means, sizes)):
                    variable.assign(tf.cast(tf.reshape(mean, variable.shape), variable.dtype))
            return model.get_metrics_result()

        @tf.function
        def test_step(batch):
            strategy.run(model.test_step, args=(batch,))

        @tf.function
        def results():
            return model.get_metrics_result()

        self._train_step, self._test_step, self._results = train_step, test_step, results

    def distribute(self, make_dataset):
        """`make_dataset(num_workers, index)` -> this worker's dataset, distributed."""
        return self.strategy.distribute_datasets_from_function(
            lambda context: make_dataset(context.num_input_pipelines, context.input_pipeline_id))

    def evaluate(self, dataset):
        """Metrics of `dataset`, evaluated in full by every worker (exact: the metrics are ratios of summed totals)."""
        self.model.reset_metrics()
        # Every worker's replica sees every batch: equal step counts on all
        # workers whatever the set's size, and sums of totals and counts that
        # are both the workers' count times the one-process sums.
        for batch in dataset:
            self._test_step(batch)
        return _to_python(self._results())

    def fit(self, make_dataset, *, epochs, initial_epoch, steps_per_epoch, validation_data, callbacks):
        """Keras fit()'s callback protocol: the same hooks, in the same order, with the same logs."""
        model = self.model
        callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, model=model)
        iterator = iter(self.distribute(make_dataset))
        model.stop_training = False
        callback_list.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                logs = _to_python(self._train_step(iterator))
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            epoch_logs = dict(logs)
            if validation_data is not None:
                epoch_logs.update({"val_" + k: v for k, v in self.evaluate(validation_data).items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            logs = epoch_logs
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
        return model.history
