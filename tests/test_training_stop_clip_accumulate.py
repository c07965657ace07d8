"""train.early_stopping, train.clip_norm and train.gradient_accumulation_steps: on the cached head phase, the image
path and the distributed step; exact resume; and the recipe's errors for bad values."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from _training_helpers import QUIET, TINY_PLAIN, mnist_recipe, register_tiny
from test_distributed import _MIRRORED, _env

from ftkit.recipe import RecipeError, load_recipe
from ftkit.schedule import lr_at, stalled_epochs


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


def _trainer(recipe_dict, tmp_path):
    from ftkit.training.engine import Trainer, plan_run
    from ftkit.training.runs import RunFolder

    trainer = Trainer(plan_run(load_recipe(recipe_dict)), RunFolder(tmp_path).create(), **QUIET)
    trainer.build()
    return trainer


def _weights(path):
    import keras

    return keras.saving.load_model(path).get_weights()


def _same_rows(a, b):
    """History rows equal in everything but their wall-clock seconds."""
    drop = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert drop(a) == drop(b)


# -- the recipe ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train, message", [
    ({"early_stopping": {"patience": -1}},
     r"train.early_stopping.patience: Input should be greater than 0. Received: train.early_stopping.patience=-1"),
    ({"early_stopping": {"patience": 2, "min_delta": -0.1}},
     r"train.early_stopping.min_delta: Input should be greater than or equal to 0. Received: "
     r"train.early_stopping.min_delta=-0.1"),
    ({"early_stopping": 3}, r"train.early_stopping: must be a mapping such as \{patience: 3, min_delta: 0.0\}, or "
                            r"null \(off\). Received: early_stopping=3"),
    ({"clip_norm": 0}, r"train.clip_norm: Input should be greater than 0. Received: train.clip_norm=0"),
    ({"gradient_accumulation_steps": 0},
     r"train.gradient_accumulation_steps: Input should be greater than 0. Received: train.gradient_accumulation_steps=0"),
])
def test_bad_values_are_refused_with_the_key_and_the_value(mnist, train, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(mnist_recipe(mnist, train=train))


def test_the_new_keys_count_in_the_resume_digest_only_when_set(mnist):
    """Off, they leave the digest of runs started before they existed unchanged (those runs still resume)."""
    from ftkit.training.runs import recipe_digest

    plain = load_recipe(mnist_recipe(mnist)).to_dict()
    old = json.loads(json.dumps(plain))
    for key in ("early_stopping", "clip_norm", "gradient_accumulation_steps"):
        del old["train"][key]
    del old["data"]["policy"]
    assert recipe_digest(plain) == recipe_digest(old)
    strict = load_recipe(mnist_recipe(mnist, data={"policy": "strict"})).to_dict()
    assert recipe_digest(strict) != recipe_digest(plain)
    one = load_recipe(mnist_recipe(mnist, train={"gradient_accumulation_steps": 1})).to_dict()
    assert recipe_digest(one) == recipe_digest(plain)
    for train in ({"gradient_accumulation_steps": 2}, {"clip_norm": 1.0}, {"early_stopping": {"patience": 2}}):
        assert recipe_digest(load_recipe(mnist_recipe(mnist, train=train)).to_dict()) != recipe_digest(plain), train


# -- early stopping --------------------------------------------------------------------------------------


def test_stalled_epochs_follows_keras_early_stopping():
    import keras

    losses = [1.0, 0.9, 0.95, 0.91, 0.85, 0.86, 0.87, 0.84]
    assert stalled_epochs(losses, higher_is_better=False) == (0, 7)
    assert stalled_epochs(losses[:7], higher_is_better=False) == (2, 4)
    # by more than min_delta: 0.9 is 0.1 below 1.0, not more; 0.85 is
    assert stalled_epochs(losses[:4], higher_is_better=False, min_delta=0.1) == (3, 0)
    assert stalled_epochs([0.5, 0.7, 0.6], higher_is_better=True) == (1, 1)
    assert stalled_epochs([None, float("nan"), 2.0, 3.0], higher_is_better=False) == (1, 2)
    assert stalled_epochs([], higher_is_better=False) == (0, None)
    # The epoch at which Keras's callback stops a single fit is where the stall reaches the patience.
    for patience, min_delta in ((1, 0.0), (2, 0.0), (2, 0.02), (3, 0.0)):
        callback = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, min_delta=min_delta)
        callback.set_model(keras.Sequential())
        callback.on_train_begin()
        stopped = None
        for epoch, value in enumerate(losses):
            callback.on_epoch_end(epoch, {"val_loss": value})
            if getattr(callback.model, "stop_training", False):
                stopped = epoch
                break
        ours = next((e for e in range(len(losses)) if stalled_epochs(losses[:e + 1], higher_is_better=False,
                                                                      min_delta=min_delta)[0] >= patience), None)
        assert stopped == ours, (patience, min_delta)


ES_PHASES = [{"train": "head", "epochs": 3, "lr": 0.05},
             {"train": "all", "epochs": 3, "lr": 0.02, "lr_schedule": "cosine"}]


def _es_recipe(mnist):
    """Early stopping, gradient accumulation and clipping together, on the cached head phase and the image path.

    min_delta is far above any change of the loss: each phase's first epoch stays its best, so with patience 1
    each phase ends after 2 of its 3 epochs, whatever the numbers. 3 batches per epoch and an update every 2:
    the checkpoints of odd epochs hold one accumulated batch."""
    return mnist_recipe(mnist, phases=ES_PHASES, train={
        "early_stopping": {"patience": 1, "min_delta": 100.0}, "steps_per_epoch": 3, "gradient_accumulation_steps": 2,
        "clip_norm": 1.0, "optimizer": "sgd", "momentum": 0.9, "final_model": "best"})


@pytest.mark.slow
def test_early_stopping_and_accumulation_resume_at_the_same_epoch_and_batch(mnist, tmp_path):
    import keras

    from ftkit.training import train
    from ftkit.training.engine import plan_run

    lines: list[str] = []
    full = train(_es_recipe(mnist), out=tmp_path / "full", log=lines.append)
    assert [row["phase"] for row in full.history] == [0, 0, 1, 1]
    assert [row["epoch"] for row in full.history] == list(range(4))
    assert [row["cached"] for row in full.history] == [1, 1, 0, 0]  # phase 1 ran on cached features
    stops = [line for line in lines if line.startswith("early stopping: phase")]
    assert stops[0] == ("early stopping: phase 1/2 'phase0' ends after epoch 2 (2 of its 3 epochs): val_loss has "
                        "not improved by more than 100 for 1 epoch(s) (train.early_stopping.patience=1); the phase's "
                        f"best {full.history[0]['val_loss']:.4f} at epoch 1; phase 2 starts")
    assert stops[1].startswith("early stopping: phase 2/2 'phase1' ends after epoch 4 (2 of its 3 epochs)")
    assert stops[1].endswith(f"best {full.history[2]['val_loss']:.4f} at epoch 3; the run ends")
    assert "early stopping: phase 2 'phase1' stopped after 2 of its 3 epochs" in lines[-1]  # the summary
    assert ("gradient accumulation: an update every 2 batches, carried across epochs (3 per epoch); the batches still "
            "accumulated when the phase ends make no update (the last 1 of its 9, or fewer if early stopping ends it "
            "sooner), since the next phase starts a fresh optimizer") in lines
    assert ("gradient clipping: each update's gradient is scaled down to a global norm of 1 where it is larger "
            "(train.clip_norm)") in lines
    # The second phase starts a fresh optimizer and learning-rate curve (cosine over its planned 9 batches),
    # which counts batches, not the updates of accumulated gradients (as Keras's schedules do).
    phase = plan_run(load_recipe(_es_recipe(mnist))).phases[1]
    assert [row["lr"] for row in full.history[2:]] == pytest.approx(
        [lr_at(3 * k - 1, phase=phase, steps_per_epoch=3) for k in (1, 2)])
    state = json.loads((full.path / "checkpoints" / "state.json").read_text())
    assert (state["phase"], state["epoch_in_phase"], state["global_epoch"], state["global_step"]) == (2, 0, 4, 12)
    best = int(np.argmin([row["val_loss"] for row in full.history]))
    assert full.best_epoch == best
    assert any(f"use epoch {best + 1} (checkpoints/best.keras)" in line for line in lines) == (best != 3)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:  # phase 2's second epoch: its first is in the history, one batch is accumulated
                raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(_es_recipe(mnist), out=cut, callbacks=[Interrupt()], **QUIET)
    state = json.loads((cut / "checkpoints" / "state.json").read_text())
    assert (state["phase"], state["epoch_in_phase"], state["global_epoch"]) == (1, 1, 3)
    resumed = train(resume=cut, **QUIET)
    _same_rows(full.history, resumed.history)
    for a, b in zip(_weights(full.path / "model.keras"), _weights(cut / "model.keras"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- gradient clipping -----------------------------------------------------------------------------------


def test_clip_norm_bounds_a_huge_gradients_update_on_the_cached_and_the_image_path(mnist, tmp_path):
    """Class weights of 1e4 make the loss, and its gradient, 1e4 times larger: with SGD (no momentum) the update
    of one step is then lr * clip_norm long, over all trainable weights together."""
    lr, clip = 0.1, 0.5
    phases = [{"train": "head", "epochs": 1, "lr": lr}, {"train": "all", "epochs": 1, "lr": lr}]
    train = {"optimizer": "sgd", "momentum": 0.0, "steps_per_epoch": 1, "clip_norm": clip,
             "class_weight": {"0": 1e4, "1": 1e4, "2": 1e4}}
    trainer = _trainer(mnist_recipe(mnist, phases=phases, train=train), tmp_path)
    for phase, cached in zip(trainer.plan.phases, (True, False), strict=True):
        trainer.prepare_phase(phase)
        assert trainer.cached is cached
        variables = trainer.trainer.trainable_variables
        before = [v.numpy().copy() for v in variables]
        row = trainer.run_epoch(phase, phase.index)
        step = math.sqrt(sum(float(np.sum((v.numpy() - b) ** 2)) for v, b in zip(variables, before, strict=True)))
        assert row["loss"] > 1e3  # the gradient is far above the clip
        assert step == pytest.approx(lr * clip, rel=1e-4), phase.name


# -- gradient accumulation -------------------------------------------------------------------------------


def _accumulated_weights(mnist, tmp_path, *, batch_size, steps, accumulation):
    """Weights after a cached head phase and an image-path phase of SGD on a backbone without BatchNorm."""
    phases = [{"train": "head", "epochs": 1, "lr": 0.2}, {"train": "all", "epochs": 1, "lr": 0.2}]
    recipe = mnist_recipe(mnist, backbone=TINY_PLAIN, phases=phases,
                          data={"batch_size": batch_size},
                          train={"optimizer": "sgd", "momentum": 0.0, "steps_per_epoch": steps,
                                 "gradient_accumulation_steps": accumulation})
    trainer = _trainer(recipe, tmp_path / f"b{batch_size}k{accumulation}")
    for phase in trainer.plan.phases:
        trainer.prepare_phase(phase)
        trainer.run_epoch(phase, phase.index)
    return trainer.assembled.model.get_weights()


def test_two_accumulated_batches_of_4_make_the_step_of_one_batch_of_8(mnist, tmp_path):
    whole = _accumulated_weights(mnist, tmp_path, batch_size=8, steps=1, accumulation=None)
    accumulated = _accumulated_weights(mnist, tmp_path, batch_size=4, steps=2, accumulation=2)
    separate = _accumulated_weights(mnist, tmp_path, batch_size=4, steps=2, accumulation=None)
    for a, b in zip(whole, accumulated, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # two updates of batch 4 land elsewhere, which accumulation=None in place of 2 would have given
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(whole, separate, strict=True)) > 1e-3


# -- distributed -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mirrored_clips_the_global_gradient_stops_early_and_refuses_accumulation(mnist, tmp_path):
    """Two CPU replicas against one device: the clip (well below the gradient's norm) applies to the summed
    gradient, not to each replica's share, so the weights agree; early stopping ends the same epochs."""
    phases = [{"train": "head", "epochs": 3, "lr": 0.05}, {"train": 1, "epochs": 3, "lr": 0.05}]
    train = {"optimizer": "sgd", "momentum": 0.0, "steps_per_epoch": 2, "clip_norm": 0.01,
             "early_stopping": {"patience": 1, "min_delta": 100.0}}
    recipe = mnist_recipe(mnist, backbone=TINY_PLAIN, phases=phases, train=train)
    accumulate = mnist_recipe(mnist, train={"gradient_accumulation_steps": 2})
    job = {"tmp": str(tmp_path), "runs": [["two", recipe, "mirrored"], ["one", recipe, "default"]],
           "refused": [["refused", accumulate]]}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, json.dumps(job)], capture_output=True, text=True,
                          timeout=240, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    history = {name: out[name]["history"] for name in ("two", "one")}
    assert out["refused"] == ("train.gradient_accumulation_steps needs train.strategy default (one device); a "
                              "distributed strategy (2 replica(s) here) takes a larger data.batch_size instead, the "
                              "global batch over all replicas. Received: train.gradient_accumulation_steps=2")
    assert not (tmp_path / "refused").exists()
    assert [row["phase"] for row in history["two"]] == [row["phase"] for row in history["one"]] == [0, 0, 1, 1]
    assert [row["loss"] for row in history["two"]] == pytest.approx([row["loss"] for row in history["one"]], rel=1e-5)
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
