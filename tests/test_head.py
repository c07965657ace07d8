"""Model assembly: normalisation inside, head options, auxiliary heads, init_from, feature-cache head model."""

import numpy as np
import pytest
from _training_helpers import TINY, TINY_AUX, register_tiny

from ftkit.head import HeadConfig, build_model, copy_head_weights, head_model, inference_model


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


def test_model_takes_raw_images_and_normalises_inside():
    assembled = build_model(TINY, num_classes=3, image_shape=(16, 16, 1), head=HeadConfig())
    model = assembled.model
    assert model.get_layer("preprocess").__class__.__name__ == "Preprocess"
    raw = np.full((1, 16, 16, 1), 255.0, np.float32)
    normalised = model.get_layer("preprocess")(raw).numpy()
    np.testing.assert_allclose(normalised, (1.0 - 0.1307) / 0.3081, rtol=1e-5)
    assert model.output.shape == (None, 3)  # logits


def test_a_distribution_qualified_backbone_name_builds_a_model():
    # "distribution:name" is how a recipe picks one of two backbones registered under the same name; the
    # colon is not allowed in a Keras model name, which raised when the model was built.
    assembled = build_model("ftkit:lenet5", num_classes=3, image_shape=(32, 32, 1), head=HeadConfig())
    assert assembled.model.name == "lenet5_finetune"
    assert inference_model(assembled.model).name == "lenet5_classifier"
    assert assembled.model.output.shape == (None, 3)


@pytest.mark.parametrize("pooling,width", [("avg", 8), ("max", 8), ("flatten", 8 * 8 * 8)])
def test_head_pooling_dropout_hidden(pooling, width):
    config = HeadConfig(pooling=pooling, dropout=0.5, hidden=[5, 4])
    assembled = build_model(TINY, num_classes=2, image_shape=(16, 16, 1), head=config)
    assert assembled.features_shape == (width,)
    assert [layer.name for layer in assembled.head_layers] == ["head_dense1", "head_dense2", "logits"]
    assert [layer.units for layer in assembled.head_layers] == [5, 4, 2]
    assert sum(1 for layer in assembled.model.layers if layer.name.startswith("head_dropout")) == 3


def test_auxiliary_heads_train_and_are_dropped_from_inference():
    assembled = build_model(TINY_AUX, num_classes=4, image_shape=(16, 16, 1), head=HeadConfig())
    assert assembled.output_names == ["logits", "aux1"]
    assert len(assembled.model.outputs) == 2 and assembled.aux_layers
    infer = inference_model(assembled.model)
    assert len(infer.outputs) == 1
    probs = infer(np.zeros((2, 16, 16, 1), np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    aux_names = {layer.name for layer in assembled.aux_layers}
    assert not aux_names & {layer.name for layer in infer.layers}


def test_head_model_round_trips_weights():
    assembled = build_model(TINY, num_classes=3, image_shape=(16, 16, 1), head=HeadConfig(hidden=[6]))
    head = head_model(assembled, num_classes=3, config=HeadConfig(hidden=[6]))
    features = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    full = assembled.model.get_layer("logits")
    np.testing.assert_allclose(head.get_layer("logits").get_weights()[0], full.get_weights()[0])
    head.get_layer("logits").set_weights([w + 1 for w in head.get_layer("logits").get_weights()])
    copy_head_weights(head, assembled)
    np.testing.assert_allclose(full.get_weights()[1], head.get_layer("logits").get_weights()[1])
    assert head(features).shape == (4, 3)


def test_googlenet_aux_heads_attach_to_its_taps():
    assembled = build_model("googlenet", num_classes=5, image_shape=(96, 96, 3), head=HeadConfig())
    assert assembled.output_names == ["logits", "aux1", "aux2"]
    assert {"aux1_fc", "aux2_fc"} <= {layer.name for layer in assembled.aux_layers}


def test_a_backbone_layer_in_the_head_group_is_warned_about_by_name():
    """A plugin whose ``head`` regex also matches a layer of its headless model (Keras's ConvNeXt adds a final norm
    only without the top): the new head takes the group's name, so that layer would silently belong to no group."""
    import ftkit.backbones
    from ftkit.backbones._builder import build_backbone

    def with_final_norm(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                        classes=3, classifier_activation="softmax", name=None):
        from keras import layers

        def body(x):
            x = layers.Conv2D(4, 3, name="stem_conv")(x)
            return x if include_top else layers.LayerNormalization(name="head_norm")(x)

        def top(x, *, classes, activation):
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
            return layers.Dense(classes, activation=activation, name="head_predictions")(x)

        return build_backbone(with_final_norm, body=body, head=top, include_top=include_top, weights=weights,
                              input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                              classifier_activation=classifier_activation, name=name)

    registry = ftkit.backbones.REGISTRY
    registry.register("final_norm_test", with_final_norm, default_input_shape=(16, 16, 3), min_input_shape=(8, 8, 3),
                      layer_groups=[["stem", "stem_"], ["head", "head_"]])
    with pytest.warns(UserWarning, match=r"'final_norm_test'.*group 'head', which the new head replaces.*: head_norm\."):
        assembled = build_model("final_norm_test", num_classes=2, image_shape=(16, 16, 3), head=HeadConfig())
    assert [layer.name for layer in assembled.groups["head"]] == ["logits"]
    registry.unregister("final_norm_test")
    registry.register("final_norm_test", with_final_norm, default_input_shape=(16, 16, 3), min_input_shape=(8, 8, 3),
                      layer_groups=[["stem", "stem_"], ["top", "head_norm"], ["head", "head_"]])
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert [layer.name for layer in build_model("final_norm_test", num_classes=2, image_shape=(16, 16, 3),
                                                         head=HeadConfig()).groups["top"]] == ["head_norm"]
    finally:
        registry.unregister("final_norm_test")
