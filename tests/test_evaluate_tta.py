"""Test-time augmentation (``tta="flip"``): each image's probabilities are the mean of the model's for the image and
its mirror image, in evaluation, prediction, the CLI, the report, compare and training's final evaluation.

The models are built by hand (Flatten + a Dense softmax with chosen weights), so the expected probabilities are
computed directly from ``model(x)`` and ``model(x[:, :, ::-1])``."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from ftkit.evaluate import (
    LabelledFiles,
    LoadedModel,
    evaluate_model,
    evaluate_run,
    predict_batches,
    predict_paths,
)
from ftkit.evaluate.report import FILES, read_predictions_csv
from ftkit.evaluate.runs import TTA_HELP

H, W = 6, 10  # not square, so a flip along the wrong axis gives other numbers (or fails)
LINE = "Test-time augmentation: horizontal flip, 2 views averaged"


def _dense_model(kernel, bias):
    """Raw 0..255 pixels in, softmax(flatten(x) @ kernel + bias) out."""
    import keras

    model = keras.Sequential([keras.Input((H, W, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(kernel.shape[1], activation="softmax")])
    model.layers[-1].set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def _save_run(run_dir, model, classes):
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    meta = {"class_names": classes, "image_size": [H, W], "channels": 3, "resize": "stretch", "backbone": "dense"}
    (run_dir / "ftkit_run.json").write_text(json.dumps(meta))
    return run_dir


def _write_folder(root, images, labels, classes):
    """PNGs (lossless) in class folders; returns {path: image}."""
    written = {}
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = root / classes[label] / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        written[str(path.resolve())] = image
    return written


def _loaded(model, classes, run_dir):
    return LoadedModel(model=model, class_names=classes, image_size=(H, W), channels=3, resize="stretch",
                       source=str(run_dir / "model.keras"), run_dir=run_dir)


def _direct(model, images):
    """``(model(x), mean of model(x) and model of x mirrored)`` computed directly, float64."""
    x = np.asarray(images, dtype="float32")
    plain = np.asarray(model(x), dtype=np.float64)
    return plain, (plain + np.asarray(model(x[:, :, ::-1]), dtype=np.float64)) / 2


def _csv_probs(path):
    paths, _, _, probs, _ = read_predictions_csv(path)
    return dict(zip(paths, probs, strict=True))


# -- a random model on random images: the probabilities ------------------------------------------------------


RANDOM_CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def random_case(tmp_path_factory):
    rng = np.random.default_rng(0)
    model = _dense_model(rng.normal(0, 0.004, (H * W * 3, 3)), np.zeros(3))
    images = rng.integers(0, 256, (6, H, W, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 2, 2])
    base = tmp_path_factory.mktemp("tta_random")
    files = _write_folder(base / "data", images, labels, RANDOM_CLASSES)
    run = _save_run(base / "run", model, RANDOM_CLASSES)
    plain, flipped = _direct(model, images)
    # The expected numbers tell the views apart: TTA changes them, and mirroring the height (or the channels)
    # instead of the width would give others.
    x = images.astype("float32")
    assert not np.allclose(plain, flipped, atol=1e-3)
    assert not np.allclose((plain + np.asarray(model(x[:, ::-1]))) / 2, flipped, atol=1e-3)
    assert not np.allclose((plain + np.asarray(model(x[..., ::-1]))) / 2, flipped, atol=1e-3)
    return {"model": model, "images": images, "labels": labels, "files": files, "run": run,
            "plain": plain, "flipped": flipped, "data": base / "data"}


def _by_path(case, probs_of_path):
    order = list(case["files"])
    row = {path: i for i, path in enumerate(order)}
    return np.array([probs_of_path[p] for p in order]), [row[p] for p in order]


@pytest.mark.parametrize("tta", [None, "flip"])
def test_evaluate_model_probabilities_are_the_mean_of_the_image_and_its_mirror(random_case, tmp_path, tta):
    case = random_case
    loaded = _loaded(case["model"], RANDOM_CLASSES, case["run"])
    report = evaluate_model(loaded, case["data"], tmp_path / "files", tta=tta)
    assert report["tta"] == tta and report["n_samples"] == 6
    written = _csv_probs(tmp_path / "files" / FILES["predictions"])
    probs, rows = _by_path(case, written)
    expected = case["flipped" if tta else "plain"]
    np.testing.assert_allclose(probs, expected[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)

    # in-memory images (MNIST's path: predict_images)
    index = LabelledFiles(paths=[f"test[{i}]" for i in range(6)], labels=case["labels"], class_names=RANDOM_CLASSES,
                          source="arrays", images=case["images"])
    report = evaluate_model(loaded, index, tmp_path / "memory", tta=tta)
    assert report["tta"] == tta
    probs = np.array(list(_csv_probs(tmp_path / "memory" / FILES["predictions"]).values()))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_predict_paths_and_batches_average_the_mirror_image(random_case):
    import tensorflow as tf

    case = random_case
    loaded = _loaded(case["model"], RANDOM_CLASSES, case["run"])
    result = predict_paths(loaded, [case["data"]], tta="flip")
    assert result.tta == "flip"
    probs, rows = _by_path(case, dict(zip(result.paths, result.probs, strict=True)))
    np.testing.assert_allclose(probs, case["flipped"][rows], rtol=1e-5, atol=1e-6)
    plain = predict_paths(loaded, [case["data"]])
    assert plain.tta is None
    np.testing.assert_allclose(_by_path(case, dict(zip(plain.paths, plain.probs, strict=True)))[0],
                               case["plain"][rows], rtol=1e-5, atol=1e-6)
    # training's final evaluation of in-memory data: a tf.data.Dataset of batches
    batches = tf.data.Dataset.from_tensor_slices(case["images"].astype("float32")).batch(4)
    np.testing.assert_allclose(predict_batches(case["model"], batches, tta="flip"), case["flipped"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_batches(case["model"], batches), case["plain"], rtol=1e-5, atol=1e-6)


def test_cli_predict_tta_flag_writes_averaged_probabilities(random_case, tmp_path, capsys):
    from ftkit.cli import main

    case = random_case
    out = tmp_path / "p.csv"
    assert main(["predict", str(case["run"]), str(case["data"]), "--tta", "flip", "--csv", str(out)]) == 0
    assert "test-time augmentation: horizontal flip, 2 views averaged" in capsys.readouterr().err
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = {row["path"]: [float(row[f"prob_{c}"]) for c in RANDOM_CLASSES] for row in rows}
    ordered, at = _by_path(case, probs)
    np.testing.assert_allclose(ordered, case["flipped"][at], atol=1e-6)  # the CSV rounds to 6 decimals
    # the CSV records the TTA in a column of its own, after status; without it the columns are as they were
    with open(out, newline="") as handle:
        assert next(csv.reader(handle))[:4] == ["path", "status", "tta", "top1"]
    assert [row["tta"] for row in rows] == ["flip"] * 6
    assert main(["predict", str(case["run"]), str(case["data"]), "--csv", str(tmp_path / "plain.csv")]) == 0
    with open(tmp_path / "plain.csv", newline="") as handle:
        assert next(csv.reader(handle))[:3] == ["path", "status", "top1"]


# -- a model that knows left from right: flipping changes its answer ------------------------------------------


SIDES = ["left", "right"]


@pytest.fixture(scope="module")
def sided(tmp_path_factory):
    """Class "left" scores s * (sum of the left half's pixels - the right half's) + 0.5, "right" scores 0.

    Without TTA an image brighter on the right is "right" (the difference is -2.4 + 0.5). With it the mirror
    image's +2.4 + 0.5 enters: the mean of sigmoid(0.5 + d) and sigmoid(0.5 - d) is above 1/2 for every d, so
    every image becomes "left". Two of each class: accuracy 1.0 without TTA, 0.5 with it."""
    columns = np.broadcast_to(np.arange(W)[None, :, None], (H, W, 3)).reshape(-1)
    sign = np.where(columns < W // 2, 1.0, -1.0)
    s = 2.4 / (H * (W // 2) * 3 * 150)
    kernel = np.stack([s * sign, np.zeros_like(sign)], axis=1)
    model = _dense_model(kernel, np.array([0.5, 0.0]))
    rng = np.random.default_rng(1)
    images = []
    for bright_left in (True, True, False, False):
        image = np.full((H, W, 3), 50, dtype=np.int64)
        image[:, : W // 2] = 200
        image += rng.integers(-3, 4, image.shape)  # not mirror-symmetric row by row
        images.append((image if bright_left else image[:, ::-1]).clip(0, 255).astype(np.uint8))
    images = np.stack(images)
    labels = np.array([0, 0, 1, 1])
    base = tmp_path_factory.mktemp("tta_sided")
    _write_folder(base / "data", images, labels, SIDES)
    plain, flipped = _direct(model, images)
    assert (plain.argmax(1) == labels).all() and (flipped.argmax(1) == [0, 0, 0, 0]).all()
    return {"run": _save_run(base / "run", model, SIDES), "data": base / "data", "images": images, "labels": labels,
            "plain": plain, "flipped": flipped}


@pytest.fixture(scope="module")
def sided_reports(sided, tmp_path_factory):
    """``ftkit evaluate RUN DATA`` without and with ``--tta flip``: (report dicts, their parent folder)."""
    from ftkit.cli import main

    out = tmp_path_factory.mktemp("tta_reports")
    reports = {}
    for name, extra in (("plain", []), ("flip", ["--tta", "flip"])):
        assert main(["evaluate", str(sided["run"]), str(sided["data"]), "--out", str(out / name), *extra]) == 0
        reports[name] = json.loads((out / name / FILES["json"]).read_text())
    return reports, out


def test_flip_changes_the_predicted_class_and_the_accuracy_by_the_expected_amount(sided, sided_reports, tmp_path,
                                                                                  capsys):
    from ftkit.cli import main

    reports, out = sided_reports
    expected = {name: float((sided[name].argmax(1) == sided["labels"]).mean()) for name in ("plain", "flipped")}
    assert expected == {"plain": 1.0, "flipped": 0.5}
    assert reports["plain"]["accuracy"] == expected["plain"]
    assert reports["flip"]["accuracy"] == expected["flipped"]
    assert reports["flip"]["confusion_matrix"] == [[2, 0], [2, 0]]
    # the Python API gives the same report
    report = evaluate_run(sided["run"], sided["data"], tmp_path / "api", tta="flip")
    assert report["accuracy"] == 0.5 and report["tta"] == "flip"
    capsys.readouterr()
    assert main(["evaluate", str(sided["run"]), str(sided["data"]), "--out", str(tmp_path / "cli"), "--tta", "flip"]) == 0
    printed = capsys.readouterr().out
    assert "test-time augmentation: horizontal flip, 2 views averaged" in printed and "accuracy 0.5000" in printed


def test_report_json_md_and_html_record_the_tta(sided_reports):
    reports, out = sided_reports
    assert reports["flip"]["tta"] == "flip" and reports["plain"]["tta"] is None
    for name in ("flip", "plain"):
        assert '"tta": ' + ('"flip"' if name == "flip" else "null") in (out / name / FILES["json"]).read_text()
        markdown = (out / name / FILES["markdown"]).read_text()
        page = (out / name / FILES["html"]).read_text()
        assert (LINE in markdown) == (LINE in page) == (name == "flip")
    # predictions.csv holds the averaged probabilities
    probs = read_predictions_csv(out / "flip" / FILES["predictions"])[3]
    assert np.allclose(probs.sum(axis=1), 1) and (probs[:, 0] > 0.5).all()


def test_compare_notes_differing_tta(sided_reports, tmp_path, capsys):
    from ftkit.cli import main
    from ftkit.evaluate import compare_runs

    _, out = sided_reports
    result = compare_runs(out / "plain", out / "flip", out_dir=tmp_path / "cmp")
    assert result["a"]["tta"] is None and result["b"]["tta"] == "flip"
    assert len(result["notes"]) == 1
    note = result["notes"][0]
    assert "A test-time augmentation: none, B test-time augmentation: horizontal flip" in note
    assert note in (tmp_path / "cmp" / "compare.md").read_text()
    assert "differ in test-time augmentation" in (tmp_path / "cmp" / "compare.html").read_text()
    assert compare_runs(out / "flip", out / "flip")["notes"] == []
    assert compare_runs(out / "plain", out / "plain")["notes"] == []
    capsys.readouterr()
    assert main(["compare", str(out / "plain"), str(out / "flip")]) == 0
    assert "differ in test-time augmentation" in capsys.readouterr().out


def test_default_report_folders_keep_the_tta_evaluation_beside_the_plain_one(sided, tmp_path, capsys):
    import shutil

    from ftkit.cli import main
    from ftkit.evaluate import compare_runs, default_report_dir

    run = shutil.copytree(sided["run"], tmp_path / "run")
    plain = evaluate_run(run, sided["data"])
    flip = evaluate_run(run, sided["data"], tta="flip")
    assert plain["out_dir"] == str(run / "report" / "data")
    assert flip["out_dir"] == str(run / "report" / "data-tta-flip")
    # the plain evaluation is still there, not replaced by the later one with TTA
    kept = json.loads((run / "report" / "data" / FILES["json"]).read_text())
    assert kept["tta"] is None and kept["accuracy"] == 1.0
    assert "differ in test-time augmentation" in compare_runs(plain["out_dir"], flip["out_dir"])["notes"][0]
    capsys.readouterr()
    assert main(["evaluate", str(run), str(sided["data"]), "--tta", "flip"]) == 0
    assert f"report: {run / 'report' / 'data-tta-flip'}/report.html" in capsys.readouterr().out
    digits = LabelledFiles(paths=[], labels=np.zeros(0, np.int64), class_names=SIDES, source="/x/digits/test")
    assert default_report_dir(run, digits, checkpoint="best", tta="flip").name == "digits-test-best-tta-flip"
    assert default_report_dir(run, digits).name == "digits-test"
    with pytest.raises(ValueError, match="Received: tta='mirror'"):
        default_report_dir(run, digits, tta="mirror")


def test_evaluating_without_tta_a_run_trained_with_it_warns(sided, tmp_path, capsys):
    import shutil

    import yaml

    from ftkit.cli import main

    run = shutil.copytree(sided["run"], tmp_path / "run")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"evaluate": {"tta": "flip", "splits": ["val", "test"]}}))
    assert main(["evaluate", str(run), str(sided["data"]), "--out", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: training's final evaluation ({run / 'report' / 'val'}, {run / 'report' / 'test'}) used "
            f"test-time augmentation (horizontal flip, 2 views averaged: the recipe's evaluate.tta flip) and this "
            f"evaluation does not, so its scores differ from those for that reason too: pass --tta flip (Python: "
            f"tta='flip') to evaluate as training did") in err
    assert "training's final evaluation" in json.loads((tmp_path / "plain" / FILES["json"]).read_text())["warnings"][0]
    assert main(["evaluate", str(run), str(sided["data"]), "--out", str(tmp_path / "flip"), "--tta", "flip"]) == 0
    assert "training's final evaluation" not in capsys.readouterr().err
    for section in ({"tta": None}, {"tta": "flip", "enabled": False}):  # no TTA at training, or no evaluation
        (run / "recipe.yaml").write_text(yaml.safe_dump({"evaluate": section}))
        assert not evaluate_run(run, sided["data"], tmp_path / "again")["warnings"]


# -- flags, help and bad values ------------------------------------------------------------------------------


def _help(argv, capsys) -> str:
    from ftkit.cli import main

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_tta_flag_help_and_bad_value(command, capsys):
    from ftkit.cli import main

    text = _help([command], capsys)
    assert "--tta {flip}" in text
    for words in ("mirror image", "doubles the inference time", "not digits or text"):
        assert words in text
    with pytest.raises(SystemExit) as exited:
        main([command, "run", "x", "--tta", "mirror"])
    assert exited.value.code == 2
    assert "argument --tta: invalid choice: 'mirror' (choose from" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["mirror", "Flip", True, ["flip"]])
def test_python_refuses_a_bad_tta_naming_it_and_the_allowed(random_case, tmp_path, bad):
    case = random_case
    loaded = _loaded(case["model"], RANDOM_CLASSES, case["run"])
    calls = [lambda: evaluate_model(loaded, case["data"], tmp_path / "r", tta=bad),
             lambda: evaluate_run(case["run"], case["data"], tmp_path / "r", tta=bad),
             lambda: predict_paths(loaded, [case["data"]], tta=bad),
             lambda: predict_batches(case["model"], [case["images"]], tta=bad)]
    for call in calls:
        with pytest.raises(ValueError, match=r"tta must be None .* \['flip'\]") as raised:
            call()
        assert str(raised.value).endswith(f"Received: tta={bad!r}")
    assert not (tmp_path / "r").exists()


def test_recipe_tta_key(repo_root):
    from ftkit.recipe import RecipeError, load_recipe

    quickstart = repo_root / "recipes" / "quickstart.yaml"
    assert load_recipe(quickstart).evaluate.tta is None
    assert load_recipe(quickstart, overrides=["evaluate.tta=flip"]).evaluate.tta == "flip"
    for text, received, hint in (("mirror", "'mirror'", ""), ("true", "True", ""),
                                 ("Flip", "'Flip'", " Did you mean 'flip'?")):
        with pytest.raises(RecipeError) as raised:
            load_recipe(quickstart, overrides=[f"evaluate.tta={text}"])
        # the modes and their help are the CLI's (ftkit.evaluate.runs), not a second copy
        assert (f"evaluate.tta: must be 'flip' or null (no test-time augmentation): {TTA_HELP}.{hint} Received: "
                f"evaluate.tta={received}") in str(raised.value)


def test_recipe_loading_imports_no_tensorflow_or_scikit_learn():
    import subprocess
    import sys

    code = "import ftkit.recipe, sys; print([m for m in ('tensorflow', 'sklearn', 'keras') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_runs_recorded_before_evaluate_tta_still_resume(repo_root):
    """A recipe.yaml written before the key existed validates with ``tta: null``; its digest must not change, or
    ``ftkit train --resume`` would call the run's recipe edited."""
    from ftkit.recipe import load_recipe
    from ftkit.training.runs import recipe_digest

    recipe = load_recipe(repo_root / "recipes" / "quickstart.yaml").to_dict()
    old = {**recipe, "evaluate": {k: v for k, v in recipe["evaluate"].items() if k != "tta"}}
    assert recipe_digest(recipe) == recipe_digest(old)
    assert recipe_digest({**recipe, "evaluate": {**recipe["evaluate"], "tta": "flip"}}) != recipe_digest(old)


# -- training's final evaluation -----------------------------------------------------------------------------


def test_recipe_tta_reaches_trainings_final_evaluation(mnist, tmp_path, monkeypatch):
    """MNIST (in-memory: predict_batches and evaluate_predictions) trained for real; the report's probabilities
    are model.keras's averaged over the mirror image. The file path's evaluate_model is checked for the
    argument it receives, on a folder of PNGs written from the same digits."""
    import keras
    from _training_helpers import QUIET, mnist_recipe, register_tiny

    from ftkit.data import sources
    from ftkit.evaluate import evaluation
    from ftkit.evaluate.images import decode_arrays
    from ftkit.training import train

    register_tiny()
    recipe = mnist_recipe(mnist, phases=[{"train": "head", "epochs": 1, "lr": 0.01}],
                          evaluate={"enabled": True, "splits": ["val"], "tta": "flip"})
    printed = []
    train(recipe, out=tmp_path / "run", log=printed.append)
    report = json.loads((tmp_path / "run" / "report" / "val" / FILES["json"]).read_text())
    assert report["tta"] == "flip"
    # the summary says the final val score is with TTA (the epoch table's val_acc is without)
    summary = "\n".join(str(line) for line in printed)
    assert (f"val: accuracy {report['accuracy']:.4f} on {report['n_samples']} images (flip TTA), report "
            f"{tmp_path / 'run' / 'report' / 'val' / 'report.html'}") in summary
    # evaluated again: without --tta, a warning and other numbers; with it, training's numbers, in another folder
    again = evaluate_run(tmp_path / "run", split="val")
    assert again["tta"] is None and again["out_dir"] == str(tmp_path / "run" / "report" / "mnist-val")
    assert [w for w in again["warnings"] if "pass --tta flip (Python: tta='flip') to evaluate as training did" in w]
    same = evaluate_run(tmp_path / "run", split="val", tta="flip")
    assert same["out_dir"] == str(tmp_path / "run" / "report" / "mnist-val-tta-flip")
    assert same["accuracy"] == report["accuracy"] and same["log_loss"] == pytest.approx(report["log_loss"], abs=1e-6)
    assert not [w for w in same["warnings"] if "training's final evaluation" in w]
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    ids, _, _, probs, _ = read_predictions_csv(tmp_path / "run" / "report" / "val" / FILES["predictions"])
    index = sources.scan_unchecked(mnist, val_fraction=0.0, test_fraction=0.0)
    pixels = {f"{split.origin_name}[{int(origin)}]": split.images[row]
              for split in index.splits.values() if split.images is not None for row, origin in enumerate(split.origin)}
    x = np.concatenate(list(decode_arrays(np.stack([pixels[i] for i in ids]), image_size=(16, 16), channels=1)))
    expected = (np.asarray(model(x)) + np.asarray(model(x[:, :, ::-1]))) / 2
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)

    # files: the recipe's value is what evaluate_model gets
    seen = []
    real = evaluation.evaluate_model

    def capture(*args, **kwargs):
        seen.append(kwargs.get("tta", "missing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_model", capture)
    folder = tmp_path / "digits"
    for split, rows in (("train", slice(0, 12)), ("val", slice(12, 16))):
        for n, (image, label) in enumerate(zip(x[rows], np.arange(16)[rows] % 3, strict=True)):
            path = folder / split / str(label) / f"{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0].round().astype(np.uint8)).save(path)
    files_recipe = mnist_recipe(mnist, phases=[{"train": "head", "epochs": 1, "lr": 0.01}],
                                evaluate={"enabled": True, "splits": ["val"], "tta": "flip"})
    files_recipe["data"] = {"train": str(folder / "train"), "val": str(folder / "val"), "image_size": [16, 16],
                            "batch_size": 8}
    train(files_recipe, out=tmp_path / "files_run", **QUIET)
    assert seen == ["flip"]
    assert json.loads((tmp_path / "files_run" / "report" / "val" / FILES["json"]).read_text())["tta"] == "flip"
