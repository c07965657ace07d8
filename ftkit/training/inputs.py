"""The engine's one call site into the data and augmentation stages.

The engine owns the order of the training data: each epoch's order is a permutation drawn from
``(seed, epoch)`` (:func:`epoch_order`), handed to ``ftkit.data.make_dataset`` as an already ordered split
with ``shuffle=False``. That is what lets a resumed run see the same batches as an uninterrupted one, and
the feature cache see the same batches as the image path.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ftkit.data.sources import UNKNOWN_CLASS, unknown_class
from ftkit.recipe import DataConfig


@dataclasses.dataclass
class TrainingData:
    """The scanned splits and everything needed to turn them into batches."""

    index: object  # ftkit.data.DataIndex with "train" and optionally "val", "test"
    image_size: tuple[int, int]
    channels: int
    resize: str
    batch_size: int
    seed: int
    oversample: bool
    sample_weights: np.ndarray | None  # per class, or None

    @property
    def class_names(self) -> list[str]:
        return list(self.index.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.index.class_names)

    def has(self, split: str) -> bool:
        return split in self.index.splits and len(self.index.splits[split]) > 0

    def count(self, split: str) -> int:
        return len(self.index.splits[split]) if self.has(split) else 0

    def train_order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.index["train"].labels, seed=self.seed, epoch=epoch, oversample=self.oversample)

    def steps(self, split: str, *, epoch: int = 0) -> int:
        n = len(self.train_order(epoch)) if split == "train" else self.count(split)
        return max(1, -(-n // self.batch_size))

    def ordered(self, split: str, order: np.ndarray | None = None):
        """The index with ``split`` reordered (``order`` rows), so make_dataset(shuffle=False) keeps it."""
        data = self.index[split]
        if order is None:
            return self.index
        return dataclasses.replace(self.index, splits={**self.index.splits, split: data.subset(order, split)})

    def dataset(self, split: str, *, order: np.ndarray | None = None, augmentation=None, with_weights: bool = True,
                batch_size: int | None = None):
        """Batches of ``(images float32 0..255, one-hot labels[, sample weights])`` in the given order.

        ``batch_size`` overrides the recipe's (global) batch: a distributed run asks for per-replica chunks.
        """
        import tensorflow as tf

        from ftkit.data import make_dataset

        ds = make_dataset(self.ordered(split, order), split, image_size=self.image_size, channels=self.channels,
                          resize=self.resize, batch_size=batch_size or self.batch_size, shuffle=False, one_hot=True,
                          per_image_fn=augmentation.per_image_fn if augmentation else None)
        if augmentation is not None:
            ds = augmentation.augment_batches(ds, training=True)
        if with_weights and self.sample_weights is not None:
            weights = tf.constant(self.sample_weights, tf.float32)
            ds = ds.map(lambda x, y: (x, y, tf.linalg.matvec(y, weights)))
        return ds


def epoch_order(labels: np.ndarray, *, seed: int, epoch: int, oversample: bool = False) -> np.ndarray:
    """Row order of one training epoch, a pure function of ``(seed, epoch)``.

    With ``oversample``, every class is drawn (with replacement for the smaller ones) up to the largest
    class's count, so each epoch sees balanced classes.
    """
    rng = np.random.default_rng([seed, epoch])
    labels = np.asarray(labels)
    if not oversample:
        return rng.permutation(len(labels))
    classes = np.unique(labels)
    target = max(int((labels == c).sum()) for c in classes)
    rows = [rng.choice(np.flatnonzero(labels == c), size=target, replace=int((labels == c).sum()) < target)
            for c in classes]
    return rng.permutation(np.concatenate(rows))


def load_data(config: DataConfig, *, image_shape: tuple[int, int, int], class_weight=None) -> TrainingData:
    """Scan the recipe's data, select classes and samples, and check it can be trained on."""
    from ftkit.data import scan
    from ftkit.data.sources import enforce, scan_unchecked

    # Under data.policy: strict every image is decoded now, and every source's bad files are listed together
    # (enforce, below) rather than those of the first source that has one.
    verify = "full" if config.policy == "strict" else None
    index = scan_unchecked(config.train, val_fraction=0.0 if config.val else config.val_fraction,
                           test_fraction=0.0 if config.test else config.test_fraction, seed=config.seed,
                           class_names=config.classes, root=config.root, verify=verify)
    check_classes(index, config.classes)
    enforce(index, policy="skip")  # unusable training data stops here, before the other sources are read
    for split, path in (("val", config.val), ("test", config.test)):
        if path:
            extra = scan(path, val_fraction=0.0, seed=config.seed, class_names=index.class_names, root=config.root,
                         verify=verify)
            index.splits[split] = extra["train"].subset(np.arange(len(extra["train"])), split)
            index.skipped.extend(s._replace(split=split) for s in extra.skipped)
    enforce(index, policy=config.policy)
    check_splits(index, selected=config.classes is not None, source=config.train)
    if config.samples_per_class:
        index.splits["train"] = _sample(index["train"], config.samples_per_class, seed=config.seed,
                                        class_names=index.class_names)
    if config.max_samples_per_class:
        index.splits["train"] = _sample(index["train"], config.max_samples_per_class, seed=config.seed,
                                        class_names=index.class_names, at_most=True)
    if config.eval_samples_per_class:
        for split in ("val", "test"):
            if split in index.splits:
                index.splits[split] = _sample(index[split], config.eval_samples_per_class, seed=config.seed,
                                              class_names=index.class_names, at_most=True)
    return TrainingData(index=index, image_size=tuple(image_shape[:2]), channels=int(image_shape[2]),
                        resize=config.resize, batch_size=config.batch_size, seed=config.seed,
                        oversample=config.oversample,
                        sample_weights=class_weights(class_weight, index["train"].labels, index.class_names))


def check_classes(index, classes) -> None:
    """Refuse a data.classes entry that names no class of the training source (a typo): it would get an output
    with no image to learn from while the class meant is dropped. Checked before the data's own problems, which
    such a typo turns into a misleading "a single class"."""
    from ftkit.data.sources import classes_not_in_source

    why = classes_not_in_source(index) if classes is not None else ""
    if why:
        raise ValueError(f"data.classes: {why} Received: data.classes={list(classes)!r}")


def check_splits(index, *, selected: bool, source: str) -> None:
    """Refuse data that cannot be trained on, before any model is built."""
    if "train" not in index.splits or len(index["train"]) == 0:
        raise ValueError(f"The training split is empty: no usable image was found. Received: data.train={source!r}")
    present = np.unique(index["train"].labels)
    if len(present) < 2:
        raise ValueError(f"The training split has {len(present)} class; a classifier needs at least 2. "
                         f"Received: classes {[index.class_names[i] for i in present]}")
    if selected:
        return  # classes outside data.classes are dropped on purpose
    for split in ("val", "test"):
        extra = sorted({unknown_class(s.detail) for s in index.skipped
                        if s.split == split and s.reason == UNKNOWN_CLASS})
        if extra:
            raise ValueError(
                f"The {split} split has classes the training split does not have: {extra}; a model trained on "
                f"{index.class_names} cannot be scored on them.{_near_names(extra, index.class_names)} Remove "
                f"them or list the classes to use in data.classes. Received: {split} classes {extra}"
            )


def _near_names(names: list[str], class_names: list[str]) -> str:
    """" Did you mean ...?" for folder names that differ from a training class only by case or spaces."""
    known = {name.strip().lower(): name for name in class_names}
    pairs = []
    for name in names:
        if name.strip().lower() in known:
            pairs.append(f"{name!r} -> {known[name.strip().lower()]!r}")
    return f" Differing only by case or spaces: {', '.join(pairs)}." if pairs else ""


def _sample(split, n: int, *, seed: int, class_names=(), at_most: bool = False):
    rows = []
    for label in np.unique(split.labels):
        candidates = np.flatnonzero(split.labels == label)
        if len(candidates) < n and not at_most:
            raise ValueError(
                f"data.samples_per_class={n} but class {class_names[label]!r} has only {len(candidates)} "
                f"{split.name} images. Received: samples_per_class={n}"
            )
        picked = np.random.default_rng([seed, int(label)]).permutation(candidates)[:n]
        rows.append(picked)
    return split.subset(np.sort(np.concatenate(rows)), split.name)


def class_weights(spec, labels: np.ndarray, class_names: list[str]) -> np.ndarray | None:
    """Per-class loss weights: ``"auto"`` (scikit-learn's balanced weights) or ``{class name: weight}``."""
    if spec is None:
        return None
    if spec == "auto":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        weights = np.ones(len(class_names))
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
        return weights.astype(np.float32)
    unknown = sorted(set(spec) - set(class_names))
    if unknown:
        raise ValueError(f"train.class_weight names classes that do not exist: {unknown}; the classes are "
                         f"{class_names}. Received: class_weight={spec}")
    return np.array([float(spec.get(name, 1.0)) for name in class_names], np.float32)


def split_ids(data: TrainingData, split: str) -> list[str]:
    """Stable identifiers of a split's rows for reports: file paths, or ``test[i]`` (the index in MNIST's arrays)
    for in-memory data."""
    return data.index[split].ids()
