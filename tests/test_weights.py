"""Weight portability: files saved from keras.applications load into ftkit's models and give the same outputs.

No network: the files are written here from randomly initialised keras.applications models, in both the
Keras 3 ``.weights.h5`` layout and the legacy HDF5 layout keras.applications distributes its ImageNet files in.
"""

from __future__ import annotations

import dataclasses
import hashlib

import h5py
import keras
import numpy as np
import pytest
from keras.src.applications import resnet as keras_resnet
from keras.src.applications import vgg16 as keras_vgg16
from keras.src.applications import vgg19 as keras_vgg19
from keras.src.legacy.saving import legacy_h5_format

from ftkit import backbone_info
from ftkit.backbones import REGISTRY, BackboneRegistry, _builder

KERAS_APPS = {
    "vgg16": keras.applications.VGG16,
    "vgg19": keras.applications.VGG19,
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(_builder, "WEIGHTS_CACHE_DIR", str(tmp_path / "cache"))


def save(model, path):
    if path.name.endswith(".weights.h5"):
        model.save_weights(path)
    elif path.suffix == ".keras":
        model.save(path)
    else:  # the legacy layout of keras.applications' *_tf_dim_ordering_tf_kernels.h5 files
        with h5py.File(path, "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


def assert_same_outputs(name, tmp_path, *, file_name, include_top, size, classes=1000):
    kwargs = {"include_top": include_top, "input_shape": (size, size, 3)}
    if include_top:
        kwargs["classifier_activation"] = None  # compare logits: softmax of a random model is nearly uniform
        kwargs["classes"] = classes
    reference = KERAS_APPS[name](weights=None, **kwargs)
    path = save(reference, tmp_path / file_name)
    images = np.random.default_rng(0).uniform(-120, 150, (2, size, size, 3)).astype("float32")
    # Eager calls: tracing predict()'s graph for a 500-layer ResNet costs more than running it once.
    expected = keras.ops.convert_to_numpy(reference(images, training=False))
    assert expected.std() > 1e-3  # not a degenerate output that any weights would reproduce
    ported = REGISTRY.builder(name)(weights=str(path), **kwargs)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ported(images, training=False)), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("file_name", ["w.weights.h5", "w_notop.h5", "w.keras"])
def test_vgg16_headless(tmp_path, file_name):
    assert_same_outputs("vgg16", tmp_path, file_name=file_name, include_top=False, size=64)


@pytest.mark.parametrize("file_name", ["w.h5", "w.weights.h5"])
def test_vgg16_with_top_at_a_small_size(tmp_path, file_name):
    """The top's dropout layers (the paper's, which keras.applications leaves out) hold no weights: files with the
    top load by name and by order, and inference gives the same outputs."""
    assert_same_outputs("vgg16", tmp_path, file_name=file_name, include_top=True, size=32, classes=10)
    ours = [layer.name for layer in REGISTRY.builder("vgg16")(input_shape=(32, 32, 3), classes=10).layers]
    theirs = [layer.name for layer in keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10).layers]
    assert [n for n in ours if not n.endswith("_dropout")][1:] == theirs[1:]  # [0]: Keras numbers input layers
    assert ours[-5:] == ["fc1", "fc1_dropout", "fc2", "fc2_dropout", "predictions"]


@pytest.mark.slow
def test_vgg16_with_top_legacy(tmp_path):
    assert_same_outputs("vgg16", tmp_path, file_name="w.h5", include_top=True, size=224)


@pytest.mark.slow
def test_vgg19_headless_legacy(tmp_path):
    assert_same_outputs("vgg19", tmp_path, file_name="w_notop.h5", include_top=False, size=64)


@pytest.mark.slow
def test_resnet50_with_top_legacy(tmp_path):
    assert_same_outputs("resnet50", tmp_path, file_name="w.h5", include_top=True, size=224)


@pytest.mark.parametrize("file_name", ["w.weights.h5", "w_notop.h5"])
def test_resnet50_headless(tmp_path, file_name):
    assert_same_outputs("resnet50", tmp_path, file_name=file_name, include_top=False, size=64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101", "resnet152"])
def test_deep_resnets_headless_legacy(tmp_path, name):
    assert_same_outputs(name, tmp_path, file_name="w_notop.h5", include_top=False, size=32)


def test_imagenet_table_is_keras_applications():
    for name, module, variant in (("vgg16", keras_vgg16, None), ("vgg19", keras_vgg19, None),
                                  ("resnet50", keras_resnet, "resnet50"), ("resnet101", keras_resnet, "resnet101"),
                                  ("resnet152", keras_resnet, "resnet152")):
        spec = backbone_info(name).weights["imagenet"]
        if variant is None:
            assert (spec["url"], spec["notop_url"]) == (module.WEIGHTS_PATH, module.WEIGHTS_PATH_NO_TOP)
        else:
            file_name = f"{variant}_weights_tf_dim_ordering_tf_kernels"
            assert spec["url"] == f"{keras_resnet.BASE_WEIGHTS_PATH}{file_name}.h5"
            assert spec["notop_url"] == f"{keras_resnet.BASE_WEIGHTS_PATH}{file_name}_notop.h5"
            assert (spec["file_hash"], spec["notop_file_hash"]) == keras_resnet.WEIGHTS_HASHES[variant]
        assert spec["classes"] == 1000 and spec["input_shape"] == (224, 224, 3)
    vgg16_hashes = (backbone_info("vgg16").weights["imagenet"]["file_hash"],
                    backbone_info("vgg16").weights["imagenet"]["notop_file_hash"])
    assert vgg16_hashes == ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc")


# -- fetching by URL and by name -----------------------------------------------------------------------------


def _lenet_file(tmp_path):
    model = REGISTRY.builder("lenet5")()
    path = save(model, tmp_path / "lenet.weights.h5")
    return model, path


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))


def test_file_url_with_sha256_is_verified_and_cached(tmp_path):
    model, path = _lenet_file(tmp_path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = REGISTRY.builder("lenet5")(weights=f"{path.as_uri()}#sha256={sha256}")
    assert _same_weights(loaded, model)
    assert [p.name for p in (tmp_path / "cache" / "ftkit").iterdir()] == [f"{sha256[:12]}-lenet.weights.h5"]
    path.unlink()  # the second build must come from the cache
    assert _same_weights(REGISTRY.builder("lenet5")(weights=f"{path.as_uri()}#sha256={sha256}"), model)


def test_file_url_with_wrong_hash_fails_clearly(tmp_path):
    _, path = _lenet_file(tmp_path)
    url = f"{path.as_uri()}#sha256={'0' * 64}"
    with pytest.raises(ValueError, match=r"does not match the expected hash 0{64}.*Received: weights='file://"):
        REGISTRY.builder("lenet5")(weights=url)
    assert list((tmp_path / "cache" / "ftkit").iterdir()) == []  # the rejected download is not kept
    with pytest.raises(ValueError, match=r"#sha256=<64 hex digits>.*Received: weights='file://.*#md5=abc'"):
        REGISTRY.builder("lenet5")(weights=f"{path.as_uri()}#md5=abc")


def test_missing_url_fails_clearly(tmp_path):
    url = f"{(tmp_path / 'absent.weights.h5').as_uri()}#sha256={'a' * 64}"
    with pytest.raises(OSError, match=r"could not fetch weights.*Received: weights='file://"):
        REGISTRY.builder("lenet5")(weights=url)


@pytest.mark.parametrize("include_top", [True, False])
def test_named_weights_use_the_metadata_table(tmp_path, include_top):
    """A named set is fetched from its table row (top or notop file) and checked against its md5."""
    reference = REGISTRY.builder("lenet5")(include_top=include_top)
    path = save(reference, tmp_path / f"lenet_{include_top}.weights.h5")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"not this one")
    row = {"url": path.as_uri(), "file_hash": md5, "notop_url": path.as_uri(), "notop_file_hash": md5,
           "classes": 10, "input_shape": (32, 32, 1)}
    if include_top:
        row.update(notop_url=other.as_uri())
    else:
        row.update(url=other.as_uri())
    info = dataclasses.replace(backbone_info("lenet5"), weights={"mnist": row})
    local = _builder.resolve_weights(info, "mnist", include_top=include_top)
    assert local.startswith(str(tmp_path / "cache" / "models")) and hashlib.md5(open(local, "rb").read()).hexdigest() == md5
    with pytest.raises(ValueError, match=r"10-class head.*Received: classes=3"):
        _builder.validate_builder_args(info, weights="mnist", classes=3)


@pytest.mark.parametrize("file_name", ["v.h5", "v.weights.h5", "v.keras"])
def test_weights_from_another_architecture_fail_clearly(tmp_path, file_name):
    path = save(keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)), tmp_path / file_name)
    with pytest.raises(ValueError) as err:
        REGISTRY.builder("resnet50")(include_top=False, input_shape=(32, 32, 3), weights=str(path))
    message = str(err.value)
    assert len(message) < 1000  # Keras' own message runs to ~15,000 characters of variable values
    assert message.startswith(f"resnet50: cannot load the weights in {path} into this model: 106 of the model's "
                              f"106 weighted layers differ (conv1_conv expects (7, 7, 3, 64) (64,), the file has no "
                              f"such layer; ")
    assert "and 103 more); the file has 13 layers the model lacks (block1_conv1, block1_conv2, " in message
    assert message.endswith(f"Received: weights='{path}'")


def test_weights_for_other_classes_name_the_layer_and_both_shapes(tmp_path):
    path = save(REGISTRY.builder("lenet5")(classes=5), tmp_path / "lenet5.weights.h5")
    with pytest.raises(ValueError) as err:
        REGISTRY.builder("lenet5")(classes=7, weights=str(path))
    assert str(err.value) == (
        f"lenet5: cannot load the weights in {path} into this model: 1 of the model's 5 weighted layers differ "
        f"(predictions expects (84, 7) (7,), the file has (84, 5) (5,)). The file must come from the same "
        f"architecture, channels, classes and include_top setting (keras.applications ships separate '*_notop.h5' "
        f"files for include_top=False). Received: weights='{path}'"
    )


def _plugin_registry():
    """A registry holding one plugin-style builder that, like the example plugin, refuses any weights itself."""

    def tiny(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=3,
             classifier_activation="softmax", name=None):
        if weights is not None:
            raise ValueError(f"tiny has no pretrained weights. Received: weights={weights!r}")
        inputs = keras.Input(shape=input_shape or (16, 16, 3))
        x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if include_top:
            x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
        return keras.Model(inputs, x, name=name or "tiny")

    registry = BackboneRegistry(lambda: [])
    registry.register("tiny", tiny, default_input_shape=(16, 16, 3), min_input_shape=(8, 8, 3))
    return registry


@pytest.mark.parametrize("file_name", ["tiny.weights.h5", "tiny.h5", "tiny.keras"])
def test_a_plugin_gets_a_local_weights_file_loaded_by_ftkit(tmp_path, file_name):
    registry = _plugin_registry()
    trained = registry.create("tiny")
    path = save(trained, tmp_path / file_name)
    loaded = registry.create("tiny", weights=str(path))
    assert _same_weights(loaded, trained) and not _same_weights(registry.create("tiny"), trained)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert _same_weights(registry.create("tiny", weights=f"{path.as_uri()}#sha256={sha256}"), trained)


def test_a_plugin_weights_file_that_is_missing_or_does_not_fit_fails_clearly(tmp_path):
    registry = _plugin_registry()
    with pytest.raises(ValueError, match=r"tiny: no file exists at '.*absent\.weights\.h5'.*Received: weights="):
        registry.create("tiny", weights=str(tmp_path / "absent.weights.h5"))
    path = save(registry.create("tiny", classes=5), tmp_path / "five.weights.h5")
    with pytest.raises(ValueError) as err:
        registry.create("tiny", weights=str(path))
    assert f"tiny: cannot load the weights in {path} into this model: 1 of the model's 2 weighted layers differ " \
           "(predictions expects (4, 3) (3,), the file has (4, 5) (5,))" in str(err.value)


def test_bad_weight_paths_fail_before_building(tmp_path):
    with pytest.raises(ValueError, match=r"no file exists at .*Received: weights='.*nope\.h5'"):
        REGISTRY.builder("lenet5")(weights=str(tmp_path / "nope.h5"))
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"must end in.*Received: weights='.*w\.npz'"):
        REGISTRY.builder("lenet5")(weights=str(tmp_path / "w.npz"))
