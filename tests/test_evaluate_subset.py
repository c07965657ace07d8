"""``ftkit evaluate --only-model-classes``: a run trained on some classes, evaluated on data that has more
(a digits 5-9 run on plain MNIST): the rows of other classes are left out and counted, the kept rows keep
their ids, and without the flag the mismatch is an error that names the flag."""

import gzip
import html
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _image_fixtures import write_noise_png
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from test_evaluate import cli, make_run, read_csv

from ftkit.data.sources import UNKNOWN_CLASS
from ftkit.evaluate import ClassMismatchError, evaluate_run, load_model

HIGH = ["5", "6", "7", "8", "9"]  # recipes/mnist_finetune_5to9.yaml's classes
PETS = ["cats", "dogs"]


@pytest.fixture(scope="module")
def run59(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "digits5to9", seed=4, classes=HIGH)


@pytest.fixture(scope="module")
def mnist_test_labels(mnist):
    """MNIST's test labels, read straight from the IDX file (8-byte header), not through ftkit."""
    with gzip.open(Path(mnist) / "t10k-labels-idx1-ubyte.gz") as handle:
        return np.frombuffer(handle.read(), np.uint8, offset=8).astype(int)


def _scores_match_sklearn(report, rows):
    true = [r["true_label"] for r in rows]
    predicted = [r["predicted_label"] for r in rows]
    assert report["accuracy"] == pytest.approx(accuracy_score(true, predicted), abs=1e-12)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, predicted), abs=1e-12)


def test_a_5to9_run_is_evaluated_on_mnist_digits_5to9_only(run59, mnist, mnist_test_labels, tmp_path):
    """4,861 test rows kept under their MNIST indices and predicted from their own pixels; the 5,139 others
    counted per digit and each listed as skipped."""
    from ftkit.data import make_dataset, scan

    y = mnist_test_labels
    kept, left = np.flatnonzero(y >= 5), np.flatnonzero(y < 5)
    report = evaluate_run(run59, mnist, tmp_path / "out", only_model_classes=True, top_k=(1,))
    assert report["n_samples"] == len(kept) == 4861
    assert report["unknown_classes"] == {str(d): int((y == d).sum()) for d in range(5)}
    assert sum(report["unknown_classes"].values()) == len(left) == 5139
    assert [s["path"] for s in report["skipped"]] == [f"test[{i}]" for i in left]
    assert {s["reason"] for s in report["skipped"]} == {UNKNOWN_CLASS}
    assert Counter(s["detail"] for s in report["skipped"]) == {f"class '{d}'": int((y == d).sum()) for d in range(5)}

    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["path"] for r in rows] == [f"test[{i}]" for i in kept]
    assert [r["true_label"] for r in rows] == [str(d) for d in y[kept]]
    _scores_match_sklearn(report, rows)
    assert sum(report["per_class"][d]["support"] for d in HIGH) == len(kept)
    # The kept rows' own pixels, decoded as training decodes MNIST's 5-9.
    data = scan(mnist, class_names=HIGH, val_fraction=0.0)
    expected = load_model(run59).model.predict(
        make_dataset(data, "test", image_size=(16, 16), channels=3).map(lambda x, _: x), verbose=0)
    np.testing.assert_allclose([[float(r[f"prob_{d}"]) for d in HIGH] for r in rows], expected, atol=1e-5)

    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["unknown_classes"] == report["unknown_classes"] and len(saved["skipped"]) == 5139
    note = "left out 5139 rows of classes the model does not know (each listed under skipped files): '0' 980, '1' 1135"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert note in markdown and "| Files skipped | 5139 (5139 class not in the training classes) |" in markdown
    assert f"- `test[{left[0]}]`: class not in the training classes (class '{y[left[0]]}')" in markdown
    page = (tmp_path / "out" / "report.html").read_text()
    assert html.escape(note) in page and f"<li><code>test[{left[-1]}]</code>: class not in the training classes" in page


def test_without_the_flag_mnist_is_refused_naming_the_digits_and_the_flag(run59, mnist, tmp_path):
    with pytest.raises(ClassMismatchError, match=r"classes the model does not know: \['0', '1', '2', '3', '4'\] "
                                                 r"\(pass --only-model-classes to evaluate on the rows of the model's "
                                                 r"classes.*Received: data='.*mnist \(test split\)'"):
        evaluate_run(run59, mnist, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """An mnist.npz with every digit: test row i is digit i % 10."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("npz") / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_train=np.arange(10),
             x_test=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_test=np.arange(30) % 10)
    return path


def test_the_cli_counts_the_rows_left_out_per_class_instead_of_listing_them(run59, small_npz, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli(["evaluate", str(run59), str(small_npz), "--only-model-classes", "--out", str(out), "--top-k", "1"]) == 0
    printed = capsys.readouterr()
    assert ("warning: left out 15 rows of classes the model does not know (each listed under skipped files): "
            "'0' 3, '1' 3, '2' 3, '3' 3, '4' 3") in printed.err
    assert "skipped test[" not in printed.err and "15 images, accuracy" in printed.out
    rows = read_csv(out / "predictions.csv")
    assert [r["path"] for r in rows] == [f"test[{i}]" for i in range(30) if i % 10 >= 5]
    _scores_match_sklearn(json.loads((out / "report.json").read_text()), rows)
    with pytest.raises(ClassMismatchError, match=r"--only-model-classes"):
        cli(["evaluate", str(run59), str(small_npz), "--out", str(tmp_path / "no")])


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A tree of split folders whose test split has a third class: test/{cats,dogs} 3 each, test/birds 2."""
    root = tmp_path_factory.mktemp("pets") / "pets"
    for c, name in enumerate([*PETS, "birds"]):
        for i in range(2 if name == "birds" else 3):
            write_noise_png(root / "test" / name / f"{name}{i}.png", seed=10 * c + i)
    for name in PETS:
        write_noise_png(root / "train" / name / "a.png", seed=99)
    return root


def test_a_folder_tree_with_an_extra_class(pets, tmp_path):
    """The tree's test split minus birds/ is what is evaluated: same rows, same predictions as the same folder
    without birds/; the birds' files are listed and counted. Without the flag: an error naming birds and it."""
    run = make_run(tmp_path / "pets_run", seed=5, classes=PETS)
    report = evaluate_run(run, pets, tmp_path / "subset", only_model_classes=True, top_k=(1,))
    birds = sorted(str((pets / "test" / "birds" / f"birds{i}.png").resolve()) for i in range(2))
    assert report["n_samples"] == 6 and report["unknown_classes"] == {"birds": 2}
    assert report["skipped"] == [{"path": path, "reason": UNKNOWN_CLASS, "detail": "class 'birds'"} for path in birds]
    rows = read_csv(tmp_path / "subset" / "predictions.csv")
    _scores_match_sklearn(report, rows)

    without = tmp_path / "without_birds"
    shutil.copytree(pets / "test", without, ignore=shutil.ignore_patterns("birds"))
    plain = evaluate_run(run, without, tmp_path / "plain", top_k=(1,))
    plain_rows = read_csv(tmp_path / "plain" / "predictions.csv")
    assert [r["path"] for r in rows] == [str(pets / "test" / Path(r["path"]).relative_to(without)) for r in plain_rows]
    assert [r[f"prob_{n}"] for r in rows for n in PETS] == [r[f"prob_{n}"] for r in plain_rows for n in PETS]
    assert plain["unknown_classes"] == {} and report["accuracy"] == plain["accuracy"]

    for data in (pets, pets / "test"):  # the tree, and its split folder passed as a folder of class folders
        with pytest.raises(ClassMismatchError, match=r"does not know: \['birds'\] \(pass --only-model-classes"):
            evaluate_run(run, data, tmp_path / "refused")


def test_a_csv_row_of_an_unknown_class_and_the_flags_combined(pets, tmp_path):
    """A CSV's unknown-class rows are left out as a folder's are; with a model class missing as well, both flags
    are needed (the error says so); data with no class of the model's is refused even with the flag."""
    run = make_run(tmp_path / "run3", seed=6, classes=[*PETS, "fish"])
    cat, dog, bird = (pets / "test" / n / f"{n}0.png" for n in ("cats", "dogs", "birds"))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{cat},cats\n{bird},birds\n{dog},dogs\n")
    with pytest.raises(ClassMismatchError, match=r"does not know: \['birds'\]; model classes absent from the data: "
                                                 r"\['fish'\] \(pass --only-model-classes and --allow-missing-classes"):
        evaluate_run(run, labels, tmp_path / "x")
    with pytest.raises(ClassMismatchError, match=r"absent from the data: \['fish'\] \(pass --allow-missing-classes"):
        evaluate_run(run, labels, tmp_path / "x", only_model_classes=True)
    report = evaluate_run(run, labels, tmp_path / "both", only_model_classes=True, allow_missing_classes=True,
                          top_k=(1,))
    assert report["n_samples"] == 2 and report["unknown_classes"] == {"birds": 1}
    assert [(s["path"], s["reason"], s["detail"]) for s in report["skipped"]] == [(str(bird), UNKNOWN_CLASS, "class 'birds'")]
    assert [r["path"] for r in read_csv(tmp_path / "both" / "predictions.csv")] == [str(cat), str(dog)]
    assert report["per_class"]["fish"]["support"] == 0

    only_birds = tmp_path / "birds.csv"
    only_birds.write_text(f"{bird},birds\n")
    with pytest.raises(ClassMismatchError, match=r"None of the evaluation data's classes is the model's.*\['birds'\]"):
        evaluate_run(run, only_birds, tmp_path / "y", only_model_classes=True)
    with pytest.raises(ClassMismatchError, match=r"does not know: \['birds'\]; model classes absent .*\] \(no class in "
                                                 r"common: is DATA the data this model was trained for\?\)\. DATA must"):
        evaluate_run(run, only_birds, tmp_path / "y")  # no flag offered: none would leave anything to evaluate
