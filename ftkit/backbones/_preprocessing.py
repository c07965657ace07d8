"""The layer that turns raw 0..255 images into what a backbone expects, built from its metadata.

The fine-tuning engine puts it in front of the backbone, so saved and exported models take raw images and
carry their own normalisation. ``keras.layers.Normalization`` covers mean/std but not the channel reorder
of keras.applications' "caffe" mode (RGB -> BGR), hence this small layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from ftkit.backbones._metadata import BackboneInfo

CHANNEL_ORDERS = ("RGB", "BGR")


@keras.saving.register_keras_serializable(package="ftkit")
class Preprocess(keras.layers.Layer):
    """``y = (x[..., order] * scale - mean) / std`` for images ``x`` in 0..255 given in RGB order.

    ``channel_order="BGR"`` reverses the channels first (keras.applications' caffe mode), so ``mean`` and
    ``std`` are given in the order the backbone sees them.
    """

    def __init__(self, scale: float, mean: Sequence[float], std: Sequence[float], channel_order: str = "RGB",
                 **kwargs):
        super().__init__(**kwargs)
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}. Received: channel_order={channel_order!r}")
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel. Received: mean={mean}, std={std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive. Received: std={std}")
        self.scale = float(scale)
        self.mean = mean
        self.std = std
        self.channel_order = channel_order

    def call(self, inputs):
        channels = inputs.shape[-1]
        # Checked on every call, not in build(): a built layer fed other images would broadcast silently.
        if channels is not None and channels != len(self.mean):
            raise ValueError(
                f"Preprocess has statistics for {len(self.mean)} channels but the images have {channels}. "
                f"Received: input_shape={tuple(inputs.shape)}"
            )
        x = ops.cast(inputs, self.compute_dtype)
        if self.channel_order == "BGR":
            x = ops.flip(x, axis=-1)
        # Folded into one multiply-add: (x * scale - mean) / std == x * (scale / std) - mean / std.
        gain = ops.convert_to_tensor([self.scale / s for s in self.std], dtype=self.compute_dtype)
        offset = ops.convert_to_tensor([m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=self.compute_dtype)
        return x * gain - offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
        }


def preprocessing_layer(info: BackboneInfo, *, name: str | None = None) -> Preprocess:
    """The :class:`Preprocess` layer for the backbone ``info`` describes."""
    prep = info.preprocessing
    return Preprocess(scale=prep["scale"], mean=prep["mean"], std=prep["std"], channel_order=prep["channel_order"],
                      name=name or f"{info.name}_preprocess")
