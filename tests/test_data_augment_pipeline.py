"""The data and augmentation stages together: seeded augmentation through make_dataset (both back ends),
crop-first augmentation on decoded images, and bad files behind a valid header reported, not just dropped."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ftkit.augment import AugmentConfig, build_augmentation, standard_policy
from ftkit.data import decode, make_dataset, scan

SIZE = (32, 32)


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory) -> Path:
    """Six real catsdogs photos, three per class."""
    root = tmp_path_factory.mktemp("photos")
    for cls in ("cats", "dogs"):
        (root / cls).mkdir()
        for path in sorted((shared_data / "catsdogs" / "train" / cls).iterdir())[:3]:
            shutil.copy(path, root / cls)
    return root


def _epochs(index, config, *, seed, epochs=2, **kwargs):
    aug = build_augmentation(config, image_size=SIZE, num_classes=index.num_classes)
    ds = make_dataset(index, "train", image_size=SIZE, batch_size=4, shuffle=True, deterministic=True, seed=seed,
                      per_image_fn=aug.per_image_fn, per_batch_fn=aug.per_batch_fn, one_hot=True, **kwargs)
    return [[(x.numpy(), y.numpy()) for x, y in ds] for _ in range(epochs)]


KERAS = AugmentConfig(backend="keras", ops=[{"random_resized_crop": {}}, {"flip": {}}, {"rotation": {}},
                                            {"color_jitter": {}}], cutmix={})


ALBUMENTATIONS = standard_policy("albumentations", image_size=SIZE)


@pytest.mark.parametrize("config", [pytest.param(KERAS, id="keras", marks=pytest.mark.slow),
                                    pytest.param(ALBUMENTATIONS, id="albumentations")])
def test_same_seed_same_augmented_batches_through_make_dataset(photos, config):
    index = scan(photos, val_fraction=0.0)
    first, again = _epochs(index, config, seed=3), _epochs(index, config, seed=3)
    assert [len(epoch) for epoch in first] == [2, 2]
    for (x1, y1), (x2, y2) in zip(first[0] + first[1], again[0] + again[1], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0][0], first[1][0][0])  # the next epoch draws new augmentations
    assert not np.array_equal(first[0][0][0], _epochs(index, config, seed=4, epochs=1)[0][0][0])
    # The same order (seed 3 shuffles alike) with another epoch number gives other augmentations.
    assert not np.array_equal(first[0][0][0], _epochs(index, config, seed=3, epochs=1, epoch=1)[0][0][0])


def test_order_dependent_ops_run_in_order_and_can_be_refused():
    grid = AugmentConfig(backend="keras", ops=[{"grid_mask": {}}])
    aug = build_augmentation(grid, image_size=SIZE, num_classes=2)
    assert aug.per_batch_fn.ordered and aug.ordered_batches
    rotation = build_augmentation(AugmentConfig(backend="keras", ops=[{"rotation": {}}]), image_size=SIZE,
                                  num_classes=2)
    assert not rotation.per_batch_fn.ordered
    with pytest.raises(ValueError, match=r"\['rand_augment', 'aug_mix'\].*Received: ops="):
        AugmentConfig(backend="keras", ops=[{"rand_augment": {}}, {"flip": {}}, {"aug_mix": {}}],
                      parallel_reproducible=True)
    AugmentConfig(backend="keras", ops=[{"rotation": {}}, {"zoom": {}}], parallel_reproducible=True)


def test_crop_first_augmentation_receives_the_decoded_image(tmp_path):
    for cls, color in (("a", (200, 10, 10)), ("b", (10, 10, 200))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (60, 40), color).save(tmp_path / cls / "x.jpg", quality=95)
    index = scan(tmp_path, val_fraction=0.0)
    received = []

    def record(image, seed=None):
        shape = tf.numpy_function(lambda s: received.append(tuple(s)) or s, [tf.shape(image)], tf.int32)
        with tf.control_dependencies([shape]):
            return tf.image.resize(image, SIZE)

    record.takes_decoded = True
    ds = make_dataset(index, "train", image_size=SIZE, per_image_fn=record)
    images = np.concatenate([x.numpy() for x, _ in ds])
    assert received == [(40, 60, 3)] * 2  # decoded size: the loader did not resize first
    np.testing.assert_allclose(images[:, 16, 16], [(200, 10, 10), (10, 10, 200)], atol=3)
    received.clear()
    list(make_dataset(index, "train", image_size=SIZE, per_image_fn=record, cache="memory"))
    assert received == [(*SIZE, 3)] * 2  # the cache holds resized images and sits before augmentation
    for config in (standard_policy("keras"), standard_policy("albumentations", image_size=SIZE)):
        assert build_augmentation(config, image_size=SIZE, num_classes=2).per_image_fn.takes_decoded


def _bad_png() -> bytes:
    """A PNG whose signature, header, chunk CRCs and IEND are valid but whose compressed pixels are not."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    body = bytearray(data[at + 4:at + 4 + length])
    for k in range(10, 40):
        body[k] ^= 0x5A
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)) & 0xFFFFFFFF)
    return bytes(data[:at + 4]) + bytes(body) + crc + bytes(data[at + 8 + length:])


def _bad_jpeg() -> bytes:
    """A JPEG with valid markers, size and end marker but an impossible Huffman table."""
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (9, 99, 199)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    at = data.index(b"\xff\xc4")
    data[at + 5:at + 21] = b"\xff" * 16
    return bytes(data)


def test_bad_body_behind_a_valid_header_is_reported_and_the_epoch_goes_on(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("RGB", (20, 20), (40 * i, 100, 7)).save(tmp_path / cls / f"ok{i}.jpg")
    (tmp_path / "a" / "body.png").write_bytes(_bad_png())
    (tmp_path / "b" / "body.jpg").write_bytes(_bad_jpeg())
    index = scan(tmp_path, val_fraction=0.0)
    assert len(index["train"]) == 10 and index.skipped == []  # the header scan sees nothing wrong
    for shuffle in (False, True, True):
        ds = make_dataset(index, "train", image_size=(8, 8), batch_size=3, shuffle=shuffle)
        labels = np.concatenate([y.numpy() for _, y in ds])
        assert sorted(labels.tolist()) == [0] * 4 + [1] * 4
    assert sorted((Path(s.path).name, s.reason, s.split) for s in index.skipped) == [
        ("body.jpg", decode.CORRUPT, "train"), ("body.png", decode.CORRUPT, "train")]
    assert all("in-graph decoder failed" in s.detail for s in index.skipped)
    good = np.concatenate([x.numpy() for x, _ in make_dataset(index, "train", image_size=(8, 8), batch_size=64)])
    np.testing.assert_allclose(good[:, 4, 4, 0], [0, 40, 80, 120] * 2, atol=3)  # the rest of the chunk survives


def test_crop_plan_windows_lie_inside_the_image_within_the_policy_ranges():
    plan = build_augmentation(standard_policy("keras"), image_size=SIZE, num_classes=2).per_image_fn.crop_plan
    shape = tf.constant([300, 400, 3], tf.int32)
    windows, flipped = [], []
    for k in range(40):
        window, finish = plan(shape, tf.constant([k, 7], tf.int64))
        y, x, h, w = window.numpy().tolist()
        windows.append((y, x, h, w))
        assert 0 <= y and 0 <= x and y + h <= 300 and x + w <= 400
        assert 0.08 * 0.9 <= h * w / (300 * 400) <= 1.0 and 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1
        ramp = tf.cast(tf.tile(tf.range(64)[None, :, None], [64, 1, 3]), tf.uint8)
        out = finish(ramp).numpy()
        assert out.shape == (*SIZE, 3) and out.dtype == np.float32
        flipped.append(bool(out[0, 0, 0] > out[0, -1, 0]))  # only horizontal flips in the standard policy
    assert len(set(windows)) == 40 and 5 < sum(flipped) < 35


@pytest.mark.slow
def test_jpeg_fast_path_is_seeded_keeps_png_and_reports_bad_files(photos, tmp_path, monkeypatch):
    root = tmp_path / "mixed"
    shutil.copytree(photos, root)
    Image.open(next((root / "cats").iterdir())).save(root / "cats" / "again.png")
    (root / "dogs" / "body.jpg").write_bytes(_bad_jpeg())
    crops = []
    decode_and_crop = tf.io.decode_and_crop_jpeg
    monkeypatch.setattr(tf.io, "decode_and_crop_jpeg", lambda *a, **k: crops.append(1) or decode_and_crop(*a, **k))
    index = scan(root, val_fraction=0.0)
    config = standard_policy("keras")
    first, again = _epochs(index, config, seed=5), _epochs(index, config, seed=5)
    assert crops  # the JPEGs went through decode_and_crop_jpeg
    images = [x for epoch in first for x, _ in epoch]
    assert [sum(len(x) for x, _ in epoch) for epoch in first] == [7, 7]  # 6 JPEGs and the PNG; the bad file skipped
    assert all(x.dtype == np.float32 and x.shape[1:] == (*SIZE, 3) and 0 <= x.min() and x.max() <= 255
               for x in images)
    for (x1, y1), (x2, y2) in zip(first[0] + first[1], again[0] + again[1], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0][0], _epochs(index, config, seed=6, epochs=1)[0][0][0])
    assert [(Path(s.path).name, s.reason) for s in index.skipped] == [("body.jpg", decode.CORRUPT)]
