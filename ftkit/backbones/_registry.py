"""The backbone registry: Python entry points in the group ``ftkit.backbones`` plus in-process registrations.

ftkit's own zoo is registered through ftkit's ``pyproject.toml`` in that group, so built-ins and third-party
plugins take the same path. Discovery is lazy (the catalogue pattern): listing reads entry-point *names*
only; a plugin's module is imported the first time its builder or metadata is asked for, one name at a time.

Precedence, documented and never silent:
- a plugin claiming a name of ftkit's own zoo: the bare name stays ftkit's (README examples and recipes keep
  working whatever is installed), the plugin's is ``"distribution:name"``; the clash is noted by
  ``ftkit models list`` and warned about when the bare name is built;
- two third-party distributions claiming one name: both are listed under their qualified names
  ``"distribution:name"`` (any PEP 503 spelling of the distribution works), and asking for the bare name raises
  :class:`BackboneConflictError` naming those;
- an in-process registration of a name that already exists raises, unless ``override=True``, which warns.

What ``ftkit models list`` shows of an installed backbone (family, input size, parameter count, or why it
cannot be used) is cached per distribution, version, entry point and module file (for an editable install, every
file of its package; see ``_cache.py``): reading
it imports the plugin, which usually imports TensorFlow, and counting builds the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ftkit.backbones._cache import (
    ListingCache,
    default_cache_path,
    file_fingerprint,
    is_editable,
    module_file,
    tree_fingerprint,
)
from ftkit.backbones._metadata import BUILDER_ARGS, METADATA_ATTR, BackboneInfo, info_from_builder

ENTRY_POINT_GROUP = "ftkit.backbones"
RUNTIME = "<runtime>"
ZOO_DISTRIBUTION = "ftkit"


def canonical_distribution_name(name: str) -> str:
    """PEP 503 normalisation: ``ftkit_plugin_example``, ``FTKit.Plugin-Example`` -> ``ftkit-plugin-example``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``resnet18`` before ``resnet101`` (digit runs compare as numbers).

    Three lines; the ``natsort`` package would be a dependency for this one use.
    """
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class UnknownBackboneError(KeyError):
    """Raised for a backbone name that no distribution and no in-process registration provides."""

    def __str__(self) -> str:  # KeyError would otherwise print the message quoted
        return str(self.args[0])


class BackboneConflictError(LookupError):
    """Raised when several third-party sources claim the same backbone name and the caller did not pick one."""


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
    editable: bool = False  # an editable install (pip install -e): its source changes without a new version

    @property
    def qualified_name(self) -> str:
        return f"{self.distribution}:{self.name}"

    @property
    def is_zoo(self) -> bool:
        return canonical_distribution_name(self.distribution) == ZOO_DISTRIBUTION

    @property
    def source(self) -> str:
        """``"my-plug 1.2 (module:attr)"``: where the entry comes from, for messages."""
        return f"{self.distribution}{' ' + self.version if self.version else ''} ({self.target})"


def _by_distribution(entries: list[_Entry]) -> list[_Entry]:
    """ftkit's zoo first, then third-party distributions by name."""
    return sorted(entries, key=lambda e: (not e.is_zoo, canonical_distribution_name(e.distribution)))


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A registered backbone that cannot be used, and why."""

    name: str
    distribution: str
    target: str
    error: str
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class ListingRow:
    """One usable backbone as ``ftkit models list`` shows it."""

    name: str
    family: str
    distribution: str | None
    version: str | None
    parameters: int | None
    default_input_shape: list[int]


@dataclasses.dataclass(frozen=True)
class Listing:
    """Everything ``ftkit models list`` prints: usable backbones, unusable ones, and name clashes."""

    rows: list[ListingRow]
    problems: list[PluginProblem]
    conflicts: dict[str, list[str]]  # bare name -> qualified names; the bare name is ambiguous
    shadowed: dict[str, list[str]]  # zoo name -> the plugins' qualified names; the bare name is the zoo's


def check_builder_signature(builder: Any, *, name: str) -> None:
    """Raise :class:`PluginError` unless ``builder`` accepts every keras.applications argument by keyword.

    ftkit always calls builders with keyword arguments (positional ones given to ``create_backbone`` are
    mapped to their names first), so keyword-only builders qualify.
    """
    if not callable(builder):
        raise PluginError(f"Backbone {name!r}: not a callable builder (the entry point must name a function). "
                          f"Received: {builder!r}")
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
        lacks = "it takes none of them" if len(missing) == len(BUILDER_ARGS) else f"it lacks {missing}"
        raise PluginError(
            f"Backbone {name!r}: the builder must accept the keras.applications arguments {list(BUILDER_ARGS)} by "
            f"keyword; {lacks}. Received: {getattr(builder, '__qualname__', builder)}{inspect.signature(builder)}"
        )


def bind_builder_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """keras.applications' positional order (``include_top, weights, input_tensor, input_shape, pooling,
    classes, classifier_activation, name``) mapped onto keywords, as ``keras.applications.VGG16(False)`` takes."""
    if len(args) > len(BUILDER_ARGS):
        raise TypeError(
            f"{name}: takes at most {len(BUILDER_ARGS)} positional arguments, in keras.applications' order "
            f"{list(BUILDER_ARGS)}. Received: {len(args)} positional arguments {args!r}"
        )
    positional = dict(zip(BUILDER_ARGS, args, strict=False))  # fewer positional arguments than names
    twice = [arg for arg in positional if arg in kwargs]
    if twice:
        raise TypeError(f"{name}: got {twice} both by position and by keyword. "
                        f"Received: args={args!r}, kwargs={sorted(kwargs)}")
    return {**positional, **kwargs}


def _check_argument_names(name: str, builder: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """An argument the builder does not take, named with the ones it does (Python's own TypeError names neither
    the backbone as registered nor the alternatives)."""
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [key for key in kwargs if key not in parameters]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(parameters), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{name}: unknown argument {unknown[0]!r}.{hint} Allowed: {', '.join(parameters)}. "
                        f"Received: {', '.join(f'{key}={kwargs[key]!r}' for key in unknown)}")


def _checked_model(entry: _Entry, model: Any) -> Any:
    """``model``, unless the builder returned something else (which would fail later, far from its cause)."""
    import keras

    if not isinstance(model, keras.Model):
        returned = "None" if model is None else f"a {type(model).__module__}.{type(model).__qualname__}"
        raise PluginError(f"The builder of {entry.name!r} from {entry.source} must return a keras.Model; "
                          f"it returned {returned}. Received: {model!r:.100}")
    return model


class BackboneRegistry:
    """Names to builders, read lazily from entry points (injectable for tests) and in-process registrations."""

    def __init__(self, entry_points: Callable[[], Iterable[importlib.metadata.EntryPoint]] | None = None, *,
                 cache: str | os.PathLike | None = None):
        self._entry_points_source = entry_points or (lambda: importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        # None: default_cache_path(), read when first needed (tests point it elsewhere).
        self.cache = cache
        self._entries: dict[str, list[_Entry]] | None = None
        self._runtime: dict[str, _Entry] = {}
        self._warned_shadowed: set[str] = set()
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
                        _Entry(ep.name, dist_name, getattr(dist, "version", None), ep.value, ep.load,
                               editable=is_editable(dist))
                    )
                self._entries = {name: _by_distribution(found) for name, found in entries.items()}
            return self._entries

    def refresh(self) -> None:
        """Forget the entry-point scan (after installing a plugin in a running process)."""
        with self._lock:
            self._entries = None

    @staticmethod
    def _listed_name(entry: _Entry, entries: list[_Entry]) -> str:
        """The bare name for a name's only claimant or ftkit's zoo; ``distribution:name`` for the others."""
        return entry.name if len(entries) == 1 or entry.is_zoo else entry.qualified_name

    def names(self) -> list[str]:
        """Every usable name, naturally sorted (resnet18 before resnet101), without importing any plugin.

        A name ftkit's zoo has stays the zoo's; a plugin claiming it is listed as ``"distribution:name"``
        (see :meth:`shadowed`). A name several third-party distributions claim is listed once per distribution
        as ``"distribution:name"``: the bare name is ambiguous (see :meth:`conflicts`).
        """
        listed = set(self._runtime)
        for entries in self._scan().values():
            listed.update(self._listed_name(e, entries) for e in entries)
        return sorted(listed, key=lambda n: (natural_key(n.rpartition(":")[2]), ":" in n, natural_key(n)))

    def conflicts(self) -> dict[str, list[str]]:
        """Names several third-party distributions claim, each with the qualified names that pick one of them."""
        return {name: [entry.qualified_name for entry in entries]
                for name, entries in sorted(self._scan().items())
                if len(entries) > 1 and name not in self._runtime and not any(e.is_zoo for e in entries)}

    def shadowed(self) -> dict[str, list[str]]:
        """Names of ftkit's zoo that plugins claim too: the bare name is the zoo's, the plugins' are qualified."""
        return {name: [entry.qualified_name for entry in entries if not entry.is_zoo]
                for name, entries in sorted(self._scan().items())
                if len(entries) > 1 and name not in self._runtime and any(e.is_zoo for e in entries)}

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
            owners = [repr(self._listed_name(e, entries[bare])) for e in entries.get(bare, [])]
            raise UnknownBackboneError(
                f"No distribution {dist!r} provides backbone {bare!r}"
                + (f"; ask for {' or '.join(owners)}" if owners else "")
                + f". Received: {name!r}"
            )
        if name not in entries:
            raise UnknownBackboneError(self._unknown_message(name))
        candidates = entries[name]
        zoo = [e for e in candidates if e.is_zoo]
        if zoo:
            return zoo[0]
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
            except Exception as exc:  # a broken plugin must never break the others
                entry.error = f"cannot import {entry.target}: {type(exc).__name__}: {exc}"
                return entry
            try:
                check_builder_signature(builder, name=entry.name)
                entry.info = info_from_builder(entry.name, builder, distribution=entry.distribution, version=entry.version)
            except (PluginError, ValueError) as exc:  # ftkit's own checks, which name the backbone first
                entry.error = str(exc).removeprefix(f"Backbone {entry.name!r}: ")
                return entry
            entry.builder = builder
            return entry

    def builder(self, name: str) -> Callable[..., Any]:
        entry = self._load(self._resolve(name))
        if entry.error:
            raise PluginError(f"Backbone {entry.name!r} from {entry.source} cannot be used: {entry.error}")
        return entry.builder  # type: ignore[return-value]

    def info(self, name: str) -> BackboneInfo:
        self.builder(name)
        return self._load(self._resolve(name)).info  # type: ignore[return-value]

    def create(self, name: str, /, *args: Any, **kwargs: Any):
        """Build backbone ``name`` with keras.applications arguments (keyword, or positional in its order),
        after checking them.

        Without ``input_shape`` (and ``input_tensor``) the model is built at the registered
        ``default_input_shape``. A weights file or hashed URL is loaded by ftkit after building with
        ``weights=None``, so it works for every backbone, plugins included; a named set (``"imagenet"``) is
        checked against its metadata (classes, channels, size) and passed to the builder, which declared it and
        resolves it: ftkit downloads nothing here (the zoo's builders fetch their sets' URLs themselves).
        """
        from ftkit.backbones._builder import load_weights, resolve_weights, validate_builder_args

        kwargs = bind_builder_args(name, args, kwargs)
        entry = self._resolve(name)
        builder = self.builder(name)
        _check_argument_names(name, builder, kwargs)
        info = self.info(name)
        self._warn_if_shadowed(name)
        if kwargs.get("input_shape") is None and kwargs.get("input_tensor") is None:
            kwargs["input_shape"] = info.default_input_shape
        checked = {k: kwargs[k] for k in BUILDER_ARGS if k in kwargs and k != "name"}
        validate_builder_args(info, **checked)
        weights = kwargs.get("weights")
        if weights is None or (isinstance(weights, str) and weights in info.weights):
            return _checked_model(entry, builder(**kwargs))
        path = resolve_weights(info, weights, include_top=kwargs.get("include_top", True))
        model = _checked_model(entry, builder(**{**kwargs, "weights": None}))
        load_weights(model, path, info=info, received=weights)
        return model

    def _warn_if_shadowed(self, name: str) -> None:
        others = self.shadowed().get(name) if name not in self._runtime else None
        if others and name not in self._warned_shadowed:
            self._warned_shadowed.add(name)
            warnings.warn(
                f"Backbone {name!r} is ftkit's own; {' and '.join(repr(q) for q in others)} also provide one, "
                f"reachable by that qualified name.", UserWarning, stacklevel=3,
            )

    def problems(self, *, load: bool = True) -> list[PluginProblem]:
        """Backbones that cannot be used: with ``load``, import or contract failures (after loading each).

        A name several distributions claim is not a problem (each is usable by its qualified name); see
        :meth:`conflicts` and :meth:`shadowed`.
        """
        found: list[PluginProblem] = []
        if not load:
            return found
        for entries in self._scan().values():
            for e in entries:
                self._load(e)
                if e.error:
                    found.append(PluginProblem(self._listed_name(e, entries), e.distribution, e.target, e.error, e.version))
        return sorted(found, key=lambda p: natural_key(p.name))

    # -- listing (cached on disk) ---------------------------------------------------------------------
    def listing(self, *, count_params: bool = True) -> Listing:
        """What ``ftkit models list`` shows; a repeated call for unchanged installs imports no plugin.

        ``count_params`` builds each backbone once (without allocating weights) to count its parameters.
        """
        cache = ListingCache(self._cache_path())
        rows, problems = [], []
        try:
            for name in self.names():
                entry = self._resolve(name)
                record = self._record(name, entry, cache)
                if count_params and not {"error", "parameters", "build_error"} & set(record):
                    record = self._count_into(name, entry, record, cache)
                error = record.get("error") or (count_params and record.get("build_error"))
                if error:
                    problems.append(PluginProblem(name, entry.distribution, entry.target, error, entry.version))
                    continue
                rows.append(ListingRow(name, record["family"], entry.distribution, entry.version,
                                       record.get("parameters") if count_params else None,
                                       list(record["default_input_shape"])))
        finally:
            cache.save()
        return Listing(rows, problems, self.conflicts(), self.shadowed())

    def parameters(self, name: str) -> int:
        """The parameter count of ``create(name)`` with the builder's defaults (include_top=True).

        Counting builds the model (without allocating weights); the result is cached on disk (see ``_cache.py``),
        so an unchanged installed backbone is counted once.
        """
        from ftkit.backbones._builder import count_parameters

        cache = ListingCache(self._cache_path())
        entry = self._resolve(name)
        try:
            record = self._record(name, entry, cache)
            if "parameters" not in record:
                record = {k: v for k, v in record.items() if k != "build_error"}
                record["parameters"] = count_parameters(lambda: self.create(name, weights=None))
                self._store(entry, record, cache)
        finally:
            cache.save()
        return record["parameters"]

    def _count_into(self, name: str, entry: _Entry, record: dict[str, Any], cache: ListingCache) -> dict[str, Any]:
        from ftkit.backbones._builder import count_parameters

        record = {k: v for k, v in record.items() if k not in ("parameters", "build_error")}
        try:
            record["parameters"] = count_parameters(lambda: self.create(name, weights=None))
        except Exception as exc:  # reported as a problem of this backbone; the listing goes on
            record["build_error"] = (str(exc) if isinstance(exc, PluginError) else
                                     f"building failed: {type(exc).__name__}: {exc}")
        self._store(entry, record, cache)
        return record

    def _record(self, name: str, entry: _Entry, cache: ListingCache) -> dict[str, Any]:
        """The cached record of ``entry``, or a fresh one (importing the plugin) when absent or stale."""
        key, fingerprint = self._cache_key(entry)
        cached = cache.get(key, fingerprint) if key else None
        if cached is not None:
            return cached
        self._load(entry)
        if entry.error:
            record: dict[str, Any] = {"error": entry.error}
        else:
            record = {"family": entry.info.family, "default_input_shape": list(entry.info.default_input_shape)}
        self._store(entry, record, cache)
        return record

    def _store(self, entry: _Entry, record: dict[str, Any], cache: ListingCache) -> None:
        key, fingerprint = self._cache_key(entry)
        if key:
            cache.put(key, fingerprint, record)

    @staticmethod
    def _cache_key(entry: _Entry) -> tuple[str | None, str]:
        """``("distribution:name", "version target file-mtime-size")`` (for an editable install, a digest of its
        package's files in place of the module file's mtime and size); no key (never cached) for in-process
        registrations, entries without a version and modules whose file cannot be found."""
        if entry.distribution == RUNTIME or not entry.version:
            return None, ""
        module = entry.target.partition(":")[0].strip()
        fingerprint = tree_fingerprint(module) if entry.editable else file_fingerprint(module_file(module))
        if fingerprint is None:
            return None, ""
        return (f"{canonical_distribution_name(entry.distribution)}:{entry.name}",
                f"{entry.version} {entry.target} {fingerprint}")

    def _cache_path(self) -> Path:
        return Path(self.cache) if self.cache is not None else default_cache_path()

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


def create_backbone(name: str, /, *args: Any, **kwargs: Any):
    """Build a backbone by name with keras.applications arguments, by keyword (``include_top=``, ``weights=``,
    ...) or positionally in keras.applications' order (``create_backbone("vgg16", False, None)``)."""
    return REGISTRY.create(name, *args, **kwargs)


def backbone_info(name: str) -> BackboneInfo:
    """The metadata of a backbone (input sizes, preprocessing, layer groups), defaults filled in."""
    return REGISTRY.info(name)


def register_backbone(name=None, builder=None, *, override: bool = False, **metadata: Any):
    """Register a backbone in this process. See :meth:`BackboneRegistry.register`."""
    return REGISTRY.register(name, builder, override=override, **metadata)
