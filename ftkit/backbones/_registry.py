"""The backbone registry: Python entry points in the group ``ftkit.backbones`` plus in-process registrations.

ftkit's own zoo is registered through ftkit's ``pyproject.toml`` in that group, so built-ins and third-party
plugins take the same path. Discovery is lazy (the catalogue pattern): listing reads entry-point *names*
only; a plugin's module is imported the first time its builder or metadata is asked for, one name at a time.

Precedence, documented and never silent:
- two installed distributions claiming one name: both are listed under their qualified names
  ``"distribution:name"`` (any PEP 503 spelling of the distribution works), and asking for the bare name raises
  :class:`BackboneConflictError` naming those;
- an in-process registration of a name that already exists raises, unless ``override=True``, which warns.

Parameter counts (``ftkit models list``) are cached per distribution, version and builder source file, in
``$XDG_CACHE_HOME/ftkit`` (``~/.cache/ftkit``): counting builds the model, which costs seconds per backbone.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import json
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ftkit.backbones._metadata import BUILDER_ARGS, METADATA_ATTR, BackboneInfo, info_from_builder

ENTRY_POINT_GROUP = "ftkit.backbones"
RUNTIME = "<runtime>"
PARAMETER_CACHE_FILE = "backbone_parameters.json"


def canonical_distribution_name(name: str) -> str:
    """PEP 503 normalisation: ``ftkit_plugin_example``, ``FTKit.Plugin-Example`` -> ``ftkit-plugin-example``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_parameter_cache() -> Path:
    """``$XDG_CACHE_HOME/ftkit/backbone_parameters.json`` (``~/.cache/ftkit/...`` without XDG_CACHE_HOME)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ftkit" / PARAMETER_CACHE_FILE


class UnknownBackboneError(KeyError):
    """Raised for a backbone name that no distribution and no in-process registration provides."""

    def __str__(self) -> str:  # KeyError would otherwise print the message quoted
        return str(self.args[0])


class BackboneConflictError(LookupError):
    """Raised when several sources claim the same backbone name and the caller did not pick one."""


class PluginError(RuntimeError):
    """Raised when a registered backbone cannot be loaded or is not a usable builder."""


@dataclasses.dataclass
class _Entry:
    name: str
    distribution: str
    version: str | None
    target: str  # "module:attr" for entry points, the builder's qualified name for runtime registrations
    loader: Callable[[], Any]
    builder: Callable[..., Any] | None = None
    info: BackboneInfo | None = None
    error: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.distribution}:{self.name}"


def _by_distribution(entries: list[_Entry]) -> list[_Entry]:
    return sorted(entries, key=lambda e: canonical_distribution_name(e.distribution))


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A registered backbone that cannot be used, and why."""

    name: str
    distribution: str
    target: str
    error: str


def check_builder_signature(builder: Any, *, name: str) -> None:
    """Raise :class:`PluginError` unless ``builder`` accepts every keras.applications argument by keyword."""
    if not callable(builder):
        raise PluginError(f"Backbone {name!r} is not a callable builder. Received: {builder!r}")
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError) as exc:
        raise PluginError(f"Backbone {name!r}: cannot read the builder's signature ({exc}). Received: {builder!r}") from exc
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {n for n, p in params.items() if p.kind in keyword_kinds}
    missing = [arg for arg in BUILDER_ARGS if arg not in accepted]
    if missing:
        raise PluginError(
            f"Backbone {name!r}: the builder must accept the keras.applications arguments {list(BUILDER_ARGS)}; "
            f"it lacks {missing}. Received: {getattr(builder, '__qualname__', builder)}{inspect.signature(builder)}"
        )


class BackboneRegistry:
    """Names to builders, read lazily from entry points (injectable for tests) and in-process registrations."""

    def __init__(self, entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None = None, *,
                 parameter_cache: str | os.PathLike | None = None):
        self._entry_points_source = entry_points or (lambda: importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        # None: default_parameter_cache(), read when first needed (tests point it elsewhere).
        self.parameter_cache = parameter_cache
        self._entries: dict[str, list[_Entry]] | None = None
        self._runtime: dict[str, _Entry] = {}
        self._lock = threading.RLock()

    # -- discovery ------------------------------------------------------------------------------------
    def _scan(self) -> dict[str, list[_Entry]]:
        with self._lock:
            if self._entries is None:
                entries: dict[str, list[_Entry]] = {}
                seen: set[tuple[str, str, str]] = set()
                for ep in self._entry_points_source():
                    dist = getattr(ep, "dist", None)
                    dist_name = dist.name if dist is not None else "<unknown>"
                    key = (ep.name, dist_name, ep.value)
                    if key in seen:  # the same distribution visible twice on sys.path
                        continue
                    seen.add(key)
                    entries.setdefault(ep.name, []).append(
                        _Entry(ep.name, dist_name, getattr(dist, "version", None), ep.value, ep.load)
                    )
                self._entries = entries
            return self._entries

    def refresh(self) -> None:
        """Forget the entry-point scan (after installing a plugin in a running process)."""
        with self._lock:
            self._entries = None

    def names(self) -> list[str]:
        """Every usable name, sorted, without importing any plugin.

        A name several distributions claim is listed once per distribution as ``"distribution:name"``: the bare
        name is ambiguous (see :meth:`conflicts`), the qualified ones work.
        """
        listed = set(self._runtime)
        for name, entries in self._scan().items():
            if len(entries) == 1:
                listed.add(name)
            else:
                listed.update(entry.qualified_name for entry in entries)
        return sorted(listed, key=lambda n: (n.rpartition(":")[2], n.lower()))

    def conflicts(self) -> dict[str, list[str]]:
        """Names several distributions claim, each with the qualified names that pick one of them."""
        return {name: [entry.qualified_name for entry in _by_distribution(entries)]
                for name, entries in sorted(self._scan().items()) if len(entries) > 1 and name not in self._runtime}

    def __contains__(self, name: str) -> bool:
        try:
            self._resolve(name)
        except (UnknownBackboneError, BackboneConflictError):
            return False
        return True

    def _resolve(self, name: str) -> _Entry:
        if not isinstance(name, str) or not name:
            raise UnknownBackboneError(f"A backbone name must be a non-empty string. Received: {name!r}")
        if name in self._runtime:
            return self._runtime[name]
        entries = self._scan()
        if ":" in name:
            dist, _, bare = name.partition(":")
            for entry in entries.get(bare, []):
                if canonical_distribution_name(entry.distribution) == canonical_distribution_name(dist):
                    return entry
            owners = [repr(e.qualified_name) for e in entries.get(bare, [])]
            raise UnknownBackboneError(
                f"No distribution {dist!r} provides backbone {bare!r}"
                + (f"; ask for {' or '.join(owners)}" if owners else "")
                + f". Received: {name!r}"
            )
        if name not in entries:
            raise UnknownBackboneError(self._unknown_message(name))
        candidates = _by_distribution(entries[name])
        if len(candidates) > 1:
            raise BackboneConflictError(
                f"Backbone {name!r} is provided by {len(candidates)} distributions ("
                + ", ".join(f"{e.distribution} {e.version or '(no version)'}" for e in candidates)
                + "), so the bare name is ambiguous; ask for "
                + " or ".join(repr(e.qualified_name) for e in candidates)
                + f". Received: {name!r}"
            )
        return candidates[0]

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown backbone {name!r}.{hint} Available backbones: {', '.join(names) or '(none)'}. Received: {name!r}"

    # -- loading --------------------------------------------------------------------------------------
    def _load(self, entry: _Entry) -> _Entry:
        with self._lock:
            if entry.builder is not None or entry.error is not None:
                return entry
            try:
                builder = entry.loader()
                check_builder_signature(builder, name=entry.name)
                entry.info = info_from_builder(entry.name, builder, distribution=entry.distribution, version=entry.version)
                entry.builder = builder
            except Exception as exc:  # a broken plugin must never break the others
                entry.error = f"{type(exc).__name__}: {exc}"
            return entry

    def builder(self, name: str) -> Callable[..., Any]:
        entry = self._load(self._resolve(name))
        if entry.error:
            raise PluginError(
                f"Backbone {entry.name!r} from {entry.distribution} ({entry.target}) cannot be used: {entry.error}"
            )
        return entry.builder  # type: ignore[return-value]

    def info(self, name: str) -> BackboneInfo:
        self.builder(name)
        return self._load(self._resolve(name)).info  # type: ignore[return-value]

    def create(self, name: str, /, **kwargs: Any):
        """Build backbone ``name`` with keras.applications keyword arguments, after checking them.

        Without ``input_shape`` (and ``input_tensor``) the model is built at the registered
        ``default_input_shape``. A weights file or hashed URL is loaded by ftkit after building with
        ``weights=None``, so it works for every backbone, plugins included; a named set (``"imagenet"``) is
        passed to the builder, which declared it.
        """
        from ftkit.backbones._builder import load_weights, resolve_weights, validate_builder_args

        builder = self.builder(name)
        info = self.info(name)
        if kwargs.get("input_shape") is None and kwargs.get("input_tensor") is None:
            kwargs["input_shape"] = info.default_input_shape
        checked = {k: kwargs[k] for k in BUILDER_ARGS if k in kwargs and k != "name"}
        validate_builder_args(info, **checked)
        weights = kwargs.get("weights")
        if weights is None or (isinstance(weights, str) and weights in info.weights):
            return builder(**kwargs)
        path = resolve_weights(info, weights, include_top=kwargs.get("include_top", True))
        model = builder(**{**kwargs, "weights": None})
        load_weights(model, path, info=info, received=weights)
        return model

    def problems(self, *, load: bool = True) -> list[PluginProblem]:
        """Backbones that cannot be used: with ``load``, import or contract failures (after loading each).

        A name several distributions claim is not a problem (each is usable by its qualified name); see
        :meth:`conflicts`.
        """
        found: list[PluginProblem] = []
        if not load:
            return found
        for name, entries in sorted(self._scan().items()):
            for e in entries:
                self._load(e)
                if e.error:
                    listed = e.qualified_name if len(entries) > 1 else name
                    found.append(PluginProblem(listed, e.distribution, e.target, e.error))
        return found

    def parameters(self, name: str) -> int:
        """The parameter count of ``create(name)`` with the builder's defaults (include_top=True).

        Counting builds the model (without allocating weights); the result is cached on disk per distribution,
        version and builder source file, so an unchanged installed backbone is counted once.
        """
        from ftkit.backbones._builder import count_parameters

        key = self._parameter_key(name)
        cache = self._read_parameter_cache() if key else {}
        if key in cache:
            return cache[key]
        count = count_parameters(lambda: self.create(name, weights=None))
        if key:
            # One entry per distribution and backbone: an upgrade or an edit replaces the stale count.
            dist, _, bare, _ = key.split(" ")
            kept = {k: v for k, v in cache.items() if k.split(" ")[0::2] != [dist, bare]}
            self._write_parameter_cache({**kept, key: count})
        return count

    def _parameter_key(self, name: str) -> str | None:
        """``distribution version name source-fingerprint``; None (never cached) without a released version."""
        entry = self._resolve(name)
        builder = self.builder(name)
        if entry.distribution == RUNTIME or not entry.version:
            return None
        try:  # an editable install keeps its version while its source changes
            stat = os.stat(inspect.getsourcefile(builder) or "")
            fingerprint = f"{stat.st_mtime_ns}-{stat.st_size}"
        except (TypeError, OSError):
            fingerprint = "-"
        return f"{canonical_distribution_name(entry.distribution)} {entry.version} {entry.name} {fingerprint}"

    def _parameter_cache_path(self) -> Path:
        return Path(self.parameter_cache) if self.parameter_cache is not None else default_parameter_cache()

    def _read_parameter_cache(self) -> dict[str, int]:
        try:
            data = json.loads(self._parameter_cache_path().read_text())
        except (OSError, ValueError):  # absent or corrupt: count again
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}

    def _write_parameter_cache(self, data: dict[str, int]) -> None:
        path = self._parameter_cache_path()
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
                tmp = handle.name
                json.dump(data, handle, indent=0, sort_keys=True)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
        except OSError:  # a read-only home only costs the next listing its speed
            if tmp:
                Path(tmp).unlink(missing_ok=True)

    def find(self, name: str) -> dict[str, Any]:
        """Where backbone ``name`` is defined: distribution, version, module, file and line."""
        entry = self._resolve(name)
        builder = self.builder(name)
        try:
            file, line = inspect.getsourcefile(builder), inspect.getsourcelines(builder)[1]
        except (TypeError, OSError):
            file, line = None, None
        return {
            "name": entry.name,
            "distribution": entry.distribution,
            "version": entry.version,
            "target": entry.target,
            "module": getattr(builder, "__module__", None),
            "file": file,
            "line": line,
        }

    # -- in-process registration ----------------------------------------------------------------------
    def register(self, name: str | Callable[..., Any] | None = None, builder: Callable[..., Any] | None = None, *,
                 override: bool = False, **metadata: Any):
        """Register a builder from a script or notebook; usable as a call or as a decorator.

        ``register("mynet", build_mynet, default_input_shape=(64, 64, 3))``, ``@register("mynet")`` or bare
        ``@register``. Keyword arguments become the builder's ``ftkit_metadata`` (merged over any it has).
        """
        if callable(name) and builder is None:  # bare @register
            name, builder = None, name

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            reg_name = name or getattr(fn, "__name__", None)
            check_builder_signature(fn, name=str(reg_name))
            merged = {**(getattr(fn, METADATA_ATTR, None) or {}), **metadata}
            info = info_from_builder(reg_name, fn, distribution=RUNTIME, metadata=merged)
            with self._lock:
                exists = reg_name in self._runtime or reg_name in self._scan()
                if exists and not override:
                    raise ValueError(
                        f"Backbone {reg_name!r} is already registered; pass override=True to replace it "
                        f"in this process. Received: {reg_name!r}"
                    )
                if exists:
                    warnings.warn(f"Backbone {reg_name!r} is overridden by an in-process registration.", stacklevel=3)
                if metadata:  # only once everything is checked: a failed registration changes nothing
                    setattr(fn, METADATA_ATTR, merged)
                self._runtime[reg_name] = _Entry(reg_name, RUNTIME, None, getattr(fn, "__qualname__", repr(fn)),
                                                 lambda: fn, builder=fn, info=info)
            return fn

        return decorate(builder) if builder is not None else decorate

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (entry points are owned by their distributions)."""
        with self._lock:
            if name not in self._runtime:
                raise UnknownBackboneError(f"{name!r} was not registered in this process. Received: {name!r}")
            del self._runtime[name]


REGISTRY = BackboneRegistry()


def list_backbones() -> list[str]:
    """Names of every available backbone (built-in and plugins), without importing any of them."""
    return REGISTRY.names()


def create_backbone(name: str, /, **kwargs: Any):
    """Build a backbone by name with keras.applications keyword arguments (``include_top``, ``weights``, ...)."""
    return REGISTRY.create(name, **kwargs)


def backbone_info(name: str) -> BackboneInfo:
    """The metadata of a backbone (input sizes, preprocessing, layer groups), defaults filled in."""
    return REGISTRY.info(name)


def register_backbone(name=None, builder=None, *, override: bool = False, **metadata: Any):
    """Register a backbone in this process. See :meth:`BackboneRegistry.register`."""
    return REGISTRY.register(name, builder, override=override, **metadata)
