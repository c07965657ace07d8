"""Checks of a recipe's albumentations pipeline (albumentations' serialised dict), transform by transform.

albumentations validates a transform's arguments with pydantic, but ``A.from_dict`` stops at the first bad
transform, re-raises the validation as a ``ValueError`` holding pydantic's multi-line text, and warns (then
drops) an unknown argument. Checking each transform on its own reports every problem at once, each located
in the dict (``transform.transforms[2].scale``) with what was received, what the transform accepts and
albumentations' own reason in one line. ``problems`` returns pydantic line errors, so the recipe loader
places them under ``augment.albumentations`` like any other recipe error.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
import warnings
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]


def problems(spec: Any) -> list[dict[str, Any]]:
    """Line errors (``{"type", "loc", "input"}``) for everything wrong in ``spec``; empty when it builds."""
    if not isinstance(spec, dict) or "transform" not in spec:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        return [_error((), spec, "`albumentations` must be albumentations' serialised dict (A.to_dict(...)), with "
                                 f"a top-level 'transform' key. Received: keys={keys}")]
    return _node_problems(spec["transform"], ("transform",))


def pipeline_problem(spec: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The line error for a pipeline whose transforms each build but which albumentations still refuses."""
    transform = spec["transform"]
    name = str(transform.get("__class_fullname__", "?"))
    return _error(("transform",), transform, f'albumentations cannot build this pipeline: "{_condensed(str(exc))}". '
                                             f"Received: transform={_call(name, transform)}")


def _node_problems(node: Any, loc: Loc) -> list[dict[str, Any]]:
    from albumentations.core.serialization import SERIALIZABLE_REGISTRY, shorten_class_name

    if not isinstance(node, dict) or "__class_fullname__" not in node:
        return [_error(loc, node, "each transform must be a mapping with a '__class_fullname__' key (the transform "
                                  f"class). Received: {_last(loc)}={node!r}")]
    name = shorten_class_name(str(node["__class_fullname__"]))
    cls = SERIALIZABLE_REGISTRY.get(name)
    if cls is None:
        names = sorted(SERIALIZABLE_REGISTRY)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return [_error((*loc, "__class_fullname__"), node["__class_fullname__"],
                       f"unknown albumentations transform {name!r}.{hint} Allowed: any albumentations transform "
                       f"class, e.g. {', '.join(names[:12])}, ... Received: __class_fullname__={name!r}")]
    args = {key: value for key, value in node.items() if key != "__class_fullname__"}
    found = _unknown_arguments(cls, name, args, loc)
    if "transforms" in args:
        children = args["transforms"]
        if not isinstance(children, list):
            return [*found, _error((*loc, "transforms"), children,
                                   f"{name}.transforms must be a list of transforms. Received: transforms={children!r}")]
        for index, child in enumerate(children):
            found += _node_problems(child, (*loc, "transforms", index))
        args = {**args, "transforms": []}  # the children were checked one by one above
    if found:
        return found
    return _construction_problems(cls, name, args, loc)


def without_inherited(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` without the parent-class arguments that ``A.to_dict`` writes and albumentations then ignores
    (with a warning per transform) when it loads them: see :func:`_unknown_arguments`."""
    from albumentations.core.serialization import SERIALIZABLE_REGISTRY, shorten_class_name

    def clean(node):
        cls = SERIALIZABLE_REGISTRY.get(shorten_class_name(str(node.get("__class_fullname__", ""))))
        own, _ = _arguments(cls) if cls is not None else (None, set())
        kept = {key: value for key, value in node.items()
                if own is None or key in own or key == "__class_fullname__"}
        if isinstance(kept.get("transforms"), list):
            kept["transforms"] = [clean(child) for child in kept["transforms"]]
        return kept

    return {**spec, "transform": clean(spec["transform"])}


def _arguments(cls) -> tuple[list[str] | None, set[str]]:
    """``(own, written)``: the arguments the class's ``__init__`` takes (None: any, it has ``**kwargs``) and those
    of every ``__init__`` in its MRO, which ``A.to_dict`` writes (``get_transform_init_args_names``)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None, set()
    written = {key for base in cls.__mro__ if "__init__" in vars(base) and base is not object
               for key in _parameter_names(base)}
    return [key for key in parameters if key != "self"], written


def _unknown_arguments(cls, name: str, args: dict[str, Any], loc: Loc) -> list[dict[str, Any]]:
    """albumentations warns about an argument its transform does not take and then drops it: an error here.

    Except for a parent class's argument: ``A.to_dict`` writes the arguments of every ``__init__`` in the
    class's MRO, e.g. PadIfNeeded's ``padding`` from Pad, so its own output must load; albumentations has
    always ignored those on load (:func:`without_inherited` drops them first, without its warning)."""
    allowed, written = _arguments(cls)
    if allowed is None:
        return []
    found = []
    for key in args:
        if key not in allowed and key not in written:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            found.append(_error((*loc, key), args[key], f"unknown parameter {key!r} for {name}.{hint} "
                                                        f"Allowed: {', '.join(allowed)}. Received: {key}={args[key]!r}"))
    return found


def _parameter_names(cls) -> list[str]:
    try:
        return list(inspect.signature(vars(cls)["__init__"]).parameters)
    except (TypeError, ValueError):  # a builtin's __init__ has no inspectable signature
        return []


def _construction_problems(cls, name: str, args: dict[str, Any], loc: Loc) -> list[dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the whole pipeline is built again afterwards, with its warnings shown
        try:
            cls(**args)
        except (ValueError, TypeError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ValidationError) else exc
            if isinstance(cause, ValidationError):
                return _schema_problems(cls, name, args, loc, cause)
            return [_error(loc, args, f'{name} does not accept these arguments. albumentations: '
                                      f'"{_condensed(str(exc))}". Received: {_call(name, args)}')]
    return []


def _schema_problems(cls, name: str, args: dict[str, Any], loc: Loc, exc: ValidationError) -> list[dict[str, Any]]:
    """One error per parameter, from albumentations' ``InitSchema`` errors: union members' errors (pydantic
    reports one per member: ``brightness.float``, ``brightness.tuple[float, float]``) merged into one line."""
    fields = getattr(getattr(cls, "InitSchema", None), "model_fields", {})
    grouped: dict[str | None, list[str]] = {}
    for error in exc.errors():
        param = error["loc"][0] if error["loc"] and error["loc"][0] in fields else None
        items = "".join(f"[{part}]" for part in error["loc"][1:] if isinstance(part, int))
        detail = '"' + f"{items} {_condensed(error['msg'])}".strip() + '"'
        if detail not in grouped.setdefault(param, []):
            grouped[param].append(detail)
    found = []
    for param, details in grouped.items():
        says = f"albumentations: {'; '.join(details)}"
        if param is None:
            found.append(_error(loc, args, f"{name} does not accept these arguments. {says}. "
                                           f"Received: {_call(name, args)}"))
        elif param not in args:
            found.append(_error((*loc, param), None, f"{name} needs {param!r}. Allowed: {_allowed(fields[param])}. "
                                                     f"{says}. Received: {_call(name, args)}"))
        else:
            found.append(_error((*loc, param), args[param], f"{name} does not accept this {param}. Allowed: "
                                                            f"{_allowed(fields[param])}. {says}. "
                                                            f"Received: {param}={args[param]!r}"))
    return found


def _allowed(field) -> str:
    """A schema field's type in words: ``tuple[float, float] or float``, ``float >= 0 and <= 1``."""
    bounds = [f"{symbol} {getattr(meta, attr)}" for meta in field.metadata
              for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
              if getattr(meta, attr, None) is not None]
    return " ".join([_type_text(field.annotation), " and ".join(bounds)]).strip()


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _condensed(message: str) -> str:
    """pydantic's message without its "Value error, " prefix, its trailing full stop and its line breaks."""
    message = " ".join(message.removeprefix("Value error, ").split())
    return message.rstrip(".")


def _call(name: str, args: dict[str, Any]) -> str:
    shown = {key: value for key, value in args.items() if key not in ("transforms", "__class_fullname__")}
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in shown.items())})"


def _last(loc: Loc) -> str:
    """The last key of ``loc`` as the recipe writes it (``transforms[1]``): the full place prefixes the message."""
    return f"{loc[-2]}[{loc[-1]}]" if isinstance(loc[-1], int) else str(loc[-1])


def _error(loc: Loc, value: Any, message: str) -> dict[str, Any]:
    # PydanticCustomError fills "{field}" placeholders of its template from its context: the message goes in as
    # context, so braces in a received value (a dict's repr) are never read as placeholders.
    return {"type": PydanticCustomError("albumentations", "{message}", {"message": message}), "loc": loc,
            "input": value}
