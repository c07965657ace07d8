"""Run an inference model over image files, in the given order, keyed by path; bad files are reported."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftkit.evaluate import images as image_io
from ftkit.evaluate.metrics import PROB_SUM_TOLERANCE
from ftkit.evaluate.runs import LoadedModel, load_model

DEFAULT_BATCH_SIZE = 32


@dataclass
class Predictions:
    """``probs[i]`` belongs to ``paths[i]``; ``failures`` lists files that could not be read, with why."""

    paths: list[str]
    probs: np.ndarray
    class_names: list[str]
    failures: list[dict] = field(default_factory=list)


def _check_output(probs: np.ndarray, n_classes: int, source: str) -> None:
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(
            f"The model's output must be [batch, {n_classes}] (one probability per class name). "
            f"Received: output shape {probs.shape} from {source}"
        )
    sums = probs.sum(axis=1)
    if probs.min() < 0 or np.abs(sums - 1).max() > PROB_SUM_TOLERANCE:
        raise ValueError(
            "The model must return class probabilities (rows summing to 1), as the run's model.keras does; "
            f"this looks like logits from a training checkpoint. Received: row sums {sums.min():.4g}..{sums.max():.4g} "
            f"from {source}"
        )


def predict_files(
    loaded: LoadedModel, paths: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> Predictions:
    """Predict every readable file of ``paths`` in order, decoded as training decodes (the training pipeline,
    which decodes the next batches while the model runs)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    decoded = image_io.TrainingDecode(paths, image_size=loaded.image_size, channels=loaded.channels,
                                      resize=loaded.resize, batch_size=batch_size)
    outputs = []
    for batch in decoded:
        probs = np.asarray(loaded.model.predict_on_batch(batch), dtype=np.float64)
        _check_output(probs, len(loaded.class_names), loaded.source)
        outputs.append(probs)
    kept, failures = decoded.outcome()
    probs = np.concatenate(outputs) if outputs else np.zeros((0, len(loaded.class_names)))
    if len(probs) != len(kept):  # the pipeline's contract: every readable file once, in order
        raise RuntimeError(f"{len(probs)} predictions for {len(kept)} readable files of {len(decoded.paths)}")
    return Predictions(paths=[decoded.paths[i] for i in kept], probs=probs, class_names=list(loaded.class_names),
                       failures=failures)


def predict_paths(
    model_or_run: str | Path | LoadedModel, inputs: Iterable[str | Path], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> Predictions:
    """Files or folders in (folders are walked, hidden files skipped), probabilities out."""
    loaded = model_or_run if isinstance(model_or_run, LoadedModel) else load_model(model_or_run)
    paths, missing = image_io.expand_paths(inputs)
    result = predict_files(loaded, paths, batch_size=batch_size)
    result.failures = missing + result.failures
    return result


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable ``(class, probability)``, most probable first (ties by class order)."""
    if k < 1:
        raise ValueError(f"top-k must be >= 1. Received: k={k!r}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(class_names[c], float(row[c])) for c in idx] for row, idx in zip(probs, order, strict=True)]


def write_predict_csv(result: Predictions, path: str | Path, *, k: int) -> None:
    """``path, top1..topk class and probability, every class probability``; unreadable files with their error."""
    k = min(k, len(result.class_names))
    header = ["path", "status"]
    for rank in range(1, k + 1):
        header += [f"top{rank}", f"top{rank}_prob"]
    header += [f"prob_{name}" for name in result.class_names]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for file_path, row, best in zip(result.paths, result.probs, top_k(result.probs, result.class_names, k), strict=True):
            writer.writerow([file_path, "ok", *[v for pair in best for v in (pair[0], f"{pair[1]:.6f}")], *[f"{p:.6f}" for p in row]])
        for failure in result.failures:
            writer.writerow([failure["path"], f"error: {failure['reason']}"] + [""] * (len(header) - 2))
