"""The built-in zoo: the builder contract for every registered backbone, then each family against its paper."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from ftkit import backbone_info, list_backbones
from ftkit.backbones import REGISTRY, _builder
from ftkit.backbones._preprocessing import Preprocess, preprocessing_layer
from ftkit.backbones.googlenet import AUX_TAPS, aux_classifier, googlenet
from ftkit.backbones.lenet import lenet5
from ftkit.backbones.resnet import resnet18
from ftkit.backbones.vgg import vgg16

ZOO = [name for name in list_backbones() if backbone_info(name).distribution == "ftkit"]


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def test_zoo_is_registered():
    assert {"lenet5", "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "googlenet",
            "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(ZOO)


# -- the contract, for every registered zoo backbone -------------------------------------------------------


# Headless pooling modes, minimum size and group coverage of every registered backbone (plugins included)
# are checked by tests/test_conformance.py through the conformance suite.


# Counts at the default input size with 1000 classes (LeNet-5: 10), from the sources named; asserted by the
# test below so each big model is built once.
PARAMETERS = {
    "vgg16": 138_357_544, "vgg19": 143_667_240,  # keras.applications
    "resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944,  # keras.applications v1
    "alexnet": 62_378_344,  # one tower at 227x227x3
    "lenet5": 61_706,  # at 32x32x1, full C3 connectivity
}
TRAINABLE_PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672}  # torchvision's counts


@pytest.mark.parametrize("name", ZOO)
def test_with_top_groups_and_counts(name):
    info, builder = backbone_info(name), REGISTRY.builder(name)
    model = builder()
    assert model.input_shape == (None, *info.default_input_shape)
    used = []
    for layer in _weighted_layers(model):
        matches = [g for g, rx in info.layer_groups if re.match(rx, layer.name)]
        assert len(matches) == 1, (layer.name, matches)
        used.append(matches[0])
    assert sorted(set(used), key=info.group_names.index) == info.group_names
    # groups run from input to output: a layer never belongs to an earlier group than the one before it
    order = [info.group_names.index(g) for g in used]
    assert order == sorted(order)
    assert info.paper and info.preprocessing["channel_order"] in ("RGB", "BGR")
    if name in PARAMETERS:
        assert model.count_params() == PARAMETERS[name]
    if name in TRAINABLE_PARAMETERS:
        assert _trainable(model) == TRAINABLE_PARAMETERS[name]


@pytest.mark.parametrize("name", ZOO)
def test_minimum_size_is_enforced(name):
    info, builder = backbone_info(name), REGISTRY.builder(name)
    height, width, channels = info.min_input_shape
    with pytest.raises(ValueError, match=rf"at least {height}x{width}.*Received: input_shape=\({height - 1}, "):
        builder(include_top=False, input_shape=(height - 1, width, channels))


# -- per family ---------------------------------------------------------------------------------------------


def test_resnet_basic_blocks_are_torchvision_style():
    model = resnet18(include_top=False, input_shape=(64, 64, 3))
    assert model.get_layer("conv3_block1_1_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_2_conv").output.shape[1:] == (8, 8, 128)
    assert "conv2_block1_0_conv" not in [layer.name for layer in model.layers]  # identity shortcut at stride 1
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(layer.use_bias for layer in convs)


def test_alexnet_one_tower():
    model = REGISTRY.builder("alexnet")(include_top=False, input_shape=(227, 227, 3))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    sizes = {name: model.get_layer(name).output.shape[1:] for name in ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5")}
    assert sizes == {"conv1": (55, 55, 96), "pool1": (27, 27, 96), "conv2": (27, 27, 256), "pool2": (13, 13, 256),
                     "conv5": (13, 13, 256), "pool5": (6, 6, 256)}
    assert [model.get_layer(f"conv{i}").padding for i in range(1, 6)] == ["valid", "same", "same", "same", "same"]


def test_lenet5_paper_count_and_mnist_size():
    assert lenet5().output_shape == (None, 10)
    mnist = lenet5(input_shape=(28, 28, 1))
    assert mnist.count_params() == 61_706  # 28x28 is centred in the paper's 32x32 field
    assert mnist.get_layer("c5").output.shape[1:] == (1, 1, 120)
    assert {type(mnist.get_layer(n)) for n in ("s2", "s4")} == {keras.layers.AveragePooling2D}
    assert {mnist.get_layer(n).activation.__name__ for n in ("c1", "c3", "c5", "f6")} == {"relu"}


def test_vgg16_widths():
    model = vgg16(include_top=False, input_shape=(32, 32, 3))
    widths = [model.get_layer(f"block{b}_conv1").filters for b in range(1, 6)]
    assert widths == [64, 128, 256, 512, 512]
    assert [layer.name for layer in _weighted_layers(model)][-3:] == ["block5_conv1", "block5_conv2", "block5_conv3"]


# -- GoogLeNet against Table 1 of Szegedy et al. 2014 ------------------------------------------------------

# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), copied from the paper, not from the module.
TABLE_1 = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
BRANCHES = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")


@pytest.fixture(scope="module")
def googlenet_aux():
    return googlenet(aux_logits=True, classes=7, classifier_activation=None)


def test_googlenet_table_1(googlenet_aux):
    model = googlenet_aux
    for module, widths in TABLE_1.items():
        assert tuple(model.get_layer(f"inception{module}_{b}").filters for b in BRANCHES) == widths, module
    shapes = {
        "conv1_7x7": (112, 112, 64), "conv2_3x3": (56, 56, 192), "inception3a_output": (28, 28, 256),
        "inception3b_output": (28, 28, 480), "inception4a_output": (14, 14, 512),
        "inception4b_output": (14, 14, 512), "inception4c_output": (14, 14, 512),
        "inception4d_output": (14, 14, 528), "inception4e_output": (14, 14, 832),
        "inception5a_output": (7, 7, 832), "inception5b_output": (7, 7, 1024),
    }
    assert {name: tuple(model.get_layer(name).output.shape[1:]) for name in shapes} == shapes
    # the second convolution reads the first pooling output (the notebook fed it the input image)
    assert model.get_layer("conv2_3x3_reduce").input is model.get_layer("pool1").output


def test_googlenet_aux_heads(googlenet_aux):
    model = googlenet_aux
    assert [tuple(shape) for shape in model.output_shape] == [(None, 7)] * 3
    assert backbone_info("googlenet").aux_taps == AUX_TAPS == ("inception4a_output", "inception4d_output")
    for index, tap in enumerate(AUX_TAPS, start=1):
        pool = model.get_layer(f"aux{index}_pool")
        assert pool.input is model.get_layer(tap).output
        assert (type(pool), pool.pool_size, pool.strides) == (keras.layers.AveragePooling2D, (5, 5), (3, 3))
        conv = model.get_layer(f"aux{index}_conv")
        assert (conv.filters, conv.kernel_size, conv.activation.__name__) == (128, (1, 1), "relu")
        fc = model.get_layer(f"aux{index}_fc")
        assert (fc.units, fc.activation.__name__, fc.kernel.shape[0]) == (1024, "relu", 4 * 4 * 128)
        assert model.get_layer(f"aux{index}_dropout").rate == 0.7
        assert model.get_layer(f"aux{index}_predictions").units == 7
    plain = googlenet(classes=7)
    assert plain.output_shape == (None, 7)
    aux_params = sum(model.get_layer(f"aux1_{p}").count_params() for p in ("conv", "fc", "predictions"))
    assert model.count_params() == plain.count_params() + 2 * aux_params - 512 * 128 + 528 * 128


def test_aux_classifier_on_headless_backbone():
    backbone = googlenet(include_top=False, pooling="avg", input_shape=(96, 96, 3))
    tap = backbone.get_layer(AUX_TAPS[1]).output
    model = keras.Model(backbone.input, [backbone.output, aux_classifier(tap, 5, name="aux2")])
    out = model.predict(np.zeros((1, 96, 96, 3), "float32"), verbose=0)
    assert out[0].shape == (1, 1024) and out[1].shape == (1, 5)
    with pytest.raises(ValueError, match=r"at least 65x65.*Received: input_shape=\(64, 64, 3\)"):
        googlenet(aux_logits=True, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="needs include_top=True.*Received: aux_logits=True, include_top=False"):
        googlenet(aux_logits=True, include_top=False)


# -- arguments -----------------------------------------------------------------------------------------------


def test_input_tensor_is_used():
    tensor = keras.Input(shape=(40, 40, 3))
    model = resnet18(include_top=False, input_tensor=tensor, pooling="avg")
    assert model.inputs[0] is tensor and model.output_shape == (None, 512)
    assert model.name == "resnet18" and resnet18(include_top=False, name="mine").name == "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"include_top": False, "input_shape": (16, 16, 3)}, r"at least 32x32.*Received: input_shape=\(16, 16, 3\)"),
        ({"include_top": False, "input_shape": (64, 64)}, r"\(height, width, channels\).*Received: input_shape=\(64, 64\)"),
        ({"include_top": False, "pooling": "mean"}, r"pooling must be one of \(None, 'avg', 'max'\).*Received: pooling='mean'"),
        ({"include_top": True, "pooling": "avg"},
         r"pooling applies only without the top \(include_top=False\).*Received: include_top=True, pooling='avg'"),
        ({"weights": "imagenet", "classes": 10}, r"1000-class head.*Received: classes=10"),
        ({"weights": "imagenet", "classifier_activation": "relu"}, r"'softmax' or None.*Received: classifier_activation='relu'"),
        ({"weights": "imagenet", "input_shape": (224, 224, 1)},
         r"trained on 3-channel images; other channel counts need weights=None\. Received: input_shape=\(224, 224, 1\)"),
        ({"weights": "imagenet", "input_shape": (160, 160, 3)},
         r"weights='imagenet' with include_top=True need the input size they were trained at, \(224, 224, 3\).*"
         r"Received: input_shape=\(160, 160, 3\)"),
        ({"weights": "instagram"}, r"^vgg16 has no 'instagram' weights; available: 'imagenet'\. Pass weights=None, "
                                   r"a local file .*Received: weights='instagram'$"),
        ({"weights": "https://example.com/vgg.h5"}, r"#sha256=.*Received: weights='https://example.com/vgg.h5'"),
        ({"classes": 0}, r"positive integer.*Received: classes=0"),
    ],
)
def test_bad_arguments_fail_before_building(kwargs, message, monkeypatch):
    def no_layers(*args, **kwargs):
        raise AssertionError("a layer was built before the arguments were checked")

    monkeypatch.setattr(keras, "Input", no_layers)
    with pytest.raises(ValueError, match=message):
        vgg16(**kwargs)


def test_no_imagenet_weights_says_so_plainly():
    with pytest.raises(ValueError) as err:
        REGISTRY.create("resnet18", weights="imagenet", include_top=False)
    assert str(err.value) == (
        "resnet18 has no 'imagenet' weights; available: none. Pass weights=None, a local file (.weights.h5, .h5, "
        ".hdf5, .keras) or a URL with a hash fragment ('https://host/file.h5#sha256=<64 hex>'). "
        "Received: weights='imagenet'")


@pytest.mark.parametrize(("name", "size"), [("vgg16", 64), ("alexnet", 99)])
def test_a_flatten_top_builds_at_any_size_without_pretrained_weights(name, size):
    """As ``keras.applications.VGG16(include_top=True, weights=None, input_shape=(64, 64, 3), classes=10)``."""
    model = REGISTRY.create(name, include_top=True, weights=None, input_shape=(size, size, 3), classes=10)
    assert (model.input_shape, model.output_shape) == ((None, size, size, 3), (None, 10))
    flat = model.get_layer("flatten").output.shape[-1]
    assert model.get_layer("predictions").input.shape[-1] == 4096 and flat == {"vgg16": 2 * 2 * 512, "alexnet": 2 * 2 * 256}[name]


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_build_without_pretrained_weights(channels):
    """As keras.applications; the registered preprocessing, defined for 3 channels, refuses such images clearly."""
    model = REGISTRY.create("resnet50", False, None, None, (32, 32, channels), "avg")
    assert model.get_layer("conv1_conv").kernel.shape == (7, 7, channels, 64) and model.output_shape == (None, 2048)
    assert vgg16(include_top=False, input_shape=(32, 32, channels)).input_shape == (None, 32, 32, channels)
    layer = preprocessing_layer(backbone_info("resnet50"))
    with pytest.raises(ValueError, match=rf"statistics for 3 channels but the images have {channels}.*Received: "):
        layer(np.zeros((1, 32, 32, channels), "float32"))


def test_zoo_builders_take_keras_applications_positional_order():
    model = vgg16(False, None, None, (32, 32, 3), "max")
    reference = keras.applications.VGG16(False, None, None, (32, 32, 3), "max")
    assert model.output_shape == reference.output_shape == (None, 512)
    assert lenet5(True, None, None, (28, 28, 1), None, 4, None, "digits").name == "digits"


def test_registry_runs_the_same_checks():
    info = backbone_info("resnet50")
    assert _builder.validate_builder_args(info, include_top=False, input_shape=(64, 48, 3)) == (64, 48, 3)
    assert _builder.validate_builder_args(info) == (224, 224, 3)
    with pytest.raises(ValueError, match=r"Received: classes=5"):
        _builder.validate_builder_args(info, weights="imagenet", classes=5)


# -- preprocessing -------------------------------------------------------------------------------------------


def test_preprocess_matches_keras_caffe_mode():
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for name in ("vgg16", "resnet50"):
        layer = preprocessing_layer(backbone_info(name))
        expected = keras.applications.vgg16.preprocess_input(images.copy())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, atol=1e-4)


def test_preprocess_imagenet_and_mnist_statistics():
    images = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    torch_style = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    out = preprocessing_layer(backbone_info("resnet18"))(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), torch_style, atol=1e-5)
    digits = np.full((1, 28, 28, 1), 255.0, "float32")
    out = preprocessing_layer(backbone_info("lenet5"))(digits)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), (1.0 - 0.1307) / 0.3081, atol=1e-5)


def test_preprocess_survives_keras_saving(tmp_path):
    layer = Preprocess(scale=1.0, mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0), channel_order="BGR", name="prep")
    assert Preprocess.from_config(layer.get_config()).get_config() == layer.get_config()
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    images = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    np.testing.assert_allclose(restored.predict(images, verbose=0), (images[..., ::-1] - [1, 2, 3]) / 2)
    with pytest.raises(ValueError, match=r"3 channels but the images have 1.*Received: input_shape"):
        layer(np.zeros((1, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="Received: channel_order='HSV'"):
        Preprocess(scale=1.0, mean=(0,), std=(1,), channel_order="HSV")
