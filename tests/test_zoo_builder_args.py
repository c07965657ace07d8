"""Bad builder arguments a keras.applications user types: each fails before anything is built, naming what was
received and what is allowed; an unknown name in ``ftkit models check`` fails before TensorFlow starts."""

import subprocess
import sys

import pytest

from ftkit.backbones import BackboneRegistry, UnknownBackboneError
from ftkit.backbones._check import check_backbone


@pytest.fixture
def counted():
    """A registry with one tiny backbone whose builder counts its calls."""
    calls = []
    registry = BackboneRegistry(lambda: [])

    @registry.register("tiny", default_input_shape=(8, 8, 3), min_input_shape=(8, 8, 3))
    def tiny(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
             classifier_activation="softmax", name=None):
        import keras

        calls.append(classifier_activation)
        inputs = keras.Input(shape=input_shape or (8, 8, 3))
        x = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
        if include_top:
            x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
        return keras.Model(inputs, x, name=name or "tiny")

    return registry, calls


def test_misspelt_classifier_activation_fails_before_building(counted):
    registry, calls = counted
    with pytest.raises(ValueError, match=r"tiny: classifier_activation must be None, a callable or a Keras activation "
                                         r"name \(.*softmax.*\)\. Did you mean 'softmax'\? "
                                         r"Received: classifier_activation='sofmax'$"):
        registry.create("tiny", classifier_activation="sofmax")
    with pytest.raises(ValueError, match=r"Received: classifier_activation=3$"):
        registry.create("tiny", classifier_activation=3)
    assert calls == []


def test_valid_activations_still_build_and_headless_ignores_it(counted):
    import keras
    import numpy as np

    registry, calls = counted
    model = registry.create("tiny", classifier_activation="sigmoid")
    out = np.asarray(model(np.full((1, 8, 8, 3), 0.1, "float32")))
    assert ((out > 0) & (out < 1)).all() and not np.isclose(out.sum(), 1.0)  # sigmoid, not softmax
    assert registry.create("tiny", classifier_activation=keras.activations.relu).layers[-1].activation \
        is keras.activations.relu
    assert registry.create("tiny", classifier_activation=None).layers[-1].activation.__name__ == "linear"
    # keras.applications ignores the activation without the top; so does the check
    assert registry.create("tiny", include_top=False, classifier_activation="sofmax").output_shape == (None, 3)
    assert calls == ["sigmoid", keras.activations.relu, None, "sofmax"]


def test_unknown_argument_names_the_closest_and_the_allowed_ones(counted):
    registry, calls = counted
    with pytest.raises(TypeError) as error:
        registry.create("tiny", include_top=False, pooing="avg")
    assert str(error.value) == ("tiny: unknown argument 'pooing'. Did you mean 'pooling'? Allowed: include_top, "
                                "weights, input_tensor, input_shape, pooling, classes, classifier_activation, name. "
                                "Received: pooing='avg'")
    assert calls == []


def test_zoo_family_specific_arguments_are_listed_as_allowed():
    import ftkit

    with pytest.raises(TypeError, match=r"googlenet: unknown argument 'aux_logit'\. Did you mean 'aux_logits'\? "
                                        r"Allowed: .*, name, aux_logits\. Received: aux_logit=True$"):
        ftkit.create_backbone("googlenet", include_top=False, aux_logit=True)


def test_unknown_name_in_the_check_fails_before_tensorflow_is_imported():
    script = ("import sys\n"
              "from ftkit.backbones._check import check_backbone\n"
              "try:\n    check_backbone('resnet5')\n"
              "except Exception as exc:\n    print(type(exc).__name__, '|', exc)\n"
              "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("UnknownBackboneError | Unknown backbone 'resnet5'. Did you mean 'resnet50'?")
    assert second == "[]"
    with pytest.raises(UnknownBackboneError):
        check_backbone("nosuch", registry=BackboneRegistry(lambda: []))
