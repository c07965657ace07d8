"""The backbone registry: lazy entry-point discovery, broken plugins, conflicts, in-process registration."""

import importlib.metadata
import json
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


def _registry_for(path: Path) -> BackboneRegistry:
    """A registry that only sees distributions under ``path`` (the entry-point source is injectable)."""
    return BackboneRegistry(lambda: [ep for dist in importlib.metadata.distributions(path=[str(path)])
                                     for ep in dist.entry_points if ep.group == "ftkit.backbones"])


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
    assert "lacks ['include_top'" in problems["badsig"].error
    assert "not a callable builder" in problems["notcallable"].error
    with pytest.raises(PluginError, match="dist-crash"):
        registry.create("crash")
    assert registry.create("good", input_shape=(32, 32, 3)).output_shape == (None, 3)


def test_two_distributions_claiming_one_name_is_an_error_naming_both(plugin_path):
    _write_plugin(plugin_path, "fake_plugin_x", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_x:net"}, "dist-x", "1.1")
    _write_plugin(plugin_path, "fake_plugin_y", GOOD_BUILDER.format(fn="net"), {"shared": "fake_plugin_y:net"}, "dist-y", "2.0")
    registry = _registry_for(plugin_path)
    with pytest.raises(BackboneConflictError) as err:
        registry.create("shared")
    assert "dist-x" in str(err.value) and "dist-y" in str(err.value)
    assert [p.error for p in registry.problems(load=False)] == ["name conflict between dist-x, dist-y"] * 2
    model = registry.create("dist-y:shared", input_shape=(32, 32, 3))
    assert registry.info("dist-y:shared").version == "2.0"
    assert model.output_shape == (None, 3)


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
    with pytest.raises(PluginError, match="lacks"):
        registry.register("bad", lambda x: x)


def test_registration_rejects_bad_metadata():
    registry = BackboneRegistry(lambda: [])

    def net(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=2,
            classifier_activation="softmax", name=None):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="unknown metadata keys \\['input_size'\\]"):
        registry.register("net", net, input_size=(3, 3))
    with pytest.raises(ValueError, match="channel_order"):
        registry.register("net2", net, preprocessing={"channel_order": "GBR"})


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
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
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
