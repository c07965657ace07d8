"""``ftkit augment preview`` shows what training is fed: its index (folders, CSV, MNIST) and its decoder (EXIF
orientation, alpha over white, 16-bit precision); bad files are skipped and reported, never raised."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import yaml
from _image_fixtures import BLUE, GREEN, RED, SIZE, WHITE, _encode, _exif_rotated_jpeg, _half_transparent_png  # noqa: E402,F401
from PIL import Image

from ftkit.cli import main


def _gray16_png(value: int = 25700) -> bytes:
    """16-bit grayscale; 25700 / 257 = 100 in 8 bits."""
    return _encode(Image.fromarray(np.full((SIZE, SIZE), value, np.uint16)), "PNG")


def _jpeg(color) -> bytes:
    return _encode(Image.new("RGB", (SIZE, SIZE), color), "JPEG", quality=95)


def _bomb_png(width: int = 20_000, height: int = 10_000) -> bytes:
    """A PNG whose header claims 200 megapixels (over Pillow's decompression-bomb error), with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    full = _encode(Image.fromarray(pixels), "JPEG", quality=95)
    return full[: len(full) * 2 // 3]


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _recipe(tmp_path: Path, train, *, size: int = SIZE) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"train": str(train), "image_size": [size, size], "val_fraction": 0.0},  # every file in train
        "augment": {"backend": "none"},
        "backbone": {"name": "resnet18"},
        "schedule": {"preset": "freeze"},
    }))
    return recipe


def _preview(tmp_path: Path, recipe: Path, *, samples: int, variants: int = 1) -> int:
    out = tmp_path / "grid.png"
    return main(["augment", "preview", str(recipe), "--out", str(out), "--samples", str(samples),
                 "--variants", str(variants)])


def _originals(tmp_path: Path, *, rows: int, size: int = SIZE) -> list[np.ndarray]:
    """The first column's tiles (int arrays), wherever the column labels are drawn (a strip above the tiles)."""
    with Image.open(tmp_path / "grid.png") as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    strip = pixels.shape[0] - rows * size
    assert strip >= 0
    return [pixels[strip + r * size: strip + (r + 1) * size, :size] for r in range(rows)]


def _close(pixels: np.ndarray, color, tol: int = 40) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).mean(0) - np.asarray(color)).max() <= tol)


def test_preview_decodes_as_training_does(tmp_path):
    data = _write(tmp_path / "data", {
        "a/gray16.png": _gray16_png(),
        "a/rgba.png": _half_transparent_png(),
        "b/rotated.jpg": _exif_rotated_jpeg(),
    })
    assert _preview(tmp_path, _recipe(tmp_path, data), samples=3) == 0
    gray16, rgba, rotated = _originals(tmp_path, rows=3)
    half = SIZE // 2
    # 16-bit precision kept until the final rounding: 25700 -> 100, not clipped to white.
    assert np.abs(gray16[2:-2, 2:-2] - 100).max() <= 1
    # Alpha composited over white, as training does: the hidden green must not show.
    assert _close(rgba[2:-2, 2: half - 2], RED, 2) and _close(rgba[2:-2, half + 2: -2], WHITE, 2)
    # EXIF orientation 6 applied: the stored left (red) band stands on top.
    assert _close(rotated[2: half - 2, 2:-2], RED) and _close(rotated[half + 2: -2, 2:-2], BLUE)


def test_column_labels_do_not_cover_the_tiles(tmp_path):
    data = _write(tmp_path / "data", {"a/red.png": _encode(Image.new("RGB", (SIZE, SIZE), RED), "PNG"),
                                      "b/blue.png": _encode(Image.new("RGB", (SIZE, SIZE), BLUE), "PNG")})
    assert _preview(tmp_path, _recipe(tmp_path, data), samples=2, variants=2) == 0
    with Image.open(tmp_path / "grid.png") as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    strip = pixels.shape[0] - 2 * SIZE
    assert strip > 0, "the labels need a strip of their own"
    assert pixels.shape[1] == 3 * SIZE
    tiles = pixels[strip:]
    # Every pixel of every tile is the image's: no label drawn over any of them.
    assert (tiles[:SIZE] == RED).all() and (tiles[SIZE:] == BLUE).all()


def test_bad_files_are_skipped_and_reported_not_raised(tmp_path, caplog):
    data = _write(tmp_path / "data", {
        "a/bomb.png": _bomb_png(),
        "a/empty.jpg": b"",
        "a/good1.jpg": _jpeg(RED),
        "a/good2.jpg": _jpeg(RED),
        "a/text.jpg": b"this is not a picture\n",
        "a/truncated.jpg": _truncated_jpeg(),
        "b/good1.jpg": _jpeg(BLUE),
        "b/good2.jpg": _jpeg(BLUE),
        "b/good3.jpg": _jpeg(BLUE),
    })
    with caplog.at_level(logging.WARNING):
        assert _preview(tmp_path, _recipe(tmp_path, data), samples=4) == 0
    log = caplog.text
    for name, reason in (("bomb.png", "too large"), ("empty.jpg", "empty file"), ("text.jpg", "not an image"),
                         ("truncated.jpg", "truncated or corrupt")):
        line = next((line for line in log.splitlines() if name in line), "")
        assert reason in line, f"{name} not reported with its reason in:\n{log}"
    # truncated.jpg was among the spread picks; a good file took its place, and the rows keep the class order.
    rows = _originals(tmp_path, rows=4)
    assert [_close(tile, RED) for tile in rows] == [True, True, False, False]
    assert all(_close(tile, BLUE) for tile in rows[2:])


def test_nothing_decodable_is_a_clear_error(tmp_path, capsys, caplog):
    data = _write(tmp_path / "data", {"a/empty.jpg": b"", "b/text.jpg": b"not a picture\n",
                                      "b/truncated.jpg": _truncated_jpeg()})
    with caplog.at_level(logging.WARNING):
        assert _preview(tmp_path, _recipe(tmp_path, data), samples=2) == 2
    error = capsys.readouterr().err
    assert "no decodable" in error and str(data) in error
    assert "truncated.jpg" in caplog.text and "empty.jpg" in caplog.text
    assert not (tmp_path / "grid.png").exists()


def test_csv_recipe(tmp_path):
    data = _write(tmp_path / "data", {"img/0.jpg": _jpeg(RED), "img/1.jpg": _jpeg(BLUE),
                                      "img/2.jpg": _exif_rotated_jpeg()})
    table = data / "labels.csv"
    table.write_text("path,label\nimg/0.jpg,red\nimg/1.jpg,blue\nimg/2.jpg,red\n")
    assert _preview(tmp_path, _recipe(tmp_path, table), samples=3) == 0
    # CSV order: red, blue, then the rotated one, red band on top.
    first, second, rotated = _originals(tmp_path, rows=3)
    assert _close(first, RED) and _close(second, BLUE)
    assert _close(rotated[2: SIZE // 2 - 2], RED) and _close(rotated[SIZE // 2 + 2: -2], BLUE)


def test_a_recipe_without_augmentation_says_so(tmp_path, caplog):
    data = _write(tmp_path / "data", {"red/0.jpg": _jpeg(RED), "blue/0.jpg": _jpeg(BLUE)})
    assert _preview(tmp_path, _recipe(tmp_path, data), samples=2) == 0
    assert [r.getMessage() for r in caplog.records if "no augmentation" in r.getMessage()] == [
        "the recipe has no augmentation (augment.backend is 'none', no mixup or cutmix): every variant in the "
        "grid equals its original"]


def test_mnist_npz_recipe(tmp_path):
    digits = np.zeros((20, 28, 28), np.uint8)
    digits[:, :14] = 255  # top half white
    labels = np.arange(20, dtype=np.uint8) % 10
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=digits, y_train=labels, x_test=digits[:5], y_test=labels[:5])
    assert _preview(tmp_path, _recipe(tmp_path, npz, size=28), samples=3) == 0
    for tile in _originals(tmp_path, rows=3, size=28):
        assert (tile[:14] == 255).all() and (tile[14:] == 0).all()


def test_resize_policy_applies_to_originals_and_variants(tmp_path):
    """A wide image under ``data.resize: pad`` is letterboxed, as training feeds it; a policy that does not
    start with a random resized crop augments the letterboxed image, not the full-size one."""
    wide = _encode(Image.new("RGB", (2 * SIZE, SIZE), RED), "PNG")
    data = _write(tmp_path / "data", {"a/wide.png": wide, "b/wide.png": wide})
    recipe = _recipe(tmp_path, data)
    spec = yaml.safe_load(recipe.read_text())
    spec["data"]["resize"] = "pad"
    spec["augment"] = {"backend": "keras", "ops": [{"flip": {"mode": "horizontal"}}]}
    recipe.write_text(yaml.safe_dump(spec))
    assert _preview(tmp_path, recipe, samples=1, variants=2) == 0
    with Image.open(tmp_path / "grid.png") as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    tiles = pixels[pixels.shape[0] - SIZE:]
    quarter = SIZE // 4
    for col in range(3):  # the original and both variants: black bars above and below a red band
        tile = tiles[:, col * SIZE:(col + 1) * SIZE]
        assert (tile[: quarter - 1] == 0).all() and (tile[-quarter + 1:] == 0).all(), f"column {col}"
        assert _close(tile[quarter + 1: -quarter - 1], RED, 2), f"column {col}"
