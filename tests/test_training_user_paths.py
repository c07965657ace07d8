"""The fine-tuning engine where a user met defects: lr-find's default folder, the summary saying what its epoch table was
computed on, and ``train.final_model: best`` giving every worker of a multi-worker run the same model."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import yaml
from _training_helpers import QUIET, TINY, mnist_recipe, register_tiny


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


@pytest.mark.slow
def test_lr_find_writes_into_a_new_runs_folder_not_the_current_one(mnist, tmp_path, monkeypatch, capsys):
    from ftkit.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(mnist_recipe(mnist, phases=[{"train": "all", "epochs": 1, "lr": 0.01}])))
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", str(recipe), "--steps", "6", "--start-lr", "1e-3", "--end-lr", "1"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny.yaml"]  # nothing beside the recipe
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"tiny-lr-find-\d{8}-\d{6}", folder.name), folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["lr_find.csv", "lr_find.png"]
    assert printed.startswith(f"lr_find: output folder {folder}\n")
    assert f"plot: {folder / 'lr_find.png'}, values: {folder / 'lr_find.csv'}" in printed
    assert len((folder / "lr_find.csv").read_text().splitlines()) == 1 + 6
    chosen = tmp_path / "mine"  # --out still picks the folder
    assert main(["lr-find", str(recipe), "--steps", "6", "--out", str(chosen)]) == 0
    assert sorted(p.name for p in chosen.iterdir()) == ["lr_find.csv", "lr_find.png"]
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_lr_find_says_it_runs_steps_over_a_range_of_rates_not_the_phases_epochs(mnist, tmp_path):
    """lr-find prepares the recipe's first phase as training does, whose audit line ("2 epoch(s)", the phase's
    rates) described a training it does not run."""
    from ftkit.training.lr_find import lr_find

    recipe = mnist_recipe(mnist, phases=[{"train": "head", "epochs": 2, "lr": 0.01},
                                         {"train": "all", "epochs": 1, "lr": 0.001}],
                          train={"gradient_accumulation_steps": 5})
    lines = []
    result = lr_find(recipe, out=tmp_path, steps=6, start_lr=1e-3, end_lr=1.0, log=lines.append)
    assert len(result.lrs) == 6
    # tiny_bn_test's head: a Dense layer from 8 features to 3 classes (27 weights); the backbone's 384 frozen
    assert lines[:3] == [
        f"lr_find: output folder {tmp_path.resolve()}",
        "feature cache: computing backbone features once (inference mode, no augmentation)",
        "lr_find: phase 1/2 'phase0' | trainable 27 params, frozen 384 | BatchNorm: 0 training, 2 inference mode | "
        "feature cache: on | 6 steps, the learning rate growing exponentially from 0.001 to 1 (instead of the "
        "phase's epochs and learning-rate schedule; fewer if the loss diverges)"]
    assert lines[3].startswith("lr_find: suggested learning rate ")
    assert len(lines) == 4  # neither the training audit line nor its gradient accumulation line


@pytest.mark.slow
def test_the_summary_says_what_its_epoch_table_was_computed_on(mnist, tmp_path):
    """Under --smoke (2 training and 2 validation batches per epoch) the table's val_acc covers 8 of the 12 val
    images while the val line scores all 12: the summary says so, and the numbers it gives are right."""
    from ftkit.training import train

    recipe = mnist_recipe(mnist, phases=[{"train": "all", "epochs": 1, "lr": 0.05}],
                          evaluate={"enabled": True, "splits": ["val"]}, train={"class_weight": {"2": 2.0}})
    lines = []
    result = train(recipe, out=tmp_path / "smoke", smoke=True, log=lines.append)
    summary = lines[-1]
    assert "class weights (train.class_weight): 0 1, 1 1, 2 2; not listed, so 1: 0, 1" in lines
    # smoke: 4 images per class (12 train, 12 val), batches of 4, 2 steps each
    assert "note: loss and acc are over 2 of the 3 training batches of each epoch (train.steps_per_epoch=2)" in summary
    assert ("note: val_loss, val_acc and the best epoch are on the first 8 of the 12 val images "
            "(train.validation_steps=2); the val line below scores all 12") in summary
    assert f"val: accuracy {result.reports['val']['accuracy']:.4f} on 12 images, report" in summary
    assert result.reports["val"]["n_samples"] == 12

    full = train(recipe, out=tmp_path / "full", log=lines.append)  # one pass over every split: nothing to note
    assert "note:" not in lines[-1]
    last = full.history[-1]["val_accuracy"]
    assert f"val: accuracy {full.reports['val']['accuracy']:.4f} on 24 images" in lines[-1]
    assert full.reports["val"]["accuracy"] == pytest.approx(last, abs=1e-6)  # table and val line now agree


def _tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_final_model_best_is_the_same_model_on_a_worker_that_writes_nothing(mnist, tmp_path, monkeypatch):
    """A non-chief worker writes no best.keras, yet must end with the best epoch's weights as the chief does, both
    in a fresh run (kept in memory) and after a resume (read from the shared run folder)."""
    import keras

    from ftkit import distribute
    from ftkit.evaluate import load_model
    from ftkit.training import train

    phases = [{"train": "all", "epochs": 1, "lr": 0.01}, {"train": "all", "epochs": 1, "lr": 5.0}]
    recipe = mnist_recipe(mnist, phases=phases, train={"final_model": "best"})
    chief = train(recipe, out=tmp_path / "chief", **QUIET)
    assert chief.best_epoch == 0 and chief.history[1]["val_loss"] > 10 * chief.history[0]["val_loss"]
    best = chief.model.get_weights()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(recipe, out=tmp_path / "cut", callbacks=[Interrupt()], **QUIET)

    monkeypatch.setattr(distribute, "is_chief", lambda strategy: False)
    worker = train(recipe, out=tmp_path / "worker", **QUIET)
    assert not (tmp_path / "worker").exists()
    assert worker.best_epoch == 0
    _assert_same(worker.model.get_weights(), best)
    last = load_model(chief.path, checkpoint="last").model.get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(last, best, strict=True)) > 0.01  # best is not last

    before = _tree(tmp_path / "cut")
    resumed = train(resume=tmp_path / "cut", **QUIET)
    assert _tree(tmp_path / "cut") == before  # the worker read the folder and wrote nothing
    assert resumed.best_epoch == 0
    _assert_same(resumed.model.get_weights(), best)
    assert [r["epoch"] for r in resumed.history] == [0, 1]  # the epoch trained before the resume too
    assert resumed.history[0]["loss"] == pytest.approx(chief.history[0]["loss"], rel=1e-6)
    assert json.loads((tmp_path / "cut" / "checkpoints" / "state.json").read_text())["global_epoch"] == 1
    shutil.rmtree(tmp_path / "cut")


def test_a_cluster_that_the_strategy_would_ignore_is_refused_before_anything_is_written(mnist, tmp_path, monkeypatch,
                                                                                       capsys):
    """--workers with --strategy default (or mirrored): every worker would train alone as its own chief and write
    the same run folder."""
    from ftkit.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(mnist_recipe(mnist)))
    monkeypatch.setenv("TF_CONFIG", "")  # --workers writes os.environ: restored after the test
    for strategy in ("default", "mirrored"):
        assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--strategy", strategy,
                     "--workers", "127.0.0.1:2222,127.0.0.1:2223", "--worker-index", "1"]) == 2
        err = capsys.readouterr().err
        assert "describes a cluster of 2 workers, but the strategy trains on this machine alone" in err
        assert "Use --strategy multi_worker (or auto), or unset TF_CONFIG" in err
        assert f"Received: strategy: {'default strategy' if strategy == 'default' else 'MirroredStrategy'}, 1 " in err
        assert not (tmp_path / "run").exists()


def test_class_weights_are_printed_with_where_they_come_from(mnist):
    from ftkit.recipe import load_recipe
    from ftkit.training.engine import class_weight_line, plan_run

    recipe = mnist_recipe(mnist, train={"class_weight": "auto"})
    recipe["data"].update(samples_per_class=None, max_samples_per_class=None)  # MNIST's own, unequal counts
    plan = plan_run(load_recipe(recipe))
    counts = np.bincount(plan.data.index["train"].labels)
    assert len(set(counts)) == 3
    expected = counts.sum() / (3 * counts)  # balanced: n / (classes * count)
    np.testing.assert_allclose(plan.data.sample_weights, expected, rtol=1e-6)
    assert class_weight_line("auto", plan.data) == (
        "class weights (auto: scikit-learn's balanced weights from the training counts): "
        + ", ".join(f"{name} {w:.3g}" for name, w in zip("012", expected, strict=True)))
    explicit = plan_run(load_recipe(mnist_recipe(mnist, train={"class_weight": {"1": 2.5}})))
    assert list(explicit.data.sample_weights) == [1.0, 2.5, 1.0]
    assert class_weight_line({"1": 2.5}, explicit.data) == ("class weights (train.class_weight): 0 1, 1 2.5, 2 1; "
                                                            "not listed, so 1: 0, 2")


def test_auto_picks_mirrored_when_several_gpus_are_visible(monkeypatch):
    import tensorflow as tf

    from ftkit import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    for gpus, expected in ((0, "default"), (1, "default"), (2, "mirrored"), (8, "mirrored")):
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None, n=gpus: [f"/physical_device:GPU:{i}" for i in range(n)] if kind == "GPU" else [])
        assert distribute.resolve_name("auto") == expected, gpus
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    assert distribute.resolve_name("auto") == "multi_worker"  # a cluster wins over the GPUs


def test_truncating_the_history_never_leaves_it_missing_or_half_written(tmp_path, monkeypatch):
    """Resuming drops the rows of an unfinished epoch while the other workers read the file: the old rows stay
    whole until the new file replaces them, even when writing the new one fails."""
    import ftkit.training.runs as runs

    folder = runs.RunFolder(tmp_path).create()
    rows = [{"epoch": e, "phase": 0, "phase_name": "head", "lr": 0.1, "loss": 1.0 / (e + 1), "accuracy": 0.5,
             "val_loss": None, "val_accuracy": None, "cached": 1, "seconds": 0.5} for e in range(3)]
    for row in rows:
        folder.append_history(row)
    before = (tmp_path / "history.csv").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(runs, "atomic_write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        folder.truncate_history(2)
    assert (tmp_path / "history.csv").read_bytes() == before
    monkeypatch.undo()
    folder.truncate_history(2)
    assert folder.read_history() == rows[:2]
    assert (tmp_path / "history.csv").read_bytes() == before[:before.index(b"\r\n2,")] + b"\r\n"


def test_the_summary_gives_the_split_sizes_left_after_a_file_fails_to_decode(shared_data, tmp_path):
    """A val JPEG cut in half reads its header (the scan keeps it: "val 7" at the start) and fails when the first
    epoch's validation decodes it: the summary gives the 6 images validated and scored, and says why."""
    from ftkit.training import train

    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 3)):
        for name in ("ants", "bees"):
            (root / split / name).mkdir(parents=True)
            for source in sorted((shared_data / "hymenoptera" / split / name).iterdir())[:n]:
                (root / split / name / source.name).write_bytes(source.read_bytes())
    whole = next(iter(sorted((root / "val" / "ants").iterdir()))).read_bytes()
    (root / "val" / "ants" / "zz_cut.jpg").write_bytes(whole[: len(whole) // 2])
    recipe = {"data": {"train": str(root), "image_size": [16, 16], "batch_size": 4},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}, "evaluate": {"splits": ["val"]}}
    lines = []
    result = train(recipe, out=tmp_path / "run", log=lines.append)
    assert lines[1] == f"data: 2 classes from {root}; images: train 8, val 7"
    summary = lines[-1].splitlines()
    assert "data: images after decoding: train 8, val 6 (1 skipped while decoding)" in summary
    assert result.reports["val"]["n_samples"] == 6
    assert any(line.startswith("val: accuracy ") and " on 6 images, report " in line for line in summary)


def test_evaluate_top_k_unset_hashes_as_the_old_default_so_earlier_runs_resume():
    """``evaluate.top_k`` now defaults to null (top-5 only where there are more than 5 classes); a run whose saved
    recipe wrote the old default ``[5]`` must still resume with a recipe that leaves it unset."""
    import copy
    from pathlib import Path

    from ftkit.recipe import load_recipe
    from ftkit.training import runs

    unset = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml").to_dict()
    assert unset["evaluate"]["top_k"] is None
    old = copy.deepcopy(unset)
    old["evaluate"]["top_k"] = [5]
    other = copy.deepcopy(unset)
    other["evaluate"]["top_k"] = [1, 5]
    assert runs.recipe_digest(unset) == runs.recipe_digest(old) != runs.recipe_digest(other)
