"""``ftkit augment preview``: a PNG grid of training images and augmented variants, to check a policy
before hours of training. Row = one sample image: the original (resized as ``data.resize`` says) first,
then ``variants`` augmented versions, below a strip that labels the columns. Images smaller than
``MIN_TILE`` pixels on their shorter side (MNIST's 28x28, CIFAR's 32x32) are enlarged by the integer factor
``k = tile_scale(image_size)``, nearest neighbour: each image pixel is a k x k block of one colour, so what is
shown is exactly what training is fed. The PNG is (LABEL_STRIP + rows*H*k) x ((1+variants)*W*k).

The samples are what training is fed: rows of the training split as ``ftkit train`` scans it (class folders,
a ``path,label`` CSV, MNIST IDX or ``mnist.npz``), decoded by :mod:`ftkit.data.decode` under the training
conversions (EXIF orientation applied, alpha over white, 16-bit precision, CMYK to RGB). A file that cannot
be used is skipped and logged with its reason, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ftkit.augment.config import AugmentConfig
from ftkit.data import DataIndex, Skipped, decode

log = logging.getLogger("ftkit.augment")

_DPI = 100  # with a figure of the grid's size in pixels / _DPI, one figure pixel per PNG pixel
LABEL_STRIP = 14  # pixels above the tiles for the column labels (7-point text at 100 dpi)
# Tiles at least this many pixels on their shorter side: an "augmented 12" label at 7 points fits, and a
# 28x28 digit's strokes, crops and rotations can be judged by eye.
MIN_TILE = 128
_LISTED_SKIPS = 20  # skipped files named one per line; `ftkit data check` lists them all


def read_recipe_sections(recipe: str | Path, *, overrides: list[str] | dict[str, Any] | None = None,
                         ) -> tuple[dict[str, Any], AugmentConfig, Path]:
    """The recipe's ``data`` section, validated ``augment`` section and the training data source.

    The whole recipe is validated by the recipe loader, with ``overrides`` (``--set``) applied as ``ftkit
    train`` applies them, so preview accepts exactly what training does.
    """
    from ftkit.recipe import load_recipe

    loaded = load_recipe(recipe, overrides=overrides)
    data = loaded.data.model_dump()
    size = data.get("image_size")
    if size is None:  # the backbone's own input size, as training uses
        from ftkit.backbones import backbone_info

        data["image_size"] = list(backbone_info(loaded.backbone.name).default_input_shape[:2])
    return data, loaded.augment, _training_source(loaded.data.train, recipe=Path(recipe))


def _training_source(root: str, *, recipe: Path) -> Path:
    """``data.train`` looked up from the working folder (as training does), then from the recipe's folder."""
    candidates = [Path(root), recipe.parent / root] if not Path(root).is_absolute() else [Path(root)]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        "augment preview needs data.train to be a folder of class folders, a path,label CSV, an MNIST folder or "
        f"mnist.npz; looked in {[str(c) for c in candidates]}. Received: data.train={root!r}"
    )


def training_index(data: dict[str, Any], source: Path) -> DataIndex:
    """The index ``ftkit train`` builds from the recipe's data section (same held-out split and classes).

    Unlike training, it does not refuse data with a single class: a preview of it is still useful.
    """
    from ftkit.data.sources import scan_unchecked

    return scan_unchecked(source, val_fraction=0.0 if data.get("val") else data.get("val_fraction", 0.0),
                          test_fraction=0.0 if data.get("test") else data.get("test_fraction", 0.0),
                          seed=data.get("seed", 0), class_names=data.get("classes"))


def sample_images(index: DataIndex, *, count: int, split: str = "train") -> list[tuple[np.ndarray, int]]:
    """Up to ``count`` (uint8 RGB image, class index) pairs spread evenly over the split's rows, in row order.

    A file that fails to decode is recorded in ``index.skipped`` (as the pipeline records it) and the next
    unused row takes its place.
    """
    data = index.splits.get(split)
    if data is None or len(data) == 0:
        return []
    picked: list[tuple[int, np.ndarray]] = []
    for row in _spread(len(data), count):
        image = _decode_row(index, split, row)
        if image is not None:
            picked.append((row, image))
            if len(picked) == count:
                break
    return [(image, int(data.labels[row])) for row, image in sorted(picked, key=lambda item: item[0])]


def _spread(n: int, count: int) -> Iterator[int]:
    """``count`` rows evenly spaced over ``range(n)``, then every other row in order (replacements)."""
    picks = np.linspace(0, n - 1, num=min(count, n)).round().astype(int)
    yield from picks.tolist()
    yield from np.setdiff1d(np.arange(n), picks).tolist()


def _decode_row(index: DataIndex, split: str, row: int) -> np.ndarray | None:
    """One row's pixels as uint8 RGB, or None after recording why its file cannot be decoded."""
    data = index[split]
    if data.images is not None:  # in-memory (MNIST): [H, W] or [H, W, C]
        image = data.images[row]
        image = image if image.ndim == 3 else image[..., None]
        return image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
    path = str(data.paths[row])
    try:
        return decode.decode_file(path, max_pixels=index.max_pixels)
    except decode.BadImage as bad:
        reason, detail = bad.reason, bad.detail
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises, as the training pipeline does
        reason, detail = decode.CORRUPT, f"{type(exc).__name__}: {exc}"
    index.record_skip(path, reason, detail, split)
    return None


def report_skipped(index: DataIndex, *, split: str = "train") -> list[Skipped]:
    """Logs the split's bad files (one warning line each, naming the file and its reason) and returns them."""
    bad = [s for s in index.skipped if s.split == split and s.reason in decode.REASONS]
    for s in bad[:_LISTED_SKIPS]:
        log.warning("skipped %s: %s%s", s.path, s.reason, f" ({s.detail})" if s.detail else "")
    if len(bad) > _LISTED_SKIPS:
        log.warning("... and %d more skipped files; `ftkit data check %s` lists every one",
                    len(bad) - _LISTED_SKIPS, index.source)
    return bad


def augment_samples(
    config: AugmentConfig, samples: list[tuple[np.ndarray, int]], *, image_size: tuple[int, int], variants: int,
    resize: str = "stretch",
) -> tuple[np.ndarray, np.ndarray]:
    """``(originals [N,H,W,3], augmented [N,variants,H,W,3])`` uint8, through the training path: the originals
    at ``image_size`` under the ``resize`` policy (``data.resize``), and the per-image augmentation fed what
    :func:`ftkit.data.make_dataset` feeds it (the decoded image where the policy starts with a random resized
    crop, else the resized one)."""
    import tensorflow as tf

    from ftkit.augment import build_augmentation
    from ftkit.data.pipeline import resize_image

    num_classes = max(label for _, label in samples) + 1
    aug = build_augmentation(config, image_size=image_size, num_classes=num_classes)
    originals = np.stack([resize_image(tf.constant(image), image_size, resize).numpy() for image, _ in samples])
    decoded = bool(aug.per_image_fn and getattr(aug.per_image_fn, "takes_decoded", False))
    rows = []
    for index, (image, label) in enumerate(samples):
        seeds = [tf.constant([config.seed, index * variants + v], tf.int64) for v in range(variants)]
        if aug.per_image_fn:
            fed = tf.constant(image if decoded else originals[index])
            batch = tf.stack([aug.per_image_fn(fed, seed=s) for s in seeds])
        else:
            batch = tf.repeat(tf.constant(originals[index:index + 1]), variants, axis=0)
        if aug.per_batch_fn:
            labels = tf.one_hot([label] * variants, num_classes)
            batch, _ = aug.per_batch_fn(batch, labels, seed=tf.constant([config.seed, index], tf.int64))
        rows.append(batch.numpy())
    return _to_uint8(originals), _to_uint8(np.stack(rows))


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


class Grid(NamedTuple):
    """What :func:`preview` wrote: the PNG, the images' ``(H, W)`` and the factor each pixel was enlarged by."""

    path: Path
    image_size: tuple[int, int]
    scale: int


def tile_scale(image_size: tuple[int, int]) -> int:
    """The smallest integer factor that makes the shorter side at least ``MIN_TILE`` pixels; 1 when it already is.

    Integer, because nearest-neighbour enlargement by a fraction repeats some rows and columns and not others,
    which bends a thin stroke; the smallest such factor keeps the PNG small (4 rows of 1 + 5 MNIST images at
    x5: 840x574). Larger images stay 1:1: shrinking them would drop the very pixels the preview is there to show.
    """
    return max(1, -(-MIN_TILE // min(image_size)))


def save_grid(originals: np.ndarray, augmented: np.ndarray, out: str | Path) -> Path:
    """Write :func:`grid_figure` to ``out`` (PNG), one figure pixel per PNG pixel."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_figure(originals, augmented).savefig(out, dpi=_DPI, format="png")
    return out


def grid_figure(originals: np.ndarray, augmented: np.ndarray):
    """A matplotlib ``Figure``: the tiles enlarged by :func:`tile_scale` (nearest neighbour), originals in the
    first column, column labels in a strip above."""
    from matplotlib.figure import Figure

    scale = tile_scale(originals.shape[1:3])
    originals, augmented = (images.repeat(scale, axis=-3).repeat(scale, axis=-2) for images in (originals, augmented))
    rows, variants, height, width = augmented.shape[:4]
    cols = 1 + variants
    grid = np.full((LABEL_STRIP + rows * height, cols * width, 3), 255, np.uint8)
    for row in range(rows):
        for col in range(cols):
            top, left = LABEL_STRIP + row * height, col * width
            grid[top:top + height, left:left + width] = originals[row] if col == 0 else augmented[row, col - 1]
    figure = Figure(figsize=(grid.shape[1] / _DPI, grid.shape[0] / _DPI), dpi=_DPI)
    figure.figimage(grid, origin="upper")  # placed pixel for pixel, no resampling
    for col in range(cols):
        figure.text((col * width + 2) / grid.shape[1], 1 - 1 / grid.shape[0], _column_label(col, width=width),
                    fontsize=7, va="top", ha="left")
    return figure


def _column_label(col: int, *, width: int) -> str:
    """The longest label that fits a tile ``width`` pixels wide at 7 points (~6 pixels a character): the whole
    one at ``MIN_TILE`` pixels and up to 20 characters."""
    labels = ("original", "orig") if col == 0 else (f"augmented {col}", f"aug {col}", str(col))
    return next((label for label in labels if 6 * len(label) + 4 <= width), labels[-1])


def preview(
    recipe: str | Path, *, out: str | Path, samples: int = 4, variants: int = 5,
    image_size: tuple[int, int] | None = None, overrides: list[str] | dict[str, Any] | None = None,
) -> Grid:
    """Write the preview grid for ``recipe`` (with ``overrides``, as ``ftkit train --set`` takes them); the size
    is ``image_size``, else ``data.image_size``, else 224; images under ``MIN_TILE`` pixels are shown enlarged
    by ``tile_scale(size)`` (the returned ``scale``).

    Bad files met in the training split are logged (``ftkit.augment`` logger, one warning each); when none
    of its files decodes, raises ``ValueError``.
    """
    if samples < 1 or variants < 1:
        raise ValueError(f"samples and variants must be >= 1. Received: samples={samples}, variants={variants}")
    data, config, source = read_recipe_sections(recipe, overrides=overrides)  # the recipe's errors first
    if Path(out).suffix.lower() != ".png":  # the grid is PNG data: another name would misdescribe the file
        raise ValueError(f"out must name a .png file (the grid is written as PNG). Received: out={str(out)!r}")
    size = image_size or data.get("image_size") or 224
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    index = training_index(data, source)
    picked = sample_images(index, count=samples)
    bad = report_skipped(index)
    if not picked:
        found = f" ({len(bad)} bad file(s), listed above)" if bad else ""
        raise ValueError(f"augment preview found no decodable training image in {index.source}{found}. "
                         f"Received: data.train={str(source)!r}")
    if config.backend == "none" and not (config.mixup or config.cutmix):
        log.warning("the recipe has no augmentation (augment.backend is 'none', no mixup or cutmix): every "
                    "variant in the grid equals its original")
    originals, augmented = augment_samples(config, picked, image_size=size, variants=variants,
                                           resize=data.get("resize", "stretch"))
    return Grid(save_grid(originals, augmented, out), size, tile_scale(size))
