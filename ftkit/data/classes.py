"""Class names and their order, saved with every run so evaluation and prediction map indices back to names."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

RUN_RECORD = "ftkit_run.json"


def _record_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / RUN_RECORD if path.is_dir() or not path.suffix else path


def save_class_names(path: str | os.PathLike, class_names: Sequence[str]) -> Path:
    """Writes ``class_names`` into the JSON record at ``path`` (a run folder means its ``ftkit_run.json``).

    Other keys already in the record are kept; the file is replaced atomically.
    """
    names = list(class_names)
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names must be distinct non-empty strings. Received: class_names={names!r}")
    target = _record_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    record["class_names"] = names
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fp:
        json.dump(record, fp, indent=2)
    os.replace(tmp, target)
    return target


def load_class_names(path: str | os.PathLike) -> list[str]:
    """Reads the class names from a run folder or its JSON record."""
    target = _record_path(path)
    try:
        names = json.loads(target.read_text(encoding="utf-8"))["class_names"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"No class names in {target} ({type(exc).__name__}: {exc}). "
                         f"Received: path={os.fspath(path)!r}") from exc
    return list(names)
