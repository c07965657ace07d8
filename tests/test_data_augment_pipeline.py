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
