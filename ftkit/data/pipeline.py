"""The tf.data pipeline: parallel decode and resize, optional cache, seeded shuffle and augmentation, batch,
prefetch.

Output contract (docs/ARCHITECTURE.md): batches of ``(images, labels)``, images float32 ``[B, H, W, C]`` with
raw values in 0..255 (the model carries its own normalisation), labels int32 ``[B]`` (or one-hot float32
``[B, K]`` when a per-batch function is given, whose contract takes one-hot labels).

Decoding. Files are read, decoded and resized by one parallel ``map`` fused with the batch, at one call per
core, as in the Keras loader. Per file the fast path is in-graph: ``tf.io.decode_jpeg``, which also reads plain
GIFs (one frame, no transparency) and, where the split has no 16-bit PNG, PNGs; or ``tf.io.decode_png`` at 16
bits where it has. Files the scan flagged (EXIF rotation, CMYK, alpha, animated GIF, BMP, WebP, TIFF) are
decoded by Pillow (:func:`ftkit.data.decode.decode`): where they are at most 2% of the split, in the rescue
(below), the map decoding a 1x1 stand-in in their place; where more, in the map (a ``tf.numpy_function`` behind
a ``tf.cond``). A branch in the map costs every element 4-14% of a catsdogs decode (isolated A/B,
BENCHMARKS.md), so the map has one only where the split needs it: the Pillow branch as just said, a JPEG/PNG
branch where the split has both and decode_jpeg cannot take its PNGs (16-bit ones, or under the crop plan below;
the scan read the headers), and a switch over JPEG DCT scales (1/2, 1/4, 1/8, decoding a photo at least twice
the target size at a reduced scale) only where that saves at least a quarter of the decoded pixels. When
``per_image_fn`` carries a ``crop_plan`` (either back end's policies that start with a random resized crop), a
JPEG's crop window is drawn from its header shape and ``tf.io.decode_and_crop_jpeg`` decodes only those pixels,
resized once (TensorFlow's ResNet input pipeline); PNGs and Pillow files still go through ``per_image_fn``.

Bad files. TensorFlow's decoders raise on damaged data, and tf.data cannot catch an error inside a map;
``ignore_errors`` after the fused map-and-batch drops the batch that raised. Every element carries its position,
so a ``scan`` over the batches (and an end marker after the last), whose step is one ``tf.py_function``, sees
which positions are missing: those files are decoded again (eagerly) by the fast path's own ops, or by Pillow
where those raise, and merged back at their place; a file Pillow cannot read either is recorded in
``index.skipped`` with path, reason and detail (logged once, not once per epoch). The same call replaces the
stand-ins with the flagged files' pixels. So the pass keeps the index order, every good file comes once, no bad
file ends an epoch and none is dropped unreported; ``rebatch`` then gives batches of ``batch_size`` (except the
last), passing the fast path's batches through uncopied. Unfused, the map would drop a bad file alone, but its
copy into the batch, made after the image has left the cache, cost ~10% more CPU per image on catsdogs/train,
more than re-decoding a rare bad batch; and each function in the pipeline is optimised by Grappler again on
every iterator, so every epoch (BENCHMARKS.md), which is why the scan's step and the rescue are Python.

Seeds. ``per_image_fn`` and ``per_batch_fn`` that take a ``seed=`` keyword get a stateless seed (int64
``[2]``) per element / per batch, drawn from ``tf.data.Dataset.random`` seeded from ``(seed, epoch, stage)``
with ``rerandomize_each_iteration=True``: two datasets built with the same arguments give the same augmented
batches (in deterministic order, parallel maps included), and each new iteration (epoch) of one dataset
draws new seeds. A shuffled file pass derives its order and its per-image seeds from one such word per
iteration, and a rescued file's seed from its batch's (or the end marker's) first word and its position.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from ftkit.data import decode
from ftkit.data.sources import CODECS, DataIndex, Split

log = logging.getLogger("ftkit.data")

RESIZE_MODES = ("stretch", "crop", "pad")
_DCT_SCALES = (1, 2, 4, 8)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Parallel decodes: the usable cores. Decoding is CPU-bound; on 2 cores AUTOTUNE and 2 measured alike
# (map-and-batch over catsdogs/train: 1.57 vs 1.61 CPU ms per image).
_PARALLELISM = max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2)
# Second words of the stateless seeds, so the image and the batch stage draw independent numbers.
_IMAGE_STAGE, _BATCH_STAGE, _ORDER_STAGE, _END_STAGE = 1, 2, 3, 4
# Flagged files (the Pillow route) up to this share of a split are decoded in the rescue, behind stand-ins, so
# the map has no branch; above it, in the map behind a ``tf.cond``. A branch costs every element 4-14% of a
# catsdogs decode (a tf.cond 4-7%, a two-way switch_case 11-14%; isolated A/B, BENCHMARKS.md).
_RESCUE_PILLOW_SHARE = 0.02
# For the same reason the JPEG DCT-scale switch is built only where the reduced scales save at least this
# share of the decoded pixels (catsdogs/train: 8%, hymenoptera/train: 14%, phone photos: ~90%).
_DCT_MIN_SAVING = 0.25


def make_dataset(index: DataIndex, split: str = "train", *, image_size: tuple[int, int], channels: int = 3,
                 resize: str = "stretch", batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                 cache: str | os.PathLike | None = None, shuffle_buffer: int | None = None,
                 per_image_fn: Callable | None = None, per_batch_fn: Callable | None = None,
                 one_hot: bool | None = None, deterministic: bool = False, drop_remainder: bool = False,
                 repeat: bool = False, epoch: int = 0, augment_decoded: bool | None = None) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of one split of ``index``, resized to ``image_size`` ``(H, W)``.

    ``resize``: ``"stretch"`` (ignore aspect), ``"crop"`` (centre crop to the target aspect) or ``"pad"``
    (letterbox with black). ``channels``: 3 (RGB) or 1 (luma, ITU-R 601). ``cache``: ``None``,
    ``"memory"``, or a folder where a file named after the split, size and content (paths, labels, each file's
    size and modification time; in-memory pixels) is written; the cache holds decoded, resized images rounded
    to uint8, so later epochs skip decoding; it sits before any augmentation. With a cache, shuffling happens after it in a buffer of ``shuffle_buffer`` images (default
    ``min(len, 2048)``); without, the whole file order is shuffled, with ``seed``, differently every epoch.

    ``per_image_fn(image, [seed=]) -> float32 [H, W, C]`` runs before batching, ``per_batch_fn(images,
    labels_onehot, [seed=]) -> (images, labels_onehot)`` after; each gets a stateless ``seed`` (int64 ``[2]``)
    derived from ``(seed, epoch, element or batch position)`` when it takes that keyword (see the module
    docstring). A ``per_batch_fn`` with the attribute ``ordered = True`` (its randomness comes from a
    stateful generator) runs one batch at a time, in order. ``one_hot`` (default: on when ``per_batch_fn``
    is given) turns labels into one-hot float32.

    ``augment_decoded`` (default: ``per_image_fn.takes_decoded``, set by ``ftkit.augment`` for policies that
    start with a random resized crop): ``per_image_fn`` receives each image as decoded (uint8, any size,
    after the colour/EXIF policy and at the JPEG DCT scale that keeps it at least ``image_size``) and makes
    ``image_size`` itself, so the crop is the only resample; ``resize`` then applies to nothing. With a
    cache it receives the cached ``image_size`` image instead, because the cache holds resized images.

    Element order is fixed, except for in-memory data (MNIST) and cached images with ``shuffle`` on and
    ``deterministic`` off, which lets parallel maps return out of order. Files always come in order: the
    rescue of a dropped file finds it by its position.
    """
    data = index[split]
    size = _check_args(image_size=image_size, channels=channels, resize=resize, batch_size=batch_size,
                       cache=cache)
    one_hot = per_batch_fn is not None if one_hot is None else one_hot
    if per_batch_fn is not None and not one_hot:
        raise ValueError("per_batch_fn takes one-hot labels (docs/ARCHITECTURE.md). Received: one_hot=False")
    if augment_decoded is None:
        augment_decoded = bool(getattr(per_image_fn, "takes_decoded", False))
    if augment_decoded and per_image_fn is None:
        raise ValueError("augment_decoded hands decoded images to per_image_fn, which is None. "
                         "Received: augment_decoded=True, per_image_fn=None")
    ordered = bool(deterministic or not shuffle)
    full_size = augment_decoded and cache is None
    image_fn = _image_stage(per_image_fn, size=size, channels=channels)
    if data.images is not None:
        source = _MemorySource(data, size, channels, resize)
    else:
        crop_plan = getattr(image_fn, "crop_plan", None) if full_size and channels == 3 else None
        source = _FileSource(index, data, size, channels, resize, full_size=full_size, crop_plan=crop_plan)
    if cache is None:
        ds = source.batches(image_fn, batch_size=batch_size, drop_remainder=drop_remainder, shuffle=shuffle,
                            seed=seed, epoch=epoch, repeat=repeat, ordered=ordered)
    else:
        ds = source.batches(None, batch_size=batch_size, drop_remainder=False, to_uint8=True)
        # The cache holds uint8 (rounded) pixels: 4x more images in the same memory than float32.
        ds = ds.unbatch().cache(_cache_file(cache, data, size, channels, resize))
        if shuffle:
            ds = ds.shuffle(shuffle_buffer or min(len(data), 2048), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        if image_fn:
            ds = _zip_seeds(ds, image_fn, seed=seed, epoch=epoch, stage=_IMAGE_STAGE)
            ds = ds.map(_cached_image_map(image_fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=ordered)
    ds = _finish(ds, per_batch_fn=per_batch_fn, num_classes=index.num_classes if one_hot else 0, seed=seed,
                 epoch=epoch, ordered=ordered)
    options = tf.data.Options()
    options.deterministic = ordered
    # No autotuning model: with it, deleting an iterator after a full pass (every epoch) waited 0.2-1.3 s in
    # about half the epochs, with both cores idle, in every tf.data pipeline measured here (the Keras loader, a
    # bare map and batch; not with the model off; the cause inside TensorFlow not traced): the "two speed
    # levels" of earlier benchmarks. The stages that say AUTOTUNE then run at the core count (measured: 2 of 2)
    # and prefetch keeps its own buffer tuning. catsdogs/train, one process, 9 interleaved epochs: median 778 ->
    # 1,182 img/s unaugmented, 727 -> 896 with the keras back end's standard policy; CPU per image unchanged or
    # lower (BENCHMARKS.md).
    options.autotune.enabled = False
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


# --- seeds and the augmentation hooks --------------------------------------------------------------------

def _takes_seed(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: called without a seed
        return False
    return "seed" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _seed_words(*, seed: int, epoch: int, stage: int) -> tf.data.Dataset:
    """An endless stream of int64 words, a pure function of ``(seed, epoch, stage)`` and the iteration."""
    word = int(np.random.SeedSequence([int(seed), int(epoch), stage]).generate_state(1, np.uint64)[0] >> 1)
    return tf.data.Dataset.random(seed=word, rerandomize_each_iteration=True)


def _zip_seeds(ds, fn, *, seed, epoch, stage):
    """Pairs each element with a seed word when ``fn`` takes a seed; elements become ``(element, word)``."""
    if fn is None or not fn.takes_seed:
        return ds
    return tf.data.Dataset.zip((ds, _seed_words(seed=seed, epoch=epoch, stage=stage)))


def _stateless_seed(word, stage: int):
    return tf.stack([word, tf.constant(stage, tf.int64)])


def _image_stage(per_image_fn, *, size, channels):
    """``per_image_fn`` as ``fn(image, [word]) -> float32 [*size, channels]``, or None."""
    if per_image_fn is None:
        return None
    takes_seed = _takes_seed(per_image_fn)

    def apply(image, word=None):
        kwargs = {"seed": _stateless_seed(word, _IMAGE_STAGE)} if takes_seed and word is not None else {}
        return tf.ensure_shape(tf.cast(per_image_fn(image, **kwargs), tf.float32), (*size, channels))

    apply.takes_seed = takes_seed
    crop_plan = getattr(per_image_fn, "crop_plan", None)
    if crop_plan is not None and takes_seed:
        apply.crop_plan = lambda shape, word: crop_plan(shape, _stateless_seed(word, _IMAGE_STAGE))
    return apply


def _cached_image_map(image_fn):
    if image_fn.takes_seed:
        return lambda element, word: (image_fn(tf.cast(element[0], tf.float32), word), element[1])
    return lambda image, label: (image_fn(tf.cast(image, tf.float32)), label)


def _finish(ds, *, per_batch_fn, num_classes, seed, epoch, ordered):
    """Float images, one-hot labels and the per-batch function, in one map; then prefetch."""
    if not (num_classes or per_batch_fn or ds.element_spec[0].dtype != tf.float32):
        return ds.prefetch(tf.data.AUTOTUNE)
    takes_seed = per_batch_fn is not None and _takes_seed(per_batch_fn)
    if takes_seed:
        ds = tf.data.Dataset.zip((ds, _seed_words(seed=seed, epoch=epoch, stage=_BATCH_STAGE)))

    def finish(batch, word=None):
        images, labels = batch
        images = tf.cast(images, tf.float32)
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32) if num_classes else labels
        if per_batch_fn is None:
            return images, labels
        kwargs = {"seed": _stateless_seed(word, _BATCH_STAGE)} if takes_seed else {}
        return per_batch_fn(images, labels, **kwargs)

    # A stateful per-batch function (Keras / keras-cv layers with their own generator) reproduces only in order.
    parallel = None if getattr(per_batch_fn, "ordered", False) else tf.data.AUTOTUNE
    if takes_seed:
        ds = ds.map(finish, num_parallel_calls=parallel, deterministic=ordered)
    else:
        ds = ds.map(lambda *batch: finish(batch), num_parallel_calls=parallel, deterministic=ordered)
    return ds.prefetch(tf.data.AUTOTUNE)


def _cache_file(cache, data: Split, size, channels, resize) -> str:
    if cache == "memory":
        return ""
    # tf.data reuses a cache file by name alone, so the name carries everything that changes its content: the
    # paths and labels, and each file's size and modification time, so a file edited in place is decoded again
    # rather than served from a stale cache.
    digest = hashlib.blake2b(digest_size=8)
    paths = data.paths if data.paths is not None else []
    digest.update(b"\0".join(os.fsencode(p) for p in paths))
    digest.update(data.labels.tobytes())
    digest.update(np.array([_stamp(p) for p in paths], np.int64).tobytes())
    if data.images is not None:
        digest.update(np.ascontiguousarray(data.images).data)
    folder = Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    return os.fspath(folder / f"{data.name}-{size[0]}x{size[1]}x{channels}-{resize}-{digest.hexdigest()}")


def _stamp(path: str) -> tuple[int, int]:
    """``(size, mtime in ns)`` of a file, ``(-1, -1)`` where it cannot be read (the pipeline reports it)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


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


def _dct_saving(sizes: np.ndarray, scales: np.ndarray) -> float:
    """The share of decoded pixels that decoding at ``scales`` (indices into (1, 2, 4, 8)) saves."""
    pixels = sizes[:, 0].astype(np.float64) * sizes[:, 1]
    return float((pixels * (1.0 - 0.25 ** scales)).sum() / max(pixels.sum(), 1.0))


@functools.cache
def _stand_in(fmt: str) -> bytes:
    """A 1x1 black image in ``fmt``: what the in-graph decoder reads in place of a file sent to the rescue."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, fmt)
    return buffer.getvalue()


class _MemorySource:
    """In-memory pixels (MNIST): nothing can fail to decode, so a plain map fused with the batch."""

    def __init__(self, data: Split, size, channels, resize):
        self._images = data.images if data.images.ndim == 4 else data.images[..., None]
        self._labels = data.labels
        self._same_size = tuple(self._images.shape[1:3]) == tuple(size)
        self._size, self._channels, self._resize = size, channels, resize

    def batches(self, image_fn, *, batch_size, drop_remainder, shuffle=False, seed=0, epoch=0, repeat=False,
                ordered=True, to_uint8=False):
        ds = tf.data.Dataset.from_tensor_slices({"image": self._images, "label": self._labels})
        if shuffle:
            ds = ds.shuffle(max(len(self._labels), 1), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = _zip_seeds(ds, image_fn, seed=seed, epoch=epoch, stage=_IMAGE_STAGE)

        def load(row, word=None):
            image = row["image"]
            if not (to_uint8 and self._same_size):
                image = tf.cast(image, tf.float32) if self._same_size else resize_image(image, self._size, self._resize)
            image = _to_channels(image, self._channels)
            if to_uint8:
                image = _to_uint8(image)
            return (image_fn(image, word) if image_fn else image), row["label"]

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered).batch(
            batch_size, drop_remainder=drop_remainder)


class _FileSource:
    """Image files, decoded by one parallel ``map`` fused with the batch (see the module docstring): in-graph,
    or by Pillow for the files the scan flagged, with an eager rescue for the batches the map dropped."""

    def __init__(self, index: DataIndex, data: Split, size, channels, resize, *, full_size: bool, crop_plan=None):
        self._index, self._split = index, data.name
        codecs = data.codecs
        # A GIF the scan left unflagged is read by decode_jpeg (Header.needs_pillow); not by the crop plan's
        # decode_and_crop_jpeg, so there it takes Pillow.
        pillow = data.pillow | (codecs == CODECS["GIF"]) if crop_plan is not None else data.pillow
        graph = ~pillow
        # PNGs decode at 16 bits only where the split may hold one (or the header was not read): an 8-bit PNG
        # decoded as such and resized from uint8 gives the same pixels, its decode and resize 11-15% faster
        # (catsdogs as PNG, BENCHMARKS.md).
        self._png16 = bool(np.isin(codecs[graph], [CODECS["PNG16"], 0]).any())
        # The decoder each format takes. decode_jpeg reads plain GIFs and 8-bit PNGs too, with Pillow's and
        # decode_png's pixels (tested; decode_gif's documentation says TensorFlow's decoders read each other's
        # formats), so a split of JPEGs and 8-bit PNGs needs no branch between two decoders.
        routes = {CODECS["GIF"]: CODECS["JPEG"], CODECS["PNG16"]: CODECS["PNG"]}
        if crop_plan is None and not self._png16:
            routes[CODECS["PNG"]] = CODECS["JPEG"]
        self._codecs = {routes.get(int(c), int(c)) for c in codecs[graph]}
        # DCT scales are JPEG's: other formats always take the full-scale decode.
        scales = np.where(codecs == CODECS["JPEG"], dct_scales(data.sizes, pillow, size, resize), 0)
        if _dct_saving(data.sizes[graph], scales[graph]) < _DCT_MIN_SAVING:
            scales = np.where(graph, 0, scales).astype(np.int32)  # not worth a branch per element
        # Only the decoders, branches and columns this split needs: each one costs every element a little.
        self._scales = sorted({int(s) for s in scales[graph]}) or [0]
        self._has_graph = bool(graph.any())
        flagged = int(pillow.sum())
        # A few flagged files go to the rescue, behind a stand-in (no branch per element); more, to the map.
        self._pillow_in_rescue = self._has_graph and 0 < flagged <= _RESCUE_PILLOW_SHARE * len(data)
        self._pillow_in_map = flagged > 0 and not self._pillow_in_rescue
        # Bytes as the file system has them (os.fsencode): a name that is not UTF-8 (an archive from another
        # system) is still a valid path, where tf.constant refuses it as text.
        self._columns = {"path": np.array([os.fsencode(p) for p in data.paths], dtype=bytes) if len(data)
                         else np.zeros(0, bytes), "label": data.labels}
        if flagged or len(self._scales) > 1:
            self._columns["scale"] = scales
        if flagged:
            self._columns["pillow"] = pillow
        self._size, self._channels, self._resize, self._full_size = size, channels, resize, full_size
        self._crop_plan = crop_plan

    def batches(self, image_fn, *, batch_size, drop_remainder, shuffle=False, seed=0, epoch=0, repeat=False,
                ordered=True, to_uint8=False):
        """Batches of one pass over the split (endless passes with ``repeat``), always in order (``ordered`` is
        moot: the rescue finds a dropped file by the gap it leaves in the positions).

        Unshuffled, the pass is built once, at the top level, and each element's seed word comes from a seeded
        stream that moves on with every iteration. Shuffled, each iteration draws a word that fixes the
        pass's order and seeds, and builds its pass inside ``flat_map``, which delays the first batch
        (hymenoptera/train: ~190 -> ~300 ms), so the unshuffled path, which training takes, avoids it."""
        if self._crop_plan is not None:
            graph_load = self._crop_loader(image_fn)
        else:
            graph_load = self._loader(self._graph_decode, image_fn, to_uint8)
        load = graph_load
        if self._pillow_in_map:
            pillow_load = self._loader(self._strict_pillow_decode, image_fn, to_uint8)
            load = pillow_load
            if self._has_graph:
                def load(row, *word):
                    return tf.cond(row["pillow"], lambda: pillow_load(row, *word), lambda: graph_load(row, *word))
        stream = _PassStream(self._columns, load, self._rescuer(graph_load, image_fn, to_uint8),
                             takes_seed=image_fn is not None and image_fn.takes_seed, batch_size=batch_size,
                             stand_ins=self._pillow_in_rescue)
        if shuffle:
            passes = _seed_words(seed=seed, epoch=epoch, stage=_ORDER_STAGE)
            ds = (passes if repeat else passes.take(1)).flat_map(stream.shuffled)
        else:
            ds = stream.ordered(words=_seed_words(seed=seed, epoch=epoch, stage=_IMAGE_STAGE),
                                end_word=_seed_words(seed=seed, epoch=epoch, stage=_END_STAGE).take(1))
            ds = ds.repeat() if repeat else ds
        if drop_remainder:  # each pass's last batch may be short
            ds = ds.rebatch(batch_size, drop_remainder=True)
        return ds

    def _loader(self, decoder, image_fn, to_uint8):
        def load(row, word=None):
            image = _to_channels(decoder(row), self._channels)
            if to_uint8:
                image = _to_uint8(image)
            return (image_fn(image, word) if image_fn else image), row["label"]

        return load

    def _read(self, row):
        """The file's bytes; for a flagged file sent to the rescue, a 1x1 stand-in the in-graph decoder reads
        (a selection, not a branch), whose pixels the rescue replaces with Pillow's."""
        contents = tf.io.read_file(row["path"])
        if not self._pillow_in_rescue:
            return contents
        return tf.where(row["pillow"], _stand_in("PNG" if self._codecs == {CODECS["PNG"]} else "JPEG"), contents)

    def _crop_loader(self, image_fn):
        """The in-graph loader when ``per_image_fn`` starts with a random resized crop (``crop_plan``): a JPEG's
        crop is drawn from its header shape and only the crop's pixels are decoded, then resized once (TensorFlow's
        ResNet input pipeline); a PNG is decoded whole and goes through ``image_fn`` as on the other path."""
        def load(row, word):
            contents = self._read(row)

            def jpeg():
                # Always at DCT scale 1: the crop window is in full-size pixels, and a crop of 8-100% of the
                # image rarely leaves room for a downscale at the target size.
                window, finish = self._crop_plan(tf.io.extract_jpeg_shape(contents), word)
                return finish(tf.io.decode_and_crop_jpeg(contents, window, channels=3))

            def png():
                return image_fn(self._decode_png(contents), word)

            return tf.ensure_shape(self._by_codec(contents, jpeg, png), (*self._size, 3)), row["label"]

        return load

    def _rescuer(self, graph_load, image_fn, to_uint8):
        """An eager ``(expected, stop, images, labels, positions, words, order) -> (images, labels)`` (images and
        labels tensors, positions, words and order NumPy arrays, order empty for the listed order): the batch
        with its stand-ins replaced by the flagged files' pixels, and the files of positions ``expected..stop``
        that it lacks (the map dropped their batch) decoded again and merged in at their places.

        A dropped file is decoded by the fast path's own ops (eagerly: the same pixels), and if those raise, by
        Pillow; a flagged file by Pillow. Each goes through ``image_fn`` with its element's seed word (a stand-in)
        or one derived from the batch's first word and its position (a dropped file). A file Pillow cannot read
        either is recorded in ``index.skipped`` and left out.

        It runs in the ``scan``'s ``tf.py_function`` (eager Python, see ``_PassStream``), not as a graph: every
        node and function of a graph here is instantiated and optimised by Grappler on every iterator, so every
        epoch, for a path that runs only when a file is bad. As nested datasets, then as graph ops, it cost ~45
        ms, then ~25 ms, of CPU per iterator (isolated measurements, BENCHMARKS.md)."""
        paths, labels = self._columns["path"], self._columns["label"]
        scales = self._columns.get("scale")
        flagged = self._columns.get("pillow")
        takes_seed = image_fn is not None and image_fn.takes_seed

        def by_pillow(row, word, rejected):
            scale = int(scales[row]) if scales is not None else self._scales[0]
            pixels, decoded = self._decode_or_report(paths[row], scale, rejected)
            if not decoded:
                return None
            image = _to_channels(self._fit(tf.constant(pixels)), self._channels)
            image = _to_uint8(image) if to_uint8 else image
            return image_fn(image, word) if image_fn is not None else image

        def by_graph(row, word):
            if flagged is not None and flagged[row]:
                return by_pillow(row, word, rejected=False)
            columns = {key: tf.constant(column[row]) for key, column in self._columns.items()}
            try:
                image = graph_load(columns, *([word] if takes_seed else []))[0]
            except tf.errors.OpError:
                image = None
            # Eager ops lack the graph's shape checks: a WebP the decoder reads as frames comes back 4-D here.
            if image is None or tuple(image.shape) != (*self._size, self._channels):
                return by_pillow(row, word, rejected=True)
            return image

        def merge(expected, stop, images, batch_labels, positions, words, order):
            # Eager TensorFlow ops on the batch rather than NumPy: one copy of it (two where files are put
            # back), where stacking NumPy arrays and handing them back took three.
            present = positions[:len(batch_labels)]
            row_of = order.__getitem__ if order.shape[0] else int
            keep, replaced, updates = np.ones(len(present), bool), [], []
            for i, position in enumerate(present):
                if self._pillow_in_rescue and flagged[row_of(position)]:
                    image = by_pillow(row_of(position), words[i] if takes_seed else None, rejected=False)
                    if image is None:
                        keep[i] = False
                    else:
                        replaced.append(i)
                        updates.append(tf.cast(image, images.dtype))
            if updates:
                images = tf.tensor_scatter_nd_update(images, np.asarray(replaced)[:, None], tf.stack(updates))
            added, added_at, added_labels = [], [], []
            for position in np.setdiff1d(np.arange(int(expected), int(stop)), present):
                image = by_graph(row_of(position), _derived_word(words[0], position) if takes_seed else None)
                if image is not None:
                    added.append(tf.cast(image, images.dtype))
                    added_at.append(position)
                    added_labels.append(labels[row_of(position)])
            if keep.all() and not added:
                return images, batch_labels
            images, batch_labels = tf.boolean_mask(images, keep), tf.boolean_mask(batch_labels, keep)
            if added:
                images = tf.concat([images, tf.stack(added)], 0)
                batch_labels = tf.concat([batch_labels, tf.constant(added_labels, batch_labels.dtype)], 0)
            where = np.argsort(np.concatenate([present[keep], added_at]), kind="stable")
            return tf.gather(images, where), tf.gather(batch_labels, where)

        return merge

    def _fit(self, image):
        """The target size (float32), or in full-size mode the decoded pixels as uint8."""
        if self._full_size:
            return image if image.dtype == tf.uint8 else _to_uint8(image)
        return resize_image(image, self._size, self._resize)

    def _graph_decode(self, row):
        contents = self._read(row)
        # Both decoders raise on truncated or foreign data, which drops the file's batch from the map and sends
        # it to the rescue. Each branch resizes its own decoded pixels: the JPEG one straight from uint8 (a float
        # copy of a full-size photo first would cost as much as the resize), the PNG one too, or from float, /257
        # of its 16-bit decode, where the split has 16-bit PNGs, to keep their precision.
        return self._by_codec(contents, lambda: self._decode_jpeg(contents, row.get("scale")),
                              lambda: self._decode_png(contents))

    def _by_codec(self, contents, jpeg, png):
        """``jpeg()`` or ``png()`` for this file; a branch only where the split has both codecs."""
        if self._codecs == {CODECS["JPEG"]}:
            return jpeg()
        if self._codecs == {CODECS["PNG"]}:
            return png()
        return tf.cond(tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE), png, jpeg)

    def _decode_png(self, contents):
        if not self._png16:
            return self._fit(tf.io.decode_png(contents, channels=3))
        return self._fit(tf.cast(tf.io.decode_png(contents, channels=3, dtype=tf.uint16), tf.float32) / 257.0)

    def _decode_jpeg(self, contents, scale):
        branches = [lambda r=_DCT_SCALES[s]: self._fit(tf.io.decode_jpeg(contents, channels=3, ratio=r))
                    for s in self._scales]
        if len(branches) == 1:
            return branches[0]()
        position = tf.searchsorted(tf.constant(self._scales, tf.int32), scale[None])[0]
        return tf.switch_case(position, branches)

    def _strict_pillow_decode(self, row):
        image, ok = self._pillow_decode(row)
        # Failing here drops this file from the fast path; the rescue finds it already recorded.
        check = tf.debugging.Assert(ok, [row["path"]], name="pillow_decoded")
        with tf.control_dependencies([check]):
            return tf.identity(image)

    def _decode_or_report(self, path: bytes, scale, rejected) -> tuple[np.ndarray, bool]:
        """Pillow's decode of one file at DCT scale index ``scale``; a file it cannot decode is recorded in
        ``index.skipped`` (logged once) and comes back as black pixels with False. ``rejected``: the in-graph
        decoder failed on it first."""
        index, path = self._index, os.fsdecode(path)
        try:
            return decode.decode_file(path, scale=_DCT_SCALES[int(scale)], max_pixels=index.max_pixels), True
        except decode.BadImage as bad:
            reason, detail = bad.reason, bad.detail
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, the epoch goes on
            reason, detail = decode.CORRUPT, f"{type(exc).__name__}: {exc}"
        if rejected:
            detail = f"the in-graph decoder failed on it, and Pillow: {detail}"
        if index.record_skip(path, reason, detail, self._split) and index.log_skips:
            log.warning("Skipped %s: %s (%s)", path, reason, detail)
        return np.zeros((*self._size, 3), np.uint8), False

    def _pillow_decode(self, row):
        """``(fitted image, ok)`` of a flagged file, decoded by Pillow in the graph's ``tf.numpy_function``."""
        scale = row.get("scale", tf.constant(self._scales[0], tf.int32))
        image, ok = tf.numpy_function(lambda path, scale: self._decode_or_report(path, scale, False),
                                      [row["path"], scale], [tf.uint8, tf.bool], stateful=False)
        image.set_shape((None, None, 3))
        ok.set_shape(())
        return self._fit(image), ok


class _PassStream:
    """One pass over a split's rows as batches: a parallel ``map(load)`` fused with ``batch``, whose failing
    batches ``ignore_errors`` drops, then a ``scan`` that puts back what was dropped or stood in for.

    Every element carries its position, so a batch (or an end marker after the last batch, so that files
    dropped at the end are seen too) shows which positions since the previous batch are missing. The scan's
    step is one Python call (``_restore``): those files, and the flagged files a batch holds stand-ins for
    (``stand_ins``), go to ``rescue`` (eager; see ``_FileSource._rescuer``), which merges them in at their
    place, so the pass keeps the index order and every good file comes once. ``rebatch`` then cuts batches
    of ``batch_size`` (the last may be shorter): the fast path's batches pass through it uncopied, and the
    end marker, empty unless files were dropped at the end, vanishes in it. A dropped file's seed word
    derives from its batch's (or the end marker's) first word and its position: reproducible, and new each
    iteration like the rest."""

    def __init__(self, columns, load, rescue, *, takes_seed, batch_size, stand_ins=False):
        self._columns = {key: tf.constant(value) for key, value in columns.items()}
        self._count = len(columns["label"])
        self._load, self._rescue, self._takes_seed = load, rescue, takes_seed
        self._batch_size = batch_size
        self._flagged = np.asarray(columns["pillow"], bool) if stand_ins else None

    def ordered(self, *, words, end_word, order=None):
        """The pass in ``order`` (int64 rows per position; None: as listed); ``words`` a dataset of one seed
        word per position, ``end_word`` one of a single word for the end marker."""
        positions = tf.data.Dataset.range(self._count)
        if self._takes_seed:
            positions = tf.data.Dataset.zip(positions, words)

        def decoded(position, *word):
            image, label = self._load(self._row(position, order), *word)
            return (image, label, position, *word)

        # Fused with the batch (tf.data fuses a map followed by a batch), the copy of each image into its batch
        # happens while the image is still in cache: unfused, to drop a failing file alone, cost ~10% more CPU
        # per image on catsdogs/train (BENCHMARKS.md). A file that fails drops its whole batch instead, which the
        # rescue decodes again.
        fast = positions.map(decoded, num_parallel_calls=_PARALLELISM, deterministic=True)
        fast = fast.batch(self._batch_size).ignore_errors()
        images, labels = fast.element_spec[:2]
        marker = (tf.zeros([0, *(d or 0 for d in images.shape[1:])], images.dtype), tf.zeros([0], labels.dtype),
                  tf.constant([self._count], tf.int64))
        marker = tf.data.Dataset.from_tensors(marker)
        if self._takes_seed:
            marker = tf.data.Dataset.zip(marker, end_word).map(lambda parts, word: (*parts, word[None]))
        fast = fast.concatenate(marker)
        rows = tf.zeros([0], tf.int64) if order is None else order

        def restore(expected, batch):
            images, labels, positions, *words = batch
            seeds = words[0] if words else tf.zeros([0], tf.int64)
            stop, images, labels = tf.py_function(self._restore, [expected, images, labels, positions, seeds, rows],
                                                  [tf.int64, images.dtype, labels.dtype])
            stop.set_shape(())
            images.set_shape(batch[0].shape)
            labels.set_shape(batch[1].shape)
            return stop, (images, labels)

        return fast.scan(tf.constant(0, tf.int64), restore).rebatch(self._batch_size)

    def _restore(self, expected, images, labels, positions, words, order):
        """The scan's step, in Python: ``(stop, images, labels)``, the batch as it came unless it lacks positions
        since ``expected`` or holds stand-ins, which ``rescue`` then fills in.

        One ``tf.py_function`` per batch, with no graph around it: tf.data instantiates and optimises each function
        again on every iterator, so every epoch, and a graph-side check with a ``tf.cond`` in front of the call cost
        ~10 ms more per iterator (hymenoptera/train: 37 against 28 ms, median of 41), where the Python call on every
        batch measured below noise (CPU per batch of 32 images at 224x224: 6.35 against 6.40 ms, minimum of 7)."""
        positions = positions.numpy()
        count = len(labels)
        stop = int(positions[-1]) + min(count, 1)  # after this batch; the end marker's position is the end
        order = order.numpy()
        needed = stop - int(expected) > count
        if self._flagged is not None and count:
            present = positions[:count] if not order.shape[0] else order[positions[:count]]
            needed = needed or bool(self._flagged[present].any())
        if needed:
            images, labels = self._rescue(int(expected), stop, images, labels, positions, words.numpy(), order)
        return stop, images, labels

    def shuffled(self, word):
        """The pass in the order, and with the seeds, that ``word`` draws (inside ``flat_map``)."""
        order = tf.random.experimental.stateless_shuffle(tf.range(self._count, dtype=tf.int64),
                                                          seed=_stateless_seed(word, _ORDER_STAGE))
        words = tf.data.Dataset.range(self._count).map(lambda position: _derived_word(word, position))
        return self.ordered(words=words, end_word=tf.data.Dataset.from_tensors(word), order=order)

    def _row(self, position, order):
        row = position if order is None else tf.gather(order, position)
        return {key: tf.gather(column, row) for key, column in self._columns.items()}


def _derived_word(word, position):
    """A full-range int64 word (minval and maxval None) drawn from ``(word, position)``."""
    return tf.random.stateless_uniform([], seed=tf.stack([word, position]), minval=None, maxval=None,
                                       dtype=tf.int64)


def resize_image(image, size, resize):
    """``image`` (any size, channels last) at ``size`` under a resize policy of :data:`RESIZE_MODES`: stretch,
    centre crop to the aspect ratio then resize, or letterbox (``tf.image.resize_with_pad``); float32."""
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
    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def distribute(ds: tf.data.Dataset, strategy: tf.distribute.Strategy | None = None) -> tf.data.Dataset:
    """Places a dataset for training: distributed by ``strategy`` when given (which prefetches onto each
    replica itself), else prefetched onto the first GPU when there is one, else returned as is (the
    pipeline already ends with ``prefetch(AUTOTUNE)``)."""
    if strategy is not None:
        return strategy.experimental_distribute_dataset(ds)
    device = _first_gpu()
    if device is None:
        return ds
    # prefetch_to_device loses the dataset's length; Keras' fit wants it where no steps_per_epoch is given.
    cardinality = ds.cardinality()
    ds = ds.apply(tf.data.experimental.prefetch_to_device(device))
    return ds.apply(tf.data.experimental.assert_cardinality(cardinality)) if cardinality >= 0 else ds


def _first_gpu() -> str | None:
    """The first visible GPU's device name, or None."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else None
