"""train.ema: the exponential moving average of the trainable weights is what validation, the checkpoints, the best
epoch and model.keras hold, on the cached head phase, the image path and the distributed step; exact resume; the
recipe's errors for bad values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _training_helpers import QUIET, TINY_PLAIN, mnist_recipe, register_tiny
from test_distributed import _MIRRORED, _env

from ftkit.recipe import RecipeError, load_recipe


@pytest.fixture(scope="module", autouse=True)
def _tiny():
    register_tiny()


def _key(variable) -> str:
    """A variable's layer and name (``stem_conv/kernel``): the same in the training model, the head-only model of
    the cached phase and a saved checkpoint."""
    return "/".join(variable.path.split("/")[-2:])


def _by_key(variables) -> dict[str, np.ndarray]:
    return {_key(v): np.array(v.numpy()) for v in variables}


def _saved(path) -> dict[str, dict[str, np.ndarray]]:
    import keras

    import ftkit.backbones._preprocessing  # noqa: F401  (registers the Preprocess layer for loading)

    model = keras.saving.load_model(path, compile=False)
    return {"trainable": _by_key(model.trainable_variables), "frozen": _by_key(model.non_trainable_variables)}


def _recorder():
    """Per phase (one per optimizer), the raw trainable weights after each batch, the weights the phase began
    with, and the non-trainable ones (BatchNorm's moving statistics) after each batch."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.phases: list[dict] = []

        def on_train_begin(self, logs=None):
            if not self.phases or self.phases[-1]["optimizer"] is not self.model.optimizer:
                self.phases.append({"optimizer": self.model.optimizer, "start": _by_key(self.model.trainable_variables),
                                    "steps": [], "frozen": []})

        def on_train_batch_end(self, batch, logs=None):
            self.phases[-1]["steps"].append(_by_key(self.model.trainable_variables))
            self.phases[-1]["frozen"].append(_by_key(self.model.non_trainable_variables))

    return Recorder()


def _ema(steps: list[dict], momentum: float) -> dict[str, np.ndarray]:
    """Keras's average: the weights after the first step, then ``m * average + (1 - m) * weights`` per step."""
    average = {k: v.astype(np.float64) for k, v in steps[0].items()}
    for weights in steps[1:]:
        average = {k: momentum * average[k] + (1 - momentum) * weights[k] for k in average}
    return average


def _assert_close(actual: dict, expected: dict, **tolerance):
    assert actual.keys() >= expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, err_msg=key, **(tolerance or {"rtol": 1e-5, "atol": 1e-6}))


def _largest_difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in b)


def _val_loss(path, mnist_dict) -> float:
    """The val loss of a saved training model (logits out) on the recipe's val split."""
    import keras

    import ftkit.backbones._preprocessing  # noqa: F401  (registers the Preprocess layer for loading)
    from ftkit.training.engine import plan_run

    data = plan_run(load_recipe(mnist_dict)).data
    model = keras.saving.load_model(path, compile=False)
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return float(model.evaluate(data.dataset("val", with_weights=False), verbose=0))


# -- the recipe ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ema, message", [
    ({"momentum": 1.0}, r"train.ema.momentum: Input should be less than 1. Received: train.ema.momentum=1.0"),
    ({"momentum": 0}, r"train.ema.momentum: Input should be greater than 0. Received: train.ema.momentum=0"),
    ({"momentum": "high"}, r"train.ema.momentum: Input should be a valid number, .*; allowed: a number > 0 and < 1. "
                           r"Received: train.ema.momentum='high'"),
    (0.99, r"train.ema: must be a mapping such as \{momentum: 0.99\} \(\{\} for the default\), or null \(off\). "
           r"Received: ema=0.99"),
    (True, r"train.ema: must be a mapping .* Received: ema=True"),
    ({"decay": 0.9}, r"unknown key 'decay' in train.ema. Allowed keys: \['momentum'\]. Received: train.ema.decay"),
])
def test_bad_values_are_refused_with_the_key_and_the_value(mnist, ema, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(mnist_recipe(mnist, train={"ema": ema}))


def test_the_default_momentum_and_the_resume_digest(mnist):
    """``{}`` takes the default; off, the key leaves the digest of runs started before it existed unchanged."""
    from ftkit.training.runs import recipe_digest

    assert load_recipe(mnist_recipe(mnist, train={"ema": {}})).train.ema.momentum == 0.99
    plain = load_recipe(mnist_recipe(mnist)).to_dict()
    old = json.loads(json.dumps(plain))
    del old["train"]["ema"]
    assert recipe_digest(plain) == recipe_digest(old)
    assert recipe_digest(load_recipe(mnist_recipe(mnist, train={"ema": {}})).to_dict()) != recipe_digest(plain)


# -- one device ------------------------------------------------------------------------------------------


MOMENTUM = 0.7
PHASES = [{"train": "head", "epochs": 2, "lr": 0.1}, {"train": "all", "epochs": 3, "lr": 0.05}]


def _recipe(mnist, **train):
    """A cached head phase, then an image-path phase of 3 epochs of 3 batches; early stopping (min_delta far above
    any change) ends the second phase after 2 epochs."""
    return mnist_recipe(mnist, phases=PHASES, train={
        "ema": {"momentum": MOMENTUM}, "optimizer": "sgd", "momentum": 0.9, "steps_per_epoch": 3,
        "early_stopping": {"patience": 1, "min_delta": 100.0}, **train})


def test_validation_checkpoints_and_the_final_model_are_the_average(mnist, tmp_path):
    from ftkit.training import train

    recipe = _recipe(mnist, final_model="best")
    recorder, lines = _recorder(), []
    result = train(recipe, out=tmp_path / "run", callbacks=[recorder], log=lines.append)
    assert [(row["phase"], row["cached"]) for row in result.history] == [(0, 1), (0, 1), (1, 0), (1, 0)]
    head, full = recorder.phases
    assert [len(p["steps"]) for p in (head, full)] == [6, 6]
    # Epoch by epoch, the average of the phase's steps so far.
    averages = [_ema(head["steps"][:3], MOMENTUM), _ema(head["steps"], MOMENTUM),
                _ema(full["steps"][:3], MOMENTUM), _ema(full["steps"], MOMENTUM)]
    # The second phase starts from the first phase's average (its own average starts afresh).
    _assert_close(full["start"], averages[1])
    last = _saved(tmp_path / "run" / "checkpoints" / "last.keras")
    _assert_close(last["trainable"], averages[3])
    assert _largest_difference(last["trainable"], full["steps"][-1]) > 1e-3  # not the raw weights
    # BatchNorm's moving statistics are the last step's, not averaged.
    _assert_close(last["frozen"], {k: v for k, v in full["frozen"][-1].items() if "moving" in k}, rtol=1e-6)
    # best.keras and model.keras (train.final_model: best) are the best epoch's average.
    best = result.best_epoch
    assert best == int(np.argmin([row["val_loss"] for row in result.history]))
    _assert_close(_saved(tmp_path / "run" / "checkpoints" / "best.keras")["trainable"], averages[best])
    _assert_close(_by_key(result.model.trainable_variables), averages[best])
    _assert_close(_saved(tmp_path / "run" / "model.keras")["trainable"], averages[best])
    # val_loss is the average's: the last checkpoint scores the last epoch's val_loss, the raw weights do not.
    assert _val_loss(tmp_path / "run" / "checkpoints" / "last.keras", recipe) == pytest.approx(
        result.history[-1]["val_loss"], rel=1e-5)
    assert _val_loss(tmp_path / "run" / "checkpoints" / "best.keras", recipe) == pytest.approx(
        result.history[best]["val_loss"], rel=1e-5)
    assert any(line.startswith("weight average (train.ema, momentum 0.7, about the last 3 batches): val_loss, "
                               "val_acc, checkpoints, the best epoch and model.keras are of the exponential moving "
                               "average of the trainable weights (BatchNorm's moving statistics are not averaged)")
               for line in lines)
    assert ("note: val_loss, val_acc, the best epoch and the model below are of the weights' moving average "
            "(train.ema, momentum 0.7); loss and acc of the raw weights") in lines[-1]


def test_an_exact_resume_mid_phase_with_accumulation_averages_every_batch(mnist, tmp_path):
    """Keras moves the average at every batch, those that only accumulate a gradient included: an update's weights
    enter it once per batch they stand. A run interrupted after the first epoch of the second phase (5 batches:
    one accumulated, and an average apart from the raw weights) and resumed ends as the uninterrupted run."""
    import keras

    from ftkit.training import train

    recipe = _recipe(mnist, gradient_accumulation_steps=2, early_stopping=None, steps_per_epoch=5)
    recorder = _recorder()
    full = train(recipe, out=tmp_path / "full", callbacks=[recorder], **QUIET)
    steps = recorder.phases[1]["steps"]
    assert len(steps) == 15
    # Batches 0, 2, 4... only accumulate, so the weights change at batches 1, 3, 5...
    assert [_largest_difference(steps[i], steps[i - 1]) > 0 for i in range(1, 15)] == [i % 2 == 1 for i in range(1, 15)]
    # The average starts at the first update (Keras counts updates for its first step), then moves every batch.
    _assert_close(_by_key(full.model.trainable_variables), _ema(steps[1:], MOMENTUM))
    # The average once per update would differ.
    assert _largest_difference(_by_key(full.model.trainable_variables), _ema(steps[1::2], MOMENTUM)) > 1e-4

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out=cut, callbacks=[Interrupt()], **QUIET)
    state = json.loads((cut / "checkpoints" / "state.json").read_text())
    assert (state["phase"], state["epoch_in_phase"]) == (1, 1)
    checkpoint = _saved(cut / "checkpoints" / "last.keras")["trainable"]
    _assert_close(checkpoint, _ema(steps[1:5], MOMENTUM))
    assert _largest_difference(checkpoint, steps[4]) > 1e-4  # resuming from the average instead would show
    resumed = train(resume=cut, **QUIET)
    assert [row["val_loss"] for row in resumed.history] == pytest.approx(
        [row["val_loss"] for row in full.history], rel=1e-6)
    for a, b in zip(full.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- distributed -----------------------------------------------------------------------------------------


def test_mirrored_averages_as_one_device_does(mnist, tmp_path):
    """Two CPU replicas against one device (no BatchNorm, SGD: the runs agree to float noise): the cached head phase
    and an image-path phase of the distributed step end with the same averaged weights and val losses."""
    phases = [{"train": "head", "epochs": 2, "lr": 0.1}, {"train": 1, "epochs": 2, "lr": 0.05}]
    recipe = mnist_recipe(mnist, backbone=TINY_PLAIN, phases=phases, train={
        "ema": {"momentum": MOMENTUM}, "optimizer": "sgd", "momentum": 0.0, "steps_per_epoch": 3})
    job = {"tmp": str(tmp_path), "runs": [["two", recipe, "mirrored"], ["one", recipe, "default"]]}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, json.dumps(job)], capture_output=True, text=True,
                          timeout=240, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    history = {name: out[name]["history"] for name in ("two", "one")}
    assert [row["cached"] for row in history["two"]] == [1, 1, 0, 0]
    for key in ("loss", "val_loss"):
        assert [row[key] for row in history["two"]] == pytest.approx([row[key] for row in history["one"]], rel=1e-5)
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # The distributed run's val_loss is its average's too.
    recipe_dict = load_recipe(recipe).to_dict()
    assert _val_loss(tmp_path / "two" / "checkpoints" / "last.keras", recipe_dict) == pytest.approx(
        history["two"][-1]["val_loss"], rel=1e-5)
