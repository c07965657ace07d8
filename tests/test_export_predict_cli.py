"""What a new user met: exports that refuse other sizes and say how to prepare an image, a faulty plugin
backbone named in one line with no run folder left behind, subcommand errors against their own usage, and
`ftkit predict` saying what it found in a folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _training_helpers import QUIET, mnist_recipe, register_tiny


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


@pytest.fixture(scope="module")
def run(tiny_mnist_run):
    return tiny_mnist_run


# -- 1. exports refuse other sizes and carry preprocessing.json ---------------------------------------------


def test_savedmodel_refuses_another_size_naming_the_expected_one(run, tmp_path):
    import tensorflow as tf

    from ftkit.evaluate import load_model
    from ftkit.training import export_run

    path = export_run(run.path, format="savedmodel", out=tmp_path)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1)).astype(np.uint8)
    expected = load_model(run.path).model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(serve(image_uint8=tf.constant(images))["output_0"].numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    for shape in [(1, 48, 40, 1), (1, 1, 16, 1), (1, 16, 16, 3)]:
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=re.escape("takes uint8 images of 16x16x1") + r".*Received.*" + re.escape(
                               " ".join(map(str, shape)))):
            serve(image_uint8=tf.zeros(shape, tf.uint8))


@pytest.mark.slow
def test_tflite_refuses_another_size_after_resize_tensor_input(run, tmp_path):
    import tensorflow as tf

    from ftkit.training import export_run

    path = export_run(run.path, format="tflite", out=tmp_path)
    interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [-1, 16, 16, 1]
    with pytest.raises(RuntimeError, match="only allows mutating unknown dimensions"):
        interpreter.resize_tensor_input(index, (1, 48, 48, 1), strict=True)
    interpreter.resize_tensor_input(index, (1, 48, 48, 1))  # not strict: the model itself must refuse
    with pytest.raises(RuntimeError, match=r"CONCATENATION.*failed to prepare|48 != 16"):
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, np.zeros((1, 48, 48, 1), np.uint8))
        interpreter.invoke()


def test_every_export_writes_preprocessing_json(run, tmp_path):
    from ftkit.training import export_run

    export_run(run.path, format="keras", out=tmp_path)
    spec = json.loads((tmp_path / "preprocessing.json").read_text())
    assert spec["input_shape"] == [None, 16, 16, 1] and spec["image_size"] == [16, 16] and spec["channels"] == 1
    assert spec["dtype"] == "uint8" and spec["range"] == [0, 255] and spec["resize"] == "stretch"
    assert spec["class_names"] == ["0", "1", "2"] and spec["input_name"] == "image_uint8"
    assert "tf.image.resize(image, (H, W), method='bilinear')" in spec["how_to"]
    assert "ratio=r" in spec["how_to"] and "round to uint8" in spec["how_to"]


def _readme_recipe():
    """The ``prepare`` function of README's export section, executed as a user would copy it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- export-recipe -->\s*```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the README's own example
    return namespace["prepare"]


def test_readme_recipe_gives_ftkit_predicts_pixels_rounded(shared_data):
    """The pixels README tells a user to feed an export are ftkit's (those predict and training feed), rounded."""
    from ftkit.evaluate.images import load_batch

    prepare = _readme_recipe()
    paths = sorted(str(p) for p in (shared_data / "hymenoptera" / "val" / "bees").glob("*.jpg"))[:4]
    for size in [(32, 32), (24, 40)]:
        ours, kept, _ = load_batch(paths, image_size=size, channels=3)
        assert kept == list(range(len(paths)))
        theirs = np.stack([prepare(path, size).numpy() for path in paths])
        assert theirs.dtype == np.uint8 and theirs.shape == (len(paths), *size, 3)
        np.testing.assert_array_equal(theirs, np.clip(np.round(ours), 0, 255).astype(np.uint8))


# -- 3. a faulty plugin backbone: one line naming it, no run folder left behind ---------------------------

RAISING, IGNORING = "raising_walkthrough_test", "ignores_shape_walkthrough_test"


def _raising(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
             classifier_activation="softmax", name=None):
    raise RuntimeError("plugin bug: no such layer 'conv9'")


def _ignoring(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
              classifier_activation="softmax", name=None):
    import keras

    inputs = keras.Input((16, 16, 1))  # input_shape ignored, as the walkthrough's plugin did
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="stem_conv")(inputs))


@pytest.fixture(scope="module")
def faulty():
    import ftkit

    for name, builder in ((RAISING, _raising), (IGNORING, _ignoring)):
        if name not in ftkit.list_backbones():
            ftkit.register_backbone(name, builder, default_input_shape=(16, 16, 1), min_input_shape=(8, 8, 1))


def _faulty_recipe(shared_data, backbone: str) -> dict:
    recipe = mnist_recipe(str(shared_data / "mnist"), backbone=backbone)
    recipe["data"]["image_size"] = [24, 24]
    return recipe


def test_a_builder_that_raises_is_named_and_leaves_no_run_folder(faulty, shared_data, tmp_path):
    from ftkit.training import train
    from ftkit.training.engine import BackboneBuildError

    out = tmp_path / "run"
    with pytest.raises(BackboneBuildError) as caught:
        train(_faulty_recipe(shared_data, RAISING), out=out, **QUIET)
    message = str(caught.value)
    assert message.startswith(f"backbone {RAISING!r} [<runtime>] could not be built: its builder raised "
                              "RuntimeError: plugin bug: no such layer 'conv9'.")
    assert f"ftkit models check {RAISING}" in message and "\n" not in message
    assert not out.exists()


def test_a_builder_that_ignores_input_shape_names_both_shapes(faulty, shared_data, tmp_path):
    from ftkit.training import train
    from ftkit.training.engine import BackboneBuildError

    out = tmp_path / "made_by_user"
    out.mkdir()  # the user's empty folder stays, empty
    with pytest.raises(BackboneBuildError, match=re.escape(
            f"backbone {IGNORING!r} [<runtime>] could not be built: it ignores input_shape: asked for "
            f"(24, 24, 1) (data.image_size and channels), it built (16, 16, 1). Check it with `ftkit models check "
            f"{IGNORING}`.")):
        train(_faulty_recipe(shared_data, IGNORING), out=out, **QUIET)
    assert out.is_dir() and list(out.iterdir()) == []
    # the same --out again: the same error, not "the run folder exists ... --resume"
    with pytest.raises(BackboneBuildError, match="ignores input_shape"):
        train(_faulty_recipe(shared_data, IGNORING), out=out, **QUIET)


def test_cli_train_with_a_faulty_backbone_prints_one_line(faulty, shared_data, tmp_path, capsys):
    import yaml

    from ftkit.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_faulty_recipe(shared_data, RAISING)))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ftkit train: error:")]
    assert len(lines) == 1 and f"backbone {RAISING!r}" in lines[0] and "RuntimeError: plugin bug" in lines[0]
    assert not (tmp_path / "run").exists()


# -- 4. the CLI's errors and help --------------------------------------------------------------------------


def _cli_error(argv, capsys) -> str:
    from ftkit.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_an_unknown_flag_is_reported_with_the_subcommands_usage(capsys):
    err = _cli_error(["predict", "--topk", "3", "x", "y"], capsys)
    assert err.startswith("usage: ftkit predict ") and "ftkit predict: error: unrecognized arguments: --topk" in err
    err = _cli_error(["data", "check", "x", "--bogus"], capsys)
    assert err.startswith("usage: ftkit data check ") and "unrecognized arguments: --bogus" in err


def test_a_misspelt_command_or_choice_gets_the_closest_one(capsys):
    assert "invalid choice: 'predcit'" in (err := _cli_error(["predcit", "x"], capsys))
    assert err.rstrip().endswith("Did you mean 'predict'?")
    assert _cli_error(["data", "chek", "x"], capsys).rstrip().endswith("Did you mean 'check'?")
    assert _cli_error(["export", "r", "--format", "tflit"], capsys).rstrip().endswith("Did you mean 'tflite'?")
    assert "Did you mean" not in _cli_error(["zzzzzz"], capsys)


def _help(argv, capsys) -> str:
    from ftkit.cli import main

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width


def test_help_says_what_each_option_does_and_its_default(capsys):
    export = _help(["export"], capsys)
    assert "preprocessing.json" in export and "(default: keras)" in export
    lr_find = _help(["lr-find"], capsys)
    for text in ("--set SECTION.KEY=VALUE override a recipe value", "(default: a new runs/<recipe>-lr-find-<time>",
                 "(default: 100)", "(default: 1e-07)", "(default: 10.0)"):
        assert text in lr_find
    assert "Look at what a recipe's augment section does" in _help(["augment"], capsys)
    check = _help(["data", "check"], capsys)
    assert "--csv-root DIR" in check and "--root" not in check


def test_data_check_still_takes_root_as_an_option_for_old_scripts(shared_data, tmp_path):
    from ftkit.cli import build_parser

    args = build_parser().parse_args(["data", "check", "labels.csv", "--root", str(tmp_path)])
    assert args.source == "labels.csv" and args.root == str(tmp_path)
    args = build_parser().parse_args(["data", "check", "labels.csv", "--csv-root", "base"])
    assert args.root == "base"


# -- 5. predict says what it found --------------------------------------------------------------------------


def _photo(path: Path, shared_data) -> Path:
    source = sorted((shared_data / "hymenoptera" / "val" / "ants").glob("*.jpg"))[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source.read_bytes())
    return path


def test_predict_on_an_empty_folder_says_no_file_was_found(run, tmp_path, capsys):
    from ftkit.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(run.path), str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"no files found in {empty} (every file below it is tried, whatever its extension" in err
    assert "0 predicted, 0 unreadable, 0 skipped" in err


def test_predict_reports_hidden_files_and_folders_as_skipped(run, shared_data, tmp_path, capsys):
    from ftkit.cli import main
    from ftkit.evaluate.predict import predict_paths

    folder = tmp_path / "photos"
    _photo(folder / "ant.jpg", shared_data)
    _photo(folder / ".dotfile.jpg", shared_data)
    _photo(folder / ".hidden" / "inside.jpg", shared_data)
    _photo(folder / "sub" / "Thumbs.db", shared_data)
    result = predict_paths(run.path, [folder])
    assert result.paths == [str(folder / "ant.jpg")]
    assert [(Path(s["path"]).name, s["reason"]) for s in result.skipped] == [
        (".dotfile.jpg", "hidden"), (".hidden", "hidden"), ("Thumbs.db", "system file")]
    assert main(["predict", str(run.path), str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {folder / '.dotfile.jpg'}: hidden (" in err
    assert "1 predicted, 0 unreadable, 3 (2 hidden, 1 system file) skipped" in err
    # named explicitly, a hidden file is predicted
    assert predict_paths(run.path, [folder / ".dotfile.jpg"]).paths == [str(folder / ".dotfile.jpg")]


def test_predict_checks_the_csv_folder_before_predicting(run, shared_data, tmp_path, capsys, monkeypatch):
    from ftkit.cli import main
    from ftkit.evaluate import predict

    image = _photo(tmp_path / "ant.jpg", shared_data)
    called = []
    monkeypatch.setattr(predict, "predict_paths", lambda *a, **k: called.append(a))
    missing = tmp_path / "nonexistent" / "x.csv"
    assert main(["predict", str(run.path), str(image), "--csv", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"ftkit predict: error: The CSV file's folder {str(missing.parent)!r} does not exist" in err
    assert f"Received: csv={str(missing)!r}" in err and called == []
    assert main(["predict", str(run.path), str(image), "--csv", str(tmp_path)]) == 2
    assert "would replace a folder" in capsys.readouterr().err and called == []
