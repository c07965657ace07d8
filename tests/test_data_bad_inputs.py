"""Audit of the data stage as a user meets it: file names that are not UTF-8, a cache folder after a file is edited
in place, the error when every file is bad, argument checks, and a training run on every kind of bad file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from test_data_sources import BAD_A, _noise_jpeg, _reasons, _save, _snapshot, messy  # noqa: F401

from ftkit.cli import main as cli_main
from ftkit.data import DataError, decode, make_dataset, scan
from ftkit.data.doctor import check
from ftkit.data.sources import OUTSIDE_CLASS

RED, BLUE = (255, 0, 0), (0, 0, 255)
LATIN1 = os.fsdecode(b"caf\xe9.png")  # a name written on a latin-1 system: not UTF-8, so a surrogate escape here
CUT = os.fsdecode(b"cut\xff.jpg")
BMP = os.fsdecode(b"bmp\xe9.bmp")  # decoded by Pillow (in the map's tf.numpy_function), not in the graph
GREEN = (0, 255, 0)


def _png(color, size=(8, 8)) -> bytes:
    return _save(Image.new("RGB", size, color), "PNG")


@pytest.fixture
def latin1_tree(tmp_path):
    """a/bmp\\xe9.bmp (green), a/caf\\xe9.png (red), a/cut\\xff.jpg (truncated after a readable header), b/blue.png."""
    root = tmp_path / "latin1"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / LATIN1).write_bytes(_png(RED))
    (root / "a" / BMP).write_bytes(_save(Image.new("RGB", (8, 8), GREEN), "BMP"))
    whole = _noise_jpeg(3, 40)
    (root / "a" / CUT).write_bytes(whole[: len(whole) * 2 // 3])
    (root / "b" / "blue.png").write_bytes(_png(BLUE))
    return root


@pytest.mark.parametrize("cache", [None, "folder"])
def test_file_names_that_are_not_utf8_are_decoded_and_reported(latin1_tree, tmp_path, cache):
    index = scan(latin1_tree, val_fraction=0.0)
    names = [os.path.basename(p) for p in index["train"].paths]
    assert names == [BMP, LATIN1, CUT, "blue.png"]
    batches = list(make_dataset(index, "train", image_size=(8, 8), batch_size=4,
                                cache=tmp_path / "cache" if cache else None))
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert labels.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(images[:, 4, 4], [GREEN, RED, BLUE])
    assert [(s.path, s.reason) for s in index.skipped] == [(str(latin1_tree / "a" / CUT), decode.CORRUPT)]


def test_the_doctor_shows_names_that_are_not_utf8_escaped_and_keeps_them_in_json(latin1_tree, tmp_path, capsys):
    report = check(latin1_tree, val_fraction=0.0)
    text = report.to_text()
    text.encode("utf-8")  # a UTF-8 terminal takes it: no lone surrogate left
    assert "cut\\xff.jpg: truncated or corrupt" in text
    out = tmp_path / "report.json"
    assert cli_main(["data", "check", str(latin1_tree), "--val-fraction", "0", "--quiet", "--json", str(out)]) == 0
    bad = json.loads(out.read_text())["bad_files"]
    assert [row["path"] for row in bad] == [str(latin1_tree / "a" / CUT)]
    assert os.path.exists(bad[0]["path"])  # the exact name, usable as a path
    capsys.readouterr()


def test_a_cache_folder_is_not_served_stale_after_a_file_is_edited_in_place(tmp_path):
    root = tmp_path / "data"
    for cls, color in (("a", RED), ("b", BLUE)):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.png").write_bytes(_png(color))
    index = scan(root, val_fraction=0.0)

    def first_pixels():
        images = next(iter(make_dataset(index, "train", image_size=(8, 8), cache=tmp_path / "cache")))[0]
        return images.numpy()[:, 4, 4].tolist()

    assert first_pixels() == [list(RED), list(BLUE)]
    edited = root / "a" / "x.png"
    edited.write_bytes(_png((0, 255, 0)))
    st = os.stat(edited)
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock may not tick
    assert first_pixels() == [[0, 255, 0], list(BLUE)]
    assert first_pixels() == [[0, 255, 0], list(BLUE)]  # and that new cache is reused
    assert len([p for p in (tmp_path / "cache").iterdir() if p.suffix == ".index"]) == 2


def test_no_usable_image_says_how_many_files_were_skipped_and_why(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "b" / "y.jpg").write_text("not a picture\n")
    with pytest.raises(DataError, match=r"no usable training image in .*\n  2 file\(s\) skipped: 1 empty file, "
                                        r"1 not an image\n"):
        scan(tmp_path)


def test_bad_scan_and_doctor_arguments_say_what_was_received(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(_png(RED if cls == "a" else BLUE))
    table = tmp_path / "labels.csv"
    table.write_text("path,label\na/x.png,a\nb/x.png,b\n")
    with pytest.raises(ValueError, match=r"must be an existing folder\. Received: root='/no/such/folder'"):
        scan(table, root="/no/such/folder")
    for value in (0, -5, True, 2.5):
        with pytest.raises(ValueError, match=rf"Received: max_pixels={value!r}"):
            scan(tmp_path, max_pixels=value)
    with pytest.raises(ValueError, match=r"Received: min_side=-1"):
        check(tmp_path, min_side=-1)
    assert cli_main(["data", "check", str(tmp_path), "--quiet", "--min-side", "-1"]) == 2
    assert "Received: min_side=-1" in capsys.readouterr().err
    assert check(tmp_path, min_side=0, val_fraction=0.0).tiny_images == []
    assert len(check(tmp_path, min_side=9, val_fraction=0.0).tiny_images) == 2


def test_training_on_every_kind_of_bad_file_skips_each_with_its_reason_and_touches_nothing(messy, tmp_path):  # noqa: F811
    from _training_helpers import QUIET, TINY, register_tiny

    from ftkit.training import train

    register_tiny()
    # A real decompression bomb at the default limit: 10,000 x 9,000 = 90,000,000 pixels > 89,478,485, ~11 KB.
    (messy / "train" / "b" / "bomb.png").write_bytes(_save(Image.new("1", (10_000, 9_000)), "PNG", optimize=False))
    before = _snapshot(messy)
    recipe = {"data": {"train": str(messy), "image_size": [16, 16], "batch_size": 4},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}, "evaluate": {"enabled": False}}
    result = train(recipe, out=tmp_path / "run", **QUIET)
    record = json.loads((result.path / "ftkit_run.json").read_text())["data"]
    expected = {name: reason for name, reason in BAD_A.items() if name != "big.png"}  # 64x64: fine by default
    assert _reasons(record["skipped_files"]) == {**expected, "bomb.png": decode.TOO_LARGE, "notes.txt": OUTSIDE_CLASS}
    bomb = next(row for row in record["skipped_files"] if row["path"].endswith("bomb.png"))
    assert bomb["detail"] == "10000x9000 = 90000000 pixels > max_pixels=89478485"
    # The 10 good files of GOOD_A and big.png in a; 4 in b; val/ keeps its 2; the empty class folder is a warning.
    assert record["class_names"] == ["a", "b"]
    assert record["counts"] == {"train": {"a": 11, "b": 4}, "val": {"a": 1, "b": 1}}
    assert [p["kind"] for p in record["problems"]] == ["empty class"]
    assert _snapshot(messy) == before


def test_the_doctor_calls_a_val_class_training_lacks_unusable_as_training_does(tmp_path, capsys):
    from _image_fixtures import write_noise_png

    for i, (split, cls) in enumerate([("train", "a"), ("train", "b"), ("val", "a"), ("val", "b"), ("val", "c")]):
        for k in range(2 if cls == "c" else 1):
            write_noise_png(tmp_path / split / cls / f"{k}.png", 10 * i + k)
    report = check(tmp_path)
    assert not report.usable
    assert [p for p in report.problems if p["severity"] == "error"] == [{
        "severity": "error", "kind": "class missing from train",
        "message": "the val split has classes the training split does not have: 'c' (2 file(s)); `ftkit train` "
                   "refuses them unless data.classes lists the classes to use"}]
    assert cli_main(["data", "check", str(tmp_path), "--quiet"]) == 1
    capsys.readouterr()
    # With the classes given (a saved run's, as evaluation passes them), files of other classes are expected drops.
    assert check(tmp_path, class_names=["a", "b"]).usable


@pytest.mark.slow
def test_a_strict_recipe_stops_before_training_listing_every_bad_file_of_every_source(messy, tmp_path):  # noqa: F811
    from _image_fixtures import write_noise_png
    from _training_helpers import QUIET, TINY, register_tiny

    from ftkit.training import train

    register_tiny()
    extra_val = tmp_path / "extra_val"  # a separate data.val folder with a bad file of its own
    for cls in ("a", "b"):
        write_noise_png(extra_val / cls / "ok.png", ord(cls))
    (extra_val / "b" / "empty.png").write_bytes(b"")
    before = _snapshot(messy)
    recipe = {"data": {"train": str(messy / "train"), "val": str(extra_val), "image_size": [16, 16],
                       "batch_size": 4, "policy": "strict"},
              "backbone": {"name": TINY}, "schedule": {"phases": [{"train": "all", "epochs": 1, "lr": 0.01}]},
              "train": {"verbose": 0}, "evaluate": {"enabled": False}}
    with pytest.raises(DataError) as error:
        train(recipe, out=tmp_path / "run", **QUIET)
    message = str(error.value)
    listed = {line.strip().split(": ")[0].rsplit("/", 1)[-1] for line in message.splitlines()[1:]
              if line.startswith("  ") and ": " in line}
    assert set(BAD_A) - {"big.png"} <= listed  # every bad file of the training folder
    assert "empty.png" in listed  # and the val folder's, in the same message
    assert "data.policy: skip" in message
    assert not (tmp_path / "run").exists()
    assert _snapshot(messy) == before
    # the same recipe under the default policy trains, leaving the same files out
    recipe["data"]["policy"] = "skip"
    result = train(recipe, out=tmp_path / "run2", **QUIET)
    skipped = json.loads((result.path / "ftkit_run.json").read_text())["data"]["skipped_files"]
    assert {row["path"].rsplit("/", 1)[-1] for row in skipped} >= listed - {"notes.txt"}
