"""Conformance suite: what ``ftkit models check NAME`` runs on any backbone, built-in or third-party.

Each check builds what it needs through the registry, so it exercises the same path users take; the checks
of rejected arguments also call the builder directly and say whether it refuses them itself or only ftkit's
argument check does. A check that raises is reported as failed with the exception; the suite never stops
half-way.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ftkit.backbones._metadata import HEAD_GROUP, BackboneInfo, assign_layer_groups
from ftkit.backbones._registry import REGISTRY, BackboneRegistry

CUSTOM_CLASSES = 7


@dataclasses.dataclass
class CheckResult:
    check: str
    passed: bool
    detail: str
    seconds: float


def _default_classes(builder: Callable[..., Any]) -> int:
    param = inspect.signature(builder).parameters.get("classes")
    default = getattr(param, "default", inspect.Parameter.empty)
    return int(default) if isinstance(default, int) else 1000


def _names(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _predict(model, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype("float32")
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return np.asarray(out)


class _Suite:
    def __init__(self, name: str, registry: BackboneRegistry):
        self.name = name
        self.registry = registry
        self.info: BackboneInfo = registry.info(name)
        self.builder = registry.builder(name)
        self.small = self.info.min_input_shape
        # Without pretrained weights a top builds at any size from the minimum, flatten + dense heads included.
        self.top_shape = self.small
        self._built: dict[str, Any] = {}

    def build(self, **kwargs):
        """Build through the registry; identical requests share one model (deep backbones build slowly)."""
        kwargs.setdefault("weights", None)
        key = repr(sorted(kwargs.items()))
        if key not in self._built:
            self._built[key] = self.registry.create(self.name, **kwargs)
        return self._built[key]

    def metadata(self) -> str:
        """The metadata reads and checks (registry.info raised otherwise); missing keys get the documented defaults."""
        prep = self.info.preprocessing
        defaults = f"; defaults used for {list(self.info.missing)}" if self.info.missing else ""
        return f"preprocessing {prep['channel_order']} scale={prep['scale']:.4g}; groups {self.info.group_names}{defaults}"

    def include_top(self) -> str:
        classes = _default_classes(self.builder)
        y = _predict(self.build(include_top=True, input_shape=self.top_shape), self.top_shape)
        assert y.shape == (2, classes), f"output shape {y.shape}, expected (2, {classes})"
        return f"output (None, {classes}) at {self.top_shape}"

    def custom_classes(self) -> str:
        model = self.build(include_top=True, input_shape=self.top_shape, classes=CUSTOM_CLASSES,
                           classifier_activation="softmax")
        y = _predict(model, self.top_shape)
        assert y.shape == (2, CUSTOM_CLASSES), f"output shape {y.shape}, expected (2, {CUSTOM_CLASSES})"
        assert np.allclose(y.sum(axis=1), 1.0, atol=1e-4), f"softmax rows sum to {y.sum(axis=1)}"
        return f"classes={CUSTOM_CLASSES}: softmax output (None, {CUSTOM_CLASSES})"

    def _headless(self, pooling: str | None, shape: tuple[int, int, int]) -> np.ndarray:
        return _predict(self.build(include_top=False, pooling=pooling, input_shape=shape), shape)

    def pooling_none(self) -> str:
        y = self._headless(None, self.small)
        assert y.ndim == 4, f"include_top=False, pooling=None gave rank {y.ndim}, expected a 4-D feature map"
        self.feature_width = y.shape[-1]
        return f"feature map {y.shape[1:]}"

    def _pooled(self, mode: str) -> str:
        y = self._headless(mode, self.small)
        width = getattr(self, "feature_width", None) or self._headless(None, self.small).shape[-1]
        assert y.shape == (2, width), f"pooling={mode!r} gave {y.shape[1:]}, expected ({width},)"
        return f"pooled features ({width},)"

    def pooling_avg(self) -> str:
        return self._pooled("avg")

    def pooling_max(self) -> str:
        return self._pooled("max")

    def default_size(self) -> str:
        shape = self.info.default_input_shape
        self._headless("avg", shape)
        return f"builds at {shape}"

    def _rejected(self, **kwargs) -> str:
        """Who refuses ``kwargs``: the builder itself when called directly, or only ftkit's argument check
        (``create_backbone`` checks every builder's arguments against its metadata before calling it)."""
        try:
            self.registry.create(self.name, weights=None, **kwargs)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{kwargs} was accepted")
        try:
            self.builder(weights=None, **kwargs)
        except ValueError as exc:
            return f"rejected by the builder itself (ValueError: {str(exc)[:60]})"
        except Exception as exc:  # e.g. a Keras shape error deep inside: no argument check of its own
            return f"rejected by ftkit's argument check only; the builder itself fails with {type(exc).__name__}"
        return "rejected by ftkit's argument check only; the builder itself accepts it"

    def minimum_size(self) -> str:
        self._headless("avg", self.small)
        h, w, c = self.small
        too_small = (h - 1, w - 1, c)
        return f"builds at {self.small}; {too_small} {self._rejected(include_top=False, input_shape=too_small)}"

    def layer_groups(self) -> str:
        """Each weighted layer in exactly one group, with the top and without it (pooling None and "avg"): the
        headless model is what ftkit fine-tunes, and there its ``head`` group is replaced by the new head, so a
        layer that only the ``head`` regex matches would be in no group ftkit freezes or trains."""
        top = self.build(include_top=True, input_shape=self.top_shape)
        summary = self._check_groups(top, "include_top=True")
        for pooling in (None, "avg"):
            model = self.build(include_top=False, pooling=pooling, input_shape=self.small)
            groups = self._check_groups(model, f"include_top=False, pooling={pooling!r}")
            in_head = [layer.name for layer in groups.get(HEAD_GROUP, [])]
            # The names first: the suite's report cuts a detail at 200 characters.
            assert not in_head, (
                f"include_top=False, pooling={pooling!r}: {_names(in_head)} in group {HEAD_GROUP!r}, which "
                f"ftkit's new head replaces (so in no group it trains or freezes); give them a group of their own"
            )
        headless = sum(len(layers) for layers in groups.values())
        return (", ".join(f"{g}:{len(layers)}" for g, layers in summary.items())
                + f"; without the top: {headless} layers grouped, none in {HEAD_GROUP!r}")

    def _check_groups(self, model, label: str) -> dict[str, list[Any]]:
        groups = assign_layer_groups(model, self.info)
        unassigned = [layer.name for layer in groups.pop("<unassigned>", [])]
        assert not unassigned, f"{label}: weighted layers in no group: {_names(unassigned)}"
        compiled = [re.compile(rx) for _, rx in self.info.layer_groups]
        ambiguous = [layer.name for layer in model.layers
                     if layer.weights and sum(bool(rx.match(layer.name)) for rx in compiled) > 1]
        assert not ambiguous, f"{label}: layers matching several groups: {_names(ambiguous)}"
        grouped = sum(len(layer.weights) for layers in groups.values() for layer in layers)
        assert grouped == len(model.weights), f"{label}: groups hold {grouped} of {len(model.weights)} weights"
        return groups

    def save_load(self) -> str:
        import keras

        model = self.build(include_top=False, pooling="avg", input_shape=self.small)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "backbone.keras"
            model.save(path)
            reloaded = keras.saving.load_model(path)
        a, b = _predict(model, self.small, seed=1), _predict(reloaded, self.small, seed=1)
        diff = float(np.max(np.abs(a - b)))
        assert diff == 0.0, f"outputs differ after reload by {diff:.3g}"
        return "identical outputs after .keras round trip"

    def bad_pooling(self) -> str:
        return f"pooling='median' {self._rejected(include_top=False, pooling='median', input_shape=self.small)}"


CHECKS = [
    ("metadata valid", "metadata"),
    ("include_top=True", "include_top"),
    ("custom classes", "custom_classes"),
    ("include_top=False, pooling=None", "pooling_none"),
    ("pooling=avg", "pooling_avg"),
    ("pooling=max", "pooling_max"),
    ("default input size", "default_size"),
    ("minimum input size", "minimum_size"),
    ("layer groups cover every weight", "layer_groups"),
    (".keras save/load round trip", "save_load"),
    ("unknown pooling rejected", "bad_pooling"),
]


def check_backbone(name: str, *, registry: BackboneRegistry | None = None) -> list[CheckResult]:
    """Run every conformance check on backbone ``name``; never raises for a failing check."""
    suite = _Suite(name, registry or REGISTRY)  # an unknown name fails here, before TensorFlow starts (seconds)
    import keras

    results = []
    for label, method in CHECKS:
        start = time.perf_counter()
        try:
            detail, passed = getattr(suite, method)(), True
        except Exception as exc:  # each failure is reported, the suite goes on
            detail, passed = f"{type(exc).__name__}: {exc}".splitlines()[0][:200], False
        results.append(CheckResult(label, passed, detail, time.perf_counter() - start))
    keras.backend.clear_session()
    return results
