"""The tf.data pipeline: decoded pixels (conversions, EXIF, 16-bit, alpha), resize policies, shuffle, cache,
per-image / per-batch hooks, runtime skips, MNIST and distribution."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_data_augment_pipeline import _bad_png
from test_data_sources import BLUE, GOOD_A, RED, _jpeg, _noise_jpeg, _save, make_messy

from ftkit.data import decode, distribute, make_dataset, scan


def _images(index, split="train", **kwargs) -> tuple[np.ndarray, np.ndarray]:
    kwargs.setdefault("image_size", (16, 16))
    batches = list(make_dataset(index, split, batch_size=kwargs.pop("batch_size", 64), **kwargs))
    return (np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches]))


def _by_name(index, images, split="train") -> dict[str, np.ndarray]:
    return {os.path.basename(p): img for p, img in zip(index[split].paths, images, strict=True)}


@pytest.fixture
def good_folder(tmp_path) -> Path:
    root = tmp_path / "good"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    for name, make in GOOD_A.items():
        (root / "a" / name).write_bytes(make())
    (root / "b" / "gray.jpg").write_bytes(_jpeg(128, mode="L"))
    (root / "b" / "noise.jpg").write_bytes(_noise_jpeg(1, 16))
    return root


def test_every_format_decodes_to_the_right_pixels(good_folder):
    index = scan(good_folder, val_fraction=0.0)
    images, labels = _images(index)
    assert images.dtype == np.float32 and images.shape == (12, 16, 16, 3)
    assert labels.dtype == np.int32 and labels.tolist() == index["train"].labels.tolist()
    px = {name: img[8, 8] for name, img in _by_name(index, images).items()}
    exact = {"png_named.jpg": BLUE, "rgba.png": (255, 255, 255), "gray16.png": (100, 100, 100),
             "palette.gif": RED, "animated.gif": RED, "photo.webp": BLUE, "photo.bmp": RED}
    for name, color in exact.items():
        np.testing.assert_array_equal(px[name], color, err_msg=name)
    for name, color in {"plain.jpg": RED, "cmyk.jpg": RED, "gray.jpg": (128, 128, 128)}.items():
        np.testing.assert_allclose(px[name], color, atol=4, err_msg=name)


def test_exif_orientation_is_applied(good_folder):
    index = scan(good_folder, val_fraction=0.0)
    # Stored 40 wide x 20 high, red left; orientation 6 stands it up: 20 wide x 40 high, red on top.
    rotated = _by_name(index, _images(index, image_size=(40, 20))[0])["rotated.jpg"]
    np.testing.assert_allclose(rotated[5, 10], RED, atol=6)
    np.testing.assert_allclose(rotated[34, 10], BLUE, atol=6)
    upright = decode.decode_file(good_folder / "a" / "rotated.jpg")
    assert upright.shape == (40, 20, 3)


def test_in_graph_and_pillow_decoders_agree(shared_data, tmp_path):
    photo = shared_data / "hymenoptera" / "train" / "ants" / "formica.jpeg"
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "photo.jpg").write_bytes(photo.read_bytes())
    index = scan(tmp_path, val_fraction=0.0)
    width, height = index["train"].sizes[0]
    graph = _images(index, image_size=(int(height), int(width)), batch_size=1)[0][0]
    pillow = decode.decode_file(photo).astype(np.float32)
    # TensorFlow and Pillow bundle different libjpeg-turbo builds; their outputs differ by about one level.
    assert np.abs(graph - pillow).mean() < 1.0 and np.abs(graph - pillow).max() <= 8


def test_sixteen_bit_rgb_png_keeps_precision(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    values = np.full((8, 8, 3), [257 * 10, 257 * 200, 65535], np.uint16)
    (tmp_path / "a" / "deep.png").write_bytes(tf.io.encode_png(values).numpy())
    (tmp_path / "b" / "x.png").write_bytes(_save(Image.new("RGB", (8, 8), RED), "PNG"))
    index = scan(tmp_path, val_fraction=0.0)
    images = _by_name(index, _images(index, image_size=(8, 8))[0])
    np.testing.assert_array_equal(images["deep.png"][4, 4], [10, 200, 255])


def _stripes(tmp_path) -> Path:
    """60 wide x 20 high: green | red | blue thirds; plus a second class so the scan accepts it."""
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :20], pixels[:, 20:40], pixels[:, 40:] = (0, 255, 0), RED, BLUE
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    (tmp_path / "a" / "s.png").write_bytes(_save(Image.fromarray(pixels), "PNG"))
    (tmp_path / "b" / "s.png").write_bytes(_save(Image.fromarray(pixels), "PNG"))
    return tmp_path


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_resize_policies(tmp_path, resize):
    index = scan(_stripes(tmp_path), val_fraction=0.0)
    image = _images(index, image_size=(20, 20), resize=resize)[0][0]
    if resize == "stretch":
        np.testing.assert_array_equal(image[10, [2, 10, 17]], [(0, 255, 0), RED, BLUE])
    elif resize == "crop":
        np.testing.assert_array_equal(image[[0, 10, 19]][:, [0, 10, 19]].reshape(-1, 3), [RED] * 9)
    else:  # letterbox: 20 x 6.7 content in the middle rows, black above and below
        np.testing.assert_array_equal(image[[0, 3, 16, 19], 10], np.zeros((4, 3)))
        np.testing.assert_array_equal(image[10, [2, 10, 17]], [(0, 255, 0), RED, BLUE])


def test_grayscale_output_and_bad_arguments(good_folder):
    index = scan(good_folder, val_fraction=0.0)
    gray = _by_name(index, _images(index, channels=1)[0])
    assert gray["photo.bmp"].shape == (16, 16, 1)
    assert gray["photo.bmp"][8, 8, 0] == pytest.approx(0.2989 * 255, abs=0.6)
    with pytest.raises(ValueError, match=r"Received: image_size=\(16,\)"):
        make_dataset(index, "train", image_size=(16,))
    with pytest.raises(ValueError, match="Received: resize='fit'"):
        make_dataset(index, "train", image_size=(16, 16), resize="fit")
    with pytest.raises(ValueError, match="Received: channels=4"):
        make_dataset(index, "train", image_size=(16, 16), channels=4)


def test_dct_downscale_matches_full_decode(tmp_path):
    y, x = np.mgrid[0:256, 0:256]
    pixels = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "g.jpg").write_bytes(_save(Image.fromarray(pixels), "JPEG", quality=95))
    index = scan(tmp_path, val_fraction=0.0)
    scaled = _images(index, image_size=(32, 32))[0]
    index["train"].sizes[:] = 0  # unknown sizes: decoded at full scale
    full = _images(index, image_size=(32, 32))[0]
    assert np.abs(scaled - full).mean() < 2.0


def test_dct_switch_only_where_it_saves_a_quarter_of_the_pixels(tmp_path):
    """One 512x512 photo among six 300x300: decoding it at 1/2 would save 0.75 x 262k / 802k = 24.5% of the
    split's decoded pixels, below a quarter, so no DCT switch per element; on its own it saves 75% and is
    decoded at 1/2."""
    from ftkit.data.pipeline import _FileSource

    for cls, sides in (("a", [512, 300, 300, 300]), ("b", [300, 300, 300])):
        (tmp_path / cls).mkdir()
        for i, side in enumerate(sides):
            (tmp_path / cls / f"{i}.jpg").write_bytes(_save(Image.new("RGB", (side, side), RED), "JPEG"))
    index = scan(tmp_path, val_fraction=0.0)

    def scales(data):
        return _FileSource(index, data, (224, 224), 3, "stretch", full_size=False)._scales

    data = index["train"]
    assert scales(data) == [0]
    big = np.flatnonzero(data.sizes[:, 0] == 512)
    assert scales(data.subset(np.concatenate([big, big]), "train")) == [1]


def test_truncated_file_is_skipped_and_reported_mid_epoch(tmp_path, caplog):
    root = make_messy(tmp_path / "messy")
    index = scan(root, max_pixels=2000)  # header scan: truncated.jpg looks fine
    assert decode.CORRUPT not in {s.reason for s in index.skipped}
    n = len(index["train"])
    for _ in range(2):
        images, labels = _images(index, image_size=(8, 8))
        assert len(labels) == n - 1
    runtime = [s for s in index.skipped if s.reason == decode.CORRUPT]
    assert [os.path.basename(s.path) for s in runtime] == ["truncated.jpg"]  # once, not once per epoch
    assert runtime[0].split == "train" and "truncated" in runtime[0].detail
    assert "truncated.jpg" in caplog.text


def _numbered(tmp_path, n=24) -> Path:
    """n distinct flat-colour PNGs whose red channel is their number."""
    for i in range(n):
        folder = tmp_path / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(_save(Image.new("RGB", (4, 4), (i, 0, 0)), "PNG"))
    return tmp_path


def _order(ds) -> list[int]:
    return [int(v) for images, _ in ds for v in images[:, 0, 0, 0].numpy()]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path):
    index = scan(_numbered(tmp_path), val_fraction=0.0)
    kwargs = dict(image_size=(4, 4), batch_size=5, shuffle=True, deterministic=True)
    ds = make_dataset(index, "train", seed=1, **kwargs)
    first, second = _order(ds), _order(ds)
    assert sorted(first) == list(range(24)) and first != second
    assert _order(make_dataset(index, "train", seed=1, **kwargs)) == first
    assert _order(make_dataset(index, "train", seed=2, **kwargs)) != first
    assert _order(make_dataset(index, "train", image_size=(4, 4))) == [
        int(os.path.basename(p)[:2]) for p in index["train"].paths]


def test_files_the_decoder_rejects_anywhere_leave_full_batches_in_order(tmp_path):
    """A file on which the in-graph decoder raises (first, in two consecutive batches, last) fails its batch,
    which the rescue decodes again: every good file comes once, in the index order, in full batches, and the
    bad ones are recorded once."""
    root = _numbered(tmp_path, n=24)
    for name in ("a/000.png", "a/13x.png", "a/17x.png", "b/99x.png"):  # sorted: first, two middle batches, last
        (root / name).write_bytes(_bad_png())
    index = scan(root, val_fraction=0.0)
    names = [os.path.basename(p) for p in index["train"].paths]
    assert len(names) == 28 and index.skipped == []
    expected = [int(n[:2]) for n in names if len(n) == 6]
    ds = make_dataset(index, "train", image_size=(4, 4), batch_size=5)
    assert [len(labels) for _, labels in ds] == [5, 5, 5, 5, 4]
    assert _order(ds) == expected
    assert sorted(os.path.basename(s.path) for s in index.skipped) == ["000.png", "13x.png", "17x.png", "99x.png"]
    assert all("in-graph decoder failed" in s.detail for s in index.skipped)

    dropped = make_dataset(index, "train", image_size=(4, 4), batch_size=5, drop_remainder=True)
    assert [len(labels) for _, labels in dropped] == [5] * 4 and _order(dropped) == expected[:20]

    endless = make_dataset(index, "train", image_size=(4, 4), batch_size=5, repeat=True)
    assert _order(endless.take(10)) == expected * 2
    assert len(index.skipped) == 4  # recorded once, not once per pass


def test_a_file_only_pillow_reads_is_put_back_in_place(tmp_path):
    """A WebP the scan took for a JPEG (simulated): the in-graph decoder rejects it (and its batch), Pillow reads
    it, and it comes back at its place, with its label, through the seeded per-image function too; the batch's
    other files come back decoded as the fast path decodes them."""
    for i in range(12):
        folder = tmp_path / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        image = Image.new("RGB", (4, 4), (20 * i, 0, 0))
        webp = dict(format="WEBP", lossless=True) if i in (3, 8) else dict(format="JPEG", quality=95)
        (folder / f"{i:02d}.jpg").write_bytes(_save(image, webp.pop("format"), **webp))
    index = scan(tmp_path, val_fraction=0.0)
    data = index["train"]
    assert data.pillow.sum() == 2
    data.pillow[:] = False  # as a scan that missed the WebPs would have it: every file to the in-graph decoder
    data.codecs[:] = 1
    expected = [int(os.path.basename(p)[:2]) for p in data.paths]

    def red(ds):
        return [round(float(v) / 20) for images, _ in ds for v in images[:, 0, 0, 0].numpy()]

    ds = make_dataset(index, "train", image_size=(4, 4), batch_size=5)
    assert [len(labels) for _, labels in ds] == [5, 5, 2] and red(ds) == expected
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in ds]), data.labels)
    assert index.skipped == []

    def shift(image, seed):  # a seeded per-image function: rescued files get a seed too, the same every time
        return image + tf.cast(tf.random.stateless_uniform([], seed, 0, 10_000, tf.int32), tf.float32) * 1000

    first, again = ([b[0].numpy() for b in make_dataset(index, "train", image_size=(4, 4), batch_size=5,
                                                          per_image_fn=shift, seed=3)] for _ in range(2))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [round(float(v) % 1000 / 20) for batch in first for v in batch[:, 0, 0, 0]] == expected


def _crop_plan_source(index, size=(16, 16)):
    """The file source as the keras back end's standard policy builds it: with the JPEG crop plan."""
    from ftkit.augment import standard_policy
    from ftkit.augment.keras_backend import build_image_resample, split_resample
    from ftkit.data import pipeline

    plan = build_image_resample(split_resample(standard_policy("keras").ops)[0], image_size=size).crop_plan
    return pipeline._FileSource(index, index["train"], size, 3, "stretch", full_size=True, crop_plan=plan)


def test_plain_gifs_take_the_graph_path_with_pillows_pixels(tmp_path):
    """A one-frame GIF without transparency is read by tf.io.decode_jpeg, not Pillow; its pixels are Pillow's."""
    from ftkit.data.sources import CODECS

    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    gifs = {"many_colours.gif": _save(noise.quantize(200), "GIF"),
            "interlaced.gif": _save(noise.quantize(64), "GIF", interlace=True),
            "gray.gif": _save(Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)), "GIF"),
            "transparent.gif": _save(noise.quantize(32), "GIF", transparency=3),
            "animated.gif": _save(noise.quantize(32), "GIF", save_all=True, append_images=[noise.quantize(8)])}
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "photo.jpg").write_bytes(_noise_jpeg(2, 24))
    for name, data in gifs.items():
        (tmp_path / "a" / name).write_bytes(data)
    index = scan(tmp_path, val_fraction=0.0)
    flagged = {os.path.basename(p) for p in index["train"].paths[index["train"].pillow]}
    assert flagged == {"transparent.gif", "animated.gif"}
    assert (index["train"].codecs == CODECS["GIF"]).sum() == 5

    images = _by_name(index, _images(index, image_size=(24, 24))[0])  # the target size: no resampling
    for name in ("many_colours.gif", "interlaced.gif", "gray.gif", "transparent.gif", "animated.gif"):
        np.testing.assert_array_equal(images[name], decode.decode_file(tmp_path / "a" / name), err_msg=name)
    assert index.skipped == []

    # The crop plan decodes JPEG windows only (decode_and_crop_jpeg), so there every GIF takes Pillow.
    source = _crop_plan_source(index)
    gif_rows = index["train"].codecs == CODECS["GIF"]
    assert source._columns["pillow"][gif_rows].all() and not source._columns["pillow"][~gif_rows].any()


def test_eight_bit_png_splits_skip_the_sixteen_bit_decode_with_the_same_pixels(tmp_path):
    """A split of JPEGs and 8-bit PNGs decodes all with decode_jpeg (which reads 8-bit PNGs with decode_png's
    pixels): no 16-bit decode, no float copy before the resize, no branch between two decoders. One 16-bit PNG
    in the split brings back the 16-bit PNG decoder, whose /257 keeps its precision."""
    from ftkit.data import pipeline
    from ftkit.data.sources import CODECS

    rng = np.random.default_rng(5)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / f"rgb_{cls}.png").write_bytes(_save(Image.fromarray(rng.integers(0, 256, (20, 30, 3), np.uint8)), "PNG"))
    palette = Image.fromarray(rng.integers(0, 256, (20, 30, 3), np.uint8)).quantize(16)
    (tmp_path / "a" / "palette.png").write_bytes(_save(palette, "PNG"))
    (tmp_path / "b" / "gray.png").write_bytes(_save(Image.fromarray(rng.integers(0, 256, (20, 30), np.uint8)), "PNG"))
    (tmp_path / "b" / "photo.jpg").write_bytes(_noise_jpeg(4, 20))

    def decoded(index):
        source = pipeline._FileSource(index, index["train"], (20, 30), 3, "stretch", full_size=False)
        return source, _by_name(index, _images(index, image_size=(20, 30))[0])  # PNGs: no resampling

    index = scan(tmp_path, val_fraction=0.0)
    source, images = decoded(index)
    assert not source._png16 and source._codecs == {CODECS["JPEG"]} and len(images) == 5
    for path in sorted(tmp_path.glob("*/*.png")):
        np.testing.assert_array_equal(images[path.name], decode.decode_file(path), err_msg=path.name)
    # The crop plan's decode_and_crop_jpeg reads JPEG only: there the PNGs keep their own (8-bit) decoder.
    cropping = _crop_plan_source(index)
    assert cropping._codecs == {CODECS["JPEG"], CODECS["PNG"]} and not cropping._png16

    (tmp_path / "a" / "deep.png").write_bytes(_save(Image.fromarray(np.full((20, 30), 65280, np.uint16)), "PNG"))
    source, images = decoded(scan(tmp_path, val_fraction=0.0))
    assert source._png16 and source._codecs == {CODECS["JPEG"], CODECS["PNG"]}
    np.testing.assert_allclose(images["deep.png"], 65280 / 257, rtol=0, atol=1e-4)  # 254.0078, not an 8-bit level
    for path in sorted(tmp_path.glob("*/*.png")):
        if path.name != "deep.png":
            np.testing.assert_array_equal(images[path.name], decode.decode_file(path), err_msg=path.name)


def test_flagged_files_behind_stand_ins_match_the_map_route(good_folder, monkeypatch):
    """Few flagged files (EXIF, CMYK, alpha, GIF, WebP, BMP) take the rescue, behind 1x1 stand-ins; many, the map.
    Both routes give the same batches: pixels, seeded per-image function, labels and order."""
    from ftkit.data import pipeline

    index = scan(good_folder, val_fraction=0.0)
    assert 0 < index["train"].pillow.sum() < len(index["train"])

    def shift(image, seed):
        return image + tf.cast(tf.random.stateless_uniform([], seed, 0, 100, tf.int32), tf.float32)

    runs = {}
    for share in (0.0, 1.0):  # 0: every flagged file in the map; 1: every one in the rescue
        monkeypatch.setattr(pipeline, "_RESCUE_PILLOW_SHARE", share)
        ds = make_dataset(index, "train", image_size=(16, 16), batch_size=5, per_image_fn=shift, seed=4)
        runs[share] = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [len(y) for _, y in runs[1.0]] == [5, 5, 2]
    for (x0, y0), (x1, y1) in zip(runs[0.0], runs[1.0], strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert index.skipped == []


@pytest.mark.parametrize("cache", ["memory", "folder"])
def test_cache_gives_the_same_images(tmp_path, good_folder, cache):
    index = scan(good_folder, val_fraction=0.0)
    target = "memory" if cache == "memory" else tmp_path / "cache"
    plain = _images(index)[0]
    ds = make_dataset(index, "train", image_size=(16, 16), batch_size=64, cache=target)
    for _ in range(2):  # the cache rounds to uint8
        np.testing.assert_allclose(np.concatenate([b[0].numpy() for b in ds]), plain, atol=0.5)
    if cache == "folder":
        assert any(p.name.startswith("train-16x16x3-stretch-") for p in (tmp_path / "cache").iterdir())
    shuffled = make_dataset(index, "train", image_size=(16, 16), batch_size=64, cache=target, shuffle=True)
    assert sorted(map(bytes, np.concatenate([b[0].numpy() for b in shuffled]))) == sorted(
        map(bytes, np.round(plain)))


def test_per_image_and_per_batch_functions(good_folder):
    index = scan(good_folder, val_fraction=0.0)
    seen = {}

    def invert(image):
        seen["image"] = image.dtype
        return 255.0 - tf.cast(image, tf.float32)

    def per_batch(images, onehot):
        seen["labels"] = onehot.shape.as_list()
        return images * 0.5, onehot

    images, labels = next(iter(make_dataset(index, "train", image_size=(16, 16), batch_size=4,
                                            per_image_fn=invert, per_batch_fn=per_batch)))
    assert seen == {"image": tf.float32, "labels": [None, 2]}
    assert labels.shape == (4, 2) and labels.dtype == tf.float32
    np.testing.assert_array_equal(labels.numpy().argmax(1), index["train"].labels[:4])
    plain = _images(index)[0][:4]
    np.testing.assert_allclose(images.numpy(), (255.0 - plain) * 0.5)
    with pytest.raises(ValueError, match="Received: one_hot=False"):
        make_dataset(index, "train", image_size=(16, 16), per_batch_fn=per_batch, one_hot=False)


def test_pipelines_run_without_the_autotuning_model(good_folder, shared_data):
    """tf.data's autotuning model made deleting an iterator wait up to 1.3 s after half the epochs (BENCHMARKS.md,
    measured there, not timed here): every route make_dataset builds turns it off, and keeps determinism."""
    index = scan(good_folder, val_fraction=0.0)
    mnist = scan(shared_data / "mnist", val_fraction=0.0)
    routes = {
        "files": make_dataset(index, "train", image_size=(16, 16), batch_size=4),
        "files, shuffled, augmented per batch": make_dataset(
            index, "train", image_size=(16, 16), batch_size=4, shuffle=True, deterministic=False,
            per_batch_fn=lambda images, labels: (images, labels)),
        "cache": make_dataset(index, "train", image_size=(16, 16), batch_size=4, cache="memory"),
        "in memory": make_dataset(mnist, "test", image_size=(28, 28), channels=1, batch_size=4),
    }
    for route, ds in routes.items():
        assert ds.options().autotune.enabled is False, route
        assert ds.options().deterministic is ("shuffled" not in route), route


def test_mnist_batches(shared_data):
    index = scan(shared_data / "mnist", val_fraction=0.0)
    images, labels = next(iter(make_dataset(index, "test", image_size=(28, 28), channels=1, batch_size=64)))
    assert images.shape == (64, 28, 28, 1) and images.dtype == tf.float32
    np.testing.assert_array_equal(images.numpy()[..., 0], index["test"].images[:64])
    np.testing.assert_array_equal(labels.numpy(), index["test"].labels[:64])
    images, _ = next(iter(make_dataset(index, "test", image_size=(32, 32), channels=3, batch_size=8)))
    assert images.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(images.numpy()[..., 0], images.numpy()[..., 2])


def test_hymenoptera_epoch_and_distribution(shared_data):
    index = scan(shared_data / "hymenoptera")
    ds = make_dataset(index, "train", image_size=(32, 32), batch_size=50)
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert len(labels) == 245 and np.bincount(labels).tolist() == [124, 121]
    assert index.skipped == []
    on_device = distribute(ds)
    assert sum(int(y.shape[0]) for _, y in on_device) == 245
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    first = next(iter(distribute(ds, strategy)))
    np.testing.assert_array_equal(strategy.experimental_local_results(first[1])[0].numpy(), labels[:50])


def test_a_csv_row_that_fails_only_at_decode_is_reported_with_its_line(shared_data, tmp_path):
    """A JPEG cut inside its scan data passes the header scan and fails when the pipeline decodes it: its skip
    record names the CSV and the line, in a carved split too (the lines follow the rows)."""
    photos = sorted((shared_data / "hymenoptera" / "train" / "bees").glob("*.jpg"))[:5]
    for i, photo in enumerate(photos):
        (tmp_path / f"{i}.jpg").write_bytes(photo.read_bytes())
        (tmp_path / f"cut{i}.jpg").write_bytes(photo.read_bytes()[:len(photo.read_bytes()) // 2])
    rows = ["file,class,split", "0.jpg,a,train", "", "1.jpg,b,train", "2.jpg,a,train", "cut0.jpg,b,val",
            "3.jpg,a,val", "4.jpg,b,val", "cut1.jpg,a,"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    index = scan(tmp_path / "t.csv", val_fraction=0.0)
    assert index.skipped == [] and index["val"].lines.dtype == np.int32
    assert len(_images(index, "val", image_size=(8, 8))[1]) == 2
    [skip] = index.skipped
    assert (os.path.basename(skip.path), skip.reason, skip.split) == ("cut0.jpg", decode.CORRUPT, "val")
    assert skip.detail.startswith("the in-graph decoder failed on it") and skip.detail.endswith(", t.csv line 6")
    assert len(_images(index, "train", image_size=(8, 8))[1]) == 3
    assert (os.path.basename(index.skipped[1].path), index.skipped[1].split) == ("cut1.jpg", "train")
    assert index.skipped[1].detail.endswith(", t.csv line 9")

    for seed in range(3):  # train's rows (lines 2, 4, 5, 9) split in two: cut1.jpg lands in either half
        carved = scan(tmp_path / "t.csv", val_fraction=0.0, test_fraction=0.5, seed=seed)
        [split] = [name for name in ("train", "test") if os.fspath(tmp_path / "cut1.jpg") in set(carved[name].paths)]
        line_of = {os.path.basename(p): int(n) for name in ("train", "test")
                   for p, n in zip(carved[name].paths, carved[name].lines, strict=True)}
        assert line_of == {"0.jpg": 2, "1.jpg": 4, "2.jpg": 5, "cut1.jpg": 9}
        _images(carved, split, image_size=(8, 8))
        [skip] = carved.skipped
        assert skip.split == split and skip.detail.endswith(", t.csv line 9")
