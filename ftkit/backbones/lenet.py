"""LeNet-5 (LeCun et al., 1998): two convolution/subsampling pairs, a convolutional C5 and two dense layers.

Kept from the MNIST notebook: ReLU activations and average pooling (the paper's scaled tanh, trainable
subsampling and RBF output units are not used), and full connectivity in C3 (the paper's table connects
each C3 map to only some S2 maps; 61,706 parameters at 32x32 with 10 classes count the full version).
"""

from __future__ import annotations

from ftkit.backbones._builder import build_backbone, with_metadata

# The paper's input field: MNIST's 28x28 digits are centred in a 32x32 field (Sec. III.A).
_FIELD = 32

# -- blocks ---------------------------------------------------------------------------------------------------


def pad_to_field(x, *, size: int = _FIELD):
    """Zero-pad a smaller image to ``size`` x ``size``, centred, as the paper does with 28x28 MNIST digits.

    On 28x28 input this equals the notebook's ``padding="same"`` C1, and keeps C5 at 1x1 (61,706 parameters).
    """
    from keras import layers

    height, width = x.shape[1], x.shape[2]
    if height >= size and width >= size:
        return x
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    return layers.ZeroPadding2D(((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)),
                                name="field_pad")(x)


def _classifier(x, *, classes: int, activation):
    from keras import layers

    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(84, activation="relu", name="f6")(x)
    return layers.Dense(classes, activation=activation, name="predictions")(x)


# -- private builder ------------------------------------------------------------------------------------------


def _lenet(builder, **kwargs):
    from keras import layers

    def body(x):
        x = pad_to_field(x)
        x = layers.Conv2D(6, 5, activation="relu", name="c1")(x)
        x = layers.AveragePooling2D(2, name="s2")(x)
        x = layers.Conv2D(16, 5, activation="relu", name="c3")(x)
        x = layers.AveragePooling2D(2, name="s4")(x)
        # C5 is a convolution, not a dense layer, so a larger input gives a larger map (paper, Sec. II.B).
        return layers.Conv2D(120, 5, activation="relu", name="c5")(x)

    return build_backbone(builder, body=body, head=_classifier, **kwargs)


# -- metadata -------------------------------------------------------------------------------------------------

_METADATA = {
    "family": "lenet",
    "default_input_shape": (32, 32, 1),
    "min_input_shape": (28, 28, 1),  # smaller images are padded to the 32x32 field anyway; 28 is MNIST's
    "fixed_input_with_top": False,
    "variable_input_size": False,  # the body pads to its 32x32 field, so it needs to know the size
    "preprocessing": {"scale": 1.0 / 255.0, "mean": (0.1307,), "std": (0.3081,), "channel_order": "RGB"},
    "layer_groups": [["stem", r"c1$"], ["stage1", r"c3$"], ["stage2", r"c5$"], ["head", r"(f6|predictions)$"]],
    "paper": "LeCun, Bottou, Bengio & Haffner, Gradient-Based Learning Applied to Document Recognition, "
    "Proc. IEEE 86(11), 1998, https://doi.org/10.1109/5.726791",
}

# -- variants -------------------------------------------------------------------------------------------------


@with_metadata(_METADATA)
def lenet5(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
           classifier_activation="softmax", name=None):
    """LeNet-5 for 32x32 (or 28x28, padded) grayscale digits."""
    return _lenet(lenet5, include_top=include_top, weights=weights, input_tensor=input_tensor,
                  input_shape=input_shape, pooling=pooling, classes=classes,
                  classifier_activation=classifier_activation, name=name)
