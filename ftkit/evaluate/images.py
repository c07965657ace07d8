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

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftkit.data import sources

RESIZE_MODES = ("stretch", "crop", "pad")


@dataclass
class LabelledFiles:
    """A split in a fixed order: ``paths[i]`` has class index ``labels[i]`` into ``class_names``.

    In-memory data (MNIST) has its uint8 pixels in ``images``, row for row; ``paths`` are then row names
    (``test[1234]``: MNIST's index in its test arrays)."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason" (a ftkit.data REASONS code), "detail"}
    source: str = ""  # where the split came from (a folder, a data set's source), shown in the report
    warnings: list[str] = field(default_factory=list)  # about the data as a whole (an empty class folder)
    images: np.ndarray | None = None
    split: str = ""  # the split chosen from a data set with splits ("" when the data is one split)
    split_note: str = ""  # which split was chosen and why, for the report and `ftkit evaluate`'s output
    report_name: str = ""  # the report folder's name in RUN/report/ (default: from ``source``)
    # Rows left out because the model does not know their class (``only_model_classes``): class -> rows.
    unknown_classes: dict[str, int] = field(default_factory=dict)


def data_name(source: str | os.PathLike) -> str:
    """A data source's name in report folder names: ``pets`` for ``pets/`` or ``pets.csv``; a split folder is
    named with its parent (``hymenoptera/train`` gives ``hymenoptera-train``: every data set has a ``train/``)."""
    path = Path(source)
    name = (path.stem if path.suffix and not path.is_dir() else path.name) or "data"
    return f"{path.parent.name or 'data'}-{name}" if name.lower() in sources.SPLIT_FOLDERS else name


class ClassMismatchError(ValueError):
    """The data set's classes are not the model's classes."""


def skipped_file(path: str, reason: str, detail: str = "") -> dict:
    """A file left out, as the report lists it: ``reason`` is one of ``ftkit.data.REASONS``."""
    return {"path": path, "reason": reason, "detail": detail}


def describe(skipped: dict) -> str:
    """``"reason (detail)"``, how a skipped file is shown."""
    return f"{skipped['reason']} ({skipped['detail']})" if skipped.get("detail") else skipped["reason"]


def count_by_reason(skipped: Sequence[dict]) -> str:
    """``"3 (2 not an image, 1 too large)"``: how many files were skipped, and why."""
    counts = Counter(s["reason"] for s in skipped).most_common()
    return f"{len(skipped)} ({', '.join(f'{n} {reason}' for reason, n in counts)})" if skipped else "0"


def _absolute(path: str) -> str:
    try:
        return str(Path(path).resolve(strict=True))
    except (OSError, RuntimeError):  # a broken link or a link loop: the decoder names it
        return os.path.abspath(path)


def _walk(folder: str, ancestors: Sequence[tuple[int, int]] = (), *,
          ignored: list[str] | None = None) -> Iterator[tuple[str, dict | None]]:
    """``(absolute path, None)`` for each file below ``folder``, or ``(folder, skipped)`` for a folder that
    cannot be walked, listed as ``ftkit.data`` lists a class folder (:func:`ftkit.data.sources.walk_files`,
    which appends what it leaves out to ``ignored``)."""
    for path, bad in sources.walk_files(folder, ancestors, ignored=ignored):
        if bad is None:
            yield _absolute(path), None
        else:
            yield os.path.abspath(path), skipped_file(os.path.abspath(path), *bad)


def _visible_folders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir()}


def _check_not_split_tree(root: Path, class_names: Sequence[str]) -> None:
    """Refuse ``ROOT`` of a ``ROOT/{train,val,test}/<class>/`` tree, naming the split folder to pass instead
    (``ftkit evaluate`` and :func:`ftkit.evaluate.datasets.open_data` choose one themselves)."""
    splits = sources.split_folders(root)
    if not splits or set(class_names) & {Path(folder).name for folder in splits.values()}:
        return
    names = [Path(splits[name]).name for name in sources.SPLITS if name in splits]
    raise ClassMismatchError(
        f"DATA looks like a tree of split folders ({', '.join(names)}): pass one of them, e.g. "
        f"{os.path.join(str(root), names[-1])}. This takes one split folder with one subfolder per class. "
        f"Received: data={str(root)!r}"
    )


FOLDER_HINT = "DATA must be one split folder with one subfolder per class."


def check_classes(found: Sequence[str], expected: Sequence[str], *, allow_missing: bool, source: str,
                  empty: Sequence[str] = (), hint: str = FOLDER_HINT, only_model_classes: bool = False) -> None:
    """Refuse a data set whose classes differ from the model's, naming the differences (``empty``: class
    folders left out because they hold no file; ``hint``: what DATA should be). ``only_model_classes``: classes
    the model does not know are accepted (their rows are left out by the caller), unless no class is left."""
    extra = sorted(set(found) - set(expected))
    missing = [name for name in expected if name not in set(found)]
    received = f"Received: data={source!r} with classes {sorted(found)}, model classes {list(expected)}"
    known = not extra or len(extra) < len(set(found))  # some class of the model's is in the data
    if only_model_classes and extra and not known:
        raise ClassMismatchError(f"None of the evaluation data's classes is the model's, so leaving out the rows of "
                                 f"classes the model does not know ({extra}) leaves nothing to evaluate. {received}")
    if (extra and not only_model_classes) or (missing and not allow_missing):
        parts = []
        if extra:
            parts.append(f"classes the model does not know: {extra}")
        if missing:
            emptied = [name for name in missing if name in empty]
            parts.append(f"model classes absent from the data: {missing}"
                         + (f" (the folders of {emptied} are empty)" if emptied else ""))
        none = "" if known else " (no class in common: is DATA the data this model was trained for?)"
        raise ClassMismatchError(f"The evaluation data's classes do not match the model's: {'; '.join(parts)}{none}"
                                 f"{_way_out(extra and not only_model_classes, missing and not allow_missing, known)}. "
                                 f"{hint} {received}")


def _way_out(extra: bool, missing: bool, known: bool) -> str:
    """The flags that would make a mismatch acceptable, as ``ftkit evaluate`` names them (none when the data
    has no class of the model's: ``known`` is false)."""
    if not known:
        return ""
    if extra and missing:
        return " (pass --only-model-classes and --allow-missing-classes to evaluate on the classes both have)"
    if extra:
        return " (pass --only-model-classes to evaluate on the rows of the model's classes, leaving out the others)"
    return " (pass --allow-missing-classes to evaluate on a subset)" if missing else ""


def left_out_note(unknown_classes: dict[str, int]) -> str:
    """The line saying which rows ``only_model_classes`` left out: how many, and per class."""
    per_class = ", ".join(f"{name!r} {count}" for name, count in unknown_classes.items())
    return (f"left out {sum(unknown_classes.values())} rows of classes the model does not know (each listed under "
            f"skipped files): {per_class}")


def scan_split(data_dir: str | Path, class_names: Sequence[str], *, allow_missing_classes: bool = False,
               only_model_classes: bool = False) -> LabelledFiles:
    """List ``data_dir/<class>/**`` files, labelled by the model's class order, sorted by class then path.

    A class folder with no file is left out with a warning, as ``ftkit train`` and ``ftkit data check`` do;
    then the remaining folders must be the model's classes (all of them, unless ``allow_missing_classes``).
    With ``only_model_classes``, folders of other classes are left out, each of their files listed as skipped.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Evaluation data must be a folder with one subfolder per class. Received: data={str(data_dir)!r}")
    _check_not_split_tree(root, class_names)
    folders = _visible_folders(root)
    root_st = root.stat()
    listed = {name: list(_walk(str(folder), ((root_st.st_dev, root_st.st_ino),))) for name, folder in folders.items()}
    empty = [name for name, entries in listed.items() if not entries]
    check_classes([name for name in folders if name not in empty], class_names, allow_missing=allow_missing_classes,
                  source=str(data_dir), empty=empty, only_model_classes=only_model_classes)
    paths, labels, skipped = [], [], []
    for index, name in enumerate(class_names):
        for path, bad in listed.get(name, ()):
            if bad:
                skipped.append(bad)
            else:
                paths.append(path)
                labels.append(index)
    if not paths:
        raise ValueError(f"The evaluation data has no files in its class folders. Received: data={str(data_dir)!r}")
    warnings = [f"class folder {name} has no image: left out of the evaluation" for name in empty]
    unknown = {name: entries for name, entries in listed.items() if entries and name not in class_names}
    skipped += [skipped_file(path, sources.UNKNOWN_CLASS, f"class {name!r}")
                for name, entries in unknown.items() for path, _ in entries]
    unknown_classes = {name: len(entries) for name, entries in unknown.items()}
    if unknown_classes:
        warnings.append(left_out_note(unknown_classes))
    return LabelledFiles(paths=paths, labels=np.asarray(labels, dtype=np.int64), class_names=list(class_names),
                         skipped=skipped, source=os.path.abspath(data_dir), warnings=warnings,
                         unknown_classes=unknown_classes)


def expand_paths(inputs: Iterable[str | Path], *, ignored: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """Every file asked for, in the order given (folders walked in sorted order), and those that cannot be
    decoded because of where they are (a folder that links back into itself). Other bad files, missing ones
    included, are left in for the decoder, which names each problem as ``ftkit data check`` does. What the
    walks leave out (hidden files, clutter) is appended to ``ignored`` when given."""
    listed, bad = [], []
    for item in inputs:
        if os.path.isdir(item):
            for path, skipped in _walk(str(item), ignored=ignored):
                listed.append(path)
                if skipped:
                    bad.append(skipped)
        else:
            listed.append(_absolute(str(item)))
    return listed, bad


class TrainingDecode:
    """Batches of ``paths`` decoded and resized by the training pipeline, in order; after the pass, which
    files came through (:meth:`outcome`). Iterating decodes the next batches in the background (tf.data's
    prefetch) while the caller works on the current one."""

    def __init__(self, paths: Sequence[str], *, image_size: Sequence[int], channels: int, resize: str = "stretch",
                 batch_size: int = 32):
        from ftkit.data import make_dataset

        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
        self.paths = [str(p) for p in paths]
        self._index = sources.scan_files(self.paths)
        self._index.log_skips = False  # every failure goes to the caller with its reason (outcome()), who reports it
        split = self._index[sources.FILES_SPLIT]
        self._dataset = None if not len(split) else make_dataset(
            self._index, sources.FILES_SPLIT, image_size=tuple(image_size), channels=channels, resize=resize,
            batch_size=batch_size)

    def __iter__(self):
        if self._dataset is None:
            return
        for images, _ in self._dataset:
            yield images.numpy()

    def outcome(self) -> tuple[list[int], list[dict]]:
        """``(kept, failures)``: indices into ``paths`` of the files that came through, in order (row ``i`` of
        the concatenated batches is ``paths[kept[i]]``), and each unreadable file with its reason."""
        bad = {s.path: s for s in self._index.skipped}
        kept = [i for i, path in enumerate(self.paths) if path not in bad]
        failures = [skipped_file(path, bad[path].reason, bad[path].detail)
                    for path in dict.fromkeys(self.paths) if path in bad]
        return kept, failures


def decode_arrays(images: np.ndarray, *, image_size: Sequence[int], channels: int, resize: str = "stretch",
                  batch_size: int = 32) -> Iterator[np.ndarray]:
    """Batches of in-memory uint8 images (MNIST's ``[N, H, W]``), resized and converted by the training
    pipeline, in order, as float32 ``[B, H, W, C]`` in 0..255."""
    from ftkit.data import make_dataset

    split = sources.Split(sources.FILES_SPLIT, np.zeros(len(images), np.int32), images=images)
    index = sources.DataIndex([""], {sources.FILES_SPLIT: split}, [], [], "arrays", "arrays", None)
    dataset = make_dataset(index, sources.FILES_SPLIT, image_size=tuple(image_size), channels=channels,
                           resize=resize, batch_size=batch_size)
    for batch, _ in dataset:
        yield batch.numpy()


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
        raise ValueError(f"Cannot read {path}: {describe(failures[0])}. Received: path={path!r}")
    return images[0]
