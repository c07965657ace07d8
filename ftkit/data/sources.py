"""Where images and labels come from: class-per-folder trees, ``path,label`` CSV tables, MNIST; and splits.

:func:`scan` turns a source into a :class:`DataIndex`: per split, numpy arrays of paths, int labels, header
sizes and a "needs Pillow" flag (no per-file Python objects beyond the path strings, so 100,000 files stay
cheap), the class names in their fixed order, and every skipped file with its reason. No file is ever
written, moved or deleted.

A split carved from the training files (no split folder, no CSV split value for it) keeps byte-identical files
together: each group of copies goes where the seeded draw put its first file, so no copy is both trained and
evaluated on; a note among ``problems`` (severity ``"info"``) counts the groups.
"""

from __future__ import annotations

import array
import ast
import csv
import dataclasses
import gzip
import io
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ftkit.data import decode

SPLITS = ("train", "val", "test")
# Split folder names (and a CSV's split values), case-insensitive: "valid" is Roboflow's and many Kaggle sets'.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}
SPLIT_NAMES_TEXT = "train (training), val (valid, validation), test (testing)"
# Operating-system clutter that is never data; dot-files (.DS_Store, .ipynb_checkpoints) are ignored too.
_CLUTTER = {"Thumbs.db", "desktop.ini", "__MACOSX"}
VERIFY_MODES = ("none", "header", "full")
POLICIES = ("skip", "strict")

OUTSIDE_CLASS = "not in a class folder"
UNKNOWN_CLASS = "class not in the training classes"


def printable(text: str) -> str:
    """``text`` for a reader: a file name that is not UTF-8 (os.fsdecode's surrogate escapes) shows its
    undecodable bytes as ``\\xNN``, where writing it as UTF-8 would fail. Files meant to be read back
    (``predictions.csv``) keep the exact bytes instead (``errors="surrogateescape"``); JSON escapes them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unknown_class(detail: str) -> str:
    """The class named by an :data:`UNKNOWN_CLASS` skip record's detail (``class 'name'``, a repr)."""
    quoted = re.match(r"""class ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", detail)
    return str(ast.literal_eval(quoted.group(1))) if quoted else detail


NO_LABEL = "no label"
NO_PATH = "no path"
UNKNOWN_SPLIT = "unknown split"
MALFORMED_ROW = "malformed row"
DUPLICATES_KEPT_TOGETHER = "duplicates kept together"
# A CSV's header names, case-insensitive; without a header the columns are path, label[, split].
_CSV_COLUMNS = {"path": ("path", "file", "filename", "filepath", "file_path", "image", "image_path", "img"),
                "label": ("label", "class", "class_name", "category", "target"),
                "split": ("split", "subset", "set")}

# Split.codecs values; 0 means the header was not read (verify="none").
CODECS = {"JPEG": 1, "PNG": 2, "GIF": 4, "PNG16": 5}

MNIST_CLASS_NAMES = [str(d) for d in range(10)]
_MNIST_FILES = {"train": "train", "test": "t10k"}


class DataError(ValueError):
    """The data cannot be used as asked (strict policy with bad files, a single class, no images...)."""


class Skipped(NamedTuple):
    path: str
    reason: str
    detail: str
    split: str


class Problem(NamedTuple):
    """A dataset-level finding: ``severity`` is ``"error"`` (data unusable), ``"warning"``, or ``"info"`` (what
    the scan did about the data, e.g. :data:`DUPLICATES_KEPT_TOGETHER`; never a reason to refuse it)."""

    severity: str
    kind: str
    message: str


@dataclasses.dataclass
class Split:
    """One split: parallel arrays, one row per usable image.

    ``paths`` (object array of str) is ``None`` for in-memory sources, whose uint8 pixels are in ``images``
    (``[N, H, W]`` or ``[N, H, W, C]``). ``sizes`` holds each file's stored ``(width, height)`` (0 when not
    read), ``pillow`` marks files the in-graph decoders would get wrong (see :mod:`ftkit.data.decode`),
    ``codecs`` holds each file's format as the header read it (:data:`CODECS`: 0 unknown, 1 JPEG, 2 PNG,
    3 other, 4 GIF, 5 PNG at 16 bits), so the pipeline builds only the decoders a split needs. For in-memory
    data, ``origin`` holds each row's index in the source's ``origin_name`` arrays (MNIST's ``train`` or
    ``test``), kept through :meth:`subset`, so a carved or sampled row is still named by its MNIST index. For a
    CSV source, ``lines`` holds each row's line in the CSV named ``lines_file``, so a file found bad only when
    the pipeline decodes it is still reported with its line.
    """

    name: str
    labels: np.ndarray
    paths: np.ndarray | None = None
    sizes: np.ndarray | None = None
    pillow: np.ndarray | None = None
    images: np.ndarray | None = None
    codecs: np.ndarray | None = None
    origin: np.ndarray | None = None
    origin_name: str = ""
    lines: np.ndarray | None = None
    lines_file: str = ""

    def __post_init__(self):
        n = len(self.labels)
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if self.images is not None and self.origin is None:
            self.origin, self.origin_name = np.arange(n), self.origin_name or self.name
        if self.sizes is None:
            self.sizes = np.zeros((n, 2), np.int32)
        if self.pillow is None:
            self.pillow = np.zeros(n, bool)
        if self.codecs is None:
            self.codecs = np.zeros(n, np.int8)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray, name: str) -> Split:
        paths = None if self.paths is None else self.paths[rows]
        images = None if self.images is None else self.images[rows]
        origin = None if self.origin is None else self.origin[rows]
        lines = None if self.lines is None else self.lines[rows]
        return Split(name, self.labels[rows], paths, self.sizes[rows], self.pillow[rows], images,
                     self.codecs[rows], origin, self.origin_name, lines, self.lines_file)

    def where(self, path: str) -> str:
        """``", t.csv line 4"`` for a CSV row's file (``lines 4, 9`` where the CSV lists it twice), else ``""``.
        A search of ``paths``, for the rare file found bad while decoding: no lookup table per file."""
        if self.lines is None or self.paths is None:
            return ""
        numbers = self.lines[self.paths == path]
        if not len(numbers):
            return ""
        return f", {self.lines_file} line{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"

    def ids(self) -> list[str]:
        """Each row's name in reports: its file's absolute path (a report read from another folder, or compared
        with ``ftkit evaluate``'s, names the same file), or for in-memory data ``train[i]`` (``i`` its index in
        the source's arrays, as MNIST numbers its images)."""
        if self.paths is not None:
            return [os.path.abspath(p) for p in self.paths]
        return [f"{self.origin_name}[{i}]" for i in self.origin]

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


@dataclasses.dataclass
class DataIndex:
    """The result of :func:`scan`: splits, class names (order fixed by the training data), what was skipped.

    Files that fail later, when the pipeline decodes them, are appended to ``skipped`` as they are met (a CSV
    row's with its line, as at scan time).
    """

    class_names: list[str]
    splits: dict[str, Split]
    skipped: list[Skipped]
    problems: list[Problem]
    source: str
    kind: str
    max_pixels: int | None = decode.DEFAULT_MAX_PIXELS
    # Log each file found bad while decoding (once); off where the caller reports ``skipped`` itself.
    log_skips: bool = True
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"No split {split!r} in {self.source}; available: {sorted(self.splits)}. "
                           f"Received: split={split!r}")
        return self.splits[split]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record_skip(self, path: str, reason: str, detail: str, split: str) -> bool:
        """Adds a file found bad while decoding, with its CSV line where it has one; returns False if it was
        already recorded (a later epoch)."""
        with self._lock:
            if any(s.path == path for s in self.skipped):
                return False
            where = self.splits[split].where(path) if split in self.splits else ""
            self.skipped.append(Skipped(path, reason, detail + where, split))
            return True

    def usable_counts(self, split: str, *, gone: Collection[str] | None = None) -> np.ndarray:
        """Images per class of ``split``, less the files found bad while decoding (still in the split's rows);
        ``gone``: the paths to leave out instead (those a run recorded as bad, against a fresh scan)."""
        data = self.splits[split]
        if gone is None:
            gone = {s.path for s in self.skipped if s.split == split}
        if not gone or data.paths is None:
            return data.counts(self.num_classes)
        keep = np.fromiter((path not in gone for path in data.paths), bool, len(data))
        return np.bincount(data.labels[keep], minlength=self.num_classes)

    def summary(self) -> dict:
        """The run-record view: counts per split and class, every skipped file with its reason, and each split's
        file list as a count and a digest (:func:`file_list`), which tells whether a split can still be rebuilt."""
        return {
            "source": self.source,
            "kind": self.kind,
            "class_names": list(self.class_names),
            "counts": {name: dict(zip(self.class_names, self.usable_counts(name).tolist(), strict=True))
                       for name in self.splits},
            "skipped": len(self.skipped),
            "skipped_files": [s._asdict() for s in self.skipped],
            "problems": [p._asdict() for p in self.problems],
            "file_lists": {name: file_list(data, self.class_names, base=self.source)
                           for name, data in self.splits.items()},
        }


def file_list(split: Split, class_names: Sequence[str], *, base: str | os.PathLike) -> dict:
    """``{"files": n, "blake2b": hex}``: how many rows ``split`` has and a digest of its rows, ``path<TAB>class``
    sorted, so the same files with the same labels give the same digest whatever their order.

    Paths are taken relative to ``base`` (the source: a folder, or a CSV's folder), so a data folder moved whole
    keeps its digests; in-memory rows are named as :meth:`Split.ids` names them (``train[1234]``). Rows found
    bad only when decoded are still rows here: the digest is of what a scan draws, which a later scan of the same
    files draws again (``ftkit evaluate RUN`` compares them to tell a changed folder)."""
    from hashlib import blake2b  # hashlib loads OpenSSL; see _copy_groups

    if split.paths is None:
        names = split.ids()
    else:
        root = os.path.abspath(base if os.path.isdir(base) else os.path.dirname(os.path.abspath(base)))
        prefix = os.path.join(root, "")
        names = [path[len(prefix):] if path.startswith(prefix) else path
                 for path in map(os.path.abspath, split.paths)]
    labels = [os.fsencode(name) for name in class_names]
    rows = sorted(os.fsencode(name) + b"\t" + labels[label] for name, label in zip(names, split.labels.tolist(),
                                                                                    strict=True))
    return {"files": len(rows), "blake2b": blake2b(b"\n".join(rows), digest_size=16).hexdigest()}


def own_splits(source: str | os.PathLike, *, root: str | os.PathLike | None = None) -> list[str]:
    """The splits ``source`` holds itself, in :data:`SPLITS` order: its split folders (``train`` alone for a
    folder of class folders), its CSV split values, MNIST's ``train`` and ``test``. :func:`scan` carves the
    others it is given a fraction for. Files are listed, not read."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".npz":
        held = {"train", "test"}  # _mnist_arrays refuses an .npz without both
    elif is_mnist_folder(path):
        held = {split for split, prefix in _MNIST_FILES.items()
                if all(any((path / f"{prefix}-{kind}-idx{d}-ubyte{gz}").is_file() for gz in ("", ".gz"))
                       for kind, d in (("images", 3), ("labels", 1)))}
    elif path.is_file():
        held = set(_csv_entries(path, Path(root) if root else path.parent)[0])
    else:
        held = set(split_folders(path)) or {"train"}
    return [name for name in SPLITS if name in held]


# A hook the doctor uses to see each file's header as it is read: ``on_file(split, path, header)``.
FileHook = Callable[[str, str, "decode.Header | None"], None]


def scan(source: str | os.PathLike, *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
         class_names: Sequence[str] | None = None, policy: str = "skip", verify: str | None = None,
         max_pixels: int | None = decode.DEFAULT_MAX_PIXELS, root: str | os.PathLike | None = None,
         progress: bool = False) -> DataIndex:
    """Lists and checks a data source and returns its :class:`DataIndex`.

    ``source``: a class-per-folder tree (with ``train/``, ``val/``/``validation/``, ``test/`` split folders,
    or without), a ``.csv`` of ``path,label[,split]`` (paths relative to the CSV's folder, or to ``root``),
    an MNIST folder of IDX files, or Keras's ``mnist.npz``. Splits missing from the source are carved from
    the training data, stratified and seeded, with ``val_fraction`` / ``test_fraction``.

    ``class_names`` fixes the classes and their order (a saved run's); by default they are the training
    classes, sorted. ``verify``: ``"header"`` (default; reads headers), ``"full"`` (decodes every image,
    the default under ``policy="strict"``), ``"none"``. ``"header"`` and ``"full"`` carve the same splits: a file
    whose header reads but whose pixels do not is drawn like the others, then skipped in the split it was drawn
    into (where training, reading headers only, meets it mid-epoch). ``max_pixels`` is the decompression-bomb guard
    (``None``: no limit). ``policy="skip"`` skips bad files and records them in ``skipped``;
    ``"strict"`` raises :class:`DataError` listing every bad file. Data that cannot be trained on (no
    image, a single class) raises :class:`DataError` under either policy.
    """
    index = scan_unchecked(source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                           class_names=class_names, policy=policy, verify=verify, max_pixels=max_pixels,
                           root=root, progress=progress)
    enforce(index, policy=policy)
    return index


def scan_unchecked(source: str | os.PathLike, *, val_fraction: float = 0.2, test_fraction: float = 0.0,
                   seed: int = 0, class_names: Sequence[str] | None = None, policy: str = "skip",
                   verify: str | None = None, max_pixels: int | None = decode.DEFAULT_MAX_PIXELS,
                   root: str | os.PathLike | None = None, progress: bool = False,
                   on_file: FileHook | None = None) -> DataIndex:
    """:func:`scan` without raising for bad data: the doctor reports what :func:`scan` would refuse."""
    _check_args(val_fraction=val_fraction, test_fraction=test_fraction, policy=policy, verify=verify,
                max_pixels=max_pixels)
    verify = verify or ("full" if policy == "strict" else "header")
    decode.allow_pixels(max_pixels)
    path = Path(source)
    fractions = {"val": val_fraction, "test": test_fraction}
    if (path.is_file() and path.suffix.lower() == ".npz") or is_mnist_folder(path):
        return _scan_mnist(path, fractions=fractions, seed=seed, class_names=class_names)
    lines = None
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        if root is not None and not Path(root).is_dir():
            raise ValueError(f"root, the folder a CSV's relative paths start from, must be an existing folder. "
                             f"Received: root={os.fspath(root)!r}")
        entries, skipped, lines = _csv_entries(path, Path(root) if root else path.parent)
        folders, layout, kind = [], [], "csv"
    elif path.is_dir():
        entries, skipped, folders, layout = _folder_entries(path)
        kind = "folder"
    else:
        raise ValueError("source must be a class-per-folder directory, a .csv file, an MNIST folder or an "
                         f".npz file, and must exist.{_near_path(path)} Received: source={os.fspath(source)!r}")
    rows = _inspect(entries, skipped, verify=verify, max_pixels=max_pixels, progress=progress,
                    on_file=on_file, lines=lines)
    index = _build_index(rows, skipped, folders, source=os.fspath(source), kind=kind, class_names=class_names,
                         fractions=fractions, seed=seed, max_pixels=max_pixels,
                         lines_file=lines.file if lines else "")
    index.problems[:0] = layout
    return index


def _near_path(path: Path) -> str:
    """" Did you mean ...?" for a path that does not exist but has a close namesake beside it (a typo)."""
    import difflib

    try:
        names = [entry.name for entry in os.scandir(path.parent)]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1)
    return f" Did you mean {os.fspath(path.parent / close[0])!r}?" if close and not path.exists() else ""


FILES_SPLIT = "test"


def scan_files(paths: Sequence[str | os.PathLike], *,
               max_pixels: int | None = decode.DEFAULT_MAX_PIXELS) -> DataIndex:
    """An index of ``paths`` as given, unlabelled (one class, ""), in the one split :data:`FILES_SPLIT`: so that
    files outside a data set (evaluation, prediction) go through :func:`ftkit.data.make_dataset` and come out
    exactly as training saw its own. Each header is read as :func:`scan` reads it; bad files are in ``skipped``
    with their reasons, and files the pipeline cannot decode join them as it meets them."""
    decode.allow_pixels(max_pixels)
    skipped: list[Skipped] = []
    entries = {FILES_SPLIT: [("", os.fspath(path)) for path in paths]}
    rows = _inspect(entries, skipped, verify="header", max_pixels=max_pixels, progress=False, on_file=None)
    return _build_index(rows, skipped, [], source="files", kind="files", class_names=[""], fractions={}, seed=0,
                        max_pixels=max_pixels)


def _check_args(*, val_fraction, test_fraction, policy, verify, max_pixels) -> None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer)
                                   or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive number of pixels, or None for no limit. "
                         f"Received: max_pixels={max_pixels!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}. Received: policy={policy!r}")
    if verify is not None and verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES} or None. Received: verify={verify!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be below 1. "
                         f"Received: val_fraction={val_fraction!r}, test_fraction={test_fraction!r}")


def source_classes(index: DataIndex) -> list[str]:
    """The classes the source's training data has, whatever ``class_names`` selected: the selected classes with
    a training image, and those of files left out as :data:`UNKNOWN_CLASS` (MNIST: its ten digits), sorted."""
    if index.kind == "mnist":
        return list(MNIST_CLASS_NAMES)
    train = index.splits.get("train")
    counts = train.counts(index.num_classes) if train is not None else np.zeros(index.num_classes, np.int64)
    found = {name for name, count in zip(index.class_names, counts, strict=True) if count}
    found |= {unknown_class(s.detail) for s in index.skipped if s.split == "train" and s.reason == UNKNOWN_CLASS}
    return sorted(found)


def classes_not_in_source(index: DataIndex, *, splits: Sequence[str] = ("train",)) -> str:
    """Why some selected classes (``class_names`` given to :func:`scan`) name no class of the source: each one
    without an image in ``splits``, with the closest class the source has (a typo), and the source's classes.
    ``""`` when every selected class has an image there, or when the source has no class at all (nothing to
    choose from: "no usable training image" says more). Training refuses such a selection, which would
    otherwise build an output for a class without images and silently drop the files of the class meant."""
    import difflib

    counts = sum((index.splits[s].counts(index.num_classes) for s in splits if s in index.splits),
                 np.zeros(index.num_classes, np.int64))
    missing = [name for name, count in zip(index.class_names, counts, strict=True) if not count]
    known = source_classes(index)
    if not missing or not known:
        return ""
    unused = [name for name in known if name not in index.class_names] or known
    lowered = {name.lower(): name for name in unused}
    close = {name: lowered[match[0]] for name in missing
             if (match := difflib.get_close_matches(name.lower(), list(lowered), n=1))}
    where = "training image" if tuple(splits) == ("train",) else "image"
    text = (f"{missing[0]!r} is not a class of {index.source} (no {where})." if len(missing) == 1 else
            f"{', '.join(map(repr, missing))} are not classes of {index.source} (no {where}).")
    if len(close) == 1 and len(missing) == 1:
        text += f" Did you mean {close[missing[0]]!r}?"
    elif close:
        text += " Did you mean " + ", ".join(f"{match!r} for {name!r}" for name, match in close.items()) + "?"
    return text + f" The source's classes: {', '.join(known)}."


def enforce(index: DataIndex, *, policy: str) -> None:
    """Raises :class:`DataError` when the data is unusable, or, under ``"strict"``, has anything bad."""
    errors = [p for p in index.problems if p.severity == "error"]
    bad = list(index.skipped) if policy == "strict" else []
    warnings = [p for p in index.problems if p.severity == "warning"] if policy == "strict" else []
    if not (errors or bad or warnings):
        return
    lines = [f"  {p.message}" for p in errors + warnings]
    lines += [f"  {s.path}: {s.reason}" + (f" ({s.detail})" if s.detail else "") for s in bad]
    if index.skipped and not bad:  # "no usable image" says little when every file was skipped as bad
        reasons = Counter(s.reason for s in index.skipped).most_common()
        lines.append(f"  {len(index.skipped)} file(s) skipped: " + ", ".join(f"{n} {r}" for r, n in reasons))
    what = f"{len(bad)} bad file(s) and {len(errors) + len(warnings)} problem(s)" if bad else "problems"
    hint = ("Fix or remove them, or use policy='skip' (a recipe's data.policy: skip) to train on the rest." if policy == "strict"
            else "Run `ftkit data check` for the full report.")
    raise DataError(f"The data in {index.source} has {what}:\n" + "\n".join(lines) + f"\n{hint} "
                    f"Received: source={index.source!r}, policy={policy!r}")


# --- listing -----------------------------------------------------------------------------------------

Entries = dict[str, list[tuple[str, str]]]  # split -> [(class name, path)]


class Lines(NamedTuple):
    """Where a CSV's entries came from: ``numbers[split][i]`` is the line of ``entries[split][i]`` (an int array,
    not a string per file), so a file found bad later is reported with its line."""

    file: str
    numbers: dict[str, array.array]

    def where(self, split: str, i: int) -> str:
        return f", {self.file} line {self.numbers[split][i]}"


def is_ignored(name: str) -> bool:
    """Whether a folder walk leaves the entry ``name`` out: hidden (``.name``) or operating-system clutter."""
    return name.startswith(".") or name in _CLUTTER


def split_folders(root: str | os.PathLike) -> dict[str, str]:
    """``{split: folder}`` when ``root`` is a tree of split folders (named as :data:`SPLIT_FOLDERS`: a
    ``train/`` folder, or nothing but split folders at the top), else ``{}`` (a tree of class folders)."""
    subdirs = {e.name: e.path for e in _listdir(os.fspath(root)) if _is_dir(e)}
    split_dirs: dict[str, str] = {}
    for name, path in subdirs.items():
        split = SPLIT_FOLDERS.get(name.lower())
        if split is None:
            continue
        if split in split_dirs:
            raise ValueError(f"{root} has two folders for the {split} split: {os.path.basename(split_dirs[split])!r} "
                             f"and {name!r}; keep one. Received: source={os.fspath(root)!r}")
        split_dirs[split] = path
    if "train" not in split_dirs and len(split_dirs) < len(subdirs):
        # Split names beside other folders and no train/: class folders that happen to be named like a split
        # ("valid" and "invalid"), not a tree of splits.
        return {}
    return split_dirs


def _folder_entries(root: Path) -> tuple[Entries, list[Skipped], list[tuple[str, str, str]], list[Problem]]:
    """Lists a class-per-folder tree; returns entries, files skipped while listing, class folders (split,
    class name, folder path relative to ``root`` as it is on disk), and problems of the tree's layout."""
    top = _listdir(str(root))
    subdirs = {e.name for e in top if _is_dir(e)}
    split_dirs = split_folders(root)
    problems: list[Problem] = []
    entries: Entries = {}
    skipped: list[Skipped] = []
    if split_dirs:
        # A tree of split folders: whatever else is at its top is not data, and is reported, not silently dropped.
        for entry in top:
            if entry.name in subdirs and entry.name.lower() not in SPLIT_FOLDERS:
                problems.append(Problem("warning", "not a split folder",
                                        f"folder {entry.name}/ at the top of {root} is not a split folder "
                                        f"({SPLIT_NAMES_TEXT}); its files were not used"))
            elif entry.name not in subdirs:
                skipped.append(Skipped(entry.path, OUTSIDE_CLASS,
                                       "at the top of a tree of split folders: files belong in SPLIT/CLASS/", ""))
    else:
        split_dirs = {"train": str(root)}
    folders: list[tuple[str, str, str]] = []
    root_key = _dir_key(str(root))
    for split, split_dir in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])):
        rows = entries.setdefault(split, [])
        for entry in _listdir(split_dir):
            if not _is_dir(entry):
                skipped.append(Skipped(entry.path, OUTSIDE_CLASS, "files belong in a class subfolder", split))
                continue
            folders.append((split, entry.name, os.path.relpath(entry.path, root)))
            ancestors = [root_key, _dir_key(split_dir)]
            for path, skip in walk_files(entry.path, ancestors):
                if skip:
                    skipped.append(Skipped(path, *skip, split))
                else:
                    rows.append((entry.name, path))
    return entries, skipped, folders, problems


def _listdir(directory: str, *, ignored: list[str] | None = None) -> list[os.DirEntry]:
    """The entries of ``directory`` a walk takes, sorted; the paths it leaves out (:func:`is_ignored`) are
    appended to ``ignored`` when given."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    if ignored is not None:
        ignored.extend(e.path for e in entries if is_ignored(e.name))
    return [e for e in entries if not is_ignored(e.name)]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a linked class folder is a class folder
    except OSError:
        return False


def _dir_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def walk_files(directory: str, ancestors: Sequence[tuple[int, int]] = (), *,
               ignored: list[str] | None = None) -> Iterator[tuple[str, tuple[str, str] | None]]:
    """``(path, None)`` for each file under ``directory``, recursively, in sorted order, hidden files and
    operating-system clutter left out (their paths appended to ``ignored`` when given; a hidden folder once,
    not its contents), linked folders followed; ``(folder, (reason, detail))`` for a folder that links back
    to one of its ancestors (``ancestors``: ``(st_dev, st_ino)`` of folders above it) or cannot be listed. A
    file that cannot be read is yielded as a file: the decoder names its problem."""
    key = _dir_key(directory)
    if key in ancestors:
        yield directory, (decode.SYMLINK_LOOP, "a symbolic link to a folder that contains it")
        return
    try:
        children = _listdir(directory, ignored=ignored)
    except OSError as exc:
        yield directory, (decode.UNREADABLE, f"folder unreadable: {exc.strerror or exc}")
        return
    for entry in children:
        if _is_dir(entry):
            yield from walk_files(entry.path, [*ancestors, key], ignored=ignored)
        else:
            yield entry.path, None


def _csv_entries(csv_path: Path, base: Path) -> tuple[Entries, list[Skipped], Lines]:
    """Reads ``path,label[,split]`` rows: a header row naming the columns (in any order, see
    :data:`_CSV_COLUMNS`; other columns are ignored) or none (then exactly those columns, in that order). The
    delimiter is ``\t`` for ``.tsv``; for ``.csv`` a comma, or a semicolon when the first line has one and
    no comma. Rows that cannot be used (no path, no label, an unknown split, extra columns without a header)
    are skipped with their line number; so are files found bad later, through the returned :data:`Lines`."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fp:
        text = fp.read()
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ("," if "," in first or ";" not in first else ";")
    entries: Entries = {}
    lines: dict[str, array.array] = {}
    skipped: list[Skipped] = []
    columns: dict[str, int] | None = None  # None until the first row is read; {} without a header row
    where = csv_path.name
    for number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if columns is None:
            columns = _csv_header(cells) or {}
            if columns:
                continue
        if not columns:
            while cells and not cells[-1]:
                cells.pop()
            if len(cells) > 3:
                skipped.append(Skipped(f"{csv_path}:{number}", MALFORMED_ROW,
                                       f"{where} line {number}: {len(cells)} columns; without a header row the "
                                       f"columns are path,label[,split]", ""))
                continue
            cell = dict(zip(("path", "label", "split"), cells, strict=False))
        else:
            cell = {key: cells[i] if i < len(cells) else "" for key, i in columns.items()}
        raw_split = cell.get("split", "")
        split = SPLIT_FOLDERS.get(raw_split.lower()) if raw_split else "train"
        if not cell.get("path"):
            skipped.append(Skipped(f"{csv_path}:{number}", NO_PATH, f"{where} line {number}", split or raw_split))
            continue
        path = os.path.normpath(os.path.join(base, cell["path"]))
        if split is None:
            skipped.append(Skipped(path, UNKNOWN_SPLIT, f"{where} line {number}: split {raw_split!r}; allowed: "
                                                        f"{SPLIT_NAMES_TEXT}", raw_split))
            continue
        if not cell.get("label"):
            skipped.append(Skipped(path, NO_LABEL, f"{where} line {number}", split))
            continue
        entries.setdefault(split, []).append((cell["label"], path))
        lines.setdefault(split, array.array("i")).append(number)
    entries.setdefault("train", [])
    return entries, skipped, Lines(where, lines)


def _csv_header(cells: list[str]) -> dict[str, int] | None:
    """Column positions if ``cells`` is a header row naming a path and a label column, else None."""
    lowered = [c.lower() for c in cells]
    found = {key: next((i for i, c in enumerate(lowered) if c in names), None) for key, names in _CSV_COLUMNS.items()}
    if found["path"] is None or found["label"] is None:
        return None
    return {key: i for key, i in found.items() if i is not None}


# --- inspection and index building ---------------------------------------------------------------------

@dataclasses.dataclass
class _Rows:
    """Per-split accumulator of compact columns (array.array, not a Python object per number)."""

    paths: list[str] = dataclasses.field(default_factory=list)
    classes: list[str] = dataclasses.field(default_factory=list)
    widths: array.array = dataclasses.field(default_factory=lambda: array.array("i"))
    heights: array.array = dataclasses.field(default_factory=lambda: array.array("i"))
    pillow: array.array = dataclasses.field(default_factory=lambda: array.array("b"))
    codecs: array.array = dataclasses.field(default_factory=lambda: array.array("b"))
    lines: array.array = dataclasses.field(default_factory=lambda: array.array("i"))  # a CSV's rows only
    # Files whose header reads but whose pixels do not (verify="full"): {path: (reason, detail)}. They stay rows
    # until the splits are carved, so that every verify level carves the same splits (see _drop_undecodable).
    undecodable: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


def _inspect(entries: Entries, skipped: list[Skipped], *, verify: str, max_pixels: int | None,
             progress: bool, on_file: FileHook | None, lines: Lines | None = None) -> dict[str, _Rows]:
    from tqdm import tqdm

    total = sum(len(v) for v in entries.values())
    rows: dict[str, _Rows] = {}
    with tqdm(total=total, desc="checking images", unit="file", file=sys.stderr, disable=not progress) as bar:
        for split, items in entries.items():
            acc = rows.setdefault(split, _Rows())
            for i, (class_name, path) in enumerate(items):
                bar.update()
                try:
                    header = decode.inspect(path, verify=verify, max_pixels=max_pixels,
                                            count_frames=on_file is not None)
                except decode.BadImage as bad:
                    header = _header_only(path, verify=verify, max_pixels=max_pixels)
                    if header is None:
                        where = lines.where(split, i) if lines else ""
                        skipped.append(Skipped(path, bad.reason, bad.detail + where, split))
                        continue
                    acc.undecodable.setdefault(path, (bad.reason, bad.detail))
                if on_file is not None and path not in acc.undecodable:
                    on_file(split, path, header)
                acc.paths.append(path)
                acc.classes.append(class_name)
                acc.widths.append(header.width if header else 0)
                acc.heights.append(header.height if header else 0)
                acc.pillow.append(bool(header and header.needs_pillow))
                acc.codecs.append(_codec(header))
                if lines:
                    acc.lines.append(lines.numbers[split][i])
    return rows


def _header_only(path: str, *, verify: str, max_pixels: int | None) -> decode.Header | None:
    """The header of a file that ``verify="full"`` found bad, when its header alone reads (a truncated JPEG):
    such a file is a candidate for the splits as under ``verify="header"``, found bad within its split."""
    if verify != "full":
        return None
    try:
        return decode.inspect(path, verify="header", max_pixels=max_pixels)
    except decode.BadImage:
        return None


def _codec(header: decode.Header | None) -> int:
    if header is None:
        return 0
    if header.format == "PNG" and header.bit_depth == 16:
        return CODECS["PNG16"]
    return CODECS.get(header.format, 3)


def _build_index(rows: dict[str, _Rows], skipped: list[Skipped], folders: list[tuple[str, str, str]], *, source: str,
                 kind: str, class_names: Sequence[str] | None, fractions: dict[str, float], seed: int,
                 max_pixels: int | None, lines_file: str = "") -> DataIndex:
    train_classes = sorted(set(rows["train"].classes)) if "train" in rows else []
    names = list(class_names) if class_names is not None else train_classes
    lookup = {name: i for i, name in enumerate(names)}
    splits: dict[str, Split] = {}
    for split, acc in sorted(rows.items(), key=lambda kv: SPLITS.index(kv[0]) if kv[0] in SPLITS else len(SPLITS)):
        labels = np.array([lookup.get(c, -1) for c in acc.classes], dtype=np.int32)
        for i in np.flatnonzero(labels < 0):
            skipped.append(Skipped(acc.paths[i], UNKNOWN_CLASS, f"class {acc.classes[i]!r}", split))
        keep = labels >= 0
        paths = np.empty(len(acc.paths), dtype=object)
        paths[:] = acc.paths
        sizes = np.stack([np.frombuffer(acc.widths, np.int32), np.frombuffer(acc.heights, np.int32)], axis=-1)
        pillow = np.frombuffer(acc.pillow, np.int8).astype(bool)
        codecs = np.frombuffer(acc.codecs, np.int8)
        lines = np.frombuffer(acc.lines, np.int32)[keep] if lines_file else None
        splits[split] = Split(split, labels[keep], paths[keep], sizes.reshape(-1, 2)[keep], pillow[keep],
                              codecs=codecs[keep], lines=lines, lines_file=lines_file)
    splits, notes = carve_splits(splits, fractions=fractions, seed=seed)
    splits = _drop_undecodable(splits, rows, skipped)
    index = DataIndex(names, splits, skipped, notes, source, kind, max_pixels)
    present = {split: {c for p, c in zip(acc.paths, acc.classes, strict=True) if p not in acc.undecodable}
               for split, acc in rows.items()}
    empty = [folder for split, name, folder in folders if name not in present.get(split, ())]
    index.problems.extend(_problems(index, empty))
    return index


def _drop_undecodable(splits: dict[str, Split], rows: dict[str, _Rows], skipped: list[Skipped]) -> dict[str, Split]:
    """``splits`` less the files whose pixels did not decode, each recorded as skipped in the split it was
    drawn into: where training (headers only) meets it mid-epoch, so the doctor and ``policy="strict"`` (which
    decode everything first) report the same split membership as training uses."""
    bad = {path: why for acc in rows.values() for path, why in acc.undecodable.items()}
    if not bad:
        return splits
    out = {}
    for name, data in splits.items():
        drop = np.fromiter((path in bad for path in data.paths), bool, len(data))
        for path in dict.fromkeys(data.paths[drop]):
            reason, detail = bad[path]
            skipped.append(Skipped(path, reason, detail + data.where(path), name))
        out[name] = data.subset(np.flatnonzero(~drop), name) if drop.any() else data
    return out


def carve_splits(splits: dict[str, Split], *, fractions: dict[str, float],
                 seed: int) -> tuple[dict[str, Split], list[Problem]]:
    """Adds each split that is missing and has a fraction > 0, taken from ``train``, per class; returns the
    splits and notes (:class:`Problem` of severity ``"info"``) on what the carving did.

    Hand-written rather than scikit-learn's ``train_test_split(stratify=...)``, which refuses classes with a
    single image; here every class keeps at least one training image and each class's draw depends only on
    the seed and that class's own files. Byte-identical files are then kept in one split
    (:func:`_keep_copies_together`); where there are none, the draw is exactly as it was before that existed.
    """
    missing = [name for name in ("val", "test") if name not in splits and fractions.get(name, 0) > 0]
    if not missing or "train" not in splits or len(splits["train"]) == 0:
        return splits, []
    train = splits["train"]
    drawn = np.zeros(len(train), np.int8)  # each row's split: 0 train, k the k-th of ``missing``
    for label in np.unique(train.labels):
        rows = np.flatnonzero(train.labels == label)
        rows = rows[np.random.default_rng([seed, int(label)]).permutation(len(rows))]
        start = 0
        for k, name in enumerate(missing, start=1):
            n = max(min(int(np.floor(fractions[name] * len(rows) + 0.5)), len(rows) - start - 1), 0)
            drawn[rows[start:start + n]] = k
            start += n
    notes = []
    if train.paths is not None:
        drawn, note = _keep_copies_together(train, drawn)
        notes += [note] if note else []
    out = dict(splits)
    for k, name in enumerate(["train", *missing]):
        out[name] = train.subset(np.flatnonzero(drawn == k), name)
    return {name: out[name] for name in SPLITS if name in out}, notes


def _keep_copies_together(train: Split, drawn: np.ndarray) -> tuple[np.ndarray, Problem | None]:
    """``drawn`` (each row's split, 0 train) with every group of byte-identical files in the split of its first
    file in scan order, and a note counting the groups (None where there is none).

    A class whose every training file would leave this way keeps its first drawn training file's group in
    training instead, so every class keeps a training image."""
    group = _copy_groups(train.paths)
    members = np.flatnonzero(group >= 0)
    if not len(members):
        return drawn, None
    first = np.full(group.max() + 1, len(group))
    np.minimum.at(first, group[members], members)
    kept = drawn.copy()
    kept[members] = drawn[first[group[members]]]
    classes = np.unique(train.labels[drawn == 0])
    for label in classes[np.bincount(train.labels[kept == 0], minlength=classes.max() + 1)[classes] == 0]:
        row = np.flatnonzero((train.labels == label) & (drawn == 0))[0]
        kept[group == group[row]] = 0
    moved = int((kept != drawn).sum())
    return kept, Problem("info", DUPLICATES_KEPT_TOGETHER,
                         f"{len(first)} group(s) of byte-identical files ({len(members)} files) kept in one "
                         f"split each by the automatic split (the split of the group's first file), so no copy "
                         f"is trained on and evaluated on; {moved} file(s) moved there from the split the seeded "
                         f"draw gave them")


def _copy_groups(paths: np.ndarray) -> np.ndarray:
    """Each file's group of byte-identical files (0, 1, ... by first member), -1 for a file without a copy.

    Only files whose size another file shares are hashed (read in chunks), so the usual folder of distinct
    photos costs one ``stat`` per file. A file that cannot be read joins no group (the pipeline reports it)."""
    sizes = np.fromiter((_file_size(p) for p in paths), np.int64, len(paths))
    order = np.argsort(sizes, kind="stable")
    same = sizes[order][1:] == sizes[order][:-1]
    shared = np.zeros(len(paths), bool)
    shared[order[1:][same]] = shared[order[:-1][same]] = True
    candidates = np.flatnonzero(shared & (sizes >= 0))
    digests = bytearray(16 * len(candidates))
    readable = np.ones(len(candidates), bool)
    # Imported here: hashlib loads OpenSSL, ~4 MB more in every process that imports ftkit.data (scan workers).
    from hashlib import blake2b

    for j, row in enumerate(candidates):
        digest = _digest(paths[row], blake2b(digest_size=16))
        if digest is None:
            readable[j] = False
        else:
            digests[16 * j:16 * j + 16] = digest
    keys = np.zeros((len(candidates), 3), np.uint64)  # size, then the 128-bit digest as two words
    keys[:, 0] = sizes[candidates]
    keys[:, 1:] = np.frombuffer(digests, np.uint64).reshape(-1, 2)
    candidates, keys = candidates[readable], keys[readable]
    group = np.full(len(paths), -1, np.int64)
    if not len(candidates):
        return group
    _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    copies = counts[inverse] > 1
    # Number the groups by their first file, so group ids follow the scan order.
    rank = np.argsort(np.argsort(first[counts > 1]))
    ids = np.full(len(counts), -1, np.int64)
    ids[counts > 1] = rank
    group[candidates[copies]] = ids[inverse[copies]]
    return group


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _digest(path: str, digest, chunk: int = 1 << 16) -> bytes | None:
    """``digest`` (a new hashlib object) of a file read in chunks, or None where it cannot be read. Not
    ``hashlib.file_digest``: it allocates a 256 KiB buffer per call, which made hashing the benchmark's 100,000
    small files 1.9x slower (1.81 against 0.97 s; a plain read of each took 0.66 s)."""
    try:
        with open(path, "rb") as fp:
            while block := fp.read(chunk):
                digest.update(block)
    except OSError:
        return None
    return digest.digest()


def _problems(index: DataIndex, empty: list[str]) -> list[Problem]:
    problems = [Problem("warning", "empty class", f"class folder {folder} has no usable image") for folder in empty]
    train = index.splits.get("train")
    if train is None or len(train) == 0:
        return [*problems, Problem("error", "no images",
                                   f"no usable training image in {index.source}{_flat_folder_hint(index)}")]
    counts = train.counts(index.num_classes)
    present = [n for n, c in zip(index.class_names, counts, strict=True) if c]
    if len(present) < 2:
        problems.append(Problem("error", "single class",
                                f"training needs at least 2 classes with images; found {len(present)}: {present}"))
    for name, count in zip(index.class_names, counts, strict=True):
        if not count:
            problems.append(Problem("warning", "class without images", f"class {name!r} has no training image"))
    for split in ("val", "test"):
        data = index.splits.get(split)
        if data is None or len(data) == 0:
            continue
        missing = [n for n, c, t in zip(index.class_names, data.counts(index.num_classes), counts, strict=True)
                   if t and not c]
        if missing:
            problems.append(Problem("warning", f"class missing from {split}",
                                    f"the {split} split has no image of {', '.join(repr(n) for n in missing)}: "
                                    f"its {split} scores say nothing about {'it' if len(missing) == 1 else 'them'}"))
    return problems


def _flat_folder_hint(index: DataIndex) -> str:
    """For a folder with images at its top level and none in class folders (a class folder given as the root):
    where images belong, and the parent folder to use instead."""
    if index.kind != "folder":
        return ""
    root = os.path.normpath(index.source)
    extensions = {ext for exts in decode.EXTENSIONS.values() for ext in exts}
    images = sum(s.reason == OUTSIDE_CLASS and s.split == "train" and os.path.normpath(os.path.dirname(s.path)) == root
                 and os.path.splitext(s.path)[1].lower() in extensions for s in index.skipped)
    if not images:
        return ""
    parent = os.path.dirname(os.path.abspath(root))
    return (f": images must sit in class subfolders (ROOT/<class>/<image>), and this folder has {images} image(s) "
            f"at its top level. If it is one class of a data set, use its parent folder: "
            f"`ftkit data check {parent}` (data.train: {parent})")


# --- MNIST ----------------------------------------------------------------------------------------------

def is_mnist_folder(path: str | os.PathLike) -> bool:
    """A folder of MNIST's IDX files (``train-images-idx3-ubyte[.gz]`` and the others)."""
    path = Path(path)
    return path.is_dir() and any((path / f"train-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz"))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not) of unsigned bytes, as MNIST distributes them."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as fp:
        data = fp.read()
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic 0x0000080N). "
                         f"Received: first bytes={data[:4]!r}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if path.suffix.lower() == ".npz":
        with np.load(path) as npz:
            keys = ("x_train", "y_train", "x_test", "y_test")
            if not set(keys) <= set(npz.files):
                raise ValueError(f"{path} is not an MNIST .npz in Keras's layout: it needs the arrays "
                                 f"{', '.join(keys)}. Received: arrays {sorted(npz.files)}")
            return {"train": (npz["x_train"], npz["y_train"]), "test": (npz["x_test"], npz["y_test"])}
    out = {}
    for split, prefix in _MNIST_FILES.items():
        images = next((path / f"{prefix}-images-idx3-ubyte{gz}" for gz in (".gz", "")
                       if (path / f"{prefix}-images-idx3-ubyte{gz}").is_file()), None)
        labels = next((path / f"{prefix}-labels-idx1-ubyte{gz}" for gz in (".gz", "")
                       if (path / f"{prefix}-labels-idx1-ubyte{gz}").is_file()), None)
        if images and labels:
            out[split] = (read_idx(images), read_idx(labels))
    return out


def _scan_mnist(path: Path, *, fractions: dict[str, float], seed: int,
                class_names: Sequence[str] | None) -> DataIndex:
    names = list(class_names) if class_names is not None else MNIST_CLASS_NAMES
    lookup = np.array([names.index(d) if d in names else -1 for d in MNIST_CLASS_NAMES], np.int32)
    splits = {}
    for split, (images, labels) in _mnist_arrays(path).items():
        if len(images) != len(labels):
            raise ValueError(f"MNIST {split} has {len(images)} images but {len(labels)} labels. "
                             f"Received: source={os.fspath(path)!r}")
        mapped = lookup[labels.astype(np.int64)]
        keep = mapped >= 0
        n = int(keep.sum())
        sizes = np.tile(np.array([[images.shape[2], images.shape[1]]], np.int32), (n, 1))
        splits[split] = Split(split, mapped[keep], sizes=sizes, images=images[keep], origin=np.flatnonzero(keep),
                              origin_name=split)
    splits, notes = carve_splits(splits, fractions=fractions, seed=seed)
    index = DataIndex(names, splits, [], notes, os.fspath(path), "mnist", None)
    index.problems.extend(_problems(index, []))
    return index
