"""GoogLeNet / Inception v1 (Szegedy et al., 2014): a stem and nine Inception modules, with the paper's
two auxiliary classifiers after inception 4a and 4d.

Channel widths are the paper's Table 1. Following the paper, every convolution has a ReLU and no batch
normalisation. Its local response normalisation (after pool1 and conv2) is left out: it has no weights and,
per Simonyan & Zisserman (VGG paper, Sec. 4.1), brings nothing on ImageNet. Pools use "same" padding, which
gives the paper's map sizes (112, 56, 28, 14, 7 at 224x224).
"""

from __future__ import annotations

from ftkit.backbones._builder import build_backbone, validate_builder_args, with_metadata
from ftkit.backbones._metadata import IMAGENET_PREPROCESSING, info_from_builder

# Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); outputs 256, 480 | 512 x3, 528, 832 | 832, 1024.
_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
AUX_TAPS = ("inception4a_output", "inception4d_output")
# The aux head's 5x5 average pool (stride 3, valid) needs a 5x5 map at 4a/4d (total stride 16 with "same"
# padding: ceil(65 / 16) = 5), i.e. an input of 65x65 or more.
_AUX_MIN_MAP = 5
_AUX_MIN_INPUT = 65

# -- blocks ---------------------------------------------------------------------------------------------------


def conv(x, filters: int, kernel: int, *, strides: int = 1, name: str):
    from keras import layers

    return layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu", name=name)(x)


def inception_module(x, widths: tuple[int, ...], *, name: str):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1) concatenated on channels."""
    from keras import layers

    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = widths
    branch1 = conv(x, n1x1, 1, name=f"{name}_1x1")
    branch2 = conv(conv(x, n3x3_reduce, 1, name=f"{name}_3x3_reduce"), n3x3, 3, name=f"{name}_3x3")
    branch3 = conv(conv(x, n5x5_reduce, 1, name=f"{name}_5x5_reduce"), n5x5, 5, name=f"{name}_5x5")
    branch4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch4 = conv(branch4, pool_proj, 1, name=f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_output")([branch1, branch2, branch3, branch4])


def aux_classifier(x, classes: int, *, name: str, activation=None):
    """The paper's auxiliary classifier (Sec. 5), fed from inception 4a or 4d.

    5x5/3 average pool, 1x1 convolution with 128 filters and ReLU, dense 1024 with ReLU, dropout 0.7, dense
    ``classes``. Public so the fine-tuning engine can attach it to the ``aux_taps`` of a headless backbone
    (the paper weights these losses by 0.3 during training and drops the heads at inference).
    """
    from keras import layers

    height, width = x.shape[1], x.shape[2]
    if height is None or width is None or height < _AUX_MIN_MAP or width < _AUX_MIN_MAP:
        raise ValueError(
            f"aux_classifier {name!r}: the 5x5 average pool needs a feature map of at least "
            f"{_AUX_MIN_MAP}x{_AUX_MIN_MAP} (an input of {_AUX_MIN_INPUT}x{_AUX_MIN_INPUT} or more). Received: feature map {tuple(x.shape[1:])}"
        )
    x = layers.AveragePooling2D(5, strides=3, name=f"{name}_pool")(x)
    x = layers.Conv2D(128, 1, activation="relu", name=f"{name}_conv")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    x = layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return layers.Dense(classes, activation=activation, name=f"{name}_predictions")(x)


def _stem(x):
    from keras import layers

    x = conv(x, 64, 7, strides=2, name="conv1_7x7")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    # conv2 reads pool1's output (the MNIST notebook wired it to the input image by mistake).
    x = conv(x, 64, 1, name="conv2_3x3_reduce")
    x = conv(x, 192, 3, name="conv2_3x3")
    return layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)


def _classifier(x, *, classes: int, activation):
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # the paper's 7x7/1 average pool at 224x224
    x = layers.Dropout(0.4, name="dropout")(x)
    return layers.Dense(classes, activation=activation, name="predictions")(x)


# -- private builder ------------------------------------------------------------------------------------------


def _googlenet(builder, *, aux_logits: bool, **kwargs):
    from keras import layers

    if aux_logits and not kwargs["include_top"]:
        raise ValueError(
            "googlenet: aux_logits=True adds auxiliary classifiers to the classification head, so it needs "
            "include_top=True; for a headless backbone attach ftkit.backbones.googlenet.aux_classifier to the "
            f"layers named in the metadata's aux_taps {AUX_TAPS}. Received: aux_logits=True, include_top=False"
        )
    if aux_logits:  # check the aux heads' size limit before building anything
        checked = {k: v for k, v in kwargs.items() if k != "name"}
        shape = validate_builder_args(info_from_builder(builder.__name__, builder), **checked)
        if min(shape[:2]) < _AUX_MIN_INPUT:
            raise ValueError(
                f"googlenet: aux_logits=True needs an input of at least {_AUX_MIN_INPUT}x{_AUX_MIN_INPUT} (the auxiliary heads' 5x5 pool). "
                f"Received: input_shape={shape}"
            )
    taps = {}

    def body(x):
        x = _stem(x)
        for key in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
            x = inception_module(x, _MODULES[key], name=f"inception{key}")
            taps[f"inception{key}_output"] = x
            if key in ("3b", "4e"):
                x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{key[0]}")(x)
        return x

    def head(x, *, classes, activation):
        main = _classifier(x, classes=classes, activation=activation)
        if not aux_logits:
            return main
        aux = [aux_classifier(taps[tap], classes, name=f"aux{i}", activation=activation)
               for i, tap in enumerate(AUX_TAPS, start=1)]
        return [main, *aux]

    return build_backbone(builder, body=body, head=head, **kwargs)


# -- metadata -------------------------------------------------------------------------------------------------

_METADATA = {
    "family": "googlenet",
    "default_input_shape": (224, 224, 3),
    "min_input_shape": (32, 32, 3),
    "fixed_input_with_top": False,
    "preprocessing": IMAGENET_PREPROCESSING,
    "layer_groups": [
        ["stem", r"conv[12]_"],
        ["stage1", r"inception3"],
        ["stage2", r"inception4"],
        ["stage3", r"inception5"],
        ["head", r"(predictions$|aux\d_)"],
    ],
    "paper": "Szegedy et al., Going Deeper with Convolutions, CVPR 2015, https://arxiv.org/abs/1409.4842",
    "aux_taps": AUX_TAPS,
}

# -- variants -------------------------------------------------------------------------------------------------


@with_metadata(_METADATA)
def googlenet(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name=None, *, aux_logits=False):
    """GoogLeNet; with ``aux_logits=True`` (and the top) the model outputs ``[main, aux1, aux2]``."""
    return _googlenet(googlenet, aux_logits=aux_logits, include_top=include_top, weights=weights,
                      input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                      classifier_activation=classifier_activation, name=name)
