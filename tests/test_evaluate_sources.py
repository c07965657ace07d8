"""``ftkit evaluate`` on every source training reads: a CSV, a tree of split folders and MNIST, one split each."""

import json
import shutil

import numpy as np
import pytest
from _image_fixtures import write_noise_png
from test_evaluate import cli, make_run, read_csv

from ftkit.evaluate import ClassMismatchError, evaluate_run, load_model

CLASSES = ["cats", "dogs"]
DIGITS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "run", seed=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four PNGs per class."""
    root = tmp_path_factory.mktemp("images")
    return {name: [write_noise_png(root / name / f"{name}{i}.png", seed=10 * c + i) for i in range(4)]
            for c, name in enumerate(CLASSES)}


def _write_csv(path, rows):
    path.write_text("path,label,split\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def test_a_csv_is_evaluated_on_one_split_in_its_row_order(run, images, tmp_path, capsys):
    """Test by default (stated in the output), --split for another; paths as the CSV's rows, labels by name."""
    cats, dogs = images["cats"], images["dogs"]
    rows = [(cats[0], "cats", "train"), (dogs[3], "dogs", "test"), (dogs[0], "dogs", "train"),
            (cats[2], "cats", "test"), (cats[1], "cats", "testing"), (dogs[1], "dogs", "val")]
    labels = _write_csv(tmp_path / "labels.csv", rows)
    assert cli(["evaluate", str(run), str(labels), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "split: test (the default: test, else val, else all of the data; DATA has train, val, test;" in out
    folder = run / "report" / "labels-test"
    report = json.loads((folder / "report.json").read_text())
    assert report["split"] == "test" and report["data"] == f"{labels} (test split)"
    assert report["n_samples"] == 3 and report["skipped"] == []
    predictions = read_csv(folder / "predictions.csv")
    assert [r["path"] for r in predictions] == [str(dogs[3]), str(cats[2]), str(cats[1])]
    assert [r["true_label"] for r in predictions] == ["dogs", "cats", "cats"]
    assert "split: test (the default" in (folder / "report.md").read_text()

    val = evaluate_run(run, labels, tmp_path / "val", split="validation", top_k=(1,), allow_missing_classes=True)
    assert val["split"] == "val" and val["n_samples"] == 1
    assert val["split_note"] == "split: val (--split validation; DATA has train, val, test)"
    with pytest.raises(ValueError, match=r"no split 'nope': --split must name train \(training\), val"):
        evaluate_run(run, labels, tmp_path / "x", split="nope")


def test_a_csv_without_splits_is_evaluated_whole(run, images, tmp_path):
    labels = tmp_path / "all.csv"
    labels.write_text(f"{images['dogs'][0]},dogs\n{images['cats'][0]},cats\n")
    report = evaluate_run(run, labels, top_k=(1,))
    assert report["n_samples"] == 2 and report["split"] is None and report["data"] == str(labels)
    assert report["split_note"] == "split: none (DATA has no test or val split: all of it is evaluated)"
    assert report["out_dir"] == str(run.resolve() / "report" / "all")


def test_a_csv_class_the_run_does_not_know_is_named(run, images, tmp_path):
    """Classes map by name, as class folders' do: an unknown one is an error, a missing one needs the flag."""
    cats, dogs = images["cats"], images["dogs"]
    labels = _write_csv(tmp_path / "birds.csv", [(cats[0], "cats", "test"), (dogs[0], "birds", "test"),
                                                  (dogs[1], "dogs", "test"), (dogs[2], "wolves", "train")])
    with pytest.raises(ClassMismatchError, match=r"classes the model does not know: \['birds'\] \(pass --only-model-classes to evaluate on the "
                                                 r"rows of the model's classes, leaving out the others\)\. DATA must be a folder .*Received: "
                                                 r"data='.*birds\.csv \(test split\)' with classes \['birds', 'cats'"):
        evaluate_run(run, labels, tmp_path / "out")
    only_cats = _write_csv(tmp_path / "cats.csv", [(cats[0], "cats", "test"), (dogs[2], "wolves", "train")])
    with pytest.raises(ClassMismatchError, match=r"absent from the data: \['dogs'\] \(pass --allow-missing-classes"):
        evaluate_run(run, only_cats, tmp_path / "out")
    report = evaluate_run(run, only_cats, tmp_path / "out", allow_missing_classes=True, top_k=(1,))
    assert report["per_class"]["dogs"]["support"] == 0 and report["n_samples"] == 1


def test_csv_rows_left_out_carry_their_line_numbers(run, images, tmp_path, capsys):
    """Skipped rows of the evaluated split (a missing file, no label) and rows of no split, each with its line;
    the other splits' rows are not this evaluation's."""
    cats, dogs = images["cats"], images["dogs"]
    labels = _write_csv(tmp_path / "lines.csv", [
        (cats[0], "cats", "test"),              # line 2
        (tmp_path / "gone.png", "dogs", "test"),  # line 3: missing
        (dogs[0], "", "test"),                   # line 4: no label
        (tmp_path / "gone_too.png", "cats", "train"),  # line 5: another split's
        (dogs[1], "dogs", "tset"),               # line 6: no such split
        (dogs[2], "dogs", "test"),              # line 7
    ])
    assert cli(["evaluate", str(run), str(labels), "--out", str(tmp_path / "rep"), "--top-k", "1"]) == 0
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["n_samples"] == 2
    skipped = {s["path"]: (s["reason"], s["detail"]) for s in report["skipped"]}
    assert set(skipped) == {str(tmp_path / "gone.png"), str(dogs[0]), str(dogs[1])}
    assert skipped[str(tmp_path / "gone.png")][0] == "missing file"
    assert skipped[str(tmp_path / "gone.png")][1].endswith(", lines.csv line 3")
    assert skipped[str(dogs[0])] == ("no label", "lines.csv line 4")
    assert skipped[str(dogs[1])][0] == "unknown split" and skipped[str(dogs[1])][1].startswith("lines.csv line 6:")
    assert f"skipped {tmp_path / 'gone.png'}: missing file (" in err and "lines.csv line 3)" in err


def test_a_tree_of_split_folders_is_evaluated_on_one_split(run, images, tmp_path, capsys):
    """As if that split folder had been passed (same files, same report folder name), and the output says so."""
    root = tmp_path / "pets"
    for split, first in (("train", 0), ("valid", 1), ("test", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for path in images[name][first:first + 2]:
                shutil.copy(path, root / split / name)
    assert cli(["evaluate", str(run), str(root), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "split: test (the default: test, else val, else all of the data; DATA has train, val, test;" in out
    direct = evaluate_run(run, root / "test", tmp_path / "direct", top_k=(1,))
    folder = run / "report" / "pets-test"
    assert read_csv(folder / "predictions.csv") == read_csv(tmp_path / "direct" / "predictions.csv")
    assert json.loads((folder / "report.json").read_text())["data"] == direct["data"] == str(root / "test")
    val = evaluate_run(run, root, split="val", top_k=(1,))
    assert val["data"] == str(root / "valid") and val["out_dir"] == str(run.resolve() / "report" / "pets-valid")
    with pytest.raises(ValueError, match=r"DATA is a folder of class folders, with no split folders"):
        evaluate_run(run, root / "test", split="test")


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    """A small mnist.npz in Keras's layout: digits 0-2, 8 training and 12 test images."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("mnist") / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), y_train=np.arange(8) % 3,
             x_test=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), y_test=np.array([2, 0, 1] * 4)[::-1])
    return path


def test_mnist_rows_are_named_by_their_index_in_mnist(mnist_npz, tmp_path):
    """predictions.csv and the gallery say test[i] for row i of MNIST's test arrays, predicted as training
    decodes in-memory images."""
    from ftkit.data import make_dataset, scan

    run = make_run(tmp_path / "digits", seed=2, classes=DIGITS)
    report = evaluate_run(run, mnist_npz, top_k=(1,))
    assert report["out_dir"] == str(run.resolve() / "report" / "mnist-test")
    assert report["data"] == f"{mnist_npz} (test split)" and report["n_samples"] == 12
    rows = read_csv(tmp_path / "digits" / "report" / "mnist-test" / "predictions.csv")
    y_test = np.load(mnist_npz)["y_test"]
    assert [r["path"] for r in rows] == [f"test[{i}]" for i in range(12)]
    assert [r["true_label"] for r in rows] == [str(d) for d in y_test]
    data = scan(mnist_npz, val_fraction=0.0)
    expected = load_model(run).model.predict(
        make_dataset(data, "test", image_size=(16, 16), channels=3).map(lambda x, y: x), verbose=0)
    np.testing.assert_allclose([[float(r[f"prob_{d}"]) for d in DIGITS] for r in rows], expected, atol=1e-5)
    wrong = [r["path"] for r in rows if r["correct"] == "0"]
    page = (tmp_path / "digits" / "report" / "mnist-test" / "report.html").read_text()
    assert wrong and all(f"<code>{path}</code>" in page for path in wrong)
    train = evaluate_run(run, mnist_npz, tmp_path / "train", split="train", top_k=(1,))
    assert [r["path"] for r in read_csv(tmp_path / "train" / "predictions.csv")] == [f"train[{i}]" for i in range(8)]
    assert train["split_note"].startswith("split: train (--split train; DATA has train, test)")


def test_an_mnist_digit_the_run_does_not_know_is_named(mnist_npz, tmp_path):
    run = make_run(tmp_path / "zero_one", seed=2, classes=["0", "1"])
    with pytest.raises(ClassMismatchError, match=r"classes the model does not know: \['2'\]"):
        evaluate_run(run, mnist_npz, tmp_path / "out")
