"""The ``keras`` back end: in-graph ops on whole batches ``[B, H, W, C]`` float32 in 0..255.

Each op builder returns ``fn(images, seed) -> images`` where ``seed`` is a stateless seed (int ``[2]``)
for that batch. Op by op on a 2-core CPU (batch 32 at 224x224, see BENCHMARKS.md), several Keras /
keras-cv layers cost more than decoding the batch, so the ops that a standard policy uses are written
here with stateless ``tf.image`` / matrix ops on per-image random parameters:

- random resized crop: ``tf.image.crop_and_resize`` with one random box per image (keras-cv's
  ``RandomCropAndResize`` resamples the same way but draws from a stateful generator);
- colour jitter: brightness, contrast, saturation and hue are all linear in RGB (hue as a rotation about
  the grey axis in YIQ, as NVIDIA DALI's ``hsv`` operator does), so they compose into one 3x3 matrix and
  offset per image, applied in one pass (a multiply-add per channel, fused by XLA); Keras'
  ``RandomColorJitter`` converts to HSV and back (~30x slower here). Unlike torchvision the order is fixed (brightness, contrast, saturation, hue)
  and values are clipped once at the end;
- flip, random erasing and cutout: a per-image select / box mask, one pass over the batch.

Rotation, zoom and translation use Keras core layers through their ``get_random_transformation(seed=...)``
/ ``transform_images`` split, with a seed object that hands out numbers derived from the batch's stateless
seed: reproducible under parallel maps like the ops above. AugMix (Keras core), RandAugment and GridMask
(keras-cv; its RandAugment measured ~3.5x faster than Keras core's) draw inside the layer from the layer's
own stateful generator, which no argument reaches (AugMix picks its chains with Python's ``random`` at
trace time, seeded here from the layer seed): they are in :data:`ORDER_DEPENDENT_OPS` and reproduce only
when batches are augmented one at a time, in order, by a freshly built augmentation (``ordered`` on the
per-batch function makes ``ftkit.data.make_dataset`` and ``Augmentation.augment_batches`` do that).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable

import keras
import tensorflow as tf

from ftkit.augment import config as C

OpFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _crop_boxes(seed, batch, height, width, params: C.RandomResizedCrop | None):
    """``[B, 4]`` normalised boxes of pixel area fraction ``params.scale`` and pixel aspect
    ``params.ratio`` at uniform random positions; the whole image when ``params`` is None."""
    if params is None:
        return tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), [batch, 1])
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    area = _uniform(seeds[0], [batch], *params.scale)
    ratio = tf.exp(_uniform(seeds[1], [batch], math.log(params.ratio[0]), math.log(params.ratio[1])))
    # torchvision retries out-of-bounds draws up to 10 times; clipping keeps this one batched op.
    box_w = tf.minimum(tf.sqrt(area * ratio * height / width), 1.0)
    box_h = tf.minimum(tf.sqrt(area / ratio * width / height), 1.0)
    y1 = _uniform(seeds[2], [batch], 0.0, 1.0) * (1.0 - box_h)
    x1 = _uniform(seeds[3], [batch], 0.0, 1.0) * (1.0 - box_w)
    return tf.stack([y1, x1, y1 + box_h, x1 + box_w], axis=1)


def _flip_boxes(seed, boxes, mode: str):
    """Flip boxes with probability 0.5 per axis: ``crop_and_resize`` samples a box whose y1 > y2 (x1 > x2)
    upside down (mirrored), so a flip costs nothing on top of the crop."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=1)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    batch = tf.shape(boxes)[0]
    if mode in ("horizontal", "horizontal_and_vertical"):
        flip = _uniform(seeds[0], [batch], 0.0, 1.0) < 0.5
        x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
    if mode in ("vertical", "horizontal_and_vertical"):
        flip = _uniform(seeds[1], [batch], 0.0, 1.0) < 0.5
        y1, y2 = tf.where(flip, y2, y1), tf.where(flip, y1, y2)
    return tf.stack([y1, x1, y2, x2], axis=1)


def build_resample(ops: list[tuple[str, C._Op]], *, image_size: tuple[int, int]) -> OpFn:
    """One bilinear resample for a leading run of ``random_resized_crop`` / ``flip`` ops:
    ``fn(images [B,H,W,C] any size, seed) -> float32 [B, *image_size, C]``."""

    def fn(images, seed):
        batch = tf.shape(images)[0]
        height = tf.cast(tf.shape(images)[1], tf.float32)
        width = tf.cast(tf.shape(images)[2], tf.float32)
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(ops)))
        boxes = _crop_boxes(seeds[0], batch, height, width, None)
        for (name, params), op_seed in zip(ops, seeds, strict=True):
            if name == "random_resized_crop":
                boxes = _crop_boxes(op_seed, batch, height, width, params)
            else:
                boxes = _flip_boxes(op_seed, boxes, params.mode)
        return tf.image.crop_and_resize(images, boxes, tf.range(batch), image_size)

    return fn


def _random_resized_crop(params: C.RandomResizedCrop, *, image_size, layer_seed) -> OpFn:
    resample = build_resample([("random_resized_crop", params)], image_size=image_size)
    return resample


def _flip(params: C.Flip, *, image_size, layer_seed) -> OpFn:
    axes = {"horizontal": [2], "vertical": [1], "horizontal_and_vertical": [1, 2]}[params.mode]

    def fn(images, seed):
        batch = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, len(axes))
        for axis, axis_seed in zip(axes, tf.unstack(seeds), strict=True):
            flip = _uniform(axis_seed, [batch, 1, 1, 1], 0.0, 1.0) < 0.5
            images = tf.where(flip, tf.reverse(images, [axis]), images)
        return images

    return fn


# Rec. 601 luma weights (what tf.image.rgb_to_grayscale uses) and the RGB -> YIQ matrix.
_LUMA = tf.constant([0.299, 0.587, 0.114])
_RGB_TO_YIQ = tf.constant([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _color_jitter(params: C.ColorJitter, *, image_size, layer_seed) -> OpFn:
    def factor(seed, batch, amount):
        return _uniform(seed, [batch, 1, 1], 1.0 - amount, 1.0 + amount)

    def fn(images, seed):
        batch = tf.shape(images)[0]
        channels = images.shape[-1]
        if channels != 3:
            raise ValueError(f"color_jitter needs RGB images. Received: channels={channels}")
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        eye = tf.eye(3, batch_shape=[batch])
        # Pixels are row vectors: out = pixel @ matrix + offset.
        matrix = eye * factor(seeds[0], batch, params.brightness)
        offset = tf.zeros([batch, 1, 3])
        if params.contrast:
            mean = tf.reduce_mean(images, axis=[1, 2])[:, None, :] @ matrix + offset
            grey_mean = tf.reduce_sum(mean * _LUMA, axis=-1, keepdims=True)
            c = factor(seeds[1], batch, params.contrast)
            matrix, offset = matrix * c, offset * c + (1.0 - c) * grey_mean
        if params.saturation:
            s = factor(seeds[2], batch, params.saturation)
            to_grey = tf.tile(_LUMA[:, None], [1, 3])
            saturate = s * eye + (1.0 - s) * to_grey
            matrix, offset = matrix @ saturate, offset @ saturate
        if params.hue:
            angle = _uniform(seeds[3], [batch], -params.hue, params.hue) * (2.0 * math.pi)
            cos, sin, zero, one = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle), tf.ones_like(angle)
            rotate = tf.reshape(tf.stack([one, zero, zero, zero, cos, sin, zero, -sin, cos], axis=1), [-1, 3, 3])
            yiq = tf.transpose(_RGB_TO_YIQ)
            hue = yiq @ rotate @ tf.linalg.inv(yiq)
            matrix, offset = matrix @ hue, offset @ hue
        # One multiply-add per input channel, which XLA fuses into one loop over the pixels: 0.305 vs 0.455 CPU s
        # per 1000 images at 224x224 for einsum("bhwc,bcd->bhwd") under XLA (a matmul of inner size 3).
        rows = matrix[:, None, None]
        return (images[..., 0:1] * rows[..., 0, :] + images[..., 1:2] * rows[..., 1, :]
                + images[..., 2:3] * rows[..., 2, :] + offset[:, None])

    return fn


def _box_mask(seed, images, *, probability, area, ratio):
    """A ``[B, H, W, 1]`` bool mask: per image, with ``probability``, one box of ``area`` fraction and
    pixel aspect ``ratio`` (each ``[B]``) at a uniform random centre, clipped at the border."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    box_h = tf.sqrt(area * h * w / ratio)[:, None]
    box_w = tf.sqrt(area * h * w * ratio)[:, None]
    centre_y = _uniform(seeds[0], [batch, 1], 0.0, h)
    centre_x = _uniform(seeds[1], [batch, 1], 0.0, w)
    rows = tf.range(h)[None, :] + 0.5
    cols = tf.range(w)[None, :] + 0.5
    in_rows = tf.abs(rows - centre_y) < box_h / 2
    in_cols = tf.abs(cols - centre_x) < box_w / 2
    apply = _uniform(seeds[2], [batch, 1, 1], 0.0, 1.0) < probability
    return (in_rows[:, :, None] & in_cols[:, None, :] & apply)[..., None]


def _fill(images, mask, seed, fill):
    if fill == "zero":
        values = tf.zeros([], images.dtype)
    elif fill == "mean":
        values = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    else:
        values = tf.random.stateless_uniform(tf.shape(images), seed=seed, minval=0.0, maxval=255.0)
    return tf.where(mask, values, images)


def _random_erasing(params: C.RandomErasing, *, image_size, layer_seed) -> OpFn:
    log_ratio = (math.log(params.ratio[0]), math.log(params.ratio[1]))

    def fn(images, seed):
        batch = tf.shape(images)[0]
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        area = _uniform(seeds[0], [batch], *params.scale)
        ratio = tf.exp(_uniform(seeds[1], [batch], *log_ratio))
        mask = _box_mask(seeds[2], images, probability=params.probability, area=area, ratio=ratio)
        return _fill(images, mask, seeds[3], params.fill)

    return fn


def _cutout(params: C.Cutout, *, image_size, layer_seed) -> OpFn:
    def fn(images, seed):
        batch = tf.shape(images)[0]
        short = tf.cast(tf.minimum(tf.shape(images)[1], tf.shape(images)[2]), tf.float32)
        h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        area = tf.fill([batch], (params.size * short) ** 2 / (h * w))
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        mask = _box_mask(seeds[0], images, probability=params.probability, area=area, ratio=tf.ones([batch]))
        return _fill(images, mask, seeds[1], params.fill)

    return fn


class _StatelessSeed(keras.random.SeedGenerator):
    """Stands in for a layer's ``SeedGenerator`` in ``get_random_transformation(seed=...)``: each draw gets
    a new stateless seed folded from the batch's seed, so the layer keeps no state between batches."""

    def __init__(self, seed):  # no super().__init__: that would create a state variable
        self._seed = tf.cast(seed, tf.int64)
        self._draws = 0

    def next(self, ordered=True):
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._draws)


def _stateless_layer_op(layer) -> OpFn:
    def fn(images, seed):
        transformation = layer.get_random_transformation(images, training=True, seed=_StatelessSeed(seed))
        return layer.transform_images(images, transformation, training=True)

    return fn


def _layer_op(layer) -> OpFn:
    def fn(images, seed):
        return layer(images, training=True)

    return fn


_PY_RANDOM_LOCK = threading.Lock()


def _trace_seeded_layer_op(layer, seed: int) -> OpFn:
    """Keras' AugMix picks its chains with Python's global ``random`` while tracing: seed it for the trace
    (and restore it), so two traces of the same recipe build the same chains."""

    def fn(images, op_seed):
        with _PY_RANDOM_LOCK:
            state = random.getstate()
            random.seed(seed)
            try:
                return layer(images, training=True)
            finally:
                random.setstate(state)

    return fn


def _rotation(params: C.Rotation, *, image_size, layer_seed) -> OpFn:
    return _stateless_layer_op(
        keras.layers.RandomRotation(
            params.factor, fill_mode=params.fill_mode, fill_value=params.fill_value, seed=layer_seed
        )
    )


def _zoom(params: C.Zoom, *, image_size, layer_seed) -> OpFn:
    return _stateless_layer_op(
        keras.layers.RandomZoom(
            (-params.factor, params.factor), fill_mode=params.fill_mode, fill_value=params.fill_value, seed=layer_seed
        )
    )


def _translation(params: C.Translation, *, image_size, layer_seed) -> OpFn:
    return _stateless_layer_op(
        keras.layers.RandomTranslation(
            params.factor, params.factor, fill_mode=params.fill_mode, fill_value=params.fill_value, seed=layer_seed
        )
    )


def _aug_mix(params: C.AugMix, *, image_size, layer_seed) -> OpFn:
    return _trace_seeded_layer_op(
        keras.layers.AugMix(
            value_range=(0, 255), num_chains=params.num_chains, chain_depth=params.chain_depth,
            factor=params.severity, alpha=params.alpha, seed=layer_seed,
        ),
        layer_seed,
    )


def _rand_augment(params: C.RandAugment, *, image_size, layer_seed) -> OpFn:
    import keras_cv

    return _layer_op(
        keras_cv.layers.RandAugment(
            value_range=(0, 255), augmentations_per_image=params.num_ops, magnitude=params.magnitude,
            magnitude_stddev=params.magnitude_stddev, rate=params.rate, geometric=params.geometric,
            seed=layer_seed,
        )
    )


def _grid_mask(params: C.GridMask, *, image_size, layer_seed) -> OpFn:
    import keras_cv

    return _layer_op(
        keras_cv.layers.GridMask(
            ratio_factor=params.ratio_factor, rotation_factor=params.rotation_factor,
            fill_mode="constant", fill_value=params.fill_value, seed=layer_seed,
        )
    )


BUILDERS = {
    "random_resized_crop": _random_resized_crop,
    "flip": _flip,
    "rotation": _rotation,
    "zoom": _zoom,
    "translation": _translation,
    "color_jitter": _color_jitter,
    "rand_augment": _rand_augment,
    "aug_mix": _aug_mix,
    "random_erasing": _random_erasing,
    "cutout": _cutout,
    "grid_mask": _grid_mask,
}

# Elementwise ops on the whole batch compiled with XLA, which fuses their passes over the pixels into one loop
# (colour jitter on a 32x224x224 batch: 37 -> 20 CPU ms inside tf.data, BENCHMARKS.md).
XLA_OPS = frozenset({"color_jitter"})

# Ops whose randomness comes only from the per-batch stateless seed (may run on batches in any order);
# the others are config.ORDER_DEPENDENT_OPS.
STATELESS_OPS = frozenset(C.OPS) - C.ORDER_DEPENDENT_OPS


def split_resample(ops: list[tuple[str, C._Op]]) -> tuple[list, list]:
    """Split off the leading ``random_resized_crop`` (at most one) and ``flip`` ops. Run per image on the
    decoded image, their single resample replaces the loader's resize, so on a CPU they cost nothing
    (BENCHMARKS.md); the rest run per batch."""
    end = 1 if ops and ops[0][0] == "random_resized_crop" else 0
    while end < len(ops) and ops[end][0] == "flip":
        end += 1
    return ops[:end], ops[end:]


def build_image_resample(ops: list[tuple[str, C._Op]], *, image_size: tuple[int, int]):
    """``fn(image [H,W,C] any size and dtype, seed) -> float32 [*image_size, C]`` for ``split_resample``'s ops.

    When the ops start with ``random_resized_crop``, ``fn.takes_decoded`` is set (make_dataset hands it the
    decoded image) and ``fn.crop_plan`` (make_dataset's JPEG decode-and-crop fast path, :func:`build_crop_plan`).
    """
    resample = build_resample(ops, image_size=tuple(image_size))

    def fn(image, seed):
        return resample(image[None], seed)[0]

    fn.takes_decoded = ops[0][0] == "random_resized_crop"
    if fn.takes_decoded:
        fn.crop_plan = build_crop_plan(ops, image_size=image_size)
    return fn


def build_crop_plan(ops: list[tuple[str, C._Op]], *, image_size: tuple[int, int]):
    """For ``split_resample`` ops that start with ``random_resized_crop``, the JPEG fast path (TensorFlow's
    ResNet input pipeline): ``plan(shape [3] int32, seed) -> (window, finish)``, where ``window`` (int32
    ``[y, x, height, width]``) is the crop drawn from the image shape alone, for
    ``tf.io.decode_and_crop_jpeg`` to decode only those pixels, and ``finish(cropped) -> float32
    [*image_size, C]`` resizes the crop once and applies the flips drawn with it.

    ``stateless_sample_distorted_bounding_box`` retries out-of-range draws (up to 10, as torchvision) and
    falls back to the whole image, so its boxes differ in distribution from ``build_resample``'s clipped ones.
    """
    crop = ops[0][1]
    # Per flip op, the axes it may flip, [horizontal, vertical]; and the axes any of them may flip.
    masks = [(params.mode != "vertical", params.mode != "horizontal") for _, params in ops[1:]]
    flippable = [any(mask[i] for mask in masks) for i in (0, 1)]
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

    def plan(shape, seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 1 + len(masks)))
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, whole, seed=seeds[0], min_object_covered=0.0, aspect_ratio_range=crop.ratio,
            area_range=crop.scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], extent[0], extent[1]])
        # One uniform draw per flip op: [horizontal, vertical] coins; two flips on one axis cancel out.
        flips = tf.constant([False, False])
        for mask, flip_seed in zip(masks, seeds[1:], strict=True):
            coins = _uniform(flip_seed, [2], 0.0, 1.0) < 0.5
            flips = tf.math.logical_xor(flips, coins & tf.constant(mask))

        # A branch only for an axis the policy can flip: each costs every image a little (BENCHMARKS.md).
        # Folding the flips into tf.image.crop_and_resize (mirrored boxes, as build_resample does per batch)
        # has no branch, but its CPU kernel made the standard policy 0.7-1.1 CPU ms per image dearer.
        def finish(cropped):
            image = tf.image.resize(cropped, image_size, method="bilinear")
            for i, axis in ((0, 1), (1, 0)):  # horizontal flips reverse the width axis, vertical the height
                if flippable[i]:
                    image = tf.cond(flips[i], lambda image=image, axis=axis: tf.reverse(image, [axis]),
                                    lambda image=image: image)
            return image

        return window, finish

    return plan


def _xla(fn: OpFn) -> OpFn:
    return tf.function(fn, jit_compile=True, reduce_retracing=True)


def build_batch_ops(ops: list[tuple[str, C._Op]], *, image_size: tuple[int, int], seed: int) -> OpFn:
    """Compose the recipe's ops into one ``fn(images[B,H,W,C], seed[2]) -> float32 images`` in 0..255.

    When every op compiles with XLA, so does the whole, the cast and the final clip included: XLA fuses them
    into the ops' loops (colour jitter alone, 32x224x224: 0.53-0.61 against 0.77-0.84 CPU ms per image with
    the cast and the clip as separate TensorFlow ops)."""
    whole = bool(ops) and all(name in XLA_OPS for name, _ in ops)
    fns = [
        BUILDERS[name](params, image_size=tuple(image_size), layer_seed=seed * 1009 + index)
        for index, (name, params) in enumerate(ops)
    ]
    if not whole:
        fns = [_xla(fn) if name in XLA_OPS else fn for fn, (name, _) in zip(fns, ops, strict=True)]

    def apply(images, seed):
        images = tf.cast(images, tf.float32)
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, max(len(fns), 1)))
        for fn, op_seed in zip(fns, seeds, strict=False):
            images = fn(images, op_seed)
        return tf.clip_by_value(images, 0.0, 255.0)

    return _xla(apply) if whole else apply
