"""Recipes: one YAML file, one section per pipeline stage, validated against a schema before anything runs.

Sections: ``data``, ``augment``, ``backbone``, ``head``, ``schedule``, ``train``, ``evaluate``. Each stage
owns the schema of its section (``HeadConfig`` in ``ftkit.head``, ``ScheduleConfig`` in ``ftkit.schedule``,
``AugmentConfig`` in ``ftkit.augment``); this module composes them, loads YAML safely, applies
``--set section.key=value`` overrides, shrinks a recipe for ``--smoke``, and turns pydantic's errors into
messages that name the place (``schedule.phases[1].lr``), what was received and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from ftkit.augment.config import AugmentConfig
from ftkit.head import HeadConfig
from ftkit.schedule import ScheduleConfig

SECTIONS = ("data", "augment", "backbone", "head", "schedule", "train", "evaluate")
SMOKE_STEPS = 2
SMOKE_SAMPLES_PER_CLASS = 4


class RecipeError(ValueError):
    """A recipe that does not validate; the message lists every problem, one per line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Where the images come from and how they are shaped. Relative paths resolve from the working directory."""

    train: str  # a folder of class folders (with or without train/val/test), a CSV file, or an MNIST folder
    val: str | None = None
    test: str | None = None
    root: str | None = None  # the folder a CSV's relative paths start from (default: the CSV's own folder)
    # Held out from train (stratified, seeded) when the data has no val split and data.val is not given; the
    # same default as `ftkit data check` and fastai's valid_pct. 0: no validation (train.monitor then falls
    # back to the training metric, and says so).
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # likewise for test, when there is no test split
    image_size: tuple[PositiveInt, PositiveInt] | None = None  # default: the backbone's input size
    channels: Literal[1, 3] | None = None  # default: the backbone's
    resize: Literal["stretch", "crop", "pad"] = "stretch"
    batch_size: PositiveInt = 32
    classes: list[str] | None = None  # keep only these classes (in this order)
    samples_per_class: PositiveInt | None = None  # a labelled sample of the training split
    max_samples_per_class: PositiveInt | None = None  # cap the training split, at most this per class (smoke)
    eval_samples_per_class: PositiveInt | None = None  # cap val/test too (smoke runs)
    oversample: bool = False  # resample the training split to balanced classes each epoch
    seed: int = 0


class BackboneConfig(_Section):
    name: str
    weights: str | None = None  # None, a named set ("imagenet"), a weights file, or a hashed URL
    init_from: str | None = None  # a run folder whose backbone weights initialise this one
    # exact: the same architecture, every weight copied; by_name: the layers whose names and shapes agree
    # (a deeper net started from a trained shallower one, as the VGG paper did), the rest stay as initialised
    init_match: Literal["exact", "by_name"] = "exact"


class TrainConfig(_Section):
    seed: int = 0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    weight_decay: float = Field(0.0, ge=0.0)  # adamw only
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool = False
    class_weight: Literal["auto"] | dict[str, float] | None = None  # "auto": balanced, from training counts
    feature_cache: bool = True  # head-only phases without augmentation train on cached backbone features
    steps_per_epoch: PositiveInt | None = None  # cap (smoke runs); default: one pass over the data
    validation_steps: PositiveInt | None = None
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    # The epoch that becomes model.keras and is evaluated at the end: the last, or the best monitor value
    # (checkpoints/best.keras; Keras's EarlyStopping(restore_best_weights=True), fastai's SaveModelCallback)
    final_model: Literal["last", "best"] = "last"
    deterministic: bool = False  # enable_op_determinism: bit-reproducible runs and resumes, slower on GPU
    # auto: multi_worker when TF_CONFIG (or --workers) describes a cluster, mirrored with several GPUs, else
    # default. data.batch_size and the learning rates are global (per step, all replicas together).
    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"
    verbose: Literal[0, 1, 2] = 1

    @field_validator("class_weight")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, dict) and any(w <= 0 for w in value.values()):
            raise ValueError(f"class weights must be positive. Received: class_weight={value}")
        return value


class EvaluateConfig(_Section):
    enabled: bool = True
    splits: list[Literal["val", "test"]] = Field(default_factory=lambda: ["val", "test"])
    top_k: list[PositiveInt] = Field(default_factory=lambda: [5])


class Recipe(_Section):
    """A whole recipe; ``Recipe.model_validate(dict)`` checks everything, nested sections included."""

    data: DataConfig
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    backbone: BackboneConfig
    head: HeadConfig = Field(default_factory=HeadConfig)
    schedule: ScheduleConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that validates back into the same recipe (what the run folder's recipe.yaml holds)."""
        data = self.model_dump(mode="json")
        data["augment"] = self.augment.to_recipe()
        return data


# -- loading --------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` a recipe file: tags that would construct Python objects are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe file not found. Received: recipe={str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}. Received: recipe={str(path)!r}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections {list(SECTIONS)}. "
                          f"Received: {type(data).__name__}")
    return data


def load_recipe(source: str | Path | dict | Recipe, *, overrides: list[str] | dict[str, Any] | None = None,
                smoke: bool = False) -> Recipe:
    """A validated :class:`Recipe` from a YAML path, a dict or a recipe, with overrides and smoke applied."""
    if isinstance(source, Recipe):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        data = read_yaml(source)
    data = apply_overrides(data, overrides or [])
    recipe = validate(data)
    return smoke_recipe(recipe) if smoke else recipe


def validate(data: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, data)) from None


# -- overrides ------------------------------------------------------------------------------------------

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key(key: str) -> list[str | int]:
    """``"schedule.phases[1].lr"`` -> ``["schedule", "phases", 1, "lr"]``."""
    parts: list[str | int] = []
    for chunk in key.split("."):
        steps = _STEP.findall(chunk)
        if not chunk or "".join(name or f"[{idx}]" for name, idx in steps) != chunk:
            raise RecipeError(f"--set key must look like section.key or section.list[0].key. Received: {key!r}")
        parts.extend(name if name else int(idx) for name, idx in steps)
    return parts


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (values parsed as YAML scalars) to a copy of ``data``."""
    data = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else [_split(item) for item in overrides]
    for key, value in items:
        path = parse_key(key)
        node: Any = data
        for step, following in zip(path, path[1:], strict=False):
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    raise RecipeError(f"--set {key}: index [{step}] is out of range. Received: {key!r}")
                node = node[step]
            else:
                if not isinstance(node, dict):
                    raise RecipeError(f"--set {key}: {step!r} is not inside a mapping. Received: {key!r}")
                node = node.setdefault(step, [] if isinstance(following, int) else {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise RecipeError(f"--set {key}: index [{last}] is out of range. Received: {key!r}")
        elif not isinstance(node, dict):
            raise RecipeError(f"--set {key}: the parent of {last!r} is not a mapping. Received: {key!r}")
        node[last] = value
    return data


def _split(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set takes section.key=value. Received: {item!r}")
    try:
        return key.strip(), yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {key}: the value is not a YAML scalar ({exc}). Received: {text!r}") from exc


# -- smoke ----------------------------------------------------------------------------------------------


def smoke_recipe(recipe: Recipe) -> Recipe:
    """A copy of ``recipe`` that runs in seconds: 1 epoch per phase, 2 steps, 4 images per class, the
    backbone's smallest input, no weight downloads and no ``init_from`` (smoke checks the pipeline, not
    the accuracy).
    """
    from ftkit.backbones import backbone_info

    data = recipe.to_dict()
    info = backbone_info(recipe.backbone.name)
    # Shrinks only: a recipe already below 32 (LeNet-5's 28x28 digits) keeps its size, so smoke runs its path.
    asked = recipe.data.image_size or (32, 32)
    small = tuple(max(info.min_input_shape[i], min(asked[i], 32)) for i in (0, 1))
    if info.aux_taps and recipe.data.image_size:
        # Auxiliary classifiers have their own minimum (GoogLeNet's 5x5/3 pool needs a 65x65 input), which the
        # metadata's headless minimum does not describe: keep the recipe's size.
        small = tuple(recipe.data.image_size)
    # Caps, not samples: a class with fewer images than the cap is kept whole, as the full run keeps it.
    data["data"].update(image_size=list(small), batch_size=min(recipe.data.batch_size, 4),
                        max_samples_per_class=SMOKE_SAMPLES_PER_CLASS, eval_samples_per_class=SMOKE_SAMPLES_PER_CLASS)
    data["backbone"].update(weights=None, init_from=None)
    schedule = data["schedule"]
    schedule.update(epochs=1, unfrozen_epochs=None if schedule.get("preset") else schedule.get("unfrozen_epochs"))
    for phase in schedule.get("phases", []):
        phase.update(epochs=1, warmup_epochs=0.0)
    schedule["warmup_epochs"] = 0.0
    data["train"].update(steps_per_epoch=SMOKE_STEPS, validation_steps=SMOKE_STEPS, verbose=0)
    return validate(data)


# -- error messages -------------------------------------------------------------------------------------


def format_errors(exc: ValidationError, data: dict[str, Any]) -> str:
    """One line per problem: place, what is wrong, what was received, what is allowed.

    The place is the full path into the recipe (``augment.ops[1].flip.mode``), the received value is the
    one pydantic validated (``error["input"]``), and the errors of the members of one union (pydantic
    reports one per member, located under tags such as ``constrained-int``) collapse into one line that
    lists the allowed forms.
    """
    lines: list[str] = []
    unions: dict[tuple, list[tuple[dict, list, int]]] = {}
    for error in exc.errors():
        loc, tag_at = _split_loc(error["loc"], data)
        if tag_at is None:
            lines.append(_line(error, loc, data))
            continue
        base = tuple(loc[:tag_at])
        if base not in unions:
            unions[base] = []
            lines.append(base)  # placeholder, filled below in the order problems were found
        unions[base].append((error, loc, tag_at))
    out = [_union_line(list(line), unions[line], data) if isinstance(line, tuple) else line for line in lines]
    return "\n".join([f"The recipe has {len(out)} problem(s):", *out])


def _line(error: dict[str, Any], loc: list, data: Any = None) -> str:
    where = _place(loc)
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        parent = _place(loc[:-1]) or "the top level"
        return f"- unknown key {key!r} in {parent}.{hint} Allowed keys: {allowed}. Received: {where}"
    if error["type"] == "missing" and loc and isinstance(loc[-1], int):  # a position of a fixed-length list
        parent = _place(loc[:-1])
        value = _lookup(data, loc[:-1])
        return f"- {parent}: too few items (item {loc[-1] + 1} is missing). Received: {parent}={value!r}"
    if error["type"] == "missing":
        return f"- {where}: this key is required. Allowed keys here: {_allowed_keys(loc[:-1])}"
    message = _message(error)
    if "Received:" in message:  # our own validators already say what they received
        return f"- {where or 'the recipe'}: {message}"
    ending = "" if message.endswith((".", "?")) else "."
    return f"- {where or 'the recipe'}: {message}{ending} Received: {where or 'recipe'}={error['input']!r}"


def _message(error: dict[str, Any]) -> str:
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected}"
        if isinstance(error["input"], str):
            close = difflib.get_close_matches(error["input"], re.findall(r"'([^']*)'", expected), n=1)
            message += f". Did you mean {close[0]!r}?" if close else ""
    return message


def _union_line(base: list, members: list[tuple[dict, list, int]], data: Any) -> str:
    """One line for the failed members of one union at ``base``: the allowed forms and the received value."""
    where = _place(base)
    # the parts before the first tag are all kept, so the tag is at raw index tag_at too
    whole = [error for error, _, tag_at in members if len(error["loc"]) == tag_at + 1]
    received = whole[0]["input"] if whole else _lookup(data, base)
    annotation = _annotation_at(base)
    if annotation is not None:
        allowed = _join(_forms(annotation))
    else:
        allowed = _join(list(dict.fromkeys(_message(error) for error, _, _ in members)))
    return f"- {where}: must be {allowed}. Received: {where}={received!r}"


_MISSING = object()
_TAG_NAMES = {"int", "float", "str", "bool", "none", "list", "dict", "tuple"}
_TAG_PREFIXES = ("constrained-", "function-", "lax-", "strict-", "json-", "nullable", "literal", "tagged-union")


def _split_loc(raw: tuple, data: Any) -> tuple[list, int | None]:
    """``raw`` without pydantic's union-member tags, and the index (in the result) where the first tag stood.

    A string part is a tag when the recipe's data at that point is a value that cannot have keys (a string,
    a number, a list), or when it is not a key there and looks like one of pydantic's tags
    (``literal['head','all']``, ``constrained-int``, ``list[str]``, a model's class name).
    """
    loc: list = []
    tag_at = None
    node = data
    for part in raw:
        if isinstance(part, int):
            loc.append(part)
            node = node[part] if isinstance(node, list | tuple) and -len(node) <= part < len(node) else _MISSING
            continue
        if isinstance(node, dict) and part in node:
            loc.append(part)
            node = node[part]
            continue
        keyless = node is not _MISSING and not isinstance(node, dict)
        if keyless or _looks_like_tag(part):
            tag_at = len(loc) if tag_at is None else tag_at
            continue
        loc.append(part)
        node = _MISSING
    return loc, tag_at


def _looks_like_tag(part: str) -> bool:
    return part in _TAG_NAMES or "[" in part or part.startswith(_TAG_PREFIXES) or part[:1].isupper()


def _place(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(data: Any, loc: list) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def _annotation_at(loc: list) -> Any:
    """The schema's type annotation of the field at ``loc`` (``None`` when ``loc`` is not a field)."""
    return _schema_at(loc)[1]


def _forms(annotation: Any) -> list[str]:
    """The allowed forms of a value of type ``annotation``, in words (``'head'``, ``an integer > 0``, ...)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return [form for arg in args for form in _forms(arg)]
    if origin is Literal:
        return [repr(value) for value in args]
    if origin is Annotated:
        bounds = [f"{symbol} {getattr(meta, name)}" for meta in annotation.__metadata__
                  for name, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                  if getattr(meta, name, None) is not None]
        return [" ".join([_forms(args[0])[0], " and ".join(bounds)]).strip()]
    if annotation is type(None):
        return ["null"]
    if origin in (list, tuple):
        return [f"a list of {_plural(args[0]) if args else 'values'}"]
    if origin is dict:
        return [f"a mapping of {_plural(args[0])} to {_plural(args[1])}"]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f"a mapping with keys {sorted(annotation.model_fields)}"]
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return [words.get(annotation, getattr(annotation, "__name__", str(annotation)))]


def _plural(annotation: Any) -> str:
    words = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    return words.get(annotation, "values")


def _join(forms: list[str]) -> str:
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


def _allowed_keys(loc: list) -> list[str]:
    """The field names of the schema model at ``loc`` (walking nested models and lists of models)."""
    model, _, found = _schema_at(loc)
    return sorted(getattr(model, "model_fields", {})) if found else []


def _schema_at(loc: list) -> tuple[Any, Any, bool]:
    """``(model, annotation, found)`` at ``loc``: the schema model a value there is (or None), the field's type
    annotation (None at the top), and whether ``loc`` is a path of the schema at all."""
    model: Any = Recipe
    annotation = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None, None, False
        annotation = field.annotation
        model = _model_in(annotation)
    return model, annotation, True


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_recipe(recipe: Recipe, path: str | Path, *, header: str = "") -> None:
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    Path(path).write_text((header + "\n" if header else "") + text)
