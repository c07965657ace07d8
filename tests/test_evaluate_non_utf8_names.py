"""File names that are not UTF-8 (an archive made on another system) through evaluation and prediction: the
bundle is written with the name escaped for reading and exact in predictions.csv, and the CLI prints it."""

from __future__ import annotations

import json
import os

import pytest
from _training_helpers import register_tiny

from ftkit.cli import main

LATIN1 = os.fsdecode(b"caf\xe9.png")  # not UTF-8: a surrogate escape in Python's str


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


@pytest.fixture
def digits(tmp_path):
    """Class folders 0, 1, 2 of noise PNGs, each with one named in latin-1 (whatever the model predicts, one of
    them is in the report's gallery of errors)."""
    from _image_fixtures import write_noise_png

    root = tmp_path / "digits"
    for cls in "012":
        for k in range(2):
            write_noise_png(root / cls / f"{k}.png", 10 * int(cls) + k)
        write_noise_png(root / cls / LATIN1, 90 + int(cls))
    return root


def test_an_evaluation_bundle_and_predictions_of_a_file_whose_name_is_not_utf8(tiny_mnist_run, digits, tmp_path,
                                                                             capsys):
    from ftkit.evaluate.report import read_predictions_csv

    out = tmp_path / "bundle"
    assert main(["evaluate", str(tiny_mnist_run.path), str(digits), "--out", str(out)]) == 0
    paths = read_predictions_csv(out / "predictions.csv")[0]
    assert len(paths) == 9
    assert os.fsencode(digits / "1" / LATIN1) in {os.fsencode(p) for p in paths}  # the exact bytes
    assert "caf\\xe9.png" in (out / "report.html").read_text(encoding="utf-8")  # in the gallery of errors
    assert json.loads((out / "report.json").read_text())["n_samples"] == 9
    capsys.readouterr()
    assert main(["predict", str(tiny_mnist_run.path), str(digits / "1" / LATIN1), "--csv", str(tmp_path / "p.csv")]) == 0
    assert "caf\\xe9.png" in capsys.readouterr().out  # printed escaped, as the report shows it
    assert os.fsencode(digits / "1" / LATIN1) in (tmp_path / "p.csv").read_bytes()
