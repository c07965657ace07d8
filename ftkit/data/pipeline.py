"""The tf.data pipeline: parallel decode and resize, optional cache, seeded shuffle, batch, prefetch.

Output contract (docs/ARCHITECTURE.md): batches of ``(images, labels)``, images float32 ``[B, H, W, C]`` with
raw values in 0..255 (the model carries its own normalisation), labels int32 ``[B]`` (or one-hot float32
``[B, K]`` when a per-batch function is given, whose contract takes one-hot labels).

Each file is decoded on one of three routes, chosen per file without any Python in the hot path:

- JPEG in-graph (``tf.io.decode_jpeg``) at a reduced DCT scale (1/2, 1/4, 1/8) whenever the image stays at
  least as large as the target, which is what makes large photos cheap;
- PNG in-graph (``tf.io.decode_png`` at 16 bits, so 8- and 16-bit files share one exact path);
- Pillow (:func:`ftkit.data.decode.decode` in a ``tf.numpy_function``) for what the scan flagged (EXIF
  rotation, CMYK, alpha, GIF, BMP, WebP, TIFF) and for any JPEG/PNG whose end marker is missing (truncated).

The Pillow route never raises: a file it cannot decode is dropped from the epoch, logged and appended to
``index.skipped`` with its path and reason. As a last line of defence against a body that the in-graph
decoders reject (damage the header scan cannot see), ``ignore_errors(log_warning=True)`` drops that element
with a logged warning instead of ending the epoch; ``ftkit data check`` (a full decode) names such files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from ftkit.data import decode
from ftkit.data.sources import DataIndex, Split

log = logging.getLogger("ftkit.data")

RESIZE_MODES = ("stretch", "crop", "pad")
_DCT_SCALES = (1, 2, 4, 8)
_JPEG, _PNG, _PILLOW = 0, 1, 2
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def make_dataset(index: DataIndex, split: str = "train", *, image_size: tuple[int, int], channels: int = 3,
                 resize: str = "stretch", batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                 cache: str | os.PathLike | None = None, shuffle_buffer: int | None = None,
                 per_image_fn: Callable | None = None, per_batch_fn: Callable | None = None,
                 one_hot: bool | None = None, deterministic: bool = False, drop_remainder: bool = False,
                 repeat: bool = False) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of one split of ``index``, resized to ``image_size`` ``(H, W)``.

    ``resize``: ``"stretch"`` (ignore aspect), ``"crop"`` (centre crop to the target aspect) or ``"pad"``
    (letterbox with black). ``channels``: 3 (RGB) or 1 (luma, ITU-R 601). ``cache``: ``None``,
    ``"memory"``, or a folder where a file named after the split, size and content is written; the cache
    holds decoded, resized images rounded to uint8, so later epochs skip decoding. With a cache, shuffling happens
    after it in a buffer of ``shuffle_buffer`` images (default ``min(len, 2048)``); without, the whole file
    order is shuffled, with ``seed``, differently every epoch.

    ``per_image_fn(image float32 [H, W, C] in 0..255) -> float32 [H, W, C]`` runs before batching;
    ``per_batch_fn(images, labels_onehot) -> (images, labels_onehot)`` after. ``one_hot`` (default: on
    when ``per_batch_fn`` is given) turns labels into one-hot float32. Element order is fixed unless
    ``shuffle`` is on and ``deterministic`` is off, which lets parallel decoding return out of order.
    """
    data = index[split]
    size = _check_args(image_size=image_size, channels=channels, resize=resize, batch_size=batch_size,
                       cache=cache)
    one_hot = per_batch_fn is not None if one_hot is None else one_hot
    if per_batch_fn is not None and not one_hot:
        raise ValueError("per_batch_fn takes one-hot labels (docs/ARCHITECTURE.md). Received: one_hot=False")
    if data.images is not None:
        load = _memory_loader(data, size, channels, resize)
    else:
        load = _file_loader(index, data, size, channels, resize)
    ds = load.elements
    if shuffle and cache is None:
        ds = ds.shuffle(max(len(data), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if data.images is None:
        ds = ds.ignore_errors(log_warning=True).filter(lambda image, label: label >= 0)
    if cache is not None:
        # The cache holds uint8 (rounded) pixels: 4x more images in the same memory than float32.
        ds = ds.map(lambda image, label: (_to_uint8(image), label), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.cache(_cache_file(cache, data, size, channels, resize))
        if shuffle:
            ds = ds.shuffle(shuffle_buffer or min(len(data), 2048), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = _finish(ds, size=size, channels=channels, batch_size=batch_size, drop_remainder=drop_remainder,
                 per_image_fn=per_image_fn, per_batch_fn=per_batch_fn,
                 num_classes=index.num_classes if one_hot else 0)
    options = tf.data.Options()
    options.deterministic = bool(deterministic or not shuffle)
    return ds.with_options(options)


def _check_args(*, image_size, channels, resize, batch_size, cache) -> tuple[int, int]:
    if (not isinstance(image_size, tuple | list) or len(image_size) != 2
            or not all(isinstance(v, int | np.integer) and v > 0 for v in image_size)):
        raise ValueError(f"image_size must be (height, width) of positive ints. Received: image_size={image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    if cache is not None and cache != "memory" and Path(cache).exists() and not Path(cache).is_dir():
        raise ValueError(f"cache must be None, 'memory' or a folder. Received: cache={os.fspath(cache)!r}")
    return int(image_size[0]), int(image_size[1])


def _finish(ds, *, size, channels, batch_size, drop_remainder, per_image_fn, per_batch_fn, num_classes):
    if per_image_fn is not None:
        ds = ds.map(lambda image, label: (tf.ensure_shape(tf.cast(per_image_fn(tf.cast(image, tf.float32)),
                                                                  tf.float32), (*size, channels)), label),
                    num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def to_float(images, labels):
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32) if num_classes else labels
        return tf.cast(images, tf.float32), labels

    if num_classes or ds.element_spec[0].dtype != tf.float32:
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if per_batch_fn is not None:
        ds = ds.map(per_batch_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _cache_file(cache, data: Split, size, channels, resize) -> str:
    if cache == "memory":
        return ""
    # tf.data reuses a cache file by name alone, so the name carries everything that changes its content.
    digest = hashlib.blake2b(digest_size=8)
    digest.update("\0".join(data.paths if data.paths is not None else []).encode())
    digest.update(data.labels.tobytes())
    folder = Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    return os.fspath(folder / f"{data.name}-{size[0]}x{size[1]}x{channels}-{resize}-{digest.hexdigest()}")


# --- decoding ---------------------------------------------------------------------------------------------

def dct_scales(sizes: np.ndarray, pillow: np.ndarray, size: tuple[int, int], resize: str) -> np.ndarray:
    """Index into (1, 2, 4, 8) of the largest JPEG DCT downscale that keeps what the resize needs.

    Stretch and crop need both sides at least the target's; pad only the side that fills the target. Files
    on the Pillow route may be EXIF-rotated (width and height swap), so they take the bound of both
    orientations. Unknown sizes (0) decode at full scale.
    """
    w, h = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    height, width = size
    pick = np.maximum if resize == "pad" else np.minimum
    upright = pick(w / width, h / height)
    rotated = pick(h / width, w / height)
    limit = np.where(pillow, np.minimum(upright, rotated), upright)
    return np.clip(np.floor(np.log2(np.maximum(limit, 1.0))), 0, len(_DCT_SCALES) - 1).astype(np.int32)


def _file_loader(index: DataIndex, data: Split, size, channels, resize):
    paths = data.paths.astype(str) if len(data) else np.zeros(0, str)
    scales = dct_scales(data.sizes, data.pillow, size, resize)
    pillow_decode = _pillow_decoder(index, data.name)

    def fit(image):
        return _resize(image, size, resize)

    def pillow_branch(path, contents, scale):
        image, ok = pillow_decode(path, contents, scale)
        return fit(image), ok

    def load(path, label, needs_pillow, scale):
        contents = tf.io.read_file(path)
        # One flat switch (JPEG at each DCT scale, PNG, Pillow): a nested one costs a second branch call.
        # Each branch resizes its own decoded pixels, straight from uint8/uint16: casting a full-size image
        # to float first would cost a copy as large as the photo.
        branches = [lambda r=r: (fit(tf.io.decode_jpeg(contents, channels=3, ratio=r)), True) for r in _DCT_SCALES]
        branches.append(lambda: (fit(tf.io.decode_png(contents, channels=3, dtype=tf.uint16)) / 257.0, True))
        branches.append(lambda: pillow_branch(path, contents, scale))
        route = _route(contents, needs_pillow)
        branch = tf.where(route == _JPEG, scale, len(_DCT_SCALES) + route - _PNG)
        image, ok = tf.switch_case(branch, branches)
        image = _to_channels(image, channels)
        # A failed decode keeps the element's shape but gets label -1, for the filter that drops it.
        return image, tf.where(ok, label, -1)

    load.elements = tf.data.Dataset.from_tensor_slices((paths, data.labels, data.pillow, scales))
    return load


def _route(contents, needs_pillow):
    length = tf.strings.length(contents)
    tail = tf.strings.substr(contents, tf.maximum(length - 8, 0), 8)
    is_jpeg = tf.logical_and(tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff"),
                             tf.equal(tf.strings.substr(tail, 6, 2), b"\xff\xd9"))
    is_png = tf.logical_and(tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE), tf.equal(tail, _PNG_END))
    route = tf.where(is_jpeg, _JPEG, tf.where(is_png, _PNG, _PILLOW))
    return tf.where(needs_pillow, _PILLOW, route)


def _pillow_decoder(index: DataIndex, split: str):
    max_pixels = index.max_pixels

    def decode_or_report(path: bytes, contents: bytes, scale) -> tuple[np.ndarray, bool]:
        path = path.decode()
        try:
            return decode.decode(contents, scale=_DCT_SCALES[int(scale)], max_pixels=max_pixels), True
        except decode.BadImage as bad:
            reason, detail = bad.reason, bad.detail
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, the epoch goes on
            reason, detail = decode.CORRUPT, f"{type(exc).__name__}: {exc}"
        if index.record_skip(path, reason, detail, split):
            log.warning("Skipped %s: %s (%s)", path, reason, detail)
        return np.zeros((1, 1, 3), np.uint8), False

    def pillow_decode(path, contents, scale):
        image, ok = tf.numpy_function(decode_or_report, [path, contents, scale], [tf.uint8, tf.bool],
                                      stateful=False)
        image.set_shape((None, None, 3))
        ok.set_shape(())
        return image, ok

    return pillow_decode


def _memory_loader(data: Split, size, channels, resize):
    images = data.images if data.images.ndim == 4 else data.images[..., None]
    same_size = tuple(images.shape[1:3]) == tuple(size)

    def load(image, label):
        image = tf.cast(image, tf.float32) if same_size else _resize(image, size, resize)
        return _to_channels(image, channels), label

    load.elements = tf.data.Dataset.from_tensor_slices((images, data.labels))
    return load


def _resize(image, size, resize):
    height, width = size
    if resize == "pad":
        return tf.image.resize_with_pad(image, height, width)
    if resize == "crop":
        shape = tf.shape(image)
        h, w = shape[0], shape[1]
        crop_h = tf.minimum(h, tf.cast(tf.round(tf.cast(w, tf.float32) * height / width), tf.int32))
        crop_w = tf.minimum(w, tf.cast(tf.round(tf.cast(h, tf.float32) * width / height), tf.int32))
        image = tf.image.crop_to_bounding_box(image, (h - crop_h) // 2, (w - crop_w) // 2,
                                              tf.maximum(crop_h, 1), tf.maximum(crop_w, 1))
    return tf.image.resize(image, size, method="bilinear")


def _to_channels(image, channels):
    have = image.shape[-1]
    if have == channels:
        return image
    return tf.image.rgb_to_grayscale(image) if channels == 1 else tf.image.grayscale_to_rgb(image)


def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def distribute(ds: tf.data.Dataset, strategy: tf.distribute.Strategy | None = None) -> tf.data.Dataset:
    """Places a dataset for training: distributed by ``strategy`` when given (which prefetches onto each
    replica itself), else prefetched onto the first GPU when there is one, else returned as is (the
    pipeline already ends with ``prefetch(AUTOTUNE)``)."""
    if strategy is not None:
        return strategy.experimental_distribute_dataset(ds)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return ds.apply(tf.data.experimental.prefetch_to_device(gpus[0].name))
    return ds
