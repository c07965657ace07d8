"""The report's figures: confusion matrices (scikit-learn's display) and the reliability diagram.

Figures are sized from the class count so 2 and 50 classes both stay readable; the PNG's pixel size is
exactly ``figure_size * DPI`` (constrained layout, no tight bounding box) so callers know what they get.
Confusion-matrix cells are coloured on a log scale with zero cells white, so one error among 50 correct
images is as plain to see in a 50-class matrix as in a 2-class one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 100
MAX_CLASSES_WITH_VALUES = 25


def confusion_figure_size(n_classes: int) -> tuple[float, float]:
    """Inches: about a third of an inch per class plus room for labels, between 5 and 24 inches square."""
    side = float(min(24.0, max(5.0, 3.0 + 0.38 * n_classes)))
    return side + 1.0, side  # the extra inch is the colour bar


def _tick_fontsize(n_classes: int) -> float:
    return 10.0 if n_classes <= 10 else max(7.0, 10.0 - 0.1 * n_classes)


# Blues from 30% up: the smallest non-zero value is a clear tint (about 0.28 below white in red), while zero,
# which a log norm leaves out as "bad", is white. From the bottom of Blues a count of 1 beside a diagonal of 50
# was drawn in the near-white of an empty cell, and the errors a reader looks for disappeared.
_CELL_COLOURS = (0.3, 1.0)


def _cell_colormap():
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    blues = colormaps["Blues"](np.linspace(*_CELL_COLOURS, 256))
    return ListedColormap(blues, name="Blues_from_tint").with_extremes(bad="white")


def _cell_norm(matrix: np.ndarray, *, normalized: bool):
    """Log scale from the smallest non-zero value (one image; the smallest non-zero rate) to the largest (the
    biggest count; a rate of 1): the smallest gets the palest tint, however large the diagonal."""
    from matplotlib.colors import LogNorm

    positive = matrix[matrix > 0]
    vmin = float(positive.min()) if normalized and positive.size else 1.0
    vmax = 1.0 if normalized else float(max(matrix.max(initial=0), 1))
    return LogNorm(vmin=min(vmin, vmax / 10), vmax=vmax)  # a decade at least: a colour bar needs a range


def colour_bar_label(*, normalized: bool) -> str:
    """What the cell colour means, written along the colour bar."""
    return f"{'fraction of the true class' if normalized else 'images'}, log scale; white = 0"


def confusion_figure(matrix, class_names: Sequence[str], *, normalized: bool, title: str):
    """The confusion-matrix figure (a bare matplotlib ``Figure``) that :func:`save_confusion_matrix` writes.

    Cells are coloured on a log scale with zero cells white, so a single error stands out against a large
    diagonal at any class count; the colour bar says so. Per-cell numbers are drawn only up to
    ``MAX_CLASSES_WITH_VALUES`` classes; above that they would overlap, and the colour carries the information.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(matrix)
    n = len(class_names)
    # A bare Figure (no pyplot) leaves the caller's matplotlib backend and global state alone.
    fig = Figure(figsize=confusion_figure_size(n), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(
        ax=ax,
        cmap=_cell_colormap(),
        include_values=n <= MAX_CLASSES_WITH_VALUES,
        values_format=".2f" if normalized else "d",
        xticks_rotation=45 if n <= 10 else 90,
        colorbar=True,
        im_kw={"norm": _cell_norm(matrix, normalized=normalized)},
        text_kw={"fontsize": _tick_fontsize(n)},
    )
    if display.text_ is not None:
        _contrast_text(display)
    _label_colour_bar(display.im_.colorbar, normalized=normalized)
    ax.tick_params(labelsize=_tick_fontsize(n))
    ax.set_title(title)
    return fig


def _label_colour_bar(colour_bar, *, normalized: bool) -> None:
    """Ticks at 1-2-5 steps in plain numbers (0.02, 5, 10), not powers of ten, and what the colour means."""
    from matplotlib.ticker import NullFormatter

    low, high = colour_bar.norm.vmin, colour_bar.norm.vmax
    steps = (1, 2, 5) if np.log10(high / low) <= 4 else (1,)
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    candidates = [step * 10.0**d for d in decades for step in steps]
    # A count bar whose range was widened below 1 (a largest count under 10) would show fractions of an image.
    floor = low if normalized else max(low, 1.0)
    ticks = [tick for tick in candidates if floor * (1 - 1e-9) <= tick <= high * (1 + 1e-9)]
    colour_bar.set_ticks(ticks, labels=[f"{tick:g}" for tick in ticks])
    colour_bar.ax.yaxis.set_minor_formatter(NullFormatter())
    colour_bar.set_label(colour_bar_label(normalized=normalized))


def _contrast_text(display) -> None:
    """White numbers on dark cells, black on light ones: scikit-learn picks them from the linear midpoint of the
    values, which a log colour scale does not follow."""
    colours = display.im_.to_rgba(display.im_.get_array())
    for (i, j), text in np.ndenumerate(display.text_):
        red, green, blue = colours[i, j, :3]
        text.set_color("white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black")


def save_confusion_matrix(
    matrix, class_names: Sequence[str], path: str | Path, *, normalized: bool, title: str
) -> tuple[int, int]:
    """Write one confusion-matrix PNG (:func:`confusion_figure`); returns its ``(width, height)`` in pixels."""
    size = confusion_figure_size(len(class_names))
    confusion_figure(matrix, class_names, normalized=normalized, title=title).savefig(path, dpi=DPI)
    return round(size[0] * DPI), round(size[1] * DPI)


def save_reliability_diagram(y_true, probs, path: str | Path, *, n_bins: int, ece: float) -> None:
    """Top-label reliability diagram: per confidence bin, accuracy against mean confidence.

    Top-label calibration is binary calibration of ``correct`` against the top-1 confidence, so
    scikit-learn's ``CalibrationDisplay`` draws it with the same uniform bins as the reported ECE.
    """
    from matplotlib.figure import Figure
    from sklearn.calibration import CalibrationDisplay

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(int)
    fig = Figure(figsize=(5.5, 6.5), dpi=DPI, layout="constrained")
    ax, ax_hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    CalibrationDisplay.from_predictions(
        correct, confidence, n_bins=n_bins, strategy="uniform", pos_label=1, ax=ax, name="model"
    )
    ax.legend(loc="upper left")
    ax.set_xlabel("")
    ax.set_ylabel("Accuracy in bin")
    ax.set_title(f"Reliability (top-1 confidence, {n_bins} bins), ECE = {ece:.4f}")
    ax_hist.hist(confidence, bins=np.linspace(0, 1, n_bins + 1), color="#4c72b0")
    ax_hist.set_xlabel("Top-1 confidence")
    ax_hist.set_ylabel("Images")
    fig.savefig(path, dpi=DPI)
