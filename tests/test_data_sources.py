"""Sources, splits, bad files and the doctor (`ftkit data check`), on messy fixtures and the shared data."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftkit.cli import main as cli_main
from ftkit.data import DataError, decode, load_class_names, save_class_names, scan
from ftkit.data.doctor import check
from ftkit.data.sources import CODECS

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _jpeg(color=RED, size=(16, 16), mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "JPEG", **save)
    return buf.getvalue()


def _save(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    return buf.getvalue()


def _noise_jpeg(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels), "JPEG", quality=95)


def _exif_rotated() -> bytes:
    """Stored 40 wide x 20 high, red left / blue right, tagged orientation 6 (display rotated 90 CW)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION_TAG] = 6
    return _save(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), 0), Image.new("P", (16, 16), 1)]
    for f in frames:
        f.putpalette([*RED, *BLUE] + [0] * 762)
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


GOOD_A = {  # name -> (bytes, expected conversions noted by the doctor)
    "plain.jpg": lambda: _jpeg(),
    "rotated.jpg": _exif_rotated,
    "cmyk.jpg": lambda: _jpeg((0, 255, 255, 0), mode="CMYK"),
    "png_named.jpg": lambda: _save(Image.new("RGB", (16, 16), BLUE), "PNG"),
    "rgba.png": lambda: _save(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "PNG"),
    "gray16.png": lambda: _save(Image.fromarray(np.full((16, 16), 25700, np.uint16)), "PNG"),
    "palette.gif": lambda: _save(Image.new("RGB", (16, 16), RED).convert("P"), "GIF"),
    "animated.gif": _animated_gif,
    "photo.webp": lambda: _save(Image.new("RGB", (16, 16), BLUE), "WEBP", lossless=True),
    "photo.bmp": lambda: _save(Image.new("RGB", (16, 16), RED), "BMP"),
}
BAD_A = {  # name -> expected reason
    "truncated.jpg": decode.CORRUPT,
    "empty.jpg": decode.EMPTY,
    "text.jpg": decode.NOT_AN_IMAGE,
    "icon.ico": decode.UNSUPPORTED,
    "big.png": decode.TOO_LARGE,
    "loop.jpg": decode.SYMLINK_LOOP,
    "broken.jpg": decode.MISSING,
    "noperm.jpg": decode.UNREADABLE,
    "up": decode.SYMLINK_LOOP,
}
MAX_PIXELS = 2000  # big.png is 64x64 = 4096 pixels; every other image is at most 40x40 = 1600


def make_messy(root: Path) -> Path:
    """train/{a,b,empty}, val/{a,b}: every kind of good and bad file; val/b/dup.jpg == train/b/b0.jpg."""
    a, b, empty = root / "train" / "a", root / "train" / "b", root / "train" / "empty"
    for folder in (a, b, empty, root / "val" / "a", root / "val" / "b"):
        folder.mkdir(parents=True)
    for name, make in GOOD_A.items():
        (a / name).write_bytes(make())
    full = _noise_jpeg(0, 40)
    (a / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    (a / "empty.jpg").write_bytes(b"")
    (a / "text.jpg").write_text("this is not a picture\n")
    (a / "icon.ico").write_bytes(_save(Image.new("RGB", (16, 16), RED), "ICO"))
    (a / "big.png").write_bytes(_save(Image.new("RGB", (64, 64), RED), "PNG"))
    os.symlink("loop.jpg", a / "loop.jpg")
    os.symlink("does-not-exist.jpg", a / "broken.jpg")
    (a / "noperm.jpg").write_bytes(_jpeg())
    os.chmod(a / "noperm.jpg", 0)
    os.symlink("..", a / "up")  # a folder link back to train/: must not be followed
    for i in range(3):
        (b / f"b{i}.jpg").write_bytes(_noise_jpeg(10 + i, 16))
    (b / "gray.jpg").write_bytes(_jpeg(128, mode="L"))
    (root / "train" / "notes.txt").write_text("labels are folder names\n")
    (root / "val" / "a" / "v.jpg").write_bytes(_jpeg(BLUE))
    (root / "val" / "b" / "dup.jpg").write_bytes((b / "b0.jpg").read_bytes())
    return root


@pytest.fixture
def messy(tmp_path, monkeypatch) -> Path:
    root = make_messy(tmp_path / "messy")
    noperm = os.fspath(root / "train" / "a" / "noperm.jpg")
    if os.geteuid() == 0:  # root reads through chmod 000, so the permission error is raised where ftkit opens

        def guarded_open(file, *args, **kwargs):
            if os.fspath(file) == noperm:
                raise PermissionError(13, "Permission denied", noperm)
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(decode, "open", guarded_open, raising=False)
    return root


def _snapshot(root: Path) -> dict:
    """Bytes, mtime and mode of everything under root, links not followed: proof nothing was touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path) and st.st_mode & 0o444:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            out[path] = (st.st_mtime_ns, st.st_mode, st.st_size, digest)
    return out


def _reasons(index_or_rows) -> dict[str, str]:
    rows = index_or_rows.skipped if hasattr(index_or_rows, "skipped") else index_or_rows
    get = (lambda r: (r.path, r.reason)) if hasattr(index_or_rows, "skipped") else (lambda r: (r["path"], r["reason"]))
    return {os.path.basename(get(r)[0]): get(r)[1] for r in rows}


# --- folders and splits ----------------------------------------------------------------------------------

def test_hymenoptera_counts_and_classes(shared_data):
    index = scan(shared_data / "hymenoptera")
    assert index.class_names == ["ants", "bees"]
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 245, "val": 153}
    assert index["train"].counts(2).tolist() == [124, 121]
    assert index["val"].counts(2).tolist() == [70, 83]
    assert index.skipped == [] and index.problems == []
    names = {os.path.basename(p) for p in index["train"].paths}
    assert {"imageNotFound.gif", "formica.jpeg"} <= names
    assert "ant photos.jpg" in {os.path.basename(p) for s in index.splits.values() for p in s.paths}
    # Every file takes the in-graph path: the JPEGs and the palette GIF (one frame, no transparency).
    assert not index["train"].pillow.any()
    gif = [os.path.basename(p) for p in index["train"].paths[index["train"].codecs == CODECS["GIF"]]]
    assert gif == ["imageNotFound.gif"]


def test_stratified_seeded_split(shared_data):
    index = scan(shared_data / "catsdogs", val_fraction=0.2, seed=3)
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 800, "val": 200, "test": 400}
    assert index["val"].counts(2).tolist() == [100, 100]
    assert not set(index["train"].paths) & set(index["val"].paths)
    again = scan(shared_data / "catsdogs", val_fraction=0.2, seed=3)
    other = scan(shared_data / "catsdogs", val_fraction=0.2, seed=4)
    assert list(again["val"].paths) == list(index["val"].paths)
    assert list(other["val"].paths) != list(index["val"].paths)


def test_flat_folder_gets_val_and_test(shared_data):
    index = scan(shared_data / "hymenoptera" / "val", val_fraction=0.25, test_fraction=0.25)
    sizes = {k: len(v) for k, v in index.splits.items()}
    assert sizes == {"train": 75, "val": 39, "test": 39}  # per class: ants 70 -> 34/18/18, bees 83 -> 41/21/21
    all_paths = np.concatenate([s.paths for s in index.splits.values()])
    assert len(set(all_paths)) == 153


def test_class_names_fixed_by_a_saved_run(shared_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ftkit_run.json").write_text(json.dumps({"backbone": "lenet5"}))
    save_class_names(run, ["bees", "ants"])
    assert load_class_names(run) == ["bees", "ants"]
    assert json.loads((run / "ftkit_run.json").read_text())["backbone"] == "lenet5"
    index = scan(shared_data / "hymenoptera", class_names=load_class_names(run))
    assert index["train"].counts(2).tolist() == [121, 124]
    with pytest.raises(ValueError, match="Received: class_names="):
        save_class_names(run, ["a", "a"])


def test_csv_source(shared_data, tmp_path):
    hym = shared_data / "hymenoptera" / "train"
    ants = sorted((hym / "ants").iterdir())[:5]
    bees = sorted((hym / "bees").iterdir())[:4]
    table = tmp_path / "labels.csv"
    rows = ["path,label"] + [f"ants/{p.name},ant" for p in ants] + [f"bees/{p.name},bee" for p in bees]
    rows += ["bees/missing.jpg,bee", f"ants/{ants[0].name},"]
    table.write_text("\n".join(rows) + "\n")
    index = scan(table, root=hym, val_fraction=0.0)
    assert index.kind == "csv" and index.class_names == ["ant", "bee"]
    assert index["train"].counts(2).tolist() == [5, 4]
    assert _reasons(index) == {"missing.jpg": decode.MISSING, ants[0].name: "no label"}
    # Relative to the CSV's own folder by default, with a split column.
    local = tmp_path / "data"
    (local / "x").mkdir(parents=True)
    for i, p in enumerate(ants[:4] + bees[:4]):
        (local / "x" / f"{i}.jpg").write_bytes(p.read_bytes())
    lines = [f"x/{i}.jpg,{'ant' if i < 4 else 'bee'},{'val' if i in (0, 4) else 'train'}" for i in range(8)]
    (local / "t.csv").write_text("\n".join(lines))
    index = scan(local / "t.csv")
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 6, "val": 2}


def test_mnist_idx_and_npz(shared_data, tmp_path):
    index = scan(shared_data / "mnist", val_fraction=0.1)
    assert index.class_names == [str(d) for d in range(10)]
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 54000, "val": 6000, "test": 10000}
    assert index["test"].counts(10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert index["test"].images.shape == (10000, 28, 28) and index["test"].images.dtype == np.uint8
    # Training-pixel mean from the data README: 0.1307 after scaling to [0, 1].
    full = scan(shared_data / "mnist", val_fraction=0.0)
    assert full["train"].images.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=full["train"].images[:50], y_train=full["train"].labels[:50],
             x_test=full["test"].images[:20], y_test=full["test"].labels[:20])
    small = scan(npz, val_fraction=0.0)
    assert len(small["train"]) == 50 and len(small["test"]) == 20
    np.testing.assert_array_equal(small["test"].images, full["test"].images[:20])


def test_bad_arguments_name_what_was_received(shared_data, tmp_path):
    with pytest.raises(ValueError, match=r"Received: policy='lenient'"):
        scan(shared_data / "hymenoptera", policy="lenient")
    with pytest.raises(ValueError, match=r"Received: val_fraction=1.5"):
        scan(shared_data / "hymenoptera", val_fraction=1.5)
    with pytest.raises(ValueError, match=r"Received: source="):
        scan(tmp_path / "nowhere")
    with pytest.raises(KeyError, match="Received: split='test'"):
        scan(shared_data / "hymenoptera")["test"]


# --- bad files ---------------------------------------------------------------------------------------------

def test_skip_policy_reports_every_bad_file_and_touches_nothing(messy):
    before = _snapshot(messy)
    index = scan(messy, verify="full", max_pixels=MAX_PIXELS)
    expected = dict(BAD_A, **{"notes.txt": "not in a class folder"})
    assert _reasons(index) == expected
    assert index.class_names == ["a", "b"]  # the empty class folder is not a class
    assert index["train"].counts(2).tolist() == [len(GOOD_A), 4]
    assert [p.kind for p in index.problems] == ["empty class"]
    assert index.summary()["skipped"] == len(expected)
    pillow = {os.path.basename(p) for p in index["train"].paths[index["train"].pillow]}
    assert pillow == {"rotated.jpg", "cmyk.jpg", "rgba.png", "animated.gif", "photo.webp", "photo.bmp"}
    assert _snapshot(messy) == before


def test_header_scan_lets_a_truncated_body_through(messy):
    index = scan(messy, max_pixels=MAX_PIXELS)  # verify="header": the pipeline catches it later
    assert "truncated.jpg" not in _reasons(index)
    assert "truncated.jpg" in {os.path.basename(p) for p in index["train"].paths}


def test_truncated_animated_gifs_neither_crash_the_scan_nor_take_the_graph_path(tmp_path):
    """Probing a GIF for a second frame reads past the first; a file cut there makes Pillow raise IndexError."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).quantize(64) for _ in range(3)]
    whole = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "photo.jpg").write_bytes(_jpeg())
    cuts = range(40, len(whole), 9)
    for cut in cuts:
        (tmp_path / "a" / f"cut{cut}.gif").write_bytes(whole[:cut])
    for verify in ("header", "full"):
        index = scan(tmp_path, verify=verify, val_fraction=0.0)
        train = index["train"]
        kept = {os.path.basename(p): bool(flag) for p, flag in zip(train.paths, train.pillow, strict=True)}
        assert len(train.paths) + len(index.skipped) == len(cuts) + 2
        # Cut after its first frame (about where a one-frame GIF of it ends), a GIF is flagged for Pillow: the
        # probe sees a second frame, or fails on it. (Cut inside the first frame, the runtime reports it.)
        first_frame_end = len(_save(frames[0], "GIF"))
        for name, flagged in kept.items():
            if name.startswith("cut") and int(name[3:-4]) >= first_frame_end - 1:
                assert flagged, name


def test_strict_policy_lists_every_bad_file_at_once(messy):
    before = _snapshot(messy)
    with pytest.raises(DataError) as info:
        scan(messy, policy="strict", max_pixels=MAX_PIXELS)
    message = str(info.value)
    for name, reason in BAD_A.items():
        assert f"{name}: {reason}" in message
    assert "class folder train/empty has no usable image" in message
    assert message.endswith("policy='strict'")
    assert _snapshot(messy) == before


def test_single_class_and_no_images_fail_before_training(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "x.jpg").write_bytes(_jpeg())
    with pytest.raises(DataError, match=r"at least 2 classes with images; found 1: \['only'\]"):
        scan(tmp_path / "one")
    (tmp_path / "none" / "cls").mkdir(parents=True)
    (tmp_path / "none" / "cls" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no usable training image"):
        scan(tmp_path / "none")


def test_decompression_bomb_limit_is_configurable(messy):
    assert _reasons(scan(messy, max_pixels=MAX_PIXELS))["big.png"] == decode.TOO_LARGE
    assert "big.png" not in _reasons(scan(messy, max_pixels=10_000))
    with pytest.raises(decode.BadImage, match="4096 pixels > max_pixels=2000"):
        decode.inspect(messy / "train" / "a" / "big.png", max_pixels=MAX_PIXELS)


# --- the doctor ----------------------------------------------------------------------------------------------

def test_doctor_cli_on_hymenoptera(shared_data, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert cli_main(["data", "check", str(shared_data / "hymenoptera"), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["usable"] is True
    assert report["totals"] == {"train": 245, "val": 153}
    assert report["counts"]["train"] == {"ants": 124, "bees": 121}
    assert report["imbalance_ratio"] == pytest.approx(124 / 121, abs=1e-3)
    assert report["bad_files"] == [] and report["duplicates_across_splits"] == []
    assert report["conversion_counts"] == {"palette to RGB": 1}
    assert report["conversions"][0]["path"].endswith("train/ants/imageNotFound.gif")
    text = capsys.readouterr().out
    assert "Verdict: usable" in text and "train    124   121   245" in text


def test_doctor_on_messy_data(messy, tmp_path, capsys):
    before = _snapshot(messy)
    out = tmp_path / "r.json"
    argv = ["data", "check", str(messy), "--json", str(out), "--quiet", "--max-pixels", str(MAX_PIXELS),
            "--min-side", "18"]
    assert cli_main(argv) == 0  # usable: bad files are skipped
    report = json.loads(out.read_text())
    assert _reasons(report["bad_files"]) == dict(BAD_A, **{"notes.txt": "not in a class folder"})
    assert report["bad_file_counts"][decode.SYMLINK_LOOP] == 2
    notes = {os.path.basename(r["path"]): r["conversions"] for r in report["conversions"]}
    assert notes["rotated.jpg"] == ["EXIF orientation applied (6)"]
    assert notes["cmyk.jpg"] == ["CMYK to RGB"]
    assert notes["png_named.jpg"] == ["content format differs from extension (PNG named .jpg)"]
    assert notes["rgba.png"] == ["alpha composited over white"]
    assert notes["gray16.png"] == ["grayscale to RGB", "16-bit to 8-bit"]
    assert notes["palette.gif"] == ["palette to RGB"]
    assert notes["animated.gif"] == ["palette to RGB", "first frame of an animation (2 frames)"]
    assert notes["gray.jpg"] == ["grayscale to RGB"]
    assert "plain.jpg" not in notes and "photo.bmp" not in notes
    assert {os.path.basename(r["path"]) for r in report["tiny_images"]} == set(GOOD_A) - {"rotated.jpg"} | {
        "b0.jpg", "b1.jpg", "b2.jpg", "gray.jpg", "v.jpg", "dup.jpg"}
    [group] = report["duplicates_across_splits"]
    assert {(f["split"], os.path.basename(f["path"])) for f in group} == {("train", "b0.jpg"), ("val", "dup.jpg")}
    assert report["duplicates_conflicting_labels"] == [] and report["duplicates_within_class"] == []
    assert report["problems"][0]["kind"] == "empty class"
    assert cli_main([*argv, "--strict"]) == 1
    assert "NOT usable under --strict" in capsys.readouterr().out
    assert _snapshot(messy) == before


def test_doctor_exit_code_for_unusable_data(tmp_path, capsys):
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "x.jpg").write_bytes(_jpeg())
    assert cli_main(["data", "check", str(tmp_path / "one"), "--json", "-", "--quiet"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is False and report["problems"][-1]["kind"] == "single class"


def test_doctor_on_mnist_finds_no_leakage(shared_data):
    report = check(shared_data / "mnist", val_fraction=0.0, verify="header")
    assert report.to_dict()["totals"] == {"train": 60000, "test": 10000}
    assert report.imbalance_ratio == pytest.approx(6742 / 5421, abs=1e-3)
    assert report.usable


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_doctor_flat_tree_names_the_real_empty_folder_and_finds_conflicting_labels(tmp_path, capsys):
    """ants/x.jpg == ants/x2.jpg == bees/dup.jpg (same content, two classes), wasps/ empty, no train/ folder."""
    root = tmp_path / "flat"
    _write(root / "ants" / "x.jpg", _noise_jpeg(1))
    _write(root / "ants" / "x2.jpg", _noise_jpeg(1))
    _write(root / "ants" / "y.jpg", _noise_jpeg(2))
    _write(root / "bees" / "dup.jpg", _noise_jpeg(1))
    _write(root / "bees" / "z.jpg", _noise_jpeg(3))
    (root / "wasps").mkdir()
    before = _snapshot(root)
    out = tmp_path / "r.json"
    argv = ["data", "check", str(root), "--json", str(out), "--quiet", "--val-fraction", "0"]
    assert cli_main(argv) == 0  # warnings do not make the data unusable
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["problems"] == [
        {"severity": "warning", "kind": "empty class", "message": "class folder wasps has no usable image"},
        {"severity": "warning", "kind": "conflicting labels",
         "message": "1 group(s) of byte-identical images filed under different classes (3 files)"}]
    assert "train/wasps" not in text and "warning: class folder wasps has no usable image" in text
    [group] = report["duplicates_conflicting_labels"]
    assert {(f["split"], os.path.relpath(f["path"], root), f["class"]) for f in group} == {
        ("train", "ants/x.jpg", "ants"), ("train", "ants/x2.jpg", "ants"), ("train", "bees/dup.jpg", "bees")}
    assert report["duplicates_within_class"] == [] and report["duplicates_across_splits"] == []
    assert "Byte-identical files under different classes (conflicting labels, warning): 1" in text
    assert (f"  train:{root / 'ants' / 'x.jpg'} [ants] = train:{root / 'ants' / 'x2.jpg'} [ants] = "
            f"train:{root / 'bees' / 'dup.jpg'} [bees]") in text
    assert "Byte-identical files within one class of one split (plain duplicates, info): 0" in text
    assert "Verdict: usable" in text
    assert cli_main([*argv, "--strict"]) == 1  # a warning, so unusable under --strict
    assert "NOT usable under --strict" in capsys.readouterr().out
    assert _snapshot(root) == before


def test_doctor_split_folders_conflicts_across_splits_and_real_folder_names(tmp_path):
    """train/a/x.jpg == validation/b/x.jpg: leakage and conflicting labels; validation/c is empty."""
    root = tmp_path / "tree"
    _write(root / "train" / "a" / "x.jpg", _noise_jpeg(1))
    _write(root / "train" / "b" / "y.jpg", _noise_jpeg(2))
    _write(root / "train" / "c" / "z.jpg", _noise_jpeg(3))
    _write(root / "validation" / "b" / "x.jpg", _noise_jpeg(1))
    (root / "validation" / "c").mkdir()
    report = check(root)
    assert report.problems[0]["message"] == "class folder validation/c has no usable image"
    [leak] = report.duplicates_across_splits
    [conflict] = report.duplicates_conflicting_labels
    assert leak == conflict and {(f["split"], f["class"]) for f in leak} == {("train", "a"), ("val", "b")}
    assert report.duplicates_within_class == []
    assert report.usable and not check(root, strict=True).usable


def test_doctor_reports_plain_duplicates_as_information_only(tmp_path, capsys):
    root = tmp_path / "plain"
    _write(root / "train" / "ants" / "a.jpg", _noise_jpeg(1))
    _write(root / "train" / "ants" / "a copy.jpg", _noise_jpeg(1))
    _write(root / "train" / "ants" / "b.jpg", _noise_jpeg(2))
    _write(root / "train" / "bees" / "c.jpg", _noise_jpeg(3))
    _write(root / "val" / "ants" / "d.jpg", _noise_jpeg(4))
    _write(root / "val" / "ants" / "d again.jpg", _noise_jpeg(4))
    _write(root / "val" / "bees" / "e.jpg", _noise_jpeg(5))
    assert cli_main(["data", "check", str(root), "--json", "-", "--quiet", "--strict"]) == 0  # info even if strict
    report = json.loads(capsys.readouterr().out)
    groups = {frozenset((f["split"], f["class"], os.path.basename(f["path"])) for f in g)
              for g in report["duplicates_within_class"]}
    assert groups == {frozenset({("train", "ants", "a.jpg"), ("train", "ants", "a copy.jpg")}),
                      frozenset({("val", "ants", "d.jpg"), ("val", "ants", "d again.jpg")})}
    assert report["duplicates_conflicting_labels"] == [] and report["duplicates_across_splits"] == []
    assert report["problems"] == [] and report["usable"] is True
    text = check(root).to_text()
    assert "Byte-identical files within one class of one split (plain duplicates, info): 2" in text
    assert f"  train:{root / 'train' / 'ants' / 'a copy.jpg'} = train:{root / 'train' / 'ants' / 'a.jpg'}" in text


def test_doctor_duplicates_in_memory_sources(tmp_path):
    """Same pixels under labels 3 and 5 in the training array of an .npz; same pixels twice under label 1."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    x_train[4] = x_train[0]
    x_train[5] = x_train[1]
    y_train = np.array([3, 1, 2, 4, 5, 1], np.uint8)
    x_test = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=np.array([0, 1], np.uint8))
    report = check(tmp_path / "m.npz", val_fraction=0.0)
    assert report.duplicates_conflicting_labels == [[{"split": "train", "path": "train[0]", "class": "3"},
                                                     {"split": "train", "path": "train[4]", "class": "5"}]]
    assert report.duplicates_within_class == [[{"split": "train", "path": "train[1]", "class": "1"},
                                               {"split": "train", "path": "train[5]", "class": "1"}]]
    assert report.problems[-1]["kind"] == "conflicting labels"


def test_doctor_on_an_empty_tree(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["data", "check", str(tmp_path / "empty"), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "Imbalance (largest / smallest training class): n/a (no images)" in text
    assert "None" not in text and "Classes (0): none" in text
    assert cli_main(["data", "check", str(tmp_path / "empty"), "--quiet", "--json", "-"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["imbalance_ratio"] is None and report["usable"] is False
    assert report["problems"] == [{"severity": "error", "kind": "no images",
                                   "message": f"no usable training image in {tmp_path / 'empty'}"}]


# --- layouts and tables a new user brings (ninth session's walkthrough) ----------------------------------------

def _tree(root: Path, layout: dict[str, int]) -> Path:
    """Writes ``{"split/class": n}`` distinct little JPEGs."""
    for i, (folder, n) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            (root / folder / f"{j}.jpg").write_bytes(_noise_jpeg(100 * i + j, size=16))
    return root


def test_valid_folder_is_the_val_split_and_strays_are_reported(tmp_path):
    root = _tree(tmp_path / "t", {"train/a": 3, "train/b": 3, "valid/a": 2, "valid/b": 2, "holdout/a": 2})
    (root / "loose.jpg").write_bytes(_noise_jpeg(7, size=16))
    index = scan(root)
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 6, "val": 4}
    assert [p.kind for p in index.problems] == ["not a split folder"]
    assert "holdout/" in index.problems[0].message
    assert _reasons(index) == {"loose.jpg": "not in a class folder"}
    # Two folders for one split is ambiguous: refused, naming both.
    _tree(root, {"val/a": 1})
    with pytest.raises(ValueError, match=r"two folders for the val split: '(val|valid)' and '(val|valid)'"):
        scan(root)


def test_csv_split_aliases_unknown_splits_and_malformed_rows(shared_data, tmp_path):
    src = sorted((shared_data / "hymenoptera" / "train" / "ants").iterdir())[:8]
    for i, p in enumerate(src):
        (tmp_path / f"{i}.jpg").write_bytes(p.read_bytes())
    rows = ["0.jpg,a,train", "1.jpg,b,Train", "2.jpg,a,training", "3.jpg,b,VALID", "4.jpg,a,validation",
            "5.jpg,b,testing", "6.jpg,a,holdout", ",b,train", "7.jpg,a,train,extra"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    index = scan(tmp_path / "t.csv", val_fraction=0.0)
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 3, "val": 2, "test": 1}
    reasons = {s.reason: s.detail for s in index.skipped}
    assert set(reasons) == {"unknown split", "no path", "malformed row"}
    assert "t.csv line 7: split 'holdout'; allowed: train (training), val (valid, validation)" in reasons["unknown split"]
    assert reasons["no path"] == "t.csv line 8"
    assert reasons["malformed row"].startswith("t.csv line 9: 4 columns")


def test_csv_header_names_columns_in_any_order_and_semicolons(shared_data, tmp_path):
    src = sorted((shared_data / "hymenoptera" / "train" / "bees").iterdir())[:4]
    for i, p in enumerate(src):
        (tmp_path / f"{i}.jpg").write_bytes(p.read_bytes())
    (tmp_path / "h.csv").write_text("class,notes,filename\na,x,0.jpg\nb,y,1.jpg\na,,2.jpg\nb,z,3.jpg\n")
    index = scan(tmp_path / "h.csv", val_fraction=0.0)
    assert index.class_names == ["a", "b"] and index["train"].counts(2).tolist() == [2, 2] and not index.skipped
    (tmp_path / "s.csv").write_text("path;label\n0.jpg;a\n1.jpg;b\n")
    index = scan(tmp_path / "s.csv", val_fraction=0.0)
    assert index["train"].counts(2).tolist() == [1, 1] and not index.skipped


def test_splits_come_in_train_val_test_order_and_missing_classes_are_warned(shared_data, tmp_path):
    src = sorted((shared_data / "hymenoptera" / "train" / "ants").iterdir())[:5]
    for i, p in enumerate(src):
        (tmp_path / f"{i}.jpg").write_bytes(p.read_bytes())
    (tmp_path / "o.csv").write_text("0.jpg,a,val\n1.jpg,a,train\n2.jpg,b,train\n3.jpg,a,test\n4.jpg,b,test\n")
    index = scan(tmp_path / "o.csv")
    assert list(index.splits) == ["train", "val", "test"]
    assert [p.message for p in index.problems] == [
        "the val split has no image of 'b': its val scores say nothing about it"]


def test_npz_without_keras_arrays_is_a_clear_error(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, np.uint8))
    assert cli_main(["data", "check", str(tmp_path / "bad.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs the arrays x_train, y_train, x_test, y_test. Received: arrays ['images', 'labels']" in err


def test_doctor_on_arrays_reports_tiny_images_conversions_and_leakage(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    x_test = np.concatenate([x[:1], x[:1] ^ 1])
    np.savez(tmp_path / "m.npz", x_train=x, y_train=np.array([0, 1, 0, 1, 0, 1], np.uint8),
             x_test=x_test, y_test=np.array([0, 1], np.uint8))
    report = check(tmp_path / "m.npz", val_fraction=0.0, min_side=100, channels=3)
    assert len(report.tiny_images) == 8 and report.tiny_images[0] == {"path": "train[0]", "split": "train",
                                                                       "width": 28, "height": 28}
    assert report.conversion_counts == {"grayscale to RGB": 8}
    assert check(tmp_path / "m.npz", val_fraction=0.0, min_side=28, channels=1).conversions == []
    leakage = [p for p in report.problems if p["kind"] == "leakage"]  # classes 2-9 have no image: warnings too
    assert [p["message"] for p in leakage] == ["1 group(s) of byte-identical images in more than one split (2 files): "
                                               "scores on the later split overstate what the model learnt"]
    assert report.usable
    assert not check(tmp_path / "m.npz", val_fraction=0.0, strict=True).usable


def test_bomb_message_is_the_same_above_pillows_own_refusal(tmp_path):
    """A PNG whose header claims 15000x15000 (225 MP: above twice Pillow's limit, which Pillow refuses itself)."""
    import zlib

    data = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = (15000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    (tmp_path / "huge.png").write_bytes(bytes(data))
    with pytest.raises(decode.BadImage, match=r"^too large: 225000000 pixels > max_pixels=89478485$"):
        decode.inspect(tmp_path / "huge.png")


def test_doctor_max_pixels_none_and_zero(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["data", "check", str(tmp_path), "--max-pixels", "0"])
    assert "must be a positive number of pixels or 'none'" in capsys.readouterr().err


def test_class_folders_named_like_a_split_are_classes_without_a_train_folder(tmp_path):
    root = _tree(tmp_path / "docs", {"valid": 3, "invalid": 3})
    index = scan(root, val_fraction=0.0)
    assert index.class_names == ["invalid", "valid"] and len(index["train"]) == 6 and not index.problems


def test_csv_files_found_bad_carry_their_line_number(shared_data, tmp_path):
    src = sorted((shared_data / "hymenoptera" / "train" / "ants").iterdir())[:4]
    for i, p in enumerate(src):
        (tmp_path / f"{i}.jpg").write_bytes(p.read_bytes())
    (tmp_path / "cut.jpg").write_bytes(src[0].read_bytes()[:40])
    rows = ["path,label,split", "0.jpg,a,train", "1.jpg,b,train", "gone.jpg,a,train", "2.jpg,a,val",
            "cut.jpg,b,val", "3.jpg,b,train"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    index = scan(tmp_path / "t.csv")
    details = {Path(s.path).name: (s.reason, s.detail) for s in index.skipped}
    assert details["gone.jpg"] == ("missing file", "no such file, t.csv line 4")
    assert details["cut.jpg"][1].endswith(", t.csv line 6")
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 3, "val": 1}


def test_in_memory_rows_are_named_by_their_index_in_the_source_arrays(tmp_path):
    """MNIST rows keep their MNIST index through class selection, carving and sampling (reports say
    ``train[i]`` / ``test[i]``, the row of MNIST's own arrays), not their position in the split."""
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 10, 60).astype(np.uint8), rng.integers(0, 10, 30).astype(np.uint8)
    x_train = np.zeros((60, 28, 28), np.uint8)
    x_train[:, 0, 0] = np.arange(60)  # a pixel that says which row it was
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=np.zeros((30, 28, 28), np.uint8), y_test=y_test)
    index = scan(npz, val_fraction=0.25, class_names=["3", "5", "7"])
    for split, source_labels in (("train", y_train), ("val", y_train), ("test", y_test)):
        data = index[split]
        ids = data.ids()
        origin = "test" if split == "test" else "train"
        assert all(i.startswith(f"{origin}[") for i in ids)
        rows = [int(i[len(origin) + 1:-1]) for i in ids]
        assert [index.class_names[label] for label in data.labels] == [str(source_labels[r]) for r in rows]
        if split != "test":
            assert data.images[:, 0, 0].tolist() == rows
    assert sorted(index["train"].ids() + index["val"].ids()) == sorted(
        f"train[{i}]" for i in np.flatnonzero(np.isin(y_train, [3, 5, 7])))
    assert index["train"].subset(np.array([1]), "x").ids() == index["train"].ids()[1:2]


def test_a_mistyped_source_suggests_its_namesake(tmp_path):
    (tmp_path / "hymenoptera").mkdir()
    with pytest.raises(ValueError, match=rf"must exist. Did you mean '{tmp_path / 'hymenoptera'}'\? "
                                         rf"Received: source='{tmp_path / 'hymenopterra'}'$"):
        scan(tmp_path / "hymenopterra")
    with pytest.raises(ValueError, match=r"must exist. Received: source="):  # nothing close: no suggestion
        scan(tmp_path / "catsdogs")


# --- byte-identical files in an automatic split ------------------------------------------------------------

def _split_before_copies_were_kept_together(labels: np.ndarray, fractions: dict[str, float], seed: int) -> list:
    """Each row's split under the automatic split's draw as it was before copies were kept together (a copy of
    that algorithm, so a change to the draw itself fails the tests below)."""
    drawn = ["train"] * len(labels)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.random.default_rng([seed, int(label)]).permutation(len(rows))]
        start = 0
        for name in [n for n in ("val", "test") if fractions.get(n, 0) > 0]:
            n = max(min(int(np.floor(fractions[name] * len(rows) + 0.5)), len(rows) - start - 1), 0)
            for row in rows[start:start + n]:
                drawn[row] = name
            start += n
    return drawn


def _membership(index, root: Path) -> dict[str, str]:
    return {os.path.relpath(p, root): split for split, data in index.splits.items() for p in data.paths}


def _drawn(root: Path, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """The old draw over the files in scan order (the order a scan without carving lists them in)."""
    listed = scan(root, val_fraction=0.0)["train"]
    drawn = _split_before_copies_were_kept_together(listed.labels, fractions, seed)
    return dict(zip((os.path.relpath(p, root) for p in listed.paths), drawn, strict=True))


def _photos_with_copies(shared_data, root: Path) -> list[list[str]]:
    """ants/ and bees/ with 10 real photos each, plus copies: one ant photo three more times (twice among the
    ants, once among the bees) and one bee photo once more; and an ant photo with one byte changed (same size,
    other bytes: no copy). Returns the groups of copies, each in scan order."""
    hym = shared_data / "hymenoptera" / "train"
    for cls in ("ants", "bees"):
        for photo in sorted((hym / cls).glob("*.jpg"))[:10]:
            _write(root / cls / photo.name, photo.read_bytes())
    ant, bee = sorted((hym / "ants").glob("*.jpg"))[0], sorted((hym / "bees").glob("*.jpg"))[1]
    for name in ("ants/copy 1.jpg", "ants/zz copy 2.jpg", "bees/ant copy.jpg"):
        _write(root / name, ant.read_bytes())
    _write(root / "bees" / "bee again.jpg", bee.read_bytes())
    edited = bytearray(ant.read_bytes())
    edited[len(edited) // 2] ^= 0xFF  # inside the scan data: the header still reads
    _write(root / "ants" / "edited.jpg", bytes(edited))
    return [[f"ants/{ant.name}", "ants/copy 1.jpg", "ants/zz copy 2.jpg", "bees/ant copy.jpg"],
            [f"bees/{bee.name}", "bees/bee again.jpg"]]


def test_automatic_split_keeps_copies_in_one_split_and_moves_nothing_else(shared_data, tmp_path):
    root = tmp_path / "photos"
    groups = _photos_with_copies(shared_data, root)
    fractions = {"val": 0.3, "test": 0.2}
    straddled_before = 0
    for seed in range(6):
        index = scan(root, val_fraction=fractions["val"], test_fraction=fractions["test"], seed=seed)
        got, drawn = _membership(index, root), _drawn(root, fractions, seed)
        assert len(got) == 25 and set(got) == set(drawn)
        expected = dict(drawn)
        for group in groups:  # each group goes where the draw put its first file; nothing else moves
            expected.update((name, drawn[group[0]]) for name in group)
            assert len({got[name] for name in group}) == 1
        assert got == expected
        straddled_before += sum(len({drawn[name] for name in group}) > 1 for group in groups)
        moved = sum(drawn[name] != expected[name] for name in drawn)
        [note] = [p for p in index.problems if p.kind == "duplicates kept together"]
        assert note.severity == "info"
        assert note.message.startswith("2 group(s) of byte-identical files (6 files) kept in one split each")
        assert f"; {moved} file(s) moved there from the split the seeded draw gave them" in note.message
        assert {"kind": note.kind, "severity": "info", "message": note.message} in index.summary()["problems"]
    assert straddled_before >= 3  # the old draw split these groups: the seeds above test something
    report = check(root, val_fraction=0.3, test_fraction=0.2, seed=1, verify="header")
    assert report.duplicates_across_splits == [] and len(report.duplicates_conflicting_labels) == 1


def test_automatic_split_without_copies_is_the_draw_as_before(shared_data, tmp_path):
    """Exactly the old draw where there is no copy: a real flat folder and the copies' tree without its copies."""
    flat = shared_data / "hymenoptera" / "val"
    root = tmp_path / "photos"
    _photos_with_copies(shared_data, root)
    for name in ("ants/copy 1.jpg", "ants/zz copy 2.jpg", "bees/ant copy.jpg", "bees/bee again.jpg"):
        (root / name).unlink()
    for folder, fractions in ((flat, {"val": 0.25, "test": 0.25}), (root, {"val": 0.3})):
        for seed in (0, 1, 7):
            index = scan(folder, val_fraction=fractions["val"], test_fraction=fractions.get("test", 0.0),
                         seed=seed)
            assert _membership(index, folder) == _drawn(folder, fractions, seed)
            assert not [p for p in index.problems if p.kind == "duplicates kept together"]


def test_a_class_of_copies_keeps_its_training_image(tmp_path):
    """A class whose files are all one picture stays in training, where the draw sent its first file to val."""
    root = _tree(tmp_path / "t", {"a": 6})
    for name in ("x1.jpg", "x2.jpg", "x3.jpg"):
        _write(root / "b" / name, _noise_jpeg(9, size=16))
    first_drawn_to_val = 0
    for seed in range(8):
        index = scan(root, val_fraction=0.34, seed=seed)
        drawn = _drawn(root, {"val": 0.34}, seed)
        first_drawn_to_val += drawn["b/x1.jpg"] == "val"
        got = _membership(index, root)
        assert [got[f"b/x{i}.jpg"] for i in (1, 2, 3)] == ["train"] * 3
        assert {name: split for name, split in got.items() if name.startswith("a/")} == {
            name: split for name, split in drawn.items() if name.startswith("a/")}
        assert index["train"].counts(2)[1] == 3
        assert [p.kind for p in index.problems] == ["duplicates kept together", "class missing from val"]
    assert first_drawn_to_val >= 1


def test_explicit_splits_keep_their_copies_and_the_doctor_reports_them(tmp_path):
    """A copy across split folders is the user's choice: not moved; the doctor still reports the leakage."""
    root = _tree(tmp_path / "t", {"train/a": 3, "train/b": 3, "val/a": 2, "val/b": 2})
    _write(root / "val" / "a" / "copy.jpg", (root / "train" / "a" / "0.jpg").read_bytes())
    index = scan(root)
    assert os.fspath(root / "val" / "a" / "copy.jpg") in set(index["val"].paths)
    assert not [p for p in index.problems if p.kind == "duplicates kept together"]
    assert len(check(root, verify="header").duplicates_across_splits) == 1


def test_the_note_on_copies_kept_together_is_information_even_under_strict(tmp_path):
    root = _tree(tmp_path / "t", {"a": 4, "b": 4})
    _write(root / "a" / "again.jpg", (root / "a" / "0.jpg").read_bytes())
    report = check(root, verify="header", strict=True)
    assert [(p["severity"], p["kind"]) for p in report.problems] == [("info", "duplicates kept together")]
    assert report.usable and report.duplicates_across_splits == [] and len(report.duplicates_within_class) == 1
    assert "info: 1 group(s) of byte-identical files (2 files) kept in one split each" in report.to_text()
    scan(root, policy="strict", verify="header")  # a note, not a reason to refuse the data
