"""Augmentation throughput: images/s at 224x224, batch 32, on ../shared/data/catsdogs/train.

Rows (one run, rounds interleaved so that load from other jobs hits every row alike, median reported):
- reference: the Keras loader (``keras.utils.image_dataset_from_directory``) with no augmentation;
- peer: the same loader with Keras ``RandomFlip + RandomRotation + RandomZoom`` mapped over it;
- ftkit keras: files decoded to uint8, ftkit's keras back end, standard policy: random resized crop + flip
  as one in-graph resample per image (it replaces the loader's resize), batched, colour jitter per batch;
- ftkit albumentations: files decoded to uint8, ftkit's albumentations back end per image (its random
  resized crop produces the 224x224 image, so it replaces the loader's resize), then batched.
Then, op by op, milliseconds per 32x224x224 batch of each library layer and of ftkit's batched op.

Run: python benchmarks/bench_augment.py [--rounds 3] [--no-ops]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import keras
import tensorflow as tf

from ftkit.augment import build_augmentation, standard_policy

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs" / "train"
SIZE = (224, 224)
BATCH = 32


def keras_loader():
    return keras.utils.image_dataset_from_directory(
        ROOT, image_size=SIZE, batch_size=BATCH, shuffle=False, label_mode="categorical", verbose=False
    )


def reference():
    return keras_loader().prefetch(tf.data.AUTOTUNE)


def peer():
    layers = keras.Sequential([
        keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1), keras.layers.RandomZoom(0.1)
    ])
    return keras_loader().map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def ftkit_keras():
    aug = build_augmentation(standard_policy("keras", image_size=SIZE), image_size=SIZE, num_classes=2)
    images = aug.augment_images(_decoded_files(), training=True).batch(BATCH)
    return aug.augment_batches(images, training=True).prefetch(tf.data.AUTOTUNE)


def _decoded_files():
    """A minimal loader (until ftkit.data lands): sorted files, uint8 decode, one-hot labels."""
    classes = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
    files = [(str(f), i) for i, c in enumerate(classes) for f in sorted((ROOT / c).iterdir())]
    paths, labels = zip(*files, strict=True)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image, tf.one_hot(label, len(classes))

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def ftkit_albumentations():
    aug = build_augmentation(standard_policy("albumentations", image_size=SIZE), image_size=SIZE, num_classes=2)
    return aug.augment_images(_decoded_files(), training=True).batch(BATCH).prefetch(tf.data.AUTOTUNE)


PIPELINES = {
    "Keras loader, no augmentation (reference)": reference,
    "Keras loader + RandomFlip/Rotation/Zoom (peer)": peer,
    "ftkit keras back end, standard policy": ftkit_keras,
    "ftkit albumentations back end, standard policy": ftkit_albumentations,
}


def images_per_second(dataset) -> float:
    count, start = 0, time.perf_counter()
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def bench_pipelines(rounds: int) -> None:
    datasets = {name: make() for name, make in PIPELINES.items()}
    for dataset in datasets.values():
        images_per_second(dataset)  # warm-up: traces functions, fills the OS file cache
    rates = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            rates[name].append(images_per_second(dataset))
    ref = statistics.median(rates[next(iter(rates))])
    print(f"\n| pipeline (catsdogs/train, 1000 images, {SIZE[0]}x{SIZE[1]}, batch {BATCH}) | images/s | x reference |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:,.0f} | {rate / ref:.2f} |")


def _time_op(fn, images, repeats: int) -> float:
    fn = tf.function(fn)
    fn(images)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(images)
    return (time.perf_counter() - start) / repeats * 1e3


def bench_ops(repeats: int) -> None:
    import keras_cv

    from ftkit.augment.config import parse_op
    from ftkit.augment.keras_backend import build_batch_ops

    images = tf.random.stateless_uniform((BATCH, *SIZE, 3), seed=[0, 0], maxval=255.0)
    seed = tf.constant([0, 0], tf.int64)

    def ftkit_op(name, params):
        ops_fn = build_batch_ops([parse_op({name: params})], image_size=SIZE, seed=0)
        return lambda x: ops_fn(x, seed)

    def layer(obj):
        return lambda x: obj(x, training=True)

    jitter = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}
    rows = [
        ("random resized crop", layer(keras_cv.layers.RandomCropAndResize(SIZE, (0.08, 1.0), (0.75, 4 / 3))),
         "keras-cv RandomCropAndResize", ftkit_op("random_resized_crop", {})),
        ("horizontal flip", layer(keras.layers.RandomFlip("horizontal")), "Keras RandomFlip", ftkit_op("flip", {})),
        ("colour jitter", layer(keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=0.2, contrast_factor=0.2, saturation_factor=0.2,
            hue_factor=0.02)), "Keras RandomColorJitter", ftkit_op("color_jitter", jitter)),
        ("random erasing", layer(keras.layers.RandomErasing(value_range=(0, 255))), "Keras RandomErasing",
         ftkit_op("random_erasing", {"probability": 1.0})),
        ("RandAugment", layer(keras.layers.RandAugment(value_range=(0, 255))), "Keras RandAugment",
         ftkit_op("rand_augment", {})),
    ]
    print(f"\n| op ({BATCH}x{SIZE[0]}x{SIZE[1]} batch) | library layer | ms/batch | ftkit | ms/batch |")
    print("|---|---|---:|---|---:|")
    for op, lib_fn, lib_name, ours in rows:
        lib_ms, our_ms = _time_op(lib_fn, images, repeats), _time_op(ours, images, repeats)
        impl = "keras-cv RandAugment" if op == "RandAugment" else "stateless tf ops"
        print(f"| {op} | {lib_name} | {lib_ms:.1f} | {impl} | {our_ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ops", action="store_true", help="skip the op-by-op table")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {len(tf.config.list_physical_devices('GPU'))} GPU(s)")
    bench_pipelines(args.rounds)
    if not args.no_ops:
        bench_ops(repeats=5)


if __name__ == "__main__":
    main()
