"""The run's own data for ``ftkit evaluate RUN`` (no DATA): its recipe's sources, split as training split them.

Training carves a split its data lacks (stratified, seeded: ``data.val_fraction``, ``data.test_fraction``) and
caps val and test (``data.eval_samples_per_class``). Evaluating that split again means carving it again, so the
saved recipe goes through training's own data loading (:func:`ftkit.training.inputs.load_data`), never a second
copy of the split code, and the result is checked against the file lists ``ftkit_run.json`` recorded
(:func:`ftkit.data.sources.file_list`: a count and a digest per split). A source changed since training (a file
added, removed or moved to another class) cannot give the same carve back and is refused. A run recorded before
file lists were is evaluated with a warning that its split could not be checked, its counts compared.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftkit.data import sources
from ftkit.evaluate import images as image_io

EVALUATED_SPLITS = ("test", "val")  # the default without DATA: the first one the run has


class SplitChangedError(ValueError):
    """The run's carved split cannot be rebuilt: its source's files changed since training. ``recorded`` and
    ``found``: the per-split counts ftkit_run.json records and those of the source now, as the message gives them."""

    def __init__(self, message: str, *, recorded: str = "", found: str = ""):
        super().__init__(message)
        self.recorded, self.found = recorded, found


def open_run_data(run_dir: str | Path, meta: dict, *, split: str | None = None, why: str = "",
                  recipe=None, trained_from: str = "") -> image_io.LabelledFiles:
    """The labelled rows of the run's own ``split`` (``None``: test, else val), as its training had them.

    ``meta``: the run's ``ftkit_run.json``; ``why``: how the split came to be asked for, for the split note
    (default: ``--split NAME`` or the default rule); ``recipe``: the run's saved recipe, where the caller read it;
    ``trained_from``: the source training read, for the split note, where ``recipe``'s data.train is a copy of it.
    Files of classes ``data.classes`` leaves out are left out as training left them, not listed as skipped."""
    recipe = recipe if recipe is not None else saved_recipe(Path(run_dir))
    config = recipe.data
    _check_exists(config.train, "train", run_dir)
    carved = carved_splits(config)
    index = _load(config, meta, run_dir)
    name, available = _choose(index, split, run_dir)
    where = getattr(config, name, None) if name != "train" else None
    # A carved split is checked with the splits drawn beside it: a file added to the training part changes the draw.
    group = [s for s in sources.SPLITS if s in index.splits and (s in carved or s == "train")] if carved else []
    compared = group if name in group else [name]
    lists = {s: sources.file_list(index[s], index.class_names, base=index.source) for s in compared}
    check, warnings = _verify(meta.get("data") or {}, lists, index, compared, name=name, carved=name in group,
                              config=config, run_dir=run_dir)
    rows = index[name]
    found = [index.class_names[i] for i in np.unique(rows.labels)]
    source = os.path.abspath(where or config.train)
    image_io.check_classes(found, meta["class_names"], allow_missing=True, source=source)
    to_run = np.array([list(meta["class_names"]).index(c) if c in meta["class_names"] else -1
                       for c in index.class_names])
    origin = _origin(config, name, carved=name in group, where=where, source=trained_from or config.train)
    reason = why or (f"--split {split}" if split is not None else
                     f"the default without DATA: test, else val; the run has {', '.join(available)}; --split NAME for "
                     f"another")
    skipped = [s for s in index.skipped if s.split == name]
    # Training drops the files of classes outside data.classes on purpose (check_splits(selected=True)).
    others = [s for s in skipped if s.reason == sources.UNKNOWN_CLASS] if config.classes is not None else []
    label, report_name = _label(name, source, narrowed=_narrowed(config, name))
    return image_io.LabelledFiles(
        paths=rows.ids(), labels=to_run[rows.labels].astype(np.int64), class_names=list(meta["class_names"]),
        skipped=[image_io.skipped_file(s.path, s.reason, s.detail) for s in skipped if s not in others],
        source=label, warnings=warnings, images=rows.images, split=name,
        split_note=f"split: {name} ({reason}): the run's own {name} split, {origin}; {len(rows)} images, {check}"
                   + _classes_note(config, index, others),
        report_name=report_name)


def _classes_note(config, index, others: list) -> str:
    if config.classes is None:
        return ""
    note = f"; classes: the run's {len(index.class_names)} of {len(sources.source_classes(index))} (data.classes)"
    return note + (f", the others' {len(others)} files left out, as training left them" if others else "")


def _narrowed(config, name: str) -> bool:
    """Whether training kept only part of the source's ``name`` split: capped, or some classes (data.classes)."""
    capped = config.eval_samples_per_class if name != "train" else (config.samples_per_class or
                                                                     config.max_samples_per_class)
    return bool(capped) or config.classes is not None


def _label(name: str, source: str, *, narrowed: bool) -> tuple[str, str]:
    """``(data label, report folder name)`` of the run's ``name`` split: those ``ftkit evaluate RUN DATA`` gives the
    same split (DATA the source, or its split folder), so the two share a report folder (a later evaluation
    replaces the earlier). A split training narrowed (capped, data.classes) holds other images: a label of its own."""
    if narrowed:
        return f"{source} (the run's {name} split)", f"{image_io.data_name(source)}-{name}"
    held = sources.split_folders(source) if os.path.isdir(source) and not sources.is_mnist_folder(source) else {}
    if name in held:
        return os.path.abspath(held[name]), ""  # named as default_report_dir names a split folder
    return f"{source} ({name} split)", f"{image_io.data_name(source)}-{name}"


def open_copy_data(run_dir: str | Path, meta: dict, data, *, split: str | None,
                   saved: dict | None) -> tuple[image_io.LabelledFiles | None, str]:
    """``ftkit evaluate RUN DATA --split NAME`` with DATA other than the run's training source, lacking the split
    NAME that training carved from that source: ``(rows, "")`` of the run's own NAME split where DATA holds the same
    files (a copy, the folder moved whole). DATA is carved by training's own loader with the run's recipe, its
    data.train replaced by DATA, and checked against the file lists ftkit_run.json records, which are relative to
    the source, so a copy matches. ``(None, hint)`` where it does not, ``hint`` saying how DATA differs, for the
    error DATA's own lack of the split then gives; ``(None, "")`` where the question does not arise (no ``split``,
    DATA holds it, training did not carve it, the run's recipe is missing or unreadable). ``saved``: the run's
    recipe as :func:`saved_recipe_dict` reads it."""
    name = sources.SPLIT_FOLDERS.get(split.lower()) if isinstance(split, str) else None
    recipe, original = _recipe_reading(saved, data) if name and isinstance(data, str | os.PathLike) else (None, "")
    if recipe is None:
        return None, ""
    try:
        if name in sources.own_splits(data, root=recipe.data.root) or name not in carved_splits(recipe.data):
            return None, ""
    except (OSError, ValueError):
        return None, ""  # open_data names what is wrong with DATA
    cannot = f"so --split {split} cannot pick the run's {name} split, which training carved from {original}, out of it"
    if not isinstance((meta.get("data") or {}).get("file_lists"), dict):
        return None, (f"DATA is not the run's training source ({original}), and ftkit_run.json records no file "
                      f"lists to check that it holds the same files, {cannot}.")
    try:
        return open_run_data(run_dir, meta, split=split, recipe=recipe, trained_from=original,
                             why=f"--split {split}; DATA holds the same files as the run's training source"), ""
    except SplitChangedError as error:
        counts = ("the same counts, other files or classes" if error.recorded == error.found else
                  f"recorded {error.recorded}; DATA {error.found}")
        return None, (f"DATA differs from the run's training data ({original}): carved with the recipe's settings "
                      f"(data.val_fraction {recipe.data.val_fraction}, data.test_fraction {recipe.data.test_fraction}, "
                      f"data.seed {recipe.data.seed}), its file lists are not those ftkit_run.json records "
                      f"({counts}), {cannot}.")
    except (OSError, ValueError) as error:
        return None, (f"DATA is not the run's training source ({original}), and carving it as training carved "
                      f"that failed ({error}), {cannot}.")


def saved_recipe_dict(run_dir: str | Path) -> dict | None:
    """The run's ``recipe.yaml`` as written (not validated), or ``None`` where it is missing or not a YAML mapping:
    for the questions that only ask what the run trained from and how it evaluated."""
    import yaml

    from ftkit.training.runs import RECIPE_FILE

    try:
        saved = yaml.safe_load((Path(run_dir) / RECIPE_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def _recipe_reading(saved: dict | None, data) -> tuple[object | None, str]:
    """``(the run's recipe with data.train replaced by data, the data.train it had)``; ``(None, "")`` where the
    run has no readable recipe."""
    import copy

    from ftkit.recipe import load_recipe

    try:
        changed = copy.deepcopy(saved)
        original = changed["data"]["train"]
        changed["data"]["train"] = os.fspath(data)
        return load_recipe(changed), str(original)
    except (ValueError, KeyError, TypeError):  # ValueError: a RecipeError among them
        return None, ""


def saved_recipe(run_dir: Path):
    """The run's ``recipe.yaml``, validated: what its training read its data by."""
    from ftkit.recipe import RecipeError, load_recipe
    from ftkit.training.runs import RECIPE_FILE

    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Without DATA, `ftkit evaluate RUN` evaluates the run's own data as its "
                                f"{RECIPE_FILE} names it, and the run folder has none: pass DATA. "
                                f"Received: run={str(run_dir)!r}")
    try:
        return load_recipe(path)
    except RecipeError as error:
        raise ValueError(f"The run's {RECIPE_FILE} no longer reads as a recipe, so its data cannot be rebuilt: "
                         f"pass DATA.\n{error}\nReceived: run={str(run_dir)!r}") from None


def _check_exists(path: str, key: str, run_dir) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(
            f"The run's data.{key} is not there, so its own data cannot be rebuilt (relative paths are read from "
            f"the working folder, as training read them: run `ftkit evaluate` from the folder training ran in), or "
            f"pass DATA. Received: run={str(run_dir)!r}, data.{key}={path!r}")


def carved_splits(config) -> list[str]:
    """The splits training carved from ``data.train``: asked for with a fraction, given by no other source."""
    fractions = {"val": 0.0 if config.val else config.val_fraction,
                 "test": 0.0 if config.test else config.test_fraction}
    held = sources.own_splits(config.train, root=config.root)
    return [name for name, fraction in fractions.items() if fraction > 0 and name not in held]


def _load(config, meta: dict, run_dir):
    """The run's index, by the function training loads its data with (same recipe, same seed, same caps)."""
    from ftkit.training.inputs import load_data

    for key in ("val", "test"):
        if getattr(config, key):
            _check_exists(getattr(config, key), key, run_dir)
    shape = (*meta["image_size"], int(meta.get("channels", 3)))
    return load_data(config, image_shape=shape).index


def _choose(index, split: str | None, run_dir) -> tuple[str, list[str]]:
    available = [name for name in sources.SPLITS if name in index.splits and len(index.splits[name])]
    listed = ", ".join(available)
    if split is not None:
        name = sources.SPLIT_FOLDERS.get(split.lower())
        if name is None:
            raise ValueError(f"--split must name a split: {sources.SPLIT_NAMES_TEXT}. Received: split={split!r}")
        if name not in available:
            raise ValueError(f"The run has no {name} split: it has {listed} (its recipe gives no data.{name} and "
                             f"data.{name}_fraction 0, or its data has no {name} split). Received: "
                             f"run={str(run_dir)!r}, split={split!r}")
        return name, available
    name = next((s for s in EVALUATED_SPLITS if s in available), None)
    if name is None:
        raise ValueError(f"The run has no test or val split to evaluate (data.val_fraction and data.test_fraction "
                         f"0, no data.val or data.test): pass --split train for its training images, or DATA. "
                         f"Received: run={str(run_dir)!r}")
    return name, available


def _origin(config, name: str, *, carved: bool, where: str | None, source: str) -> str:
    if carved and name == "train":
        origin = f"what training kept of {source} after carving (data.seed {config.seed})"
    elif carved:
        origin = (f"carved by training from {source} (data.{name}_fraction {getattr(config, f'{name}_fraction')}"
                  f", data.seed {config.seed})")
    elif where:
        origin = f"data.{name} {where}"
    else:
        origin = f"the {name} split of {config.train}"
    cap = config.eval_samples_per_class if name != "train" else config.samples_per_class or config.max_samples_per_class
    if cap:
        key = "eval_samples_per_class" if name != "train" else ("samples_per_class" if config.samples_per_class
                                                                  else "max_samples_per_class")
        origin += f", at most {cap} per class (data.{key}, data.seed {config.seed})"
    return origin


def _verify(recorded: dict, lists: dict, index, compared: Sequence[str], *, name: str, carved: bool, config,
            run_dir) -> tuple[str, list[str]]:
    """``(what the check found, warnings)``; raises :class:`SplitChangedError` where a carved split differs."""
    then = recorded.get("file_lists")
    if isinstance(then, dict):
        if all(then.get(s) == lists[s] for s in compared):
            return "the same files as training's (checked against ftkit_run.json)", []
        what = "file lists"
        before, now = {s: (then.get(s) or {}).get("files") for s in compared}, {s: lists[s]["files"] for s in compared}
    else:
        counts = recorded.get("counts")
        why = f"ftkit_run.json records no file lists (a run from before they were recorded), so the {name} split "
        if not isinstance(counts, dict):
            return "not checked", [why + "was rebuilt from the recipe but could not be checked to be the one training "
                                         "used, and no per-class counts are recorded to compare"]
        # Recorded counts leave out the files training found bad while decoding; the rebuilt rows still hold them.
        gone = [(s["split"], s["path"]) for s in recorded.get("skipped_files", []) if isinstance(s, dict)]
        now = {s: dict(zip(index.class_names, index.usable_counts(s, gone={p for g, p in gone if g == s}).tolist(),
                           strict=True)) for s in compared}
        before = {s: counts.get(s) for s in compared}
        if before == now:
            return "not checked (no file lists recorded)", [
                why + "could not be checked to be the one training used; its per-class counts are the recorded ones "
                      f"({_text(now)})"]
        what = "per-class counts"
    if carved:
        raise _cannot_reproduce(name, config, run_dir, before, now, what=what)
    return "not the files training evaluated", [
        f"the run's {name} split changed since training ({what}: recorded {_text(before)}; now {_text(now)}): it is "
        f"evaluated as it is now"]


def _text(counts: dict) -> str:
    def total(value):
        return sum(value.values()) if isinstance(value, dict) else value

    return ", ".join(f"{s} {'none' if v is None else total(v)}" + (f" {v}" if isinstance(v, dict) else "")
                     for s, v in counts.items())


def _same_counts(before: dict, now: dict, config) -> str:
    """Why equal counts can still be another split: per-class caps (data.eval_samples_per_class, --smoke's 4) draw
    the same number of files from a changed folder."""
    if before != now:
        return ""
    caps = [f"{key} {value}" for key, value in (("data.samples_per_class", config.samples_per_class),
                                                  ("data.max_samples_per_class", config.max_samples_per_class),
                                                  ("data.eval_samples_per_class", config.eval_samples_per_class))
            if value]
    capped = f" (capped per class: {', '.join(caps)})" if caps else ""
    return f": the same counts{capped}, but other files"


def _cannot_reproduce(name: str, config, run_dir, before: dict, now: dict, *, what: str) -> SplitChangedError:
    return SplitChangedError(
        f"The run's {name} split can no longer be reproduced: training carved it from {config.train} "
        f"(data.val_fraction {config.val_fraction}, data.test_fraction {config.test_fraction}, data.seed "
        f"{config.seed}), and the files there changed since (added, removed or moved to another class), so the same "
        f"draw gives other images. {what.capitalize()}: recorded {_text(before)}; now {_text(now)}"
        f"{_same_counts(before, now, config)}. To evaluate "
        f"held-out images, pass DATA with split folders (train/, val/, test/) or a CSV of path,label,split naming "
        f"them. Received: run={str(run_dir)!r}, data.train={config.train!r}", recorded=_text(before), found=_text(now))
