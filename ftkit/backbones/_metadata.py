"""Backbone metadata: what a builder tells the rest of ftkit about the model it builds.

A builder carries its metadata as a plain dict in the attribute ``ftkit_metadata``, so a third-party plugin
can describe itself without importing ftkit. :class:`BackboneInfo` fills the gaps with defaults and checks
the values, so every consumer (data pipeline, fine-tuning engine, conformance suite) sees one shape.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

METADATA_ATTR = "ftkit_metadata"

# The keras.applications builder signature every backbone must accept.
BUILDER_ARGS = (
    "include_top",
    "weights",
    "input_tensor",
    "input_shape",
    "pooling",
    "classes",
    "classifier_activation",
    "name",
)

IMAGENET_PREPROCESSING = {
    "scale": 1.0 / 255.0,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "channel_order": "RGB",
}
# keras.applications' "caffe" mode (VGG, ResNet v1): BGR, mean subtracted, no scaling.
CAFFE_PREPROCESSING = {
    "scale": 1.0,
    "mean": (103.939, 116.779, 123.68),
    "std": (1.0, 1.0, 1.0),
    "channel_order": "BGR",
}


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """Everything ftkit knows about one registered backbone, with defaults filled in."""

    name: str
    family: str
    default_input_shape: tuple[int, int, int] = (224, 224, 3)
    min_input_shape: tuple[int, int, int] = (32, 32, 3)
    fixed_input_with_top: bool = False
    preprocessing: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(IMAGENET_PREPROCESSING))
    layer_groups: tuple[tuple[str, str], ...] = (("body", ".*"),)
    paper: str = ""
    weights: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    aux_taps: tuple[str, ...] = ()
    distribution: str | None = None
    version: str | None = None
    missing: tuple[str, ...] = ()  # metadata keys the builder did not provide (defaults used)

    @property
    def channels(self) -> int:
        return self.default_input_shape[-1]

    @property
    def group_names(self) -> list[str]:
        return [group for group, _ in self.layer_groups]

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["channels"] = self.channels
        return out


_KNOWN_KEYS = {f.name for f in dataclasses.fields(BackboneInfo)} - {"name", "distribution", "version", "missing"}


def info_from_builder(
    name: str,
    builder: Callable[..., Any],
    *,
    distribution: str | None = None,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> BackboneInfo:
    """Read ``builder.ftkit_metadata`` (or ``metadata``) and return a checked :class:`BackboneInfo`."""
    raw = dict(metadata if metadata is not None else getattr(builder, METADATA_ATTR, None) or {})
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"Backbone {name!r} has unknown metadata keys {unknown}; allowed keys are {sorted(_KNOWN_KEYS)}. "
            f"Received: {sorted(raw)}"
        )
    values: dict[str, Any] = {"family": getattr(builder, "__module__", "plugin").rsplit(".", 1)[-1]}
    values.update(raw)
    for key in ("default_input_shape", "min_input_shape"):
        if key in values:
            shape = tuple(int(v) for v in values[key])
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"Backbone {name!r}: {key} must be (height, width, channels). Received: {shape}")
            values[key] = shape
    if "min_input_shape" not in raw:
        channels = values.get("default_input_shape", (224, 224, 3))[-1]
        values["min_input_shape"] = (32, 32, channels)
    if "layer_groups" in values:
        groups = tuple((str(g), str(rx)) for g, rx in values["layer_groups"])
        for group, rx in groups:
            try:
                re.compile(rx)
            except re.error as exc:
                raise ValueError(f"Backbone {name!r}: layer group {group!r} has an invalid regex. Received: {rx!r}") from exc
        values["layer_groups"] = groups
    if "preprocessing" in values:
        values["preprocessing"] = _check_preprocessing(name, values["preprocessing"])
    if "aux_taps" in values:
        values["aux_taps"] = tuple(values["aux_taps"])
    missing = tuple(sorted(k for k in ("default_input_shape", "min_input_shape", "preprocessing", "layer_groups", "paper") if k not in raw))
    return BackboneInfo(name=name, distribution=distribution, version=version, missing=missing, **values)


def _check_preprocessing(name: str, prep: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**IMAGENET_PREPROCESSING, **dict(prep)}
    order = merged["channel_order"]
    if order not in ("RGB", "BGR"):
        raise ValueError(f"Backbone {name!r}: preprocessing channel_order must be 'RGB' or 'BGR'. Received: {order!r}")
    merged["mean"] = tuple(float(v) for v in merged["mean"])
    merged["std"] = tuple(float(v) for v in merged["std"])
    if any(s <= 0 for s in merged["std"]):
        raise ValueError(f"Backbone {name!r}: preprocessing std must be positive. Received: {merged['std']}")
    merged["scale"] = float(merged["scale"])
    return merged


def assign_layer_groups(model: Any, info: BackboneInfo) -> dict[str, list[Any]]:
    """Map each weighted layer of ``model`` to its layer group (the first regex that matches its name).

    Returns ``{group: [layers]}`` in the metadata's order, plus ``"<unassigned>"`` for weighted layers no
    group matches. Layers without weights (activations, pooling) are left out: freezing them means nothing.
    """
    compiled = [(group, re.compile(rx)) for group, rx in info.layer_groups]
    groups: dict[str, list[Any]] = {group: [] for group, _ in compiled}
    for layer in model.layers:
        if not layer.weights:
            continue
        group = next((g for g, rx in compiled if rx.match(layer.name)), "<unassigned>")
        groups.setdefault(group, []).append(layer)
    return groups
