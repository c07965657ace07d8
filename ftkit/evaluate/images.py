"""Where the evaluation stage reads images: the one adapter between ``ftkit.evaluate`` and image files.

Evaluation needs two things: a labelled split folder (one subfolder per class) listed in a fixed order,
and images decoded and resized the way training saw them (float32 0..255, ``[H, W, C]``). Decoding is
``ftkit.data.decode`` (the training pipeline's Pillow conversions: EXIF rotation, alpha over white, first
frame); resizing is bilinear then rounded to uint8 as the pipeline does. Files are decoded one by one,
keyed by path, rather than through ``ftkit.data.make_dataset``: that pipeline drops undecodable elements
(``ignore_errors``) without always recording which, and a dropped element would shift every later
prediction onto the wrong path (the keras#11427 failure this stage exists to avoid).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESIZE_MODES = ("stretch", "crop", "pad")


@dataclass
class LabelledFiles:
    """A split in a fixed order: ``paths[i]`` has class index ``labels[i]`` into ``class_names``."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    skipped: list[dict] = field(default_factory=list)


class ClassMismatchError(ValueError):
    """The data set's classes are not the model's classes."""


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _files_under(folder: Path) -> list[Path]:
    """Regular files below ``folder``, skipping hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_classes(found: Sequence[str], expected: Sequence[str], *, allow_missing: bool, source: str) -> None:
    """Refuse a data set whose classes differ from the model's, naming the differences."""
    extra = sorted(set(found) - set(expected))
    missing = [name for name in expected if name not in set(found)]
    if extra or (missing and not allow_missing):
        parts = []
        if extra:
            parts.append(f"classes the model does not know: {extra}")
        if missing:
            parts.append(f"model classes absent from the data: {missing}")
        hint = " (pass --allow-missing-classes to evaluate on a subset)" if missing and not extra else ""
        raise ClassMismatchError(
            f"The evaluation data's classes do not match the model's: {'; '.join(parts)}{hint}. "
            f"DATA must be one split folder with one subfolder per class. "
            f"Received: data={source!r} with classes {sorted(found)}, model classes {list(expected)}"
        )


def scan_split(data_dir: str | Path, class_names: Sequence[str], *, allow_missing_classes: bool = False) -> LabelledFiles:
    """List ``data_dir/<class>/**`` files, labelled by the model's class order, sorted by class then path."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Evaluation data must be a folder with one subfolder per class. Received: data={str(data_dir)!r}")
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _visible(p)}
    check_classes(list(folders), class_names, allow_missing=allow_missing_classes, source=str(data_dir))
    paths, labels = [], []
    for index, name in enumerate(class_names):
        if name not in folders:
            continue
        files = _files_under(folders[name])
        paths.extend(str(p.resolve()) for p in files)
        labels.extend([index] * len(files))
    if not paths:
        raise ValueError(f"The evaluation data has no files in its class folders. Received: data={str(data_dir)!r}")
    return LabelledFiles(paths=paths, labels=np.asarray(labels, dtype=np.int64), class_names=list(class_names))


def expand_paths(inputs: Iterable[str | Path]) -> tuple[list[str], list[dict]]:
    """Files as given plus every visible file under given folders (sorted); missing inputs are reported."""
    paths, bad = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(str(p.resolve()) for p in _files_under(path))
        elif path.is_file():
            paths.append(str(path.resolve()))
        else:
            bad.append({"path": str(item), "reason": "no such file or folder"})
    return paths, bad


def _decode(path: str, channels: int) -> np.ndarray:
    from ftkit.data.decode import decode_file

    rgb = decode_file(path).astype(np.float32)
    if channels == 3:
        return rgb
    # ITU-R 601 luma, as tf.image.rgb_to_grayscale in the training pipeline.
    return (rgb @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None]


def _resize(image: np.ndarray, image_size: Sequence[int], resize: str) -> np.ndarray:
    import keras

    resized = keras.ops.image.resize(
        image,
        tuple(image_size),
        interpolation="bilinear",
        crop_to_aspect_ratio=resize == "crop",
        pad_to_aspect_ratio=resize == "pad",
    )
    # The training pipeline stores resized images as uint8 before casting back to float32.
    return np.clip(np.round(np.asarray(resized, dtype=np.float32)), 0, 255)


def load_image(path: str, *, image_size: Sequence[int], channels: int, resize: str = "stretch") -> np.ndarray:
    """One image as float32 ``[H, W, C]`` in 0..255, resized as training did. Raises on unreadable files."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    return _resize(_decode(path, channels), image_size, resize)


def load_batch(
    paths: Sequence[str], *, image_size: Sequence[int], channels: int, resize: str = "stretch", workers: int = 4
) -> tuple[np.ndarray, list[int], list[dict]]:
    """Decode ``paths``; returns the stacked images, the indices (into ``paths``) that decoded, and the failures."""

    def attempt(path):
        try:
            return load_image(path, image_size=image_size, channels=channels, resize=resize), None
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported, never fatal
            return None, f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(attempt, paths))
    ok = [i for i, (image, _) in enumerate(results) if image is not None]
    failures = [{"path": paths[i], "reason": reason} for i, (_, reason) in enumerate(results) if reason is not None]
    images = np.stack([results[i][0] for i in ok]) if ok else np.zeros((0, *image_size, channels), np.float32)
    return images, ok, failures
