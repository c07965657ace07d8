"""The fine-tuning engine: plan a run (every check before any training), then train it phase by phase.

At each phase boundary the engine sets ``layer.trainable`` for every layer group, then compiles a fresh
optimizer: a Keras 3 ``fit`` reads the trainable variables when its train function is built, so a
``trainable`` change without a recompile is silently ignored. Frozen BatchNorm layers get
``trainable=False``, which in Keras 3 also runs them in inference mode (their moving statistics stay put).
Discriminative learning rates scale each variable's learning rate inside the optimizer's update step
(scaling gradients instead would do nothing under Adam, which is invariant to gradient scale).

Each epoch is one ``fit`` call on a dataset whose order is a pure function of ``(seed, epoch)``; after
it, the model and its optimizer state go to ``checkpoints/last.keras`` and the position in the schedule to
``state.json``, so ``--resume`` continues mid-phase with the same batches, optimizer state and
learning-rate position as an uninterrupted run. With ``train.ema`` the optimizer keeps a moving average of the
weights (Keras's ``use_ema``), swapped into the model for validation and from each epoch's end to the next's
start (:func:`epoch_ema_swap`), so checkpoints, the best epoch and ``model.keras`` hold the average.

Under a distributed strategy (``train.strategy``, :mod:`ftkit.distribute`) the same schedule runs with the
custom step of :mod:`ftkit.training.replicas` instead of ``fit`` (same global-batch semantics); only the
chief writes the run folder, and the final evaluation runs on the chief alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ftkit import distribute
from ftkit.recipe import Recipe, dump_recipe, load_recipe, smoke_changes
from ftkit.schedule import AUX, HEAD, Phase, lr_at, resolve_phases, stalled_epochs
from ftkit.training import replicas, runs
from ftkit.training.features import cache_reason, compute_features
from ftkit.training.inputs import TrainingData, load_data, split_ids

DEFAULT_RUNS_DIR = "runs"


@dataclasses.dataclass
class Plan:
    """Everything checked before training: backbone, phases, input shape, data."""

    recipe: Recipe
    info: Any
    groups: list[str]
    phases: list[Phase]
    image_shape: tuple[int, int, int]
    data: TrainingData


@dataclasses.dataclass
class RunResult:
    """What :func:`train` returns: the run folder and the numbers of its summary.

    ``history``: one dict per epoch, as ``history.csv`` holds it, typed (``epoch`` counts from 0, as in Keras
    and the CSV; the console counts from 1). ``best_epoch`` is such an ``epoch``. ``reports``: split -> the
    evaluation report (``report/<split>/report.json``)."""

    path: Path
    history: list[dict[str, Any]]
    best: float | None
    best_epoch: int | None
    reports: dict[str, dict]
    model: Any = None  # the final inference model: the same on every worker (only the chief saves it)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        scores = {split: report.get("accuracy") for split, report in self.reports.items()}
        return (f"RunResult(path={str(self.path)!r}, epochs={len(self.history)}, best={self.best}, "
                f"best_epoch={self.best_epoch}, accuracy={scores})")


def get_strategy(name: str | None = None, **options):
    """The ``tf.distribute`` strategy called ``name`` (:func:`ftkit.distribute.make_strategy`); default: one device."""
    return distribute.make_strategy(name or "default", **options)


# -- planning -------------------------------------------------------------------------------------------


def plan_run(recipe: Recipe) -> Plan:
    """Check the recipe against the backbone and the data; raise before anything is built or trained."""
    from ftkit.backbones import backbone_info

    info = backbone_info(recipe.backbone.name)
    groups = [g for g in info.group_names if g != HEAD]
    phases = resolve_phases(recipe.schedule, groups)
    height, width = recipe.data.image_size or info.default_input_shape[:2]
    channels = recipe.data.channels or info.channels
    if channels != info.channels:
        raise ValueError(f"{info.name} takes {info.channels}-channel images. Received: data.channels={channels}")
    min_h, min_w, _ = info.min_input_shape
    if height < min_h or width < min_w:
        raise ValueError(f"{info.name} needs images of at least {min_h}x{min_w}. "
                         f"Received: data.image_size={[height, width]}")
    init_from = recipe.backbone.init_from
    if init_from and not (Path(init_from) / runs.INFERENCE_MODEL).is_file():
        raise FileNotFoundError(f"backbone.init_from must be a finished run folder (with {runs.INFERENCE_MODEL}). "
                                f"Received: init_from={init_from!r}")
    data = load_data(recipe.data, image_shape=(height, width, channels), class_weight=recipe.train.class_weight)
    if recipe.augment.backend == "albumentations":
        from ftkit.augment import build_augmentation

        # Built once here, which tries it on a blank image: a setting that fails only on an image (a crop larger
        # than data.image_size) fails before the run folder exists, not when the first epoch builds it.
        build_augmentation(recipe.augment, image_size=(height, width), num_classes=data.num_classes,
                           channels=channels)
    return Plan(recipe=recipe, info=info, groups=groups, phases=phases, image_shape=(height, width, channels),
                data=data)


# -- freezing -------------------------------------------------------------------------------------------


def apply_phase(assembled, phase: Phase) -> dict[str, Any]:
    """Set ``trainable`` on every layer for ``phase``; return the audit (counts per mode)."""
    import keras

    trains_backbone = any(g != HEAD for g in phase.trainable_groups)
    assigned = set()
    for group, layers in assembled.groups.items():
        trainable = group in phase.trainable_groups or (group == AUX and trains_backbone)
        for layer in layers:
            assigned.add(id(layer))
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = trainable or (is_bn and phase.train_bn)
    for layer in _weighted_layers(assembled.backbone):
        if id(layer) not in assigned:  # matched by no group regex: trains only when everything trains
            layer.trainable = set(phase.trainable_groups) >= {*assembled.groups} - {AUX, "<unassigned>"}
    bns = [layer for layer in _weighted_layers(assembled.model) if isinstance(layer, keras.layers.BatchNormalization)]
    return {
        "trainable": _count(assembled.model.trainable_weights),
        "frozen": _count(assembled.model.non_trainable_weights),
        "bn_training": sum(layer.trainable for layer in bns),
        "bn_inference": sum(not layer.trainable for layer in bns),
    }


def _weighted_layers(model) -> list:
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.extend(_weighted_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def _count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def audit_line(phase: Phase, total: int, audit: dict[str, Any], *, cached: str | None) -> str:
    rates = ", ".join(f"{g} {phase.lr * m:.3g}" for g, m in phase.multipliers.items())
    return (f"phase {phase.index + 1}/{total} {phase.name!r}: {phase.epochs} epoch(s) | {frozen_text(audit)} | "
            f"lr ({phase.lr_schedule}): {rates} | {cache_text(cached)}")


def frozen_text(audit: dict[str, Any]) -> str:
    """The audit's counts (:func:`apply_phase`): what trains, what is frozen, the BatchNorm modes."""
    return (f"trainable {audit['trainable']:,} params, frozen {audit['frozen']:,} | BatchNorm: {audit['bn_training']} "
            f"training, {audit['bn_inference']} inference mode")


def cache_text(cached: str | None) -> str:
    """``cached``: why the phase does not train on cached features, or None when it does."""
    return "feature cache: on" if cached is None else f"feature cache: off ({cached})"


# -- optimizer and learning rate --------------------------------------------------------------------------


def _lr_schedule_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="ftkit")
    class PhaseLearningRate(keras.optimizers.schedules.LearningRateSchedule):
        """:func:`ftkit.schedule.lr_at` in Keras ops (tests check the two agree step by step)."""

        def __init__(self, lr, schedule, steps_per_epoch, epochs, warmup_epochs, step_epochs, step_gamma,
                     min_lr_factor):
            self.lr, self.schedule = float(lr), schedule
            self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
            self.warmup_epochs, self.step_epochs = float(warmup_epochs), int(step_epochs)
            self.step_gamma, self.min_lr_factor = float(step_gamma), float(min_lr_factor)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            total = float(max(1, self.epochs * self.steps_per_epoch))
            warmup = self.warmup_epochs * self.steps_per_epoch
            if self.schedule == "constant":
                rate = ops.convert_to_tensor(self.lr, "float32")
            elif self.schedule == "step":
                rate = self.lr * ops.power(self.step_gamma, ops.floor(step / (self.step_epochs * self.steps_per_epoch)))
            else:
                progress = ops.clip((step - warmup) / max(1.0, total - warmup), 0.0, 1.0)
                floor = self.lr * self.min_lr_factor
                rate = floor + (self.lr - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
            if warmup > 0:
                rate = ops.where(step < warmup, self.lr * (step + 1.0) / warmup, rate)
            return rate

        def get_config(self):
            return {"lr": self.lr, "schedule": self.schedule, "steps_per_epoch": self.steps_per_epoch,
                    "epochs": self.epochs, "warmup_epochs": self.warmup_epochs, "step_epochs": self.step_epochs,
                    "step_gamma": self.step_gamma, "min_lr_factor": self.min_lr_factor}

    return PhaseLearningRate


_CLASSES: dict[str, Any] = {}


def phase_learning_rate(phase: Phase, *, steps_per_epoch: int):
    """A float for a constant rate, else a Keras schedule following :func:`ftkit.schedule.lr_at`."""
    if phase.lr_schedule == "constant" and phase.warmup_epochs == 0:
        return phase.lr
    if "lr" not in _CLASSES:
        _CLASSES["lr"] = _lr_schedule_class()
    return _CLASSES["lr"](phase.lr, phase.lr_schedule, steps_per_epoch, phase.epochs, phase.warmup_epochs, phase.step_epochs,
               phase.step_gamma, phase.min_lr_factor)


def _scaled_optimizer_class(base):
    """``base`` with a learning-rate multiplier per variable, applied in ``update_step``."""
    import keras

    key = f"GroupScaled{base.__name__}"
    if key in _CLASSES:
        return _CLASSES[key]

    class GroupScaled(base):
        def __init__(self, *args, lr_multipliers: Sequence[float] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._multiplier_by_id: dict[int, float] = {}
            self._multipliers = list(lr_multipliers or [])

        def set_multipliers(self, by_variable_id: dict[int, float]) -> None:
            self._multiplier_by_id = dict(by_variable_id)

        def build(self, variables):
            if self._multiplier_by_id:
                self._multipliers = [self._multiplier_by_id.get(id(v), 1.0) for v in variables]
            super().build(variables)

        def update_step(self, gradient, variable, learning_rate):
            # The multiplier is a Python constant per variable, folded in when the step is traced.
            scale = self._multipliers[self._get_variable_index(variable)] if self._multipliers else 1.0
            return super().update_step(gradient, variable, learning_rate * scale if scale != 1.0 else learning_rate)

        def get_config(self):
            return {**super().get_config(), "lr_multipliers": list(self._multipliers)}

    GroupScaled.__name__ = GroupScaled.__qualname__ = key
    _CLASSES[key] = keras.saving.register_keras_serializable(package="ftkit")(GroupScaled)
    return _CLASSES[key]


def make_optimizer(recipe: Recipe, phase: Phase, *, steps_per_epoch: int, multiplier_by_id: dict[int, float],
                   distributed: bool = False):
    """The phase's optimizer. ``distributed``: for the custom step of :mod:`ftkit.training.replicas`, which clips
    the all-reduced gradient itself (Keras's ``global_clipnorm`` would clip each replica's share of it)."""
    import keras

    lr = phase_learning_rate(phase, steps_per_epoch=steps_per_epoch)
    cfg = recipe.train
    choices = {"adam": (keras.optimizers.Adam, {}),
               "adamw": (keras.optimizers.AdamW, {"weight_decay": cfg.weight_decay}),
               "sgd": (keras.optimizers.SGD, {"momentum": cfg.momentum})}
    cls, kwargs = choices[cfg.optimizer]
    if cfg.clip_norm is not None and not distributed:
        kwargs["global_clipnorm"] = cfg.clip_norm
    if (cfg.gradient_accumulation_steps or 1) > 1:  # Keras takes 2 or more, or None
        kwargs["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    if cfg.ema is not None:
        kwargs.update(use_ema=True, ema_momentum=cfg.ema.momentum)
    if any(m != 1.0 for m in multiplier_by_id.values()):
        optimizer = _scaled_optimizer_class(cls)(learning_rate=lr, **kwargs)
        optimizer.set_multipliers(multiplier_by_id)
    else:
        optimizer = cls(learning_rate=lr, **kwargs)
    if cfg.ema is not None:
        # Keras's fit ends by overwriting the trainable weights with their average (finalize_variable_values).
        # The engine calls fit once per epoch, so training would restart from the average at every epoch; the
        # average is swapped in at each epoch's end instead, and out before the next (epoch_ema_swap). Shadowed on
        # the instance (as replicas.synchronized_batchnorm does): a checkpoint's optimizer stays Keras's own class.
        object.__setattr__(optimizer, "finalize_variable_values", _keep_raw_weights)
    return optimizer


def _keep_raw_weights(var_list) -> None:
    """``finalize_variable_values`` of an optimizer with ``train.ema``: the raw weights stay (see make_optimizer)."""


def epoch_ema_swap(*, ema_in_model: bool):
    """Keras's ``SwapEMAWeights(swap_on_epoch=True)`` for a phase's optimizer with ``train.ema``: the average
    is in the model for validation (``on_test_begin``) and from each epoch's end (checkpoints, the best epoch,
    ``model.keras``) to the next epoch's start, when the raw weights come back to train on. Meanwhile the
    optimizer's average variables hold the raw weights, so a checkpoint holds both and a resume continues
    exactly: ``ema_in_model`` says where the phase starts (True when it resumes from a checkpoint).

    Two changes to Keras's callback. It ends a fit's last epoch by overwriting the average with the model's
    (then average) weights, for ``finalize_variable_values``; the engine fits once per epoch and trains on,
    so the raw weights must survive. And it swaps under TensorFlow by additions (a = a + b; b = a - b;
    a = a - b), which round both in float32 at every swap; a copy through host memory is exact."""
    import keras

    class EpochEMASwap(keras.callbacks.SwapEMAWeights):
        def __init__(self):
            super().__init__(swap_on_epoch=True)
            self._ema_weights_in_model = ema_in_model

        def on_epoch_end(self, epoch, logs=None):
            if not self._ema_weights_in_model:
                self._swap_variables()
                self._ema_weights_in_model = True

        def on_test_end(self, logs=None):
            # Validation ends an epoch here and on_epoch_end would swap the average straight back in: leaving it
            # saves two copies of every weight through host memory per epoch.
            pass

        def _swap_variables(self):
            self._apply_to_ema_optimizers(self._backend_swap_variables, self._backend_swap_variables)

    return EpochEMASwap()


def batches_seen(optimizer) -> int:
    """The batches the optimizer has taken: the step its learning-rate schedule reads. Under gradient
    accumulation Keras's public ``iterations`` counts updates (one per ``gradient_accumulation_steps`` batches),
    while schedules read the batch counter ``_iterations``."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer (mixed_float16) wraps it
    return int(getattr(inner, "_iterations", inner.iterations).numpy())


def multipliers_by_variable(model, groups: dict[str, list], phase: Phase) -> dict[int, float]:
    """``{id(variable): multiplier}`` for the trainable variables of ``model`` (matched by layer name)."""
    group_of = {layer.name: group for group, layers in groups.items() for layer in layers}
    out = {}
    for layer in _weighted_layers(model):
        group = group_of.get(layer.name)
        multiplier = phase.multipliers.get(group, phase.multipliers.get(HEAD, 1.0) if group == AUX else 1.0)
        for variable in layer.trainable_weights:
            out[id(variable)] = float(multiplier)
    return out


# -- model construction ---------------------------------------------------------------------------------


class BackboneBuildError(ValueError):
    """The recipe's backbone could not be built into the model (a plugin's builder raised, or ignored
    ``input_shape``)."""


def backbone_build_problem(name: str, image_shape: tuple[int, int, int]) -> str | None:
    """One line naming the backbone, its distribution and what went wrong building it at ``image_shape``, or
    None when it builds alone (the failure was elsewhere: its weights, the head).

    The assembled model hides which part failed, so the backbone is built again on its own (random weights) to
    tell a builder that raises from one that ignores ``input_shape`` (Keras then reports an "incompatible"
    input, which names neither the backbone nor the plugin)."""
    from ftkit.backbones import backbone_info, create_backbone

    info = backbone_info(name)
    where = f"{info.distribution or 'unknown distribution'} {info.version or ''}".strip()  # as `ftkit models list`
    try:
        alone = create_backbone(name, include_top=False, weights=None, input_shape=image_shape, pooling=None)
        built = tuple(alone.input_shape[1:])
    except Exception as probe:  # noqa: BLE001 - the builder's own error is the message
        # Keras's messages span lines; the message is one
        problem = f"its builder raised {' '.join(f'{type(probe).__name__}: {probe}'.split())}"
    else:
        if built == tuple(image_shape):
            return None
        problem = (f"it ignores input_shape: asked for {tuple(image_shape)} (data.image_size and channels), it "
                   f"built {built}")
    return (f"backbone {name!r} [{where}] could not be built: {problem}. Check it with `ftkit models check {name}`. "
            f"Received: backbone.name={name!r}, input shape {tuple(image_shape)}")


# -- training -------------------------------------------------------------------------------------------


class Trainer:
    """Trains one planned run into one run folder, phase by phase, epoch by epoch."""

    def __init__(self, plan: Plan, folder: runs.RunFolder, *, callbacks: Sequence[Any] = (), log=print,
                 strategy=None):
        self.plan, self.folder, self.recipe = plan, folder, plan.recipe
        self.strategy = strategy or get_strategy()
        self.distributed = distribute.is_distributed(self.strategy)
        self.chief = distribute.is_chief(self.strategy)
        self.steps: replicas.DistributedSteps | None = None
        self.rows: list[dict[str, Any]] = []  # history rows of the run (read from history.csv on resume)
        self.user_callbacks = list(callbacks)
        self.log = log
        self.cache = None
        self.resume_rng: dict[str, list] = {}
        self.cache_version = -1  # bumps when a phase trains the backbone (cached features go stale)
        self.backbone_version = 0
        self.skipped_at_start = len(plan.data.index.skipped)  # files found bad later were met while decoding
        self.tensorboard = None  # one callback for every epoch this process trains (see _run_tensorboard)
        # train.final_model: best on a worker that writes no best.keras (see _restores_best): the best epoch's
        # weights, kept in memory (one host copy of the model's weights)
        self.best_weights: list | None = None
        self.ema_swap = None  # the phase's epoch_ema_swap with train.ema
        self.cache_reason: str | None = None  # why the phase does not train on cached features (None: it does)

    # - model -
    def build(self, *, log=None):
        """Assemble the model (``log``, default the trainer's: where the init_from line goes). A backbone that
        cannot be built raises :class:`BackboneBuildError`, naming it and what went wrong."""
        import keras

        from ftkit.backbones import BackboneConflictError, PluginError, UnknownBackboneError
        from ftkit.head import build_model, load_backbone_from_run

        keras.utils.set_random_seed(self.recipe.train.seed)
        keras.mixed_precision.set_global_policy(self.recipe.train.precision)
        name = self.recipe.backbone.name
        try:
            with self.strategy.scope():
                self.assembled = build_model(name, num_classes=self.plan.data.num_classes,
                                             image_shape=self.plan.image_shape, head=self.recipe.head,
                                             weights=self.recipe.backbone.weights, seed=self.recipe.train.seed)
        except (UnknownBackboneError, BackboneConflictError, PluginError):
            raise  # the registry's own messages already name the backbone and the way out
        except Exception as exc:  # a plugin's builder may raise anything; the user needs its name, not a traceback
            problem = backbone_build_problem(name, tuple(self.plan.image_shape))
            if problem is None:
                raise
            raise BackboneBuildError(problem) from exc
        if self.recipe.backbone.init_from:
            (log or self.log)(load_backbone_from_run(self.assembled, self.recipe.backbone.init_from,
                                                     match=self.recipe.backbone.init_match))

    def _compile(self, model, optimizer, *, multi_output: bool):
        import keras

        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.recipe.head.label_smoothing)
        names = self.assembled.output_names
        if multi_output:
            weights = {n: 1.0 if n == names[0] else self.recipe.head.aux_loss_weight for n in names}
            model.compile(optimizer=optimizer, loss={n: loss for n in names}, loss_weights=weights,
                          metrics={names[0]: [keras.metrics.CategoricalAccuracy(name="accuracy")]},
                          jit_compile=self.recipe.train.jit_compile)
        else:
            model.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                          jit_compile=self.recipe.train.jit_compile)

    def prepare_phase(self, phase: Phase, *, resume_from: Path | None = None, announce: bool = True):
        """Freeze/unfreeze for ``phase``, pick the cached or image path, compile a fresh optimizer; log the
        phase's audit line when ``announce`` (lr-find logs its own: it runs steps, not the phase's epochs)."""
        from ftkit.head import head_model

        audit = apply_phase(self.assembled, phase)
        reason = cache_reason(phase=phase, augment=self.recipe.augment, enabled=self.recipe.train.feature_cache)
        data = self.plan.data
        steps = self.steps_per_epoch()
        if reason is None:
            if self.cache is None or self.cache_version != self.backbone_version:
                self.log("feature cache: computing backbone features once (inference mode, no augmentation)")
                self.cache = compute_features(self.assembled, data, ("train", "val"))
                self.cache_version = self.backbone_version
            with self.strategy.scope():
                trainer = head_model(self.assembled, num_classes=data.num_classes, config=self.recipe.head,
                                     seed=self.recipe.train.seed)
        else:
            trainer = self.assembled.model
        with self.strategy.scope():
            optimizer = make_optimizer(self.recipe, phase, steps_per_epoch=steps, distributed=self.distributed,
                                       multiplier_by_id=multipliers_by_variable(trainer, self.assembled.groups, phase))
            multi = trainer is self.assembled.model and self.assembled.has_aux
            self._compile(trainer, optimizer, multi_output=multi)
            if trainer is not self.assembled.model:
                # The full model carries the same optimizer, so its checkpoints hold the head's optimizer state.
                self._compile(self.assembled.model, trainer.optimizer, multi_output=self.assembled.has_aux)
            trainer.optimizer.build(trainer.trainable_variables)
        if resume_from is not None:
            self.assembled.model.load_weights(resume_from)
            if trainer is not self.assembled.model:
                for layer in self.assembled.head_layers:
                    trainer.get_layer(layer.name).set_weights(layer.get_weights())
                set_seed_states(trainer, self.resume_rng.get("trainer", []))
        self.trainer, self.cached = trainer, reason is None
        self.cache_reason = reason
        self.ema_swap = epoch_ema_swap(ema_in_model=resume_from is not None) if self.recipe.train.ema else None
        if self.distributed:
            if self.recipe.train.jit_compile and phase.index == 0:
                self.log("jit_compile: off under a distributed strategy (its custom step all-reduces between the "
                         "forward and the update, outside XLA)")
            multi = trainer is self.assembled.model and self.assembled.has_aux
            weights = [1.0] + [self.recipe.head.aux_loss_weight] * (len(self.assembled.output_names) - 1 if multi else 0)
            self.steps = replicas.DistributedSteps(self.strategy, trainer, trainer.optimizer, loss_weights=weights,
                                                   label_smoothing=self.recipe.head.label_smoothing,
                                                   clip_norm=self.recipe.train.clip_norm)
        if not announce:
            return audit
        self.log(audit_line(phase, len(self.plan.phases), audit, cached=reason))
        accumulation = self.recipe.train.gradient_accumulation_steps or 1
        if (phase.epochs * steps) % accumulation:
            self.log(f"gradient accumulation: an update every {accumulation} batches, carried across epochs "
                     f"({steps} per epoch); the batches still accumulated when the phase ends make no update (the "
                     f"last {(phase.epochs * steps) % accumulation} of its {phase.epochs * steps}, or fewer if early "
                     f"stopping ends it sooner), since the next phase starts a fresh optimizer")
        return audit

    def steps_per_epoch(self) -> int:
        steps = self.plan.data.steps("train")
        cap = self.recipe.train.steps_per_epoch
        return min(steps, cap) if cap else steps

    def validation_steps(self) -> int | None:
        if not self.plan.data.has("val"):
            return None
        steps = self.plan.data.steps("val")
        cap = self.recipe.train.validation_steps
        return min(steps, cap) if cap else steps

    def _fit_verbosity(self) -> int:
        """Keras' progress bar redraws many times a second: in a log file (no terminal) one line per epoch."""
        import sys

        verbose = self.recipe.train.verbose
        return 2 if verbose == 1 and not sys.stdout.isatty() else verbose

    def _datasets(self, global_epoch: int):
        from ftkit.augment import build_augmentation

        data = self.plan.data
        order = data.train_order(global_epoch)
        if self.cached:
            train = self.cache.dataset("train", order=order)
            val = self.cache.dataset("val", with_weights=False) if "val" in self.cache.features else None
            return _on_device(train), _on_device(val)
        augment = self.recipe.augment
        augmentation = None
        if augment.backend != "none" or augment.uses_mixing:
            augmentation = build_augmentation(augment, image_size=data.image_size, num_classes=data.num_classes,
                                              channels=data.channels, seed=augment.seed * 100_003 + global_epoch)
        train = self._for_outputs(data.dataset("train", order=order, augmentation=augmentation))
        val = self._for_outputs(data.dataset("val", with_weights=False)) if data.has("val") else None
        return _on_device(train), _on_device(val)

    def _distributed_datasets(self, global_epoch: int):
        """Train and val datasets split per replica (:mod:`ftkit.training.replicas`), built per worker."""
        from ftkit.augment import build_augmentation

        data, batch = self.plan.data, self.plan.data.batch_size
        order = data.train_order(global_epoch)
        if self.cached:
            make_train = functools.partial(_cached_rows, self.cache, "train", with_weights=True)
            make_val = functools.partial(_cached_rows, self.cache, "val", with_weights=False)
            has_val = "val" in self.cache.features
        else:
            augment, augmentation = self.recipe.augment, None
            if augment.backend != "none" or augment.uses_mixing:
                # One pipeline per worker; worker w's seed is offset so workers do not draw the same transforms.
                pipeline = distribute.task_of(self.strategy)[1]
                augmentation = build_augmentation(augment, image_size=data.image_size, num_classes=data.num_classes,
                                                  channels=data.channels, seed=augment.seed * 100_003 + global_epoch + 1_000_003 * pipeline)
            make_train = functools.partial(_image_rows, data, "train", augmentation=augmentation, with_weights=True)
            make_val = functools.partial(_image_rows, data, "val", augmentation=None, with_weights=False)
            has_val = data.has("val")
        train = replicas.distribute(self.strategy, make_train, order, global_batch=batch, steps=self.steps_per_epoch())
        val = None
        if has_val:
            val = replicas.distribute(self.strategy, make_val, np.arange(data.count("val")), global_batch=batch,
                                      steps=self.validation_steps())
        return train, val

    def _fit_distributed(self, phase: Phase, global_epoch: int, callbacks: list) -> dict[str, float]:
        import keras

        train, val = self._distributed_datasets(global_epoch)
        callback_list = keras.callbacks.CallbackList(callbacks, model=self.trainer, epochs=global_epoch + 1,
                                                     steps=self.steps_per_epoch(), verbose=0)
        bns = [layer for layer in _weighted_layers(self.trainer)
               if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
        try:
            with replicas.synchronized_batchnorm(bns):
                callback_list.on_train_begin()
                callback_list.on_epoch_begin(global_epoch)
                logs = self.steps.train_epoch(train, steps=self.steps_per_epoch(), callbacks=callback_list)
                if val is not None:
                    if self.ema_swap is not None:  # as Keras's evaluate does; on_epoch_end leaves it there
                        self.ema_swap.on_test_begin()
                    logs.update(self.steps.evaluate(val, steps=self.validation_steps()))
                callback_list.on_epoch_end(global_epoch, logs)
                callback_list.on_train_end(logs)
        except Exception as exc:
            if replicas.worker_lost(exc):
                raise distribute.WorkerLostError(
                    f"A worker of this multi-worker run stopped answering during epoch {global_epoch + 1} "
                    f"({replicas.lost_detail(exc)}). Restart every worker with "
                    f"--resume {self.folder.root} to continue from the last completed epoch. "
                    f"Received: {distribute.describe(self.strategy)}"
                ) from exc
            raise
        return logs

    def _for_outputs(self, ds):
        if not self.assembled.has_aux:
            return ds
        names = self.assembled.output_names
        return ds.map(lambda x, y, *w: (x, {n: y for n in names}, *w))

    def run_epoch(self, phase: Phase, global_epoch: int) -> dict[str, Any]:
        if self.chief and self.tensorboard is None:
            self.tensorboard = _run_tensorboard(self.folder.root / runs.TENSORBOARD)
        # The average goes in first at the epoch's end: the callbacks after it see the weights checkpointed.
        callbacks = [*([self.ema_swap] if self.ema_swap else []), *([self.tensorboard] if self.tensorboard else []),
                     *self.user_callbacks]
        start = time.perf_counter()
        if self.distributed:
            logs = self._fit_distributed(phase, global_epoch, callbacks)
        else:
            train, val = self._datasets(global_epoch)
            verbose = self._fit_verbosity()
            if verbose:
                callbacks.append(_run_progbar(sum(p.epochs for p in self.plan.phases)))
            with warnings.catch_warnings(record=True) as caught:
                history = self.trainer.fit(train, validation_data=val, initial_epoch=global_epoch,
                                           epochs=global_epoch + 1, steps_per_epoch=self.steps_per_epoch(),
                                           validation_steps=self.validation_steps(), callbacks=callbacks,
                                           verbose=verbose, shuffle=False)
            _reissue(caught, explained=len(self.plan.data.index.skipped) > self.skipped_at_start)
            logs = {k: v[-1] for k, v in history.history.items()}
        seconds = time.perf_counter() - start
        if self.cached:
            from ftkit.head import copy_head_weights

            copy_head_weights(self.trainer, self.assembled)
        step = batches_seen(self.trainer.optimizer)
        row = {"epoch": global_epoch, "phase": phase.index, "phase_name": phase.name,
               "lr": float(lr_at(max(step - 1, 0), phase=phase, steps_per_epoch=self.steps_per_epoch())),
               "cached": int(self.cached), "seconds": round(seconds, 3)}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            value = logs.get(key, logs.get(key.replace("accuracy", "logits_accuracy")))
            row[key] = None if value is None else float(value)
        return row

    def close(self) -> None:
        """Close what stays open from epoch to epoch (TensorBoard's event files)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    @property
    def monitor(self) -> str:
        """The metric that picks ``best.keras``: ``train.monitor``, or its training twin when there is no
        validation data (announced at the start of the run and named so in the summary)."""
        key = self.recipe.train.monitor
        return key.removeprefix("val_") if key.startswith("val_") and not self.plan.data.has("val") else key

    def monitor_value(self, row: dict[str, Any]) -> float | None:
        return row.get(self.monitor)

    def early_stop(self, phase: Phase) -> str | None:
        """The log line that ends ``phase`` early (``train.early_stopping``), or None while it goes on.

        Keras's EarlyStopping callback cannot decide this: the engine calls ``fit`` once per epoch, and the
        callback starts counting again at every ``fit``; nor does it know phases or resumes. The count is
        derived from the phase's rows of the history instead (:func:`ftkit.schedule.stalled_epochs`), which a
        resumed run reads back, so it stops at the same epoch as an uninterrupted one. Not from the run's best
        epoch in the resume state: that one spans phases and takes any improvement, while each phase starts
        its own best (as fastai's callback does per ``fit``) and improves by more than ``min_delta``."""
        rule = self.recipe.train.early_stopping
        if rule is None:
            return None
        rows = [row for row in self.rows if row["phase"] == phase.index]
        stalled, best = stalled_epochs([self.monitor_value(row) for row in rows], min_delta=rule.min_delta,
                                       higher_is_better="accuracy" in self.monitor)
        if stalled < rule.patience or len(rows) == phase.epochs:
            return None
        best_text = "none" if best is None else (f"{self.monitor_value(rows[best]):.4f} at epoch "
                                                 f"{rows[best]['epoch'] + 1}")
        after = "the run ends" if phase.index == len(self.plan.phases) - 1 else f"phase {phase.index + 2} starts"
        return (f"early stopping: phase {phase.index + 1}/{len(self.plan.phases)} {phase.name!r} ends after epoch "
                f"{rows[-1]['epoch'] + 1} ({len(rows)} of its {phase.epochs} epochs): {self.monitor} has not improved "
                f"by more than {rule.min_delta:g} for {stalled} epoch(s) (train.early_stopping.patience="
                f"{rule.patience}); the phase's best {best_text}; {after}")

    def better(self, value: float | None, best: float | None) -> bool:
        if value is None:
            return False
        if best is None:
            return True
        return value > best if "accuracy" in self.monitor else value < best


def _run_progbar(total_epochs: int):
    """Keras's progress bar, numbering epochs over the whole run. The engine fits one epoch per call
    (``initial_epoch=e, epochs=e + 1``), for which Keras's own bar printed "Epoch 2/2", "Epoch 6/6"... and no
    header for the first epoch."""
    import keras

    class RunProgbar(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params({**params, "epochs": total_epochs})

    return RunProgbar()


def _run_tensorboard(log_dir: Path):
    """Keras's TensorBoard callback for a run that calls ``fit`` once per epoch. Keras opens its writers in a
    ``fit`` and closes them when it ends, so each epoch started a new event file per writer; these writers stay
    open (flushed after each epoch) until ``close()``, so a run writes one event file per writer (train,
    validation), and a resumed run one more each, as one long Keras ``fit`` and a restarted one do."""
    import keras

    class RunTensorBoard(keras.callbacks.TensorBoard):
        @property
        def _writers(self):
            return self.__dict__.setdefault("_run_writers", {})

        @_writers.setter
        def _writers(self, value):
            pass  # Keras resets its writers in set_model, which every fit calls: these are kept

        def set_model(self, model):
            if model is not self._model:  # a phase's new model: its summary (and graph) are written once
                super().set_model(model)

        def _close_writers(self):  # Keras's end of each fit
            for writer in self._writers.values():
                writer.flush()

        def close(self):
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()

    return RunTensorBoard(log_dir=str(log_dir))


def _cached_rows(cache, split: str, rows, batch_size: int, *, with_weights: bool):
    return cache.dataset(split, order=rows, with_weights=with_weights, batch_size=batch_size)


def _image_rows(data: TrainingData, split: str, rows, batch_size: int, *, augmentation, with_weights: bool):
    return data.dataset(split, order=rows, augmentation=augmentation, with_weights=with_weights, batch_size=batch_size)


def seed_states(model) -> list[list[int]]:
    """The states of the model's random generators (dropout), in variable order."""
    return [v.numpy().tolist() for v in model.variables if v.path.endswith("seed_generator_state")]


def set_seed_states(model, states: list[list[int]]) -> None:
    variables = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    if len(variables) != len(states):
        raise ValueError(f"The checkpoint has {len(states)} random-generator states but the model has "
                         f"{len(variables)}. Received: {len(states)} states")
    for variable, value in zip(variables, states, strict=True):
        variable.assign(value)


def _checkpoint(trainer: Trainer, state: runs.ResumeState, *, improved: bool) -> runs.ResumeState:
    folder = trainer.folder
    state = dataclasses.replace(state, rng={
        "model": seed_states(trainer.assembled.model),
        "trainer": seed_states(trainer.trainer) if trainer.cached else []})
    if not folder.writable:
        return state
    folder.keep_previous()
    runs.atomic_save_model(trainer.assembled.model, folder.last)
    if improved:
        tmp = folder.checkpoints / ".best.copy.keras"
        shutil.copyfile(folder.last, tmp)
        Path(tmp).replace(folder.best)
    state = dataclasses.replace(state, checkpoint_sha256=runs.file_sha256(folder.last))
    folder.write_state(state)
    return state


def train(recipe: str | Path | dict | Recipe | None = None, *, overrides: list[str] | dict | None = None,
          out: str | Path | None = None, smoke: bool = False, resume: str | Path | None = None,
          callbacks: Sequence[Any] = (), log=print, strategy: str | None = None, cluster: str = "tf_config",
          join_timeout: float = distribute.DEFAULT_JOIN_TIMEOUT) -> RunResult:
    """``ftkit train``: plan, train every phase, save the run folder, evaluate; or continue ``resume``.

    ``recipe`` is a YAML path, a dict or a :class:`Recipe`. With ``resume`` (a run folder) the run's own
    ``recipe.yaml`` is used; a recipe given as well must resolve to the same recipe. ``strategy`` overrides
    ``train.strategy`` (a run may resume under another strategy); ``cluster`` and ``join_timeout`` go to
    :func:`ftkit.distribute.make_strategy`. In a multi-worker run every worker calls this with the same
    arguments (a shared ``out``/``resume`` folder for resuming); only the chief writes.
    """
    if resume is not None:
        existing = runs.RunFolder(resume)
        state = None if existing.stopped_before_first_checkpoint() else existing.read_state()
        saved = load_recipe(existing.root / runs.RECIPE_FILE)
        resolved = saved
    else:
        resolved = load_recipe(recipe, overrides=overrides, smoke=smoke)
        if smoke:
            full = load_recipe(recipe, overrides=overrides)
            log(f"smoke (a pipeline check in seconds, not the recipe's run): {', '.join(smoke_changes(full, resolved))}")
    import keras  # after the recipe is validated: a mistake in it is reported at once, not after TensorFlow starts

    # Made before TensorFlow runs anything: MultiWorkerMirroredStrategy configures the runtime at start-up.
    active = get_strategy(strategy or resolved.train.strategy, cluster=cluster, join_timeout=join_timeout)
    distribute.check_cluster_is_used(active)
    check_distributed_options(resolved, active)
    writable = distribute.is_chief(active)
    if resume is not None:
        folder = runs.RunFolder(resume, writable=writable)
        if state is not None and state.finished:
            raise ValueError(f"{folder.root} finished its schedule; there is nothing to resume. Start a new run "
                             f"(backbone.init_from can start from its weights). Received: resume={str(resume)!r}")
        if recipe is not None:
            given = load_recipe(recipe, overrides=overrides, smoke=smoke)
            if runs.recipe_digest(given.to_dict()) != runs.recipe_digest(saved.to_dict()):
                raise ValueError(
                    f"{folder.root} was trained from a different recipe; resuming it with this one would mix two "
                    f"runs. Resume without a recipe (its own recipe.yaml is used) or start a new run. "
                    f"Received: resume={str(resume)!r}"
                )
        if state is None:
            if writable:
                log(f"{folder.root} stopped before its first epoch's checkpoint (no {runs.CHECKPOINTS}/{runs.STATE}): "
                    f"starting it over from epoch 1 with its own {runs.RECIPE_FILE}")
            state = start_state(saved)
        elif state.recipe_sha256 != runs.recipe_digest(saved.to_dict()):
            raise ValueError(f"{folder.root / runs.RECIPE_FILE} was edited after the run started. "
                             f"Received: resume={str(resume)!r}")
    else:
        folder = runs.RunFolder(out or default_run_dir(recipe), writable=writable)
        if writable and folder.root.exists() and any(folder.root.iterdir()):
            raise ValueError(f"The run folder exists and is not empty; {_taken(folder)}. "
                             f"Received: out={str(folder.root)!r}")
        state = None
    plan = plan_run(resolved)
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        return _train(plan, folder, state=state, callbacks=callbacks, log=log, strategy=active)
    except KeyboardInterrupt as interrupted:
        # For the caller's message (`ftkit train` prints the --resume command): the folder, where one can be resumed.
        resumable = folder.state_path.is_file() or folder.stopped_before_first_checkpoint()
        interrupted.run_dir = folder.root if resumable else None
        raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def check_distributed_options(recipe: Recipe, strategy) -> None:
    """Refuse, before anything is written, what the distributed custom step does not do.

    Gradient accumulation: Keras's optimizer chooses between accumulating and updating with ``ops.cond``, and
    its update all-reduces inside that branch, which ``tf.distribute`` refuses (a ``merge_call`` inside control
    flow: a RuntimeError at the first step under MirroredStrategy with Keras 3.15)."""
    accumulation = recipe.train.gradient_accumulation_steps or 1
    if accumulation > 1 and distribute.is_distributed(strategy):
        raise ValueError(
            f"train.gradient_accumulation_steps needs train.strategy default (one device); a distributed strategy "
            f"({strategy.num_replicas_in_sync} replica(s) here) takes a larger data.batch_size instead, the global "
            f"batch over all replicas. Received: train.gradient_accumulation_steps={accumulation}"
        )


def _taken(folder: runs.RunFolder) -> str:
    """What to do about an ``--out`` folder that is not empty."""
    if folder.state_path.is_file():
        return f"pick another --out, or continue it with `ftkit train --resume {folder.root}`"
    if folder.stopped_before_first_checkpoint():
        return (f"it is a run that stopped before its first epoch's checkpoint: `ftkit train --resume {folder.root}` "
                f"starts it over from epoch 1 with its own {runs.RECIPE_FILE}, or pick another --out")
    return ("it has no checkpoint to resume and is not a run folder: pick another --out, or delete the folder "
            "yourself (ftkit never deletes files)")


def start_state(recipe: Recipe) -> runs.ResumeState:
    """Where a new run stands: before its first epoch."""
    return runs.ResumeState(recipe_sha256=runs.recipe_digest(recipe.to_dict()), phase=0, epoch_in_phase=0,
                            global_epoch=0, global_step=0, seed=recipe.train.seed, best=None, best_epoch=None,
                            checkpoint_sha256="")


def default_run_dir(recipe, *, kind: str = "") -> Path:
    """``runs/<recipe>-<time>`` (``runs/<recipe>-<kind>-<time>`` for another command's output, e.g. lr-find's),
    relative to the current folder; ``<recipe>`` is the recipe file's stem, ``run`` for a dict or Recipe."""
    stem = Path(recipe).stem if isinstance(recipe, str | Path) else "run"
    tag = f"-{kind}" if kind else ""
    return Path(DEFAULT_RUNS_DIR) / f"{stem}{tag}-{datetime.now():%Y%m%d-%H%M%S}"


def _train(plan: Plan, folder: runs.RunFolder, *, state: runs.ResumeState | None, callbacks, log,
           strategy) -> RunResult:
    import tensorflow as tf

    recipe = plan.recipe
    if recipe.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    if distribute.is_distributed(strategy):
        log(distribute.describe(strategy))
    if not folder.writable:
        log(f"this worker trains in step with the others; the chief writes {folder.root}")
        log = _silent
    trainer = Trainer(plan, folder, callbacks=callbacks, log=log, strategy=strategy)
    # Built before anything is written: a model that cannot be built (a faulty plugin) leaves no folder behind
    # that a re-run with the same --out would refuse, or offer to resume.
    notes: list[str] = []
    trainer.build(log=notes.append)
    folder.create()
    if state is None and folder.writable:
        dump_recipe(recipe, folder.root / runs.RECIPE_FILE, header="# resolved recipe written by ftkit train")
    if state is None:
        state = start_state(recipe)
        log(f"run folder: {folder.root}")
    else:
        folder.truncate_history(state.global_epoch)
        # The epochs before the resume, for the RunResult of a worker that writes nothing (the chief's is the file's)
        trainer.rows = folder.read_history()[:state.global_epoch]
        log(f"resuming {folder.root}: phase {state.phase + 1}, epoch {state.epoch_in_phase + 1} of that phase")
    folder.write_meta(_run_meta(plan))
    for line in data_lines(plan.data.index):
        log(line)
    if plan.data.sample_weights is not None:
        log(class_weight_line(recipe.train.class_weight, plan.data))
    if recipe.train.clip_norm is not None:
        log(f"gradient clipping: each update's gradient is scaled down to a global norm of {recipe.train.clip_norm:g} "
            f"where it is larger (train.clip_norm)")
    if recipe.train.ema is not None:
        log(ema_line(recipe.train))
    if trainer.monitor != recipe.train.monitor:
        log(f"no val split: checkpoints/best.keras is chosen on the training {trainer.monitor}, not "
            f"{recipe.train.monitor} (set data.val_fraction above 0 or data.val for validation data)")
    for note in notes:
        log(note)
    if state.global_epoch > 0 and state.epoch_in_phase == 0:
        _load_model_weights(trainer, folder.last)
    if state.global_epoch > 0:
        set_seed_states(trainer.assembled.model, state.rng.get("model", []))
        trainer.resume_rng = state.rng
    trainer.backbone_version = sum(1 for p in plan.phases[:state.phase] if not p.head_only)
    if state.best_epoch is not None and _keeps_best_in_memory(trainer):
        # Resuming reads the shared run folder on every worker; its best epoch may be one trained before.
        trainer.best_weights = _read_weights(folder.best)
    try:
        state = _run_schedule(trainer, state)
    finally:
        trainer.close()
    return _finish(trainer, state, log=log)


def _run_schedule(trainer: Trainer, state: runs.ResumeState) -> runs.ResumeState:
    """Every remaining epoch of every phase, each followed by its checkpoint; returns the final state."""
    folder = trainer.folder
    for phase in trainer.plan.phases[state.phase:]:
        resume_from = folder.last if (phase.index == state.phase and state.epoch_in_phase > 0) else None
        trainer.prepare_phase(phase, resume_from=resume_from)
        for epoch in range(state.epoch_in_phase if phase.index == state.phase else 0, phase.epochs):
            row = trainer.run_epoch(phase, state.global_epoch)
            folder.append_history(row)
            trainer.rows.append(row)
            value = trainer.monitor_value(row)
            improved = trainer.better(value, state.best)
            done_in_phase = epoch + 1
            stop = trainer.early_stop(phase)
            ends = done_in_phase == phase.epochs or stop is not None
            next_phase, next_epoch = (phase.index + 1, 0) if ends else (phase.index, done_in_phase)
            state = dataclasses.replace(
                state, phase=next_phase, epoch_in_phase=next_epoch, global_epoch=state.global_epoch + 1,
                global_step=state.global_step + trainer.steps_per_epoch(),
                best=value if improved else state.best, best_epoch=row["epoch"] if improved else state.best_epoch)
            state = _checkpoint(trainer, state, improved=improved)
            if improved and _keeps_best_in_memory(trainer):
                trainer.best_weights = trainer.assembled.model.get_weights()
            if stop is not None:
                trainer.log(stop)
                break
        if not phase.head_only:
            trainer.backbone_version += 1
    return state


def _reissue(caught: list[warnings.WarningMessage], *, explained: bool) -> None:
    """Shows the warnings of a ``fit`` call again, except Keras's "ran out of data" when ``explained``: files
    found bad while decoding (this epoch or an earlier one) can leave an epoch a batch short of the steps
    counted from the scan; they are logged as found and listed at the end of the run."""
    for w in caught:
        if explained and "ran out of data" in str(w.message):
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def _on_device(ds):
    """``ds`` prefetched onto the GPU when one is visible (one device: under a distribution strategy its
    distributed dataset does that per replica), so the next batch's copy overlaps this step."""
    from ftkit.data import distribute

    return None if ds is None else distribute(ds)


def _silent(*args, **kwargs) -> None:
    """The log of non-chief workers: the chief reports for the whole cluster."""


def _load_model_weights(trainer: Trainer, path: Path) -> None:
    """Weights only (a phase boundary: the next phase starts a fresh optimizer)."""
    trainer.assembled.model.set_weights(_read_weights(path))


def _run_meta(plan: Plan) -> dict[str, Any]:
    from ftkit import __version__

    return {"class_names": plan.data.class_names, "image_size": list(plan.image_shape[:2]),
            "channels": plan.image_shape[2], "resize": plan.recipe.data.resize, "backbone": plan.info.name,
            "ftkit_version": __version__, "data": plan.data.index.summary()}


def data_lines(index, *, since: int = 0) -> list[str]:
    """What the run's data holds and what was left out of it, for the console: the split sizes, the files
    skipped (from the ``since``-th on) counted by reason, and every data warning. The run record
    (``ftkit_run.json``) lists each skipped file with its reason."""
    from collections import Counter

    if since:
        lines = []
    else:
        sizes = ", ".join(f"{split} {len(rows)}" for split, rows in index.splits.items())
        lines = [f"data: {len(index.class_names)} classes from {index.source}; images: {sizes}"]
    skipped = index.skipped[since:]
    if skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(s.reason for s in skipped).most_common())
        when = "while decoding" if since else "and left out"
        lines.append(f"data: {len(skipped)} file(s) skipped {when} ({reasons}); never modified, each listed with "
                     f"its reason in {runs.RUN_META}")
    if not since:
        lines += [f"data {p.severity}: {p.message}" for p in index.problems]
    return lines


def ema_line(train) -> str:
    """What ``train.ema`` does to the run, said once at its start."""
    momentum = train.ema.momentum
    accumulation = train.gradient_accumulation_steps or 1
    # Keras updates the average at every batch, the batches that only accumulate a gradient included.
    per_batch = (f"; with train.gradient_accumulation_steps={accumulation} it moves at every batch, as Keras's does, "
                 f"so each update's weights enter it {accumulation} times") if accumulation > 1 else ""
    return (f"weight average (train.ema, momentum {momentum:g}, about the last {1 / (1 - momentum):.0f} batches): "
            f"val_loss, val_acc, checkpoints, the best epoch and {runs.INFERENCE_MODEL} are of the exponential moving "
            f"average of the trainable weights (BatchNorm's moving statistics are not averaged), which each phase "
            f"starts afresh; loss and acc are of the raw weights being trained{per_batch}")


def class_weight_line(spec, data: TrainingData) -> str:
    """The loss weight of each class, and where it came from: an explicit ``train.class_weight`` may list some
    classes only, and the others weigh 1 (said, not left for the user to guess)."""
    weights = ", ".join(f"{name} {w:.3g}" for name, w in zip(data.class_names, data.sample_weights, strict=True))
    if spec == "auto":
        return f"class weights (auto: scikit-learn's balanced weights from the training counts): {weights}"
    unlisted = [name for name in data.class_names if name not in spec]
    rest = f"; not listed, so 1: {', '.join(unlisted)}" if unlisted else ""
    return f"class weights (train.class_weight): {weights}{rest}"


def _finish(trainer: Trainer, state: runs.ResumeState, *, log) -> RunResult:
    from ftkit.head import inference_model

    folder = trainer.folder
    if _restores_best(trainer, state):
        if folder.writable:
            _load_model_weights(trainer, folder.best)
        else:
            trainer.assembled.model.set_weights(trainer.best_weights)
        log(f"train.final_model is best: {runs.INFERENCE_MODEL} and the final evaluation use epoch "
            f"{state.best_epoch + 1} (checkpoints/best.keras) instead of the last, epoch {state.global_epoch}")
    model = inference_model(trainer.assembled.model)
    if not folder.writable:  # a non-chief worker: the chief saves, evaluates and reports
        return RunResult(path=folder.root, history=trainer.rows, best=state.best, best_epoch=state.best_epoch,
                         reports={}, model=model)
    runs.atomic_save_model(model, folder.root / runs.INFERENCE_MODEL)
    # Files found bad while decoding join the record written at the start.
    index = trainer.plan.data.index
    if len(index.skipped) > trainer.skipped_at_start:
        folder.write_meta(_run_meta(trainer.plan))
        for line in data_lines(index, since=trainer.skipped_at_start):
            log(line)
    folder.write_state(dataclasses.replace(state, finished=True))
    folder.plot_curves()
    reports = evaluate_after_training(trainer, model)
    history = folder.read_history()
    log(summary_text(trainer, state, history, reports))
    return RunResult(path=folder.root, history=history, best=state.best, best_epoch=state.best_epoch,
                     reports=reports, model=model)


def _restores_best(trainer: Trainer, state: runs.ResumeState) -> bool:
    """Whether ``train.final_model: best`` asks for weights other than the last epoch's. Every worker restores
    them, so that ``RunResult.model`` is the same model on each: the chief from the ``best.keras`` it wrote, the
    others from their copy in memory (:func:`_keeps_best_in_memory`)."""
    return (trainer.recipe.train.final_model == "best" and state.best_epoch is not None
            and state.best_epoch != state.global_epoch - 1)


def _keeps_best_in_memory(trainer: Trainer) -> bool:
    """A worker that writes nothing (not the chief) and must end with the best epoch's weights: it cannot rely on
    reading the chief's ``best.keras``, since a new multi-worker run needs no storage shared between workers.
    Every worker sees the same all-reduced monitor value, so each picks the same best epoch."""
    return trainer.recipe.train.final_model == "best" and not trainer.folder.writable


def _read_weights(path: Path) -> list:
    """The weights of a saved training model (a checkpoint)."""
    import keras

    import ftkit.backbones._preprocessing  # noqa: F401  (registers the Preprocess layer for loading)

    return keras.saving.load_model(path, compile=False).get_weights()


def evaluate_after_training(trainer: Trainer, model) -> dict[str, dict]:
    """Score the final inference model on the recipe's evaluation splits with ``ftkit.evaluate``."""
    import numpy as np

    from ftkit.evaluate import (
        LabelledFiles,
        LoadedModel,
        evaluate_model,
        evaluate_predictions,
        predict_batches,
    )

    recipe, data = trainer.recipe, trainer.plan.data
    if not recipe.evaluate.enabled:
        return {}
    loaded = LoadedModel(model=model, class_names=data.class_names, image_size=tuple(data.image_size),
                         channels=data.channels, resize=data.resize, source=str(trainer.folder.root / "model.keras"),
                         run_dir=trainer.folder.root)
    reports = {}
    for split in recipe.evaluate.splits:
        if not data.has(split):
            trainer.log(f"evaluate: the data has no {split} split; no report for it (evaluate.splits)")
            continue
        out_dir = trainer.folder.root / "report" / split
        rows = data.index[split]
        if rows.paths is not None:
            files = LabelledFiles(paths=[str(p) for p in rows.paths], labels=rows.labels.astype(np.int64),
                                  class_names=data.class_names, source=f"{data.index.source} ({split} split)")
            reports[split] = evaluate_model(loaded, files, out_dir, top_k=recipe.evaluate.top_k,
                                            batch_size=data.batch_size, allow_missing_classes=True,
                                            tta=recipe.evaluate.tta)
        else:  # in-memory images (MNIST): nothing can fail to decode, so rows and predictions align
            probs = predict_batches(model, data.dataset(split, with_weights=False).map(lambda x, y: x),
                                    tta=recipe.evaluate.tta)
            reports[split] = evaluate_predictions(split_ids(data, split), rows.labels, probs, data.class_names,
                                                  out_dir, top_k=recipe.evaluate.top_k, model=loaded.source,
                                                  data=str(data.index.source), images=rows.images,
                                                  tta=recipe.evaluate.tta)
    return reports


def _cell(row: dict, key: str, width: int, spec: str) -> str:
    value = row.get(key)
    return f"{float(value):{width}{spec}}" if value not in (None, "") else " " * (width - 1) + "-"


def coverage_lines(trainer: Trainer, *, evaluated: Sequence[str] = ()) -> list[str]:
    """What the epoch table was computed on, when ``train.steps_per_epoch`` or ``train.validation_steps`` (both
    set by ``--smoke``) cut an epoch short of its split: without it the table's val_acc and the final val line,
    which scores the whole split, disagree with nothing to say why."""
    data, batch = trainer.plan.data, trainer.plan.data.batch_size
    lines = []
    steps, all_steps = trainer.steps_per_epoch(), data.steps("train")
    if steps < all_steps:
        lines.append(f"note: loss and acc are over {steps} of the {all_steps} training batches of each epoch "
                     f"(train.steps_per_epoch={steps})")
    val_steps = trainer.validation_steps()
    if val_steps is not None and val_steps < data.steps("val"):
        count = data.count("val")
        below = f"; the val line below scores all {count}" if "val" in evaluated else ""
        lines.append(f"note: val_loss, val_acc and the best epoch are on the first {min(val_steps * batch, count)} of "
                     f"the {count} val images (train.validation_steps={val_steps}){below}")
    return lines


def decoded_counts_lines(trainer: Trainer) -> list[str]:
    """The split sizes once files found bad while decoding (after the run's first data line counted them) are left
    out: the sizes the epochs trained and validated on, and the final evaluation scores."""
    index = trainer.plan.data.index
    if len(index.skipped) == trainer.skipped_at_start:
        return []
    sizes = []
    for split, rows in index.splits.items():
        usable = int(index.usable_counts(split).sum())
        lost = f" ({len(rows) - usable} skipped while decoding)" if usable < len(rows) else ""
        sizes.append(f"{split} {usable}{lost}")
    return [f"data: images after decoding: {', '.join(sizes)}"]


def early_stopping_lines(trainer: Trainer, history: list[dict]) -> list[str]:
    """One line per phase that ``train.early_stopping`` ended before its epochs were done."""
    lines = []
    for phase in trainer.plan.phases:
        done = sum(1 for row in history if row["phase"] == phase.index)
        if trainer.recipe.train.early_stopping is not None and 0 < done < phase.epochs:
            lines.append(f"early stopping: phase {phase.index + 1} {phase.name!r} stopped after {done} of its "
                         f"{phase.epochs} epochs")
    return lines


def summary_text(trainer: Trainer, state: runs.ResumeState, history: list[dict], reports: dict[str, dict]) -> str:
    """The one-screen summary printed at the end of a run."""
    recipe = trainer.recipe
    lines = ["", "=" * 72, f"ftkit train: {trainer.folder.root}",
             f"backbone {recipe.backbone.name}, {trainer.plan.data.num_classes} classes, image "
             f"{list(trainer.plan.image_shape)}, {len(trainer.plan.phases)} phase(s), {state.global_epoch} epoch(s)",
             f"{'epoch':>5} {'phase':<10} {'lr':>9} {'loss':>8} {'acc':>7} {'val_loss':>9} {'val_acc':>8} {'sec':>7}"]
    for row in history:
        cells = [_cell(row, "lr", 9, ".2e"), _cell(row, "loss", 8, ".4f"), _cell(row, "accuracy", 7, ".4f"),
                 _cell(row, "val_loss", 9, ".4f"), _cell(row, "val_accuracy", 8, ".4f"), _cell(row, "seconds", 7, ".1f")]
        lines.append(f"{int(row['epoch']) + 1:>5} {row['phase_name'][:10]:<10} " + " ".join(cells))
    lines += coverage_lines(trainer, evaluated=list(reports)) + early_stopping_lines(trainer, history)
    lines += decoded_counts_lines(trainer)
    if recipe.train.ema is not None:
        lines.append(f"note: val_loss, val_acc, the best epoch and the model below are of the weights' moving average "
                     f"(train.ema, momentum {recipe.train.ema.momentum:g}); loss and acc of the raw weights")
    if state.best is not None:
        what = trainer.monitor if trainer.monitor == recipe.train.monitor else f"{trainer.monitor} (training; no val split)"
        lines.append(f"best {what}: {state.best:.4f} at epoch {state.best_epoch + 1} (checkpoints/best.keras)")
    for split, report in reports.items():
        acc, count = report.get("accuracy"), report.get("n_samples")
        where = trainer.folder.root / "report" / split / "report.html"
        on = f" on {count} images" if isinstance(count, int) else ""
        # evaluate.tta: these scores are with test-time augmentation, the epoch table's val_acc without it
        on += f" ({report['tta']} TTA)" if report.get("tta") else ""
        lines.append(f"{split}: accuracy {acc:.4f}{on}, report {where}" if isinstance(acc, float) else f"{split}: see {where}")
    epoch = f"; epoch {state.best_epoch + 1}, the best" if _restores_best(trainer, state) else ""
    lines.append(f"inference model: {trainer.folder.root / runs.INFERENCE_MODEL} (raw 0..255 images -> "
                 f"probabilities{epoch})")
    lines.append("=" * 72)
    return "\n".join(lines)


