"""The engine: freezing really freezes (checksums), the feature cache matches the image path, resume is exact,
checkpoints are atomic, and bad input fails before training."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from _training_helpers import QUIET, TINY_AUX, mnist_recipe, register_tiny, tensorboard_epochs

from ftkit.recipe import load_recipe


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()



def _checksum(layers, *, attrs=("weights",)) -> dict[str, str]:
    out = {}
    for layer in layers:
        for w in layer.weights:
            out[w.path] = hashlib.sha256(np.asarray(w.numpy()).tobytes()).hexdigest()
    return out


def _trainer(recipe_dict, tmp_path):
    from ftkit.training.engine import Trainer, plan_run
    from ftkit.training.runs import RunFolder

    plan = plan_run(load_recipe(recipe_dict))
    trainer = Trainer(plan, RunFolder(tmp_path).create(), **QUIET)
    trainer.build()
    return trainer


def test_frozen_weights_and_bn_statistics_do_not_change(mnist, tmp_path):
    phases = [{"train": "head", "epochs": 1, "lr": 0.05}, {"train": 1, "epochs": 1, "lr": 0.05}]
    trainer = _trainer(mnist_recipe(mnist, phases=phases, train={"feature_cache": False}), tmp_path)
    groups = trainer.assembled.groups
    for phase in trainer.plan.phases:
        before = {g: _checksum(layers) for g, layers in groups.items()}
        audit = trainer.prepare_phase(phase)
        trainer.run_epoch(phase, phase.index)
        after = {g: _checksum(layers) for g, layers in groups.items()}
        for group in groups:
            trains = group in phase.trainable_groups
            changed = {k for k in before[group] if before[group][k] != after[group][k]}
            if trains:
                # every weight of a trained group moves, BN moving statistics included
                assert changed == set(before[group]), (phase.name, group)
            else:
                assert not changed, (phase.name, group, changed)
    assert audit["bn_training"] == 1 and audit["bn_inference"] == 1  # stage1's BN trains, the stem's does not


def test_train_bn_keeps_batchnorm_training_in_frozen_groups(mnist, tmp_path):
    phases = [{"train": "head", "epochs": 1, "lr": 0.05, "train_bn": True}]
    trainer = _trainer(mnist_recipe(mnist, phases=phases), tmp_path)
    stem = trainer.assembled.groups["stem"]
    conv = [layer for layer in stem if "conv" in layer.name]
    bn = [layer for layer in stem if "bn" in layer.name]
    before_conv, before_bn = _checksum(conv), _checksum(bn)
    trainer.prepare_phase(trainer.plan.phases[0])
    assert not trainer.cached  # BN that trains rules the cache out
    trainer.run_epoch(trainer.plan.phases[0], 0)
    assert _checksum(conv) == before_conv
    assert all(before_bn[k] != v for k, v in _checksum(bn).items())


def test_feature_cache_matches_the_image_path(mnist, tmp_path):
    phases = [{"train": "head", "epochs": 2, "lr": 0.05, "lr_schedule": "cosine"}]
    heads = {}
    for cached in (True, False):
        recipe = mnist_recipe(mnist, phases=phases, head={"hidden": [8], "dropout": 0.3},
                              train={"feature_cache": cached})
        trainer = _trainer(recipe, tmp_path / str(cached))
        phase = trainer.plan.phases[0]
        trainer.prepare_phase(phase)
        assert trainer.cached is cached
        for epoch in range(phase.epochs):
            trainer.run_epoch(phase, epoch)
        heads[cached] = [w for layer in trainer.assembled.head_layers for w in layer.get_weights()]
    assert len(heads[True]) == 4
    for a, b in zip(heads[True], heads[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(heads[True][0], 0)


PHASES = [{"train": "head", "epochs": 2, "lr": 0.05},
          {"train": "all", "epochs": 2, "lr": 0.02, "lr_schedule": "cosine", "lr_decay": 0.5}]


def _full_recipe(mnist):
    """Two phases on a backbone with an auxiliary head, evaluated on val: most of the engine in one run."""
    return mnist_recipe(mnist, backbone=TINY_AUX, phases=PHASES, evaluate={"enabled": True, "splits": ["val"]})


@pytest.fixture(scope="module")
def full_run(mnist, tmp_path_factory):
    import ftkit

    return ftkit.train(_full_recipe(mnist), out=tmp_path_factory.mktemp("full") / "run", **QUIET)


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_same_weights(mnist, full_run, tmp_path):
    import keras

    from ftkit.training import train

    recipe, full = _full_recipe(mnist), full_run

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:  # second epoch of the second phase; epoch 3's checkpoint exists
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(recipe, out=tmp_path / "cut", callbacks=[Interrupt()], **QUIET)
    state = (tmp_path / "cut" / "checkpoints" / "state.json").read_text()
    assert '"phase": 1' in state and '"epoch_in_phase": 1' in state
    other = {**recipe, "train": {**recipe["train"], "seed": 99}}
    with pytest.raises(ValueError, match="trained from a different recipe"):
        train(other, resume=tmp_path / "cut", **QUIET)  # refused before anything is loaded or written
    resumed = train(resume=tmp_path / "cut", **QUIET)
    a = keras.saving.load_model(full.path / "model.keras").get_weights()
    b = keras.saving.load_model(resumed.path / "model.keras").get_weights()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert [r["loss"] for r in full.history] == pytest.approx([r["loss"] for r in resumed.history])
    assert len(resumed.history) == 4
    assert [r["cached"] for r in resumed.history] == [1, 1, 0, 0]  # head phase ran on cached features


def test_checkpoint_writes_are_atomic(tmp_path):
    import keras

    from ftkit.training.runs import atomic_save_model

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "last.keras"
    atomic_save_model(model, target)
    good = target.read_bytes()

    class Broken(keras.Sequential):
        def save(self, path, *args, **kwargs):
            with open(path, "wb") as fp:
                fp.write(b"half a zip")
            raise OSError("disk full")

    broken = Broken([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(OSError, match="disk full"):
        atomic_save_model(broken, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


def report_accuracy(root):
    import json

    return json.loads((root / "report" / "val" / "report.json").read_text())["accuracy"]


def test_run_folder_follows_the_contract(full_run, mnist):
    import csv
    import json

    from ftkit.evaluate import load_model

    result = full_run
    root = result.path
    for name in ("recipe.yaml", "ftkit_run.json", "history.csv", "curves.png", "model.keras", "checkpoints/best.keras",
                 "checkpoints/last.keras", "checkpoints/state.json", "report/val/report.json"):
        assert (root / name).is_file(), name
    # one event file per writer for the whole run (Keras closed its writers after each epoch's fit: one per epoch)
    assert tensorboard_epochs(root) == {"train": [[0, 1, 2, 3]], "validation": [[0, 1, 2, 3]]}
    meta = json.loads((root / "ftkit_run.json").read_text())
    assert meta["class_names"] == ["0", "1", "2"] and meta["image_size"] == [16, 16] and meta["channels"] == 1
    loaded = load_model(root)
    assert len(loaded.model.outputs) == 1  # the auxiliary head is gone from the inference model
    assert not any(layer.name.startswith("aux") for layer in loaded.model.layers)
    raw = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1)).astype("float32")
    probs = loaded.model.predict(raw, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert [row["phase"] for row in result.history] == [0, 0, 1, 1]
    assert all(isinstance(row["loss"], float) and isinstance(row["epoch"], int) for row in result.history)
    assert repr(result) == (f"RunResult(path={str(root)!r}, epochs=4, best={result.best}, "
                            f"best_epoch={result.best_epoch}, accuracy={{'val': {report_accuracy(root)}}})")
    report = json.loads((root / "report" / "val" / "report.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0
    assert load_recipe(root / "recipe.yaml").backbone.name == TINY_AUX
    # MNIST rows are named by their index in MNIST's arrays (val is carved from train), whatever was sampled.
    from ftkit.data.sources import read_idx

    labels = read_idx(f"{mnist}/train-labels-idx1-ubyte.gz")
    with open(root / "report" / "val" / "predictions.csv") as fp:
        rows = list(csv.DictReader(fp))
    assert rows and all(r["path"].startswith("train[") for r in rows)
    assert [int(labels[int(r["path"][6:-1])]) for r in rows] == [int(r["true_label"]) for r in rows]


def test_bad_input_fails_before_training(mnist, full_run, tmp_path, shared_data):
    from ftkit.backbones import UnknownBackboneError
    from ftkit.recipe import RecipeError
    from ftkit.training import train

    def fails(exc, match, recipe=None, **kw):
        with pytest.raises(exc, match=match):
            train(recipe, out=tmp_path / "x", **QUIET, **kw)
        assert not (tmp_path / "x" / "checkpoints" / "state.json").exists()

    fails(UnknownBackboneError, "resnet9000", mnist_recipe(mnist, backbone="resnet9000"))
    fails(ValueError, r"do not exist: \['stage7'\]", mnist_recipe(mnist, phases=[{"train": ["stage7"]}]))
    fails(RecipeError, r"greater than 0. Received: schedule.phases\[0\].lr=0",
          mnist_recipe(mnist, phases=[{"train": "head", "lr": 0}]))
    # validation with a class the training split lacks: copy a few real images into tmp_path
    src = shared_data / "hymenoptera"
    for split, classes in (("train", ("ants", "bees")), ("val", ("ants", "bees", "wasps"))):
        for name in classes:
            (tmp_path / "ab" / split / name).mkdir(parents=True)
            for f in sorted((src / "val" / ("ants" if name == "wasps" else name)).glob("*.jpg"))[:2]:
                shutil.copy(f, tmp_path / "ab" / split / name / f.name)
    folder = {"train": str(tmp_path / "ab"), "classes": None, "samples_per_class": None, "val_fraction": 0.0,
              "image_size": [16, 16], "channels": 1}
    fails(ValueError, r"val split has classes the training split does not have: \['wasps'\]",
          mnist_recipe(mnist, data=folder))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    fails(ValueError, "no usable training image", mnist_recipe(mnist, data={**folder, "train": str(tmp_path / "empty")}))
    state = (full_run.path / "checkpoints" / "state.json").read_bytes()
    with pytest.raises(ValueError, match="finished its schedule"):
        train(resume=full_run.path, **QUIET)
    assert (full_run.path / "checkpoints" / "state.json").read_bytes() == state


def test_class_weights_and_epoch_order():
    from ftkit.training.inputs import class_weights, epoch_order

    labels = np.array([0] * 6 + [1] * 2)
    np.testing.assert_allclose(class_weights("auto", labels, ["a", "b"]), [8 / 12, 8 / 4])
    np.testing.assert_allclose(class_weights({"b": 3.0}, labels, ["a", "b"]), [1.0, 3.0])
    with pytest.raises(ValueError, match=r"do not exist: \['c'\]"):
        class_weights({"c": 1.0}, labels, ["a", "b"])
    assert np.array_equal(epoch_order(labels, seed=1, epoch=2), epoch_order(labels, seed=1, epoch=2))
    assert not np.array_equal(epoch_order(labels, seed=1, epoch=2), epoch_order(labels, seed=1, epoch=3))
    balanced = epoch_order(labels, seed=0, epoch=0, oversample=True)
    assert np.bincount(labels[balanced]).tolist() == [6, 6]


def test_discriminative_rates_scale_each_groups_update(mnist, tmp_path):
    phases = [{"train": "all", "epochs": 1, "lr": 0.01, "lr_multipliers": {"stem": 0.0001}}]
    recipe = mnist_recipe(mnist, phases=phases, train={"optimizer": "sgd", "momentum": 0.0,
                                                       "steps_per_epoch": 1})
    trainer = _trainer(recipe, tmp_path)
    stem_conv = trainer.assembled.backbone.get_layer("stem_conv")
    stage_conv = trainer.assembled.backbone.get_layer("stage1_conv")
    before = stem_conv.kernel.numpy().copy(), stage_conv.kernel.numpy().copy()
    trainer.prepare_phase(trainer.plan.phases[0])
    trainer.run_epoch(trainer.plan.phases[0], 0)
    stem_step = np.abs(stem_conv.kernel.numpy() - before[0]).max()
    stage_step = np.abs(stage_conv.kernel.numpy() - before[1]).max()
    assert 0 < stem_step < stage_step * 1e-2


def test_a_run_stopped_before_its_first_state_starts_over_with_resume(mnist, tmp_path, monkeypatch):
    """Killed after its first history row and checkpoint, before its first state.json: a new run to the same
    folder says to resume it, --resume starts it over from epoch 1, and TensorBoard gets one more event file
    per writer, as a resumed Keras run does."""
    from ftkit.training import runs, train

    recipe = mnist_recipe(mnist, phases=[{"train": "all", "epochs": 3, "lr": 0.01}], train={"steps_per_epoch": 2})
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        def killed(self, state):
            raise KeyboardInterrupt

        patch.setattr(runs.RunFolder, "write_state", killed)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            train(recipe, out=out, **QUIET)
    assert interrupted.value.run_dir == out  # for `ftkit train`'s message: the folder to resume
    stopped = runs.RunFolder(out).read_history()
    assert [row["epoch"] for row in stopped] == [0] and (out / "checkpoints" / "last.keras").is_file()
    assert not (out / "checkpoints" / "state.json").exists()
    with pytest.raises(ValueError, match=r"a run that stopped before its first epoch's checkpoint: `ftkit train "
                                         r"--resume .*run` starts it over from epoch 1 with its own recipe.yaml"):
        train(recipe, out=out, **QUIET)
    lines = []
    resumed = train(resume=out, log=lines.append)
    assert lines[0] == (f"{out} stopped before its first epoch's checkpoint (no checkpoints/state.json): starting it "
                        f"over from epoch 1 with its own recipe.yaml")
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    assert resumed.history[0]["loss"] == pytest.approx(stopped[0]["loss"], rel=1e-6)  # the same first epoch again
    assert json.loads((out / "checkpoints" / "state.json").read_text())["finished"] is True
    assert tensorboard_epochs(out) == {"train": [[0], [0, 1, 2]], "validation": [[0], [0, 1, 2]]}
    with pytest.raises(FileNotFoundError, match="is not a run folder written by `ftkit train`"):
        train(resume=tmp_path / "elsewhere", **QUIET)


def test_a_run_stopped_between_its_checkpoint_and_its_state_resumes(mnist, tmp_path, monkeypatch):
    """Killed after saving epoch 2's last.keras but before the state.json that names it: the checkpoint that
    state.json names was kept (last.previous.keras), so --resume continues from epoch 2 and repeats it exactly."""
    from ftkit.training import runs, train

    recipe = mnist_recipe(mnist, phases=[{"train": "all", "epochs": 3, "lr": 0.01}], train={"steps_per_epoch": 2})
    out = tmp_path / "run"
    write_state = runs.RunFolder.write_state
    calls = []
    with monkeypatch.context() as patch:
        def killed_at_the_second(self, state):
            calls.append(state.global_epoch)
            if len(calls) == 2:
                raise KeyboardInterrupt
            write_state(self, state)

        patch.setattr(runs.RunFolder, "write_state", killed_at_the_second)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            train(recipe, out=out, **QUIET)
    assert interrupted.value.run_dir == out
    stopped = runs.RunFolder(out).read_history()
    checkpoints = out / "checkpoints"
    assert [row["epoch"] for row in stopped] == [0, 1] and (checkpoints / runs.PREVIOUS).is_file()
    assert runs.file_sha256(checkpoints / "last.keras") != json.loads((checkpoints / "state.json").read_text())[
        "checkpoint_sha256"]
    lines = []
    resumed = train(resume=out, log=lines.append)
    assert lines[0] == f"resuming {out}: phase 1, epoch 2 of that phase"
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    assert resumed.history[0] == stopped[0]  # kept from the first attempt
    assert resumed.history[1]["loss"] == pytest.approx(stopped[1]["loss"], rel=1e-6)  # epoch 2 again, the same
    assert [row["epoch"] for row in runs.RunFolder(out).read_history()] == [0, 1, 2]
    assert not (checkpoints / runs.PREVIOUS).exists()
