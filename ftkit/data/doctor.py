"""The dataset doctor behind ``ftkit data check``: what is in a data source and what is wrong with it.

It reports counts per split and class, the imbalance ratio, every bad file with its reason, every
conversion the decoder will make, tiny images and byte-identical files: shared between splits (leakage),
filed under different classes (conflicting labels, a warning) or repeated within one class of one split (plain
duplicates, for information). It reads files only; nothing is written next to the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from ftkit.data import decode
from ftkit.data.sources import (
    UNKNOWN_CLASS,
    DataIndex,
    classes_not_in_source,
    printable,
    scan_unchecked,
    unknown_class,
)

_TEXT_LIMIT = 20  # rows per section on the terminal; the JSON always has them all

GRAY_TO_RGB = "grayscale to RGB"
PALETTE_TO_RGB = "palette to RGB"
CMYK_TO_RGB = "CMYK to RGB"
ALPHA = "alpha composited over white"
SIXTEEN_BIT = "16-bit to 8-bit"
ORIENTATION = "EXIF orientation applied"
FIRST_FRAME = "first frame of an animation"
EXTENSION = "content format differs from extension"
RGB_TO_GRAY = "RGB to grayscale"


@dataclasses.dataclass
class DoctorReport:
    """Everything ``ftkit data check`` prints; :meth:`to_dict` is its JSON form."""

    source: str
    kind: str
    verify: str
    strict: bool
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    bad_files: list[dict]
    conversions: list[dict]
    tiny_images: list[dict]
    duplicates_across_splits: list[list[dict]]
    problems: list[dict]
    min_side: int
    duplicates_conflicting_labels: list[list[dict]] = dataclasses.field(default_factory=list)
    duplicates_within_class: list[list[dict]] = dataclasses.field(default_factory=list)

    @property
    def imbalance_ratio(self) -> float | None:
        """Largest over smallest training class count (``None`` if a class has no training image)."""
        values = list(self.counts.get("train", {}).values())
        return round(max(values) / min(values), 3) if values and min(values) > 0 else None

    def _imbalance_text(self) -> str:
        if self.imbalance_ratio is not None:
            return str(self.imbalance_ratio)
        train = self.counts.get("train", {})
        if not any(sum(c.values()) for c in self.counts.values()):
            return "n/a (no images)"
        if not sum(train.values()):
            return "n/a (no training images)"
        return f"n/a (no training image in {', '.join(repr(n) for n, c in train.items() if not c)})"

    @property
    def usable(self) -> bool:
        """No error; and, when strict, no bad file, no warning and no leakage either.

        Conflicting labels are a warning (in :attr:`problems`); plain duplicates, and the scan's notes (severity
        ``"info"``, e.g. copies kept in one split by the automatic split), are information only.
        """
        if any(p["severity"] == "error" for p in self.problems):
            return False
        warnings = [p for p in self.problems if p["severity"] != "info"]
        return not self.strict or not (self.bad_files or warnings or self.duplicates_across_splits)

    @property
    def conversion_counts(self) -> dict[str, int]:
        """Files per kind of conversion (details in parentheses, like the EXIF orientation, left out)."""
        return dict(Counter(note.split(" (")[0] for row in self.conversions for note in row["conversions"]))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(usable=self.usable, imbalance_ratio=self.imbalance_ratio,
                   totals={split: sum(c.values()) for split, c in self.counts.items()},
                   conversion_counts=self.conversion_counts,
                   bad_file_counts=dict(Counter(row["reason"] for row in self.bad_files)))
        return out

    def to_text(self) -> str:
        lines = [f"ftkit data check: {self.source} ({self.kind}, verify={self.verify})",
                 f"Classes ({len(self.class_names)}): {', '.join(self.class_names) or 'none'}", ""]
        lines += _count_table(self.class_names, self.counts)
        lines.append(f"Imbalance (largest / smallest training class): {self._imbalance_text()}")
        lines += _section(f"Bad files: {len(self.bad_files)} (skipped by default, never modified)",
                          [f"{r['path']}: {r['reason']}" + (f" ({r['detail']})" if r["detail"] else "")
                           for r in self.bad_files])
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.conversion_counts.items()))
        lines += _section(f"Conversions: {len(self.conversions)} file(s){' - ' + counts if counts else ''}",
                          [f"{r['path']}: {'; '.join(r['conversions'])}" for r in self.conversions])
        lines += _section(f"Tiny images (a side under {self.min_side} px): {len(self.tiny_images)}",
                          [f"{r['path']}: {r['width']}x{r['height']}" for r in self.tiny_images])
        lines += _section(f"Byte-identical files across splits (leakage): {len(self.duplicates_across_splits)}",
                          [" = ".join(f"{f['split']}:{f['path']}" for f in group)
                           for group in self.duplicates_across_splits])
        lines += _section(f"Byte-identical files under different classes (conflicting labels, warning): "
                          f"{len(self.duplicates_conflicting_labels)}",
                          [" = ".join(f"{f['split']}:{f['path']} [{f['class']}]" for f in group)
                           for group in self.duplicates_conflicting_labels])
        lines += _section(f"Byte-identical files within one class of one split (plain duplicates, info): "
                          f"{len(self.duplicates_within_class)}",
                          [" = ".join(f"{f['split']}:{f['path']}" for f in group)
                           for group in self.duplicates_within_class])
        lines += _section(f"Problems: {len(self.problems)}",
                          [f"{p['severity']}: {p['message']}" for p in self.problems])
        verdict = "usable" if self.usable else "NOT usable" + (" under --strict" if self.strict else "")
        lines += ["", f"Verdict: {verdict}"]
        # A file name that is not UTF-8 (os.fsdecode's surrogate escapes) would make a UTF-8 terminal refuse the
        # whole report; shown instead with its undecodable bytes as \xNN. The JSON keeps the name exactly.
        return printable("\n".join(lines))


def _count_table(class_names: list[str], counts: dict[str, dict[str, int]]) -> list[str]:
    width = max([5, *(len(n) for n in class_names)])
    rows = [f"{'split':<6} " + " ".join(f"{n:>{width}}" for n in class_names) + f" {'total':>{width}}"]
    for split, per_class in counts.items():
        values = [per_class[n] for n in class_names]
        rows.append(f"{split:<6} " + " ".join(f"{v:>{width}}" for v in values) + f" {sum(values):>{width}}")
    return rows


def _section(title: str, rows: list[str]) -> list[str]:
    shown = [f"  {r}" for r in rows[:_TEXT_LIMIT]]
    if len(rows) > _TEXT_LIMIT:
        shown.append(f"  ... and {len(rows) - _TEXT_LIMIT} more (see --json)")
    return ["", title, *shown]


def conversion_notes(header: decode.Header, path: str, *, channels: int = 3) -> list[str]:
    """What the decoder will change about this image on its way to ``channels`` channels."""
    notes = []
    if header.has_alpha:
        notes.append(ALPHA)
    elif header.mode in ("P", "PA"):
        notes.append(PALETTE_TO_RGB)
    elif header.mode == "CMYK":
        notes.append(CMYK_TO_RGB)
    elif channels == 3 and header.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        notes.append(GRAY_TO_RGB)
    if channels == 1 and header.mode not in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        notes.append(RGB_TO_GRAY)
    if header.bit_depth == 16:
        notes.append(SIXTEEN_BIT)
    if header.orientation != 1:
        notes.append(f"{ORIENTATION} ({header.orientation})")
    if header.frames > 1:
        notes.append(f"{FIRST_FRAME} ({header.frames} frames)")
    if decode.extension_mismatch(path, header.format):
        notes.append(f"{EXTENSION} ({header.format} named {os.path.splitext(path)[1]})")
    return notes


def check(source: str | os.PathLike, *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
          class_names: Sequence[str] | None = None, verify: str = "full", strict: bool = False,
          channels: int = 3, min_side: int = 32, max_pixels: int | None = decode.DEFAULT_MAX_PIXELS,
          root: str | os.PathLike | None = None, progress: bool = False) -> DoctorReport:
    """Examines a data source (same arguments as :func:`ftkit.data.scan`) and returns the report.

    ``verify="full"`` (default) decodes every image, so truncated files are found now, not mid-epoch.
    ``strict`` makes any bad file, warning or leakage count as unusable, as ``policy="strict"`` would.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 0:
        raise ValueError(f"min_side must be a number of pixels >= 0 (0: no tiny-image report). "
                         f"Received: min_side={min_side!r}")
    conversions, tiny = [], []

    def on_file(split: str, path: str, header: decode.Header | None) -> None:
        if header is None:
            return
        notes = conversion_notes(header, path, channels=channels)
        if notes:
            conversions.append({"path": path, "split": split, "conversions": notes})
        if min(header.width, header.height) < min_side:
            tiny.append({"path": path, "split": split, "width": header.width, "height": header.height})

    index = scan_unchecked(source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                           class_names=class_names, verify=verify, max_pixels=max_pixels, root=root,
                           progress=progress, on_file=on_file)
    for split, data in index.splits.items():
        if data.images is not None:  # in-memory pixels (MNIST): no headers were read, the arrays say it all
            conversions_, tiny_ = _array_notes(split, data, channels=channels, min_side=min_side)
            conversions += conversions_
            tiny += tiny_
    counts = {split: dict(zip(index.class_names, s.counts(index.num_classes).tolist(), strict=True))
              for split, s in index.splits.items()}
    groups = duplicate_groups(index)
    across = [g for g in groups if len({f["split"] for f in g}) > 1]
    conflicting = [g for g in groups if len({f["class"] for f in g}) > 1]
    plain = [g for g in groups if len({f["split"] for f in g}) == 1 and len({f["class"] for f in g}) == 1]
    problems = [p._asdict() for p in index.problems]
    if class_names is None:
        problems += _classes_training_lacks(index)
    else:
        problems = _classes_source_lacks(index, problems, class_names)
    if across:
        problems.append({"severity": "warning", "kind": "leakage",
                         "message": f"{len(across)} group(s) of byte-identical images in more than one split "
                                    f"({sum(len(g) for g in across)} files): scores on the later split overstate "
                                    f"what the model learnt"})
    if conflicting:
        problems.append({"severity": "warning", "kind": "conflicting labels",
                         "message": f"{len(conflicting)} group(s) of byte-identical images filed under different "
                                    f"classes ({sum(len(g) for g in conflicting)} files)"})
    return DoctorReport(
        source=os.fspath(source), kind=index.kind, verify=verify, strict=strict,
        class_names=list(index.class_names), counts=counts,
        bad_files=[s._asdict() for s in index.skipped], conversions=conversions, tiny_images=tiny,
        duplicates_across_splits=across, problems=problems, min_side=min_side,
        duplicates_conflicting_labels=conflicting, duplicates_within_class=plain)


def _classes_training_lacks(index: DataIndex) -> list[dict]:
    """An error for each val or test split with classes the training split lacks (their files are among the bad
    files): ``ftkit train`` refuses such data, since a model cannot be scored on classes it never saw."""
    out = []
    for split in ("val", "test"):
        files = Counter(unknown_class(s.detail) for s in index.skipped if s.split == split and s.reason == UNKNOWN_CLASS)
        if files:
            named = ", ".join(f"{name!r} ({n} file(s))" for name, n in sorted(files.items()))
            out.append({"severity": "error", "kind": "class missing from train",
                        "message": f"the {split} split has classes the training split does not have: {named}; "
                                   f"`ftkit train` refuses them unless data.classes lists the classes to use"})
    return out


def _classes_source_lacks(index: DataIndex, problems: list[dict], class_names: Sequence[str]) -> list[dict]:
    """``problems`` with an error for selected classes that have no image in any split (a typo: training refuses
    it in data.classes) in place of their "no training image" warnings. A selected class with images in val or
    test only keeps its warning: a saved run's classes checked against evaluation data may lack some there."""
    why = classes_not_in_source(index, splits=tuple(index.splits))
    if not why:
        return problems
    counts = sum((s.counts(index.num_classes) for s in index.splits.values()), np.zeros(index.num_classes, np.int64))
    absent = {f"class {name!r} has no training image"
              for name, n in zip(index.class_names, counts, strict=True) if not n}
    return [{"severity": "error", "kind": "class not in source",
             "message": f"class_names: {why} Received: class_names={list(class_names)!r}"},
            *(p for p in problems if p["message"] not in absent)]


def _array_notes(split: str, data, *, channels: int, min_side: int) -> tuple[list[dict], list[dict]]:
    """Conversions and tiny images of a split's in-memory pixels, one row per image named as
    :meth:`~ftkit.data.sources.Split.ids` names it (``train[i]``): all images of such an array share one shape
    and one mode."""
    height, width = data.images.shape[1:3]
    gray = data.images.ndim == 3 or data.images.shape[-1] == 1
    notes = [GRAY_TO_RGB] if gray and channels == 3 else [RGB_TO_GRAY] if not gray and channels == 1 else []
    names = data.ids() if notes or min(width, height) < min_side else []
    conversions = [{"path": name, "split": split, "conversions": list(notes)} for name in names] if notes else []
    tiny = ([{"path": name, "split": split, "width": int(width), "height": int(height)} for name in names]
            if min(width, height) < min_side else [])
    return conversions, tiny


def duplicate_groups(index: DataIndex) -> list[list[dict]]:
    """Every group of two or more byte-identical images (same file bytes, or same pixels in memory), each
    file as ``{"split", "path", "class"}``; one hashing pass over all splits."""
    groups: dict[bytes, list[dict]] = defaultdict(list)
    for split, data in index.splits.items():
        ids = data.ids() if data.images is not None else None
        for i in range(len(data)):
            name = index.class_names[data.labels[i]]
            if data.images is not None:
                digest = hashlib.blake2b(np.ascontiguousarray(data.images[i]).tobytes(), digest_size=16).digest()
                groups[digest].append({"split": split, "path": ids[i], "class": name})
                continue
            try:
                with open(data.paths[i], "rb") as fp:
                    digest = hashlib.blake2b(fp.read(), digest_size=16).digest()
            except OSError:
                continue  # unreadable files are already reported as bad
            groups[digest].append({"split": split, "path": data.paths[i], "class": name})
    return [files for files in groups.values() if len(files) > 1]
