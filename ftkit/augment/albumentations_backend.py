"""The ``albumentations`` back end: the recipe's albumentations pipeline, per image, in the tf.data map.

albumentations works on uint8 numpy arrays, so it runs through ``tf.numpy_function`` inside
``map(num_parallel_calls=AUTOTUNE)``. The Python parts hold the GIL but OpenCV releases it inside its
kernels, so parallel calls overlap the heavy work. OpenCV's own thread pool is switched off
(``cv2.setNumThreads(0)``): tf.data already runs one call per core, and nested pools oversubscribe the
cores (measured in BENCHMARKS.md).

Each call gets its own seed (from the element's seed), and each tf.data worker thread its own copy of the
pipeline, because ``Compose.set_random_seed`` mutates the pipeline and parallel calls would race on it.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np
import tensorflow as tf

from ftkit.augment.config import load_albumentations


class AlbumentationsPipeline:
    """The recipe's pipeline, one copy per thread: ``__call__(image uint8 [H,W,C], seed int) -> uint8 [h,w,C]``,
    resized to ``image_size`` when the pipeline's own output size differs."""

    def __init__(self, spec: dict[str, Any], *, image_size: tuple[int, int]):
        self._spec = spec
        self._image_size = tuple(image_size)
        self._local = threading.local()
        load_albumentations(spec)

    def _pipeline(self, seed: int):
        local = self._local
        if getattr(local, "pipeline", None) is None:
            local.pipeline = load_albumentations(self._spec)
            local.numpy_random, local.python_random = np.random.default_rng(), random.Random()
            _share_random_state(local.pipeline, local.numpy_random, local.python_random)
        # Reseeding one shared generator pair in place: Compose.set_random_seed builds new generators for
        # every transform, which measured ~0.5 ms per image, a third of the whole standard pipeline.
        local.numpy_random.bit_generator.state = np.random.PCG64(seed).state
        local.python_random.seed(seed)
        return local.pipeline

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        import cv2

        if image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        channels = image.shape[-1]
        out = self._pipeline(seed)(image=image)["image"]
        if out.shape[:2] != self._image_size:
            out = cv2.resize(out, self._image_size[::-1], interpolation=cv2.INTER_LINEAR)
        return out.reshape(*self._image_size, channels)


def _share_random_state(node, numpy_random, python_random) -> None:
    node.random_generator, node.py_random = numpy_random, python_random
    for child in getattr(node, "transforms", None) or []:
        _share_random_state(child, numpy_random, python_random)


def build_per_image_fn(spec: dict[str, Any], *, image_size: tuple[int, int]):
    """``fn(image [H,W,C] uint8 or float 0..255, seed [2] int) -> float32 [*image_size, C]`` in 0..255."""
    import cv2

    cv2.setNumThreads(0)
    pipeline = AlbumentationsPipeline(spec, image_size=image_size)

    def run(image, seed):
        # 32 bits of (seed, element) entropy: albumentations seeds Python's and NumPy's generators with it.
        return pipeline(image, int(np.random.SeedSequence([int(s) & 0xFFFFFFFF for s in seed]).generate_state(1)[0]))

    def fn(image, seed):
        out = tf.numpy_function(run, [image, seed], tf.uint8, stateful=False)
        out.set_shape([*image_size, image.shape[-1]])
        return tf.cast(out, tf.float32)

    return fn
