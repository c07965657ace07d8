"""ResNet v1 (He et al., 2015): a strided stem, four stages of residual blocks, global average pooling.

ResNet-50/101/152 use the bottleneck block exactly as ``keras.applications.ResNet50`` builds it (stride on the
first 1x1 convolution, convolutions with biases, layer names such as ``conv2_block1_1_conv``), so its
ImageNet files load unchanged. ResNet-18/34 use the basic block as torchvision builds it (no convolution
biases, explicit symmetric padding before strided 3x3 convolutions), which keras.applications lacks.
"""

from __future__ import annotations

from ftkit.backbones._builder import build_backbone, with_metadata
from ftkit.backbones._metadata import CAFFE_PREPROCESSING, IMAGENET_PREPROCESSING

# keras.applications' BatchNormalization epsilon; torchvision's is 1e-5.
_KERAS_BN_EPSILON = 1.001e-5
_TORCH_BN_EPSILON = 1e-5

# -- blocks ---------------------------------------------------------------------------------------------------


def bottleneck_block(x, filters: int, *, stride: int = 1, conv_shortcut: bool = True, name: str):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection; keras.applications' ``residual_block_v1``."""
    from keras import layers

    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_KERAS_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=_KERAS_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=_KERAS_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(epsilon=_KERAS_BN_EPSILON, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def basic_block(x, filters: int, *, stride: int = 1, conv_shortcut: bool = False, name: str):
    """Two 3x3 convolutions with a residual connection (the block of ResNet-18/34)."""
    from keras import layers

    if conv_shortcut:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_TORCH_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    if stride > 1:
        # Keras' "same" pads a strided convolution asymmetrically (0 before, 1 after); torchvision pads 1 on
        # both sides. Explicit padding keeps the torchvision geometry, so its weights would port too.
        x = layers.ZeroPadding2D(1, name=f"{name}_1_pad")(x)
        x = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_1_conv")(x)
    else:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=_TORCH_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=_TORCH_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def stem(x, *, use_bias: bool, epsilon: float):
    """7x7/2 convolution and 3x3/2 max-pool: 224 -> 56."""
    from keras import layers

    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=epsilon, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def _classifier(x, *, classes: int, activation):
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return layers.Dense(classes, activation=activation, name="predictions")(x)


# -- private builder ------------------------------------------------------------------------------------------

_WIDTHS = (64, 128, 256, 512)


def _resnet(builder, depths: tuple[int, ...], *, bottleneck: bool, **kwargs):
    block = bottleneck_block if bottleneck else basic_block

    def body(x):
        x = stem(x, use_bias=bottleneck, epsilon=_KERAS_BN_EPSILON if bottleneck else _TORCH_BN_EPSILON)
        for stage, (filters, blocks) in enumerate(zip(_WIDTHS, depths, strict=True)):
            stride = 1 if stage == 0 else 2
            for index in range(1, blocks + 1):
                first = index == 1
                # A bottleneck stage always starts with a projection (64 -> 256 channels even at stride 1);
                # a basic stage only when it downsamples.
                x = block(x, filters, stride=stride if first else 1,
                          conv_shortcut=first and (bottleneck or stride > 1), name=f"conv{stage + 2}_block{index}")
        return x

    return build_backbone(builder, body=body, head=_classifier, **kwargs)


# -- metadata -------------------------------------------------------------------------------------------------

_PAPER = "He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016, https://arxiv.org/abs/1512.03385"
_LAYER_GROUPS = [
    ["stem", r"(conv1_|pool1_)"],
    ["stage1", r"conv2_"],
    ["stage2", r"conv3_"],
    ["stage3", r"conv4_"],
    ["stage4", r"conv5_"],
    ["head", r"predictions$"],
]


def _metadata(*, preprocessing: dict, weights: dict | None = None) -> dict:
    return {
        "family": "resnet",
        "default_input_shape": (224, 224, 3),
        "min_input_shape": (32, 32, 3),  # total stride 32
        "fixed_input_with_top": False,  # global average pooling before the classifier
        "preprocessing": preprocessing,
        "layer_groups": _LAYER_GROUPS,
        "paper": _PAPER,
        "weights": weights or {},
    }


def _imagenet(variant: str, file_hash: str, notop_file_hash: str) -> dict:
    """keras.applications' ImageNet files for ``variant`` (URLs and md5 hashes copied from its source)."""
    stem_url = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{variant}_weights_tf_dim_ordering_tf_kernels"
    return {
        "imagenet": {
            "url": f"{stem_url}.h5",
            "file_hash": file_hash,
            "notop_url": f"{stem_url}_notop.h5",
            "notop_file_hash": notop_file_hash,
            "classes": 1000,
            "input_shape": (224, 224, 3),
        }
    }


# ResNet-18/34 have no keras.applications weights; their expected input is torchvision's (ImageNet mean/std).
_BASIC = _metadata(preprocessing=IMAGENET_PREPROCESSING)

# -- variants -------------------------------------------------------------------------------------------------


@with_metadata(_BASIC)
def resnet18(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
             classifier_activation="softmax", name=None):
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return _resnet(resnet18, (2, 2, 2, 2), bottleneck=False, include_top=include_top, weights=weights,
                   input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, name=name)


@with_metadata(_BASIC)
def resnet34(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
             classifier_activation="softmax", name=None):
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _resnet(resnet34, (3, 4, 6, 3), bottleneck=False, include_top=include_top, weights=weights,
                   input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, name=name)


@with_metadata(_metadata(preprocessing=CAFFE_PREPROCESSING, weights=_imagenet(
    "resnet50", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626")))
def resnet50(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
             classifier_activation="softmax", name=None):
    """ResNet-50: bottleneck blocks (3, 4, 6, 3)."""
    return _resnet(resnet50, (3, 4, 6, 3), bottleneck=True, include_top=include_top, weights=weights,
                   input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, name=name)


@with_metadata(_metadata(preprocessing=CAFFE_PREPROCESSING, weights=_imagenet(
    "resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21")))
def resnet101(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name=None):
    """ResNet-101: bottleneck blocks (3, 4, 23, 3)."""
    return _resnet(resnet101, (3, 4, 23, 3), bottleneck=True, include_top=include_top, weights=weights,
                   input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, name=name)


@with_metadata(_metadata(preprocessing=CAFFE_PREPROCESSING, weights=_imagenet(
    "resnet152", "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c")))
def resnet152(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name=None):
    """ResNet-152: bottleneck blocks (3, 8, 36, 3)."""
    return _resnet(resnet152, (3, 8, 36, 3), bottleneck=True, include_top=include_top, weights=weights,
                   input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, name=name)
