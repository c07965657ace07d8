"""Augmentation stage: the recipe's ``augment`` section turned into per-image and per-batch functions.

``build_augmentation`` returns an ``Augmentation`` whose ``per_image_fn`` runs in the tf.data map before
batching and whose ``per_batch_fn`` runs after batching; see docs/ARCHITECTURE.md. The albumentations back
end runs a leading RandomResizedCrop in the graph per image and the rest of its pipeline per batch
(``ftkit.augment.albumentations_backend``). The keras back end runs a leading random resized crop and flips per image as one
in-graph resample of the decoded image (it can stand in for the loader's resize: ``per_image_fn`` accepts
any input size and returns ``image_size``), and every other op per batch; MixUp/CutMix are per batch. Both
take an optional stateless ``seed`` (int ``[2]``), into which the recipe's seed is folded;
``ftkit.data.make_dataset`` (which also hands ``per_image_fn`` the decoded image when the policy starts with
a random resized crop: ``per_image_fn.takes_decoded``, and for JPEGs in either back end only the crop
window: ``per_image_fn.crop_plan``), ``augment_images`` and ``augment_batches`` feed them
one seed per element from ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so the same
seed gives the same augmented batches (in order, also with parallel calls) and each epoch still sees new augmentations.
Validation, test and prediction data are never augmented (``training=False`` returns the data as is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftkit.augment.config import OPS, AugmentConfig, CutMixConfig, MixUpConfig, parse_op

__all__ = [
    "OPS",
    "POLICIES",
    "AugmentConfig",
    "Augmentation",
    "CutMixConfig",
    "MixUpConfig",
    "build_augmentation",
    "parse_op",
    "standard_policy",
]

# Seed-pair second words, so the image and batch stages draw independent numbers from one element seed.
_IMAGE_STAGE, _BATCH_STAGE = 1, 2


@dataclass(frozen=True)
class Augmentation:
    """What the data pipeline and the training engine apply.

    ``per_image_fn(image [H,W,C], seed=None) -> float32 [*image_size, C]`` or None;
    ``per_batch_fn(images [B,H,W,C], labels_onehot [B,K], seed=None) -> (images, labels)`` or None;
    ``uses_mixing``: labels become soft (MixUp/CutMix), so the loss must take probabilities;
    ``ordered_batches``: some batch ops draw from a stateful layer generator and reproduce only in order.
    """

    per_image_fn: Callable | None
    per_batch_fn: Callable | None
    uses_mixing: bool
    seed: int
    ordered_batches: bool = False

    def augment_images(self, dataset, *, training: bool):
        """Map ``per_image_fn`` over an unbatched dataset of ``image`` or ``(image, *rest)`` elements."""
        if not training or self.per_image_fn is None:
            return dataset
        return self._map(dataset, self.per_image_fn, stage=_IMAGE_STAGE, parallel=True)

    def augment_batches(self, dataset, *, training: bool):
        """Map ``per_batch_fn`` over a batched dataset of ``(images, labels_onehot)``."""
        if not training or self.per_batch_fn is None:
            return dataset
        return self._map(dataset, self.per_batch_fn, stage=_BATCH_STAGE, parallel=not self.ordered_batches)

    def _map(self, dataset, fn, *, stage: int, parallel: bool):
        import tensorflow as tf

        seeds = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True)

        def apply(element, seed):
            seed = tf.stack([seed, tf.constant(stage, tf.int64)])
            if isinstance(element, tuple):
                return fn(*element, seed=seed) if stage == _BATCH_STAGE else (fn(element[0], seed=seed), *element[1:])
            return fn(element, seed=seed)

        pairs = tf.data.Dataset.zip((dataset, seeds))
        if not parallel:
            return pairs.map(apply)
        return pairs.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def build_augmentation(
    config: AugmentConfig | dict[str, Any], *, image_size: tuple[int, int], num_classes: int, seed: int | None = None,
    channels: int = 3,
) -> Augmentation:
    """Build the recipe's augmentation for images of ``image_size`` (H, W) with ``channels``; ``seed`` overrides
    the recipe's. An albumentations pipeline that fails on such an image raises ``ValueError`` here."""
    import tensorflow as tf

    from ftkit.augment.keras_backend import (
        STATELESS_OPS,
        build_batch_ops,
        build_image_resample,
        split_resample,
    )
    from ftkit.augment.mix import build_mixing

    if not isinstance(config, AugmentConfig):
        config = AugmentConfig.model_validate(config)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
    seed = config.seed if seed is None else seed
    image_size = (int(image_size[0]), int(image_size[1]))
    generator = tf.random.Generator.from_seed(seed)

    def fallback_seed():
        return generator.make_seeds(1)[:, 0]

    def element_seed(given):
        """The caller's per-element/per-batch seed with the recipe's seed folded in, so both matter."""
        if given is None:
            return fallback_seed()
        return tf.random.experimental.stateless_fold_in(tf.cast(given, tf.int64), seed)

    per_image_fn = None
    ops_fn = None
    if config.backend == "albumentations":
        from ftkit.augment.albumentations_backend import build_albumentations

        image_fn, ops_fn = build_albumentations(config.albumentations, image_size=image_size,
                                                crop_in_graph=config.crop_in_graph, channels=channels)
        if image_fn is not None:
            per_image_fn = _seeded_image_fn(image_fn, element_seed)
    if config.backend == "keras":
        resample_ops, batch_ops = split_resample(config.ops)
        if resample_ops:
            image_fn = build_image_resample(resample_ops, image_size=image_size)
            per_image_fn = _seeded_image_fn(image_fn, element_seed)
        if batch_ops:
            ops_fn = build_batch_ops(batch_ops, image_size=image_size, seed=seed)
    mix_fn = build_mixing(
        mixup_alpha=config.mixup.alpha if config.mixup else None,
        cutmix_alpha=config.cutmix.alpha if config.cutmix else None,
        mix_prob=config.mix_prob,
        switch_prob=config.switch_prob,
    )
    per_batch_fn = None
    if ops_fn or mix_fn:

        def per_batch_fn(images, labels, seed=None):
            seeds = tf.unstack(tf.random.experimental.stateless_split(element_seed(seed), 2))
            images = ops_fn(images, seeds[0]) if ops_fn else tf.cast(images, tf.float32)
            labels = tf.cast(labels, tf.float32)
            return mix_fn(images, labels, seeds[1]) if mix_fn else (images, labels)

    ordered = any(name not in STATELESS_OPS for name, _ in config.ops)
    if per_batch_fn is not None:
        per_batch_fn.ordered = ordered  # make_dataset then runs it one batch at a time, in order
    return Augmentation(
        per_image_fn=per_image_fn,
        per_batch_fn=per_batch_fn,
        uses_mixing=config.uses_mixing,
        seed=seed,
        ordered_batches=ordered,
    )


def _seeded_image_fn(image_fn, element_seed):
    """``image_fn(image, seed)`` as ``per_image_fn(image, seed=None)``, the recipe's seed folded in; its
    ``takes_decoded`` and ``crop_plan`` carried over for make_dataset."""
    def per_image_fn(image, seed=None):
        return image_fn(image, element_seed(seed))

    per_image_fn.takes_decoded = bool(getattr(image_fn, "takes_decoded", False))
    crop_plan = getattr(image_fn, "crop_plan", None)
    if crop_plan is not None:
        per_image_fn.crop_plan = lambda shape, seed: crop_plan(shape, element_seed(seed))
    return per_image_fn


def standard_policy(backend: str, *, image_size: tuple[int, int] = (224, 224), seed: int = 0) -> AugmentConfig:
    """Random resized crop + horizontal flip + colour jitter, for either back end.

    timm's ImageNet training default (``transforms_imagenet_train``): an Inception crop of 8-100% of the area
    at aspect 3/4..4/3, a flip on half the images, and brightness, contrast and saturation each a factor in
    1 +/- 0.4, hue left alone (timm's ``color_jitter=0.4`` expands to those three factors, no hue)."""
    jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0}
    if backend == "keras":
        ops = [{"random_resized_crop": {}}, {"flip": {"mode": "horizontal"}}, {"color_jitter": jitter}]
        return AugmentConfig(backend="keras", seed=seed, ops=ops)
    if backend == "albumentations":
        import albumentations as A

        pipeline = A.Compose([
            A.RandomResizedCrop(size=tuple(image_size), scale=(0.08, 1.0), ratio=(0.75, 4 / 3)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(**jitter, p=1.0),
        ])
        return AugmentConfig(backend="albumentations", seed=seed, albumentations=A.to_dict(pipeline))
    raise ValueError(f"standard_policy has back ends 'keras' and 'albumentations'. Received: backend={backend!r}")


POLICIES: dict[str, Callable[..., AugmentConfig]] = {"standard": standard_policy}
