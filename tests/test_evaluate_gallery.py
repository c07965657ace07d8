"""The report's error gallery shows images as training decoded them (EXIF orientation, alpha over white, 16-bit
precision), and a file that no longer decodes as a placeholder that says why."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np
from _image_fixtures import BLUE, GREEN, RED, SIZE, WHITE, _encode, _exif_rotated_jpeg, _half_transparent_png  # noqa: E402,F401
from PIL import Image

from ftkit.evaluate import evaluate_predictions


def _truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    full = _encode(Image.fromarray(pixels), "JPEG", quality=95)
    return full[: len(full) * 2 // 3]


def _report_html(tmp_path: Path, files: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    """report.html for every file of ``files`` misclassified (class a called b), and each file's path."""
    paths = {}
    for name, data in files.items():
        paths[name] = str(tmp_path / name)
        Path(paths[name]).write_bytes(data)
    right = tmp_path / "right.png"
    right.write_bytes(_encode(Image.new("RGB", (SIZE, SIZE), BLUE), "PNG"))
    n = len(files)
    probs = np.array([[0.1 + 0.01 * i, 0.9 - 0.01 * i] for i in range(n)] + [[0.2, 0.8]])
    evaluate_predictions([*paths.values(), str(right)], np.array([0] * n + [1]), probs, ["a", "b"],
                         tmp_path / "report", top_k=())
    return (tmp_path / "report" / "report.html").read_text(encoding="utf-8"), paths


def _thumbnail(page: str, path: str) -> np.ndarray:
    """The pixels of ``path``'s thumbnail in the page (int array)."""
    alt = re.escape(html.escape(path))
    match = re.search(r'<img src="data:image/jpeg;base64,([^"]+)" alt="' + alt + '"', page)
    assert match, f"no thumbnail for {path}"
    with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _close(pixels: np.ndarray, color, tol: int = 40) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).mean(0) - np.asarray(color)).max() <= tol)


def test_thumbnails_are_decoded_as_training_decodes(tmp_path):
    page, paths = _report_html(tmp_path, {
        "rotated.jpg": _exif_rotated_jpeg(),
        "rgba.png": _half_transparent_png(),
        "gray16.png": _encode(Image.fromarray(np.full((SIZE, SIZE), 25700, np.uint16)), "PNG"),
    })
    half = SIZE // 2
    rotated = _thumbnail(page, paths["rotated.jpg"])
    assert _close(rotated[2: half - 2, 2:-2], RED) and _close(rotated[half + 2: -2, 2:-2], BLUE)
    rgba = _thumbnail(page, paths["rgba.png"])
    assert _close(rgba[2:-2, 2: half - 2], RED, 12) and _close(rgba[2:-2, half + 2: -2], WHITE, 12)
    gray16 = _thumbnail(page, paths["gray16.png"])
    assert np.abs(gray16[2:-2, 2:-2] - 100).max() <= 3  # 25700 / 257, not clipped to white


def test_a_file_that_no_longer_decodes_gets_a_placeholder_with_the_reason(tmp_path):
    # Scored while it was fine, damaged before the report was written.
    page, paths = _report_html(tmp_path, {"fine.jpg": _exif_rotated_jpeg(), "gone.jpg": _truncated_jpeg()})
    assert _thumbnail(page, paths["fine.jpg"]).shape == (SIZE, SIZE, 3)
    title = re.escape(html.escape(paths["gone.jpg"]))
    tile = re.search(r'<figure class="tile" title="' + title + r'">(.*?)</figure>', page)
    assert tile and "<img" not in tile.group(1)
    assert "truncated or corrupt" in tile.group(1)


def test_in_memory_images_get_their_own_thumbnails():
    """MNIST's rows are identifiers (``test/3``), not files: the gallery shows their pixels, enlarged."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from ftkit.evaluate import gallery

    digit = np.zeros((28, 28), np.uint8)
    digit[:, :14] = 255
    thumbs = gallery.thumbnails(["test/0"], pixels=lambda path: digit)
    data = base64.b64decode(thumbs["test/0"].uri.split(",", 1)[1])
    shown = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert shown.shape == (112, 112)  # 4x, pixel for pixel
    assert shown[:, :50].mean() > 240 and shown[:, 62:].mean() < 15
