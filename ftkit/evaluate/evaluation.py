"""Evaluate a model on a labelled split: predict in data order (no shuffling), score, write the bundle."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ftkit.data import sources
from ftkit.evaluate import images as image_io
from ftkit.evaluate.datasets import open_data
from ftkit.evaluate.metrics import compute_metrics
from ftkit.evaluate.predict import DEFAULT_BATCH_SIZE, predict_files, predict_images
from ftkit.evaluate.report import FILES, write_bundle
from ftkit.evaluate.run_data import carved_splits, open_copy_data, open_run_data, saved_recipe_dict
from ftkit.evaluate.runs import (
    REPORT_DIR,
    TTA_MODES,
    LoadedModel,
    check_tta,
    load_model,
    read_run_meta,
    resolve_paths,
)


def evaluate_predictions(
    paths: Sequence[str],
    y_true,
    probs,
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    top_k: Sequence[int] | None = None,
    skipped: Sequence[dict] = (),
    warnings: Sequence[str] = (),
    model: str = "",
    data: str = "",
    images=None,
    split: str = "",
    split_note: str = "",
    unknown_classes: Mapping[str, int] | None = None,
    tta: str | None = None,
) -> dict:
    """Score predictions already made (``probs[i]`` for ``paths[i]``) and write the bundle to ``out_dir``.

    ``top_k``: the k of the top-k accuracies; ``None``: :data:`ftkit.evaluate.metrics.DEFAULT_TOP_K` where it is
    defined (k below the number of classes), so two-class data gets no undefined top-5 and no note about it.
    ``skipped``: files left out, ``{"path", "reason", "detail"}``; ``warnings``: about the data as a whole;
    ``images``: in-memory data's uint8 images, row for row (``paths`` are then identifiers), for the gallery;
    ``split``, ``split_note``: the split chosen from a data set with splits, and the line saying why;
    ``unknown_classes``: rows left out per class the model does not know (``only_model_classes``); ``tta``: the
    test-time augmentation ``probs`` were averaged over (``"flip"``), recorded in the report."""
    check_tta(tta)
    return _score(paths, y_true, probs, class_names, out_dir, top_k=top_k, skipped=skipped, warnings=warnings,
                  model=model, data=data, images=images, split=split, split_note=split_note,
                  unknown_classes=unknown_classes, tta=tta)


def _score(paths, y_true, probs, class_names, out_dir, *, top_k, skipped, warnings, model, data, images, split,
           split_note, unknown_classes, tta) -> dict:
    from ftkit import __version__

    report = compute_metrics(y_true, probs, class_names, top_k=top_k)
    report.update(model=model, data=data, split=split or None, split_note=split_note, tta=tta, skipped=list(skipped),
                  unknown_classes=dict(unknown_classes or {}), warnings=list(warnings), ftkit_version=__version__)
    return write_bundle(out_dir, report, paths=list(paths), y_true=np.asarray(y_true), probs=np.asarray(probs),
                        images=images)


def _as_labelled(data, class_names: Sequence[str], *, split: str | None, allow_missing_classes: bool,
                 only_model_classes: bool) -> image_io.LabelledFiles:
    if isinstance(data, image_io.LabelledFiles):
        if split is not None:
            raise ValueError(f"split chooses a split of a data source; an index is one already. Received: split={split!r}")
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
        return open_data(data, class_names, split=split, allow_missing_classes=allow_missing_classes,
                         only_model_classes=only_model_classes)
    raise TypeError(
        "data must be a path (a folder of class folders, a tree of split folders, a CSV of path,label[,split], "
        f"MNIST) or an ftkit.evaluate.LabelledFiles index. Received: data of type {type(data).__name__}"
    )


def evaluate_model(
    loaded: LoadedModel,
    data,
    out_dir: str | Path,
    *,
    top_k: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allow_missing_classes: bool = False,
    split: str | None = None,
    only_model_classes: bool = False,
    tta: str | None = None,
) -> dict:
    """Predict every image of ``data`` with ``loaded`` (model + run metadata), score, write ``out_dir``.

    ``data`` is a path to any source ``ftkit train`` reads (:func:`ftkit.evaluate.datasets.open_data`; ``split``
    chooses a split of one that has them) or a ``LabelledFiles`` index. Unreadable files are skipped and listed
    in the report, and empty class folders left out with a warning. ``only_model_classes``: rows of classes the
    model does not know are left out (listed as skipped, counted per class in ``unknown_classes``), not an error.
    ``tta="flip"``: each image's probabilities are the mean of the model's for the image and its mirror image
    (:func:`ftkit.evaluate.predict.predict_batches`; twice the inference time), and the report says so.
    """
    check_tta(tta)
    index = _as_labelled(data, loaded.class_names, split=split, allow_missing_classes=allow_missing_classes,
                         only_model_classes=only_model_classes)
    return _evaluate(loaded, index, out_dir, top_k=top_k, batch_size=batch_size, tta=tta)


def _evaluate(loaded: LoadedModel, index: image_io.LabelledFiles, out_dir, *, top_k, batch_size: int,
              tta: str | None) -> dict:
    paths, y_true, probs, failures = _predict(loaded, index, batch_size=batch_size, tta=tta)
    return _score(paths, y_true, probs, loaded.class_names, out_dir, top_k=top_k, skipped=index.skipped + failures,
                  warnings=index.warnings, model=loaded.source, data=index.source or "index", images=index.images,
                  split=index.split, split_note=index.split_note, unknown_classes=index.unknown_classes, tta=tta)


def _predict(loaded: LoadedModel, index: image_io.LabelledFiles, *, batch_size: int, tta: str | None):
    """``(paths, y_true, probs, failures)`` of the rows that could be read, in the index's order."""
    if index.images is not None:  # in memory: nothing can fail to decode
        return index.paths, index.labels, predict_images(loaded, index.images, batch_size=batch_size, tta=tta), []
    result = predict_files(loaded, index.paths, batch_size=batch_size, tta=tta)
    if not result.paths:
        raise ValueError(
            f"None of the {len(index.paths)} evaluation files could be read; first error: "
            f"{image_io.describe(result.failures[0])}. Received: data={index.source or 'index'!r}"
        )
    label_of = dict(zip(index.paths, index.labels.tolist(), strict=True))
    y_true = np.asarray([label_of[p] for p in result.paths], dtype=np.int64)
    return result.paths, y_true, result.probs, result.failures


def default_report_dir(run_dir: str | Path, data: image_io.LabelledFiles, *, checkpoint: str | None = None,
                       tta: str | None = None) -> Path:
    """Where ``ftkit evaluate RUN DATA`` writes without ``--out``: ``RUN/report/<data name>/``.

    One folder per data set, beside the ``report/val`` and ``report/test`` that training wrote and never over
    them: a split folder is named with its parent (``.../catsdogs/test`` gives ``catsdogs-test``), a split of a
    CSV or of MNIST with the file's name (``labels-test``, ``mnist-test``); a training checkpoint's evaluation
    ends in its name (``catsdogs-test-best``), beside the run's model's, and one with test-time augmentation in
    ``-tta-`` and its mode (``catsdogs-test-tta-flip``), beside the one without, so the two can be compared.
    Evaluating the same data again replaces its report, as a second ``ftkit train`` evaluation would; other data
    whose folder has the same name gets ``-2``, ``-3``..., so no evaluation overwrites another's.
    """
    check_tta(tta)
    source = data.source or "index"
    name = data.report_name or image_io.data_name(source)
    name = (re.sub(r"[^\w.-]+", "_", name).strip("._") or "data") + (f"-{checkpoint}" if checkpoint else "")
    name += f"-tta-{tta}" if tta else ""
    reports = Path(run_dir) / REPORT_DIR
    for n in range(1, 10_000):
        candidate = reports / (name if n == 1 else f"{name}-{n}")
        if not candidate.exists() or _holds_evaluation_of(candidate, source) or _empty_folder(candidate):
            return candidate
    raise FileExistsError(f"No free report folder name for {name!r} in {reports}. Received: data={source!r}")


def _recipe_trained_on(saved: dict | None, data):
    """The run's saved recipe (``saved``, as :func:`saved_recipe_dict` reads it), validated, where ``data`` is the
    path it trained from (its ``data.train``, relative paths read from the working folder, as training read
    them), else ``None``."""
    from ftkit.recipe import load_recipe

    if not isinstance(data, str | Path):
        return None
    try:
        if Path(saved["data"]["train"]).resolve() != Path(data).resolve():
            return None
        return load_recipe(saved)
    except (OSError, ValueError, KeyError, TypeError):  # ValueError: a RecipeError among them
        return None


def _training_tta(saved: dict | None) -> tuple[str, list[str]] | None:
    """``(evaluate.tta, evaluate.splits)`` of the run's saved recipe where its final evaluation used test-time
    augmentation, else ``None`` (no recipe, none read, evaluation off or without TTA)."""
    section = (saved or {}).get("evaluate") or {}
    if not isinstance(section, dict):
        return None
    tta, splits = section.get("tta"), section.get("splits") or ["val", "test"]
    if section.get("enabled", True) and isinstance(tta, str) and tta in TTA_MODES and isinstance(splits, list):
        return tta, [str(s) for s in splits]
    return None


def _run_split_of(config, data, split: str | None) -> str:
    """Why ``ftkit evaluate RUN DATA --split NAME``, DATA the run's training source (``config``: its recipe's data
    section), evaluates the run's own split rather than DATA's: DATA does not hold it (training carved it, or the
    recipe gives it as data.val or data.test), or it is train and training carved splits from DATA (the run's train
    split is what carving left). ``""`` where DATA's own split is the one."""
    if split is None:
        return ""
    name = sources.SPLIT_FOLDERS.get(split.lower())
    try:
        held = sources.own_splits(data, root=config.root)
    except (OSError, ValueError):
        return ""  # open_data names what is wrong with DATA
    carved = carved_splits(config)
    if name == "train" and carved:
        return f"DATA is the run's training source, from which training carved {' and '.join(carved)}"
    if name in held:
        return ""
    origin = "training carved the run's from it" if name in carved else f"the run's is its recipe's data.{name}"
    return f"DATA is the run's training source, which has no {split} split ({origin})"


def _empty_folder(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def _holds_evaluation_of(folder: Path, source: str) -> bool:
    try:
        return json.loads((folder / FILES["json"]).read_text()).get("data") == source
    except (OSError, ValueError, AttributeError):
        return False


def evaluate_run(
    model_or_run: str | Path,
    data=None,
    out_dir: str | Path | None = None,
    *,
    top_k: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allow_missing_classes: bool = False,
    split: str | None = None,
    checkpoint: str | None = None,
    only_model_classes: bool = False,
    tta: str | None = None,
) -> dict:
    """``ftkit evaluate``: load a run folder (or ``.keras`` with its ``ftkit_run.json``) and evaluate it; with
    ``checkpoint="best"`` or ``"last"``, that training checkpoint of a run folder (:func:`load_model`).

    ``data``: any source ``ftkit train`` reads, or a ``LabelledFiles`` index. Of data with splits, ``split`` is
    evaluated (default: test, else val, else all of it; the report's ``split_note`` says which). ``None``: the
    run's own data, as its ``recipe.yaml`` names it, split as training split it (a carved val or test rebuilt
    and checked against ``ftkit_run.json``: :mod:`ftkit.evaluate.run_data`); ``split`` defaults to test, else
    val. The same happens for ``data`` naming the run's training source with a ``split`` it does not hold itself
    (carved by training, or given by the recipe's ``data.val`` or ``data.test``), or ``split="train"`` where
    training carved a split from it (its train split is then what carving left); and for ``data`` holding the
    same files elsewhere (a copy, the folder moved whole) with a ``split`` training carved
    (:func:`~ftkit.evaluate.run_data.open_copy_data`); other files lacking it are refused, saying how they differ.
    ``allow_missing_classes`` and ``only_model_classes`` apply to ``data`` and are refused without it. A class of
    ``data`` the run does not know is an error, unless ``only_model_classes`` leaves its rows out (each listed in
    the report's ``skipped``, counted per class in its ``unknown_classes``; kept rows keep their ids). ``out_dir``
    defaults to ``RUN/report/<data name>/`` (:func:`default_report_dir`; for a checkpoint file, in the run folder
    holding its metadata; ending in ``-tta-flip`` with ``tta="flip"``). ``tta``: see :func:`evaluate_model`; left
    out on a run whose recipe's ``evaluate.tta`` gave training's final evaluation one, the report's warnings say
    so. Returns the report dict (what
    ``report.json`` holds; ``out_dir`` says where it went).
    """
    check_tta(tta)  # before the data is read and the model loads
    if data is None and (allow_missing_classes or only_model_classes):
        raise ValueError(
            "allow_missing_classes and only_model_classes (--allow-missing-classes, --only-model-classes) say how "
            "DATA's classes meet the run's; without DATA the run's own data is evaluated, which has exactly the run's "
            "classes (training left out any others, as data.classes asked): leave them out, or pass DATA. Received: "
            f"data=None, allow_missing_classes={allow_missing_classes}, only_model_classes={only_model_classes}")
    _, meta_path, run_dir = resolve_paths(model_or_run, checkpoint)
    meta = read_run_meta(meta_path)
    saved = saved_recipe_dict(run_dir)
    recipe = _recipe_trained_on(saved, data) if data is not None else None
    # The data is checked against the run's classes before the model loads, so a mistake in DATA is reported
    # at once rather than after TensorFlow's start-up (seconds).
    if data is None:
        index = open_run_data(run_dir, meta, split=split)
    elif recipe is not None and (why := _run_split_of(recipe.data, data, split)):
        index = open_run_data(run_dir, meta, split=split, recipe=recipe, why=f"--split {split}; {why}")
    else:
        copied = None if recipe is not None else open_copy_data(run_dir, meta, data, split=split, saved=saved)
        index, hint = copied or (None, "")
        if index is None:
            try:
                index = _as_labelled(data, meta["class_names"], split=split,
                                     allow_missing_classes=allow_missing_classes, only_model_classes=only_model_classes)
            except image_io.ClassMismatchError:
                raise
            except ValueError as error:  # DATA lacks the split: hint says why the run's own cannot stand in
                if not hint:
                    raise
                message, _, received = str(error).rpartition(" Received: ")
                raise ValueError(f"{message} {hint} Received: {received}" if message else f"{error} {hint}") from None
    if tta is None and (trained := _training_tta(saved)):
        index.warnings.append(
            f"training's final evaluation ({', '.join(str(Path(run_dir) / REPORT_DIR / s) for s in trained[1])}) "
            f"used test-time augmentation ({TTA_MODES[trained[0]]}: the recipe's evaluate.tta {trained[0]}) and this "
            f"evaluation does not, so its scores differ from those for that reason too: pass --tta {trained[0]} "
            f"(Python: tta={trained[0]!r}) to evaluate as training did")
    if recipe is not None and not index.split:
        index.warnings.append(
            f"DATA is this run's own training source (its recipe's data.train) and has no split folders: the "
            f"{len(index.paths)} images evaluated include those the model was trained on, so these scores are not "
            f"held-out scores. Leave DATA out (or pass --split val or test) to evaluate the run's held-out split "
            f"again, as training carved it; its report from the end of training is in "
            f"{Path(run_dir) / REPORT_DIR}.")
    if out_dir is None:
        out_dir = default_report_dir(run_dir, index, checkpoint=checkpoint, tta=tta)
    return _evaluate(load_model(model_or_run, checkpoint=checkpoint), index, out_dir, top_k=top_k,
                     batch_size=batch_size, tta=tta)
