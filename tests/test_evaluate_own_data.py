"""`ftkit evaluate RUN [DATA]` on the run's own data. DATA a folder of class folders without split folders: the output
says all of it is evaluated, and when it is the run's own training source, that the scores are not held-out scores.
Without DATA (or with it and --split): the val or test split training carved, rebuilt by training's own data
loading and checked against the file lists ftkit_run.json records; a folder changed since training is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from hashlib import blake2b

import pytest
import yaml
from _training_helpers import QUIET, TINY, register_tiny

from ftkit.evaluate.report import bundle_working_dir, read_predictions_csv, resolve_row_path


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from _image_fixtures import write_noise_png

    from ftkit.training import train

    register_tiny()
    root = tmp_path_factory.mktemp("own") / "shapes"
    for c, cls in enumerate(("a", "b")):
        for k in range(6):
            write_noise_png(root / cls / f"{k}.png", 10 * c + k)
    # 6 files per class: 1 val and 1 test carved from each (data.val_fraction, data.test_fraction), 4 trained on.
    # Training evaluates both, so its report/{val,test}/predictions.csv list the files it carved.
    recipe = {"data": {"train": str(root), "image_size": [16, 16], "channels": 1, "batch_size": 4,
                       "test_fraction": 0.2},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}}
    return train(recipe, out=root.parent / "run", **QUIET), root


def _evaluated(report_dir) -> tuple[list[str], list[str]]:
    """``(real paths, true classes)`` of a bundle's predictions.csv, in its order."""
    csv = os.path.join(report_dir, "predictions.csv")
    paths, truth, _, _, _ = read_predictions_csv(csv)
    working = bundle_working_dir(csv)
    return [os.path.realpath(resolve_row_path(p, working)) for p in paths], truth


def _moved_run(run, data, tmp_path):
    """A copy of ``run`` whose recipe trains from ``data`` (a copy of its folder, free to change)."""
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["data"]["train"] = str(data)
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return copy


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
    assert "Leave DATA out (or pass --split val or test) to evaluate the run's held-out split again" in warning
    # the same images in another folder: not the training source, no such warning
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    other = evaluate_run(run.path, copy, tmp_path / "copy_report")
    assert other["n_samples"] == 12 and not [w for w in other["warnings"] if "training source" in w]


def test_without_data_the_run_s_carved_splits_are_evaluated_again(folder_run, tmp_path):
    from ftkit.evaluate import evaluate_run

    run, root = folder_run
    trained = {split: _evaluated(run.path / "report" / split) for split in ("val", "test")}
    assert [len(trained[s][0]) for s in ("val", "test")] == [2, 2]
    assert not set(trained["val"][0]) & set(trained["test"][0])

    report = evaluate_run(run.path)  # default: test, the run has one
    assert report["split"] == "test" and report["n_samples"] == 2
    assert _evaluated(report["out_dir"]) == trained["test"]
    assert report["out_dir"] == str(run.path / "report" / "shapes-test")
    assert report["split_note"] == (
        f"split: test (the default without DATA: test, else val; the run has train, val, test; --split NAME for "
        f"another): the run's own test split, carved by training from {root} (data.test_fraction 0.2, data.seed 0); "
        f"2 images, the same files as training's (checked against ftkit_run.json)")
    # the same model on the same images: training's own report's scores
    at_training = json.loads((run.path / "report" / "test" / "report.json").read_text())
    assert report["log_loss"] == pytest.approx(at_training["log_loss"], abs=1e-6)

    val = evaluate_run(run.path, split="val", out_dir=tmp_path / "val", checkpoint="last")
    assert val["split"] == "val" and val["n_samples"] == 2
    assert _evaluated(tmp_path / "val") == trained["val"]
    # DATA the training folder itself: the same carved split, not "no split folders to choose from"
    given = evaluate_run(run.path, root, tmp_path / "given", split="val")
    assert _evaluated(tmp_path / "given") == trained["val"]
    assert given["split_note"].startswith("split: val (--split val; DATA is the run's training source, which has "
                                          "no val split (training carved the run's from it)): the run's own val "
                                          "split, carved by training from")
    # the rest: the training files, exactly those of no held-out split
    train = evaluate_run(run.path, split="train", out_dir=tmp_path / "train")
    assert train["n_samples"] == 8
    everything = {os.path.realpath(p) for p in root.rglob("*.png")}
    assert set(_evaluated(tmp_path / "train")[0]) == everything - set(trained["val"][0]) - set(trained["test"][0])
    # DATA the training folder, which holds only train: the run's train split all the same, not all of the folder
    given = evaluate_run(run.path, root, tmp_path / "given_train", split="train")
    assert _evaluated(tmp_path / "given_train") == _evaluated(tmp_path / "train")
    assert given["split_note"].startswith("split: train (--split train; DATA is the run's training source, from "
                                          "which training carved val and test): the run's own train split, what "
                                          "training kept of")


def test_the_evaluate_cli_without_data(folder_run, tmp_path, capsys):
    from ftkit.cli import main

    run, root = folder_run
    assert main(["evaluate", str(run.path), "--split", "val", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"split: val (--split val): the run's own val split, carved by training from {root} "
                              f"(data.val_fraction 0.2, data.seed 0); 2 images, the same files as training's")
    assert re.search(r"\n2 images, accuracy \d\.\d{4}, balanced \d\.\d{4}\n", out.out)  # no top-k, no ", "
    assert _evaluated(tmp_path / "r") == _evaluated(run.path / "report" / "val")
    # the default top-k (top-5) is undefined for 2 classes: left out, with no note; asked for, it is noted
    assert "top-5" not in out.out and "top-5" not in out.err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["top_k_accuracy"] == {}
    assert main(["evaluate", str(run.path), "--top-k", "1", "5", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr()
    assert "note: top-5 accuracy: undefined (k >= number of classes 2, always 1)." in out.err
    assert re.search(r", top-1 \d\.\d{4}, top-5 n/a\n", out.out)
    assert main(["evaluate", str(run.path), "--split", "holdout"]) == 2
    assert capsys.readouterr().err == ("ftkit evaluate: error: --split must name a split: train (training), val "
                                       "(valid, validation), test (testing). Received: split='holdout'\n")


@pytest.mark.parametrize("flag", ["--allow-missing-classes", "--only-model-classes"])
def test_flags_about_data_s_classes_are_refused_without_data(flag, tmp_path, capsys):
    from ftkit.cli import main

    # refused before the run folder is even read
    assert main(["evaluate", str(tmp_path / "run"), flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftkit evaluate: error: allow_missing_classes and only_model_classes "
                          "(--allow-missing-classes, --only-model-classes) say how DATA's classes meet the run's; "
                          "without DATA the run's own data is evaluated, which has exactly the run's classes")
    assert err.rstrip().endswith(f"Received: data=None, allow_missing_classes={flag == '--allow-missing-classes'}, "
                                 f"only_model_classes={flag == '--only-model-classes'}")


def test_the_classes_data_classes_leaves_out_are_not_skipped_files(tmp_path, capsys):
    """data.classes 2 of 3: training drops the third class's files on purpose, and so does evaluating the run's own
    split: not one "skipped" line (or report.json entry) per file of it."""
    from _image_fixtures import write_noise_png

    from ftkit.cli import main
    from ftkit.training import train

    register_tiny()
    root = tmp_path / "tri"
    for s, n in (("train", 5), ("test", 2)):
        for c, cls in enumerate("abc"):
            for k in range(n):
                write_noise_png(root / s / cls / f"{k}.png", 100 * c + 10 * (s == "test") + k)
    recipe = {"data": {"train": str(root), "classes": ["a", "b"], "image_size": [16, 16], "channels": 1,
                       "batch_size": 4},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "head", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}}
    run = train(recipe, out=tmp_path / "run", **QUIET)
    assert main(["evaluate", str(run.path)]) == 0
    out = capsys.readouterr()
    assert "skipped" not in out.err
    report = json.loads((run.path / "report" / "tri-test" / "report.json").read_text())
    assert report["n_samples"] == 4 and report["skipped"] == [] and report["unknown_classes"] == {}
    assert _evaluated(run.path / "report" / "tri-test") == _evaluated(run.path / "report" / "test")
    assert report["split_note"].endswith("; classes: the run's 2 of 3 (data.classes), the others' 2 files left out, "
                                         "as training left them")


def test_ftkit_run_json_records_each_split_s_file_list(folder_run):
    run, root = folder_run
    lists = json.loads((run.path / "ftkit_run.json").read_text())["data"]["file_lists"]
    assert {split: entry["files"] for split, entry in lists.items()} == {"train": 8, "val": 2, "test": 2}
    for split in ("val", "test"):
        paths, truth = _evaluated(run.path / "report" / split)
        # paths relative to the source folder, with their class; sorted, so order does not matter
        rows = sorted(f"{os.path.relpath(p, os.path.realpath(root))}\t{c}".encode()
                      for p, c in zip(paths, truth, strict=True))
        assert lists[split]["blake2b"] == blake2b(b"\n".join(rows), digest_size=16).hexdigest()


@pytest.mark.parametrize("change", ["added", "removed", "relabelled"])
def test_a_folder_changed_since_training_is_refused(folder_run, tmp_path, change):
    from ftkit.evaluate import evaluate_run
    from ftkit.evaluate.run_data import SplitChangedError

    run, root = folder_run
    data = tmp_path / "shapes"
    shutil.copytree(root, data)
    moved = _moved_run(run, data, tmp_path)
    # unchanged, at another place: the same files (digests of paths relative to the folder)
    assert evaluate_run(moved, split="val", out_dir=tmp_path / "same")["n_samples"] == 2
    if change == "added":
        shutil.copy(data / "a" / "0.png", data / "a" / "new.png")
        counts = "train 8, val 2, test 2; now train 9, val 2, test 2"
    elif change == "removed":
        (data / "b" / "3.png").unlink()
        counts = "train 8, val 2, test 2; now train 7, val 2, test 2"
    else:
        os.rename(data / "a" / "5.png", data / "b" / "5a.png")
    with pytest.raises(SplitChangedError) as caught:
        evaluate_run(moved, split="val", out_dir=tmp_path / "changed")
    message = str(caught.value)
    assert message.startswith(f"The run's val split can no longer be reproduced: training carved it from {data} "
                              f"(data.val_fraction 0.2, data.test_fraction 0.2, data.seed 0), and the files there "
                              f"changed since")
    if change != "relabelled":
        assert f"File lists: recorded {counts}." in message
    assert "pass DATA with split folders (train/, val/, test/) or a CSV of path,label,split" in message
    with pytest.raises(SplitChangedError):  # DATA the changed training folder: the same refusal
        evaluate_run(moved, data, tmp_path / "changed", split="test")
    if change == "added":  # from the CLI: said before TensorFlow loads (seconds)
        code = ("import sys; from ftkit.cli import main; rc = main(sys.argv[1:]); "
                "print('rc', rc, 'tensorflow' in sys.modules or 'keras' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code, "evaluate", str(moved)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert "rc 2 False" in done.stdout, done.stdout + done.stderr
        assert done.stderr.startswith("ftkit evaluate: error: The run's test split can no longer be reproduced")


def test_a_run_recorded_before_file_lists_is_evaluated_with_a_warning(folder_run, tmp_path):
    from ftkit.evaluate import evaluate_run
    from ftkit.evaluate.run_data import SplitChangedError

    run, root = folder_run
    data = tmp_path / "shapes"
    shutil.copytree(root, data)
    old = _moved_run(run, data, tmp_path)
    meta = json.loads((old / "ftkit_run.json").read_text())
    del meta["data"]["file_lists"]
    (old / "ftkit_run.json").write_text(json.dumps(meta))
    report = evaluate_run(old, split="val", out_dir=tmp_path / "old")
    assert report["n_samples"] == 2
    trained_val = [os.path.relpath(p, os.path.realpath(root)) for p in _evaluated(run.path / "report" / "val")[0]]
    assert [os.path.relpath(p, os.path.realpath(data)) for p in _evaluated(tmp_path / "old")[0]] == trained_val
    assert report["split_note"].endswith("2 images, not checked (no file lists recorded)")
    assert report["warnings"] == [
        "ftkit_run.json records no file lists (a run from before they were recorded), so the val split could not be "
        "checked to be the one training used; its per-class counts are the recorded ones (train 8 {'a': 4, 'b': 4}, "
        "val 2 {'a': 1, 'b': 1}, test 2 {'a': 1, 'b': 1})"]
    (data / "a" / "0.png").unlink()  # counts that differ prove the split is another
    with pytest.raises(SplitChangedError, match=r"Per-class counts: recorded train 8 \{'a': 4, 'b': 4\}, val 2 "
                                                r"\{'a': 1, 'b': 1\}, test 2 \{'a': 1, 'b': 1\}; now train 7 "
                                                r"\{'a': 3, 'b': 4\}"):
        evaluate_run(old, split="val", out_dir=tmp_path / "old2")


def test_mnist_s_carved_val_and_capped_test(tiny_mnist_run, mnist, tmp_path):
    from ftkit.evaluate import evaluate_run

    lists = json.loads((tiny_mnist_run.path / "ftkit_run.json").read_text())["data"]["file_lists"]
    # digits 0-2, data.samples_per_class 16, 5% carved for val, val and test capped at 8 per class
    assert {split: entry["files"] for split, entry in lists.items()} == {"train": 48, "val": 24, "test": 24}
    test = evaluate_run(tiny_mnist_run.path, out_dir=tmp_path / "test")
    assert test["split"] == "test" and test["n_samples"] == 24
    assert "the run's own test split, the test split of" in test["split_note"]
    assert "at most 8 per class (data.eval_samples_per_class, data.seed 0)" in test["split_note"]
    val = evaluate_run(tiny_mnist_run.path, split="val", out_dir=tmp_path / "val")
    assert val["n_samples"] == 24 and "carved by training from" in val["split_note"]
    assert "the same files as training's (checked against ftkit_run.json)" in val["split_note"]
    ids, truth = read_predictions_csv(tmp_path / "val" / "predictions.csv")[:2]
    assert all(i.startswith("train[") for i in ids) and sorted(truth) == sorted(["0", "1", "2"] * 8)
    # DATA MNIST itself, which has no val split: the run's carved one
    given = evaluate_run(tiny_mnist_run.path, mnist, tmp_path / "given", split="val")
    assert read_predictions_csv(tmp_path / "given" / "predictions.csv")[0] == ids
    assert given["top_k_accuracy"] == {}  # 3 classes: no top-5 by default


def test_a_csv_s_carved_val_and_its_own_test(folder_run, tmp_path):
    from ftkit.evaluate import evaluate_run
    from ftkit.training import train

    _, root = folder_run
    data = tmp_path / "data"
    shutil.copytree(root, data / "images")
    rows = [f"images/{c}/{k}.png,{c},{'test' if k == 5 else 'train'}" for c in ("a", "b") for k in range(6)]
    (data / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    recipe = {"data": {"train": str(data / "labels.csv"), "image_size": [16, 16], "channels": 1, "batch_size": 4},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "head", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}, "evaluate": {"splits": ["val"]}}
    run = train(recipe, out=tmp_path / "run", **QUIET)
    test = evaluate_run(run.path, out_dir=tmp_path / "test")  # the CSV's own test rows, nothing carved
    assert test["split_note"].endswith(f"the run's own test split, the test split of {data / 'labels.csv'}; 2 "
                                       f"images, the same files as training's (checked against ftkit_run.json)")
    assert sorted(_evaluated(tmp_path / "test")[0]) == [os.path.realpath(data / "images" / c / "5.png")
                                                         for c in ("a", "b")]
    # DATA the CSV, which has no val split: the one training carved from its train rows (1 of each class's 5)
    val = evaluate_run(run.path, data / "labels.csv", tmp_path / "val", split="val")
    assert val["n_samples"] == 2 and "carved by training from" in val["split_note"]
    assert _evaluated(tmp_path / "val") == _evaluated(run.path / "report" / "val")
    # the run's test split and the CSV's, the same rows: one report folder, not labels-test and labels-test-2
    own, given = evaluate_run(run.path), evaluate_run(run.path, data / "labels.csv", split="test")
    assert own["out_dir"] == given["out_dir"] == str(run.path / "report" / "labels-test")
    assert own["data"] == given["data"] == f"{data / 'labels.csv'} (test split)"


def test_a_copy_of_the_training_folder_gives_the_run_s_carved_split(folder_run, tmp_path, capsys):
    """README: "a folder moved whole still matches": DATA a copy of the training folder, --split val: carved again
    with the recipe's settings and checked against ftkit_run.json's file lists, which are relative to the source."""
    from ftkit.cli import main
    from ftkit.evaluate import evaluate_run

    run, root = folder_run
    copy = tmp_path / "elsewhere" / "shapes"
    shutil.copytree(root, copy)
    report = evaluate_run(run.path, copy, tmp_path / "val", split="val")
    trained_val, truth = _evaluated(run.path / "report" / "val")
    relative = [os.path.relpath(p, os.path.realpath(root)) for p in trained_val]
    evaluated, evaluated_truth = _evaluated(tmp_path / "val")
    assert [os.path.relpath(p, os.path.realpath(copy)) for p in evaluated] == relative
    assert evaluated_truth == truth and all(p.startswith(os.path.realpath(copy)) for p in evaluated)
    assert report["split"] == "val" and report["n_samples"] == 2
    assert report["split_note"] == (
        f"split: val (--split val; DATA holds the same files as the run's training source): the run's own val "
        f"split, carved by training from {root} (data.val_fraction 0.2, data.seed 0); 2 images, the same files as "
        f"training's (checked against ftkit_run.json)")
    # one file fewer: another carve, refused as before, with a hint saying how DATA differs
    (copy / "b" / "3.png").unlink()
    with pytest.raises(ValueError) as caught:
        evaluate_run(run.path, copy, tmp_path / "changed", split="val")
    message = str(caught.value)
    assert message.startswith("DATA is a folder of class folders, with no split folders to choose from")
    assert (f"DATA differs from the run's training data ({root}): carved with the recipe's settings "
            f"(data.val_fraction 0.2, data.test_fraction 0.2, data.seed 0), its file lists are not those "
            f"ftkit_run.json records (recorded train 8, val 2, test 2; DATA train 7, val 2, test 2), so --split val "
            f"cannot pick the run's val split, which training carved from {root}, out of it. Received: "
            f"data={str(copy)!r}, split='val'") in message
    assert main(["evaluate", str(run.path), str(copy), "--split", "val"]) == 2
    assert "DATA differs from the run's training data" in capsys.readouterr().err


def test_a_refusal_with_equal_counts_says_the_files_differ_and_names_the_caps():
    """A capped run (--smoke's 4 per class, data.eval_samples_per_class) draws as many files from a changed folder
    as it recorded: "recorded val 8; now val 8" alone would read as no change."""
    from types import SimpleNamespace

    from ftkit.evaluate.run_data import _cannot_reproduce

    config = SimpleNamespace(train="pets", val_fraction=0.2, test_fraction=0.0, seed=0, samples_per_class=None,
                             max_samples_per_class=4, eval_samples_per_class=4)
    same = str(_cannot_reproduce("val", config, "run", {"val": 8}, {"val": 8}, what="file lists"))
    assert "recorded val 8; now val 8: the same counts (capped per class: data.max_samples_per_class 4, " \
           "data.eval_samples_per_class 4), but other files. To evaluate" in same
    other = str(_cannot_reproduce("val", config, "run", {"val": 8}, {"val": 7}, what="file lists"))
    assert "recorded val 8; now val 7. To evaluate" in other
