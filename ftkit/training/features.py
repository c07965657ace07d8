"""The frozen phase, cached: run the backbone once, train the head on its pooled features.

Valid only when nothing upstream of the head can change between epochs: the backbone is frozen with its
BatchNorm layers in inference mode, and no augmentation alters the backbone's input. The features are
computed in index order (un-shuffled, in inference mode); each epoch takes them in the same
:func:`~ftkit.training.inputs.epoch_order` as the image path, so both paths see identical batches and
reach the same head weights (within float tolerance).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ftkit.head import FEATURES_LAYER


@dataclasses.dataclass
class FeatureCache:
    """Pooled backbone features and one-hot labels per split, rows in the split's index order."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]  # one-hot float32
    sample_weights: np.ndarray | None
    batch_size: int

    def dataset(self, split: str, *, order: np.ndarray | None = None, with_weights: bool = True,
                batch_size: int | None = None):
        import tensorflow as tf

        feats, labels = self.features[split], self.labels[split]
        if order is not None:
            feats, labels = feats[order], labels[order]
        tensors = (feats, labels)
        if with_weights and self.sample_weights is not None:
            tensors = (feats, labels, labels @ self.sample_weights)
        return tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size or self.batch_size).prefetch(tf.data.AUTOTUNE)


def cache_reason(*, phase, augment, enabled: bool) -> str | None:
    """Why the feature cache cannot serve ``phase`` (None when it can)."""
    if not enabled:
        return "off in the recipe (train.feature_cache: false)"
    if not phase.head_only:
        return "the backbone trains in this phase"
    if phase.train_bn:
        return "BatchNorm layers train in this phase (train_bn)"
    if augment.backend != "none" or augment.uses_mixing:
        return "augmentation changes the backbone's input every epoch"
    return None


def compute_features(assembled, data, splits: tuple[str, ...]) -> FeatureCache:
    """Run preprocess + backbone + pooling (inference mode) once over each split, un-augmented."""
    import keras
    import tensorflow as tf

    extractor = keras.Model(assembled.model.inputs, assembled.model.get_layer(FEATURES_LAYER).output)
    extract = tf.function(lambda images: extractor(images, training=False), reduce_retracing=True)
    features, labels = {}, {}
    for split in splits:
        if not data.has(split):
            continue
        chunks, ys = [], []
        for images, onehot in data.dataset(split, with_weights=False):
            chunks.append(extract(images).numpy())
            ys.append(onehot.numpy())
        features[split] = np.concatenate(chunks).astype(np.float32)
        labels[split] = np.concatenate(ys).astype(np.float32)
        if split == "train" and len(features[split]) != data.count("train"):
            # A file that failed to decode shifts every later row, and the cached epoch order would then
            # differ from the image path's; refuse rather than train on misaligned rows.
            raise ValueError(
                f"{data.count('train') - len(features[split])} training image(s) could not be decoded (see the "
                "run's skipped files); the feature cache needs every row. Fix or remove them, or set "
                f"train.feature_cache: false. Received: {len(features[split])} of {data.count('train')} images"
            )
    return FeatureCache(features=features, labels=labels, sample_weights=data.sample_weights,
                        batch_size=data.batch_size)
