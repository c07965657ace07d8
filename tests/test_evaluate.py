"""ftkit evaluate / predict / compare end to end on tiny Keras models and a few real images."""

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftkit.evaluate import ClassMismatchError, evaluate_run, images, load_model
from ftkit.evaluate.report import FILES

CLASSES = ["cats", "dogs"]
PER_CLASS = 6


def make_run(run_dir, *, seed, softmax=True, classes=CLASSES):
    """A tiny inference model (raw 0..255 in, probabilities out) saved as a run folder."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(classes), activation="softmax" if softmax else None),
    ])
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    meta = {"class_names": classes, "image_size": [16, 16], "channels": 3, "resize": "stretch", "backbone": "tiny"}
    (run_dir / "ftkit_run.json").write_text(json.dumps(meta))
    return run_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data):
    """6 cats and 6 dogs from catsdogs/test, shrunk to 40 px, plus one file that is not an image."""
    root = tmp_path_factory.mktemp("eval_data") / "test"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for source in sorted((shared_data / "catsdogs" / "test" / name).iterdir())[:PER_CLASS]:
            with Image.open(source) as image:
                image.convert("RGB").resize((40, 30)).save(root / name / source.name, quality=90)
    (root / "cats" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"a": make_run(base / "run_a", seed=1), "b": make_run(base / "run_b", seed=7)}


@pytest.fixture(scope="module")
def report_a(runs, data_dir):
    return evaluate_run(runs["a"], data_dir, top_k=(1,))


def cli(argv):
    """Run a command through the parser ftkit.cli.evaluate registers."""
    from ftkit.cli.evaluate import register

    parser = argparse.ArgumentParser(prog="ftkit")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bundle_files_and_required_keys(runs, report_a, data_dir):
    out = runs["a"] / "report" / f"{data_dir.parent.name}-test"  # a split folder is named with its parent
    assert report_a["out_dir"] == str(out.resolve())
    for name in FILES.values():
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    for key in ("class_names", "n_samples", "accuracy", "balanced_accuracy", "top_k_accuracy", "per_class",
                "confusion_matrix", "mcc", "cohen_kappa", "ece"):
        assert key in saved
    assert saved["class_names"] == CLASSES
    assert saved == report_a
    assert "# Evaluation report" in (out / "report.md").read_text()


def test_bad_file_is_skipped_and_reported(report_a, data_dir):
    assert report_a["n_samples"] == 2 * PER_CLASS
    assert [s["path"] for s in report_a["skipped"]] == [str((data_dir / "cats" / "broken.jpg").resolve())]
    assert "not an image" in report_a["skipped"][0]["reason"]


def test_predictions_keyed_by_path_in_file_order_and_equal_to_model(runs, report_a, data_dir):
    rows = read_csv(Path(report_a["out_dir"]) / "predictions.csv")
    expected_paths = [
        str(p.resolve()) for name in CLASSES for p in sorted((data_dir / name).iterdir()) if p.name != "broken.jpg"
    ]
    assert [r["path"] for r in rows] == expected_paths
    assert [r["true_label"] for r in rows] == ["cats"] * PER_CLASS + ["dogs"] * PER_CLASS
    loaded = load_model(runs["a"])
    batch = images.load_batch(expected_paths, image_size=(16, 16), channels=3)[0]
    probs = loaded.model.predict(batch, verbose=0)
    np.testing.assert_allclose([[float(r["prob_cats"]), float(r["prob_dogs"])] for r in rows], probs, atol=1e-5)
    assert [r["predicted_label"] for r in rows] == [CLASSES[i] for i in probs.argmax(axis=1)]
    cm = np.array(report_a["confusion_matrix"])
    assert np.trace(cm) == sum(int(r["correct"]) for r in rows)
    assert np.trace(cm) / cm.sum() == pytest.approx(report_a["accuracy"])


def test_report_agrees_with_model_evaluate(runs, report_a):
    import keras

    rows = read_csv(Path(report_a["out_dir"]) / "predictions.csv")
    x = images.load_batch([r["path"] for r in rows], image_size=(16, 16), channels=3)[0]
    y = np.array([CLASSES.index(r["true_label"]) for r in rows])
    model = load_model(runs["a"]).model
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    loss, accuracy = model.evaluate(x, y, batch_size=5, verbose=0)
    assert report_a["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert report_a["log_loss"] == pytest.approx(loss, abs=1e-4)


def test_classes_that_do_not_match_are_refused(runs, data_dir, tmp_path):
    extra = tmp_path / "extra"
    shutil.copytree(data_dir, extra)
    (extra / "birds").mkdir()
    shutil.copy(sorted((data_dir / "cats").iterdir())[0], extra / "birds")  # an empty one is left out instead
    with pytest.raises(ClassMismatchError, match=r"classes the model does not know: \['birds'\].*Received"):
        evaluate_run(runs["a"], extra, tmp_path / "out_extra")
    only_cats = tmp_path / "only_cats"
    shutil.copytree(data_dir / "cats", only_cats / "cats")
    with pytest.raises(ClassMismatchError, match=r"model classes absent from the data: \['dogs'\]"):
        evaluate_run(runs["a"], only_cats, tmp_path / "out_subset")
    report = evaluate_run(runs["a"], only_cats, tmp_path / "out_subset", allow_missing_classes=True)
    assert report["per_class"]["dogs"]["support"] == 0
    assert report["roc_auc"]["per_class"]["dogs"] is None
    assert not (tmp_path / "out_extra").exists()


def test_source_images_are_not_modified(runs, data_dir, tmp_path):
    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data_dir.rglob("*") if p.is_file()}

    before = digest()
    evaluate_run(runs["a"], data_dir, tmp_path / "again")
    assert digest() == before


def test_logits_model_is_refused(tmp_path, data_dir):
    run = make_run(tmp_path / "logits", seed=3, softmax=False)
    with pytest.raises(ValueError, match="logits"):
        evaluate_run(run, data_dir, tmp_path / "out")


def test_missing_run_metadata_is_a_clear_error(tmp_path, runs):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(runs["a"] / "model.keras", lone / "model.keras")
    with pytest.raises(FileNotFoundError, match="ftkit_run.json"):
        load_model(lone / "model.keras")


def test_evaluate_cli_writes_to_out(runs, data_dir, tmp_path, capsys):
    assert cli(["evaluate", str(runs["b"]), str(data_dir), "--out", str(tmp_path / "rep"), "--top-k", "1"]) == 0
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["n_samples"] == 2 * PER_CLASS
    out = capsys.readouterr().out
    assert f"accuracy {saved['accuracy']:.4f}" in out and "report.html" in out


def test_predict_files_folders_and_bad_files(runs, data_dir, tmp_path, capsys):
    one = sorted((data_dir / "dogs").iterdir())[0]
    csv_path = tmp_path / "pred.csv"
    argv = ["predict", str(runs["a"]), str(one), str(data_dir / "cats"), str(tmp_path / "nope.jpg"),
            "--top-k", "2", "--csv", str(csv_path)]
    assert cli(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 + PER_CLASS
    assert lines[0].startswith(str(one.resolve()) + "\t")
    assert "broken.jpg" in captured.err and "nope.jpg" in captured.err
    rows = read_csv(csv_path)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 1 + PER_CLASS and len(rows) == 3 + PER_CLASS
    for row in ok:
        probs = [float(row["prob_cats"]), float(row["prob_dogs"])]
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        assert row["top1"] == CLASSES[int(np.argmax(probs))]
        assert float(row["top1_prob"]) >= float(row["top2_prob"])


def test_compare_runs_paired_counts(runs, data_dir, report_a, tmp_path, capsys):
    report_b = evaluate_run(runs["b"], data_dir)
    name = Path(report_a["out_dir"]).name
    assert Path(report_b["out_dir"]).name == name
    assert cli(["compare", str(runs["a"]), str(runs["b"]), "--split", name, "--out", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a = {r["path"]: r for r in read_csv(Path(report_a["out_dir"]) / "predictions.csv")}
    b = {r["path"]: r for r in read_csv(Path(report_b["out_dir"]) / "predictions.csv")}
    a_only = sorted(p for p in a if a[p]["correct"] == "1" and b[p]["correct"] == "0")
    b_only = sorted(p for p in a if a[p]["correct"] == "0" and b[p]["correct"] == "1")
    assert sorted(r["path"] for r in result["a_right_b_wrong"]) == a_only
    assert sorted(r["path"] for r in result["a_wrong_b_right"]) == b_only
    assert result["mcnemar"]["a_right_b_wrong"] == len(a_only)
    assert result["mcnemar"]["method"].startswith("exact binomial")  # 12 images: few discordant pairs
    delta = np.array(result["confusion_delta"])
    assert delta.sum() == 0
    assert result["accuracy_delta"] == pytest.approx((len(b_only) - len(a_only)) / len(a))
    assert (tmp_path / "cmp" / "compare.html").is_file()
    assert "McNemar" in capsys.readouterr().out


def test_compare_refuses_different_images(runs, data_dir, report_a, tmp_path):
    subset = tmp_path / "subset"
    for name in CLASSES:
        (subset / name).mkdir(parents=True)
        for p in sorted((data_dir / name).iterdir())[:3]:
            shutil.copy(p, subset / name / p.name)
    evaluate_run(runs["b"], subset, tmp_path / "b_subset")
    from ftkit.evaluate import compare_runs

    with pytest.raises(ValueError, match="evaluated on different images.*Received"):
        compare_runs(report_a["out_dir"], tmp_path / "b_subset")
    with pytest.raises(FileNotFoundError, match="No predictions.csv.*b_subset"):
        compare_runs(report_a["out_dir"], tmp_path)


DIGITS = ["0", "1"]


def _digit_bundles(work: Path, *, a_paths: str) -> tuple[Path, Path, list[str]]:
    """Two bundles over the same 6 PNGs below ``work/data/digits/test``, written from ``work``: A names them as
    training did (relative to ``work``; ``a_paths="relative"``), relative with ``./`` and ``..`` detours
    (``"detours"``) or absolutely (``"absolute"``), B absolutely as ``ftkit evaluate`` does. A is wrong on the
    last two images, B on the first two."""
    from ftkit.evaluate import evaluate_predictions

    relative = [f"data/digits/test/{c}/digit_{c}{i}.png" for c in DIGITS for i in range(3)]
    for i, path in enumerate(relative):
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), 40 * i).save(work / path)
    y = np.array([0, 0, 0, 1, 1, 1])
    a_right = np.array([1, 1, 1, 1, 0, 0], bool)
    b_right = np.array([0, 0, 1, 1, 1, 1], bool)

    def probs(right):
        predicted = np.where(right, y, 1 - y)
        return np.eye(2)[predicted] * 0.6 + 0.2

    absolute = [str(work / p) for p in relative]
    a_named = {"relative": relative, "absolute": absolute,
               "detours": [p.replace("data/", "./data/../data/", 1) for p in relative]}[a_paths]
    a = evaluate_predictions(a_named, y, probs(a_right), DIGITS, work / "run_a" / "report" / "test", top_k=())
    b = evaluate_predictions(absolute, y, probs(b_right), DIGITS, work / "eval_b", top_k=())
    return Path(a["out_dir"]), Path(b["out_dir"]), absolute


@pytest.mark.parametrize("case", ["recorded working folder", "old bundle, no working folder"])
def test_compare_matches_relative_and_absolute_paths_of_the_same_images(tmp_path, monkeypatch, case):
    """Training's report named files relative to its working folder, ``ftkit evaluate``'s absolutely: compare
    refused the pair ("6 only in A ... 6 only in B") and, run from another folder, found none of the images."""
    from ftkit.evaluate import compare_runs

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    a, b, absolute = _digit_bundles(work, a_paths="relative" if case.startswith("recorded") else "detours")
    assert read_csv(a / "predictions.csv")[0]["path"].startswith(("data/", "./data/"))
    if case.startswith("old"):  # written before report.json recorded it: relative to the current folder
        saved = json.loads((a / "report.json").read_text())
        del saved["working_dir"]
        (a / "report.json").write_text(json.dumps(saved))
    else:
        monkeypatch.chdir(elsewhere)
    result = compare_runs(work / "run_a", b, out_dir=tmp_path / "cmp")
    assert result["n_samples"] == 6
    assert [r["path"] for r in result["a_right_b_wrong"]] == absolute[:2]
    assert [r["path"] for r in result["a_wrong_b_right"]] == absolute[4:]
    assert result["mcnemar"]["discordant"] == 4
    page = (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/jpeg;base64,') == 4
    assert "cannot decode" not in page


def test_compare_html_renders_its_tables(tmp_path, monkeypatch):
    """compare.html showed its summary and per-class tables as markdown in a <pre>; they are HTML tables."""
    from ftkit.evaluate import compare_runs

    monkeypatch.chdir(tmp_path)
    a, b, _ = _digit_bundles(tmp_path, a_paths="absolute")
    compare_runs(a, b, out_dir=tmp_path / "cmp")
    page = (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    assert "<pre>" not in page and "|---" not in page
    assert page.count("<table>") == 4  # runs, summary, per class, changed confusion cells
    assert "<tr><td>Images</td><td>6</td></tr><tr><td>Accuracy B - A</td><td>+0.0000</td></tr>" in page
    assert ("<thead><tr><th>class</th><th>support</th><th>F1 A</th><th>F1 B</th><th>B - A</th><th>recall A</th>"
            "<th>recall B</th></tr></thead>") in page
    # class 0: A predicts it for images 0-2 (right) and 4-5 (wrong), B only for image 2.
    assert "<tr><td>0</td><td>3</td><td>0.7500</td><td>0.5000</td><td>-0.2500</td><td>1.0000</td><td>0.3333</td></tr>" in page
    assert "<tr><td>0</td><td>1</td><td>0</td><td>2</td><td>+2</td></tr>" in page  # B's 0 -> 1 mistakes


def test_row_paths_resolve_against_the_bundles_working_folder(tmp_path):
    from ftkit.evaluate.report import bundle_working_dir, resolve_row_path

    assert resolve_row_path("data/x/../y/a.png", "/work/run") == "/work/run/data/y/a.png"
    assert resolve_row_path("/abs//b.png", "/work/run") == "/abs/b.png"
    assert resolve_row_path("test[12]", "/work/run") == "test[12]"  # in-memory data's ids stay ids
    (tmp_path / "report.json").write_text(json.dumps({"working_dir": "/somewhere"}))
    assert bundle_working_dir(tmp_path / "predictions.csv") == "/somewhere"
    assert bundle_working_dir(tmp_path / "missing" / "predictions.csv") == os.getcwd()


def test_compare_finds_a_training_runs_split_reports(tmp_path):
    """``ftkit train`` writes RUN/report/{val,test}/predictions.csv; compare takes the run folders."""
    from ftkit.evaluate.compare import find_predictions

    for split in ("val", "test"):
        folder = tmp_path / "run" / "report" / split
        folder.mkdir(parents=True)
        (folder / "predictions.csv").write_text("path,true,predicted\n")
    assert find_predictions(tmp_path / "run") == tmp_path / "run" / "report" / "test" / "predictions.csv"
    assert find_predictions(tmp_path / "run", split="val") == tmp_path / "run" / "report" / "val" / "predictions.csv"
    val_only = tmp_path / "val_only" / "report" / "val"
    val_only.mkdir(parents=True)
    (val_only / "predictions.csv").write_text("path,true,predicted\n")
    with pytest.raises(FileNotFoundError, match=r"evaluated on \['val'\]: pass --split val\..*split='test'"):
        find_predictions(tmp_path / "val_only")


def test_evaluation_decodes_as_training_did(tmp_path, shared_data):
    """Evaluation and prediction see the pixels training saw: the same pipeline, JPEG DCT scales included.

    Photos at least twice the target size are decoded by training at a reduced DCT scale; a separate full-size
    decode and resize (what evaluation did before) gives other pixels, which is checked too, so this test
    would catch a return to it. A truncated JPEG (header fine, data cut) is reported and the rows stay aligned.
    """
    from ftkit.data import make_dataset, scan

    root = tmp_path / "train"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for source in sorted((shared_data / "catsdogs" / "test" / name).iterdir())[:3]:
            shutil.copy(source, root / name / source.name)
    size = (48, 48)
    index = scan(root.parent / "train", val_fraction=0.0)
    trained = np.concatenate([x.numpy() for x, _ in make_dataset(index, "train", image_size=size)])
    paths = [str(p) for p in index["train"].paths]

    decoded, kept, failures = images.load_batch(paths, image_size=size, channels=3)
    assert kept == list(range(len(paths))) and failures == []
    np.testing.assert_array_equal(decoded, trained)
    import tensorflow as tf

    full_size = np.stack([tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(p), channels=3), size).numpy()
                          for p in paths])
    assert np.abs(full_size - trained).mean() > 1.0  # the DCT scales are in play: another decode would differ

    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(open(paths[1], "rb").read()[:2000])
    decoded, kept, failures = images.load_batch([paths[0], str(truncated), paths[2]], image_size=size, channels=3)
    assert kept == [0, 2]
    assert [f["path"] for f in failures] == [str(truncated)]
    np.testing.assert_array_equal(decoded, trained[[0, 2]])


def test_report_names_where_an_index_came_from(runs, data_dir, tmp_path):
    from ftkit.evaluate import evaluate_model

    files = images.scan_split(data_dir, CLASSES)
    assert files.source == str(data_dir)
    files.source = "catsdogs (test split)"
    report = evaluate_model(load_model(runs["a"]), files, tmp_path / "report")
    assert report["data"] == "catsdogs (test split)"


def test_empty_class_folder_is_left_out_with_a_warning(runs, data_dir, tmp_path, capsys):
    """As `ftkit train` and `ftkit data check` do; an empty folder of a model class is then an absent class."""
    data = tmp_path / "test"
    shutil.copytree(data_dir, data)
    (data / "wasps").mkdir()
    (data / "wasps" / ".DS_Store").write_bytes(b"\0")  # hidden files do not count
    assert cli(["evaluate", str(runs["a"]), str(data), "--out", str(tmp_path / "rep"), "--top-k", "1"]) == 0
    assert "warning: class folder wasps has no image" in capsys.readouterr().err
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["n_samples"] == 2 * PER_CLASS and saved["class_names"] == CLASSES
    assert saved["warnings"] == ["class folder wasps has no image: left out of the evaluation"]
    assert "class folder wasps has no image" in (tmp_path / "rep" / "report.md").read_text()
    for path in (data / "dogs").iterdir():
        path.unlink()
    with pytest.raises(ClassMismatchError, match=r"absent from the data: \['dogs'\] \(the folders of \['dogs'\] are empty\)"):
        evaluate_run(runs["a"], data, tmp_path / "rep2")


def test_a_tree_of_split_folders_names_the_split_to_pass(tmp_path):
    """scan_split takes one split folder (evaluate_run chooses one itself: tests/test_evaluate_sources.py)."""
    root = tmp_path / "catsdogs"
    for split in ("train", "val", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
    expected = r"DATA looks like a tree of split folders \(train, val, test\): pass one of them, e\.g\. "
    with pytest.raises(ClassMismatchError, match=expected + str(root / "test").replace("\\", "\\\\")):
        images.scan_split(root, CLASSES)


def test_a_checkpoint_says_which_model_to_use(runs, data_dir, tmp_path):
    """A training checkpoint returns logits: the error names the run's model.keras and the commands."""
    run = tmp_path / "run"
    shutil.copytree(runs["a"], run)
    logits = make_run(tmp_path / "logits", seed=3, softmax=False)
    (run / "checkpoints").mkdir()
    shutil.copy(logits / "model.keras", run / "checkpoints" / "best.keras")
    one = sorted((data_dir / "dogs").iterdir())[0]
    from ftkit.evaluate import predict_paths

    with pytest.raises(ValueError, match="logits") as error:
        predict_paths(run / "checkpoints" / "best.keras", [one])
    message = str(error.value)
    assert str(run / "model.keras") in message
    assert f"ftkit evaluate {run}" in message and f"ftkit export {run}" in message


def _save_checkpoints(run, *, seeds):
    """``RUN/checkpoints/{best,last}.keras`` as training writes them: logits out, from a layer named ``logits``."""
    import keras

    from ftkit.head import LOGITS_LAYER

    (run / "checkpoints").mkdir()
    for name, seed in seeds.items():
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255.0),
                                  keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(len(CLASSES), name=LOGITS_LAYER)])
        model.save(run / "checkpoints" / f"{name}.keras")


def test_evaluate_and_predict_take_a_checkpoint(data_dir, tmp_path, capsys):
    """--checkpoint best|last: that epoch's model, made an inference model, beside the final model's report."""
    run = make_run(tmp_path / "run", seed=1)
    _save_checkpoints(run, seeds={"best": 5, "last": 6})
    assert cli(["evaluate", str(run), str(data_dir), "--top-k", "1", "--checkpoint", "best"]) == 0
    report = json.loads((run / "report" / f"{data_dir.parent.name}-test-best" / "report.json").read_text())
    assert report["model"] == str(run / "checkpoints" / "best.keras")
    rows = read_csv(run / "report" / f"{data_dir.parent.name}-test-best" / "predictions.csv")
    best = load_model(run, checkpoint="best").model
    batch = images.load_batch([r["path"] for r in rows], image_size=(16, 16), channels=3)[0]
    np.testing.assert_allclose([[float(r["prob_cats"]), float(r["prob_dogs"])] for r in rows],
                               best.predict(batch, verbose=0), atol=1e-5)
    one = rows[0]["path"]
    capsys.readouterr()
    assert cli(["predict", str(run), one, "--top-k", "2", "--checkpoint", "last"]) == 0
    last = load_model(run, checkpoint="last").model.predict(batch[:1], verbose=0)[0]
    printed = capsys.readouterr().out.strip().split("\t")
    assert printed[0] == one and {printed[1], printed[2]} == {f"cats {last[0]:.4f}", f"dogs {last[1]:.4f}"}
    with pytest.raises(SystemExit):
        cli(["evaluate", str(run), str(data_dir), "--checkpoint", "top"])


def test_predict_reports_every_bad_file_once_in_the_order_given(runs, data_dir, tmp_path, capsys, caplog):
    """Symlink loops get ftkit.data's reason, whether given or met while walking a folder, as notes.txt does;
    a file that fails only when decoded is reported once; the CSV keeps the order the files were given in."""
    cats = sorted(p for p in (data_dir / "cats").iterdir() if p.name != "broken.jpg")
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(cats[0], folder / "a.jpg")
    data = cats[1].read_bytes()
    (folder / "b_truncated.jpg").write_bytes(data[: len(data) // 2 + 100])  # the header reads, the pixels do not
    (folder / "c_loop.jpg").symlink_to(folder / "c_loop.jpg")
    (folder / "d_again").symlink_to(folder, target_is_directory=True)
    (folder / "e_notes.txt").write_text("not an image\n")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    given = [cats[2], tmp_path / "loop.jpg", folder, tmp_path / "nope.jpg", cats[3]]
    csv_path = tmp_path / "pred.csv"
    caplog.set_level("WARNING")
    assert cli(["predict", str(runs["a"]), *map(str, given), "--csv", str(csv_path)]) == 0
    err = capsys.readouterr().err
    expected = [str(cats[2].resolve()), str(tmp_path / "loop.jpg"), str((folder / "a.jpg").resolve()),
                str(folder / "b_truncated.jpg"), str(folder / "c_loop.jpg"), str(folder / "d_again"),
                str(folder / "e_notes.txt"), str(tmp_path / "nope.jpg"), str(cats[3].resolve())]
    rows = read_csv(csv_path)
    assert [r["path"] for r in rows] == expected
    status = {r["path"]: r["status"] for r in rows}
    for loop in (tmp_path / "loop.jpg", folder / "c_loop.jpg", folder / "d_again"):
        assert status[str(loop)].startswith("error: symlink loop"), status[str(loop)]
        assert f"could not read {loop}: symlink loop" in err
    assert status[str(folder / "e_notes.txt")].startswith("error: not an image")
    assert status[str(folder / "b_truncated.jpg")].startswith("error: truncated or corrupt")
    assert status[str(tmp_path / "nope.jpg")].startswith("error: missing file")
    assert [r["status"] for r in rows].count("ok") == 3 and all(r["prob_cats"] == "" for r in rows if r["status"] != "ok")
    assert err.count("b_truncated.jpg") == 1
    assert not [r for r in caplog.records if "b_truncated.jpg" in r.getMessage()]


def test_evaluate_without_out_writes_one_folder_per_data_set(data_dir, tmp_path, capsys):
    """Beside the training's report/val and report/test, never over them or over another data set's report."""
    run = make_run(tmp_path / "run", seed=1)
    training_test = run / "report" / "test" / "report.json"
    training_test.parent.mkdir(parents=True)
    training_test.write_text('{"data": "the training split"}')
    assert cli(["evaluate", str(run), str(data_dir), "--top-k", "1"]) == 0
    first = run / "report" / f"{data_dir.parent.name}-test"
    assert f"report: {first.resolve()}/report.html" in capsys.readouterr().out
    other = tmp_path / "other" / data_dir.parent.name / "test"  # another data set whose folders have the same names
    shutil.copytree(data_dir, other)
    (other / "cats" / "broken.jpg").unlink()
    second = evaluate_run(run, other, top_k=(1,))
    assert second["out_dir"] == str(first.resolve()) + "-2"
    assert json.loads((first / "report.json").read_text())["n_samples"] == 2 * PER_CLASS  # not overwritten
    again = evaluate_run(run, data_dir, top_k=(1,))  # the same data again: its report is replaced
    assert again["out_dir"] == str(first.resolve()) and again["data"] == str(data_dir)
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(["test", first.name, first.name + "-2"])
    assert training_test.read_text() == '{"data": "the training split"}'


def test_report_counts_skipped_files_by_reason(report_a):
    assert "| Files skipped | 1 (1 not an image) |" in Path(report_a["out_dir"], "report.md").read_text()
    assert report_a["skipped"][0]["reason"] == "not an image" and report_a["skipped"][0]["detail"]


def test_predict_batches_is_quiet(runs, capfd):
    """In-memory data (MNIST) is predicted without Keras' progress bar, as files are."""
    from ftkit.evaluate import predict_batches

    model = load_model(runs["a"]).model
    batches = [np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype("float32") for _ in range(2)]
    capfd.readouterr()
    probs = predict_batches(model, batches)
    assert capfd.readouterr().out == ""
    np.testing.assert_allclose(probs, model.predict(np.concatenate(batches), verbose=0), atol=1e-5)


@pytest.mark.parametrize("case", ["no run", "no data", "predict, no run"])
def test_mistakes_are_reported_before_tensorflow_loads(runs, tmp_path, case):
    argv = {"no run": ["evaluate", str(tmp_path / "no_run"), str(tmp_path)],
            "no data": ["evaluate", str(runs["a"]), str(tmp_path / "no_data")],
            "predict, no run": ["predict", str(tmp_path / "no_run"), str(tmp_path / "x.jpg")]}[case]
    code = ("import sys; from ftkit.cli import main; rc = main(sys.argv[1:]); "
            "print('rc', rc, 'tensorflow' in sys.modules or 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "rc 2 False" in done.stdout, done.stdout + done.stderr


def test_walking_a_relative_folder_lists_its_links_by_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "again").symlink_to(tmp_path / "folder", target_is_directory=True)
    (tmp_path / "folder" / "loop.jpg").symlink_to(tmp_path / "folder" / "loop.jpg")
    monkeypatch.chdir(tmp_path)
    listed, unwalkable = images.expand_paths(["folder"])
    assert listed == [str(tmp_path / "folder" / "again"), str(tmp_path / "folder" / "loop.jpg")]
    assert unwalkable == [{"path": str(tmp_path / "folder" / "again"), "reason": "symlink loop",
                           "detail": "a symbolic link to a folder that contains it"}]


def test_the_cli_parser_loads_without_scikit_learn_or_tensorflow():
    """Every command (and ``--help``) builds the whole parser: its flags must not load the stages' libraries."""
    code = ("import sys; from ftkit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('sklearn', 'tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
