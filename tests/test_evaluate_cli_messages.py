"""Evaluation as a user meets it: compare galleries of MNIST rows show the digits, a gallery heading counts in
words that agree with the count, and the evaluate CLI explains bad flags and undefined metrics."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from ftkit.data.sources import read_idx
from ftkit.evaluate import evaluate_predictions
from ftkit.evaluate.compare import compare_runs, in_memory_pixels

DIGITS = [str(d) for d in range(10)]


def _probs(predicted: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    probs = np.full((len(predicted), 10), (1 - confidence) / 9)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


@pytest.fixture(scope="module")
def mnist_test(mnist):
    images = read_idx(f"{mnist}/t10k-images-idx3-ubyte.gz")
    labels = read_idx(f"{mnist}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def test_compare_gallery_of_mnist_rows_shows_each_row_digit(mnist, mnist_test, tmp_path):
    images, labels = mnist_test
    rows = np.arange(100, 140)
    ids = [f"test[{i}]" for i in rows]
    y = labels[rows]
    a_pred, b_pred = y.copy(), y.copy()
    b_pred[:5] = (y[:5] + 1) % 10  # B gets the first 5 wrong, A gets the next 3 wrong
    a_pred[5:8] = (y[5:8] + 1) % 10
    # As `ftkit evaluate` records its data ("SOURCE (test split)") and as training does (the bare SOURCE)
    evaluate_predictions(ids, y, _probs(a_pred), DIGITS, tmp_path / "a", data=f"{mnist} (test split)",
                         images=images[rows], top_k=())
    evaluate_predictions(ids, y, _probs(b_pred), DIGITS, tmp_path / "b", data=mnist, images=images[rows], top_k=())

    pixels = in_memory_pixels(tmp_path / "b" / "predictions.csv", ids)
    assert pixels is not None
    for row_id, row in zip(ids, rows, strict=True):
        assert np.array_equal(pixels(row_id), images[row])  # the row's own digit, read again from MNIST

    result = compare_runs(tmp_path / "a", tmp_path / "b", out_dir=tmp_path / "cmp")
    assert len(result["a_right_b_wrong"]) == 5 and len(result["a_wrong_b_right"]) == 3
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "cannot decode" not in page
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(thumbs) == 8
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumbs[0]))).convert("L"), np.float32)
    wanted = np.asarray(Image.fromarray(images[rows[0]]).resize(first.shape[::-1]), np.float32)
    assert np.abs(first - wanted).mean() < 20  # the digit itself (JPEG-compressed), not a placeholder


def test_in_memory_pixels_is_none_for_files_or_a_moved_data_set(tmp_path, mnist_test):
    images, labels = mnist_test
    evaluate_predictions(["test[0]", "test[1]"], labels[:2], _probs(labels[:2]), DIGITS, tmp_path / "gone",
                         data=str(tmp_path / "moved_mnist"), images=images[:2], top_k=())
    assert in_memory_pixels(tmp_path / "gone" / "predictions.csv", ["test[0]"]) is None
    assert in_memory_pixels(tmp_path / "gone" / "predictions.csv", ["/data/cats/1.jpg"]) is None


def test_a_gallery_heading_of_one_image_says_image(tmp_path, shared_data):
    paths = [str(p) for p in sorted((shared_data / "catsdogs" / "test" / "cats").iterdir())[:4]]
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])  # one cats -> dogs
    evaluate_predictions(paths, y, probs, ["cats", "dogs"], tmp_path / "r", top_k=())
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h3>cats → dogs: 1 image</h3>" in page


def _cli(argv, capsys):
    from ftkit.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--top-k", "--batch-size"])
def test_a_non_number_flag_says_what_is_allowed(flag, capsys):
    err = _cli(["evaluate", "run", "data", flag, "abc"], capsys)
    assert f"argument {flag}: must be an integer >= 1. Received: 'abc'" in err
    assert "_positive_int" not in err


@pytest.mark.slow  # trains the tiny MNIST run (~11 s)
def test_evaluate_cli_prints_why_a_top_k_is_undefined(tiny_mnist_run, mnist, tmp_path, capsys):
    from ftkit.cli import main

    assert main(["evaluate", str(tiny_mnist_run.path), mnist, "--only-model-classes", "--top-k", "1", "3",
                 "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "note: top-3 accuracy: undefined (k >= number of classes 3, always 1)." in captured.err
    assert "top-3 n/a" in captured.out
