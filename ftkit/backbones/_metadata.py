"""Backbone metadata: what a builder tells the rest of ftkit about the model it builds.

A builder carries its metadata as a plain dict in the attribute ``ftkit_metadata``, so a third-party plugin
can describe itself without importing ftkit. :class:`BackboneInfo` fills the gaps with defaults and checks
the values, so every consumer (data pipeline, fine-tuning engine, conformance suite) sees one shape.

The layer group named ``head`` (:data:`HEAD_GROUP`) is special: it holds the pretrained classifier, which exists
only with ``include_top=True``. When ftkit assembles a model to fine-tune, the new head takes that group's place,
so every weighted layer of the headless backbone must be in another group (``ftkit models check`` says so).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
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
# For a backbone that scales its own input in the graph (keras.applications' EfficientNet, MobileNetV3,
# ConvNeXt, ...): raw 0..255 RGB pixels in. ftkit puts no normalisation layer in front of it. One number for
# mean and std fits any channel count.
RAW_PREPROCESSING = {"scale": 1.0, "mean": 0.0, "std": 1.0, "channel_order": "RGB"}
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
    # The top flattens a feature map (VGG, AlexNet), so its weights fit one input size: pretrained top weights
    # need the size they were trained at. Without them any size from min_input_shape builds, as in Keras.
    fixed_input_with_top: bool = False
    # Whether the headless backbone builds with input_shape=(None, None, C), as fully convolutional
    # keras.applications models do; False for a body that needs to know its input size while it is built.
    variable_input_size: bool = True
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

    @property
    def raw_input(self) -> bool:
        """Whether the preprocessing is the identity (:data:`RAW_PREPROCESSING`): ftkit adds no normalisation."""
        prep = self.preprocessing
        return (prep["scale"] == 1.0 and prep["channel_order"] == "RGB" and all(m == 0.0 for m in prep["mean"])
                and all(s == 1.0 for s in prep["std"]))

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["channels"] = self.channels
        return out


_KNOWN_KEYS = {f.name for f in dataclasses.fields(BackboneInfo)} - {"name", "distribution", "version", "missing"}
# Keys whose absence the conformance suite reports, because their defaults are guesses about the model.
DESCRIPTIVE_KEYS = ("default_input_shape", "min_input_shape", "preprocessing", "layer_groups", "paper")
WEIGHT_SPEC_KEYS = {"url", "file_hash", "notop_url", "notop_file_hash", "classes", "input_shape"}
HEAD_GROUP = "head"  # the pretrained classifier's layer group; the assembled model's new head replaces it


def default_preprocessing(channels: int) -> dict[str, Any]:
    """What a backbone without ``preprocessing`` metadata gets: ImageNet statistics, one value per channel.

    For other than 3 channels each channel gets the mean of ImageNet's three statistics, so the default
    always fits the images the backbone takes (3 ImageNet values on a grayscale model would not broadcast).
    """
    if channels == 3:
        return dict(IMAGENET_PREPROCESSING)
    mean = sum(IMAGENET_PREPROCESSING["mean"]) / 3
    std = sum(IMAGENET_PREPROCESSING["std"]) / 3
    return {**IMAGENET_PREPROCESSING, "mean": (mean,) * channels, "std": (std,) * channels}


def info_from_builder(
    name: str,
    builder: Callable[..., Any],
    *,
    distribution: str | None = None,
    version: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> BackboneInfo:
    """Read ``builder.ftkit_metadata`` (or ``metadata``) and return a checked :class:`BackboneInfo`.

    Raises ``ValueError`` naming the key, what was received and what is allowed.
    """
    raw = metadata if metadata is not None else getattr(builder, METADATA_ATTR, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"Backbone {name!r}: {METADATA_ATTR} must be a dict. Received: {raw!r}")
    raw = dict(raw)
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"Backbone {name!r}: unknown metadata keys {unknown}{_did_you_mean(unknown)}; allowed keys are "
            f"{sorted(_KNOWN_KEYS)}. Received: {sorted(raw)}"
        )
    values: dict[str, Any] = {"family": (getattr(builder, "__module__", None) or "plugin").rsplit(".", 1)[-1]}
    values.update(raw)
    check = _MetadataCheck(name)
    values["family"] = check.text("family", values["family"], allow_empty=False)
    if "default_input_shape" in values:
        values["default_input_shape"] = check.shape("default_input_shape", values["default_input_shape"])
    channels = values.get("default_input_shape", BackboneInfo.default_input_shape)[-1]
    if "min_input_shape" in values:
        values["min_input_shape"] = check.min_shape(values["min_input_shape"], channels=channels)
    else:
        values["min_input_shape"] = (32, 32, channels)
    for key in ("fixed_input_with_top", "variable_input_size"):
        if key in values:
            values[key] = check.flag(key, values[key])
    values["preprocessing"] = check.preprocessing(values.get("preprocessing", {}), channels=channels)
    if "layer_groups" in values:
        values["layer_groups"] = check.layer_groups(values["layer_groups"])
    if "paper" in values:
        values["paper"] = check.text("paper", values["paper"])
    if "weights" in values:
        values["weights"] = check.weights(values["weights"])
    if "aux_taps" in values:
        values["aux_taps"] = check.names("aux_taps", values["aux_taps"])
    missing = tuple(sorted(k for k in DESCRIPTIVE_KEYS if k not in raw))
    return BackboneInfo(name=name, distribution=distribution, version=version, missing=missing, **values)


def _did_you_mean(unknown: list[str]) -> str:
    """``" (did you mean 'layer_groups' for 'layergroups'?)"``, as recipes suggest the closest valid key."""
    hints = [f"{close[0]!r} for {key!r}" for key in unknown
             if (close := difflib.get_close_matches(key, sorted(_KNOWN_KEYS), n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


@dataclasses.dataclass(frozen=True)
class _MetadataCheck:
    """One checker per kind of metadata value; each returns the normalised value or raises ValueError."""

    name: str

    def fail(self, key: str, allowed: str, received: Any) -> ValueError:
        return ValueError(f"Backbone {self.name!r}: metadata {key!r} must be {allowed}. Received: {key}={received!r}")

    def shape(self, key: str, value: Any) -> tuple[int, int, int]:
        allowed = "(height, width, channels): three positive integers, e.g. (224, 224, 3)"
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
            raise self.fail(key, allowed, value)
        if not all(_is_int(v) and v >= 1 for v in value):
            raise self.fail(key, allowed, value)
        return tuple(int(v) for v in value)  # type: ignore[return-value]

    def min_shape(self, value: Any, *, channels: int) -> tuple[int, int, int]:
        shape = self.shape("min_input_shape", value)
        if shape[2] != channels:
            raise self.fail("min_input_shape", f"a shape with the same {channels} channels as default_input_shape",
                            value)
        return shape

    def flag(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "True or False", value)
        return value

    def text(self, key: str, value: Any, *, allow_empty: bool = True) -> str:
        if not isinstance(value, str) or not (allow_empty or value):
            raise self.fail(key, "a string" if allow_empty else "a non-empty string", value)
        return value

    def names(self, key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of layer names", value)
        return tuple(value)

    def preprocessing(self, value: Any, *, channels: int) -> dict[str, Any]:
        allowed_keys = sorted(IMAGENET_PREPROCESSING)
        if not isinstance(value, Mapping) or set(value) - set(allowed_keys):
            raise self.fail("preprocessing", f"a dict with keys among {allowed_keys}", value)
        merged = {**default_preprocessing(channels), **dict(value)}
        if merged["channel_order"] not in ("RGB", "BGR"):
            raise self.fail("preprocessing", "a dict whose channel_order is 'RGB' or 'BGR'", value)
        scale = merged["scale"]
        if not _is_number(scale) or scale <= 0:
            raise self.fail("preprocessing", "a dict whose scale is a positive number", value)
        merged["scale"] = float(scale)
        for key in ("mean", "std"):
            stats = merged[key]
            if _is_number(stats):
                stats = (stats,) * channels
            if (isinstance(stats, str) or not isinstance(stats, Sequence) or len(stats) != channels
                    or not all(_is_number(v) for v in stats)):
                raise self.fail("preprocessing", f"a dict whose {key} has one number per channel ({channels}) or one "
                                                f"for all", value)
            merged[key] = tuple(float(v) for v in stats)
        if any(s <= 0 for s in merged["std"]):
            raise self.fail("preprocessing", "a dict whose std values are positive", value)
        return merged

    def layer_groups(self, value: Any) -> tuple[tuple[str, str], ...]:
        allowed = "a list of [group name, regex] pairs, e.g. [['stem', 'conv1_'], ['head', 'predictions$']]"
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise self.fail("layer_groups", allowed, value)
        groups = []
        for pair in value:
            if (isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2
                    or not all(isinstance(v, str) for v in pair)):
                raise self.fail("layer_groups", allowed, value)
            group, rx = pair
            try:
                re.compile(rx)
            except re.error as exc:
                raise ValueError(
                    f"Backbone {self.name!r}: layer group {group!r} has an invalid regex ({exc}). Received: {rx!r}"
                ) from exc
            groups.append((group, rx))
        return tuple(groups)

    def weights(self, value: Any) -> dict[str, dict[str, Any]]:
        """Named weight sets. A set with ``url``/``notop_url`` names the files for ``include_top=True``/``False``
        (ftkit's own zoo fetches them with their ``file_hash``/``notop_file_hash``); one with neither (``{}``, or
        only ``classes``/``input_shape``) is resolved by the builder itself, for both settings."""
        allowed = f"a dict of named weight sets, each a dict with keys among {sorted(WEIGHT_SPEC_KEYS)}"
        if not isinstance(value, Mapping):
            raise self.fail("weights", allowed, value)
        for spec in value.values():
            if not isinstance(spec, Mapping) or set(spec) - WEIGHT_SPEC_KEYS:
                raise self.fail("weights", allowed, value)
            for url_key, hash_key in (("url", "file_hash"), ("notop_url", "notop_file_hash")):
                if spec.get(hash_key) and not spec.get(url_key):
                    raise self.fail("weights", f"a dict of named weight sets where {hash_key!r} comes with the "
                                    f"{url_key!r} it checks", value)
        return {str(k): dict(spec) for k, spec in value.items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
