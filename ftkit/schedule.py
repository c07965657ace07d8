"""Training schedules: phases written as data, named presets, and learning-rate curves as pure functions.

A schedule is a list of :class:`Phase` s. Each phase says how many epochs it runs, which layer groups train
(``head`` only, the last N backbone groups plus the head, or ``all``), its learning rate and curve, its
BatchNorm policy and its per-group learning-rate multipliers (discriminative learning rates, as in fastai's
``fine_tune``). Presets (``freeze``, ``freeze_unfreeze``, ``gradual``) expand into phases once the
backbone's layer groups are known. Nothing here imports TensorFlow, so recipes validate in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

HEAD = "head"
AUX = "aux"
PRESETS = ("freeze", "freeze_unfreeze", "gradual")
LR_SCHEDULES = ("constant", "step", "cosine")
TRAIN_FORMS = (
    "'head' (the new head only), 'all' (every layer group), a number N >= 1 (the last N backbone layer "
    "groups plus the head) or a list of backbone layer group names (those groups plus the head)"
)


class PhaseConfig(BaseModel):
    """One phase of a schedule, as written in a recipe (``schedule.phases[i]``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    epochs: PositiveInt = 1
    # "head": only the new head; "all": everything; N: the last N backbone groups plus the head;
    # [group, ...]: those backbone groups plus the head.
    train: Literal["head", "all"] | PositiveInt | list[str] = "head"
    lr: PositiveFloat = 1e-3
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0.0)
    step_epochs: PositiveInt = Field(1, description="'step': multiply the rate by step_gamma every step_epochs")
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    min_lr_factor: float = Field(0.0, ge=0.0, le=1.0, description="'cosine' ends at lr * min_lr_factor")
    train_bn: bool = False  # BatchNorm layers of frozen groups keep training (and run in training mode)
    lr_decay: float | None = Field(None, gt=0.0, le=1.0, description="multiplier per group, compounding towards the stem")
    lr_multipliers: dict[str, PositiveFloat] = Field(default_factory=dict)

    @field_validator("train", mode="wrap")
    @classmethod
    def _train_forms(cls, value, handler):
        # One message naming every allowed form instead of one error per member of the union.
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"`train` must be {TRAIN_FORMS}. Received: train={value!r}") from None


class ScheduleConfig(BaseModel):
    """The recipe's ``schedule`` section: a preset with its few numbers, or explicit phases."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["freeze", "freeze_unfreeze", "gradual"] | None = None
    epochs: PositiveInt = 1  # per preset phase
    unfrozen_epochs: PositiveInt | None = None  # epochs of the unfrozen phases (default: epochs)
    lr: PositiveFloat = 1e-3  # the head phase's rate
    unfrozen_lr: PositiveFloat | None = None  # default: lr / 10, the usual fine-tuning drop
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0.0)
    lr_decay: float | None = Field(None, gt=0.0, le=1.0)
    train_bn: bool = False
    phases: list[PhaseConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self):
        if self.preset is None and not self.phases:
            raise ValueError(
                f"schedule needs either a preset (one of {list(PRESETS)}) or a list of phases. "
                "Received: preset=None, phases=[]"
            )
        if self.preset is not None and self.phases:
            raise ValueError(
                "schedule takes a preset or explicit phases, not both. "
                f"Received: preset={self.preset!r} and {len(self.phases)} phases"
            )
        return self


class Phase(BaseModel):
    """A resolved phase: the groups that train and the learning-rate multiplier of each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    name: str
    epochs: int
    trainable_groups: tuple[str, ...]
    lr: float
    lr_schedule: str
    warmup_epochs: float
    step_epochs: int
    step_gamma: float
    min_lr_factor: float
    train_bn: bool
    multipliers: dict[str, float]

    @property
    def head_only(self) -> bool:
        return self.trainable_groups == (HEAD,)


def expand_preset(schedule: ScheduleConfig, group_names: Sequence[str]) -> list[PhaseConfig]:
    """The phases a preset stands for, given the backbone's groups (stem first)."""
    if schedule.preset is None:
        return list(schedule.phases)
    common = dict(lr_schedule=schedule.lr_schedule, warmup_epochs=schedule.warmup_epochs,
                  train_bn=schedule.train_bn)
    later_epochs = schedule.unfrozen_epochs or schedule.epochs
    later_lr = schedule.unfrozen_lr or schedule.lr / 10
    head = PhaseConfig(name="head", epochs=schedule.epochs, train="head", lr=schedule.lr, **common)
    if schedule.preset == "freeze":
        return [head]
    if schedule.preset == "freeze_unfreeze":
        return [head, PhaseConfig(name="all", epochs=later_epochs, train="all", lr=later_lr,
                                  lr_decay=schedule.lr_decay, **common)]
    phases = [head]
    for n in range(1, len(group_names) + 1):
        phases.append(PhaseConfig(name=f"top{n}", epochs=later_epochs, train=n, lr=later_lr,
                                  lr_decay=schedule.lr_decay, **common))
    return phases


def resolve_phases(schedule: ScheduleConfig, group_names: Sequence[str]) -> list[Phase]:
    """Check every phase against the backbone's groups and resolve what trains at which rate.

    Raises ``ValueError`` naming the phase (``schedule.phases[i]``) for a group that does not exist, a
    count larger than the number of groups, or a multiplier for an unknown group.
    """
    groups = list(group_names)
    resolved = []
    for index, phase in enumerate(expand_preset(schedule, groups)):
        where = f"schedule.phases[{index}]" if schedule.preset is None else f"schedule (preset {schedule.preset!r}) phase {index}"
        trainable = _trainable_groups(phase.train, groups, where=where)
        unknown = sorted(set(phase.lr_multipliers) - set(groups) - {HEAD})
        if unknown:
            raise ValueError(
                f"{where}.lr_multipliers names groups this backbone does not have: {unknown}; its groups are "
                f"{groups + [HEAD]}. Received: lr_multipliers={phase.lr_multipliers}"
            )
        resolved.append(Phase(
            index=index, name=phase.name or f"phase{index}", epochs=phase.epochs, trainable_groups=trainable,
            lr=phase.lr, lr_schedule=phase.lr_schedule, warmup_epochs=phase.warmup_epochs,
            step_epochs=phase.step_epochs, step_gamma=phase.step_gamma, min_lr_factor=phase.min_lr_factor,
            train_bn=phase.train_bn,
            multipliers=group_multipliers(trainable, groups, lr_decay=phase.lr_decay, explicit=phase.lr_multipliers),
        ))
    return resolved


def _trainable_groups(train, groups: list[str], *, where: str) -> tuple[str, ...]:
    if train == "head":
        return (HEAD,)
    if train == "all":
        return (*groups, HEAD)
    if isinstance(train, int):
        if train > len(groups):
            raise ValueError(
                f"{where}.train asks for the last {train} layer groups but the backbone has {len(groups)}: "
                f"{groups}. Received: train={train}"
            )
        return (*groups[len(groups) - train:], HEAD)
    unknown = [g for g in train if g not in groups and g != HEAD]
    if unknown:
        raise ValueError(
            f"{where}.train names layer groups that do not exist: {unknown}; this backbone's groups are "
            f"{groups} (plus {HEAD!r}). Received: train={train}"
        )
    return (*[g for g in groups if g in train], HEAD)


def group_multipliers(trainable: Sequence[str], groups: Sequence[str], *, lr_decay: float | None = None,
                      explicit: dict[str, float] | None = None) -> dict[str, float]:
    """Learning-rate multiplier per trainable group: 1 at the head, ``lr_decay ** k`` k groups below it.

    Explicit multipliers win over the decay. Frozen groups are left out.
    """
    order = [*groups, HEAD]
    out = {}
    for group in trainable:
        depth = len(order) - 1 - order.index(group)
        out[group] = float(lr_decay ** depth) if lr_decay else 1.0
    for group, value in (explicit or {}).items():
        if group in out:
            out[group] = float(value)
    return out


def lr_at(step: float, *, phase: Phase, steps_per_epoch: int) -> float:
    """The learning rate after ``step`` optimizer steps of ``phase`` (the curve as a pure function)."""
    total = max(1, phase.epochs * steps_per_epoch)
    warmup = phase.warmup_epochs * steps_per_epoch
    if warmup > 0 and step < warmup:
        return phase.lr * (step + 1) / warmup
    if phase.lr_schedule == "constant":
        return phase.lr
    if phase.lr_schedule == "step":
        return phase.lr * phase.step_gamma ** math.floor(step / (phase.step_epochs * steps_per_epoch))
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    floor = phase.lr * phase.min_lr_factor
    return floor + (phase.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def stalled_epochs(values: Sequence[float | None], *, higher_is_better: bool,
                   min_delta: float = 0.0) -> tuple[int, int | None]:
    """``(epochs since the last improvement, index of the best)`` over one phase's monitor values, in order.

    The rule of Keras's EarlyStopping and fastai's EarlyStoppingCallback: an improvement beats the best so far
    by more than ``min_delta`` in the monitor's direction; the first value always improves (fastai restarts the
    best at every ``fit``, here at every phase). A missing or NaN value never improves. A pure function of the
    phase's rows of ``history.csv``, so a resumed run counts exactly as an uninterrupted one.
    """
    best, best_index, stalled = None, None, 0
    for index, value in enumerate(values):
        if value is not None and not math.isnan(value) and (
                best is None or (value - min_delta > best if higher_is_better else value + min_delta < best)):
            best, best_index, stalled = value, index, 0
        else:
            stalled += 1
    return stalled, best_index
