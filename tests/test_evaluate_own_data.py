"""`ftkit evaluate RUN DATA` where DATA is a folder of class folders without split folders: the output says all of it
is evaluated, and when it is the run's own training source, that the scores are not held-out scores."""

from __future__ import annotations

import shutil

import pytest
from _training_helpers import QUIET, TINY, register_tiny


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from _image_fixtures import write_noise_png

    from ftkit.training import train

    register_tiny()
    root = tmp_path_factory.mktemp("own") / "shapes"
    for c, cls in enumerate(("a", "b")):
        for k in range(6):
            write_noise_png(root / cls / f"{k}.png", 10 * c + k)
    recipe = {"data": {"train": str(root), "image_size": [16, 16], "channels": 1, "batch_size": 4},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}, "evaluate": {"enabled": False}}
    return train(recipe, out=root.parent / "run", **QUIET), root


@pytest.mark.slow
def test_evaluating_the_runs_own_training_folder_says_the_scores_are_not_held_out(folder_run, tmp_path):
    from ftkit.evaluate import evaluate_run

    run, root = folder_run
    report = evaluate_run(run.path, root, tmp_path / "own")
    assert report["split_note"] == "split: none (DATA has no split folders: all of it is evaluated)"
    assert report["n_samples"] == 12
    [warning] = [w for w in report["warnings"] if "training source" in w]
    assert warning.startswith("DATA is this run's own training source (its recipe's data.train) and has no split "
                              "folders: the 12 images evaluated include those the model was trained on")
    # the same images in another folder: not the training source, no such warning
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    other = evaluate_run(run.path, copy, tmp_path / "copy_report")
    assert other["n_samples"] == 12 and not [w for w in other["warnings"] if "training source" in w]
