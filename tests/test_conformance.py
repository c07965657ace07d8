"""Every registered backbone, built-in or plugin, passes the conformance suite of ``ftkit models check``.

Parametrized from the registry itself, so a backbone is tested the moment it is registered.
"""

import numpy as np
import pytest

import ftkit
from ftkit.backbones import REGISTRY
from ftkit.backbones._check import CHECKS, check_backbone

DEEP = {"resnet101", "resnet152"}  # several hundred layers: seconds per build on a 2-core CPU
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in ftkit.list_backbones()]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_conforms(name):
    results = check_backbone(name)
    assert [r.check for r in results] == [label for label, _ in CHECKS]
    failed = {r.check: r.detail for r in results if not r.passed}
    assert failed == {}


@pytest.mark.parametrize("name", NAMES)
def test_variable_input_size_builds_headless_or_fails_clearly(name):
    """``input_shape=(None, None, C)`` as keras.applications takes it: headless only, for a body that allows it."""
    info = REGISTRY.info(name)
    shape = (None, None, info.channels)
    with pytest.raises(ValueError, match=rf"^{name}: include_top=True needs a fixed input size.*"
                                         rf"Received: input_shape=\(None, None, {info.channels}\), include_top=True$"):
        REGISTRY.create(name, weights=None, input_shape=shape)
    if not info.variable_input_size:  # LeNet-5, whose body pads to its 32x32 field: refused before building
        with pytest.raises(ValueError, match=rf"^{name}: cannot be built with a variable input size .*"
                                             rf"Received: input_shape=\(None, None, {info.channels}\)$"):
            REGISTRY.create(name, weights=None, include_top=False, pooling="avg", input_shape=shape)
        return
    pooled = REGISTRY.create(name, weights=None, include_top=False, pooling="avg", input_shape=shape)
    feature_map = REGISTRY.create(name, weights=None, include_top=False, input_shape=shape)
    assert feature_map.output_shape[1:3] == (None, None)
    low, high = info.min_input_shape[:2], (info.min_input_shape[0] + 32, info.min_input_shape[1] + 48)
    widths = {np.asarray(pooled(np.zeros((1, *size, info.channels), "float32"))).shape for size in (low, high)}
    assert widths == {(1, feature_map.output_shape[-1])}


def _headless_norm_net(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
                       classifier_activation="softmax", name=None):
    """Like keras.applications' ConvNeXt: without the top, a final weighted layer the top model lacks."""
    import keras

    inputs = keras.Input(shape=input_shape or (32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, keras.layers.Dense(classes, activation=classifier_activation,
                                                      name="predictions")(x), name=name or "net")
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    if pooling:
        x = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}[pooling]()(x)
    return keras.Model(inputs, x, name=name or "net")


@pytest.mark.parametrize(("groups", "detail"), [
    # Only the head regex matches it: grouped, but the assembled model's new head replaces that group.
    ([["stem", "stem_"], ["head", "(predictions|final_norm)$"]],
     "AssertionError: include_top=False, pooling=None: final_norm in group 'head', which ftkit's new head replaces "
     "(so in no group it trains or freezes); give them a group of their own"),
    ([["stem", "stem_"], ["head", "predictions$"]],
     "AssertionError: include_top=False, pooling=None: weighted layers in no group: final_norm"),
    ([["stem", "stem_"], ["top", "final_norm$"], ["head", "predictions$"]],
     "stem:1, top:0, head:1; without the top: 2 layers grouped, none in 'head'"),
], ids=["only-head-matches", "in-no-group", "own-group"])
def test_layer_groups_are_checked_on_the_headless_model_too(groups, detail):
    from ftkit.backbones import BackboneRegistry

    registry = BackboneRegistry(lambda: [])
    registry.register("net", _headless_norm_net, layer_groups=groups)
    results = {r.check: r for r in check_backbone("net", registry=registry)}
    passes = not detail.startswith("AssertionError")
    assert [check for check, r in results.items() if not r.passed] == ([] if passes else
                                                                      ["layer groups cover every weight"])
    assert results["layer groups cover every weight"].detail == detail
