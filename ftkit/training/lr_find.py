"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``): loss against an exponentially growing
rate over a few hundred steps of the recipe's first phase; the suggestion is fastai's default, the "valley"
rule (:func:`suggest_lr`). The model is built fresh for the test and thrown away; nothing of it is kept.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds 4x its minimum (fastai's rule)
SMOOTHING = 0.98
# fastai suggests from the recorded curve less its first tenth (the smoothing's warm-up) and last 5 points
# (the divergence that stopped the test)
SKIP_START_FRACTION, SKIP_END = 0.1, 5


@dataclasses.dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed, bias-corrected
    suggestion: float
    plot: Path | None
    minimum: float | None = None  # the rate at the smoothed loss's minimum (fastai's "minimum" rule is a tenth of it)


def suggest_lr(lrs, losses) -> float:
    """fastai's default suggestion, the "valley" rule: the middle of the curve's longest valley.

    The steepest point of the whole curve, suggested before, often sits just before the minimum, where the loss
    is about to diverge; the longest stretch over which the loss keeps falling is a safer place to train.
    As fastai does, the first tenth and the last 5 points are left out (while at least 3 points remain), and
    the curve ends before its first non-finite loss.
    """
    lrs, losses = _trimmed(lrs, losses)
    end, length = longest_valley(losses)
    # fastai's arithmetic (``valley`` in fastai/callback/schedule.py): from the point before the valley, a third
    # of its length and then a sixth, so about half way down.
    return float(lrs[max(end - length + int(length / 3) + int(length / 6), 0)])


def longest_valley(losses) -> tuple[int, int]:
    """``(end, length)`` of the longest strictly decreasing subsequence of ``losses`` (fastai's O(n^2) scan;
    the first one when several are as long); the valley is taken to be the ``length`` points up to ``end``."""
    run = [1] * len(losses)  # run[i]: the longest strictly decreasing subsequence that ends at i
    end = 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j]:
                run[i] = max(run[i], run[j] + 1)
        if run[i] > run[end]:
            end = i
    return end, run[end]


def _finite(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to its first non-finite loss (the test stops there)."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses must have the same length. Received: {len(lrs)} and {len(losses)}")
    bad = np.flatnonzero(~np.isfinite(losses))
    end = int(bad[0]) if len(bad) else len(losses)
    return lrs[:end], losses[:end]


def _trimmed(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    lrs, losses = _finite(lrs, losses)
    if len(lrs) < 3:
        raise ValueError(f"lr_find needs at least 3 finite points to suggest a rate. Received: {len(lrs)} points")
    skip = int(len(lrs) * SKIP_START_FRACTION)
    if len(lrs) - skip - SKIP_END >= 3:
        lrs, losses = lrs[skip:len(lrs) - SKIP_END], losses[skip:len(losses) - SKIP_END]
    return lrs, losses


def lr_find(recipe, *, overrides=None, out: str | Path | None = None, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, log=print) -> LRFindResult:
    """Run the range test on ``recipe``'s first phase; write ``lr_find.png`` and ``lr_find.csv`` to ``out``
    (default: a new ``runs/<recipe>-lr-find-<time>``, beside ``ftkit train``'s ``runs/<recipe>-<time>``)."""
    import keras

    from ftkit.recipe import load_recipe
    from ftkit.training.engine import Trainer, cache_text, default_run_dir, frozen_text, plan_run
    from ftkit.training.runs import RunFolder

    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_find needs 0 < start_lr < end_lr. Received: start_lr={start_lr}, end_lr={end_lr}")
    if steps < 3:
        raise ValueError(f"lr_find needs steps >= 3. Received: steps={steps}")
    plan = plan_run(load_recipe(recipe, overrides=overrides))
    out_dir = Path(out) if out is not None else default_run_dir(recipe, kind="lr-find")
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"lr_find: output folder {out_dir.resolve()}")
    trainer = Trainer(plan, RunFolder(out_dir), log=log)
    trainer.build()
    phase = plan.phases[0]
    audit = trainer.prepare_phase(phase, announce=False)  # its line speaks of the phase's epochs and rates
    log(f"lr_find: phase 1/{len(plan.phases)} {phase.name!r} | {frozen_text(audit)} | "
        f"{cache_text(trainer.cache_reason)} | {steps} steps, the learning rate growing exponentially from "
        f"{start_lr:.3g} to {end_lr:.3g} (instead of the phase's epochs and learning-rate schedule; fewer if the "
        f"loss diverges)")
    model = trainer.trainer
    factor = (end_lr / start_lr) ** (1.0 / (steps - 1))
    recorder = _make_recorder(start_lr, factor, steps)
    epochs = math.ceil(steps / trainer.steps_per_epoch())
    model.optimizer.learning_rate = start_lr
    for epoch in range(epochs):
        train, _ = trainer._datasets(epoch)
        model.fit(train, epochs=1, steps_per_epoch=trainer.steps_per_epoch(), callbacks=[recorder], verbose=0,
                  shuffle=False)
        if recorder.done:
            break
    keras.mixed_precision.set_global_policy("float32")
    suggestion = suggest_lr(recorder.lrs, recorder.losses)
    minimum = min_loss_lr(recorder.lrs, recorder.losses)
    plot = _plot(recorder.lrs, recorder.losses, suggestion, out_dir / "lr_find.png", minimum=minimum)
    rows = "\n".join(f"{lr:.6g},{loss:.6g}" for lr, loss in zip(recorder.lrs, recorder.losses, strict=True))
    (out_dir / "lr_find.csv").write_text("lr,loss\n" + rows + "\n")
    log(f"lr_find: suggested learning rate {suggestion:.3g} (fastai's valley rule; for reference, the loss is "
        f"lowest at {minimum:.3g}, a tenth of which is {minimum / 10:.3g}); plot: {plot.resolve() if plot else None}, "
        f"values: {(out_dir / 'lr_find.csv').resolve()}")
    return LRFindResult(lrs=recorder.lrs, losses=recorder.losses, suggestion=suggestion, plot=plot, minimum=minimum)


def min_loss_lr(lrs, losses) -> float:
    """The rate at the lowest smoothed loss recorded before any non-finite one (fastai's "minimum" rule
    suggests a tenth of it)."""
    lrs, losses = _finite(lrs, losses)
    if not len(lrs):
        raise ValueError("lr_find recorded no finite loss. Received: 0 finite points")
    return float(lrs[int(np.argmin(losses))])


def _make_recorder(start_lr: float, factor: float, steps: int):
    """A Keras callback that sets the rate before each batch and records the smoothed loss after it."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.lr = start_lr
            self.lrs, self.losses, self.avg, self.best, self.done, self.seen = [], [], 0.0, math.inf, False, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.seen = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate = self.lr

        def on_train_batch_end(self, batch, logs=None):
            # Keras reports the epoch's running mean; the batch's own loss is recovered from it.
            total = float(logs["loss"]) * (batch + 1)
            loss, self.seen = total - self.seen, total
            self.avg = SMOOTHING * self.avg + (1 - SMOOTHING) * loss
            smoothed = self.avg / (1 - SMOOTHING ** (len(self.lrs) + 1))
            self.lrs.append(self.lr)
            self.losses.append(smoothed)
            self.best = min(self.best, smoothed)
            self.lr *= factor
            if len(self.lrs) >= steps or not math.isfinite(smoothed) or smoothed > DIVERGE_FACTOR * self.best:
                self.done = True
                self.model.stop_training = True

    return Recorder()


def _plot(lrs, losses, suggestion: float, path: Path, *, minimum: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    if minimum is not None:
        ax.axvline(minimum, color="grey", linestyle=":", label=f"lowest loss {minimum:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
