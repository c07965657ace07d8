"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``): loss against an exponentially growing
rate over a few hundred steps of the recipe's first phase; the suggestion is the rate of steepest descent
of the smoothed loss. The model is built fresh for the test and thrown away; nothing of it is kept.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds 4x its minimum (fastai's rule)
SMOOTHING = 0.98


@dataclasses.dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed, bias-corrected
    suggestion: float
    plot: Path | None


def suggest_lr(lrs, losses) -> float:
    """The rate where the smoothed loss falls fastest (most negative slope against log lr)."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    if len(lrs) < 3:
        raise ValueError(f"lr_find needs at least 3 points to suggest a rate. Received: {len(lrs)} points")
    slopes = np.gradient(losses, np.log10(lrs))
    return float(lrs[int(np.argmin(slopes))])


def lr_find(recipe, *, overrides=None, out: str | Path | None = None, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, log=print) -> LRFindResult:
    """Run the range test on ``recipe``'s first phase; write ``lr_find.png`` and ``lr_find.csv`` to ``out``."""
    import keras

    from ftkit.recipe import load_recipe
    from ftkit.training.engine import Trainer, plan_run
    from ftkit.training.runs import RunFolder

    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_find needs 0 < start_lr < end_lr. Received: start_lr={start_lr}, end_lr={end_lr}")
    if steps < 3:
        raise ValueError(f"lr_find needs steps >= 3. Received: steps={steps}")
    plan = plan_run(load_recipe(recipe, overrides=overrides))
    out_dir = Path(out or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(plan, RunFolder(out_dir), log=log)
    trainer.build()
    trainer.prepare_phase(plan.phases[0])
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
    plot = _plot(recorder.lrs, recorder.losses, suggestion, out_dir / "lr_find.png")
    rows = "\n".join(f"{lr:.6g},{loss:.6g}" for lr, loss in zip(recorder.lrs, recorder.losses, strict=True))
    (out_dir / "lr_find.csv").write_text("lr,loss\n" + rows + "\n")
    log(f"lr_find: suggested learning rate {suggestion:.3g} (steepest descent); plot: {plot}")
    return LRFindResult(lrs=recorder.lrs, losses=recorder.losses, suggestion=suggestion, plot=plot)


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


def _plot(lrs, losses, suggestion: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
