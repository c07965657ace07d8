"""``ftkit augment preview``: a PNG grid of training images and augmented variants, to check a policy
before hours of training. Row = one sample image: the original (resized) first, then ``variants``
augmented versions; each tile is ``image_size`` pixels, so the PNG is (rows*H) x ((1+variants)*W).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftkit.augment.config import AugmentConfig

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def read_recipe_sections(recipe: str | Path) -> tuple[dict[str, Any], AugmentConfig, Path]:
    """The recipe's ``data`` section, validated ``augment`` section and the training image folder.

    The whole recipe is validated by the recipe loader, so preview accepts exactly what ``ftkit train`` does.
    """
    from ftkit.recipe import load_recipe

    loaded = load_recipe(recipe)
    data = loaded.data.model_dump()
    size = data.get("image_size")
    if size is None:  # the backbone's own input size, as training uses
        from ftkit.backbones import backbone_info

        data["image_size"] = list(backbone_info(loaded.backbone.name).default_input_shape[:2])
    return data, loaded.augment, _training_folder(loaded.data.train, recipe=Path(recipe))


def _training_folder(root: str, *, recipe: Path) -> Path:
    """``root/train`` if present, else ``root``; a relative root is looked up from the working folder,
    then from the recipe's folder. Preview samples images from class folders (not CSV or MNIST sources)."""
    candidates = [Path(root), recipe.parent / root] if not Path(root).is_absolute() else [Path(root)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate / "train" if (candidate / "train").is_dir() else candidate
    raise FileNotFoundError(
        f"augment preview needs data.train to be a folder of class folders; looked in "
        f"{[str(c) for c in candidates]}. Received: data.train={root!r}"
    )


def sample_images(folder: Path, *, count: int) -> list[tuple[np.ndarray, int]]:
    """``count`` (uint8 RGB image, class index) pairs spread evenly over the sorted class folders' files."""
    from PIL import Image

    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted(c.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"no images in class folders under {folder}. Received: folder={str(folder)!r}")
    picks = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    return [(np.asarray(Image.open(files[i][0]).convert("RGB")), files[i][1]) for i in picks]


def augment_samples(
    config: AugmentConfig, samples: list[tuple[np.ndarray, int]], *, image_size: tuple[int, int], variants: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(originals [N,H,W,3], augmented [N,variants,H,W,3])`` uint8, through the training path."""
    import tensorflow as tf

    from ftkit.augment import build_augmentation

    num_classes = max(label for _, label in samples) + 1
    aug = build_augmentation(config, image_size=image_size, num_classes=num_classes)
    originals = np.stack([tf.image.resize(image, image_size).numpy() for image, _ in samples])
    rows = []
    for index, (image, label) in enumerate(samples):
        seeds = [tf.constant([config.seed, index * variants + v], tf.int64) for v in range(variants)]
        if aug.per_image_fn:
            batch = tf.stack([aug.per_image_fn(tf.constant(image), seed=s) for s in seeds])
        else:
            batch = tf.repeat(tf.constant(originals[index:index + 1]), variants, axis=0)
        if aug.per_batch_fn:
            labels = tf.one_hot([label] * variants, num_classes)
            batch, _ = aug.per_batch_fn(batch, labels, seed=tf.constant([config.seed, index], tf.int64))
        rows.append(batch.numpy())
    return _to_uint8(originals), _to_uint8(np.stack(rows))


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def save_grid(originals: np.ndarray, augmented: np.ndarray, out: str | Path) -> Path:
    """Tiles at one image pixel per PNG pixel, originals in the first column."""
    from matplotlib.figure import Figure

    rows, variants, height, width = augmented.shape[:4]
    cols = 1 + variants
    dpi = 100
    figure = Figure(figsize=(cols * width / dpi, rows * height / dpi), dpi=dpi)
    for row in range(rows):
        for col in range(cols):
            ax = figure.add_axes((col / cols, 1 - (row + 1) / rows, 1 / cols, 1 / rows))
            ax.imshow(originals[row] if col == 0 else augmented[row, col - 1], interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.text(2, 2, "original" if col == 0 else f"augmented {col}", color="yellow", fontsize=7,
                        va="top", ha="left", backgroundcolor=(0, 0, 0, 0.5))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi, format="png")
    return out


def preview(
    recipe: str | Path, *, out: str | Path, samples: int = 4, variants: int = 5,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Write the preview grid for ``recipe``; the size is ``image_size``, else ``data.image_size``, else 224."""
    if samples < 1 or variants < 1:
        raise ValueError(f"samples and variants must be >= 1. Received: samples={samples}, variants={variants}")
    data, config, folder = read_recipe_sections(recipe)
    size = image_size or data.get("image_size") or 224
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    originals, augmented = augment_samples(config, sample_images(folder, count=samples), image_size=size,
                                           variants=variants)
    return save_grid(originals, augmented, out)
