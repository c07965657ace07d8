"""``ftkit augment preview RECIPE --set KEY=VALUE``: preview a variant of a recipe as ``ftkit train --set`` would
run it, without editing the file."""

import numpy as np
import pytest
import yaml
from PIL import Image

from ftkit.augment.preview import LABEL_STRIP, tile_scale
from ftkit.cli import main

SIZE, SAMPLES, VARIANTS = 32, 2, 3


@pytest.fixture
def recipe(shared_data, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"train": str(shared_data / "hymenoptera"), "image_size": [SIZE, SIZE]},
        "augment": {"backend": "keras", "ops": [{"random_resized_crop": {"scale": [0.1, 0.2]}},
                                                {"color_jitter": {"brightness": 0.9}}]},
        "backbone": {"name": "lenet5"},
        "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.001}]},
    }, sort_keys=False))
    return path


def _tiles(png):
    """``[rows, columns, SIZE, SIZE, 3]``: one value per image pixel (each drawn as a k x k block)."""
    k = tile_scale((SIZE, SIZE))
    grid = np.asarray(Image.open(png).convert("RGB"))[LABEL_STRIP:]
    assert grid.shape == (SAMPLES * SIZE * k, (1 + VARIANTS) * SIZE * k, 3)
    return grid.reshape(SAMPLES, SIZE, k, 1 + VARIANTS, SIZE, k, 3)[:, :, 0, :, :, 0].transpose(0, 2, 1, 3, 4)


def _preview(recipe, out, *overrides):
    args = ["augment", "preview", str(recipe), "--out", str(out), "--samples", str(SAMPLES),
            "--variants", str(VARIANTS)]
    return main(args + [part for item in overrides for part in ("--set", item)])


def test_set_overrides_the_recipe_for_the_preview_and_leaves_the_file_alone(recipe, tmp_path):
    before = recipe.read_text()
    assert _preview(recipe, tmp_path / "as_is.png") == 0
    tiles = _tiles(tmp_path / "as_is.png")
    assert all(not np.array_equal(tiles[row, 0], tiles[row, col]) for row in range(SAMPLES)
               for col in range(1, 1 + VARIANTS))  # 10-20% crops and strong jitter change every variant

    assert _preview(recipe, tmp_path / "none.png", "augment.ops=[]") == 0
    tiles = _tiles(tmp_path / "none.png")
    assert all(np.array_equal(tiles[row, 0], tiles[row, col]) for row in range(SAMPLES)
               for col in range(1, 1 + VARIANTS))  # no ops left: every variant is its original
    assert recipe.read_text() == before


def test_a_bad_override_is_the_recipe_error_train_gives(recipe, tmp_path, capsys):
    assert _preview(recipe, tmp_path / "bad.png", "augment.ops[0].random_resized_crop.scale=[0.5,2]") == 2
    assert capsys.readouterr().err.splitlines() == [
        "ftkit augment: error: The recipe has 1 problem(s):",
        "- augment.ops[0].random_resized_crop.scale: `scale` must be [min, max] with 0.0001 <= min <= max <= 1.0. "
        "Received: scale=[0.5, 2.0]",
    ]
    assert not (tmp_path / "bad.png").exists()


def test_an_out_file_that_is_not_png_is_refused_before_anything_is_read(recipe, tmp_path, capsys):
    """The grid is PNG data; a .jpg name would misdescribe the file (it was written as PNG under that name)."""
    assert _preview(recipe, tmp_path / "grid.jpg") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ftkit augment: error: out must name a .png file (the grid is written as PNG). Received: out="
        f"{str(tmp_path / 'grid.jpg')!r}"]
    assert not (tmp_path / "grid.jpg").exists()
