"""VGG (Simonyan & Zisserman, 2014): stacks of 3x3 convolutions, five max-pools, three dense layers.

Layer names, order and weight shapes are those of ``keras.applications.VGG16`` / ``VGG19`` (``block5_conv3``,
``fc1``, ``predictions``), so their ImageNet files (and any file saved from them) load unchanged. The one
difference: with the top, ``fc1_dropout`` and ``fc2_dropout`` follow ``fc1`` and ``fc2``, the paper's dropout
(Sec. 3.1), which keras.applications leaves out; they hold no weights and are inactive at inference.
"""

from __future__ import annotations

from ftkit.backbones._builder import build_backbone, with_metadata
from ftkit.backbones._metadata import CAFFE_PREPROCESSING

_WIDTHS = (64, 128, 256, 512, 512)

# -- blocks ---------------------------------------------------------------------------------------------------


def vgg_block(x, filters: int, convs: int, *, name: str):
    """``convs`` 3x3 same-padded ReLU convolutions then a 2x2 max-pool: one of VGG's five blocks."""
    from keras import layers

    for i in range(1, convs + 1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
    return layers.MaxPooling2D(2, strides=2, name=f"{name}_pool")(x)


def _classifier(x, *, classes: int, activation):
    from keras import layers

    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(4096, activation="relu", name=f"fc{i}")(x)
        # The paper regularises the first two dense layers with dropout 0.5 (Sec. 3.1); it has no weights,
        # so keras.applications' files (which leave it out) still load.
        x = layers.Dropout(0.5, name=f"fc{i}_dropout")(x)
    return layers.Dense(classes, activation=activation, name="predictions")(x)


# -- private builder ------------------------------------------------------------------------------------------


def _vgg(builder, depths: tuple[int, ...], **kwargs):
    def body(x):
        for index, (filters, convs) in enumerate(zip(_WIDTHS, depths, strict=True), start=1):
            x = vgg_block(x, filters, convs, name=f"block{index}")
        return x

    return build_backbone(builder, body=body, head=_classifier, **kwargs)


# -- metadata -------------------------------------------------------------------------------------------------

_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications"
_PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015, https://arxiv.org/abs/1409.1556"


def _metadata(*, weights: dict | None = None) -> dict:
    return {
        "family": "vgg",
        "default_input_shape": (224, 224, 3),
        "min_input_shape": (32, 32, 3),  # five 2x2 pools
        "fixed_input_with_top": True,
        "preprocessing": CAFFE_PREPROCESSING,
        "layer_groups": [
            ["stem", r"block1_"],
            ["stage1", r"block2_"],
            ["stage2", r"block3_"],
            ["stage3", r"block4_"],
            ["stage4", r"block5_"],
            ["head", r"(fc\d|predictions)$"],
        ],
        "paper": _PAPER,
        "weights": weights or {},
    }


def _imagenet(variant: str, file_hash: str, notop_file_hash: str) -> dict:
    """keras.applications' ImageNet files for ``variant`` (URLs and md5 hashes copied from its source)."""
    stem = f"{_KERAS_WEIGHTS}/{variant}/{variant}_weights_tf_dim_ordering_tf_kernels"
    return {
        "imagenet": {
            "url": f"{stem}.h5",
            "file_hash": file_hash,
            "notop_url": f"{stem}_notop.h5",
            "notop_file_hash": notop_file_hash,
            "classes": 1000,
            "input_shape": (224, 224, 3),
        }
    }


# -- variants -------------------------------------------------------------------------------------------------


@with_metadata(_metadata())
def vgg11(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
          classifier_activation="softmax", name=None):
    """VGG-11 (configuration A): 8 convolutions and 3 dense layers."""
    return _vgg(vgg11, (1, 1, 2, 2, 2), include_top=include_top, weights=weights, input_tensor=input_tensor,
                input_shape=input_shape, pooling=pooling, classes=classes,
                classifier_activation=classifier_activation, name=name)


@with_metadata(_metadata())
def vgg13(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
          classifier_activation="softmax", name=None):
    """VGG-13 (configuration B): 10 convolutions and 3 dense layers."""
    return _vgg(vgg13, (2, 2, 2, 2, 2), include_top=include_top, weights=weights, input_tensor=input_tensor,
                input_shape=input_shape, pooling=pooling, classes=classes,
                classifier_activation=classifier_activation, name=name)


@with_metadata(_metadata(weights=_imagenet("vgg16", "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc")))
def vgg16(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
          classifier_activation="softmax", name=None):
    """VGG-16 (configuration D): 13 convolutions and 3 dense layers."""
    return _vgg(vgg16, (2, 2, 3, 3, 3), include_top=include_top, weights=weights, input_tensor=input_tensor,
                input_shape=input_shape, pooling=pooling, classes=classes,
                classifier_activation=classifier_activation, name=name)


@with_metadata(_metadata(weights=_imagenet("vgg19", "cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6")))
def vgg19(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
          classifier_activation="softmax", name=None):
    """VGG-19 (configuration E): 16 convolutions and 3 dense layers."""
    return _vgg(vgg19, (2, 2, 4, 4, 4), include_top=include_top, weights=weights, input_tensor=input_tensor,
                input_shape=input_shape, pooling=pooling, classes=classes,
                classifier_activation=classifier_activation, name=name)
