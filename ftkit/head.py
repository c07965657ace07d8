"""Model assembly: raw images -> normalisation -> backbone (include_top=False) -> new head -> logits.

The normalisation comes from the backbone's metadata and sits inside the model, so every saved model takes
raw 0..255 images; a backbone that scales its own input (``RAW_PREPROCESSING``) gets no normalisation layer.
The training model outputs logits (the loss is computed from logits); GoogLeNet-style auxiliary heads are extra
training outputs, dropped from the inference model, which ends in a softmax.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from ftkit.schedule import AUX, HEAD

BACKBONE_LAYER = "backbone"
FEATURES_LAYER = "head_pool"
LOGITS_LAYER = "logits"
INIT_MATCHES = ("exact", "by_name")  # backbone.init_match


class HeadConfig(BaseModel):
    """The recipe's ``head`` section."""

    model_config = ConfigDict(extra="forbid")

    pooling: Literal["avg", "max", "flatten"] = "avg"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    hidden: list[PositiveInt] = Field(default_factory=list)  # widths of dense layers before the classifier
    hidden_activation: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    aux_loss_weight: float = Field(0.3, ge=0.0)  # GoogLeNet paper, Sec. 5


@dataclasses.dataclass
class Assembled:
    """The training model and what the engine needs to freeze, cache and export it."""

    model: Any  # raw images -> logits (or [logits, aux logits...])
    backbone: Any  # the nested backbone model (normalised images -> feature map [, aux taps])
    preprocess: Any  # None for a backbone that takes raw pixels (info.raw_input)
    head_layers: list  # weighted layers of the new head, input to output
    aux_layers: list
    groups: dict[str, list]  # backbone group -> layers, plus "head" (and "aux")
    output_names: list[str]
    features_shape: tuple[int, ...]  # what the pooling layer outputs (the feature cache's shape)
    info: Any

    @property
    def has_aux(self) -> bool:
        return bool(self.aux_layers)


def preprocessing_layer(info):
    """The backbone's normalisation layer (ftkit.backbones' ``Preprocess``)."""
    from ftkit.backbones._preprocessing import preprocessing_layer as make

    return make(info, name="preprocess")


def _warn_backbone_layers_in_head_group(info, layers: list) -> None:
    """The assembled model's new head takes the group name ``head``; backbone layers its regex matched (a
    plugin's final norm that exists only without the top, as Keras's ConvNeXt has) then belong to no group and
    train only in phases that train every group (engine.apply_phase), which a gradual schedule would not expect."""
    if layers:
        import warnings

        names = ", ".join(layer.name for layer in layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
        warnings.warn(f"backbone {info.name!r}: its layer_groups put weighted layers of the headless model in the group "
                      f"{HEAD!r}, which the new head replaces, so they train only in phases that train every group: "
                      f"{names}. Give them a group of their own (`ftkit models check {info.name}` reports this).",
                      stacklevel=3)


def build_model(backbone_name: str, *, num_classes: int, image_shape: tuple[int, int, int],
                head: HeadConfig, weights: Any = None, seed: int = 0) -> Assembled:
    """Assemble raw images -> preprocess -> backbone -> head -> logits for ``num_classes`` classes."""
    import keras

    from ftkit.backbones import assign_layer_groups, backbone_info, create_backbone

    info = backbone_info(backbone_name)
    base = create_backbone(backbone_name, include_top=False, weights=weights, input_shape=tuple(image_shape),
                           pooling=None)
    taps = [base.get_layer(tap).output for tap in info.aux_taps]
    backbone = keras.Model(base.inputs, [base.outputs[0], *taps], name=BACKBONE_LAYER) if taps else base
    if not taps:
        backbone.name = BACKBONE_LAYER  # a fixed name lets init_from find it in any earlier run
    groups = assign_layer_groups(backbone, info)
    _warn_backbone_layers_in_head_group(info, groups.get(HEAD, []))

    inputs = keras.Input(shape=tuple(image_shape), name="image")
    # An identity layer would only make saved models need ftkit's layer class to load.
    preprocess = None if info.raw_input else preprocessing_layer(info)
    outputs = backbone(inputs if preprocess is None else preprocess(inputs))
    features, tapped = (outputs[0], outputs[1:]) if taps else (outputs, [])
    logits, head_layers, features_shape = _head(features, num_classes=num_classes, config=head, seed=seed)
    aux_outputs, aux_layers = [], []
    for i, tap in enumerate(tapped, start=1):
        out, layers_ = _aux_head(tap, num_classes=num_classes, index=i, info=info)
        aux_outputs.append(out)
        aux_layers.extend(layers_)
    output_names = [LOGITS_LAYER] + [f"aux{i}" for i in range(1, len(aux_outputs) + 1)]
    # info.name, not backbone_name: a "distribution:name" reference is no valid Keras scope name.
    model = keras.Model(inputs, [logits, *aux_outputs] if aux_outputs else logits, name=f"{info.name}_finetune")
    groups = {**groups, HEAD: head_layers}
    if aux_layers:
        groups[AUX] = aux_layers
    return Assembled(model=model, backbone=backbone, preprocess=preprocess, head_layers=head_layers,
                     aux_layers=aux_layers, groups=groups, output_names=output_names,
                     features_shape=tuple(features_shape), info=info)


def _head(features, *, num_classes: int, config: HeadConfig, seed: int):
    from keras import layers

    pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}
    x = pool[config.pooling](name=FEATURES_LAYER)(features)
    features_shape = tuple(x.shape[1:])
    weighted = []
    for i, width in enumerate(config.hidden, start=1):
        if config.dropout:
            x = layers.Dropout(config.dropout, seed=seed + i, name=f"head_dropout{i}")(x)
        dense = layers.Dense(width, activation=config.hidden_activation, name=f"head_dense{i}")
        x = dense(x)
        weighted.append(dense)
    if config.dropout:
        x = layers.Dropout(config.dropout, seed=seed, name="head_dropout")(x)
    # float32 logits keep the softmax and the loss stable under mixed precision.
    final = layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)
    return final(x), weighted + [final], features_shape


def _aux_head(tap, *, num_classes: int, index: int, info):
    """An auxiliary classifier from the backbone family's module (``aux_classifier``), logits out."""
    import keras

    from ftkit.backbones import REGISTRY

    module = importlib.import_module(REGISTRY.builder(info.name).__module__)
    make = getattr(module, "aux_classifier", None)
    if make is None:
        make = importlib.import_module("ftkit.backbones.googlenet").aux_classifier
    name = f"aux{index}"
    logits = make(tap, num_classes, name=name, activation=None)
    out = keras.layers.Activation("linear", dtype="float32", name=name)(logits)
    sub = keras.Model(tap, out)  # only to collect the weighted layers the aux head created
    return out, [layer for layer in sub.layers if layer.weights]


def inference_model(model):
    """Raw images -> class probabilities from a training model (``Assembled.model``, or a checkpoint of one),
    sharing its layers; auxiliary heads are left out."""
    import keras

    logits = model.get_layer(LOGITS_LAYER).output
    probs = keras.layers.Softmax(dtype="float32", name="probabilities")(logits)
    return keras.Model(model.inputs, probs, name=model.name.replace("_finetune", "_classifier"))


def head_model(assembled: Assembled, *, num_classes: int, config: HeadConfig, seed: int = 0):
    """The head alone, pooled features -> logits, with layers named as in the full model (feature cache)."""
    import keras

    inputs = keras.Input(shape=assembled.features_shape, name="features")
    x = inputs
    for i, width in enumerate(config.hidden, start=1):
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, seed=seed + i, name=f"head_dropout{i}")(x)
        x = keras.layers.Dense(width, activation=config.hidden_activation, name=f"head_dense{i}")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, seed=seed, name="head_dropout")(x)
    x = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)(x)
    model = keras.Model(inputs, x, name="head")
    for layer in assembled.head_layers:
        model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def copy_head_weights(source, assembled: Assembled) -> None:
    """Copy a :func:`head_model`'s trained weights back into the full model's head."""
    for layer in assembled.head_layers:
        layer.set_weights(source.get_layer(layer.name).get_weights())


def load_backbone_from_run(assembled: Assembled, run_dir, *, match: str = "exact") -> str:
    """``backbone.init_from``: load the backbone weights of an earlier run (its final ``model.keras``).

    ``match="exact"``: the earlier backbone must have the same weight tensors, all of which are copied.
    ``match="by_name"``: each layer whose name and weight shapes agree is copied and every other layer keeps
    its initial values, the way the VGG paper started its deeper nets from a trained shallower one (VGG-19
    from VGG-16: 16 conv and dense layers share names). Returns a line saying what was copied.
    """
    from pathlib import Path

    import keras

    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone.init_from must be a run folder written by `ftkit train` (it holds model.keras). "
            f"Received: init_from={str(run_dir)!r}"
        )
    if match not in INIT_MATCHES:
        raise ValueError(f"init_match must be one of {INIT_MATCHES}. Received: init_match={match!r}")
    earlier = keras.saving.load_model(path, compile=False)
    try:
        source = earlier.get_layer(BACKBONE_LAYER)
    except ValueError as exc:
        raise ValueError(f"{path} has no nested layer {BACKBONE_LAYER!r}; it was not written by ftkit train. "
                         f"Received: init_from={str(run_dir)!r}") from exc
    if match == "by_name":
        return _load_matching_layers(assembled.backbone, source, path)
    target_weights = assembled.backbone.get_weights()
    source_weights = source.get_weights()
    shapes = [w.shape for w in target_weights], [w.shape for w in source_weights]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"The backbone in {path} does not match this recipe's backbone (different architecture, channels "
            f"or layer sizes: {len(source_weights)} vs {len(target_weights)} weight tensors); "
            f"backbone.init_match: by_name copies only the layers whose names and shapes agree. "
            f"Received: init_from={str(run_dir)!r}"
        )
    assembled.backbone.set_weights(source_weights)
    return f"init_from {run_dir}: all {len(target_weights)} weight tensors of the backbone copied"


def _load_matching_layers(target, source, path) -> str:
    """Copies the weights of same-named, same-shaped layers; raises when no layer matches."""
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    copied, fresh, mismatched = [], [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is None:
            fresh.append(layer.name)
        elif [w.shape for w in other.get_weights()] != [tuple(w.shape) for w in layer.weights]:
            mismatched.append(layer.name)
        else:
            layer.set_weights(other.get_weights())
            copied.append(layer.name)
    if not copied:
        raise ValueError(f"backbone.init_match: by_name found no layer of this backbone in {path} with the same "
                         f"name and weight shapes (this backbone's layers: {', '.join(fresh + mismatched)})")
    line = f"init_from {path.parent}: {len(copied)} of {len(copied) + len(fresh) + len(mismatched)} layers copied"
    if fresh:
        line += f"; not in the earlier run, left at their initial values: {', '.join(fresh)}"
    if mismatched:
        line += f"; other shapes there, left at their initial values: {', '.join(mismatched)}"
    return line
