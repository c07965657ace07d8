"""The recipe's ``augment`` section: pydantic schemas for every op, checked when the recipe loads.

An unknown op, an unknown parameter or a value out of range is an error naming it and listing what is
allowed, so nothing fails in the middle of an epoch. The albumentations back end's pipeline is
albumentations' own serialised dict (``A.to_dict`` / ``A.from_dict``); it is deserialised here once, at
load time, for the same reason.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


def _closest(name: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(name, allowed, n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


def _check_range(value: tuple[float, float], *, name: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = value
    if not low <= lo <= hi <= high:
        raise ValueError(
            f"`{name}` must be [min, max] with {low} <= min <= max <= {high}. Received: {name}={list(value)}"
        )
    return value


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomResizedCrop(_Op):
    """Crop a random area fraction (``scale``) with a random aspect ratio (``ratio``), resize back."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)

    @field_validator("scale")
    @classmethod
    def _scale(cls, value):
        return _check_range(value, name="scale", low=1e-4, high=1.0)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value):
        return _check_range(value, name="ratio", low=1e-2, high=100.0)


class Flip(_Op):
    """Flip each image with probability 0.5 along the chosen axes."""

    mode: Literal["horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"


class _GeometricOp(_Op):
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = "reflect"
    fill_value: float = Field(0.0, ge=0.0, le=255.0)


class Rotation(_GeometricOp):
    """Rotate by a random angle in [-factor, factor] of a full turn (Keras ``RandomRotation``)."""

    factor: float = Field(0.1, gt=0.0, le=0.5)


class Zoom(_GeometricOp):
    """Zoom in or out by up to ``factor`` of the image size (Keras ``RandomZoom``)."""

    factor: float = Field(0.1, gt=0.0, lt=1.0)


class Translation(_GeometricOp):
    """Shift by up to ``factor`` of the image size along each axis (Keras ``RandomTranslation``)."""

    factor: float = Field(0.1, gt=0.0, le=1.0)


class ColorJitter(_Op):
    """Random brightness, contrast, saturation (each a factor in 1 +/- value) and hue (a fraction of a turn);
    0 switches one off. Defaults are the standard policy's (timm's ImageNet training default: 0.4 each, no hue)."""

    brightness: float = Field(0.4, ge=0.0, le=1.0)
    contrast: float = Field(0.4, ge=0.0, le=1.0)
    saturation: float = Field(0.4, ge=0.0, le=1.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)


class RandAugment(_Op):
    """RandAugment (Cubuk et al. 2020): ``num_ops`` random ops per image at a shared ``magnitude``.

    keras-cv's layer draws from its own stateful generator: reproducible only in order, not under parallel
    maps (see :data:`ORDER_DEPENDENT_OPS`)."""

    num_ops: int = Field(2, ge=1, le=10)
    magnitude: float = Field(0.5, ge=0.0, le=1.0)
    magnitude_stddev: float = Field(0.15, ge=0.0, le=1.0)
    rate: float = Field(10 / 11, ge=0.0, le=1.0)
    geometric: bool = True


class AugMix(_Op):
    """AugMix (Hendrycks et al. 2020): a Dirichlet mix of ``num_chains`` augmentation chains.

    Keras' layer draws from its own stateful generator: reproducible only in order, not under parallel
    maps (see :data:`ORDER_DEPENDENT_OPS`)."""

    severity: float = Field(0.3, gt=0.0, le=1.0)
    num_chains: int = Field(3, ge=1, le=10)
    chain_depth: int = Field(3, ge=1, le=10)
    alpha: float = Field(1.0, gt=0.0)


class RandomErasing(_Op):
    """Random erasing (Zhong et al. 2020): with ``probability``, replace a random box of area fraction
    ``scale`` and aspect ``ratio`` by zeros, the image mean, or uniform noise."""

    probability: float = Field(0.5, ge=0.0, le=1.0)
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    fill: Literal["zero", "mean", "noise"] = "zero"

    @field_validator("scale")
    @classmethod
    def _scale(cls, value):
        return _check_range(value, name="scale", low=0.0, high=1.0)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value):
        return _check_range(value, name="ratio", low=1e-2, high=100.0)


class Cutout(_Op):
    """Cutout (DeVries & Taylor 2017): with ``probability``, zero a square of side ``size`` x the shorter
    image side, centred anywhere in the image (so it may be clipped at the border)."""

    probability: float = Field(1.0, ge=0.0, le=1.0)
    size: float = Field(0.25, gt=0.0, le=1.0)
    fill: Literal["zero", "mean", "noise"] = "zero"


class GridMask(_Op):
    """GridMask (Chen et al. 2020) via keras-cv: a rotated grid of masked squares.

    keras-cv's layer draws from its own stateful generator: reproducible only in order, not under parallel
    maps (see :data:`ORDER_DEPENDENT_OPS`)."""

    ratio_factor: tuple[float, float] = (0.0, 0.5)
    rotation_factor: float = Field(0.15, ge=0.0, le=0.5)
    fill_value: float = Field(0.0, ge=0.0, le=255.0)

    @field_validator("ratio_factor")
    @classmethod
    def _ratio_factor(cls, value):
        return _check_range(value, name="ratio_factor", low=0.0, high=1.0)


OPS: dict[str, type[_Op]] = {
    "random_resized_crop": RandomResizedCrop,
    "flip": Flip,
    "rotation": Rotation,
    "zoom": Zoom,
    "translation": Translation,
    "color_jitter": ColorJitter,
    "rand_augment": RandAugment,
    "aug_mix": AugMix,
    "random_erasing": RandomErasing,
    "cutout": Cutout,
    "grid_mask": GridMask,
}


# Ops whose library layer draws from its own stateful generator, which no per-batch seed reaches: the same
# seed gives the same batches only when batches are augmented one at a time, in order, by a freshly built
# augmentation. Every other op takes all its randomness from the per-batch stateless seed.
ORDER_DEPENDENT_OPS = frozenset({"rand_augment", "aug_mix", "grid_mask"})


def parse_op(item: Any) -> tuple[str, _Op]:
    """``{op_name: {params}}`` (or a bare ``op_name`` for defaults) -> ``(op_name, validated params)``.

    A parameter that does not validate raises pydantic's ``ValidationError`` located under the op's name
    (``flip.mode``), so a recipe's message reads ``augment.ops[1].flip.mode``.
    """
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise ValueError(f"each augment op must be a one-key mapping {{op_name: {{params}}}}. Received: op={item!r}")
    (name, params), = item.items()
    if name not in OPS:
        raise ValueError(
            f"unknown augmentation op '{name}'.{_closest(name, list(OPS))} "
            f"Allowed: {', '.join(OPS)}. Received: op={name!r}"
        )
    params = params or {}
    if not isinstance(params, dict):
        raise ValueError(f"parameters of op '{name}' must be a mapping. Received: {name}={params!r}")
    model = OPS[name]
    allowed = list(model.model_fields)
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"unknown parameter '{key}' for op '{name}'.{_closest(key, allowed)} "
                f"Allowed: {', '.join(allowed)}. Received: {key}={params[key]!r}"
            )
    try:
        return name, model(**params)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            exc.title, [{**error, "loc": (name, *error["loc"])} for error in exc.errors()]
        ) from None


def _op_item(item: Any) -> Any:
    # One item of AugmentConfig.ops: already-parsed ``(name, params)`` pairs pass through (round trips).
    return item if isinstance(item, tuple) else parse_op(item)


class MixUpConfig(BaseModel):
    """MixUp (Zhang et al. 2018): mixing weight ~ Beta(alpha, alpha)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(0.2, gt=0.0)


class CutMixConfig(BaseModel):
    """CutMix (Yun et al. 2019): pasted-box area fraction ~ 1 - Beta(alpha, alpha)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(1.0, gt=0.0)


def load_albumentations(spec: dict[str, Any], *, check: bool = True):
    """Deserialise albumentations' own dict format (``A.from_dict``).

    With ``check`` every transform is first checked on its own (:mod:`ftkit.augment.albumentations_check`):
    anything wrong raises one ``ValidationError`` with a line per problem, located in the dict
    (``transform.transforms[2].scale``), instead of albumentations' first error as raw pydantic text. Without
    it (a spec already checked, rebuilt per worker thread) the dict goes to albumentations as is.
    """
    import albumentations as A

    from ftkit.augment.albumentations_check import pipeline_problem, problems, without_inherited

    if not check:
        return A.from_dict(without_inherited(spec))
    found = problems(spec)
    if found:
        raise ValidationError.from_exception_data("albumentations", found)
    try:
        return A.from_dict(without_inherited(spec))
    except (ValueError, TypeError) as exc:  # each transform builds alone but the pipeline does not
        raise ValidationError.from_exception_data("albumentations", [pipeline_problem(spec, exc)]) from None


class AugmentConfig(BaseModel):
    """The recipe's ``augment`` section.

    ``ops`` (keras back end) is a list of ``{op_name: {params}}`` applied in order; ``albumentations``
    (albumentations back end) is albumentations' serialised dict. ``mix_prob`` is the probability that a
    batch is mixed; with both MixUp and CutMix set, ``switch_prob`` is the probability of CutMix.
    ``parallel_reproducible: true`` rejects the ops of :data:`ORDER_DEPENDENT_OPS` (RandAugment, AugMix,
    GridMask), whose batches reproduce only when augmented in order, not under parallel maps.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["keras", "albumentations", "none"] = "none"
    seed: int = Field(0, ge=0)
    # Items are parsed one by one, so every bad op is reported at its index (augment.ops[1].flip.mode).
    ops: list[Annotated[tuple[str, _Op], BeforeValidator(_op_item)]] = Field(default_factory=list)
    albumentations: dict[str, Any] | None = None
    mixup: MixUpConfig | None = None
    cutmix: CutMixConfig | None = None
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    switch_prob: float = Field(0.5, ge=0.0, le=1.0)
    parallel_reproducible: bool = False
    # albumentations back end: a leading RandomResizedCrop (p=1, linear) runs in the graph, on JPEGs as
    # decode-and-crop (ftkit.augment.albumentations_backend); false keeps it in albumentations, per image
    crop_in_graph: bool = True

    @field_validator("ops", mode="before")
    @classmethod
    def _parse_ops(cls, value):
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"`ops` must be a list of {{op_name: {{params}}}}. Received: ops={value!r}")
        return value

    @field_validator("albumentations")
    @classmethod
    def _check_albumentations(cls, value):
        if value is not None:
            load_albumentations(value)
        return value

    @model_validator(mode="after")
    def _check_backend(self):
        if self.backend != "keras" and self.ops:
            raise ValueError(
                f"`ops` are for the keras back end only. Received: backend={self.backend!r}, "
                f"ops={[name for name, _ in self.ops]}"
            )
        stateful = [name for name, _ in self.ops if name in ORDER_DEPENDENT_OPS]
        if self.parallel_reproducible and stateful:
            raise ValueError(
                f"ops {stateful} draw from their layer's own generator and reproduce only in order, not under "
                f"parallel maps; with parallel_reproducible: true the allowed ops are "
                f"{', '.join(n for n in OPS if n not in ORDER_DEPENDENT_OPS)}. "
                f"Received: ops={[n for n, _ in self.ops]}"
            )
        if self.backend == "albumentations" and self.albumentations is None:
            raise ValueError("backend 'albumentations' needs an `albumentations` pipeline. Received: albumentations=None")
        if self.backend != "albumentations" and self.albumentations is not None:
            raise ValueError(
                f"an `albumentations` pipeline needs backend: albumentations. Received: backend={self.backend!r}"
            )
        return self

    @property
    def uses_mixing(self) -> bool:
        return self.mixup is not None or self.cutmix is not None

    def to_recipe(self) -> dict[str, Any]:
        """The section as plain data, in the recipe's ``{op_name: {params}}`` form (round-trips)."""
        data = self.model_dump(mode="json", exclude={"ops"})
        data["ops"] = [{name: params.model_dump(mode="json")} for name, params in self.ops]
        return data
