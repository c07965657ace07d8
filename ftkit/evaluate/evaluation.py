"""Evaluate a model on a labelled split: predict in file order (no shuffling), score, write the bundle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftkit.evaluate import images as image_io
from ftkit.evaluate.metrics import compute_metrics
from ftkit.evaluate.predict import DEFAULT_BATCH_SIZE, predict_files
from ftkit.evaluate.report import write_bundle
from ftkit.evaluate.runs import REPORT_DIR, LoadedModel, load_model

DEFAULT_TOP_K = (5,)


def evaluate_predictions(
    paths: Sequence[str],
    y_true,
    probs,
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    skipped: Sequence[dict] = (),
    model: str = "",
    data: str = "",
) -> dict:
    """Score predictions already made (``probs[i]`` for ``paths[i]``) and write the bundle to ``out_dir``."""
    from ftkit import __version__

    report = compute_metrics(y_true, probs, class_names, top_k=top_k)
    report.update(model=model, data=data, skipped=list(skipped), ftkit_version=__version__)
    return write_bundle(out_dir, report, paths=list(paths), y_true=np.asarray(y_true), probs=np.asarray(probs))


def _as_labelled(data, class_names: Sequence[str], *, allow_missing_classes: bool) -> image_io.LabelledFiles:
    if isinstance(data, image_io.LabelledFiles):
        image_io.check_classes(
            data.class_names, class_names, allow_missing=allow_missing_classes, source="the given index"
        )
        if list(data.class_names) != list(class_names):
            raise image_io.ClassMismatchError(
                "The index's class order differs from the model's; labels would be misread. "
                f"Received: index classes {data.class_names}, model classes {list(class_names)}"
            )
        return data
    if isinstance(data, str | Path):
        return image_io.scan_split(data, class_names, allow_missing_classes=allow_missing_classes)
    raise TypeError(
        "data must be a split folder (one subfolder per class) or an ftkit.evaluate.LabelledFiles index. "
        f"Received: data of type {type(data).__name__}"
    )


def evaluate_model(
    loaded: LoadedModel,
    data,
    out_dir: str | Path,
    *,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allow_missing_classes: bool = False,
) -> dict:
    """Predict every image of ``data`` with ``loaded`` (model + run metadata), score, write ``out_dir``.

    ``data`` is a split folder (one subfolder per class, named as the model's classes) or a
    ``LabelledFiles`` index. Unreadable files are skipped and listed in the report.
    """
    index = _as_labelled(data, loaded.class_names, allow_missing_classes=allow_missing_classes)
    result = predict_files(loaded, index.paths, batch_size=batch_size)
    if not result.paths:
        raise ValueError(
            f"None of the {len(index.paths)} evaluation files could be read; first error: "
            f"{result.failures[0]['reason']}. Received: data={str(data)!r}"
        )
    label_of = dict(zip(index.paths, index.labels.tolist(), strict=True))
    y_true = np.asarray([label_of[p] for p in result.paths], dtype=np.int64)
    return evaluate_predictions(
        result.paths,
        y_true,
        result.probs,
        loaded.class_names,
        out_dir,
        top_k=top_k,
        skipped=index.skipped + result.failures,
        model=loaded.source,
        data=str(data) if isinstance(data, str | Path) else index.source or "index",
    )


def evaluate_run(
    model_or_run: str | Path,
    data,
    out_dir: str | Path | None = None,
    *,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allow_missing_classes: bool = False,
) -> dict:
    """``ftkit evaluate``: load a run folder (or ``.keras`` with its ``ftkit_run.json``) and evaluate it.

    ``out_dir`` defaults to ``RUN/report`` (for a checkpoint file, the run folder holding its metadata). Returns the report dict (what ``report.json`` holds).
    """
    loaded = load_model(model_or_run)
    if out_dir is None:
        out_dir = loaded.run_dir / REPORT_DIR
    return evaluate_model(
        loaded, data, out_dir, top_k=top_k, batch_size=batch_size, allow_missing_classes=allow_missing_classes
    )
