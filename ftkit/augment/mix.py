"""Batch-level MixUp and CutMix with soft labels.

Written with stateless ops rather than Keras' ``MixUp`` / ``CutMix`` layers because a batch's mix must
depend only on (seed, batch) for reproducibility, and the recipe needs a per-batch mixing probability and
a MixUp/CutMix switch, which those layers do not have. Each image is mixed with another image of the
same batch (a random permutation); each label row stays a convex combination, so it sums to 1 and the
loss is a categorical cross-entropy on soft labels.
"""

from __future__ import annotations

import tensorflow as tf


def _beta(seed, shape, alpha: float):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a = tf.random.stateless_gamma(shape, seed=seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, seed=seeds[1], alpha=alpha)
    return a / (a + b)


def _partners(seed, batch):
    return tf.argsort(tf.random.stateless_uniform([batch], seed=seed))


def mixup(images, labels, seed, *, alpha: float):
    """MixUp (Zhang et al. 2018): x = lam x_i + (1 - lam) x_j, same for labels; lam ~ Beta(alpha, alpha)."""
    batch = tf.shape(images)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lam = _beta(seeds[0], [batch], alpha)
    partner = _partners(seeds[1], batch)
    lam_images = tf.reshape(lam, [-1, 1, 1, 1])
    images = lam_images * images + (1.0 - lam_images) * tf.gather(images, partner)
    labels = lam[:, None] * labels + (1.0 - lam[:, None]) * tf.gather(labels, partner)
    return images, labels


def cutmix(images, labels, seed, *, alpha: float):
    """CutMix (Yun et al. 2019): paste a box of area fraction 1 - lam from a partner image; labels are
    weighted by the pasted box's actual area after clipping at the border."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    lam = _beta(seeds[0], [batch], alpha)
    cut = tf.sqrt(1.0 - lam)
    centre_y = tf.random.stateless_uniform([batch], seed=seeds[1], maxval=h)
    centre_x = tf.random.stateless_uniform([batch], seed=seeds[2], maxval=w)
    y1 = tf.clip_by_value(tf.round(centre_y - cut * h / 2), 0.0, h)
    y2 = tf.clip_by_value(tf.round(centre_y + cut * h / 2), 0.0, h)
    x1 = tf.clip_by_value(tf.round(centre_x - cut * w / 2), 0.0, w)
    x2 = tf.clip_by_value(tf.round(centre_x + cut * w / 2), 0.0, w)
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = (rows >= y1[:, None]) & (rows < y2[:, None])
    in_cols = (cols >= x1[:, None]) & (cols < x2[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]
    partner = _partners(seeds[3], batch)
    images = tf.where(mask, tf.gather(images, partner), images)
    pasted = (y2 - y1) * (x2 - x1) / (h * w)
    labels = (1.0 - pasted[:, None]) * labels + pasted[:, None] * tf.gather(labels, partner)
    return images, labels


def build_mixing(*, mixup_alpha: float | None, cutmix_alpha: float | None, mix_prob: float, switch_prob: float):
    """``fn(images, labels_onehot, seed) -> (images, soft labels)``; with probability ``mix_prob`` the
    batch is mixed, by CutMix with probability ``switch_prob`` when both are configured."""
    if mixup_alpha is None and cutmix_alpha is None:
        return None

    def apply(images, labels, seed):
        labels = tf.cast(labels, tf.float32)
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        draws = tf.random.stateless_uniform([2], seed=seeds[0])
        if mixup_alpha is None:
            use_cutmix = tf.constant(True)
        elif cutmix_alpha is None:
            use_cutmix = tf.constant(False)
        else:
            use_cutmix = draws[1] < switch_prob

        def mixed():
            return tf.cond(
                use_cutmix,
                lambda: cutmix(images, labels, seeds[1], alpha=cutmix_alpha or 1.0),
                lambda: mixup(images, labels, seeds[2], alpha=mixup_alpha or 1.0),
            )

        return tf.cond(draws[0] < mix_prob, mixed, lambda: (images, labels))

    return apply
