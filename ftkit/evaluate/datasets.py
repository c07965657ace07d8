"""What DATA is for ``ftkit evaluate``: any source ``ftkit train`` reads, narrowed to one labelled split.

A folder of class folders is evaluated whole (:func:`~ftkit.evaluate.images.scan_split`). A tree of split
folders (``ftkit.data``'s rule: :func:`~ftkit.data.sources.split_folders`) gives one split folder, read the same
way. A CSV of ``path,label[,split]`` and MNIST (an IDX folder or ``mnist.npz``) are listed by ftkit.data's
:func:`~ftkit.data.sources.scan_unchecked`, as training lists them, with nothing carved: evaluation takes the
splits the data has. The split is the one asked for, else test, else val, else all of the data. Classes map
by name onto the run's: a class the run does not know is an error naming it, as for class folders, unless
``only_model_classes`` asks to leave its rows out (a run trained on digits 5-9 evaluated on MNIST's 5-9).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftkit.data import sources
from ftkit.evaluate import images as image_io

DEFAULT_SPLITS = ("test", "val")  # the first one the data has is evaluated; without either, all of it
_HINT = ("DATA must be a folder of class folders, a tree of split folders, a CSV of path,label[,split] or MNIST "
         "(IDX files or mnist.npz).")


def open_data(data: str | os.PathLike, class_names: Sequence[str], *, split: str | None = None,
              allow_missing_classes: bool = False, only_model_classes: bool = False) -> image_io.LabelledFiles:
    """The labelled images of ``data`` to evaluate a model with ``class_names`` on, labelled in that order.

    ``split``: ``train``, ``val`` or ``test`` (or an alias ``ftkit.data`` accepts: ``valid``, ``testing``...);
    ``None`` picks test, else val, else all of the data, and ``split_note`` of the result says which.
    ``only_model_classes``: rows of classes the model does not know are left out, not an error; each is listed
    in ``skipped``, and ``unknown_classes`` and a warning count them per class. Kept rows keep their ids."""
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{_HINT} Received: data={os.fspath(data)!r}, which does not exist")
    flags = dict(allow_missing_classes=allow_missing_classes, only_model_classes=only_model_classes)
    if path.is_dir() and not sources.is_mnist_folder(path):
        return _open_folder(path, class_names, split=split, **flags)
    return _open_scanned(path, class_names, split=split, **flags)


def _open_folder(path: Path, class_names: Sequence[str], *, split: str | None, allow_missing_classes: bool,
                 only_model_classes: bool) -> image_io.LabelledFiles:
    folders = sources.split_folders(path)
    if set(class_names) & {Path(folder).name for folder in folders.values()}:
        folders = {}  # the run's own classes are named like splits: these are class folders
    if not folders:
        if split is not None:
            raise ValueError(f"DATA is a folder of class folders, with no split folders to choose from (a val or "
                             f"test split a run carved from its training folder is evaluated with DATA left out, "
                             f"or DATA that folder). Received: data={os.fspath(path)!r}, split={split!r}")
        files = image_io.scan_split(path, class_names, allow_missing_classes=allow_missing_classes,
                                    only_model_classes=only_model_classes)
        files.split_note = "split: none (DATA has no split folders: all of it is evaluated)"
        return files
    chosen, note = choose_split([name for name in sources.SPLITS if name in folders], split, path)
    files = image_io.scan_split(folders[chosen or "train"], class_names, allow_missing_classes=allow_missing_classes,
                                only_model_classes=only_model_classes)
    files.split, files.split_note = chosen or "", note
    return files


def _open_scanned(path: Path, class_names: Sequence[str], *, split: str | None, allow_missing_classes: bool,
                  only_model_classes: bool) -> image_io.LabelledFiles:
    source = os.path.abspath(path)  # a CSV's paths then come out absolute, as a folder's do
    mnist = path.is_dir() or path.suffix.lower() == ".npz"  # other folders went to _open_folder
    # MNIST is scanned with its own ten classes, which keeps every row (row i is MNIST's index i) and lets an
    # unknown digit be named; a CSV with the run's, so its rows of other classes are skipped as unknown classes.
    index = sources.scan_unchecked(source, class_names=None if mnist else class_names, val_fraction=0.0,
                                   test_fraction=0.0)
    present = {s.split for s in index.skipped} | {name for name, rows in index.splits.items() if len(rows)}
    chosen, note = choose_split([name for name in sources.SPLITS if name in present], split, path)
    label, name = (f"{source} ({chosen} split)", f"{Path(source).stem}-{chosen}") if chosen else (source, Path(source).stem)
    taken = chosen or "train"  # all of the data: a source without splits has only train
    # Rows the data layer left out: those of this split, and those it could place in no split.
    skipped = [s for s in index.skipped if s.split == taken or s.split not in sources.SPLITS]
    rows, dropped = _split_known(index, taken, class_names)
    unknown = [sources.unknown_class(s.detail) for s in skipped if s.reason == sources.UNKNOWN_CLASS]
    unknown += [index.class_names[label] for label in dropped.labels]
    if not len(rows) and not unknown:
        raise ValueError(f"The evaluation data has no usable image in its {taken} split; skipped: "
                         f"{image_io.count_by_reason([s._asdict() for s in skipped])}. Received: data={source!r}")
    found = [index.class_names[i] for i in np.unique(rows.labels)]
    image_io.check_classes([*found, *dict.fromkeys(unknown)], class_names, allow_missing=allow_missing_classes,
                           source=label, hint=_HINT, only_model_classes=only_model_classes)
    to_run = np.array([list(class_names).index(c) if c in class_names else -1 for c in index.class_names])
    left_out = [image_io.skipped_file(row, sources.UNKNOWN_CLASS, f"class {index.class_names[label]!r}")
                for row, label in zip(dropped.ids(), dropped.labels, strict=True)]
    unknown_classes = dict(sorted(Counter(unknown).items()))
    return image_io.LabelledFiles(
        paths=rows.ids(), labels=to_run[rows.labels].astype(np.int64), class_names=list(class_names),
        skipped=[*(image_io.skipped_file(s.path, s.reason, s.detail) for s in skipped), *left_out], source=label,
        warnings=[image_io.left_out_note(unknown_classes)] if unknown_classes else [], images=rows.images,
        split=chosen or "", split_note=note, report_name=name, unknown_classes=unknown_classes)


def _split_known(index: sources.DataIndex, split: str, class_names: Sequence[str]) -> tuple[sources.Split, sources.Split]:
    """``(kept, dropped)``: the rows of ``split`` whose class the model knows, and the others (MNIST's other
    digits; a CSV's rows of other classes are skipped by the data layer already). Both keep their rows' ids."""
    rows = index.splits.get(split, sources.Split(split, np.zeros(0, np.int32)))
    known = np.isin(np.asarray(index.class_names, dtype=object)[rows.labels], list(class_names))
    return rows.subset(np.flatnonzero(known), split), rows.subset(np.flatnonzero(~known), split)


def choose_split(available: Sequence[str], asked: str | None, data: str | os.PathLike) -> tuple[str | None, str]:
    """``(split, note)``: the split of ``available`` to evaluate, and a line saying which and why.

    ``None``: the data has neither test nor val, so all of it is evaluated (its train split, which is all of it
    when the data has no splits: a CSV without a split column, a tree with only ``train/``)."""
    listed = ", ".join(available) or "none"
    if asked is not None:
        name = sources.SPLIT_FOLDERS.get(asked.lower())
        if name is None or name not in available:
            allowed = f"one of {listed}" if name else sources.SPLIT_NAMES_TEXT
            raise ValueError(f"DATA has no split {asked!r}: --split must name {allowed}. "
                             f"Received: data={os.fspath(data)!r}, split={asked!r}")
        return name, f"split: {name} (--split {asked}; DATA has {listed})"
    name = next((s for s in DEFAULT_SPLITS if s in available), None)
    if name is None:
        return None, "split: none (DATA has no test or val split: all of it is evaluated)"
    return name, (f"split: {name} (the default: test, else val, else all of the data; DATA has {listed}; "
                  f"--split NAME for another)")
