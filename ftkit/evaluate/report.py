"""The evaluation bundle: report.json, report.md, report.html, confusion-matrix and reliability PNGs,
predictions.csv.

The HTML is a small handwritten template with inline CSS and every image embedded as a ``data:`` URI, so
``report.html`` is one file that opens from disk. A templating or reporting library would add a heavy
dependency for what is a few tables and image grids.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftkit.data.sources import printable
from ftkit.evaluate import gallery, plots
from ftkit.evaluate.images import count_by_reason, describe
from ftkit.evaluate.runs import describe_tta

FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "confusion_matrix": "confusion_matrix.png",
    "confusion_matrix_normalized": "confusion_matrix_normalized.png",
    "reliability": "reliability.png",
    "predictions": "predictions.csv",
}
PREDICTION_COLUMNS = ("path", "true_label", "predicted_label", "confidence", "correct")
PROB_PREFIX = "prob_"
# The ids in-memory data (MNIST) gives its rows in place of paths, ``test[12]`` (ftkit.data.sources.Split.ids).
IN_MEMORY_ID = re.compile(r"[\w.-]+\[\d+\]")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int | np.integer):
        return str(value)
    return f"{value:.{digits}f}"


def write_predictions_csv(path: Path, paths: Sequence[str], y_true, probs, class_names: Sequence[str]) -> None:
    """One row per image in evaluation order: path, true and predicted class, confidence, all probabilities.

    Probabilities are written as the shortest text that reads back as the same value of their dtype (``0.1``
    for float32's 0.1): rounded to a fixed number of decimals, small ones became ties and zeros, and ROC-AUC and
    log loss recomputed from the file no longer matched the report's."""
    probs = np.asarray(probs)
    y_pred = probs.argmax(axis=1)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow([*PREDICTION_COLUMNS, *(PROB_PREFIX + name for name in class_names)])
        for file_path, t, p, row in zip(paths, y_true, y_pred, probs, strict=True):
            # str() of a numpy float is its dtype's shortest round-trip repr.
            writer.writerow([file_path, class_names[t], class_names[p], str(row[p]), int(t == p), *map(str, row)])


def read_predictions_csv(path: str | Path) -> tuple[list[str], list[str], list[str], np.ndarray, list[str]]:
    """``(paths, true labels, predicted labels, probs, class_names)`` from a ``predictions.csv``."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or tuple(header[: len(PREDICTION_COLUMNS)]) != PREDICTION_COLUMNS:
            raise ValueError(
                f"Not an ftkit predictions.csv (expected columns {list(PREDICTION_COLUMNS)} first). "
                f"Received: file={str(path)!r} with header {header!r}"
            )
        class_names = [column[len(PROB_PREFIX) :] for column in header[len(PREDICTION_COLUMNS) :]]
        rows = list(reader)
    probs = np.array([[float(v) for v in row[len(PREDICTION_COLUMNS) :]] for row in rows]).reshape(len(rows), len(class_names))
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], probs, class_names


def bundle_working_dir(predictions: str | Path) -> str:
    """The folder relative paths in a ``predictions.csv`` are relative to: the ``working_dir`` its
    ``report.json`` records, or for bundles written before it was recorded, the current folder."""
    try:
        recorded = json.loads((Path(predictions).parent / FILES["json"]).read_text()).get("working_dir")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, str) and recorded else os.getcwd()


def resolve_row_path(path: str, working_dir: str | Path) -> str:
    """A ``predictions.csv`` row's path as an absolute, normalised path (relative ones from ``working_dir``), so
    rows of two bundles that name the same file match and their images are found from any folder; in-memory
    ids (``test[12]``) are returned as they are."""
    if IN_MEMORY_ID.fullmatch(path):
        return path
    return os.path.normpath(os.path.join(os.path.abspath(working_dir), path))


def _summary_rows(report: dict) -> list[tuple[str, str]]:
    rows = [
        ("Images evaluated", str(report["n_samples"])),
        ("Files skipped", count_by_reason(report["skipped"])),
        ("Accuracy", _fmt(report["accuracy"])),
        ("Balanced accuracy", _fmt(report["balanced_accuracy"])),
    ]
    rows += [(f"Top-{k} accuracy", _fmt(v)) for k, v in report["top_k_accuracy"].items()]
    rows += [
        ("Macro F1", _fmt(report["macro_avg"]["f1"])),
        ("Weighted F1", _fmt(report["weighted_avg"]["f1"])),
        ("Matthews correlation", _fmt(report["mcc"])),
        ("Cohen's kappa", _fmt(report["cohen_kappa"])),
        ("ROC-AUC (one-vs-rest, macro)", _fmt(report["roc_auc"]["macro"])),
        ("Log loss", _fmt(report["log_loss"])),
        (f"Expected calibration error ({report['ece_n_bins']} equal-width bins)", _fmt(report["ece"])),
    ]
    return rows


def _per_class_rows(report: dict) -> list[list[str]]:
    rows = [
        [name, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), str(m["support"]), _fmt(m["roc_auc"])]
        for name, m in report["per_class"].items()
    ]
    for label, avg in (("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])):
        rows.append([label, _fmt(avg["precision"]), _fmt(avg["recall"]), _fmt(avg["f1"]), str(avg["support"]), ""])
    return rows


PER_CLASS_HEADER = ["class", "precision", "recall", "F1", "support", "ROC-AUC (OvR)"]
CONFUSED_HEADER = ["true", "predicted as", "images", "share of true class"]


def _confused_rows(report: dict) -> list[list[str]]:
    return [[c["true"], c["predicted"], str(c["count"]), f"{c['fraction_of_true']:.1%}"] for c in report["most_confused"]]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _notes(report: dict) -> list[str]:
    """Which split of the data was evaluated, warnings about the data (an empty class folder left out), then
    notes on undefined metrics."""
    return [*filter(None, [report.get("split_note")]), *report.get("warnings", ()), *report["notes"]]


def _tta_line(report: dict) -> str:
    """The line saying the probabilities were averaged over test-time augmentation; empty without it (and for
    reports written before it existed)."""
    tta = report.get("tta")
    line = describe_tta(tta) if tta else ""
    return line[:1].upper() + line[1:]


def render_markdown(report: dict) -> str:
    """report.md: the same numbers as report.json, with the PNGs linked beside it."""
    tta = _tta_line(report)
    parts = [
        "# Evaluation report",
        f"Model: `{report['model']}`  \nData: `{report['data']}`" + (f"  \n{tta}" if tta else ""),
        "## Summary",
        md_table(["metric", "value"], _summary_rows(report)),
        "## Per class",
        md_table(PER_CLASS_HEADER, _per_class_rows(report)),
        "## Most confused pairs",
        md_table(CONFUSED_HEADER, _confused_rows(report)) if report["most_confused"] else "No misclassified images.",
        "## Figures",
        f"![confusion matrix]({FILES['confusion_matrix']})\n\n"
        f"![row-normalised confusion matrix]({FILES['confusion_matrix_normalized']})\n\n"
        f"![reliability diagram]({FILES['reliability']})",
        f"Misclassified images with thumbnails: [{FILES['html']}]({FILES['html']}); every prediction: "
        f"[{FILES['predictions']}]({FILES['predictions']}).",
    ]
    notes = _notes(report)
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    if report["skipped"]:
        parts += ["## Skipped files", "\n".join(f"- `{s['path']}`: {describe(s)}" for s in report["skipped"])]
    return "\n\n".join(parts) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f3f5f8} tr:nth-child(even) td{background:#fafafa}
.meta{color:#555} .figures{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.figures img{max-width:100%;height:auto;border:1px solid #eee} .fig{max-width:100%;overflow:auto}
.fig img.zoomable{cursor:zoom-in} .fig img.full{max-width:none;cursor:zoom-out} .fig p{margin:.2rem 0}
.grid{display:flex;flex-wrap:wrap;gap:.6rem} .tile{margin:0;width:150px;font-size:.75rem}
.tile img{width:128px;height:128px;object-fit:contain;background:#f3f3f3;display:block}
.tile code{word-break:break-all;color:#666;font-size:.68rem} .missing{width:128px;height:128px;background:#eee;
display:flex;align-items:center;justify-content:center;text-align:center;color:#999} .note{color:#8a5a00}
"""


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"



def html_page(title: str, body: str) -> str:
    """A complete standalone page (inline CSS, empty favicon so browsers request nothing from disk)."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>'
        f"<body>{body}</body></html>\n"
    )


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _gallery_html(cells: list[dict], shown: int, total_wrong: int, pixels=None) -> str:
    if not cells:
        return "<p>No misclassified images.</p>"
    thumbs = gallery.thumbnails([item["path"] for cell in cells for item in cell["items"]], pixels=pixels)
    parts = [f'<p class="meta">Showing {shown} of {total_wrong} misclassified images, most confident mistakes first.</p>']
    for cell in cells:
        if not cell["items"]:
            continue
        title = f"{cell['true']} → {cell['predicted']}"
        shown_here = f" (showing {len(cell['items'])})" if len(cell["items"]) < cell["count"] else ""
        tiles = "".join(gallery.misclassified_tile(item, thumbs[item["path"]]) for item in cell["items"])
        images = "image" if cell["count"] == 1 else "images"
        parts.append(f"<h3>{html.escape(title)}: {cell['count']} {images}{shown_here}</h3><div class=\"grid\">{tiles}</div>")
    return "".join(parts)


PAGE_WIDTH = 1200  # CSS pixels of content: the body's max-width (its padding lies outside it)


def _figure_html(path: Path, alt: str) -> str:
    """A figure at page width; one wider than the page (a confusion matrix of many classes, whose labels are
    unreadable when shrunk) toggles to its full size, scrollable, on a click."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    tag = f'<img src="{png_data_uri(path)}" alt="{alt}" width="{width}" height="{height}"'
    if width <= PAGE_WIDTH:
        return f'<div class="fig">{tag}></div>'
    return (f'<div class="fig"><p class="meta">Shrunk to the page: click the image for its full size ({width}x{height} '
            f'pixels), again to shrink it.</p>{tag} class="zoomable" title="click for full size" '
            f'onclick="this.classList.toggle(\'full\')"></div>')


def render_html(report: dict, out_dir: Path, cells: list[dict], pixels=None) -> str:
    """report.html: summary, figures, tables and the misclassified-image gallery in one file (``pixels``: see
    :func:`write_bundle`)."""
    total_wrong = sum(cell["count"] for cell in cells)
    shown = gallery.cap_items(cells)
    figures = "".join(
        _figure_html(out_dir / FILES[key], alt)
        for key, alt in (
            ("confusion_matrix", "confusion matrix (counts)"),
            ("confusion_matrix_normalized", "confusion matrix normalised by true class"),
            ("reliability", "reliability diagram"),
        )
    )
    notes = "".join(f'<li class="note">{html.escape(n)}</li>' for n in _notes(report))
    skipped = "".join(f"<li><code>{html.escape(s['path'])}</code>: {html.escape(describe(s))}</li>" for s in report["skipped"])
    tta = _tta_line(report)
    body = (
        f"<h1>Evaluation report</h1><p class=\"meta\">Model <code>{html.escape(report['model'])}</code><br>"
        f"Data <code>{html.escape(report['data'])}</code>" + (f"<br>{html.escape(tta)}" if tta else "") + "</p>"
        f"<h2>Summary</h2>{html_table(['metric', 'value'], _summary_rows(report))}"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + f'<h2>Confusion matrices and calibration</h2><div class="figures">{figures}</div>'
        f"<h2>Per class</h2>{html_table(PER_CLASS_HEADER, _per_class_rows(report))}"
        f"<h2>Most confused pairs</h2>"
        + (html_table(CONFUSED_HEADER, _confused_rows(report)) if report["most_confused"] else "<p>None.</p>")
        + f"<h2>Misclassified images</h2>{_gallery_html(cells, shown, total_wrong, pixels)}"
        + (f"<h2>Skipped files</h2><ul>{skipped}</ul>" if skipped else "")
    )
    return html_page("ftkit evaluation report", body)


def write_bundle(
    out_dir: str | Path, report: dict, *, paths: Sequence[str], y_true, probs, images=None
) -> dict:
    """Write every bundle file into ``out_dir`` (created if needed); returns ``report`` with ``files`` added.

    ``images``: the decoded uint8 images of in-memory data (MNIST), row for row with ``paths`` (which are then
    identifiers, not files), for the gallery's thumbnails."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = report["class_names"]
    # working_dir: what relative paths in predictions.csv are relative to (bundle_working_dir).
    report = {**report, "out_dir": str(out_dir.resolve()), "working_dir": os.getcwd(), "files": dict(FILES)}
    write_predictions_csv(out_dir / FILES["predictions"], paths, y_true, probs, class_names)
    plots.save_confusion_matrix(
        report["confusion_matrix"], class_names, out_dir / FILES["confusion_matrix"], normalized=False,
        title="Confusion matrix (counts)",
    )
    plots.save_confusion_matrix(
        report["confusion_matrix_normalized"], class_names, out_dir / FILES["confusion_matrix_normalized"],
        normalized=True, title="Confusion matrix (each row sums to 1)",
    )
    plots.save_reliability_diagram(y_true, probs, out_dir / FILES["reliability"], n_bins=report["ece_n_bins"], ece=report["ece"])
    (out_dir / FILES["json"]).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out_dir / FILES["markdown"]).write_text(printable(render_markdown(report)), encoding="utf-8")
    cells = gallery.misclassified_cells(paths, y_true, probs, class_names)
    pixels = None
    if images is not None:
        row_of = {path: i for i, path in enumerate(paths)}
        pixels = lambda path: images[row_of[path]]  # noqa: E731 - one lookup, named for the call below
    (out_dir / FILES["html"]).write_text(printable(render_html(report, out_dir, cells, pixels)), encoding="utf-8")
    return report
