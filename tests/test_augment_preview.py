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

from ftkit.augment.preview import (
    LABEL_STRIP,
    augment_samples,
    grid_figure,
    preview,
    read_recipe_sections,
    sample_images,
    tile_scale,
    training_index,
)
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


def _pixels(png: Path) -> np.ndarray:
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _tiles(png: Path, *, rows: int, size: int = SIZE) -> np.ndarray:
    """``[rows, columns, size, size, 3]``: the grid's tiles at one value per image pixel (the top-left pixel of
    each ``tile_scale`` block), wherever the column labels are drawn (a strip above the tiles)."""
    pixels = _pixels(png)
    k = tile_scale((size, size))
    strip = pixels.shape[0] - rows * size * k
    assert strip >= 0 and pixels.shape[1] % (size * k) == 0
    blocks = pixels[strip:].reshape(rows, size, k, -1, size, k, 3)
    return blocks[:, :, 0, :, :, 0].transpose(0, 2, 1, 3, 4)


def _originals(tmp_path: Path, *, rows: int, size: int = SIZE) -> list[np.ndarray]:
    """The first column's tiles (int arrays)."""
    return list(_tiles(tmp_path / "grid.png", rows=rows, size=size)[:, 0])


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
    pixels = _pixels(tmp_path / "grid.png")
    tile = SIZE * tile_scale((SIZE, SIZE))
    strip = pixels.shape[0] - 2 * tile
    assert strip > 0, "the labels need a strip of their own"
    assert pixels.shape[1] == 3 * tile
    tiles = pixels[strip:]
    # Every pixel of every tile is the image's: no label drawn over any of them.
    assert (tiles[:tile] == RED).all() and (tiles[tile:] == BLUE).all()


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
    quarter = SIZE // 4
    for col, tile in enumerate(_tiles(tmp_path / "grid.png", rows=1)[0]):
        # the original and both variants: black bars above and below a red band
        assert (tile[: quarter - 1] == 0).all() and (tile[-quarter + 1:] == 0).all(), f"column {col}"
        assert _close(tile[quarter + 1: -quarter - 1], RED, 2), f"column {col}"


def _random_digits_npz(tmp_path: Path, *, count: int = 20, size: int = 28) -> Path:
    """MNIST-shaped noise: neighbouring pixels differ, so any smoothing or misplaced block shows."""
    digits = np.random.default_rng(0).integers(0, 256, (count, size, size), dtype=np.uint8)
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=digits, y_train=np.arange(count, dtype=np.uint8) % 10, x_test=digits[:2],
             y_test=np.zeros(2, np.uint8))
    return npz


def test_small_images_are_enlarged_in_whole_blocks_of_the_augmented_pixels(tmp_path):
    recipe = _recipe(tmp_path, _random_digits_npz(tmp_path), size=28)
    spec = yaml.safe_load(recipe.read_text())
    spec["augment"] = {"backend": "keras", "seed": 3, "ops": [{"random_resized_crop": {"scale": [0.5, 1.0]}},
                                                             {"flip": {"mode": "horizontal"}}]}
    recipe.write_text(yaml.safe_dump(spec))
    grid = preview(recipe, out=tmp_path / "grid.png", samples=2, variants=3)
    k = grid.scale
    assert (grid.image_size, k) == ((28, 28), tile_scale((28, 28))) and 28 * k >= 128
    pixels = _pixels(grid.path)
    assert pixels.shape == (LABEL_STRIP + 2 * 28 * k, 4 * 28 * k, 3)
    blocks = pixels[LABEL_STRIP:].reshape(2, 28, k, 4, 28, k, 3)
    assert (blocks == blocks[:, :, :1, :, :, :1]).all(), "every k x k block is one colour (nearest neighbour)"

    data, config, source = read_recipe_sections(recipe)
    originals, augmented = augment_samples(config, sample_images(training_index(data, source), count=2),
                                           image_size=(28, 28), variants=3)
    expected = np.concatenate([originals[:, None], augmented], axis=1)  # [rows, 1 + variants, 28, 28, 3]
    assert not np.array_equal(expected[:, 1:], np.repeat(expected[:, :1], 3, axis=1))  # the ops changed something
    np.testing.assert_array_equal(_tiles(grid.path, rows=2, size=28), expected)


def test_large_images_stay_one_to_one(tmp_path, capsys):
    data = _write(tmp_path / "data", {"a/red.png": _encode(Image.new("RGB", (SIZE, SIZE), RED), "PNG")})
    assert _preview(tmp_path, _recipe(tmp_path, data, size=224), samples=1, variants=2) == 0
    assert tile_scale((224, 224)) == 1
    with Image.open(tmp_path / "grid.png") as png:
        assert png.size == (3 * 224, LABEL_STRIP + 224)
    assert "(224x224 images, 1:1)" in capsys.readouterr().out


def test_the_cli_says_how_much_small_images_are_enlarged(tmp_path, capsys):
    assert _preview(tmp_path, _recipe(tmp_path, _random_digits_npz(tmp_path), size=28), samples=1) == 0
    k = tile_scale((28, 28))
    out = capsys.readouterr().out
    assert f"(28x28 images, enlarged x{k} (each pixel a {k}x{k} block): {28 * k}x{28 * k} px tiles)" in out


def test_column_labels_are_whole_and_inside_their_column_at_28_pixels():
    variants = 5
    figure = grid_figure(np.zeros((2, 28, 28, 3), np.uint8), np.zeros((2, variants, 28, 28, 3), np.uint8))
    figure.draw_without_rendering()
    width, height = figure.bbox.width, figure.bbox.height
    tile = 28 * tile_scale((28, 28))
    assert [text.get_text() for text in figure.texts] == ["original"] + [f"augmented {v}" for v in range(1, 6)]
    for col, text in enumerate(figure.texts):
        box = text.get_window_extent()
        assert col * tile <= box.x0 and box.x1 <= (col + 1) * tile and box.x1 <= width, text.get_text()
        assert box.y0 >= height - LABEL_STRIP, f"{text.get_text()!r} reaches into the tiles"
