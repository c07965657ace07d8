"""The ``albumentations`` back end: the recipe's albumentations pipeline, in the tf.data pipeline.

albumentations works on uint8 numpy arrays, so it runs through ``tf.numpy_function``. Where it runs:

- A leading ``RandomResizedCrop`` (``p=1``, linear interpolation, in a top-level ``Compose`` with ``p=1``)
  runs in the graph unless ``crop_in_graph: false``, with the keras back end's code and the transform's
  ``scale`` and ``ratio``, then one bilinear resample to ``image_size``. On JPEGs it is
  ``tf.io.decode_and_crop_jpeg`` of a window drawn from the file's header, so only the crop's pixels are
  decoded (TensorFlow's ResNet input pipeline; ``stateless_sample_distorted_bounding_box``: 10 attempts,
  then the whole image, ratio drawn uniformly); on other files a crop of the decoded image (ratio drawn
  log-uniformly as albumentations does, the box clipped to the image instead of redrawn). albumentations
  itself redraws 10 times and then takes a centre crop. Decoding a whole photo only to crop 8-100% of it
  and resize cost more than the rest of the standard policy (BENCHMARKS.md).
- The other transforms run per batch: one ``numpy_function`` call per batch, each image through the
  pipeline in turn (parallel batches overlap in OpenCV, which releases the GIL). Seeding the generators
  once per image cost ~0.1 ms per image (a HorizontalFlip-only pipeline: 0.135 against 0.022 ms bare).
- With ``crop_in_graph: false`` a leading crop keeps the old route: the whole pipeline per image on the
  decoded, full-size image.

OpenCV's own thread pool is switched off (``cv2.setNumThreads(0)``): tf.data already runs one call per
core, and nested pools oversubscribe the cores. Each image gets its own seed (from the batch's or the
element's seed), and each tf.data worker thread its own copy of the pipeline, because
``Compose.set_random_seed`` mutates the pipeline and parallel calls would race on it (and its own uint8
conversion buffer, see ``AlbumentationsPipeline.run_batch``).
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
            local.pipeline = load_albumentations(self._spec, check=False)  # checked in __init__
            local.numpy_random, local.python_random = np.random.default_rng(), random.Random()
            _share_random_state(local.pipeline, local.numpy_random, local.python_random)
        # Reseeding one shared generator pair in place: Compose.set_random_seed builds new generators for
        # every transform, which measured ~0.5 ms per image, a third of the whole standard pipeline.
        local.numpy_random.bit_generator.state = np.random.PCG64(seed).state
        local.python_random.seed(seed)
        return local.pipeline

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        return self._apply(self._pipeline(seed), _to_uint8(image))

    def run_batch(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Each image of ``[B,H,W,C]`` through the pipeline, the generators seeded once for the batch: the
        images draw their parameters one after another, so the same seed gives the same batch.

        Each image is converted to uint8 in a buffer the thread keeps, and its result copied straight into
        the batch. Converting the whole batch and stacking the results allocated two fresh 4.8 MB arrays per
        batch, which inside tf.data cost ~70 page faults per image (``ru_minflt``; none outside it) and 7%
        more CPU per image in the standard policy (BENCHMARKS.md)."""
        pipeline = self._pipeline(seed)
        out = np.empty((len(images), *self._image_size, images.shape[-1]), np.uint8)
        for i, image in enumerate(images):
            out[i] = self._apply(pipeline, self._uint8_buffer(image))
        return out

    def _uint8_buffer(self, image: np.ndarray) -> np.ndarray:
        """``image`` as uint8, in this thread's buffer: valid until the thread's next call, so the caller
        copies the pipeline's result (which may be the buffer itself) before converting the next image."""
        if image.dtype == np.uint8:
            return image
        local = self._local
        if getattr(local, "buffer", None) is None or local.buffer.size != image.size:
            local.buffer = np.empty(image.size, np.uint8)
        return _to_uint8(image, out=local.buffer.reshape(image.shape))

    def _apply(self, pipeline, image: np.ndarray) -> np.ndarray:
        import cv2

        channels = image.shape[-1]
        out = pipeline(image=image)["image"]
        if out.shape[:2] != self._image_size:
            out = cv2.resize(out, self._image_size[::-1], interpolation=cv2.INTER_LINEAR)
        return out.reshape(*self._image_size, channels)


def _to_uint8(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float 0..255 to uint8, rounded and saturated, in one OpenCV pass (TensorFlow's round + clip + cast
    took 0.34 CPU ms per 224x224 image, more than the flip it fed); into ``out`` (uint8, same size) if given.

    The input is the data pipeline's: decoded pixels, or their bilinear resample (a convex combination),
    so within 0..255 up to float rounding. convertScaleAbs takes |x| (a rounding error of -1e-5 still gives
    0), rounds half to even (as np.rint) and saturates at 255; clamping negatives first cost a NumPy pass,
    0.14 CPU ms per image in the standard policy's profile."""
    import cv2

    if images.dtype == np.uint8:
        return images
    flat = np.asarray(images, dtype=np.float32).reshape(-1, images.shape[-1])
    dst = None if out is None else out.reshape(flat.shape)
    return cv2.convertScaleAbs(flat, dst=dst).reshape(images.shape)


def _share_random_state(node, numpy_random, python_random) -> None:
    node.random_generator, node.py_random = numpy_random, python_random
    for child in getattr(node, "transforms", None) or []:
        _share_random_state(child, numpy_random, python_random)


def _split_leading_crop(spec: dict[str, Any]):
    """``(crop, rest)``: the leading RandomResizedCrop that can run in the graph (or None) and the serialised
    pipeline of the transforms after it (None when none are left)."""
    import cv2

    transform = spec["transform"]
    children = transform.get("transforms") or []
    if transform.get("__class_fullname__", "").rsplit(".", 1)[-1] != "Compose" or not children:
        return None, spec
    pipeline = load_albumentations(spec)
    first = pipeline.transforms[0]
    if (type(first).__name__ != "RandomResizedCrop" or first.p < 1.0 or pipeline.p < 1.0
            or first.interpolation != cv2.INTER_LINEAR):
        return None, spec
    rest = dict(transform, transforms=children[1:])
    return first, ({**spec, "transform": rest} if children[1:] else None)


def build_albumentations(spec: dict[str, Any], *, image_size: tuple[int, int], crop_in_graph: bool = True,
                         channels: int = 3):
    """``(image_fn, batch_fn)`` for the data pipeline, either may be None (see the module docstring).

    ``image_fn(image [H,W,C] any size, seed [2] int) -> float32 [*image_size, C]`` (with ``takes_decoded``
    and, for the in-graph crop, ``crop_plan``); ``batch_fn(images [B,*image_size,C] 0..255, seed [2] int) ->
    float32`` images in 0..255. The part that runs in albumentations is first tried on a blank
    ``image_size`` x ``channels`` image (:func:`dry_run`).
    """
    import cv2

    cv2.setNumThreads(0)
    crop, rest = _split_leading_crop(spec) if crop_in_graph else (None, spec)
    if crop is None and _crops_first(spec):  # any input size: hand it the decoded image, per image
        dry_run(spec, image_size=image_size, channels=channels)
        return _per_image_fn(spec, image_size=image_size), None
    if rest is not None:
        dry_run(rest, image_size=image_size, channels=channels)
    image_fn = _in_graph_crop(crop, image_size=image_size) if crop is not None else None
    batch_fn = _per_batch_fn(rest, image_size=image_size) if rest is not None else None
    return image_fn, batch_fn


def dry_run(spec: dict[str, Any], *, image_size: tuple[int, int], channels: int = 3, tries: int = 4) -> None:
    """Run the pipeline on a blank image of the size it will be given, every transform forced on (``p=1``),
    ``tries`` times with different seeds (a ``OneOf`` picks one child per run): a setting that only fails on
    an image (a crop larger than ``data.image_size``, a colour transform on one channel) is then a
    ``ValueError`` before training, not an error inside tf.data in the middle of the first epoch."""
    pipeline = load_albumentations(spec, check=False)
    _force_on(pipeline)
    image = np.full((*image_size, channels), 128, np.uint8)
    for seed in range(tries):
        pipeline.set_random_seed(seed)
        try:
            pipeline(image=image)
        except Exception as exc:  # any failure here would otherwise stop training mid-epoch
            message = " ".join(str(exc).split())
            names = [type(t).__name__ for t in _leaves(pipeline)]
            raise ValueError(
                f"the albumentations pipeline fails on a {image_size[0]}x{image_size[1]} image (data.image_size) "
                f"with {channels} channel(s), every transform on: {type(exc).__name__}: {message}. "
                f"Received: augment.albumentations with transforms {names}"
            ) from None


def _force_on(node) -> None:
    node.p = 1.0
    for child in getattr(node, "transforms", None) or []:
        _force_on(child)


def _leaves(node):
    children = getattr(node, "transforms", None)
    if not children:
        yield node
    for child in children or []:
        yield from _leaves(child)


def _crops_first(spec: dict[str, Any]) -> bool:
    """True when the serialised pipeline starts with a RandomResizedCrop, which makes the output size from
    any input: the data pipeline can then hand it the decoded image (one resample instead of two)."""
    node = spec.get("transform", {})
    while node.get("transforms"):
        node = node["transforms"][0]
    return node.get("__class_fullname__", "").rsplit(".", 1)[-1] == "RandomResizedCrop"


def _in_graph_crop(crop, *, image_size):
    from ftkit.augment import config as C
    from ftkit.augment.keras_backend import build_image_resample

    ops = [("random_resized_crop", C.RandomResizedCrop(scale=tuple(crop.scale), ratio=tuple(crop.ratio)))]
    return build_image_resample(ops, image_size=image_size)  # the transform's `size` gives way to image_size


def _image_seed(seed) -> int:
    # 32 bits of (seed, element) entropy: albumentations seeds Python's and NumPy's generators with it.
    return int(np.random.SeedSequence([int(s) & 0xFFFFFFFF for s in seed]).generate_state(1)[0])


def _per_image_fn(spec, *, image_size):
    pipeline = AlbumentationsPipeline(spec, image_size=image_size)

    def run(image, seed):
        return pipeline(image, _image_seed(seed))

    def fn(image, seed):
        out = tf.numpy_function(run, [image, seed], tf.uint8, stateful=False)
        out.set_shape([*image_size, image.shape[-1]])
        return tf.cast(out, tf.float32)

    fn.takes_decoded = True
    return fn


def _per_batch_fn(spec, *, image_size):
    pipeline = AlbumentationsPipeline(spec, image_size=image_size)

    def run(images, seed):
        return pipeline.run_batch(images, _image_seed(seed))

    def fn(images, seed):
        out = tf.numpy_function(run, [images, seed], tf.uint8, stateful=False)
        out.set_shape([images.shape[0], *image_size, images.shape[-1]])
        return tf.cast(out, tf.float32)

    return fn
