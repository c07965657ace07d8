"""Defects a new user met in the data stage: a typo in data.classes trained a phantom class, the doctor carved
another train/val split than training when a file's header reads but its pixels do not, and a class folder given
as the data root said only "no usable training image"."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from ftkit.data import DataError, decode, scan
from ftkit.data.doctor import check
from ftkit.data.sources import scan_unchecked
from ftkit.recipe import DataConfig
from ftkit.training.inputs import load_data

PETS = {"bees": 6, "cats": 11, "dogs": 9}


def _jpeg(seed: int, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def pets(tmp_path):
    """pets/{bees,cats,dogs}/NN.jpg: distinct small JPEGs, no split folders."""
    root = tmp_path / "pets"
    seed = 0
    for name, n in PETS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            seed += 1
            (root / name / f"{i:02d}.jpg").write_bytes(_jpeg(seed))
    return root


def _load(root, **data):
    return load_data(DataConfig(train=str(root), **data), image_shape=(16, 16, 3))


# --- 1. a data.classes entry that is no class of the source ---------------------------------------------------

def test_a_typo_in_data_classes_is_refused_with_the_class_meant(pets):
    with pytest.raises(ValueError) as err:
        _load(pets, classes=["cats", "dogs", "bess"])
    assert str(err.value) == (
        f"data.classes: 'bess' is not a class of {pets} (no training image). Did you mean 'bees'? The source's "
        f"classes: bees, cats, dogs. Received: data.classes=['cats', 'dogs', 'bess']")
    # With two classes the typo used to surface as "training needs at least 2 classes with images; found 1".
    with pytest.raises(ValueError, match=r"^data.classes: 'dgos' is not a class of .* Did you mean 'dogs'\? "
                                         r"The source's classes: bees, cats, dogs\. Received: "
                                         r"data.classes=\['cats', 'dgos'\]$"):
        _load(pets, classes=["cats", "dgos"])
    with pytest.raises(ValueError, match=r"'Cats', 'dgos' are not classes of .* \(no training image\)\. Did you "
                                         r"mean 'cats' for 'Cats', 'dogs' for 'dgos'\?"):
        _load(pets, classes=["Cats", "dgos", "bees"])
    data = _load(pets, classes=["dogs", "bees"])  # a real selection still trains on those classes, in that order
    assert data.class_names == ["dogs", "bees"]
    assert (data.index["train"].counts(2) + data.index["val"].counts(2)).tolist() == [9, 6]


def test_train_stops_on_a_class_typo_before_any_model_is_built(pets, tmp_path, monkeypatch):
    from _training_helpers import QUIET, TINY, register_tiny

    import ftkit.head
    from ftkit.training import train

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(ftkit.head, "build_model", no_model)
    register_tiny()
    recipe = {"data": {"train": str(pets), "image_size": [16, 16], "batch_size": 4},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "head", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}, "evaluate": {"enabled": False}}
    with pytest.raises(ValueError, match=r"^data.classes: 'bess' is not a class of .* Did you mean 'bees'\?"):
        train(recipe, overrides=["data.classes=[cats, dogs, bess]"], out=tmp_path / "run", **QUIET)


def test_the_doctor_refuses_a_selected_class_the_source_lacks_and_keeps_a_val_only_class_a_warning(pets, tmp_path):
    report = check(pets, class_names=["cats", "dogs", "bess"], verify="header")
    assert not report.usable
    errors = [p for p in report.problems if p["severity"] == "error"]
    assert errors == [{"severity": "error", "kind": "class not in source", "message":
                       f"class_names: 'bess' is not a class of {pets} (no image). Did you mean 'bees'? The source's "
                       f"classes: bees, cats, dogs. Received: class_names=['cats', 'dogs', 'bess']"}]
    assert not any("'bess' has no training image" in p["message"] for p in report.problems)
    # A saved run's class that the data has only in val (evaluation data may lack it elsewhere): a warning, usable.
    split_tree = tmp_path / "splits"
    for split, name, seed in [("train", "a", 1), ("train", "b", 2), ("val", "a", 3), ("val", "c", 4)]:
        (split_tree / split / name).mkdir(parents=True)
        (split_tree / split / name / "x.jpg").write_bytes(_jpeg(seed))
    report = check(split_tree, class_names=["a", "b", "c"], verify="header")
    assert report.usable
    assert [p["message"] for p in report.problems if p["severity"] != "info"] == [
        "class 'c' has no training image", "the val split has no image of 'b': its val scores say nothing about it"]


# --- 2. the doctor and training carve the same split -------------------------------------------------------------

def test_the_split_is_the_same_whatever_the_verify_level_and_the_doctor_names_the_bad_files_split(pets):
    cut = str(next(p for p in scan(pets)["val"].paths if "cats" in p))  # a val file under the header scan
    whole = open(cut, "rb").read()
    with open(cut, "wb") as fp:  # the header still reads; the pixels stop short
        fp.write(whole[: len(whole) * 2 // 3])

    def members(index):
        return {split: sorted(map(str, data.paths)) for split, data in index.splits.items()}

    header = scan(pets, verify="header")
    assert cut in members(header)["val"] and not header.skipped
    good = {split: [p for p in paths if p != cut] for split, paths in members(header).items()}
    full = scan(pets, verify="full")
    strict = scan_unchecked(pets, policy="strict")  # data.policy: strict decodes everything too
    training = _load(pets).index
    assert members(full) == members(strict) == good
    assert members(training) == members(header)
    for index in (full, strict):
        assert [(s.path, s.reason, s.split) for s in index.skipped] == [(cut, decode.CORRUPT, "val")]
    with pytest.raises(DataError, match="1 bad file"):
        scan(pets, policy="strict")

    report = check(pets)  # verify="full"
    assert report.verify == "full"
    assert [(r["path"], r["split"]) for r in report.bad_files] == [(cut, "val")]
    val_cats = header["val"].counts(3)[1]
    assert report.counts["val"]["cats"] == val_cats - 1
    assert report.counts["train"] == dict(zip(header.class_names, header["train"].counts(3).tolist(), strict=True))
    assert sum(report.counts["train"].values()) + sum(report.counts["val"].values()) == sum(PETS.values()) - 1


# --- 3. a class folder given as the root -----------------------------------------------------------------------

def test_a_class_folder_given_as_the_root_says_where_images_belong(pets, capsys):
    from ftkit.cli import main as cli_main

    cats = pets / "cats"
    (cats / "notes.txt").write_text("not an image")
    hint = (f"no usable training image in {cats}: images must sit in class subfolders (ROOT/<class>/<image>), and "
            f"this folder has 11 image(s) at its top level. If it is one class of a data set, use its parent "
            f"folder: `ftkit data check {os.path.abspath(pets)}` (data.train: {os.path.abspath(pets)})")
    report = check(cats)
    assert [p["message"] for p in report.problems] == [hint]
    assert cli_main(["data", "check", str(cats), "--quiet"]) == 1
    assert hint in capsys.readouterr().out
    with pytest.raises(DataError) as err:
        scan(cats)
    assert hint in str(err.value)
    with pytest.raises(DataError) as err:
        _load(cats)
    assert hint in str(err.value)
    # An empty folder has no such hint: nothing sits at its top level.
    (pets / "empty").mkdir()
    assert [p["message"] for p in check(pets / "empty").problems] == [f"no usable training image in {pets / 'empty'}"]
