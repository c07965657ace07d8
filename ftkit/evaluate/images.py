"""Where the evaluation stage reads images: the one adapter between ``ftkit.evaluate`` and image files.

Evaluation needs two things: a labelled split folder (one subfolder per class) listed in a fixed order,
and images decoded and resized exactly as training saw them. So files go through the training pipeline
itself (:func:`ftkit.data.make_dataset` over :func:`ftkit.data.sources.scan_files`): the same header checks,
Pillow conversions (EXIF rotation, alpha over white, first frame), JPEG DCT scales and resize, float32 0..255
``[H, W, C]``. A separate decode here (Pillow at full size, then a resize) gave other pixels than training
for every photo the pipeline decodes at a reduced DCT scale, and another prediction on some of them. The
pipeline keeps the file order, and a file it cannot read is left out and recorded with its reason, so the
files that came through are known (the keras#11427 failure, predictions shifted onto the wrong paths, cannot
happen).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    source: str = ""  # where the split came from (a folder, a data set's source), shown in the report


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
    return LabelledFiles(paths=paths, labels=np.asarray(labels, dtype=np.int64), class_names=list(class_names),
                         source=str(data_dir))


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


class TrainingDecode:
    """Batches of ``paths`` decoded and resized by the training pipeline, in order; after the pass, which
    files came through (:meth:`outcome`). Iterating decodes the next batches in the background (tf.data's
    prefetch) while the caller works on the current one."""

    def __init__(self, paths: Sequence[str], *, image_size: Sequence[int], channels: int, resize: str = "stretch",
                 batch_size: int = 32):
        from ftkit.data import make_dataset, sources

        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
        self.paths = [str(p) for p in paths]
        self._index = sources.scan_files(self.paths)
        split = self._index[sources.FILES_SPLIT]
        self._dataset = None if not len(split) else make_dataset(
            self._index, sources.FILES_SPLIT, image_size=tuple(image_size), channels=channels, resize=resize,
            batch_size=batch_size)

    def __iter__(self):
        if self._dataset is not None:
            for images, _ in self._dataset:
                yield images.numpy()

    def outcome(self) -> tuple[list[int], list[dict]]:
        """``(kept, failures)``: indices into ``paths`` of the files that came through, in order (row ``i`` of
        the concatenated batches is ``paths[kept[i]]``), and each unreadable file with its reason."""
        bad = {s.path: s for s in self._index.skipped}
        kept = [i for i, path in enumerate(self.paths) if path not in bad]
        failures = [{"path": path, "reason": _reason(bad[path])} for path in dict.fromkeys(self.paths) if path in bad]
        return kept, failures


def _reason(skipped) -> str:
    return f"{skipped.reason} ({skipped.detail})" if skipped.detail else skipped.reason


def load_batch(paths: Sequence[str], *, image_size: Sequence[int], channels: int,
               resize: str = "stretch") -> tuple[np.ndarray, list[int], list[dict]]:
    """Decode ``paths`` as training does; returns the stacked images (float32 0..255), the indices (into
    ``paths``) that decoded, and the failures."""
    decoded = TrainingDecode(paths, image_size=image_size, channels=channels, resize=resize,
                             batch_size=max(1, len(paths)))
    batches = list(decoded)
    images = np.concatenate(batches) if batches else np.zeros((0, *image_size, channels), np.float32)
    kept, failures = decoded.outcome()
    return images, kept, failures


def load_image(path: str, *, image_size: Sequence[int], channels: int, resize: str = "stretch") -> np.ndarray:
    """One image as float32 ``[H, W, C]`` in 0..255, as training saw it. Raises on an unreadable file."""
    images, kept, failures = load_batch([path], image_size=image_size, channels=channels, resize=resize)
    if not kept:
        raise ValueError(f"Cannot read {path}: {failures[0]['reason']}. Received: path={path!r}")
    return images[0]
