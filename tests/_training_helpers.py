"""Tiny in-process backbones and recipes shared by the training tests (each run takes seconds on a CPU)."""

from __future__ import annotations

import ftkit
from ftkit.backbones._builder import build_backbone

TINY = "tiny_bn_test"
QUIET = dict(log=lambda *a: None)  # train(..., **QUIET): no summary printed during tests
TINY_AUX = "tiny_aux_test"
TINY_PLAIN = "tiny_plain_test"
PREPROCESSING = {"scale": 1 / 255, "mean": (0.1307,), "std": (0.3081,), "channel_order": "RGB"}


def _conv_bn(x, filters: int, name: str):
    from keras import layers

    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _top(x, *, classes, activation):
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return layers.Dense(classes, activation=activation, name="predictions")(x)


def tiny_bn_test(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
                 classifier_activation="softmax", name=None):
    """conv-BN-ReLU, pool, conv-BN-ReLU: two groups with BatchNorm, ~1k weights."""
    from keras import layers

    def body(x):
        x = _conv_bn(x, 4, "stem")
        x = layers.MaxPooling2D(name="pool")(x)
        return _conv_bn(x, 8, "stage1")

    return build_backbone(tiny_bn_test, body=body, head=_top, include_top=include_top, weights=weights,
                          input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                          classifier_activation=classifier_activation, name=name)


def tiny_aux_test(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
                  classifier_activation="softmax", name=None):
    """Like tiny_bn_test, with an auxiliary tap (``tap_output``) after the stem, as GoogLeNet has."""
    from keras import layers

    def body(x):
        x = _conv_bn(x, 4, "stem")
        x = layers.Activation("linear", name="tap_output")(x)
        x = layers.MaxPooling2D(name="pool")(x)
        return _conv_bn(x, 8, "stage1")

    return build_backbone(tiny_aux_test, body=body, head=_top, include_top=include_top, weights=weights,
                          input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                          classifier_activation=classifier_activation, name=name)


def tiny_plain_test(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
                    classifier_activation="softmax", name=None):
    """conv-ReLU, pool, conv-ReLU without BatchNorm: a batch's update does not depend on how it is split."""
    from keras import layers

    def body(x):
        x = layers.Conv2D(4, 3, padding="same", activation="relu", name="stem_conv")(x)
        x = layers.MaxPooling2D(name="pool")(x)
        return layers.Conv2D(8, 3, padding="same", activation="relu", name="stage1_conv")(x)

    return build_backbone(tiny_plain_test, body=body, head=_top, include_top=include_top, weights=weights,
                          input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                          classifier_activation=classifier_activation, name=name)


_META = {"default_input_shape": (16, 16, 1), "min_input_shape": (8, 8, 1), "preprocessing": PREPROCESSING,
         "layer_groups": [["stem", r"stem_"], ["stage1", r"stage1_"], ["head", r"predictions$"]], "family": "tiny"}


def register_tiny() -> None:
    names = ftkit.list_backbones()
    if TINY not in names:
        ftkit.register_backbone(TINY, tiny_bn_test, **_META)
    if TINY_PLAIN not in names:
        ftkit.register_backbone(TINY_PLAIN, tiny_plain_test, **_META)
    if TINY_AUX not in names:
        ftkit.register_backbone(TINY_AUX, tiny_aux_test, **{**_META, "aux_taps": ("tap_output",)})


def mnist_recipe(mnist: str, *, backbone: str = TINY, phases=None, **sections) -> dict:
    """Digits 0-2, 16 training images per class, 16x16: a deterministic run of a few seconds."""
    recipe = {
        "data": {"train": mnist, "classes": ["0", "1", "2"], "samples_per_class": 16, "val_fraction": 0.05,
                 "eval_samples_per_class": 8, "image_size": [16, 16], "batch_size": 8},
        "backbone": {"name": backbone},
        "schedule": {"phases": phases or [{"train": "head", "epochs": 1, "lr": 0.01}]},
        "train": {"verbose": 0, "seed": 3},
        "evaluate": {"enabled": False},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    return recipe


def tensorboard_epochs(run_dir) -> dict[str, list[list[int]]]:
    """Per writer (``train``, ``validation``), the steps of ``epoch_loss`` in each of its event files, in the
    order the files were written."""
    from pathlib import Path

    import tensorflow as tf

    out = {}
    for writer in ("train", "validation"):
        files = sorted(Path(run_dir, "tensorboard", writer).glob("events.out.tfevents.*"),
                       key=lambda p: p.stat().st_mtime_ns)
        out[writer] = [[int(event.step) for event in tf.compat.v1.train.summary_iterator(str(path))
                        for value in event.summary.value if value.tag == "epoch_loss"] for path in files]
    return out
