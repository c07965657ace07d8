"""Run an inference model over image files, in the given order, keyed by path; bad files are reported."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftkit.evaluate import images as image_io
from ftkit.evaluate.metrics import PROB_SUM_TOLERANCE
from ftkit.evaluate.runs import INFERENCE_MODEL, LoadedModel, check_tta, load_model

DEFAULT_BATCH_SIZE = 32
HIDDEN, SYSTEM_FILE = "hidden", "system file"


@dataclass
class Predictions:
    """``probs[i]`` belongs to ``paths[i]``; ``failures`` lists files that could not be read, with why
    (``{"path", "reason", "detail"}``); ``inputs`` is every file asked for, in the order given."""

    paths: list[str]
    probs: np.ndarray
    class_names: list[str]
    failures: list[dict] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    # Entries that walking a folder left out, with why (``{"path", "reason": "hidden" | "system file", "detail"}``),
    # and the folders asked for in which no file was found.
    skipped: list[dict] = field(default_factory=list)
    empty_folders: list[str] = field(default_factory=list)
    tta: str | None = None  # the test-time augmentation ``probs`` were averaged over (:data:`ftkit.evaluate.runs.TTA_MODES`)

    def rows(self):
        """``(path, probabilities or None, failure or None)`` per file asked for, in the order given."""
        reasons = {f["path"]: f for f in self.failures}
        done = 0
        for path in self.inputs or [*self.paths, *reasons]:
            if done < len(self.paths) and self.paths[done] == path:
                yield path, self.probs[done], None
                done += 1
            else:
                yield path, None, reasons[path]


def _logits_hint(loaded: LoadedModel) -> str:
    """What to use instead of a model that returns logits (a training checkpoint does)."""
    run, inference = loaded.run_dir, Path(loaded.run_dir) / INFERENCE_MODEL
    if Path(loaded.source) != inference:
        if not inference.is_file():
            return (f"this looks like logits from a training checkpoint, and the run has no {INFERENCE_MODEL} yet "
                    f"(the inference model, written when training ends): finish it with "
                    f"`ftkit train --resume {run}`, then use `ftkit evaluate {run} DATA`")
        return (f"this looks like logits from a training checkpoint. Use the run's inference model {inference}: "
                f"`ftkit evaluate {run} DATA` or `ftkit predict {run} PATH`; `ftkit export {run}` writes it for "
                f"deployment")
    return (f"this looks like logits, but the {INFERENCE_MODEL} that `ftkit train` writes returns probabilities: "
            f"was it replaced by a training checkpoint (checkpoints/*.keras)?")


def _check_output(probs: np.ndarray, loaded: LoadedModel) -> None:
    n_classes = len(loaded.class_names)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(
            f"The model's output must be [batch, {n_classes}] (one probability per class name). "
            f"Received: output shape {probs.shape} from {loaded.source}"
        )
    sums = probs.sum(axis=1)
    if probs.min() < 0 or np.abs(sums - 1).max() > PROB_SUM_TOLERANCE:
        raise ValueError(
            f"The model must return class probabilities (rows summing to 1); {_logits_hint(loaded)}. "
            f"Received: row sums {sums.min():.4g}..{sums.max():.4g} from {loaded.source}"
        )


def _predict_batch(model, batch, *, tta: str | None) -> np.ndarray:
    """``model``'s output for one batch of images (``[batch, height, width, channels]``) as float64: where
    evaluation, training's final evaluation and prediction all run the model. ``tta="flip"``: the mean of the
    outputs for the batch and for its mirror image (the width axis reversed), averaged as probabilities, which is
    what inference models return (averaging logits would weigh the views otherwise). ``tta`` is checked by the
    public functions that call this, once (:func:`~ftkit.evaluate.runs.check_tta`)."""
    probs = np.asarray(model.predict_on_batch(batch), dtype=np.float64)
    if tta == "flip":
        import keras

        mirrored = np.asarray(model.predict_on_batch(keras.ops.flip(batch, axis=2)), dtype=np.float64)
        probs = (probs + mirrored) / 2
    return probs


def predict_batches(model, batches: Iterable, *, tta: str | None = None) -> np.ndarray:
    """``model``'s outputs for each batch of ``batches`` (arrays, or a ``tf.data.Dataset`` of image batches), in
    order, as float64 (``tta``: :func:`_predict_batch`). Quiet, as the prediction of files is: ``Model.predict``'s
    progress bar redraws its line with terminal escapes, which fill a log file (``ftkit train > log``) with
    noise."""
    check_tta(tta)
    outputs = [_predict_batch(model, batch, tta=tta) for batch in batches]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def predict_files(
    loaded: LoadedModel, paths: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, tta: str | None = None
) -> Predictions:
    """Predict every readable file of ``paths`` in order, decoded as training decodes (the training pipeline,
    which decodes the next batches while the model runs); ``tta``: :func:`_predict_batch`."""
    check_tta(tta)
    return _predict_files(loaded, paths, batch_size=batch_size, tta=tta)


def _predict_files(loaded: LoadedModel, paths: Sequence[str], *, batch_size: int, tta: str | None) -> Predictions:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    decoded = image_io.TrainingDecode(paths, image_size=loaded.image_size, channels=loaded.channels,
                                      resize=loaded.resize, batch_size=batch_size)
    probs = _checked_outputs(loaded, decoded, tta=tta)
    kept, failures = decoded.outcome()
    if len(probs) != len(kept):  # the pipeline's contract: every readable file once, in order
        raise RuntimeError(f"{len(probs)} predictions for {len(kept)} readable files of {len(decoded.paths)}")
    return Predictions(paths=[decoded.paths[i] for i in kept], probs=probs, class_names=list(loaded.class_names),
                       failures=failures, inputs=list(decoded.paths), tta=tta)


def predict_images(loaded: LoadedModel, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE,
                   tta: str | None = None) -> np.ndarray:
    """Probabilities for in-memory uint8 images (MNIST), row for row, resized as training resized them; ``tta``:
    :func:`_predict_batch`."""
    check_tta(tta)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    return _checked_outputs(loaded, image_io.decode_arrays(images, image_size=loaded.image_size,
                                                           channels=loaded.channels, resize=loaded.resize,
                                                           batch_size=batch_size), tta=tta)


def _checked_outputs(loaded: LoadedModel, batches: Iterable, *, tta: str | None) -> np.ndarray:
    """The run's model on each batch (:func:`_predict_batch`), each output checked against its class names."""
    outputs = []
    for batch in batches:
        probs = _predict_batch(loaded.model, batch, tta=tta)
        _check_output(probs, loaded)
        outputs.append(probs)
    return np.concatenate(outputs) if outputs else np.zeros((0, len(loaded.class_names)))


def predict_paths(
    model_or_run: str | Path | LoadedModel, inputs: Iterable[str | Path], *, batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: str | None = None, tta: str | None = None,
) -> Predictions:
    """Files or folders in (folders are walked, hidden files skipped), probabilities out; every file that
    cannot be read (missing, a symlink loop, not an image...) is in ``failures`` with its reason, and
    ``rows()`` gives them all in the order asked. ``checkpoint``: ``"best"`` or ``"last"`` of a run folder
    instead of its ``model.keras`` (:func:`load_model`); ``tta``: ``"flip"`` averages each image's probabilities
    with its mirror image's (:func:`_predict_batch`)."""
    check_tta(tta)  # before the model loads (seconds)
    inputs = [str(item) for item in inputs]
    listed, unwalkable, empty, ignored = [], [], [], []
    for item in inputs:  # one at a time, to know which folder held no file
        files, bad = image_io.expand_paths([item], ignored=ignored)
        listed += files
        unwalkable += bad
        if os.path.isdir(item) and not files:
            empty.append(os.path.abspath(item))
    if isinstance(model_or_run, LoadedModel):
        if checkpoint is not None:
            raise ValueError(f"checkpoint picks a model to load; this one is loaded. Received: checkpoint={checkpoint!r}")
        loaded = model_or_run
    else:
        loaded = load_model(model_or_run, checkpoint=checkpoint)
    walked = {f["path"] for f in unwalkable}
    result = _predict_files(loaded, [p for p in listed if p not in walked], batch_size=batch_size, tta=tta)
    failed = {f["path"]: f for f in [*unwalkable, *result.failures]}
    result.failures = [failed[p] for p in dict.fromkeys(listed) if p in failed]
    result.inputs = listed
    result.skipped = [left_out(os.path.abspath(path)) for path in ignored]
    result.empty_folders = empty
    return result


def left_out(path: str) -> dict:
    """The skip record of an entry a folder walk left out (:func:`ftkit.data.sources.is_ignored`): a name
    starting with ``.`` (``"hidden"``) or operating-system clutter such as ``Thumbs.db`` (``"system file"``)."""
    return image_io.skipped_file(path, HIDDEN if Path(path).name.startswith(".") else SYSTEM_FILE,
                                 "left out when a folder is walked; name it to predict it")


def check_csv_target(path: str | Path) -> None:
    """Refuse a CSV path that cannot be written, before any prediction is computed: a missing folder, one that
    cannot be written, or a path that is a folder."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise IsADirectoryError(f"The CSV file would replace a folder; name a file. Received: csv={str(path)!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"The CSV file's folder {str(folder)!r} does not exist; create it or name another "
                                f"file. Received: csv={str(path)!r}")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise PermissionError(f"The CSV file cannot be written (no write permission). Received: csv={str(path)!r}")


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable ``(class, probability)``, most probable first (ties by class order)."""
    if k < 1:
        raise ValueError(f"top-k must be >= 1. Received: k={k!r}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(class_names[c], float(row[c])) for c in idx] for row, idx in zip(probs, order, strict=True)]


def write_predict_csv(result: Predictions, path: str | Path, *, k: int) -> None:
    """``path, top1..topk class and probability, every class probability``, one row per file in the order
    asked; a file that could not be read has its error in ``status`` and empty probabilities. With test-time
    augmentation (``result.tta``) the probabilities are the averaged ones, and a ``tta`` column after ``status``
    names it on every row (a comment line would break CSV readers); without it the columns are as before."""
    k = min(k, len(result.class_names))
    tta = [result.tta] if result.tta else []
    header = ["path", "status", *(["tta"] if tta else [])]
    for rank in range(1, k + 1):
        header += [f"top{rank}", f"top{rank}_prob"]
    header += [f"prob_{name}" for name in result.class_names]
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for file_path, row, failure in result.rows():
            if failure is not None:
                writer.writerow([file_path, f"error: {image_io.describe(failure)}", *tta]
                                + [""] * (len(header) - 2 - len(tta)))
                continue
            best = top_k(row[None], result.class_names, k)[0]
            writer.writerow([file_path, "ok", *tta, *[v for pair in best for v in (pair[0], f"{pair[1]:.6f}")],
                             *[f"{p:.6f}" for p in row]])
