"""Shared machinery of the built-in zoo: argument checks, weight fetching and loading, model assembly.

Every family file (lenet.py, vgg.py, ...) only describes its layers; the keras.applications arguments are
checked here once, before any layer exists, instead of being pasted into each family as keras.applications
does. The registry calls :func:`validate_builder_args` too, so a plugin gets the same checks.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from ftkit.backbones._metadata import METADATA_ATTR, BackboneInfo, info_from_builder

POOLING_MODES = (None, "avg", "max")
WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")
# Where fetched weights are cached; None means Keras' own cache (~/.keras), shared with keras.applications so
# ImageNet files downloaded by either are reused (same file names, same hashes). Tests point it at tmp_path.
WEIGHTS_CACHE_DIR: str | None = None
_SHA256_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_URL_SCHEMES = ("http", "https", "ftp", "file")  # what keras.utils.get_file (urllib) can fetch


def with_metadata(metadata: Mapping[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator attaching ``metadata`` to a builder as ``ftkit_metadata`` (what the registry reads)."""

    def attach(builder: Callable[..., Any]) -> Callable[..., Any]:
        setattr(builder, METADATA_ATTR, dict(metadata))
        return builder

    return attach


# -- argument checks ------------------------------------------------------------------------------------


def validate_builder_args(
    info: BackboneInfo,
    *,
    include_top: bool = True,
    weights: Any = None,
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
) -> tuple[int, int, int]:
    """Check keras.applications builder arguments against ``info``; return the resolved ``(H, W, C)``.

    Raises ``ValueError`` (ending in "Received: ...") before anything is built or downloaded.
    """
    if not isinstance(include_top, bool):
        raise ValueError(f"{info.name}: include_top must be True or False. Received: include_top={include_top!r}")
    if pooling not in POOLING_MODES:
        raise ValueError(f"{info.name}: pooling must be one of {POOLING_MODES}. Received: pooling={pooling!r}")
    if include_top and pooling is not None:
        raise ValueError(
            f"{info.name}: pooling only applies to a headless model (include_top=False); the classification "
            f"head does its own pooling. Received: include_top=True, pooling={pooling!r}"
        )
    if include_top and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ValueError(f"{info.name}: classes must be a positive integer. Received: classes={classes!r}")
    shape = _resolve_input_shape(info, input_tensor=input_tensor, input_shape=input_shape)
    if include_top and info.fixed_input_with_top and shape[:2] != info.default_input_shape[:2]:
        raise ValueError(
            f"{info.name}: with include_top=True the flatten + dense head needs the default input size "
            f"{info.default_input_shape}; use include_top=False (and pooling) for other sizes. "
            f"Received: input_shape={shape}"
        )
    _check_weights(info, weights, include_top=include_top, classes=classes,
                   classifier_activation=classifier_activation, shape=shape)
    return shape


def _resolve_input_shape(info: BackboneInfo, *, input_tensor: Any, input_shape: Any) -> tuple[int, int, int]:
    tensor_shape = None
    if input_tensor is not None:
        full = tuple(getattr(input_tensor, "shape", ()) or ())
        if len(full) != 4:
            raise ValueError(
                f"{info.name}: input_tensor must be a 4-D image batch [B, H, W, C]. "
                f"Received: input_tensor with shape {full}"
            )
        tensor_shape = full[1:]
    if input_shape is None:
        input_shape = tensor_shape if tensor_shape is not None else info.default_input_shape
    elif tensor_shape is not None and tuple(input_shape) != tuple(tensor_shape):
        raise ValueError(
            f"{info.name}: input_shape and input_tensor disagree. "
            f"Received: input_shape={tuple(input_shape)}, input_tensor shape={tensor_shape}"
        )
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or any(v is None for v in input_shape):
        raise ValueError(
            f"{info.name}: input_shape must be a concrete (height, width, channels) tuple. "
            f"Received: input_shape={input_shape!r}"
        )
    if shape[2] != info.channels:
        raise ValueError(
            f"{info.name}: expects {info.channels}-channel images (its preprocessing and weights are "
            f"defined for {info.channels}). Received: input_shape={shape}"
        )
    min_h, min_w, _ = info.min_input_shape
    if shape[0] < min_h or shape[1] < min_w:
        raise ValueError(
            f"{info.name}: input must be at least {min_h}x{min_w} (smaller inputs vanish in its pooling). "
            f"Received: input_shape={shape}"
        )
    return shape  # type: ignore[return-value]


def _check_weights(info: BackboneInfo, weights: Any, *, include_top: bool, classes: int,
                   classifier_activation: Any, shape: tuple[int, int, int]) -> None:
    if weights is None:
        return
    if isinstance(weights, str) and weights in info.weights:
        spec = info.weights[weights]
        url_key = "url" if include_top else "notop_url"
        if not spec.get(url_key):
            raise ValueError(
                f"{info.name}: weights={weights!r} have no file for include_top={include_top} (no {url_key!r} in "
                f"the metadata). Received: weights={weights!r}, include_top={include_top}"
            )
        expected_classes = spec.get("classes")
        if include_top and expected_classes is not None and classes != expected_classes:
            raise ValueError(
                f"{info.name}: weights={weights!r} with include_top=True has a {expected_classes}-class head; "
                f"use include_top=False to fine-tune on other classes. Received: classes={classes}"
            )
        expected_shape = spec.get("input_shape")
        if expected_shape is not None and shape[2] != expected_shape[-1]:
            raise ValueError(
                f"{info.name}: weights={weights!r} were trained on {expected_shape[-1]}-channel images. "
                f"Received: input_shape={shape}"
            )
        if include_top and classifier_activation not in (None, "softmax", "linear"):
            raise ValueError(
                f"{info.name}: with pretrained weights and include_top=True the classifier activation must be "
                f"'softmax' or None. Received: classifier_activation={classifier_activation!r}"
            )
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(_weights_help(info, weights))
    text = os.fspath(weights)
    if _is_url(text):
        _split_hashed_url(info, text)
        return
    if not os.path.isfile(text):
        raise ValueError(_weights_help(info, weights, reason=f"no file exists at {text!r}"))
    if not text.endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(_weights_help(info, weights, reason=f"a weights file must end in {WEIGHT_FILE_SUFFIXES}"))


def _weights_help(info: BackboneInfo, weights: Any, *, reason: str = "") -> str:
    named = ", ".join(repr(k) for k in info.weights) or "none"
    return (
        f"{info.name}: {reason + '; ' if reason else ''}weights must be None, a named weight set "
        f"(available: {named}), a local file ({', '.join(WEIGHT_FILE_SUFFIXES)}) or a URL with a hash "
        f"fragment ('https://host/file.h5#sha256=<64 hex>'). Received: weights={weights!r}"
    )


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme in _URL_SCHEMES


def _split_hashed_url(info: BackboneInfo, url: str) -> tuple[str, str]:
    """``(url_without_fragment, sha256)``; a URL without its hash could silently change, so it is refused."""
    parts = urllib.parse.urlsplit(url)
    match = _SHA256_FRAGMENT.match(parts.fragment)
    if not match:
        raise ValueError(
            f"{info.name}: a weights URL must end in '#sha256=<64 hex digits>' so the download can be "
            f"verified and cached. Received: weights={url!r}"
        )
    return urllib.parse.urlunsplit(parts._replace(fragment="")), match.group(1).lower()


# -- fetching and loading weights -----------------------------------------------------------------------


def resolve_weights(info: BackboneInfo, weights: Any, *, include_top: bool, cache_dir: str | None = None) -> str | None:
    """The local path of the weights file ``weights`` names (fetching and hash-checking it if needed)."""
    if weights is None:
        return None
    cache_dir = cache_dir or WEIGHTS_CACHE_DIR
    if isinstance(weights, str) and weights in info.weights:
        spec = info.weights[weights]
        url, file_hash = (spec["url"], spec.get("file_hash")) if include_top else (spec["notop_url"], spec.get("notop_file_hash"))
        fname = os.path.basename(urllib.parse.urlsplit(url).path)
        return _fetch(info, url, fname=fname, file_hash=file_hash, cache_dir=cache_dir, cache_subdir="models",
                      received=weights)
    text = os.fspath(weights)
    if _is_url(text):
        url, sha256 = _split_hashed_url(info, text)
        # The hash prefix keeps two different files that share a base name from evicting each other.
        fname = f"{sha256[:12]}-{os.path.basename(urllib.parse.urlsplit(url).path)}"
        return _fetch(info, url, fname=fname, file_hash=sha256, cache_dir=cache_dir, cache_subdir="ftkit",
                      received=text)
    return text


def _fetch(info: BackboneInfo, url: str, *, fname: str, file_hash: str | None, cache_dir: str | None,
           cache_subdir: str, received: str) -> str:
    import keras
    from keras.src.backend.config import keras_home  # get_file's own default, needed to name the target

    cache_dir = cache_dir or keras_home()
    # get_file silently falls back to /tmp/.keras when the cache folder does not exist yet (not writable).
    os.makedirs(os.path.join(cache_dir, cache_subdir), exist_ok=True)
    try:
        return keras.utils.get_file(fname, url, file_hash=file_hash, cache_dir=cache_dir, cache_subdir=cache_subdir)
    except ValueError as exc:
        if "hash" not in str(exc):
            raise
        target = os.path.join(cache_dir, cache_subdir, fname)
        if os.path.isfile(target):
            os.remove(target)  # get_file keeps the rejected download; it must not linger in the cache
        raise ValueError(
            f"{info.name}: the weights file downloaded from {url} does not match the expected hash {file_hash}; "
            f"it is corrupt or not the file the hash names. Received: weights={received!r}"
        ) from exc
    except Exception as exc:
        raise OSError(f"{info.name}: could not fetch weights from {url} ({exc}). Received: weights={received!r}") from exc


def load_weights(model: Any, path: str, *, info: BackboneInfo, received: Any) -> None:
    """``model.load_weights(path)`` with an error that names the backbone and what was passed."""
    try:
        model.load_weights(path)
    except Exception as exc:
        raise ValueError(
            f"{info.name}: cannot load the weights in {path} into this model ({type(exc).__name__}: {exc}). "
            f"The file must come from the same architecture, channels and include_top setting "
            f"(keras.applications ships separate '*_notop.h5' files for include_top=False). "
            f"Received: weights={received!r}"
        ) from exc


# -- assembly ---------------------------------------------------------------------------------------------


def build_backbone(
    builder: Callable[..., Any],
    *,
    body: Callable[[Any], Any],
    head: Callable[..., Any],
    include_top: bool,
    weights: Any,
    input_tensor: Any,
    input_shape: Any,
    pooling: str | None,
    classes: int,
    classifier_activation: Any,
    name: str | None,
):
    """Check the arguments, fetch weights, then build ``head(body(inputs))`` (or pooled features) and load.

    ``body(x) -> features`` builds the convolutional trunk; ``head(features, classes=, activation=)`` the
    classifier (it may return a list of outputs). Everything that can fail on the arguments fails before
    the first layer is created.
    """
    import keras

    info = info_from_builder(builder.__name__, builder)
    shape = validate_builder_args(info, include_top=include_top, weights=weights, input_tensor=input_tensor,
                                  input_shape=input_shape, pooling=pooling, classes=classes,
                                  classifier_activation=classifier_activation)
    weights_path = resolve_weights(info, weights, include_top=include_top)
    if input_tensor is None:
        inputs = img_input = keras.Input(shape=shape, name="input_layer")
    elif keras.backend.is_keras_tensor(input_tensor):
        img_input = input_tensor
        inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        inputs = img_input = keras.Input(tensor=input_tensor, shape=shape)
    x = body(img_input)
    if include_top:
        x = head(x, classes=classes, activation=classifier_activation)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name or info.name)
    if weights_path is not None:
        load_weights(model, weights_path, info=info, received=weights)
    return model
