"""An albumentations setting that only fails on an image (a crop larger than ``data.image_size``) is a clear
``ValueError`` before training, not an error inside tf.data in the middle of the first epoch."""

import pytest

from ftkit.augment import AugmentConfig, build_augmentation


def _config(*transforms, crop_in_graph=True):
    return AugmentConfig(backend="albumentations", crop_in_graph=crop_in_graph, albumentations={"transform": {
        "__class_fullname__": "Compose", "p": 1.0, "transforms": list(transforms)}})


FLIP = {"__class_fullname__": "HorizontalFlip", "p": 0.5}


def _crop(side, p=1.0):
    return {"__class_fullname__": "RandomCrop", "p": p, "height": side, "width": side}


@pytest.mark.parametrize("p", [1.0, 0.2], ids=["always", "sometimes"])
def test_a_crop_larger_than_the_images_fails_at_build_time(p):
    config = _config(FLIP, _crop(48, p=p))
    with pytest.raises(ValueError) as error:
        build_augmentation(config, image_size=(32, 40), num_classes=2)
    assert str(error.value) == (
        "the albumentations pipeline fails on a 32x40 image (data.image_size) with 3 channel(s), every transform on: "
        "CropSizeError: Crop size (height, width) exceeds image dimensions (height, width): (48, 48) vs (32, 40). "
        "Received: augment.albumentations with transforms ['HorizontalFlip', 'RandomCrop']")
    # the same pipeline on images it fits builds, and crops them
    aug = build_augmentation(config, image_size=(48, 48), num_classes=2)
    assert aug.per_batch_fn is not None


def test_the_leading_crop_in_the_graph_is_not_what_is_tried():
    resized = {"__class_fullname__": "RandomResizedCrop", "p": 1.0, "size": [64, 64]}
    # the leading crop runs in the graph and gives image_size: the RandomCrop after it sees 32x32 and fails
    with pytest.raises(ValueError, match=r"fails on a 32x32 image .* \(48, 48\) vs \(32, 32\)"):
        build_augmentation(_config(resized, _crop(48)), image_size=(32, 32), num_classes=2)
    assert build_augmentation(_config(resized, _crop(24)), image_size=(32, 32), num_classes=2).per_batch_fn
    # the whole pipeline per image (crop_in_graph: false) is tried as a whole: its own crop makes 64x64, which
    # fits the RandomCrop; one that makes 40x40 does not
    per_image = build_augmentation(_config(resized, _crop(48), crop_in_graph=False), image_size=(32, 32),
                                   num_classes=2)
    assert per_image.per_image_fn is not None and per_image.per_batch_fn is None
    small = dict(resized, size=[40, 40])
    with pytest.raises(ValueError, match=r"fails on a 32x32 image .*\(48, 48\) vs \(40, 40\)"):
        build_augmentation(_config(small, _crop(48), crop_in_graph=False), image_size=(32, 32), num_classes=2)


def test_train_stops_before_the_first_step_with_the_message(mnist, tmp_path):
    from _training_helpers import QUIET, mnist_recipe, register_tiny

    from ftkit.training import train

    register_tiny()
    recipe = mnist_recipe(mnist, augment={"backend": "albumentations", "albumentations": {"transform": {
        "__class_fullname__": "Compose", "p": 1.0, "transforms": [FLIP, _crop(20)]}}})
    with pytest.raises(ValueError, match=r"^the albumentations pipeline fails on a 16x16 image .*\(20, 20\) vs "
                                         r"\(16, 16\)"):
        train(recipe, out=tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
