"""Compare two evaluated runs on the same images: per-class and per-cell differences, McNemar's test, and
the images one run gets right and the other wrong.

Works from what ``ftkit evaluate`` or ``ftkit train`` wrote (``predictions.csv`` keyed by path), so both runs
must have been evaluated on the same files; anything else is refused with the difference named. Rows are matched
by absolute path, so a bundle that names files relative to the folder it was written from (training's, before
it wrote absolute paths) matches one that names them absolutely.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from ftkit.data import sources
from ftkit.evaluate import gallery
from ftkit.evaluate.report import (
    FILES,
    IN_MEMORY_ID,
    bundle_working_dir,
    html_page,
    html_table,
    md_table,
    printable,
    read_predictions_csv,
    resolve_row_path,
)
from ftkit.evaluate.runs import REPORT_DIR, describe_tta

# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_MCNEMAR_BELOW = 25
EXAMPLES_IN_ERRORS = 5
COMPARE_FILES = {"json": "compare.json", "markdown": "compare.md", "html": "compare.html"}
PER_CLASS_HEADER = ["class", "support", "F1 A", "F1 B", "B - A", "recall A", "recall B"]
CELL_HEADER = ["true", "predicted", "A", "B", "B - A"]


@dataclass
class EvaluatedRun:
    name: str
    source: Path
    paths: list[str]
    true: list[str]
    predicted: list[str]
    confidence: np.ndarray
    class_names: list[str]
    # The test-time augmentation its report.json records (None: none); tta_known is false without a report.json.
    tta: str | None = None
    tta_known: bool = False


def find_predictions(run_or_report: str | Path, *, split: str = "test") -> Path:
    """``predictions.csv`` of a run folder (``RUN/report/<split>/``: ``test`` or ``val`` as ``ftkit train`` writes
    them, or the ``RUN/report/<data name>/`` of ``ftkit evaluate``; older runs' ``RUN/report/``), a report folder,
    or the file itself."""
    path = Path(run_or_report)
    for candidate in (path, path / FILES["predictions"], path / REPORT_DIR / FILES["predictions"],
                      path / REPORT_DIR / split / FILES["predictions"]):
        if candidate.is_file() and candidate.name.endswith(".csv"):
            return candidate
    found = sorted(str(p) for p in path.glob(f"**/{FILES['predictions']}")) if path.is_dir() else []
    splits = sorted({p.parent.name for p in path.glob(f"{REPORT_DIR}/*/{FILES['predictions']}")}) if path.is_dir() else []
    if splits:  # a run that `ftkit train` evaluated on other splits than this one
        hint = f" The run was evaluated on {splits}: pass --split {splits[0]}."
    elif found:
        hint = f" Found below it: {found[:EXAMPLES_IN_ERRORS]}; pass one of them."
    else:
        hint = " Run `ftkit evaluate` first."
    raise FileNotFoundError(
        f"No {FILES['predictions']} for split {split!r} in the run folder's report/, in the folder, or as the path "
        f"itself.{hint} Received: run={str(run_or_report)!r}, split={split!r}"
    )


def load_evaluated(run_or_report: str | Path, *, split: str = "test") -> EvaluatedRun:
    """A run's predictions, each row keyed by its file's absolute path (:func:`resolve_row_path`)."""
    source = find_predictions(run_or_report, split=split)
    paths, true, predicted, probs, class_names = read_predictions_csv(source)
    working_dir = bundle_working_dir(source)
    paths = [resolve_row_path(path, working_dir) for path in paths]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{source} lists some paths more than once. Received: {len(paths)} rows, {len(set(paths))} paths")
    tta_known, tta = _recorded_tta(source)
    return EvaluatedRun(str(run_or_report), source, paths, true, predicted, probs.max(axis=1), class_names,
                        tta=tta, tta_known=tta_known)


def _recorded_tta(predictions: Path) -> tuple[bool, str | None]:
    """``(known, tta)`` from the report.json beside ``predictions``; a report written before ``tta`` was recorded
    had none. A predictions.csv without its report.json says nothing of it."""
    try:
        report = json.loads((predictions.parent / FILES["json"]).read_text())
    except (OSError, ValueError):
        return False, None
    return (True, report.get("tta")) if isinstance(report, dict) else (False, None)


def _notes(a: EvaluatedRun, b: EvaluatedRun) -> list[str]:
    """Differences between the two evaluations that are not differences between the models."""
    notes = []
    if a.tta_known and b.tta_known and a.tta != b.tta:
        notes.append(f"The evaluations differ in test-time augmentation: A {describe_tta(a.tta)}, B "
                     f"{describe_tta(b.tta)} (report.json's tta), so part of the difference is the augmentation, "
                     f"not the models; evaluate both alike (`ftkit evaluate ... --tta`) to compare the models.")
    return notes


def _examples(items) -> list[str]:
    return sorted(items)[:EXAMPLES_IN_ERRORS]


def check_comparable(a: EvaluatedRun, b: EvaluatedRun) -> None:
    """Refuse two evaluations that are not over the same images, labels and classes."""
    if set(a.class_names) != set(b.class_names):
        raise ValueError(
            "The runs have different classes: only in A "
            f"{sorted(set(a.class_names) - set(b.class_names))}, only in B {sorted(set(b.class_names) - set(a.class_names))}. "
            f"Received: A={a.source}, B={b.source}"
        )
    only_a, only_b = set(a.paths) - set(b.paths), set(b.paths) - set(a.paths)
    if only_a or only_b:
        raise ValueError(
            f"The runs were evaluated on different images: {len(only_a)} only in A (e.g. {_examples(only_a)}), "
            f"{len(only_b)} only in B (e.g. {_examples(only_b)}). Evaluate both on the same data. "
            f"Received: A={a.source} ({len(a.paths)} images), B={b.source} ({len(b.paths)} images)"
        )
    true_b = dict(zip(b.paths, b.true, strict=True))
    disagree = [p for p, t in zip(a.paths, a.true, strict=True) if true_b[p] != t]
    if disagree:
        raise ValueError(
            f"The runs disagree on the true label of {len(disagree)} images (e.g. {_examples(disagree)}). "
            f"Received: A={a.source}, B={b.source}"
        )


def mcnemar(a_correct, b_correct) -> dict:
    """McNemar's test on paired correctness (two-sided).

    Exact binomial test on the discordant pairs when there are fewer than ``EXACT_MCNEMAR_BELOW`` of them,
    otherwise the chi-square statistic with Edwards' continuity correction, ``(|b - c| - 1)^2 / (b + c)``.
    """
    from scipy import stats

    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a = int((a_correct & ~b_correct).sum())
    only_b = int((~a_correct & b_correct).sum())
    n = only_a + only_b
    result = {"a_right_b_wrong": only_a, "a_wrong_b_right": only_b, "discordant": n}
    if n == 0:
        return {**result, "method": "none (no discordant pairs: the runs are right on the same images)",
                "statistic": None, "p_value": 1.0}
    if n < EXACT_MCNEMAR_BELOW:
        p_value = stats.binomtest(only_a, n, 0.5).pvalue
        return {**result, "method": f"exact binomial test (discordant pairs {n} < {EXACT_MCNEMAR_BELOW})",
                "statistic": float(only_a), "p_value": float(p_value)}
    statistic = (abs(only_a - only_b) - 1) ** 2 / n
    return {**result, "method": f"chi-square with continuity correction (discordant pairs {n} >= {EXACT_MCNEMAR_BELOW})",
            "statistic": float(statistic), "p_value": float(stats.chi2.sf(statistic, df=1))}


def _per_class(true_idx, a_idx, b_idx, class_names) -> dict:
    labels = np.arange(len(class_names))
    pa, ra, fa, support = skm.precision_recall_fscore_support(true_idx, a_idx, labels=labels, zero_division=0.0)
    pb, rb, fb, _ = skm.precision_recall_fscore_support(true_idx, b_idx, labels=labels, zero_division=0.0)
    return {
        name: {
            "support": int(support[c]),
            **{f"{metric}_{side}": float(values[c]) for metric, side, values in (
                ("precision", "a", pa), ("precision", "b", pb), ("recall", "a", ra), ("recall", "b", rb),
                ("f1", "a", fa), ("f1", "b", fb))},
            "f1_delta": float(fb[c] - fa[c]),
        }
        for c, name in enumerate(class_names)
    }


def _cell_differences(true_idx, a_idx, b_idx, class_names) -> tuple[list, list]:
    labels = np.arange(len(class_names))
    cm_a = skm.confusion_matrix(true_idx, a_idx, labels=labels)
    cm_b = skm.confusion_matrix(true_idx, b_idx, labels=labels)
    delta = cm_b - cm_a
    cells = [
        {"true": class_names[t], "predicted": class_names[p], "a": int(cm_a[t, p]), "b": int(cm_b[t, p]),
         "delta": int(delta[t, p])}
        for t, p in zip(*np.nonzero(delta), strict=True)
    ]
    cells.sort(key=lambda c: (-abs(c["delta"]), c["true"] != c["predicted"], c["true"], c["predicted"]))
    return delta.tolist(), cells


def compare_runs(run_a: str | Path, run_b: str | Path, *, out_dir: str | Path | None = None,
                 split: str = "test") -> dict:
    """Compare two evaluated runs; writes compare.json/.md/.html to ``out_dir`` when given."""
    a, b = load_evaluated(run_a, split=split), load_evaluated(run_b, split=split)
    check_comparable(a, b)
    class_names = a.class_names
    index = {name: i for i, name in enumerate(class_names)}
    row_b = {p: i for i, p in enumerate(b.paths)}
    order_b = [row_b[p] for p in a.paths]
    true_idx = np.array([index[t] for t in a.true])
    a_idx = np.array([index[p] for p in a.predicted])
    b_idx = np.array([index[b.predicted[i]] for i in order_b])
    b_conf = b.confidence[order_b]
    a_correct, b_correct = a_idx == true_idx, b_idx == true_idx
    delta, cells = _cell_differences(true_idx, a_idx, b_idx, class_names)

    def disagreements(mask):
        rows = [
            {"path": a.paths[i], "true": a.true[i], "predicted_a": class_names[a_idx[i]], "confidence_a": float(a.confidence[i]),
             "predicted_b": class_names[b_idx[i]], "confidence_b": float(b_conf[i])}
            for i in np.flatnonzero(mask)
        ]
        # The wrong run's confidence orders them: a confident mistake is the most telling.
        return sorted(rows, key=lambda r: -(r["confidence_b"] if r["true"] == r["predicted_a"] else r["confidence_a"]))

    result = {
        "a": {"run": a.name, "predictions": str(a.source), "accuracy": float(a_correct.mean()), "tta": a.tta},
        "b": {"run": b.name, "predictions": str(b.source), "accuracy": float(b_correct.mean()), "tta": b.tta},
        "notes": _notes(a, b),
        "class_names": class_names,
        "n_samples": len(a.paths),
        "accuracy_delta": float(b_correct.mean() - a_correct.mean()),
        "mcnemar": mcnemar(a_correct, b_correct),
        "per_class": _per_class(true_idx, a_idx, b_idx, class_names),
        "confusion_delta": delta,
        "cell_differences": cells,
        "a_right_b_wrong": disagreements(a_correct & ~b_correct),
        "a_wrong_b_right": disagreements(~a_correct & b_correct),
    }
    if out_dir is not None:
        write_comparison(result, out_dir)
    return result


def _runs_rows(result: dict) -> list[list[str]]:
    return [[side, result[side.lower()]["run"], f"{result[side.lower()]['accuracy']:.4f}"] for side in ("A", "B")]


def _summary_rows(result: dict) -> list[list[str]]:
    m = result["mcnemar"]
    return [
        ["Images", str(result["n_samples"])],
        ["Accuracy B - A", f"{result['accuracy_delta']:+.4f}"],
        ["A right, B wrong", str(m["a_right_b_wrong"])],
        ["A wrong, B right", str(m["a_wrong_b_right"])],
        ["McNemar's test", m["method"]],
        ["McNemar p-value", "n/a" if m["p_value"] is None else f"{m['p_value']:.4g}"],
    ]


def _per_class_rows(result: dict) -> list[list[str]]:
    return [
        [name, str(c["support"]), f"{c['f1_a']:.4f}", f"{c['f1_b']:.4f}", f"{c['f1_delta']:+.4f}", f"{c['recall_a']:.4f}",
         f"{c['recall_b']:.4f}"]
        for name, c in result["per_class"].items()
    ]


def _cell_rows(result: dict) -> list[list[str]]:
    return [[c["true"], c["predicted"], str(c["a"]), str(c["b"]), f"{c['delta']:+d}"] for c in result["cell_differences"]]


def _tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of every table, in order: compare.md and compare.html show the same ones."""
    return [
        ("Runs", ["", "run", "accuracy"], _runs_rows(result)),
        ("Summary", ["", "value"], _summary_rows(result)),
        ("Per class (F1)", PER_CLASS_HEADER, _per_class_rows(result)),
        ("Confusion cells that changed", CELL_HEADER, _cell_rows(result)),
    ]


def render_markdown(result: dict) -> str:
    parts = ["# Run comparison"]
    if result.get("notes"):
        parts += ["## Notes", "\n".join(f"- {note}" for note in result["notes"])]
    for title, header, rows in _tables(result):
        parts += [f"## {title}", md_table(header, rows)]
    for key, title in (("a_right_b_wrong", "A right, B wrong"), ("a_wrong_b_right", "A wrong, B right")):
        parts += [f"## {title} ({len(result[key])})"]
        lines = [f"- `{r['path']}`: true {r['true']}, A {r['predicted_a']}, B {r['predicted_b']}" for r in result[key]]
        if lines:
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def in_memory_pixels(predictions: str | Path, ids: list[str]) -> Callable[[str], np.ndarray] | None:
    """The pixels of in-memory rows (MNIST's ``test[12]``), read again from the data set the bundle's
    report.json names; ``None`` when ``ids`` are file paths or that data set is no longer there."""
    if not ids or not all(IN_MEMORY_ID.fullmatch(i) for i in ids):
        return None
    try:
        data = json.loads((Path(predictions).parent / FILES["json"]).read_text()).get("data", "")
    except (OSError, ValueError):
        return None
    # `ftkit evaluate` records "SOURCE (test split)" (a split training capped: "SOURCE (the run's test split)"),
    # training the bare SOURCE (relative to its working folder)
    source = Path(bundle_working_dir(predictions)) / re.sub(r" \((?:the run's )?\w+ split\)$", "", str(data))
    if not (sources.is_mnist_folder(source) or (source.is_file() and source.suffix.lower() == ".npz")):
        return None
    index = sources.scan_unchecked(source, val_fraction=0.0, test_fraction=0.0)
    rows = {(split.origin_name, int(origin)): (split.images, row)
            for split in index.splits.values() if split.images is not None for row, origin in enumerate(split.origin)}

    def pixels(row_id: str) -> np.ndarray:
        name, number = row_id[:-1].split("[")
        images, row = rows[(name, int(number))]
        return images[row]

    wanted = {(i[:-1].split("[")[0], int(i[:-1].split("[")[1])) for i in ids}
    return pixels if wanted <= rows.keys() else None


def _disagreement_gallery(rows: list[dict], predictions: str | Path) -> str:
    rows = rows[: gallery.MAX_THUMBNAILS // 2]
    ids = [r["path"] for r in rows]
    thumbs = gallery.thumbnails(ids, pixels=in_memory_pixels(predictions, ids))
    tiles = "".join(
        gallery.tile_html(
            r, thumbs[r["path"]],
            caption=f"true <b>{html.escape(r['true'])}</b><br>A: {html.escape(r['predicted_a'])} ({r['confidence_a']:.1%})"
            f"<br>B: {html.escape(r['predicted_b'])} ({r['confidence_b']:.1%})",
        )
        for r in rows
    )
    return f'<div class="grid">{tiles}</div>' if rows else "<p>None.</p>"


def write_comparison(result: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / COMPARE_FILES["json"]).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out_dir / COMPARE_FILES["markdown"]).write_text(printable(render_markdown(result)), encoding="utf-8")
    tables = "".join(f"<h2>{html.escape(title)}</h2>{html_table(header, rows)}" for title, header, rows in _tables(result))
    notes = "".join(f'<li class="note">{html.escape(note)}</li>' for note in result.get("notes", ()))
    body = (
        "<h1>Run comparison</h1>" + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "") + tables +
        f"<h2>A right, B wrong ({len(result['a_right_b_wrong'])})</h2>"
        f"{_disagreement_gallery(result['a_right_b_wrong'], result['a']['predictions'])}"
        f"<h2>A wrong, B right ({len(result['a_wrong_b_right'])})</h2>"
        f"{_disagreement_gallery(result['a_wrong_b_right'], result['a']['predictions'])}"
    )
    (out_dir / COMPARE_FILES["html"]).write_text(printable(html_page("ftkit run comparison", body)), encoding="utf-8")
