"""The run folder (docs/ARCHITECTURE.md): resolved recipe, run record, history, checkpoints, resume state.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted write leaves the previous version, never a half-written one. ``state.json`` records the SHA-256
of the checkpoint it belongs to, and the checkpoint it replaces stays (a hard link, ``last.previous.keras``)
until the new state is written: a run killed between the two writes resumes from the pair that matches.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RECIPE_FILE = "recipe.yaml"
RUN_META = "ftkit_run.json"
HISTORY = "history.csv"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
BEST, LAST, STATE = "best.keras", "last.keras", "state.json"
PREVIOUS = "last.previous.keras"  # last.keras as state.json knows it, while a new one is being saved
INFERENCE_MODEL = "model.keras"
HISTORY_FIELDS = ["epoch", "phase", "phase_name", "lr", "loss", "accuracy", "val_loss", "val_accuracy",
                  "cached", "seconds"]


@dataclasses.dataclass
class ResumeState:
    """Where a schedule stands after a finished epoch."""

    recipe_sha256: str
    phase: int  # index of the phase the next epoch belongs to
    epoch_in_phase: int  # epochs of that phase already done
    global_epoch: int
    global_step: int
    seed: int
    best: float | None
    best_epoch: int | None
    checkpoint_sha256: str
    finished: bool = False
    # Dropout's random-generator states, which Keras keeps out of saved weights: {"model": [...], "trainer": [...]}
    rng: dict[str, list] = dataclasses.field(default_factory=dict)


# Recipe keys added after runs were made, and their values that mean "off" (as before they existed).
_LATER_KEYS = {("train", "early_stopping"): (None,), ("train", "clip_norm"): (None,),
               ("train", "gradient_accumulation_steps"): (None, 1), ("train", "ema"): (None,),
               ("data", "policy"): ("skip",), ("evaluate", "tta"): (None,)}
# Keys whose default changed: hashed as the old default when unset, so runs recorded before still resume.
_OLD_DEFAULTS = {("evaluate", "top_k"): [5]}


def recipe_digest(recipe_dict: dict[str, Any]) -> str:
    """A digest of what determines the training.

    Left out: the ``train.verbose`` display flag; ``train.strategy``, since a distributed run computes the same
    global-batch steps as a single-device one, so a run may resume under another strategy; and
    ``train.final_model``, which picks the weights saved after training, not how they are trained (and is
    absent from the recipes of runs started before it existed). Keys added later count only when set (off,
    they train as the runs started before them did, which still resume); a key whose default changed counts as
    its old default when unset.
    """
    data = json.loads(json.dumps(recipe_dict, sort_keys=True))
    train = data.get("train", {})
    for key in ("verbose", "strategy", "final_model"):
        train.pop(key, None)
    for (section, key), off in _LATER_KEYS.items():
        values = data.get(section, {})
        if key in values and values[key] in off:
            del values[key]
    for (section, key), default in _OLD_DEFAULTS.items():
        values = data.get(section, {})
        if key in values and values[key] is None:
            values[key] = default
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once, at import (before training starts threads): reading it means setting it for a moment, and a file
# another thread (TensorBoard's writer) created in that moment would get mode 0666.
_UMASK = _read_umask()


def _umask_mode(tmp: str) -> None:
    """The mode a plainly created file would have (0666 less the umask): mkstemp makes its files 0600, which
    left a run's model and records readable by their owner alone."""
    os.chmod(tmp, 0o666 & ~_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            fp.write(text)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_model(model, path: str | Path) -> None:
    """``model.save(path)`` through a temporary ``.keras`` file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_INT_FIELDS = ("epoch", "phase", "cached")


def _cell(key: str, value: str | None) -> Any:
    if value in (None, ""):
        return None
    if key == "phase_name":
        return value
    return int(value) if key in _INT_FIELDS else float(value)


class RunFolder:
    """Paths and writers of one run folder.

    ``writable=False`` (the non-chief workers of a multi-worker run) turns every writer into a no-op, so
    that exactly one process writes the folder while all of them can read it to resume.
    """

    def __init__(self, root: str | Path, *, writable: bool = True):
        self.root = Path(root)
        self.checkpoints = self.root / CHECKPOINTS
        self.writable = writable

    def create(self) -> RunFolder:
        if self.writable:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def state_path(self) -> Path:
        return self.checkpoints / STATE

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    def write_meta(self, meta: dict[str, Any]) -> None:
        if self.writable:
            atomic_write_text(self.root / RUN_META, json.dumps(meta, indent=2))

    def keep_previous(self) -> None:
        """Before ``last.keras`` is replaced: keep the one ``state.json`` names (a hard link; a copy where the
        file system has none) until :meth:`write_state` writes the state of the new one."""
        if not self.writable or not self.last.is_file():
            return
        previous = self.checkpoints / PREVIOUS
        previous.unlink(missing_ok=True)
        try:
            os.link(self.last, previous)
        except OSError:
            shutil.copyfile(self.last, previous)

    def write_state(self, state: ResumeState) -> None:
        if self.writable:
            atomic_write_text(self.state_path, json.dumps(dataclasses.asdict(state), indent=2))
            (self.checkpoints / PREVIOUS).unlink(missing_ok=True)

    def stopped_before_first_checkpoint(self) -> bool:
        """A run that ``ftkit train`` started (it writes the recipe and the run record before training) but that
        stopped before its first ``state.json``: nothing of it can be continued, it can only start over."""
        return ((self.root / RECIPE_FILE).is_file() and (self.root / RUN_META).is_file()
                and not self.state_path.is_file())

    def read_state(self) -> ResumeState:
        if not self.state_path.is_file():
            raise FileNotFoundError(
                f"{self.root} has no {CHECKPOINTS}/{STATE} and is not a run folder written by `ftkit train` (it "
                f"would have {RECIPE_FILE} and {RUN_META}). Received: resume={str(self.root)!r}"
            )
        state = ResumeState(**json.loads(self.state_path.read_text()))
        if self._matches(self.last, state):
            return state
        previous = self.checkpoints / PREVIOUS
        if self._matches(previous, state):  # stopped while saving the next checkpoint: its state was not written
            try:
                os.replace(previous, self.last)
            except FileNotFoundError:  # another worker of the same run put it back first
                pass
        if not self._matches(self.last, state):
            raise ValueError(
                f"{self.last} does not match {self.state_path} (missing or written after the state): the run was "
                f"interrupted between the two writes. Received: resume={str(self.root)!r}"
            )
        return state

    @staticmethod
    def _matches(checkpoint: Path, state: ResumeState) -> bool:
        return checkpoint.is_file() and file_sha256(checkpoint) == state.checkpoint_sha256

    def append_history(self, row: dict[str, Any]) -> None:
        # Written by hand rather than with keras.callbacks.CSVLogger: one file spans several fit() calls
        # (one per epoch, phases with different models) and needs the phase columns.
        if not self.writable:
            return
        path = self.root / HISTORY
        new = not path.is_file()
        with open(path, "a", newline="") as fp:
            writer = csv.DictWriter(fp, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_history(self) -> list[dict[str, Any]]:
        """The rows of ``history.csv`` with their types back: ints (epoch, phase, cached), floats (rates, losses,
        metrics, seconds), None where a value is missing (no validation data), the phase name a string."""
        path = self.root / HISTORY
        if not path.is_file():
            return []
        with open(path, newline="") as fp:
            return [{key: _cell(key, value) for key, value in row.items()} for row in csv.DictReader(fp)]

    def truncate_history(self, epochs: int) -> None:
        """Drop rows after ``epochs`` (those of an epoch whose checkpoint was never completed), atomically: the
        other workers of a resumed run read the file meanwhile, and an interruption must not lose it."""
        if not self.writable or not (self.root / HISTORY).is_file():
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.read_history()[:epochs])
        atomic_write_text(self.root / HISTORY, text.getvalue())

    def plot_curves(self) -> Path | None:
        """Loss and accuracy per epoch, phase boundaries marked, as ``curves.png``."""
        rows = self.read_history()
        if not rows or not self.writable:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [int(r["epoch"]) + 1 for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                values = [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]
                ax.plot(epochs, values, style, marker="o", label=key)
            for i in range(1, len(rows)):
                if rows[i]["phase"] != rows[i - 1]["phase"]:
                    ax.axvline(epochs[i] - 0.5, color="grey", linewidth=0.8)
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.legend()
        fig.tight_layout()
        fig.savefig(self.root / CURVES, dpi=100)
        plt.close(fig)
        return self.root / CURVES
