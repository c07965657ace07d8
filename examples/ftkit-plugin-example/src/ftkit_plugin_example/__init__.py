"""An example ftkit backbone plugin: a small VGG-style CNN.

A plugin is a plain builder with the keras.applications signature, registered in the ``ftkit.backbones``
entry-point group of its own ``pyproject.toml``. Its optional metadata is a dict in the attribute
``ftkit_metadata``; the plugin does not need to import ftkit.
"""

import keras
from keras import layers


def tinyvgg(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=10,
    classifier_activation="softmax",
    name="tinyvgg",
):
    """Three conv blocks (16, 32, 64 filters) and a global-pooling classifier; any input from 16x16."""
    if weights is not None:
        raise ValueError(f"tinyvgg has no pretrained weights; use weights=None. Received: weights={weights!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape or (64, 64, 3))
    x = inputs
    for block, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


tinyvgg.ftkit_metadata = {
    "family": "tinyvgg",
    "default_input_shape": (64, 64, 3),
    "min_input_shape": (16, 16, 3),
    "preprocessing": {"scale": 1 / 127.5, "mean": (1.0, 1.0, 1.0), "std": (1.0, 1.0, 1.0), "channel_order": "RGB"},
    "layer_groups": [["stem", "block1_"], ["stage1", "block2_"], ["stage2", "block3_"], ["head", "predictions"]],
    "paper": "Example plugin; architecture after Simonyan & Zisserman, 2014 (arXiv:1409.1556)",
}
