"""The on-disk cache behind ``ftkit models list``: per installed backbone, what the listing shows.

Reading a plugin's metadata means importing its module, and most plugins import Keras (so TensorFlow, seconds)
at the top; counting parameters means building the model. Both are done once per installed version and cached
in ``$XDG_CACHE_HOME/ftkit/backbones.json`` (``~/.cache/ftkit/...``), so a repeated listing imports neither
the plugin nor TensorFlow. A record is valid while its fingerprint matches: the distribution's version, the
entry point's value, the mtime and size of the module file it names, and ftkit's own version and metadata rules.
An editable install (``pip install -e``: its ``direct_url.json`` says so) changes its source without changing its
version, in any file of the package, so its fingerprint covers every ``.py`` file of the entry point's top-level
package (:func:`tree_fingerprint`).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_FILE = "backbones.json"
_FORMAT = 1


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/ftkit/backbones.json`` (``~/.cache/ftkit/...`` without XDG_CACHE_HOME)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ftkit" / CACHE_FILE


def file_fingerprint(path: str | os.PathLike | None) -> str | None:
    """``"<mtime_ns>-<size>"`` of a file, or None when it cannot be read."""
    try:
        stat = os.stat(path or "")
    except (TypeError, OSError):
        return None
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def module_file(module: str) -> str | None:
    """The source file of ``module`` (dotted), found without executing it or its parent packages.

    ``importlib.util.find_spec("a.b")`` would import ``a`` (whose ``__init__`` may import Keras), so each
    level after the first is looked up in its parent's search path instead.
    """
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for depth in range(1, len(parts)):
            if spec is None or not spec.submodule_search_locations:
                return None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]),
                                                            list(spec.submodule_search_locations))
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without __spec__
        return None
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return spec.origin


def tree_fingerprint(module: str) -> str | None:
    """A digest of the path, mtime and size of every ``.py`` file of ``module``'s top-level package (the
    module's own file when the top level is a single module), or None when it cannot be found.

    For editable installs: a builder's layers often live in another module of the package than the one the
    entry point names (``plugin.api:build`` importing ``plugin/blocks.py``), and an edit there changes the
    model. A walk of a package's files costs ~1 ms per hundred files, paid once per listing."""
    top = module_file(module.split(".")[0])
    if top is None:
        return None
    if Path(top).name != "__init__.py":
        return file_fingerprint(top)
    root = Path(top).parent
    digest = hashlib.blake2b(digest_size=8)
    try:
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                stat = os.stat(os.path.join(folder, name))
                relative = os.path.relpath(os.path.join(folder, name), root)
                digest.update(f"{relative}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode("utf-8", "surrogateescape"))
    except OSError:
        return None
    return f"tree-{digest.hexdigest()}"


def is_editable(dist) -> bool:
    """Whether an ``importlib.metadata.Distribution`` is an editable install (PEP 660's ``direct_url.json``,
    ``{"dir_info": {"editable": true}}``, which pip writes for ``pip install -e``)."""
    try:
        text = dist.read_text("direct_url.json") if dist is not None else None
        info = json.loads(text) if text else {}
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(info.get("dir_info"), dict) and info["dir_info"].get("editable") is True


def _rules_fingerprint() -> str:
    """ftkit's version and its metadata/builder rules: a listing record is only as valid as the checks behind it."""
    from ftkit import __version__

    here = Path(__file__).parent
    return " ".join([__version__, *(file_fingerprint(here / f) or "-" for f in ("_metadata.py", "_builder.py"))])


class ListingCache:
    """``{"distribution:name": record}`` on disk; each record holds its own fingerprint.

    One record per distribution and backbone, so an upgrade or an edit replaces the stale one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._rules = _rules_fingerprint()
        self._records = self._read()
        self._dirty = False

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent or corrupt: everything is read again
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("rules") != self._rules:
            return {}
        records = data.get("backbones")
        return {k: v for k, v in records.items() if isinstance(v, dict)} if isinstance(records, dict) else {}

    def get(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        return dict(record) if record is not None and record.get("fingerprint") == fingerprint else None

    def put(self, key: str, fingerprint: str, record: dict[str, Any]) -> None:
        self._records[key] = {**record, "fingerprint": fingerprint}
        self._dirty = True

    def save(self) -> None:
        """Write atomically (a concurrent reader sees the old file or the new one); a read-only home only
        costs the next listing its speed."""
        if not self._dirty:
            return
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as handle:
                tmp = handle.name
                json.dump({"format": _FORMAT, "rules": self._rules, "backbones": self._records}, handle,
                          indent=1, sort_keys=True)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
