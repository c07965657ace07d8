"""Shared machinery of the built-in zoo: argument checks, weight fetching and loading, model assembly.

Every family file (lenet.py, vgg.py, ...) only describes its layers; the keras.applications arguments are
checked here once, before any layer exists, instead of being pasted into each family as keras.applications
does. The registry calls :func:`validate_builder_args` too, so a plugin gets the same checks.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
import urllib.parse
import warnings
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
# How many mismatching layers a weight-loading error names before it only counts the rest.
MISMATCHES_SHOWN = 3

Shape = tuple[int | None, int | None, int]  # (height, width, channels); None: a variable size


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
) -> Shape:
    """Check keras.applications builder arguments against ``info``; return the resolved ``(H, W, C)``.

    ``H`` and ``W`` may be None (a variable size) for a headless, fully convolutional backbone.

    Raises ``ValueError`` (ending in "Received: ...") before anything is built or downloaded.
    """
    if not isinstance(include_top, bool):
        raise ValueError(f"{info.name}: include_top must be True or False. Received: include_top={include_top!r}")
    if pooling not in POOLING_MODES:
        raise ValueError(f"{info.name}: pooling must be one of {POOLING_MODES}. Received: pooling={pooling!r}")
    if include_top and pooling is not None:
        # keras.applications silently ignores pooling with the top; a stated setting that does nothing is refused.
        raise ValueError(
            f"{info.name}: pooling applies only without the top (include_top=False); the classification head "
            f"does its own pooling. Received: include_top=True, pooling={pooling!r}"
        )
    if include_top and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ValueError(f"{info.name}: classes must be a positive integer. Received: classes={classes!r}")
    if include_top:
        _check_activation(info, classifier_activation)
    shape = _resolve_input_shape(info, input_tensor=input_tensor, input_shape=input_shape)
    if None in shape[:2]:
        _check_variable_size(info, shape, include_top=include_top)
    _check_weights(info, weights, include_top=include_top, classes=classes,
                   classifier_activation=classifier_activation, shape=shape)
    return shape


def _check_activation(info: BackboneInfo, value: Any) -> None:
    """A misspelt ``classifier_activation`` fails here, not as Keras' bare "Could not interpret activation
    function identifier" after the whole body was built."""
    if value is None or callable(value):
        return
    import keras

    if isinstance(value, str):
        try:
            keras.activations.get(value)
            return
        except ValueError:
            pass
    names = sorted(n for n in dir(keras.activations) if not n.startswith("_") and n not in ("get", "serialize",
                                                                                               "deserialize"))
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{info.name}: classifier_activation must be None, a callable or a Keras activation name "
                     f"({', '.join(names)}).{hint} Received: classifier_activation={value!r}")


def _resolve_input_shape(info: BackboneInfo, *, input_tensor: Any, input_shape: Any) -> Shape:
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
    shape = _as_shape(input_shape)
    if shape is None:
        raise ValueError(
            f"{info.name}: input_shape must be a (height, width, channels) tuple of positive integers; height "
            f"and width may be None for a variable size (include_top=False). Received: input_shape={input_shape!r}"
        )
    # Other channel counts build, as in keras.applications; pretrained weights are checked in _check_weights.
    min_h, min_w, _ = info.min_input_shape
    if (shape[0] is not None and shape[0] < min_h) or (shape[1] is not None and shape[1] < min_w):
        raise ValueError(
            f"{info.name}: input must be at least {min_h}x{min_w} (smaller inputs vanish in its pooling). "
            f"Received: input_shape={shape}"
        )
    return shape


def _as_shape(value: Any) -> Shape | None:
    """``value`` as ``(H, W, C)`` with positive ints (None allowed for H and W), or None if it is not one."""
    try:
        dims = tuple(value)
    except TypeError:
        return None
    if len(dims) != 3 or isinstance(value, (str, bytes)):
        return None
    out = []
    for index, dim in enumerate(dims):
        if dim is None and index < 2:
            out.append(None)
        elif isinstance(dim, numbers.Integral) and not isinstance(dim, bool) and dim >= 1:
            out.append(int(dim))
        else:
            return None
    return tuple(out)  # type: ignore[return-value]


def _check_variable_size(info: BackboneInfo, shape: Shape, *, include_top: bool) -> None:
    """A variable height or width, as keras.applications allows it: headless and fully convolutional only."""
    if include_top:
        raise ValueError(
            f"{info.name}: include_top=True needs a fixed input size, as in keras.applications; use "
            f"include_top=False (with or without pooling) for a variable size, or give a concrete size such as "
            f"{info.default_input_shape}. Received: input_shape={shape}, include_top=True"
        )
    if not info.variable_input_size:
        raise ValueError(
            f"{info.name}: cannot be built with a variable input size (its metadata says variable_input_size=False); "
            f"give a concrete size such as {info.default_input_shape}. Received: input_shape={shape}"
        )


def _check_weights(info: BackboneInfo, weights: Any, *, include_top: bool, classes: int,
                   classifier_activation: Any, shape: Shape) -> None:
    if weights is None:
        return
    if isinstance(weights, str) and weights in info.weights:
        spec = info.weights[weights]
        url_key = "url" if include_top else "notop_url"
        if declares_files(spec) and not spec.get(url_key):
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
        trained_at = tuple(spec.get("input_shape") or info.default_input_shape)
        if shape[2] != trained_at[-1]:
            raise ValueError(
                f"{info.name}: weights={weights!r} were trained on {trained_at[-1]}-channel images; other channel "
                f"counts need weights=None. Received: input_shape={shape}"
            )
        if include_top and info.fixed_input_with_top and shape[:2] != trained_at[:2]:
            raise ValueError(
                f"{info.name}: weights={weights!r} with include_top=True need the input size they were trained at, "
                f"{trained_at}: the flatten + dense head's weights depend on it. Use include_top=False (and "
                f"pooling) or weights=None for other sizes. Received: input_shape={shape}"
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
        if _looks_like_a_set_name(text):
            named = ", ".join(repr(k) for k in info.weights) or "none"
            raise ValueError(
                f"{info.name} has no {text!r} weights; available: {named}. Pass weights=None, a local file "
                f"({', '.join(WEIGHT_FILE_SUFFIXES)}) or a URL with a hash fragment "
                f"('https://host/file.h5#sha256=<64 hex>'). Received: weights={weights!r}"
            )
        raise ValueError(_weights_help(info, weights, reason=f"no file exists at {text!r}"))
    if not text.endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(_weights_help(info, weights, reason=f"a weights file must end in {WEIGHT_FILE_SUFFIXES}"))


def declares_files(spec: Mapping[str, Any]) -> bool:
    """Whether a named weight set gives its files (``url``/``notop_url``); one that gives neither is resolved by
    the builder itself (keras.applications downloads and hash-checks its own), for both include_top settings."""
    return bool(spec.get("url") or spec.get("notop_url"))


def _looks_like_a_set_name(text: str) -> bool:
    """``"imagenet"``, not ``"w.h5"`` or ``"runs/w"``: what a user means as a named set, not a path."""
    return bool(re.fullmatch(r"[A-Za-z][\w-]*", text))


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
        if not declares_files(spec):
            # Only build_backbone comes here with a set name; a plugin builder resolves its sets itself.
            raise ValueError(
                f"{info.name}: weights={weights!r} are declared without 'url'/'notop_url', so ftkit has no file to "
                f"fetch; a builder using build_backbone needs the URLs (and hashes). Received: weights={weights!r}"
            )
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
    """``model.load_weights(path)`` with a short error naming the backbone, the file and the layers that differ."""
    # A failing Keras 3 load also warns once per layer it skipped (over a hundred for a ResNet); the error below
    # says it better, so those warnings are only passed on when the load succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
            failure = None
        except Exception as exc:
            failure = exc
    if failure is not None:
        # Keras' own message repeats every variable's values and every failed layer (~15,000 characters).
        found = describe_weight_mismatch(model, path) or f"{type(failure).__name__}: {_first_line(str(failure), 300)}"
        raise ValueError(
            f"{info.name}: cannot load the weights in {path} into this model: {found}. The file must come from the "
            f"same architecture, channels, classes and include_top setting (keras.applications ships separate "
            f"'*_notop.h5' files for include_top=False). Received: weights={_first_line(str(received), 200)!r}"
        ) from failure
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def describe_weight_mismatch(model: Any, path: str, *, shown: int = MISMATCHES_SHOWN) -> str | None:
    """The first ``shown`` layers whose weight shapes differ between ``model`` and the file, and a count of the
    rest; None when the file cannot be read or every layer matches by name."""
    try:
        saved, nested = _saved_weight_shapes(path)
    except Exception:  # an unreadable file: Keras' own error says why
        return None
    expected = _model_weight_shapes(model, leaves=nested)
    differ = [(name, shapes, saved.get(name)) for name, shapes in expected.items() if saved.get(name) != shapes]
    extra = [name for name in saved if name not in expected]
    if not differ and not extra:
        return None
    parts = []
    if differ:
        listed = "; ".join(
            f"{name} expects {_shapes(want)}, the file has {_shapes(got) if got is not None else 'no such layer'}"
            for name, want, got in differ[:shown]
        )
        more = f" and {len(differ) - shown} more" if len(differ) > shown else ""
        parts.append(f"{len(differ)} of the model's {len(expected)} weighted layers differ ({listed}{more})")
    if extra:
        more = f" and {len(extra) - shown} more" if len(extra) > shown else ""
        parts.append(f"the file has {len(extra)} layers the model lacks ({', '.join(extra[:shown])}{more})")
    return "; ".join(parts)


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return " ".join(str(tuple(s)) for s in shapes)


def _first_line(text: str, limit: int) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _saved_weight_shapes(path: str) -> tuple[dict[str, list[tuple[int, ...]]], bool]:
    """``({layer name: [shapes]}, nested)`` of a weights file; ``nested`` for the Keras 3 layout, whose groups
    hold the innermost layers (a legacy file holds each top-level layer's weights together)."""
    import zipfile

    import h5py

    if zipfile.is_zipfile(path):  # a .keras archive keeps its weights in model.weights.h5
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as member:
            import io

            with h5py.File(io.BytesIO(member.read()), "r") as handle:
                return _keras3_shapes(handle), True
    with h5py.File(path, "r") as handle:
        if "layer_names" in handle.attrs:  # the legacy layout of keras.applications' files
            shapes = {}
            for raw in handle.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = handle[name]
                names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
                if names:
                    shapes[name] = [tuple(group[w].shape) for w in names]
            return shapes, False
        return _keras3_shapes(handle), True


def _keras3_shapes(handle) -> dict[str, list[tuple[int, ...]]]:
    # Keras 3 keys groups by layer type and position ("layers/conv2d_3/vars/0"); the layer's own name is an
    # attribute of its "vars" group.
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def visit(path: str, obj) -> None:
        if path.startswith("layers/") and path.endswith("/vars") and len(obj):
            name = obj.attrs.get("name", path.rsplit("/", 2)[-2])
            name = name.decode() if isinstance(name, bytes) else str(name)
            shapes[name] = [tuple(obj[key].shape) for key in sorted(obj, key=int)]

    handle.visititems(visit)
    return shapes


def _model_weight_shapes(model: Any, *, leaves: bool) -> dict[str, list[tuple[int, ...]]]:
    def walk(layer):
        for child in getattr(layer, "layers", None) or []:
            if leaves and getattr(child, "layers", None):
                yield from walk(child)
            else:
                yield child

    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in walk(model) if layer.weights}


def count_parameters(build: Callable[[], Any]) -> int:
    """``build().count_params()`` without allocating or initialising any weight.

    Inside ``keras.StatelessScope(initialize_variables=False)`` variables get a shape and no value, so counting
    VGG-19's 144 M parameters takes milliseconds instead of seconds. A builder that reads a variable while it
    builds cannot run there; it is then built normally.
    """
    import keras
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)
    before = len(pending)
    try:
        with keras.StatelessScope(initialize_variables=False):
            return int(build().count_params())
    except Exception:
        return int(build().count_params())
    finally:
        # The scope leaves its variables on Keras' list of variables to initialise, which the next scope that
        # does initialise (Keras opens some itself) would fill, allocating every counted model.
        del pending[before:]


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
    try:
        x = body(img_input)
    except Exception as exc:
        if None not in shape[:2]:
            raise
        raise ValueError(
            f"{info.name}: cannot be built with a variable input size ({type(exc).__name__}: {_first_line(str(exc), 200)}); "
            f"give a concrete size such as {info.default_input_shape}. Received: input_shape={shape}"
        ) from exc
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
