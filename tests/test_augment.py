"""Augmentation back ends, MixUp/CutMix, seeding and the preview grid, on tiny real images."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from ftkit.augment import OPS, AugmentConfig, build_augmentation, standard_policy

SIZE = (32, 32)


@pytest.fixture(scope="module")
def photos(shared_data):
    """Eight real catsdogs photos (4 cats, 4 dogs) as uint8 arrays of their own sizes, and their labels."""
    images, labels = [], []
    for label, cls in enumerate(["cats", "dogs"]):
        for path in sorted((shared_data / "catsdogs" / "train" / cls).iterdir())[:4]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return images, np.array(labels)


@pytest.fixture(scope="module")
def batch(photos):
    images = np.stack([tf.image.resize(image, SIZE).numpy() for image in photos[0]]).astype(np.float32)
    return tf.constant(images), tf.one_hot(photos[1], 2)


def _seed(*words):
    return tf.constant(words, tf.int64)


def _run(config, images, labels, seed):
    """Both stages on a batch of images (any per-image size), as the data pipeline applies them."""
    aug = build_augmentation(config, image_size=SIZE, num_classes=2)
    if aug.per_image_fn:
        images = tf.stack([aug.per_image_fn(image, seed=_seed(seed[0], seed[1] * 100 + i)) for i, image in enumerate(images)])
    if aug.per_batch_fn:
        images, labels = aug.per_batch_fn(images, labels, seed=_seed(*seed))
    return images, labels


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_keras_op_keeps_shape_dtype_range_and_labels(op, batch):
    images, labels = batch
    out, out_labels = _run(AugmentConfig(backend="keras", ops=[{op: {}}]), images, labels, (1, 2))
    assert out.shape == images.shape and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
    np.testing.assert_array_equal(out_labels.numpy(), labels.numpy())
    assert not np.allclose(out.numpy(), images.numpy()), f"{op} changed nothing"


def test_keras_resample_accepts_any_input_size_and_uint8(photos):
    aug = build_augmentation(standard_policy("keras"), image_size=SIZE, num_classes=2)
    for i, image in enumerate(photos[0][:3]):
        out = aug.per_image_fn(tf.constant(image), seed=_seed(0, i))
        assert out.shape == (*SIZE, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0


def test_full_crop_and_flip_are_exact(batch):
    images, labels = batch
    config = AugmentConfig(backend="keras", ops=[{"random_resized_crop": {"scale": [1, 1], "ratio": [1, 1]}},
                                                 {"flip": {"mode": "horizontal"}}])
    out, _ = _run(config, images, labels, (5, 5))
    mirrored = images.numpy()[:, :, ::-1]
    flipped = [np.allclose(o, m, atol=1e-3) for o, m in zip(out.numpy(), mirrored, strict=True)]
    kept = [np.allclose(o, i, atol=1e-3) for o, i in zip(out.numpy(), images.numpy(), strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(flipped)


@pytest.mark.parametrize("jitter", [{"hue": 0.5}, {"saturation": 1.0}])
def test_hue_and_saturation_jitter_keep_luma(jitter, batch):
    images, labels = batch
    luma = tf.constant([0.299, 0.587, 0.114])
    mid = images * 0.25 + 96.0  # 96..160: saturation x2 or a hue turn stays inside 0..255, unclipped
    params = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0, **jitter}
    out, _ = _run(AugmentConfig(backend="keras", ops=[{"color_jitter": params}]), mid, labels, (0, 1))
    np.testing.assert_allclose(tf.reduce_sum(out * luma, -1), tf.reduce_sum(mid * luma, -1), atol=0.05)
    assert float(tf.reduce_max(tf.abs(out - mid))) > 5.0


def test_mixup_and_cutmix_rows_sum_to_one_and_cutmix_weight_is_pasted_area():
    # Image i is filled with the value 10*i, so every pixel tells which image it came from.
    images = tf.constant(np.arange(8, dtype=np.float32)[:, None, None, None] * 10 * np.ones((8, *SIZE, 3), np.float32))
    labels = tf.one_hot(np.arange(8), 8)
    for mix in ({"mixup": {"alpha": 0.4}}, {"cutmix": {"alpha": 1.0}}):
        aug = build_augmentation(AugmentConfig(backend="none", **mix), image_size=SIZE, num_classes=8)
        assert aug.uses_mixing
        out, soft = aug.per_batch_fn(images, labels, seed=_seed(3, 4))
        np.testing.assert_allclose(soft.numpy().sum(1), 1.0, atol=1e-6)
        assert (soft.numpy() >= 0).all() and not np.array_equal(soft.numpy(), labels.numpy())
        if "cutmix" in mix:
            own = (out.numpy()[..., 0] == (np.arange(8) * 10)[:, None, None]).mean((1, 2))
            np.testing.assert_allclose(soft.numpy()[np.arange(8), np.arange(8)], np.where(soft.numpy().max(1) == 1, 1, own),
                                       atol=1e-6)
        else:
            np.testing.assert_allclose(out.numpy()[:, 0, 0, 0], soft.numpy() @ (np.arange(8) * 10.0), atol=1e-3)


def test_mix_prob_zero_leaves_batch_and_labels_alone(batch):
    images, labels = batch
    aug = build_augmentation(AugmentConfig(backend="none", mixup={}, cutmix={}, mix_prob=0.0), image_size=SIZE,
                             num_classes=2)
    out, soft = aug.per_batch_fn(images, labels, seed=_seed(0, 0))
    np.testing.assert_array_equal(out.numpy(), images.numpy())
    np.testing.assert_array_equal(soft.numpy(), labels.numpy())


def _albumentations(*transforms, **config):
    import albumentations as A

    spec = A.to_dict(A.Compose(list(transforms)))
    return build_augmentation(AugmentConfig(backend="albumentations", albumentations=spec, **config),
                              image_size=SIZE, num_classes=2)


def test_albumentations_leading_crop_runs_in_graph_the_rest_per_batch(photos, repo_root, batch):
    section = yaml.safe_load((repo_root / "recipes" / "augment" / "albumentations_standard.yaml").read_text())
    aug = build_augmentation(section["augment"], image_size=SIZE, num_classes=2)
    assert aug.per_image_fn.takes_decoded and aug.per_image_fn.crop_plan and not aug.uses_mixing
    image = photos[0][0]
    for candidate in (tf.constant(image), tf.cast(image, tf.float32)):
        out = aug.per_image_fn(candidate, seed=_seed(0, 7))
        assert out.shape == (*SIZE, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), aug.per_image_fn(tf.constant(image), seed=_seed(0, 7)).numpy())
    assert not np.array_equal(out.numpy(), aug.per_image_fn(tf.constant(image), seed=_seed(0, 8)).numpy())
    images, labels = batch
    jittered, same_labels = aug.per_batch_fn(images, labels, seed=_seed(0, 7))
    assert jittered.shape == images.shape and jittered.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(jittered)) and float(tf.reduce_max(jittered)) <= 255.0
    np.testing.assert_array_equal(same_labels.numpy(), labels.numpy())
    np.testing.assert_array_equal(jittered.numpy(), aug.per_batch_fn(images, labels, seed=_seed(0, 7))[0].numpy())
    assert not np.array_equal(jittered.numpy(), aug.per_batch_fn(images, labels, seed=_seed(0, 8))[0].numpy())
    # Each image of a batch draws its own jitter: the same image twice in one batch comes out differently.
    twice, _ = aug.per_batch_fn(tf.stack([images[0], images[0]]), labels[:2], seed=_seed(0, 7))
    assert not np.array_equal(twice[0].numpy(), twice[1].numpy())


def test_albumentations_in_graph_crop_keeps_scale_and_ratio(photos):
    import albumentations as A

    image = photos[0][0]
    height, width = image.shape[:2]
    # scale 1 at the image's own aspect: the only window is the whole image, resampled once to SIZE.
    whole = _albumentations(A.RandomResizedCrop(size=SIZE, scale=(1.0, 1.0), ratio=(width / height,) * 2))
    out = whole.per_image_fn(tf.constant(image), seed=_seed(0, 1))
    expected = tf.image.crop_and_resize(tf.constant(image)[None], [[0.0, 0.0, 1.0, 1.0]], [0], SIZE)[0]
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=0.01)
    assert whole.per_batch_fn is None  # nothing after the crop
    # Windows of 9-11% of the area, near square, drawn from the header for JPEGs: the crop plan's windows.
    small = _albumentations(A.RandomResizedCrop(size=SIZE, scale=(0.09, 0.11), ratio=(0.9, 1.1)))
    for word in range(5):
        window, _ = small.per_image_fn.crop_plan(tf.constant([height, width, 3]), _seed(0, word))
        y, x, h, w = window.numpy()
        assert 0.085 <= h * w / (height * width) <= 0.115 and 0.85 <= w / h <= 1.15, (h, w)
        assert 0 <= y <= height - h and 0 <= x <= width - w


def test_albumentations_without_leading_crop_runs_per_batch_on_resized_images(batch):
    import albumentations as A

    aug = _albumentations(A.HorizontalFlip(p=1.0))
    assert aug.per_image_fn is None
    images, labels = batch
    flipped, _ = aug.per_batch_fn(images, labels, seed=_seed(0, 1))
    np.testing.assert_array_equal(flipped.numpy(), np.round(images.numpy())[:, :, ::-1])
    # Half flipped, half returned as they came (the pipeline hands back its input, which is the thread's
    # conversion buffer): each row is still its own image, not the buffer's last content.
    some, _ = _albumentations(A.HorizontalFlip(p=0.5)).per_batch_fn(images, labels, seed=_seed(0, 1))
    rounded = np.round(images.numpy())
    kept = [np.array_equal(row, image) for row, image in zip(some.numpy(), rounded, strict=True)]
    mirrored = [np.array_equal(row, image[:, ::-1]) for row, image in zip(some.numpy(), rounded, strict=True)]
    assert all(k != m for k, m in zip(kept, mirrored, strict=True)) and any(kept) and any(mirrored), (kept, mirrored)


def test_albumentations_crop_in_graph_off_runs_the_whole_pipeline_per_image(photos):
    import albumentations as A

    aug = _albumentations(A.RandomResizedCrop(size=SIZE), A.HorizontalFlip(p=0.5), crop_in_graph=False)
    assert aug.per_batch_fn is None and aug.per_image_fn.takes_decoded
    assert getattr(aug.per_image_fn, "crop_plan", None) is None
    out = aug.per_image_fn(tf.constant(photos[0][0]), seed=_seed(0, 3))
    assert out.shape == (*SIZE, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), aug.per_image_fn(tf.constant(photos[0][0]), seed=_seed(0, 3)).numpy())
    # A crop that albumentations draws with p < 1 cannot move into the graph: also per image.
    partial = _albumentations(A.RandomResizedCrop(size=SIZE, p=0.5), A.HorizontalFlip(p=0.5))
    assert partial.per_batch_fn is None and getattr(partial.per_image_fn, "crop_plan", None) is None


def _pipeline(config, photos, seed):
    """Per image (parallel map) then per batch, through Augmentation's dataset helpers; two epochs."""
    aug = build_augmentation(config, image_size=SIZE, num_classes=2, seed=seed)
    images = [tf.image.resize(image, (48, 40)).numpy().astype(np.uint8) for image in photos[0]]
    ds = tf.data.Dataset.from_tensor_slices((np.stack(images), tf.one_hot(photos[1], 2)))
    ds = aug.augment_images(ds, training=True)
    if aug.per_image_fn is None:
        ds = ds.map(lambda x, y: (tf.image.resize(x, SIZE), y))
    ds = aug.augment_batches(ds.batch(4), training=True)
    return [[(x.numpy(), y.numpy()) for x, y in ds] for _epoch in range(2)]


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(backend="keras", ops=[{"random_resized_crop": {}}, {"flip": {}}, {"color_jitter": {"hue": 0.1}},
                                            {"cutout": {}}], mixup={}, cutmix={}),
        AugmentConfig(backend="keras", ops=[{"rotation": {}}]),
        standard_policy("albumentations", image_size=SIZE),
    ],
    ids=["keras-stateless", "keras-layer", "albumentations"],
)
def test_same_seed_same_batches_other_seed_or_epoch_differs(config, photos):
    first, again, other = _pipeline(config, photos, 0), _pipeline(config, photos, 0), _pipeline(config, photos, 1)
    for (x1, y1), (x2, y2) in zip(first[0] + first[1], again[0] + again[1], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0][0], other[0][0][0])
    assert not np.array_equal(first[0][0][0], first[1][0][0])


def test_evaluation_data_is_never_augmented(batch):
    aug = build_augmentation(standard_policy("keras"), image_size=SIZE, num_classes=2)
    ds = tf.data.Dataset.from_tensor_slices(batch).batch(4)
    assert aug.augment_batches(ds, training=False) is ds
    assert aug.augment_images(ds.unbatch(), training=False).element_spec == ds.unbatch().element_spec
    none = build_augmentation(AugmentConfig(), image_size=SIZE, num_classes=2)
    assert none.per_image_fn is None and none.per_batch_fn is None


def test_with_ftkit_data_pipeline(shared_data, tmp_path):
    from ftkit.data import make_dataset, scan

    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for path in sorted((shared_data / "catsdogs" / "train" / cls).iterdir())[:3]:
            shutil.copy(path, tmp_path / cls)
    index = scan(tmp_path, val_fraction=0.0)
    config = AugmentConfig(backend="keras", ops=[{"random_resized_crop": {}}, {"color_jitter": {"brightness": 0.3}}],
                           cutmix={})
    aug = build_augmentation(config, image_size=SIZE, num_classes=index.num_classes)
    ds = make_dataset(index, "train", image_size=SIZE, batch_size=4, per_image_fn=aug.per_image_fn,
                      per_batch_fn=aug.per_batch_fn)
    batches = list(ds)
    assert [x.shape[0] for x, _ in batches] == [4, 2]
    for x, y in batches:
        assert x.shape[1:] == (*SIZE, 3) and x.dtype == tf.float32 and y.shape[1] == 2
        np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-6)


def test_preview_png_has_the_grid_size(shared_data, tmp_path):
    from ftkit.augment.preview import LABEL_STRIP, tile_scale
    from ftkit.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"train": str(shared_data / "catsdogs"), "image_size": [40, 48]},
        "augment": standard_policy("keras").to_recipe(),
        "backbone": {"name": "resnet18"},
        "schedule": {"preset": "freeze"},
    }))
    out = tmp_path / "grid.png"
    assert main(["augment", "preview", str(recipe), "--out", str(out), "--samples", "3", "--variants", "4"]) == 0
    k = tile_scale((40, 48))  # 40x48 images are drawn enlarged, each pixel a k x k block
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == ((1 + 4) * 48 * k, LABEL_STRIP + 3 * 40 * k)
        pixels = np.asarray(png.convert("RGB"))
    tiles = [pixels[LABEL_STRIP:LABEL_STRIP + 40 * k, c * 48 * k:(c + 1) * 48 * k].astype(int) for c in range(5)]
    assert all(np.abs(tiles[0] - t).mean() > 1 for t in tiles[1:])  # each variant differs from the original


def test_preview_reports_a_missing_data_root(tmp_path):
    from ftkit.augment.preview import preview

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: {train: no/such/folder}\naugment: {backend: none}\n"
                      "backbone: {name: resnet18}\nschedule: {preset: freeze}\n")
    with pytest.raises(FileNotFoundError, match="Received: data.train='no/such/folder'"):
        preview(recipe, out=tmp_path / "x.png")
