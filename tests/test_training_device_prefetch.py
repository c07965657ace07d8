"""With one GPU visible, training batches are prefetched onto it (issue #3: "when a GPU is present, prefetch onto
the device"). There is no GPU here, so the first GPU is stood in for by the CPU: the wiring and Keras' fit on
such a dataset are what this tests; that the copy overlaps a GPU step is TensorFlow's."""

from __future__ import annotations

import numpy as np
import pytest
from _training_helpers import QUIET, mnist_recipe, register_tiny


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


def _train(mnist, out):
    from ftkit.training import train

    phases = [{"train": "head", "epochs": 1, "lr": 0.05}, {"train": "all", "epochs": 1, "lr": 0.05}]
    return train(mnist_recipe(mnist, phases=phases), out=out, **QUIET)


def test_training_prefetches_onto_the_first_gpu_and_trains_the_same(mnist, tmp_path, monkeypatch):
    import tensorflow as tf

    from ftkit.data import pipeline

    plain = _train(mnist, tmp_path / "plain")
    devices = []
    original = tf.data.experimental.prefetch_to_device

    def spy(device, buffer_size=None):
        devices.append(device)
        return original(device, buffer_size)

    monkeypatch.setattr(pipeline, "_first_gpu", lambda: "/cpu:0")
    monkeypatch.setattr(tf.data.experimental, "prefetch_to_device", spy)
    prefetched = _train(mnist, tmp_path / "prefetched")
    # train and val of each epoch: the cached head phase's features, then the images of the unfrozen phase
    assert devices == ["/cpu:0"] * 4
    for a, b in zip(plain.model.get_weights(), prefetched.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_prefetched_dataset_keeps_its_elements_and_length(monkeypatch):
    import tensorflow as tf

    from ftkit.data import distribute, pipeline

    ds = tf.data.Dataset.range(5).batch(2)
    if pipeline._first_gpu() is None:  # this machine: nothing to prefetch onto, the dataset is returned as is
        assert distribute(ds) is ds
    monkeypatch.setattr(pipeline, "_first_gpu", lambda: "/cpu:0")
    placed = distribute(ds)
    assert placed is not ds
    assert int(placed.cardinality()) == 3  # prefetch_to_device alone reports an unknown length
    assert [b.numpy().tolist() for b in placed] == [[0, 1], [2, 3], [4]]
