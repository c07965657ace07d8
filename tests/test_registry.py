"""The backbone registry: lazy entry-point discovery, broken plugins, conflicts, in-process registration."""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import ftkit
from ftkit.backbones import (
    BackboneConflictError,
    BackboneRegistry,
    PluginError,
    UnknownBackboneError,
)
from ftkit.backbones._check import check_backbone

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ftkit-plugin-example"
BUILTINS = {"lenet5", "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "googlenet",
            "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}


def _write_plugin(root: Path, module: str, body: str, entry_points: dict[str, str], dist: str, version="1.0"):
    """A real installed distribution on sys.path: a module plus a .dist-info with entry_points.txt."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ftkit.backbones]\n{lines}\n")


GOOD_BUILDER = """
import keras
IMPORTED = True
def {fn}(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
         classes=3, classifier_activation="softmax", name=None):
    inputs = keras.Input(shape=input_shape or (32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name or "{fn}")
"""


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("fake_plugin")]:
        del sys.modules[mod]


def _registry_for(path: Path, **kwargs) -> BackboneRegistry:
    """A registry that only sees distributions under ``path`` (the entry-point source is injectable), with its
    listing cache there too (never the user's)."""
    kwargs.setdefault("cache", path / "listing-cache.json")
    return BackboneRegistry(lambda: [ep for dist in importlib.metadata.distributions(path=[str(path)])
                                     for ep in dist.entry_points if ep.group == "ftkit.backbones"], **kwargs)


def test_builtin_zoo_is_registered_through_entry_points():
    names = set(ftkit.list_backbones())
    assert BUILTINS <= names
    info = ftkit.backbone_info("resnet50")
    assert info.distribution == "ftkit"
    assert info.family == "resnet"


def test_listing_is_lazy_and_create_imports_only_the_one_asked_for(plugin_path):
    _write_plugin(plugin_path, "fake_plugin_a", GOOD_BUILDER.format(fn="net_a"), {"net_a": "fake_plugin_a:net_a"}, "dist-a")
    _write_plugin(plugin_path, "fake_plugin_b", GOOD_BUILDER.format(fn="net_b"), {"net_b": "fake_plugin_b:net_b"}, "dist-b")
    registry = _registry_for(plugin_path)
    assert registry.names() == ["net_a", "net_b"]
    assert "fake_plugin_a" not in sys.modules and "fake_plugin_b" not in sys.modules
    model = registry.create("net_b", include_top=True, classes=5, input_shape=(32, 32, 3))
    assert model.output_shape == (None, 5)
    assert "fake_plugin_b" in sys.modules and "fake_plugin_a" not in sys.modules
    assert registry.info("net_b").distribution == "dist-b"
    assert registry.info("net_b").version == "1.0"


def test_broken_plugins_are_reported_and_never_break_the_others(plugin_path):
    _write_plugin(plugin_path, "fake_plugin_good", GOOD_BUILDER.format(fn="good"), {"good": "fake_plugin_good:good"}, "dist-good")
    _write_plugin(plugin_path, "fake_plugin_crash", "raise ImportError('libfoo.so missing')\n",
                  {"crash": "fake_plugin_crash:net"}, "dist-crash")
    _write_plugin(plugin_path, "fake_plugin_notabuilder", "def net(x):\n    return x\nCONST = 3\n",
                  {"badsig": "fake_plugin_notabuilder:net", "notcallable": "fake_plugin_notabuilder:CONST"}, "dist-bad")
    registry = _registry_for(plugin_path)
    assert registry.names() == ["badsig", "crash", "good", "notcallable"]
    problems = {p.name: p for p in registry.problems()}
    assert set(problems) == {"badsig", "crash", "notcallable"}
    assert problems["crash"].distribution == "dist-crash"
    assert "libfoo.so missing" in problems["crash"].error
    # One line for a builder taking none of the arguments; each message says its cause once, unprefixed.
    assert problems["badsig"].error == (
        "the builder must accept the keras.applications arguments ['include_top', 'weights', 'input_tensor', "
        "'input_shape', 'pooling', 'classes', 'classifier_activation', 'name'] by keyword; it takes none of them. "
        "Received: net(x)")
    assert problems["notcallable"].error.startswith("not a callable builder")
    assert problems["crash"].error == "cannot import fake_plugin_crash:net: ImportError: libfoo.so missing"
    with pytest.raises(PluginError) as err:
        registry.create("badsig")
    assert str(err.value).startswith("Backbone 'badsig' from dist-bad 1.0 (fake_plugin_notabuilder:net) cannot be "
                                     "used: the builder must accept")
    assert "PluginError" not in str(err.value) and str(err.value).count("Backbone") == 1
    with pytest.raises(PluginError, match="dist-crash"):
        registry.create("crash")
    assert registry.create("good", input_shape=(32, 32, 3)).output_shape == (None, 3)


def test_two_distributions_claiming_one_name_is_an_error_naming_both(plugin_path):
    _write_plugin(plugin_path, "fake_plugin_x", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_x:net"}, "dist-x", "1.1")
    _write_plugin(plugin_path, "fake_plugin_y", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_y:net"}, "Dist_Y.pkg", "2.0")
    registry = _registry_for(plugin_path)
    with pytest.raises(BackboneConflictError) as err:
        registry.create("shared")
    # The message names the qualified names that work, not the entry points' "module:attr" look-alikes.
    assert str(err.value) == (
        "Backbone 'shared' is provided by 2 distributions (dist-x 1.1, Dist_Y.pkg 2.0), so the bare name is "
        "ambiguous; ask for 'dist-x:shared' or 'Dist_Y.pkg:shared'. Received: 'shared'"
    )
    assert "fake_plugin" not in str(err.value)
    assert registry.conflicts() == {"shared": ["dist-x:shared", "Dist_Y.pkg:shared"]}
    assert registry.problems(load=False) == [] and registry.problems() == []  # each is usable, qualified
    model = registry.create("Dist_Y.pkg:shared", input_shape=(32, 32, 3))
    assert registry.info("Dist_Y.pkg:shared").version == "2.0"
    assert model.output_shape == (None, 3)


def test_clashing_names_are_listed_qualified_and_any_pep503_spelling_works(plugin_path):
    _write_plugin(plugin_path, "fake_plugin_x", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_x:net"}, "dist-x", "1.1")
    _write_plugin(plugin_path, "fake_plugin_y", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_y:net"}, "Dist_Y.pkg", "2.0")
    _write_plugin(plugin_path, "fake_plugin_z", GOOD_BUILDER.format(fn="solo"), {"solo": "fake_plugin_z:solo"}, "dist-z")
    registry = _registry_for(plugin_path)
    assert registry.names() == ["dist-x:shared", "Dist_Y.pkg:shared", "solo"]
    for name in registry.names():  # every listed name resolves
        assert name in registry
    for spelling in ("dist_y_pkg", "DIST-Y-PKG", "dist.y__pkg", "Dist_Y.pkg"):
        assert registry.info(f"{spelling}:shared").distribution == "Dist_Y.pkg"
    assert registry.info("dist_x:shared").distribution == "dist-x"
    assert registry.info("DIST.Z:solo").distribution == "dist-z"
    with pytest.raises(UnknownBackboneError) as err:
        registry.info("dist-w:shared")
    assert str(err.value) == ("No distribution 'dist-w' provides backbone 'shared'; ask for 'dist-x:shared' or "
                              "'Dist_Y.pkg:shared'. Received: 'dist-w:shared'")


def test_models_list_shows_clashing_backbones_qualified_and_notes_the_clash_once(plugin_path, monkeypatch, capsys):
    from ftkit import backbones
    from ftkit.cli import main

    _write_plugin(plugin_path, "fake_plugin_x", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_x:net"}, "dist-x", "1.1")
    _write_plugin(plugin_path, "fake_plugin_y", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_y:net"}, "dist_y", "2.0")
    monkeypatch.setattr(backbones, "REGISTRY", _registry_for(plugin_path))
    assert main(["models", "list", "--no-params"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [["dist-x:shared", "fake_plugin_x", "dist-x"],
                                                                  ["dist_y:shared", "fake_plugin_y", "dist_y"]]
    assert err.count("shared") == 3 and err.count("\n") == 2  # one note, naming both qualified names
    assert "'shared' is provided by 2 distributions, so it is listed as 'dist-x:shared' and 'dist_y:shared'" in err
    assert "problems" not in err
    assert main(["models", "list", "--no-params", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listing["backbones"]] == ["dist-x:shared", "dist_y:shared"]
    assert listing["problems"] == []
    assert listing["conflicts"] == [{"name": "shared", "qualified_names": ["dist-x:shared", "dist_y:shared"]}]


def _zoo_and(path: Path) -> BackboneRegistry:
    """ftkit's own zoo (its real entry points) plus the distributions under ``path``."""
    zoo = [ep for ep in importlib.metadata.entry_points(group="ftkit.backbones") if ep.dist.name == "ftkit"]
    plugins = _registry_for(path)._entry_points_source
    return BackboneRegistry(lambda: [*zoo, *plugins()], cache=path / "listing-cache.json")


def test_a_plugin_never_takes_a_zoo_name_away(plugin_path, monkeypatch, capsys, recwarn):
    """README examples and shipped recipes say ``resnet50``: installing a plugin that also has one changes nothing."""
    from ftkit import backbones
    from ftkit.cli import main

    _write_plugin(plugin_path, "fake_plugin_x", GOOD_BUILDER.format(fn="net"), {"resnet50": "fake_plugin_x:net"}, "dist-x", "1.1")
    _write_plugin(plugin_path, "fake_plugin_y", GOOD_BUILDER.format(fn="net"), {"resnet50": "fake_plugin_y:net"}, "dist_y", "2.0")
    registry = _zoo_and(plugin_path)
    names = registry.names()
    assert names[names.index("resnet50"):names.index("resnet50") + 3] == ["resnet50", "dist-x:resnet50", "dist_y:resnet50"]
    assert registry.info("resnet50").distribution == "ftkit"
    assert registry.info("dist-x:resnet50").distribution == "dist-x"
    assert registry.info("ftkit:resnet50").distribution == "ftkit"
    assert registry.conflicts() == {}
    assert registry.shadowed() == {"resnet50": ["dist-x:resnet50", "dist_y:resnet50"]}
    assert registry.problems() == []
    with pytest.warns(UserWarning, match=r"^Backbone 'resnet50' is ftkit's own; 'dist-x:resnet50' and "
                                         r"'dist_y:resnet50' also provide one, reachable by that qualified name\.$"):
        model = registry.create("resnet50", include_top=False, input_shape=(32, 32, 3))
    assert model.get_layer("conv5_block3_out").output.shape[1:] == (1, 1, 2048)
    recwarn.clear()
    registry.create("resnet50", include_top=False, input_shape=(32, 32, 3))
    registry.create("dist-x:resnet50", input_shape=(32, 32, 3))
    assert [str(w.message) for w in recwarn if "ftkit's own" in str(w.message)] == []  # noted once
    with pytest.raises(UnknownBackboneError, match=r"ask for 'resnet50' or 'dist-x:resnet50' or 'dist_y:resnet50'"):
        registry.info("dist-w:resnet50")

    monkeypatch.setattr(backbones, "REGISTRY", registry)
    assert main(["models", "list", "--no-params"]) == 0
    out, err = capsys.readouterr()
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert ["resnet50", "resnet", "ftkit"] in rows and ["dist-x:resnet50", "fake_plugin_x", "dist-x"] in rows
    assert err.strip() == ("note: 'resnet50' is also provided by 'dist-x:resnet50' and 'dist_y:resnet50'; the bare "
                           "name 'resnet50' is ftkit's own.")
    assert main(["models", "list", "--no-params", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["conflicts"] == []
    assert listing["shadowed"] == [{"name": "resnet50", "qualified_names": ["dist-x:resnet50", "dist_y:resnet50"]}]


def test_names_sort_naturally():
    names = ftkit.list_backbones()
    assert [n for n in names if n.startswith("resnet")] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert [n for n in names if n.startswith("vgg")] == ["vgg11", "vgg13", "vgg16", "vgg19"]


def test_models_list_json_keeps_its_fields_and_counts_parameters(plugin_path, tmp_path, monkeypatch, capsys):
    from ftkit import backbones
    from ftkit.cli import main

    _write_plugin(plugin_path, "fake_plugin_a", GOOD_BUILDER.format(fn="net_a"), {"net_a": "fake_plugin_a:net_a"}, "dist-a")
    monkeypatch.setattr(backbones, "REGISTRY", _registry_for(plugin_path, cache=tmp_path / "cache.json"))
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "backbones": [{"name": "net_a", "family": "fake_plugin_a", "distribution": "dist-a", "version": "1.0",
                       "parameters": (3 * 9 * 4 + 4) + (4 * 3 + 3), "default_input_shape": [224, 224, 3]}],
        "problems": [],
        "conflicts": [],
        "shadowed": [],
    }


def test_unknown_name_lists_names_and_closest_match():
    with pytest.raises(UnknownBackboneError) as err:
        ftkit.create_backbone("resnet05")
    message = str(err.value)
    assert "Did you mean 'resnet50'?" in message
    assert "vgg16" in message and "lenet5" in message


def test_in_process_registration_as_decorator_and_no_silent_override():
    registry = BackboneRegistry(lambda: [])

    @registry.register("mini", default_input_shape=(16, 16, 1), min_input_shape=(8, 8, 1))
    def mini(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=2, classifier_activation="softmax", name=None):
        import keras
        inputs = keras.Input(shape=input_shape or (16, 16, 1))
        x = keras.layers.Flatten()(inputs)
        return keras.Model(inputs, keras.layers.Dense(classes, activation=classifier_activation)(x))

    assert registry.names() == ["mini"]
    info = registry.info("mini")
    assert info.default_input_shape == (16, 16, 1) and info.channels == 1
    assert "preprocessing" in info.missing and info.preprocessing["channel_order"] == "RGB"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mini", mini)
    with pytest.warns(UserWarning, match="overridden"):
        registry.register("mini", mini, override=True)
    with pytest.raises(PluginError, match=r"it takes none of them\. Received: .*<lambda>\(x\)$"):
        registry.register("bad", lambda x: x)

    def partial(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2):
        raise AssertionError("never called")

    with pytest.raises(PluginError, match=r"it lacks \['classifier_activation', 'name'\]\. Received: "):
        registry.register("partial", partial)


def _net(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
         classifier_activation="softmax", name=None):
    """A plugin-style builder whose own default size (32x32x3) differs from what the tests register."""
    import keras

    inputs = keras.Input(shape=input_shape or (32, 32, 3)) if input_tensor is None else input_tensor
    x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name or "net")


def test_registration_rejects_bad_metadata():
    registry = BackboneRegistry(lambda: [])
    with pytest.raises(ValueError, match="unknown metadata keys \\['input_size'\\]"):
        registry.register("net", _net, input_size=(3, 3))
    with pytest.raises(ValueError) as err:  # as recipes do, the closest valid key is suggested
        registry.register("net", _net, default_input_size=(48, 48, 3), layergroups=[["a", "b"]], colour=1)
    assert str(err.value).startswith(
        "Backbone 'net': unknown metadata keys ['colour', 'default_input_size', 'layergroups'] (did you mean "
        "'default_input_shape' for 'default_input_size', 'layer_groups' for 'layergroups'?); allowed keys are ")
    with pytest.raises(ValueError, match="channel_order"):
        registry.register("net2", _net, preprocessing={"channel_order": "GBR"})


@pytest.mark.parametrize(("metadata", "message"), [
    ({"default_input_shape": "big"},
     "metadata 'default_input_shape' must be (height, width, channels): three positive integers, e.g. "
     "(224, 224, 3). Received: default_input_shape='big'"),
    ({"min_input_shape": (16, 0, 3)}, "metadata 'min_input_shape' must be (height, width, channels): three "
     "positive integers, e.g. (224, 224, 3). Received: min_input_shape=(16, 0, 3)"),
    ({"default_input_shape": (64, 64, 1), "min_input_shape": (16, 16, 3)},
     "metadata 'min_input_shape' must be a shape with the same 1 channels as default_input_shape. "
     "Received: min_input_shape=(16, 16, 3)"),
    ({"fixed_input_with_top": "no"}, "metadata 'fixed_input_with_top' must be True or False. "
     "Received: fixed_input_with_top='no'"),
    ({"preprocessing": {"mean": (0.5,)}}, "metadata 'preprocessing' must be a dict whose mean has one number per "
     "channel (3) or one for all. Received: preprocessing={'mean': (0.5,)}"),
    ({"preprocessing": {"scale": "1/255"}}, "metadata 'preprocessing' must be a dict whose scale is a positive "
     "number. Received: preprocessing={'scale': '1/255'}"),
    ({"preprocessing": {"stdev": (1, 1, 1)}}, "metadata 'preprocessing' must be a dict with keys among "
     "['channel_order', 'mean', 'scale', 'std']. Received: preprocessing={'stdev': (1, 1, 1)}"),
    ({"layer_groups": ["stem", "head"]}, "metadata 'layer_groups' must be a list of [group name, regex] pairs, "
     "e.g. [['stem', 'conv1_'], ['head', 'predictions$']]. Received: layer_groups=['stem', 'head']"),
    ({"aux_taps": "inception4a_output"}, "metadata 'aux_taps' must be a list of layer names. "
     "Received: aux_taps='inception4a_output'"),
    ({"weights": {"imagenet": "https://host/w.h5"}}, "metadata 'weights' must be a dict of named weight sets"),
    ({"weights": {"imagenet": {"url": "https://host/w.h5", "notop_file_hash": "ab12"}}},
     "metadata 'weights' must be a dict of named weight sets where 'notop_file_hash' comes with the 'notop_url' it "
     "checks. Received: weights="),
    ({"paper": 1998}, "metadata 'paper' must be a string. Received: paper=1998"),
])
def test_bad_metadata_names_the_field_what_was_received_and_what_is_allowed(metadata, message):
    registry = BackboneRegistry(lambda: [])
    with pytest.raises(ValueError) as err:
        registry.register("net", _net, **metadata)
    assert str(err.value).startswith("Backbone 'net': ")
    assert message in str(err.value)
    assert registry.names() == []  # a failed registration changes nothing


def test_missing_metadata_gets_the_documented_defaults_and_passes_the_check():
    """README: the metadata is optional and missing keys get defaults; ``ftkit models check`` must agree."""
    registry = BackboneRegistry(lambda: [])
    registry.register("bare", _net)
    info = registry.info("bare")
    assert info.missing == ("default_input_shape", "layer_groups", "min_input_shape", "paper", "preprocessing")
    assert info.preprocessing == {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                                  "channel_order": "RGB"}
    results = check_backbone("bare", registry=registry)
    assert [(r.check, r.detail) for r in results if not r.passed] == []
    assert results[0].detail.endswith("defaults used for ['default_input_shape', 'layer_groups', "
                                      "'min_input_shape', 'paper', 'preprocessing']")
    # A grayscale backbone's default statistics have one value per channel, so its preprocessing layer works.
    registry.register("gray", _net, default_input_shape=(28, 28, 1))
    gray = registry.info("gray").preprocessing
    assert gray["mean"] == pytest.approx((0.449,), abs=1e-3) and gray["std"] == pytest.approx((0.226,), abs=1e-3)


def test_raw_preprocessing_adds_no_normalisation_and_keeps_the_bare_backbones_features():
    """RAW_PREPROCESSING: raw 0..255 pixels reach the backbone unchanged, with no ftkit layer in the saved model."""
    import json

    import keras
    import numpy as np

    from ftkit.backbones import IMAGENET_PREPROCESSING, RAW_PREPROCESSING, REGISTRY
    from ftkit.head import FEATURES_LAYER, HeadConfig, build_model

    REGISTRY.register("raw_test_net", _recording_builder([]), default_input_shape=(32, 32, 3),
                      preprocessing=RAW_PREPROCESSING)
    REGISTRY.register("imagenet_test_net", _recording_builder([]), default_input_shape=(32, 32, 3),
                      preprocessing=IMAGENET_PREPROCESSING)
    try:
        info = REGISTRY.info("raw_test_net")
        assert info.raw_input and not REGISTRY.info("imagenet_test_net").raw_input
        assert info.preprocessing == {"scale": 1.0, "mean": (0.0,) * 3, "std": (1.0,) * 3, "channel_order": "RGB"}
        assembled = build_model("raw_test_net", num_classes=2, image_shape=(32, 32, 3), head=HeadConfig())
        assert assembled.preprocess is None
        config = json.dumps(assembled.model.get_config())
        assert "Preprocess" not in config and "ftkit" not in config
        features = keras.Model(assembled.model.inputs, assembled.model.get_layer(FEATURES_LAYER).output)
        raw = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
        bare = np.asarray(keras.layers.GlobalAveragePooling2D()(assembled.backbone(raw)))
        np.testing.assert_array_equal(np.asarray(features([raw])), bare)
        # The comparison can tell: ImageNet statistics put a Preprocess layer in front, which changes the features.
        normalised = build_model("imagenet_test_net", num_classes=2, image_shape=(32, 32, 3), head=HeadConfig())
        assert type(normalised.preprocess).__name__ == "Preprocess"
        normalised.backbone.set_weights(assembled.backbone.get_weights())
        other = keras.Model(normalised.model.inputs, normalised.model.get_layer(FEATURES_LAYER).output)
        assert not np.allclose(np.asarray(other([raw])), bare, rtol=1e-2)
    finally:
        REGISTRY.unregister("raw_test_net")
        REGISTRY.unregister("imagenet_test_net")
    # One number for mean and std: the constant fits any channel count.
    gray = BackboneRegistry(lambda: [])
    gray.register("gray", _recording_builder([]), default_input_shape=(28, 28, 1), preprocessing=RAW_PREPROCESSING)
    assert gray.info("gray").preprocessing["mean"] == (0.0,) and gray.info("gray").raw_input


def _recording_builder(calls):
    """A fresh builder each time (registering with metadata sets the function's attribute), noting ``weights``."""

    def builder(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
                classifier_activation="softmax", name=None):
        calls.append(weights)
        return _net(include_top, None, input_tensor, input_shape, pooling, classes, classifier_activation, name)

    return builder


def test_a_named_weight_set_without_urls_is_passed_to_the_builder_which_resolves_it(tmp_path, monkeypatch):
    """``{"imagenet": {...}}`` without url/notop_url: ftkit checks what the set declares and downloads nothing."""
    from ftkit.backbones import _builder

    def no_download(*args, **kwargs):
        raise AssertionError("ftkit must not fetch a plugin's named weights")

    monkeypatch.setattr(_builder, "_fetch", no_download)
    calls = []
    registry = BackboneRegistry(lambda: [])
    registry.register("net", _recording_builder(calls), default_input_shape=(32, 32, 3),
                      weights={"imagenet": {"classes": 2, "input_shape": (32, 32, 3)}, "bare": {}})
    for include_top in (True, False):
        registry.create("net", include_top=include_top, weights="imagenet", classes=2, input_shape=(32, 32, 3))
        registry.create("net", include_top=include_top, weights="bare", input_shape=(32, 32, 3))
    assert calls == ["imagenet", "bare"] * 2
    # What the set declares is still checked before the builder is called.
    with pytest.raises(ValueError, match=r"has a 2-class head.*Received: classes=5"):
        registry.create("net", include_top=True, weights="imagenet", classes=5, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"trained on 3-channel images.*Received: input_shape=\(32, 32, 1\)"):
        registry.create("net", include_top=False, weights="imagenet", input_shape=(32, 32, 1))
    assert len(calls) == 4
    # A set that names only the file with the top still has none without it.
    registry.register("top_only", _recording_builder(calls), weights={"imagenet": {"url": "https://host/w.h5"}})
    with pytest.raises(ValueError, match=r"no file for include_top=False \(no 'notop_url' in the metadata\)"):
        registry.create("top_only", include_top=False, weights="imagenet", input_shape=(32, 32, 3))


def test_build_backbone_refuses_a_named_set_without_urls_before_building():
    """ftkit's own build_backbone fetches its sets' files, so a set without them is an error there, not a KeyError."""
    from ftkit.backbones._builder import build_backbone, with_metadata

    @with_metadata({"weights": {"imagenet": {}}})
    def zoo_style(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
                  classifier_activation="softmax", name=None):
        import keras

        return build_backbone(zoo_style, body=keras.layers.Conv2D(4, 3), head=lambda x, **kw: x,
                              include_top=include_top, weights=weights, input_tensor=input_tensor,
                              input_shape=input_shape, pooling=pooling, classes=classes,
                              classifier_activation=classifier_activation, name=name)

    with pytest.raises(ValueError, match=r"^zoo_style: weights='imagenet' are declared without 'url'/'notop_url', so "
                                         r"ftkit has no file to fetch.*Received: weights='imagenet'$"):
        zoo_style(include_top=False, weights="imagenet", input_shape=(32, 32, 3))


def test_positional_arguments_follow_keras_applications_order_for_any_builder():
    """``create_backbone(name, include_top, weights, input_tensor, input_shape, pooling, classes, ...)``, as
    ``keras.applications.VGG16(False, None)`` takes them, even for a plugin whose builder is keyword-only."""
    registry = BackboneRegistry(lambda: [])

    def keyword_only(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                     classes=2, classifier_activation="softmax", name=None):
        return _net(include_top=include_top, input_shape=input_shape, pooling=pooling, classes=classes,
                    classifier_activation=classifier_activation, name=name)

    registry.register("kwonly", keyword_only)
    model = registry.create("kwonly", False, None, None, (40, 40, 3), "max")
    assert (model.input_shape, model.output_shape) == ((None, 40, 40, 3), (None, 4))
    top = registry.create("kwonly", True, None, None, (40, 40, 3), None, 6, None, "mine")
    assert (top.output_shape, top.name) == ((None, 6), "mine")
    with pytest.raises(TypeError, match=r"got \['weights'\] both by position and by keyword"):
        registry.create("kwonly", True, None, weights=None)
    with pytest.raises(TypeError, match=r"at most 8 positional arguments.*Received: 9 positional arguments"):
        registry.create("kwonly", *([None] * 9))
    # the zoo's builders take the same order directly
    assert ftkit.create_backbone("resnet18", False, None, None, (32, 32, 3), "avg").output_shape == (None, 512)


def test_the_check_says_who_rejects_bad_arguments():
    """``_net`` never checks its arguments: ftkit's argument check rejects them, and the check says so."""
    registry = BackboneRegistry(lambda: [])

    @registry.register("bare")  # a fresh function: registering _net with metadata elsewhere sets its attribute
    def bare(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
             classifier_activation="softmax", name=None):
        return _net(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name)

    results = {r.check: r for r in check_backbone("bare", registry=registry)}
    assert results["unknown pooling rejected"].passed and results["minimum input size"].passed
    assert results["unknown pooling rejected"].detail == (
        "pooling='median' rejected by ftkit's argument check only; the builder itself accepts it")
    assert results["minimum input size"].detail == (
        "builds at (32, 32, 3); (31, 31, 3) rejected by ftkit's argument check only; the builder itself accepts it")
    zoo = {r.check: r for r in check_backbone("lenet5")}
    assert zoo["unknown pooling rejected"].detail.startswith(
        "pooling='median' rejected by the builder itself (ValueError: lenet5: pooling must be one of")


def test_create_without_input_shape_builds_at_the_registered_default():
    registry = BackboneRegistry(lambda: [])
    registry.register("net", _net, default_input_shape=(48, 40, 3))
    assert registry.create("net").input_shape == (None, 48, 40, 3)  # not the builder's own (32, 32, 3)
    assert registry.create("net", input_shape=(36, 36, 3)).input_shape == (None, 36, 36, 3)
    import keras

    tensor = keras.Input(shape=(33, 33, 3))
    assert registry.create("net", input_tensor=tensor).input_shape == (None, 33, 33, 3)


def test_parameter_counts_are_cached_per_distribution_version_and_source(plugin_path, tmp_path, monkeypatch):
    from keras.src.backend.common import global_state

    from ftkit.backbones import _builder

    _write_plugin(plugin_path, "fake_plugin_a", GOOD_BUILDER.format(fn="net_a"), {"net_a": "fake_plugin_a:net_a"}, "dist-a")
    cache = tmp_path / "cache" / "backbones.json"
    registry = _registry_for(plugin_path, cache=cache)
    expected = registry.create("net_a").count_params()
    pending = len(global_state.get_global_attribute("uninitialized_variables", []) or [])
    assert registry.parameters("net_a") == expected == (3 * 9 * 4 + 4) + (4 * 3 + 3)
    # Counting allocates no weights and leaves none for Keras to initialise later.
    assert len(global_state.get_global_attribute("uninitialized_variables", []) or []) == pending
    source = plugin_path / "fake_plugin_a.py"
    stat = source.stat()
    assert json.loads(cache.read_text())["backbones"] == {"dist-a:net_a": {
        "family": "fake_plugin_a", "default_input_shape": [224, 224, 3], "parameters": expected,
        "fingerprint": f"1.0 fake_plugin_a:net_a {stat.st_mtime_ns}-{stat.st_size}"}}

    real_count = _builder.count_parameters

    def no_building(build):
        raise AssertionError("counted again instead of reading the cache")

    monkeypatch.setattr(_builder, "count_parameters", no_building)
    assert _registry_for(plugin_path, cache=cache).parameters("net_a") == expected
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an edited editable install
    with pytest.raises(AssertionError, match="counted again"):
        _registry_for(plugin_path, cache=cache).parameters("net_a")
    monkeypatch.setattr(_builder, "count_parameters", real_count)
    assert _registry_for(plugin_path, cache=cache).parameters("net_a") == expected
    records = json.loads(cache.read_text())["backbones"]
    assert list(records) == ["dist-a:net_a"]  # the stale record is replaced, not kept beside the new one
    assert records["dist-a:net_a"]["fingerprint"] == f"1.0 fake_plugin_a:net_a {stat.st_mtime_ns + 10**9}-{stat.st_size}"
    monkeypatch.setattr(_builder, "count_parameters", no_building)
    registry.register("runtime_net", _net)  # no distribution version: counted each time, never cached
    with pytest.raises(AssertionError, match="counted again"):
        registry.parameters("runtime_net")


LISTING_SCRIPT = """
import importlib.metadata, json, sys
from ftkit import backbones
from ftkit.backbones import BackboneRegistry
from ftkit.cli import main

plugins = sys.argv[1]
backbones.REGISTRY = BackboneRegistry(lambda: [ep for d in importlib.metadata.distributions(path=[plugins])
                                               for ep in d.entry_points if ep.group == "ftkit.backbones"])
main(["models", "list"])
print(json.dumps(sorted(m for m in ("tensorflow", "keras", "fake_plugin_a") if m in sys.modules)), file=sys.stderr)
"""


def test_a_repeated_listing_imports_neither_the_plugin_nor_tensorflow(tmp_path):
    """README: a repeated ``ftkit models list`` imports no TensorFlow, plugins installed or not."""
    plugins = tmp_path / "site"
    plugins.mkdir()
    _write_plugin(plugins, "fake_plugin_a", GOOD_BUILDER.format(fn="net_a"), {"net_a": "fake_plugin_a:net_a"}, "dist-a")
    env = {**os.environ, "PYTHONPATH": str(plugins), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "TF_CPP_MIN_LOG_LEVEL": "3"}

    def listing():
        done = subprocess.run([sys.executable, "-c", LISTING_SCRIPT, str(plugins)], env=env, capture_output=True,
                              text=True, check=True)
        return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])

    first, imported_first = listing()
    second, imported_second = listing()
    assert imported_first == ["fake_plugin_a", "keras", "tensorflow"]  # the plugin imports Keras at the top
    assert imported_second == []
    assert second == first
    assert first.splitlines()[1].split() == ["net_a", "fake_plugin_a", "dist-a", "1.0", "127", "224x224x3"]
    assert (tmp_path / "xdg" / "ftkit" / "backbones.json").is_file()


def test_the_listing_cache_follows_edits_and_upgrades_of_a_plugin(plugin_path, tmp_path):
    body = GOOD_BUILDER.format(fn="net_a") + "net_a.ftkit_metadata = {'default_input_shape': (40, 40, 3)}\n"
    _write_plugin(plugin_path, "fake_plugin_a", body, {"net_a": "fake_plugin_a:net_a"}, "dist-a")
    cache = tmp_path / "backbones.json"

    def listed():
        sys.modules.pop("fake_plugin_a", None)
        rows = _registry_for(plugin_path, cache=cache).listing(count_params=False).rows
        return [(r.name, r.version, r.default_input_shape) for r in rows], "fake_plugin_a" in sys.modules

    assert listed() == ([("net_a", "1.0", [40, 40, 3])], True)
    assert listed() == ([("net_a", "1.0", [40, 40, 3])], False)  # from the cache: the plugin is not imported
    source = plugin_path / "fake_plugin_a.py"
    source.write_text(source.read_text().replace("(40, 40, 3)", "(48, 48, 3)"))  # an editable install, edited
    assert listed() == ([("net_a", "1.0", [48, 48, 3])], True)
    assert listed() == ([("net_a", "1.0", [48, 48, 3])], False)
    info = plugin_path / "dist_a-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dist-a\nVersion: 1.1\n")  # an upgrade
    info.rename(plugin_path / "dist_a-1.1.dist-info")
    assert listed() == ([("net_a", "1.1", [48, 48, 3])], True)
    assert list(json.loads(cache.read_text())["backbones"]) == ["dist-a:net_a"]


def _write_package_plugin(root: Path, *, width: int, editable: bool) -> Path:
    """A plugin package whose entry point (``fake_plugin_pkg.api:net``) takes its layer width from another
    module of the package (``blocks.py``), installed editable (PEP 660's direct_url.json) or not."""
    package = root / "fake_plugin_pkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "blocks.py").write_text(f"WIDTH = {width}\n")
    (package / "api.py").write_text(GOOD_BUILDER.format(fn="net").replace("Conv2D(4,", "Conv2D(WIDTH,")
                                    + "from fake_plugin_pkg.blocks import WIDTH\n")
    info = root / "dist_pkg-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dist-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ftkit.backbones]\nnet = fake_plugin_pkg.api:net\n")
    if editable:
        (info / "direct_url.json").write_text(json.dumps({"url": root.as_uri(), "dir_info": {"editable": True}}))
    return package / "blocks.py"


@pytest.mark.parametrize("editable", [True, False])
def test_an_edit_anywhere_in_an_editable_plugin_package_is_seen_by_the_listing(plugin_path, tmp_path, editable):
    """An editable install's version stays the same while its source changes, in any of its files; a regular
    install's files change only with its version, so only the module the entry point names is watched."""
    blocks = _write_package_plugin(plugin_path, width=4, editable=editable)
    cache = tmp_path / "cache.json"

    def counted():
        for name in [m for m in sys.modules if m.startswith("fake_plugin_pkg")]:
            del sys.modules[name]
        return _registry_for(plugin_path, cache=cache).parameters("net")

    assert counted() == (3 * 9 * 4 + 4) + (4 * 3 + 3)
    blocks.write_text("WIDTH = 6\n")  # a new mtime and size in a module the entry point does not name
    assert counted() == ((3 * 9 * 6 + 6) + (6 * 3 + 3) if editable else (3 * 9 * 4 + 4) + (4 * 3 + 3))
    assert json.loads(cache.read_text())["backbones"]["dist-pkg:net"]["fingerprint"].startswith(
        "1.0 fake_plugin_pkg.api:net tree-" if editable else "1.0 fake_plugin_pkg.api:net ")


def test_listing_reports_a_builder_that_returns_no_model_and_caches_that(plugin_path, tmp_path):
    _write_plugin(plugin_path, "fake_plugin_none", GOOD_BUILDER.format(fn="net") + "def nothing(**kwargs):\n    return None\n",
                  {"nothing": "fake_plugin_none:nothing", "net": "fake_plugin_none:net"}, "dist-none", "0.3")
    cache = tmp_path / "backbones.json"
    registry = _registry_for(plugin_path, cache=cache)
    message = ("The builder of 'nothing' from dist-none 0.3 (fake_plugin_none:nothing) must return a keras.Model; "
               "it returned None. Received: None")
    with pytest.raises(PluginError) as err:
        registry.create("nothing")
    assert str(err.value) == message
    listing = registry.listing()
    assert [(p.name, p.error) for p in listing.problems] == [("nothing", message)]
    assert [r.name for r in listing.rows] == ["net"]
    sys.modules.pop("fake_plugin_none")
    again = _registry_for(plugin_path, cache=cache).listing()
    assert again == listing and "fake_plugin_none" not in sys.modules
    results = {r.check: r for r in check_backbone("nothing", registry=registry)}
    assert not results["include_top=True"].passed and results["include_top=True"].detail == f"PluginError: {message}"


def test_example_plugin_is_listed_checked_and_built(plugin_path):
    """The repository's example plugin package, made visible as an installed distribution."""
    src = EXAMPLE / "src"
    sys.path.insert(0, str(src))
    try:
        info = plugin_path / "ftkit_plugin_example-0.2.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ftkit-plugin-example\nVersion: 0.2.0\n")
        declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]
        lines = "".join(f"{k} = {v}\n" for k, v in declared["ftkit.backbones"].items())
        (info / "entry_points.txt").write_text(f"[ftkit.backbones]\n{lines}")
        registry = _registry_for(plugin_path)
        assert registry.names() == ["tinyvgg"]
        assert registry.find("tinyvgg")["distribution"] == "ftkit-plugin-example"
        results = check_backbone("tinyvgg", registry=registry)
        assert [r.check for r in results if not r.passed] == []
        assert len(results) == 11
        model = registry.create("tinyvgg", include_top=True, classes=4, input_shape=(32, 32, 3))
        assert model.count_params() == (3 * 9 * 16 + 16) + (16 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 4 + 4)
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("ftkit_plugin_example", None)


@pytest.mark.slow
def test_example_plugin_installs_with_pip_and_shows_in_the_cli(tmp_path):
    """The path a user takes: pip install the plugin, then ``ftkit models list --json`` shows it."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-m", "ftkit", "models", "list", "--json", "--no-params"],
                         check=True, capture_output=True, text=True, env=env).stdout
    rows = {row["name"]: row for row in json.loads(out)["backbones"]}
    assert rows["tinyvgg"]["distribution"] == "ftkit-plugin-example"
    assert rows["tinyvgg"]["version"] == "0.2.0"
    assert BUILTINS <= set(rows)
    check = subprocess.run([sys.executable, "-m", "ftkit", "models", "check", "tinyvgg"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "11 passed, 0 failed" in check.stdout
