"""keras.applications' EfficientNet, EfficientNetV2, MobileNetV3 and ConvNeXt as ftkit backbones.

Each builder calls the keras.applications constructor with the arguments it is given, so the models, their
ImageNet weights (downloaded and hash-checked by keras.applications itself) and their layer names are Keras'
own. The plugin adds only what ftkit needs to know about each model, as a plain dict in ``ftkit_metadata``.

These models carry their input scaling in the graph (EfficientNet: Rescaling + Normalization; the others with
``include_preprocessing=True``), so they take raw 0..255 RGB images: their ``preprocessing`` is ftkit's
``RAW_PREPROCESSING``, for which ftkit adds no normalisation layer of its own.
"""

import keras

from ftkit.backbones import RAW_PREPROCESSING

__version__ = "0.1.0"

_EFFICIENTNET_PAPER = ("Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, "
                       "ICML 2019, https://arxiv.org/abs/1905.11946")
_EFFICIENTNETV2_PAPER = ("Tan & Le, EfficientNetV2: Smaller Models and Faster Training, ICML 2021, "
                         "https://arxiv.org/abs/2104.00298")
_MOBILENETV3_PAPER = "Howard et al., Searching for MobileNetV3, ICCV 2019, https://arxiv.org/abs/1905.02244"
_CONVNEXT_PAPER = "Liu et al., A ConvNet for the 2020s, CVPR 2022, https://arxiv.org/abs/2201.03545"


def _imagenet(size):
    """The ImageNet set, declared without URLs: ftkit checks the classes, channels and (with the top) the size
    it was trained at, then passes ``weights="imagenet"`` to the builder; keras.applications downloads the file
    and checks its hash itself."""
    return {"imagenet": {"classes": 1000, "input_shape": (size, size, 3)}}


def _blocks(prefix, indices):
    """A regex for the layers of the numbered blocks ``indices`` (``expanded_conv_3_expand``, ...).

    Block 0 of MobileNetV3 has no number (``expanded_conv_depthwise``).
    """
    alternatives = [rf"{prefix}_(?!\d)" if i == 0 else rf"{prefix}_{i}_" for i in indices]
    return "(" + "|".join(alternatives) + ")"


def _efficientnet_groups(num_blocks):
    # The Normalization layer in the stem holds ImageNet's statistics as weights; Keras numbers its name per
    # session (normalization, normalization_1, ...). EfficientNetV2's Normalization is a constant (no weights).
    return [
        ["stem", r"(stem_|normalization(_\d+)?$)"],
        *[[f"block{i}", rf"block{i}[a-z]_"] for i in range(1, num_blocks + 1)],
        ["top", r"top_"],
        ["head", r"predictions$"],
    ]


# Stages end where the feature map halves (strides 4, 8, 16, 32); the indices are those of keras.applications'
# stack_fn for each model.
def _mobilenetv3_groups(stages):
    """``stages``: the block indices of each stage, in order."""
    return [
        ["stem", r"conv(_bn)?$"],
        *[[f"stage{i}", _blocks("expanded_conv", blocks)] for i, blocks in enumerate(stages, start=1)],
        ["top", r"conv_1(_bn)?$"],
        ["head", r"(conv_2|logits)$"],
    ]


_MOBILENETV3_SMALL_GROUPS = _mobilenetv3_groups([[0], [1, 2], range(3, 8), range(8, 11)])
_MOBILENETV3_LARGE_GROUPS = _mobilenetv3_groups([[0], [1, 2], range(3, 6), range(6, 12), range(12, 15)])


def _convnext_groups(prefix):
    # Stage i > 0 starts with the downsampling block before it. Without the top, keras.applications ends the
    # model in a LayerNormalization (after the pooling, if any) named by Keras' session counter; it is part of
    # the backbone ftkit fine-tunes, so it is a group of its own, not the pretrained "head" ftkit replaces.
    return [
        ["stem", rf"{prefix}_stem$"],
        ["stage1", rf"{prefix}_stage_0_"],
        ["stage2", rf"{prefix}_(downsampling_block_0$|stage_1_)"],
        ["stage3", rf"{prefix}_(downsampling_block_1$|stage_2_)"],
        ["stage4", rf"{prefix}_(downsampling_block_2$|stage_3_)"],
        ["top", r"layer_normalization(_\d+)?$"],
        ["head", rf"{prefix}_head_"],
    ]


def _metadata(family, size, layer_groups, paper, weights, *, fixed_input_with_top):
    return {
        "family": family,
        "default_input_shape": (size, size, 3),
        # keras.applications refuses anything smaller (obtain_input_shape's min_size=32; MobileNetV3 checks the
        # same itself); at 32x32 the stride-32 feature map is 1x1.
        "min_input_shape": (32, 32, 3),
        # With ImageNet weights and the top, keras.applications' EfficientNet(V2) and ConvNeXt insist on the
        # size they were trained at; MobileNetV3 loads its 224 weights at any size (global pooling), with a warning.
        "fixed_input_with_top": fixed_input_with_top,
        "preprocessing": dict(RAW_PREPROCESSING),
        "layer_groups": layer_groups,
        "paper": paper,
        "weights": weights,
    }


def _builder(name, constructor, metadata, *, include_preprocessing):
    """An ftkit builder calling ``keras.applications.<constructor>``.

    The model is always built under keras.applications' default name and renamed afterwards: Keras derives
    the ImageNet file name from ``name`` (EfficientNet, EfficientNetV2, ConvNeXt; ConvNeXt refuses another
    name outright), and ConvNeXt prefixes its layer names with it, which the layer groups match.
    """
    # Looked up on every call, not bound here, so a test can replace keras.applications' constructor.
    extra = {"include_preprocessing": True} if include_preprocessing else {}

    def build(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name=None):
        model = getattr(keras.applications, constructor)(
            include_top=include_top, weights=weights, input_tensor=input_tensor, input_shape=input_shape,
            pooling=pooling, classes=classes, classifier_activation=classifier_activation, **extra,
        )
        if name is not None:
            model.name = name
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"``keras.applications.{constructor}`` as an ftkit backbone (weights=None by default; "
                     f"weights='imagenet' downloads keras.applications' file). Takes raw 0..255 RGB images.")
    build.ftkit_metadata = metadata
    build.keras_application = constructor  # the keras.applications name, for users and tests
    return build


# (ftkit name, keras.applications constructor, default size)
_EFFICIENTNETS = [
    ("efficientnet_b0", "EfficientNetB0", 224),
    ("efficientnet_b1", "EfficientNetB1", 240),
    ("efficientnet_b2", "EfficientNetB2", 260),
    ("efficientnet_b3", "EfficientNetB3", 300),
]
_EFFICIENTNETV2S = [
    ("efficientnetv2_b0", "EfficientNetV2B0", 224),
    ("efficientnetv2_b1", "EfficientNetV2B1", 240),
    ("efficientnetv2_b2", "EfficientNetV2B2", 260),
    ("efficientnetv2_b3", "EfficientNetV2B3", 300),
]
_MOBILENETV3S = [
    ("mobilenetv3_small", "MobileNetV3Small", _MOBILENETV3_SMALL_GROUPS),
    ("mobilenetv3_large", "MobileNetV3Large", _MOBILENETV3_LARGE_GROUPS),
]
_CONVNEXTS = [("convnext_tiny", "ConvNeXtTiny"), ("convnext_small", "ConvNeXtSmall")]

BUILDERS = {}
for _name, _ctor, _size in _EFFICIENTNETS:
    BUILDERS[_name] = _builder(_name, _ctor, _metadata(
        "efficientnet", _size, _efficientnet_groups(7), _EFFICIENTNET_PAPER, _imagenet(_size), fixed_input_with_top=True,
    ), include_preprocessing=False)  # EfficientNet (v1) always has its Rescaling + Normalization
for _name, _ctor, _size in _EFFICIENTNETV2S:
    BUILDERS[_name] = _builder(_name, _ctor, _metadata(
        "efficientnetv2", _size, _efficientnet_groups(6), _EFFICIENTNETV2_PAPER, _imagenet(_size),
        fixed_input_with_top=True,
    ), include_preprocessing=True)
for _name, _ctor, _groups in _MOBILENETV3S:
    BUILDERS[_name] = _builder(_name, _ctor, _metadata(
        "mobilenetv3", 224, _groups, _MOBILENETV3_PAPER, _imagenet(224), fixed_input_with_top=False,
    ), include_preprocessing=True)
for _name, _ctor in _CONVNEXTS:
    BUILDERS[_name] = _builder(_name, _ctor, _metadata(
        "convnext", 224, _convnext_groups(_name), _CONVNEXT_PAPER, _imagenet(224), fixed_input_with_top=True,
    ), include_preprocessing=True)

# Module attributes, which the entry points in pyproject.toml name.
efficientnet_b0 = BUILDERS["efficientnet_b0"]
efficientnet_b1 = BUILDERS["efficientnet_b1"]
efficientnet_b2 = BUILDERS["efficientnet_b2"]
efficientnet_b3 = BUILDERS["efficientnet_b3"]
efficientnetv2_b0 = BUILDERS["efficientnetv2_b0"]
efficientnetv2_b1 = BUILDERS["efficientnetv2_b1"]
efficientnetv2_b2 = BUILDERS["efficientnetv2_b2"]
efficientnetv2_b3 = BUILDERS["efficientnetv2_b3"]
mobilenetv3_small = BUILDERS["mobilenetv3_small"]
mobilenetv3_large = BUILDERS["mobilenetv3_large"]
convnext_tiny = BUILDERS["convnext_tiny"]
convnext_small = BUILDERS["convnext_small"]

__all__ = ["BUILDERS", *BUILDERS]
