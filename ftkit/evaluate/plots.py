"""The report's figures: confusion matrices (scikit-learn's display) and the reliability diagram.

Figures are sized from the class count so 2 and 50 classes both stay readable; the PNG's pixel size is
exactly ``figure_size * DPI`` (constrained layout, no tight bounding box) so callers know what they get.
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


def save_confusion_matrix(
    matrix, class_names: Sequence[str], path: str | Path, *, normalized: bool, title: str
) -> tuple[int, int]:
    """Write one confusion-matrix PNG; returns its ``(width, height)`` in pixels.

    Per-cell numbers are drawn only up to ``MAX_CLASSES_WITH_VALUES`` classes; above that they would
    overlap, and the colour carries the information.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(class_names)
    size = confusion_figure_size(n)
    # A bare Figure (no pyplot) leaves the caller's matplotlib backend and global state alone.
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names))
    display.plot(
        ax=ax,
        cmap="Blues",
        include_values=n <= MAX_CLASSES_WITH_VALUES,
        values_format=".2f" if normalized else "d",
        xticks_rotation=45 if n <= 10 else 90,
        colorbar=True,
        text_kw={"fontsize": _tick_fontsize(n)},
    )
    if normalized:
        display.im_.set_clim(0.0, 1.0)
    ax.tick_params(labelsize=_tick_fontsize(n))
    ax.set_title(title)
    fig.savefig(path, dpi=DPI)
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
