"""Training and validation steps under a ``tf.distribute`` strategy other than the default one.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy`` ("Attempt to convert a value
(PerReplica...)", keras-team/keras#20585, tensorflow#72388), so every distributed strategy trains with
this custom step (``strategy.run`` + ``strategy.reduce``), one code path for ``mirrored`` and
``multi_worker``; the default strategy keeps ``model.fit``.

Semantics, chosen so that a distributed epoch equals a single-device epoch with the same global batch:

- ``data.batch_size`` is the global batch. Step ``i`` takes rows ``order[i*B:(i+1)*B]`` (the same rows as
  on one device) and splits them into one contiguous chunk per replica (the last, partial step as evenly
  as possible; a replica left without rows gets an empty batch from ``tf.distribute``). Each worker's input
  pipeline reads and decodes only its own chunks, so every example is read once per epoch.
- The loss of a step is ``sum(sample_weight * loss) / examples in the global batch``; the optimizer sums
  gradients over replicas, so the update is that of the global-batch mean, as ``model.fit`` computes it.
- BatchNorm layers that train use the global batch's moments while a distributed epoch runs
  (:func:`synchronized_batchnorm`): their batch statistics are those of the global batch, computed in two
  passes as on one device, and every replica's moving averages stay identical.
- The learning rate applies to the global batch as written; nothing rescales it with the replica count.
- ``train.clip_norm`` clips the global norm of the summed (global-batch) gradient, as on one device.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def replica_chunks(rows: np.ndarray, *, global_batch: int, num_replicas: int, steps: int) -> list[list[np.ndarray]]:
    """Per step, the rows of each replica: ``chunks[step][replica]`` (contiguous slices of the global batch)."""
    if global_batch % num_replicas:
        raise ValueError(
            f"data.batch_size is the global batch and must split evenly over the {num_replicas} replicas. "
            f"Received: batch_size={global_batch}"
        )
    chunks = []
    for step in range(steps):
        batch = rows[step * global_batch:(step + 1) * global_batch]
        if len(batch) == 0:
            break
        chunks.append(np.array_split(batch, num_replicas))
    return chunks


def pipeline_dataset(make: Callable[[np.ndarray, int], Any], rows: np.ndarray, *, global_batch: int,
                     num_replicas: int, first_replica: int, local_replicas: int, steps: int):
    """One input pipeline's batches: for each step, its local replicas' chunks in replica order.

    ``make(rows, batch_size)`` returns a dataset of those rows batched by ``batch_size``. Full steps share one
    dataset (equal chunks); the partial last step adds one small dataset per non-empty chunk.
    """
    chunks = replica_chunks(rows, global_batch=global_batch, num_replicas=num_replicas, steps=steps)
    local = slice(first_replica, first_replica + local_replicas)
    per_replica = global_batch // num_replicas
    full = [step[local] for step in chunks if sum(map(len, step)) == global_batch]
    parts = []
    if full:
        parts.append(make(np.concatenate([c for step in full for c in step]), per_replica))
    if len(full) < len(chunks):
        parts.extend(make(c, len(c)) for c in chunks[-1][local] if len(c))
    if not parts:  # fewer rows than replicas: this pipeline feeds empty batches only
        return make(rows[:1], 1).take(0)
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def distribute(strategy, make: Callable[[np.ndarray, int], Any], rows: np.ndarray, *, global_batch: int,
               steps: int):
    """A distributed dataset: each input pipeline (one per worker) builds only its replicas' batches."""
    import tensorflow as tf

    def dataset_fn(context: tf.distribute.InputContext):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        return pipeline_dataset(make, rows, global_batch=global_batch, num_replicas=context.num_replicas_in_sync,
                                first_replica=context.input_pipeline_id * local, local_replicas=local, steps=steps)

    return strategy.distribute_datasets_from_function(dataset_fn)


@contextlib.contextmanager
def synchronized_batchnorm(layers: Sequence[Any]):
    """Give ``layers`` (Keras BatchNormalization) the global batch's moments for the duration.

    Not Keras' own ``synchronized=True``, whose moments are ``E[x^2] - E[x]^2``: in float32 that cancels where
    a channel's mean dwarfs its spread (mean 1000, spread 0.1: a variance of ~1 for 0.01; tested). These take
    one device's two passes (``tf.nn.moments``) over the global batch: all-reduce the sums and counts for the
    mean, then the sums of squared deviations from it. Layers called with a mask keep Keras' masked moments
    (per replica). Written here because neither Keras nor TensorFlow offers a two-pass synchronized version.
    The method is shadowed on each instance (Keras' private ``_moments``, the one place the layer asks for
    them; the test counts the layers it reaches), so a saved model's config and class are untouched.
    """
    try:
        for layer in layers:
            # An instance attribute shadows the method for the duration; object.__setattr__ keeps Keras'
            # attribute tracking out of it (a function is not state to save).
            object.__setattr__(layer, "_moments", functools.partial(_global_moments, layer))
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("_moments", None)


def _global_moments(layer, inputs, mask):
    """``(mean, variance)`` of ``inputs`` over ``layer``'s reduction axes and every replica's batch."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if mask is not None or context is None or context.num_replicas_in_sync == 1:
        return type(layer)._moments(layer, inputs, mask)
    axes = layer._reduction_axes
    local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
    total, count = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                      [tf.reduce_sum(inputs, axis=axes, keepdims=True), local_count])
    mean = tf.math.divide_no_nan(total, count)
    # As tf.nn.moments: the deviations from a constant mean (their sum is zero, so no gradient is lost).
    squares = tf.reduce_sum(tf.math.squared_difference(inputs, tf.stop_gradient(mean)), axis=axes, keepdims=True)
    variance = tf.math.divide_no_nan(context.all_reduce(tf.distribute.ReduceOp.SUM, squares), count)
    return tf.squeeze(mean, axes), tf.squeeze(variance, axes)


class DistributedSteps:
    """The compiled train and validation steps of one model and optimizer under ``strategy``."""

    def __init__(self, strategy, model, optimizer, *, loss_weights: Sequence[float], label_smoothing: float,
                 clip_norm: float | None = None):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.loss_weights = [float(w) for w in loss_weights]
        self.label_smoothing = float(label_smoothing)
        self.clip_norm = clip_norm
        self.train_step = self._make_train_step()
        self.eval_step = self._make_eval_step()

    def _per_example_loss(self, labels, outputs):
        import keras

        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        total = 0.0
        for weight, logits in zip(self.loss_weights, outputs, strict=True):
            total += weight * keras.losses.categorical_crossentropy(labels, logits, from_logits=True,
                                                                    label_smoothing=self.label_smoothing)
        return total, outputs[0]

    @staticmethod
    def _correct(labels, logits):
        import tensorflow as tf

        return tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), tf.float32)

    def _make_train_step(self):
        import tensorflow as tf

        model, optimizer, strategy = self.model, self.optimizer, self.strategy

        def replica_step(batch):
            images, labels, *rest = batch
            context = tf.distribute.get_replica_context()
            count = tf.cast(tf.shape(labels)[0], tf.float32)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            weights = rest[0] if rest else tf.ones_like(labels[:, 0])
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                per_example, logits = self._per_example_loss(labels, outputs)
                loss = tf.reduce_sum(per_example * weights) / tf.maximum(global_count, 1.0)
                if model.losses:  # regularisers: counted once over all replicas
                    loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, model.trainable_variables)
            if self.clip_norm is not None:
                gradients = self._clip_global_norm(gradients, context)
            optimizer.apply(gradients, model.trainable_variables)
            correct = tf.reduce_sum(self._correct(labels, logits) * weights)
            return loss, count, correct, tf.reduce_sum(weights)

        @tf.function
        def train_step(batch):
            results = strategy.run(replica_step, args=(batch,))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in results]

        return train_step

    def _clip_global_norm(self, gradients, context):
        """This replica's gradients scaled so that their sum over replicas has at most ``clip_norm`` global norm.

        Keras's ``global_clipnorm`` clips before the optimizer all-reduces, so each replica would clip its own
        share and the update would differ from one device's; here every replica computes the norm of the summed
        gradient (one more all-reduce of the gradients) and applies the same factor. Gradients are still
        multiplied by the loss scale (mixed_float16), which the norm is divided by."""
        import tensorflow as tf

        present = [g for g in gradients if g is not None]
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
        scale = tf.cast(self.optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        norm = tf.linalg.global_norm(total) / scale
        factor = tf.minimum(1.0, self.clip_norm / norm)  # norm 0: factor 1; non-finite: the step is skipped
        return [None if g is None else g * tf.cast(factor, g.dtype) for g in gradients]

    def _make_eval_step(self):
        import tensorflow as tf

        model, strategy = self.model, self.strategy

        def replica_step(batch):
            images, labels = batch[0], batch[1]
            per_example, logits = self._per_example_loss(labels, model(images, training=False))
            count = tf.cast(tf.shape(labels)[0], tf.float32)
            return tf.reduce_sum(per_example), count, tf.reduce_sum(self._correct(labels, logits))

        @tf.function
        def eval_step(batch):
            results = strategy.run(replica_step, args=(batch,))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in results]

        return eval_step

    def train_epoch(self, dataset, *, steps: int, callbacks) -> dict[str, float]:
        """``steps`` steps over a distributed dataset; the epoch's loss and (sample-weighted) accuracy."""
        loss_sum, count, correct, weight = 0.0, 0.0, 0.0, 0.0
        iterator = iter(dataset)
        for step in range(steps):
            callbacks.on_train_batch_begin(step)
            try:
                batch = next(iterator)
            except StopIteration:
                break
            step_loss, step_count, step_correct, step_weight = self.train_step(batch)
            loss_sum += step_loss * step_count  # the step's loss is already its global-batch mean
            count, correct, weight = count + step_count, correct + step_correct, weight + step_weight
            callbacks.on_train_batch_end(step)
        return {"loss": _ratio(loss_sum, count), "accuracy": _ratio(correct, weight)}

    def evaluate(self, dataset, *, steps: int) -> dict[str, float]:
        loss_sum, count, correct = 0.0, 0.0, 0.0
        iterator = iter(dataset)
        for _ in range(steps):
            try:
                batch = next(iterator)
            except StopIteration:
                break
            step_loss, step_count, step_correct = self.eval_step(batch)
            loss_sum, count, correct = loss_sum + step_loss, count + step_count, correct + step_correct
        return {"val_loss": _ratio(loss_sum, count), "val_accuracy": _ratio(correct, count)}


def _ratio(numerator, denominator) -> float:
    denominator = float(denominator)
    return float(numerator) / denominator if denominator else float("nan")


def worker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is TensorFlow reporting a peer that stopped (heartbeat lost, collective aborted)."""
    import tensorflow as tf

    return isinstance(exc, tf.errors.UnavailableError | tf.errors.DeadlineExceededError | tf.errors.AbortedError |
                      tf.errors.CancelledError)


def lost_detail(exc: BaseException) -> str:
    """The useful part of TensorFlow's message about a lost peer: the tasks it names, or its first line."""
    text = str(exc)
    marker = text.find("unhealthy")  # "The following tasks are unhealthy (stopped sending heartbeats): ..."
    tasks = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", text[marker:]))) if marker >= 0 else []
    if tasks:
        return f"{type(exc).__name__}: stopped sending heartbeats: {', '.join(tasks)}"
    return f"{type(exc).__name__}: {text.strip().splitlines()[0][:200] if text.strip() else ''}"
