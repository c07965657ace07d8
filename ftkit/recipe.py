"""Recipes: one YAML file, one section per pipeline stage, validated against a schema before anything runs.

Sections: ``data``, ``augment``, ``backbone``, ``head``, ``schedule``, ``train``, ``evaluate``. Each stage
owns the schema of its section (``HeadConfig`` in ``ftkit.head``, ``ScheduleConfig`` in ``ftkit.schedule``,
``AugmentConfig`` in ``ftkit.augment``); this module composes them, loads YAML safely, applies
``--set section.key=value`` overrides, shrinks a recipe for ``--smoke``, and turns pydantic's errors into
messages that name the place (``schedule.phases[1].lr``), what was received and what is allowed. Its
reference of every key (docs/RECIPES.md) is generated from the same schema: ``python -m ftkit.recipe_reference`` (:mod:`ftkit.recipe_reference`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from ftkit.augment.config import AugmentConfig
from ftkit.evaluate.runs import TTA_HELP, TTA_MODES  # light: no TensorFlow or scikit-learn
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
    # skip: bad files are left out and reported (counted in the run's output, listed in ftkit_run.json);
    # strict: every image is decoded before training and any bad file (or doctor warning) stops the run, all
    # listed at once, as `ftkit data check --strict` does.
    policy: Literal["skip", "strict"] = "skip"


class BackboneConfig(_Section):
    name: str
    weights: str | None = None  # None, a named set ("imagenet"), a weights file, or a hashed URL
    init_from: str | None = None  # a run folder whose backbone weights initialise this one
    # exact: the same architecture, every weight copied; by_name: the layers whose names and shapes agree
    # (a deeper net started from a trained shallower one, as the VGG paper did), the rest stay as initialised
    init_match: Literal["exact", "by_name"] = "exact"


class EarlyStoppingConfig(_Section):
    """``train.early_stopping``: end a phase once ``train.monitor`` has stalled (fastai's EarlyStoppingCallback,
    per phase as fastai's is per ``fit`` call; Keras's EarlyStopping has the same rule)."""

    # Epochs of the phase without an improvement before it ends. At least 1: Keras's patience 0 stops exactly
    # where 1 does (both count the first epoch without improvement), so 0 would only look different.
    patience: PositiveInt
    # An improvement beats the phase's best by more than this, in the monitor's direction.
    min_delta: float = Field(0.0, ge=0.0)


class EMAConfig(_Section):
    """``train.ema``: an exponential moving average of the trainable weights, the one evaluated and saved (Keras's
    optimizer ``use_ema``; timm's ModelEmaV3)."""

    # 0.99 (Keras's default): the average spans about 1 / (1 - 0.99) = 100 steps, so in a phase of a few hundred
    # to a few thousand steps it soon forgets the phase's starting weights (their share is 0.99^n after n steps:
    # 5% after 300). Keras's average has no warm-up (timm's decays are ~0.9998 with one, over ImageNet-long
    # runs): 0.999 would leave 74% of a 300-step phase's average at the weights the phase began with.
    momentum: float = Field(0.99, gt=0.0, lt=1.0, description=(
        "the average's decay per batch: average = momentum * average + (1 - momentum) * weights; it spans about "
        "1 / (1 - momentum) batches"))


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
    early_stopping: EarlyStoppingConfig | None = None  # off by default
    # Rescale each update's gradient to this global norm when it is larger (Keras's global_clipnorm).
    clip_norm: PositiveFloat | None = None
    # Average the gradients of this many batches per update (Keras's gradient_accumulation_steps); the
    # learning-rate schedule counts batches, as Keras's does. 1 or null: an update per batch.
    gradient_accumulation_steps: PositiveInt | None = None
    ema: EMAConfig | None = Field(None, description=(
        "evaluate and save an exponential moving average of the trainable weights (BatchNorm's moving statistics "
        "are not averaged): per-epoch validation, the best epoch, model.keras and its evaluation use the average, "
        "the training loss the raw weights; each phase starts its own average; off when null"))

    @field_validator("early_stopping", "ema", mode="before")
    @classmethod
    def _a_mapping(cls, value, info):
        # pydantic's own message names the Python class ("instance of EarlyStoppingConfig")
        if value is not None and not isinstance(value, dict | BaseModel):
            example = {"early_stopping": "{patience: 3, min_delta: 0.0}", "ema": "{momentum: 0.99} ({} for the default)"}
            raise ValueError(f"must be a mapping such as {example[info.field_name]}, or null (off). "
                             f"Received: {info.field_name}={value!r}")
        return value

    @field_validator("class_weight")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, dict) and any(w <= 0 for w in value.values()):
            raise ValueError(f"class weights must be positive. Received: class_weight={value}")
        return value


class EvaluateConfig(_Section):
    enabled: bool = True
    splits: list[Literal["val", "test"]] = Field(default_factory=lambda: ["val", "test"])
    # null: top-5 where the data has more than 5 classes (ftkit.evaluate.metrics.DEFAULT_TOP_K), so a 2-class run
    # does not report an always-1 top-5; a k written here is reported, undefined with a note where k >= classes.
    top_k: list[PositiveInt] | None = None
    # test-time augmentation in training's final evaluation (TTA_MODES); null: none
    tta: Literal[tuple(TTA_MODES)] | None = None

    @field_validator("tta", mode="before")
    @classmethod
    def _tta(cls, value):
        # pydantic's own message for an optional literal leaves null out of what is allowed
        if value is not None and value not in TTA_MODES:
            near = [m for m in TTA_MODES if isinstance(value, str) and value.strip().lower() == m]
            hint = f" Did you mean {near[0]!r}?" if near else ""
            allowed = " or ".join(repr(m) for m in TTA_MODES)
            raise ValueError(f"must be {allowed} or null (no test-time augmentation): {TTA_HELP}.{hint} "
                             f"Received: evaluate.tta={value!r}")
        return value


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
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, data)) from None
    coerced = list(_coercions(data, recipe.to_dict(), []))
    if coerced:
        raise RecipeError("\n".join([f"The recipe has {len(coerced)} problem(s):", *coerced]))
    return recipe


# pydantic's lax mode turns true into 1, 1 or "yes" into True, "3" and 2.0 into 3 and 2. Its strict mode is
# no cure here: it refuses YAML lists for tuples and PyYAML's "1e-3" (a string under YAML 1.1) for floats, and
# augmentation op parameters are validated by a nested call that no strict flag reaches. So the validated
# recipe is compared with what was written, value by value, and any change of kind is an error.
def _coercions(given: Any, validated: Any, loc: list) -> Iterator[str]:
    """One message per value whose kind validation changed (a bool to a number, a number or string to a bool,
    a string or a float to an int)."""
    if isinstance(given, dict) and isinstance(validated, dict):
        for key in given.keys() & validated.keys():
            yield from _coercions(given[key], validated[key], [*loc, key])
    elif isinstance(given, list | tuple) and isinstance(validated, list | tuple):
        for index, (item, out) in enumerate(zip(given, validated, strict=False)):
            yield from _coercions(item, out, [*loc, index])
    elif _changed_kind(given, validated):
        where = _place(loc)
        yield (f"- {where}: must be {_allowed_at(loc, validated)}, not {_kind(given)} (it would silently become "
               f"{validated!r}). Received: {where}={given!r}")


def _changed_kind(given: Any, validated: Any) -> bool:
    if isinstance(given, bool) or isinstance(validated, bool):
        return type(given) is not type(validated)
    # A string for a float stays allowed: PyYAML reads `lr: 1e-3` as the string "1e-3" (YAML 1.1 wants 1.0e-3).
    return isinstance(validated, int) and not isinstance(given, int)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {int: "an integer", float: "a decimal number", str: "a string"}.get(type(value), type(value).__name__)


def _allowed_at(loc: list, value: Any) -> str:
    """The allowed forms of the value at ``loc`` in words, from the schema where it is a plain field."""
    path = [part for part in loc if not isinstance(part, int)]
    annotation = _annotation_at(path)
    if annotation is not None and loc and isinstance(loc[-1], int):
        annotation = _item_annotation(annotation, loc[-1])
        if annotation is not None:
            return _join(_forms(annotation))
    elif annotation is not None:
        return _join(_field_forms(path, annotation))
    return {bool: "true or false", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _item_annotation(annotation: Any, index: int) -> Any:
    """The annotation of item ``index`` of a list or tuple annotation (``None`` when there is none)."""
    for option in (get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)):
        args = get_args(option)
        if get_origin(option) is list and args:
            return args[0]
        if get_origin(option) is tuple and args:
            return args[0] if args[-1] is Ellipsis else args[min(index, len(args) - 1)]
    return None


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
        for depth, (step, following) in enumerate(zip(path, path[1:], strict=False)):
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    raise RecipeError(_out_of_range(data, key, path[:depth], node))
                node = node[step]
            else:
                if not isinstance(node, dict):
                    raise RecipeError(f"--set {key}: {step!r} is not inside a mapping.{_bracket_hint(key, node)} "
                                      f"Received: {key!r}")
                node = node.setdefault(step, [] if isinstance(following, int) else {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise RecipeError(_out_of_range(data, key, path[:-1], node))
        elif not isinstance(node, dict):
            raise RecipeError(f"--set {key}: the parent of {last!r} is not a mapping.{_bracket_hint(key, node)} "
                              f"Received: {key!r}")
        node[last] = value
    return data


def _bracket_hint(key: str, node: Any) -> str:
    """`` Write list positions in brackets: a.b[0].c`` for ``a.b.0.c`` into a list (empty otherwise)."""
    if not isinstance(node, list):
        return ""
    bracketed = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key)
    return f" Write list positions in brackets: {bracketed}."


# The phase keys a preset takes from its own keys: (head phase's key, later phases' key).
_PRESET_KEYS = {"lr": ("lr", "unfrozen_lr"), "epochs": ("epochs", "unfrozen_epochs"),
                "lr_schedule": ("lr_schedule",) * 2, "warmup_epochs": ("warmup_epochs",) * 2,
                "train_bn": ("train_bn",) * 2, "lr_decay": (None, "lr_decay")}


def _out_of_range(data: dict[str, Any], key: str, list_path: list, node: Any) -> str:
    """Why ``key``'s index finds nothing: the list's length, or, for phases of a preset schedule, the preset's
    own key that sets the same thing (a preset has no ``phases`` list to index)."""
    path = parse_key(key)
    index = path[len(list_path)]
    schedule = data.get("schedule")
    preset = schedule.get("preset") if isinstance(schedule, dict) else None
    if list_path == ["schedule", "phases"] and preset and not node:
        field = path[len(list_path) + 1] if len(path) > len(list_path) + 1 else None
        keys = _PRESET_KEYS.get(field, (None, None))
        target = keys[0] if index == 0 else keys[1]
        own = [name for name in ScheduleConfig.model_fields if name not in ("preset", "phases")]
        if preset == "freeze" and index > 0:
            todo = "'freeze' has one phase, the head's ([0])"
        elif target:
            todo = f"set the preset's own key instead: --set schedule.{target}=VALUE"
        elif field is None:
            todo = "set the preset's own keys instead"
        else:
            todo = (f"the preset has no key for the phases' {field!r}; to set it, write the phases out "
                    "(schedule.phases, without schedule.preset)")
        return (f"--set {key}: this recipe's schedule is the preset {preset!r}, which has no schedule.phases list "
                f"to index; {todo}. The preset's keys: {', '.join(f'schedule.{name}' for name in own)}. "
                f"Received: {key!r}")
    size = len(node) if isinstance(node, list) else 0
    has = f"has {size} item(s) (indices 0 to {size - 1})" if size else "is empty or not set"
    return f"--set {key}: index [{index}] is out of range: {_place(list_path)} {has}. Received: {key!r}"


def _split(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set takes section.key=value. Received: {item!r}")
    try:
        return key.strip(), yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {key}: the value is not valid YAML ({_yaml_reason(exc)}). {_spelling(key.strip())} "
                          f"Received: {text!r}") from exc


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """The parser's reason in one line (PyYAML's own text spans several, with a caret under the value)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        column = f" at column {exc.problem_mark.column + 1}" if exc.problem_mark else ""
        return ", ".join(filter(None, [exc.context, f"{exc.problem}{column}"]))
    return str(exc).splitlines()[0]


# Examples for keys whose default (null) shows no spelling of a value.
_EXAMPLES: dict[str, Any] = {"data.image_size": [32, 32], "data.classes": ["cat", "dog"],
                             "train.class_weight": {"cat": 1.0, "dog": 2.0}, "train.early_stopping": {"patience": 3},
                             "train.ema": {"momentum": 0.99}, "evaluate.top_k": [1, 5]}


def _spelling(key: str) -> str:
    """How a list, a mapping or a string with YAML's signs is written on the command line, with an example for
    ``key`` where the schema gives one (its default, or :data:`_EXAMPLES`)."""
    text = ("Write lists as [a, b] and mappings as {key: value}, quote strings that hold ':', '#' or brackets, "
            "and quote the whole --set argument for the shell")
    path = [part for part in parse_key(key) if not isinstance(part, int)]
    field = _field_at(path)
    default = None if field is None or field.is_required() else field.get_default(call_default_factory=True)
    example = _EXAMPLES.get(".".join(path), default)
    if example in (None, [], {}) or isinstance(example, BaseModel):
        return text + "."
    return f"{text}: --set '{key}={_flow(example, quote=json.dumps)}'."


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


def smoke_changes(full: Recipe, smoke: Recipe) -> list[str]:
    """``key: before -> after`` for each value ``--smoke`` changed (``smoke`` is ``smoke_recipe(full)``), so that a
    value the user set, such as ``--set data.image_size=[64,64]``, is not shrunk without a word."""
    before, after = dict(_flat_items(full.to_dict())), dict(_flat_items(smoke.to_dict()))
    return [f"{key} {json.dumps(before.get(key))} -> {json.dumps(value)}" for key, value in after.items()
            if before.get(key) != value]


def _flat_items(value: Any, prefix: str = ""):
    """``(dotted.key, value)`` pairs of a recipe dict, into mappings and lists of mappings (phases)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat_items(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _flat_items(item, f"{prefix}[{index}]")
    else:
        yield prefix, list(value) if isinstance(value, tuple) else value


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
        if loc[:2] == ["data", "classes"] and error["type"] == "string_type":
            line = _class_names_line(["data", "classes"], _lookup(data, ["data", "classes"]), "must be a list of strings")
            lines.extend([] if line in lines else [line])  # one line for all the numbers in the list
            continue
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
        elsewhere = _key_paths().get(key, [])
        close = difflib.get_close_matches(key, allowed, n=1)
        # A key that exists elsewhere was most likely written in the wrong section (batch_size at the top level).
        hint = f" Did you mean {_join(elsewhere)}?" if elsewhere else f" Did you mean {close[0]!r}?" if close else ""
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
    if isinstance(error["input"], bool) and error["type"] in _BOUND_ERRORS and _annotation_at(loc) is not None:
        # true/false read as 1/0 first and then failed a bound: "should be less than 1" would hide the real mistake.
        message = f"must be {_allowed_at(loc, 0.0)}, not true/false"
    elif error["type"] in _CONTAINER_ERRORS and _annotation_at(loc) is not None:
        # pydantic names the Python type ("a valid tuple"); a recipe writes lists, so say what the key takes
        message = f"must be {_allowed_at(loc, error['input'])}"
        length = error.get("ctx", {}).get("actual_length")
        message += "" if length is None else f"; it has {length} items"
    elif error["type"] in _TYPE_ERRORS and _annotation_at(loc) is not None:
        allowed = _allowed_at(loc, error["input"])
        message += "" if allowed == "a string" else f"; allowed: {allowed}"  # pydantic's "valid string" says it
    ending = "" if message.endswith((".", "?")) else "."
    return f"- {where or 'the recipe'}: {message}{ending} Received: {where or 'recipe'}={error['input']!r}"


_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"})


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
    if base == ["train", "class_weight"] and isinstance(received, dict) and not all(isinstance(k, str) for k in received):
        return _class_names_line(base, received, f"must be {allowed}")
    return f"- {where}: must be {allowed}. Received: {where}={received!r}"


_CONTAINER_ERRORS = frozenset({"list_type", "tuple_type", "dict_type", "too_long", "too_short"})
_TYPE_ERRORS = frozenset({"int_from_float", "int_parsing", "int_type", "float_parsing", "float_type",
                          "bool_parsing", "bool_type", "string_type"})


def _class_names_line(loc: list, received: Any, what: str) -> str:
    """The error for numbers where class names go (``--set data.classes=[5,6]``), with the quoted spelling:
    YAML reads 5 as a number, and class names are folder names or CSV labels, which are strings."""
    where = _place(loc)
    if isinstance(received, dict):
        quoted: Any = {str(key): value for key, value in received.items()}
    else:
        quoted = [str(item) for item in received] if isinstance(received, list) else received
    command_line = f"--set '{where}={json.dumps(quoted)}'"
    in_yaml = f"{loc[-1]}: {yaml.safe_dump(quoted, default_flow_style=True).strip()}"
    return (f"- {where}: {what}; class names are strings, so quote numbers: {command_line} on the command line, "
            f"{in_yaml} in a recipe. Received: {where}={received!r}")


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
        # :g so that 0 and 0.0 read alike: typing's cache can hand back an earlier, equal Annotated[float, Gt(0)]
        # for Annotated[float, Gt(0.0)], so which of the two a bound holds depends on what was built first
        bounds = [f"{symbol} {getattr(meta, name):g}" for meta in annotation.__metadata__
                  for name, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                  if getattr(meta, name, None) is not None]
        return [form if form == "null" else f"{form} {' and '.join(bounds)}".strip() for form in _forms(args[0])]
    if annotation is type(None):
        return ["null"]
    if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: [height, width], [min, max]
        if all(arg == args[0] for arg in args):
            return [f"a list of {len(args)} {_plural(args[0])}"]
        return [f"a list of {len(args)} items ({', '.join(_join(_forms(arg)) for arg in args)})"]
    if origin in (list, tuple):
        return [f"a list of {_plural(args[0]) if args else 'values'}"]
    if origin is dict:
        return [f"a mapping of {_plural(args[0])} to {_plural(args[1])}"]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f"a mapping with keys {sorted(annotation.model_fields)}"]
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Any: "any value"}
    return [words.get(annotation, getattr(annotation, "__name__", str(annotation)))]


_PLURALS = {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "true/false values",
            "a mapping": "mappings", "a list": "lists", "any value": "values"}


def _plural(annotation: Any) -> str:
    """The items of a list or mapping of ``annotation``, in words: ``integers > 0``, ``items from 'val', 'test'``."""
    forms = _forms(annotation)
    if all(form.startswith(("'", '"')) or form[:1].isdigit() for form in forms):  # literals
        return f"items from {', '.join(forms)}"
    plural = []
    for form in forms:
        singular = next((word for word in _PLURALS if form.startswith(word)), None)
        plural.append(form if singular is None else _PLURALS[singular] + form[len(singular):])
    return " or ".join(plural)


# What a list-valued key's items stand for, shown after its form ("a list of 2 integers > 0 ([height, width])").
_SHAPES = {"data.image_size": "[height, width]", "random_resized_crop.scale": "[min, max]",
           "random_resized_crop.ratio": "[min, max]", "random_erasing.scale": "[min, max]",
           "random_erasing.ratio": "[min, max]", "grid_mask.ratio_factor": "[min, max]"}


def _field_forms(path: list[str], annotation: Any) -> list[str]:
    """:func:`_forms` of the field at ``path``, with what its items stand for where :data:`_SHAPES` says."""
    shape = _SHAPES.get(".".join(path))
    return [f"{form} ({shape})" if shape and form.startswith("a list") else form for form in _forms(annotation)]


def _join(forms: list[str]) -> str:
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


def _allowed_keys(loc: list) -> list[str]:
    """The field names of the schema model at ``loc`` (walking nested models and lists of models)."""
    model, _, found = _schema_at(loc)
    return sorted(getattr(model, "model_fields", {})) if found else []


def _schema_at(loc: list) -> tuple[Any, Any, bool]:
    """``(model, annotation, found)`` at ``loc``: the schema model a value there is (or None), the field's type
    annotation with its bounds (None at the top), and whether ``loc`` is a path of the schema at all."""
    model: Any = Recipe
    annotation = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None, None, False
        # pydantic moves a plain field's bounds (PositiveInt, Field(ge=...)) from the annotation to metadata
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        model = _model_in(annotation)
    return model, annotation, True


def _field_at(path: list[str]) -> Any:
    """The pydantic ``FieldInfo`` at ``path`` (names only, no list indices), or ``None``."""
    model, field = Recipe, None
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return field


@functools.cache
def _key_paths() -> dict[str, list[str]]:
    """Every key name of the schema -> the full paths where it is a key (``batch_size`` -> ``data.batch_size``);
    a list of models is written with ``[i]`` (``schedule.phases[i].lr``)."""
    paths: dict[str, list[str]] = {}
    for path, _ in _schema_fields(Recipe):
        paths.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    return paths


def _schema_fields(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, FieldInfo)`` of every field of ``model`` and of the models nested in it, depth first."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, field
        nested = _model_in(field.annotation)
        if nested is not None and nested.model_fields:
            yield from _schema_fields(nested, f"{path}[i]." if _is_list(field.annotation) else f"{path}.")


def _is_list(annotation: Any) -> bool:
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return any(get_origin(option) is list for option in options)


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


def _flow(value: Any, *, quote: Any = repr) -> str:
    """``value`` in YAML's flow style, as written in a recipe or after ``--set`` (``[32, 32]``, ``{patience: 3}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(item, quote=quote) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item, quote=quote)}" for key, item in value.items()) + "}"
    return repr(value)
