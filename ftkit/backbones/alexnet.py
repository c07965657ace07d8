"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012), one-tower: five convolutions, three dense layers.

The paper splits the network over two GPUs; this is the single-tower form with every layer at full width
(62,378,344 parameters at 227x227x3, 1000 classes). Local response normalisation is left out: it has no
weights, and Simonyan & Zisserman (VGG paper, Sec. 4.1) found it does not help on ImageNet while costing
memory and time.
"""

from __future__ import annotations

from ftkit.backbones._builder import build_backbone, with_metadata
from ftkit.backbones._metadata import IMAGENET_PREPROCESSING

# -- blocks ---------------------------------------------------------------------------------------------------


def conv_pool(x, filters: int, kernel: int, *, strides: int = 1, padding: str, name: str, pool_name: str | None):
    """A ReLU convolution, then (if ``pool_name``) the paper's overlapping 3x3/2 max-pool."""
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, activation="relu", name=name)(x)
    if pool_name:
        x = layers.MaxPooling2D(3, strides=2, name=pool_name)(x)
    return x


def _classifier(x, *, classes: int, activation):
    from keras import layers

    x = layers.Flatten(name="flatten")(x)
    for index in (6, 7):
        x = layers.Dense(4096, activation="relu", name=f"fc{index}")(x)
        x = layers.Dropout(0.5, name=f"fc{index}_dropout")(x)  # the paper's dropout on fc6 and fc7
    return layers.Dense(classes, activation=activation, name="predictions")(x)


# -- private builder ------------------------------------------------------------------------------------------


def _alexnet(builder, **kwargs):
    def body(x):
        # 227 -> 55 -> 27 with valid padding; the paper's "224" does not divide (a well-known erratum).
        x = conv_pool(x, 96, 11, strides=4, padding="valid", name="conv1", pool_name="pool1")
        x = conv_pool(x, 256, 5, padding="same", name="conv2", pool_name="pool2")
        x = conv_pool(x, 384, 3, padding="same", name="conv3", pool_name=None)
        x = conv_pool(x, 384, 3, padding="same", name="conv4", pool_name=None)
        return conv_pool(x, 256, 3, padding="same", name="conv5", pool_name="pool5")

    return build_backbone(builder, body=body, head=_classifier, **kwargs)


# -- metadata -------------------------------------------------------------------------------------------------

_METADATA = {
    "family": "alexnet",
    "default_input_shape": (227, 227, 3),
    # conv1 (11/4, valid) and three 3x3/2 valid pools: 67 is the smallest size leaving a 1x1 map.
    "min_input_shape": (67, 67, 3),
    "fixed_input_with_top": True,
    "preprocessing": IMAGENET_PREPROCESSING,
    "layer_groups": [
        ["stem", r"conv1$"],
        ["stage1", r"conv2$"],
        ["stage2", r"conv[345]$"],
        ["head", r"(fc\d|predictions)$"],
    ],
    "paper": "Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks, "
    "NeurIPS 2012, https://papers.nips.cc/paper/4824",
}

# -- variants -------------------------------------------------------------------------------------------------


@with_metadata(_METADATA)
def alexnet(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
            classifier_activation="softmax", name=None):
    """AlexNet, one tower, 227x227 input."""
    return _alexnet(alexnet, include_top=include_top, weights=weights, input_tensor=input_tensor,
                    input_shape=input_shape, pooling=pooling, classes=classes,
                    classifier_activation=classifier_activation, name=name)
