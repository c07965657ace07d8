"""The example plugin examples/ftkit-keras-applications: keras.applications' EfficientNet(V2), MobileNetV3 and
ConvNeXt registered as ftkit backbones, made visible as an installed distribution (a .dist-info on sys.path, as
test_registry.py installs the tinyvgg example). Models are built at the 32x32 minimum with weights=None."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ftkit-keras-applications"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
DIST, VERSION = PROJECT["name"], PROJECT["version"]
DECLARED = PROJECT["entry-points"]["ftkit.backbones"]  # name -> "module:attr", the plugin's own list
MODULE = "ftkit_keras_applications"
MIN = (32, 32, 3)


def _family(name: str) -> str:
    return name.rsplit("_", 1)[0]  # efficientnet_b0 -> efficientnet, mobilenetv3_small -> mobilenetv3


# The first declared name of each family (its smallest model).
ONE_PER_FAMILY = [name for i, name in enumerate(DECLARED) if _family(name) not in map(_family, list(DECLARED)[:i])]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry seeing only the plugin's distribution; ftkit's global registry sees it too (train and
    build_model look backbones up there) until the module's tests are done."""
    from ftkit.backbones import REGISTRY, BackboneRegistry

    site = tmp_path_factory.mktemp("site")
    info = site / f"{DIST.replace('-', '_')}-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {VERSION}\n")
    (info / "entry_points.txt").write_text("[ftkit.backbones]\n" + "".join(f"{k} = {v}\n" for k, v in DECLARED.items()))
    added = [str(EXAMPLE / "src"), str(site)]
    sys.path[:0] = added
    REGISTRY.refresh()
    try:
        yield BackboneRegistry(lambda: [ep for dist in importlib.metadata.distributions(path=[str(site)])
                                        for ep in dist.entry_points if ep.group == "ftkit.backbones"],
                               cache=site / "listing-cache.json")
    finally:
        for path in added:
            sys.path.remove(path)
        sys.modules.pop(MODULE, None)
        REGISTRY.refresh()


def _keras_constructor(registry, name: str):
    import keras

    return getattr(keras.applications, registry.builder(name).keras_application)


def test_every_entry_point_is_listed_under_its_own_name(registry):
    from ftkit.backbones import REGISTRY

    listing = registry.listing(count_params=False)
    assert listing.problems == []
    assert sorted(row.name for row in listing.rows) == sorted(DECLARED)
    assert {row.distribution for row in listing.rows} == {DIST}
    # Beside ftkit's zoo: no name is shadowed by the zoo, each bare name resolves to the plugin.
    assert not set(REGISTRY.shadowed()) & set(DECLARED)
    assert {REGISTRY.find(name)["distribution"] for name in DECLARED} == {DIST}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_registry_contract_at_the_minimum_size(registry, name):
    info = registry.info(name)
    assert info.missing == () and info.min_input_shape == MIN and info.family == _family(name)
    assert info.preprocessing == {"scale": 1.0, "mean": (0.0,) * 3, "std": (1.0,) * 3, "channel_order": "RGB"}
    assert info.raw_input
    # Declared without URLs: keras.applications downloads and hash-checks the file; ftkit checks the rest.
    assert info.weights == {"imagenet": {"classes": 1000, "input_shape": info.default_input_shape}}
    x = np.random.default_rng(0).uniform(0, 255, (2, *MIN)).astype("float32")
    top = registry.create(name, include_top=True, input_shape=MIN, classes=3)
    y = np.asarray(top(x, training=False))
    assert y.shape == (2, 3) and np.allclose(y.sum(axis=1), 1.0, atol=1e-5)
    features = registry.create(name, include_top=False, pooling="avg", input_shape=MIN)
    reference = _keras_constructor(registry, name)(include_top=False, weights=None, input_shape=MIN, pooling="avg")
    assert features.output_shape == reference.output_shape
    assert features.count_params() == reference.count_params()
    with pytest.raises(ValueError, match=r"at least 32x32.*Received: input_shape=\(31, 31, 3\)"):
        registry.create(name, include_top=False, input_shape=(31, 31, 3))


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_layer_groups_cover_every_weighted_layer_in_input_to_output_order(registry, name):
    from ftkit.backbones import assign_layer_groups

    info = registry.info(name)
    for kwargs in ({"include_top": True}, {"include_top": False, "pooling": "avg"}, {"include_top": False}):
        model = registry.create(name, input_shape=MIN, **kwargs)
        groups = assign_layer_groups(model, info)
        assert "<unassigned>" not in groups, [layer.name for layer in groups["<unassigned>"]]
        compiled = [re.compile(rx) for _, rx in info.layer_groups]
        for layer in model.layers:
            if layer.weights:
                assert sum(bool(rx.match(layer.name)) for rx in compiled) == 1, layer.name
        # Every group holds layers, except the pretrained classifier ("head") without the top, and ConvNeXt's
        # "top", the LayerNormalization keras.applications adds only without the top.
        empty = [g for g, layers in groups.items() if not layers]
        expected = ["head"] if not kwargs["include_top"] else ["top"] if _family(name) == "convnext" else []
        assert empty == expected, (kwargs, empty)
        position = {id(layer): i for i, layer in enumerate(model.layers)}
        spans = [(min(position[id(la)] for la in layers), max(position[id(la)] for la in layers))
                 for layers in groups.values() if layers]
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False)), (kwargs, spans)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_assembled_model_on_raw_pixels_matches_keras_applications(registry, name):
    """No double normalisation: the backbone scales its own input, so ftkit adds no normalisation layer."""
    import keras

    from ftkit.head import BACKBONE_LAYER, FEATURES_LAYER, HeadConfig, build_model

    assembled = build_model(name, num_classes=2, image_shape=MIN, head=HeadConfig())
    assert assembled.preprocess is None
    assert [layer.name for layer in assembled.model.layers[:2]] == ["image", BACKBONE_LAYER]
    features = keras.Model(assembled.model.inputs, assembled.model.get_layer(FEATURES_LAYER).output)
    reference = _keras_constructor(registry, name)(include_top=False, weights=None, input_shape=MIN, pooling="avg")
    reference.set_weights(assembled.backbone.get_weights())
    raw = np.random.default_rng(1).uniform(0, 255, (2, *MIN)).astype("float32")
    expected = np.asarray(reference(raw, training=False))
    # Untrained, these deep bodies shrink activations layer by layer (MobileNetV3's features are ~1e-11 at
    # 32x32), so the tolerance is relative to the features' own scale.
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(np.asarray(features(raw, training=False)), expected, rtol=1e-4, atol=1e-4 * scale)
    # The comparison can tell: ImageNet normalisation in front (ftkit's default) changes the features.
    normalised = ((raw / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).astype("float32")
    assert not np.allclose(np.asarray(reference(normalised, training=False)), expected, rtol=1e-2, atol=1e-2 * scale)


def test_conformance_suite_passes_for_convnext(registry):
    """ConvNeXt's LayerNormalization exists only without the top: the layer-group check groups that model too."""
    from ftkit.backbones._check import check_backbone

    results = check_backbone("convnext_tiny", registry=registry)
    assert [(r.check, r.detail) for r in results if not r.passed] == []
    assert len(results) == 11


def test_imagenet_reaches_keras_applications_unchanged(registry, monkeypatch):
    """Nothing is downloaded here: the constructor is replaced by one that records its arguments."""
    import keras

    calls = []
    for name in ("mobilenetv3_small", "convnext_tiny"):
        attr = registry.builder(name).keras_application
        original = getattr(keras.applications, attr)

        def record(original=original, **kwargs):
            calls.append(kwargs)
            return original(**{**kwargs, "weights": None})

        monkeypatch.setattr(keras.applications, attr, record)
        model = registry.create(name, include_top=False, weights="imagenet", input_shape=MIN, name="backbone")
        assert calls[-1]["weights"] == "imagenet" and calls[-1]["include_preprocessing"] is True
        # Built under Keras' own name (ConvNeXt refuses another with ImageNet weights), renamed afterwards.
        assert "name" not in calls[-1] and model.name == "backbone"
    # With the top, EfficientNet's ImageNet weights need their 224x224: ftkit refuses before Keras is called.
    monkeypatch.setattr(keras.applications, "EfficientNetB0", lambda **kwargs: calls.append(kwargs))
    with pytest.raises(ValueError, match=r"need the input size they were trained at, \(224, 224, 3\)"):
        registry.create("efficientnet_b0", include_top=True, weights="imagenet", input_shape=MIN)
    assert len(calls) == 2


def test_local_weights_file_is_loaded(registry, tmp_path):
    source = registry.create("mobilenetv3_small", include_top=False, input_shape=MIN)
    source.set_weights([w + 0.5 for w in source.get_weights()])  # unlike any fresh initialisation
    path = tmp_path / "mobilenetv3_small_notop.weights.h5"
    source.save_weights(path)
    loaded = registry.create("mobilenetv3_small", include_top=False, input_shape=MIN, weights=str(path))
    for got, want in zip(loaded.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_short_fine_tune_of_mobilenetv3_small_writes_a_model(registry, shared_data, tmp_path):
    import keras

    import ftkit.layers  # noqa: F401  (registers Preprocess for loading)
    from ftkit.training import train

    data = tmp_path / "data"
    for cls in ("ants", "bees"):
        (data / cls).mkdir(parents=True)
        for image in sorted((shared_data / "hymenoptera" / "train" / cls).iterdir())[:4]:
            shutil.copy(image, data / cls / image.name)
    recipe = {
        "data": {"train": str(data), "val_fraction": 0.25, "image_size": [32, 32], "batch_size": 4},
        "backbone": {"name": "mobilenetv3_small"},
        "schedule": {"phases": [{"train": 2, "epochs": 1, "lr": 0.001}]},  # the last two groups and the head
        "train": {"verbose": 0, "seed": 0},
        "evaluate": {"enabled": False},
    }
    result = train(recipe, out=tmp_path / "run", log=lambda *a: None)
    assert len(result.history) == 1
    model = keras.saving.load_model(result.path / "model.keras")
    probabilities = np.asarray(model([np.full((1, 32, 32, 3), 128.0, "float32")]))
    assert probabilities.shape == (1, 2) and np.isclose(probabilities.sum(), 1.0, atol=1e-5)
