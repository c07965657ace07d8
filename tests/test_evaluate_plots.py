"""The confusion-matrix figure: a single error stays visible beside a large diagonal at any class count, and the
colour bar says what the colour means."""

import numpy as np
import pytest
from PIL import Image

from ftkit.evaluate import plots

ERRORS = [(3, 7), (10, 11), (20, 40), (33, 2), (45, 46)]  # (true, predicted) cells with a count of 1
EMPTY = (5, 30)


def _fifty_classes(*, normalized: bool) -> np.ndarray:
    counts = np.diag(np.full(50, 50))
    for true, predicted in ERRORS:
        counts[true, predicted] = 1
    return counts / counts.sum(axis=1, keepdims=True) if normalized else counts


def _cell_pixels(fig, path, cells) -> list[np.ndarray]:
    """RGB (0-1) at the centre of each ``(row, column)`` cell of the saved PNG."""
    fig.savefig(path, dpi=plots.DPI)
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB")) / 255.0
    ax = fig.axes[0]
    centres = ax.transData.transform([(column, row) for row, column in cells])  # display: origin bottom left
    return [pixels[pixels.shape[0] - 1 - round(y), round(x)] for x, y in centres]


@pytest.mark.parametrize("normalized", [False, True], ids=["counts", "normalized"])
def test_a_single_error_beside_a_diagonal_of_50_is_clearly_coloured(tmp_path, normalized):
    matrix = _fifty_classes(normalized=normalized)
    fig = plots.confusion_figure(matrix, [f"class_{i:02d}" for i in range(50)], normalized=normalized, title="t")
    image = fig.axes[0].images[0]
    colours = image.to_rgba(image.get_array())[..., :3]  # what the norm and colour map make of each cell
    empty = colours[EMPTY]
    np.testing.assert_allclose(empty, 1.0)  # zero is white
    for cell in ERRORS:
        assert np.abs(colours[cell] - empty).max() > 0.15, f"cell {cell} looks empty: {colours[cell]}"
        assert colours[cell].sum() > colours[cell[0], cell[0]].sum() + 0.5  # and lighter than the diagonal

    # The same in the written PNG, read at the cells' centres.
    empty_px, *error_px = _cell_pixels(fig, tmp_path / "cm.png", [EMPTY, *ERRORS])
    np.testing.assert_allclose(empty_px, 1.0)
    assert all(np.abs(px - empty_px).max() > 0.15 for px in error_px), error_px

    label = image.colorbar.ax.get_ylabel()
    assert label == plots.colour_bar_label(normalized=normalized)
    assert ("fraction of the true class" if normalized else "images") in label
    assert "log scale" in label and "white = 0" in label


def test_small_matrices_keep_their_numbers_readable_on_the_new_colours():
    fig = plots.confusion_figure(np.array([[90, 10, 0], [27, 73, 1], [0, 2, 48]]), ["cats", "dogs", "birds"],
                                 normalized=False, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["90", "10", "0", "27", "73", "1", "0", "2", "48"]
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    # White on the dark diagonal, black on white (zero) and on the palest tint (one image).
    assert (colours["90"], colours["0"], colours["1"]) == ("white", "black", "black")
    ticks = [tick.get_text() for tick in ax.images[0].colorbar.ax.get_yticklabels()]
    assert ticks == ["1", "2", "5", "10", "20", "50"]  # plain numbers on the log scale, not 10^0


def test_a_count_bar_never_shows_fractions_of_an_image():
    """With a largest count under 10 the scale still spans a decade (0.4 to 4 here): no tick below one image."""
    fig = plots.confusion_figure(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 4]]), ["a", "b", "c"], normalized=False,
                                 title="t")
    assert [tick.get_text() for tick in fig.axes[0].images[0].colorbar.ax.get_yticklabels()] == ["1", "2"]


@pytest.mark.parametrize("normalized", [False, True], ids=["counts", "normalized"])
@pytest.mark.parametrize("matrix", [np.zeros((3, 3)), np.eye(3)], ids=["empty", "perfect"])
def test_degenerate_matrices_draw(tmp_path, matrix, normalized):
    matrix = matrix if normalized else matrix.astype(int)
    assert plots.save_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "cm.png", normalized=normalized,
                                       title="t") == (600, 500)
    fig = plots.confusion_figure(matrix, ["a", "b", "c"], normalized=normalized, title="t")
    image = fig.axes[0].images[0]
    colours = image.to_rgba(image.get_array())[..., :3]
    np.testing.assert_allclose(colours[0, 1], 1.0)  # an empty cell is white
    if matrix.any():  # a perfect diagonal is drawn at the dark end
        assert colours[0, 0].max() < 0.5
