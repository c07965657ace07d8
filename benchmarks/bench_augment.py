"""Augmentation throughput: images/s at 224x224, batch 32, on ../shared/data/catsdogs/train.

Rows (one run, rounds interleaved so that load from other jobs hits every row alike; median and best epoch
reported, and CPU time per image):
- reference: the Keras loader (``keras.utils.image_dataset_from_directory``) with no augmentation;
- peer: the same loader with Keras ``RandomFlip + RandomRotation + RandomZoom`` mapped over it;
- ftkit.data loader (``make_dataset``) with no augmentation, for context;
- ftkit keras: the ftkit.data loader with the keras back end's standard policy, timm's ImageNet training
  default (random resized crop + horizontal flip as one resample per image, colour jitter of brightness,
  contrast and saturation 0.4, no hue, as one multiply-add per channel per batch);
- ftkit albumentations: the ftkit.data loader with the same policy as an albumentations pipeline per image.
Then, op by op, milliseconds per 32x224x224 batch of each library layer and of ftkit's batched op.

Run: python benchmarks/bench_augment.py [--rounds 3] [--no-ops]
"""

from __future__ import annotations

import argparse
import os
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


def _ftkit_loader(config=None):
    """ftkit.data's pipeline over catsdogs/train, with the back end's functions plugged in."""
    from ftkit.data import make_dataset, scan

    index = scan(ROOT.parent, val_fraction=0.0)
    fns = {}
    if config is not None:
        aug = build_augmentation(config, image_size=SIZE, num_classes=index.num_classes)
        fns = {"per_image_fn": aug.per_image_fn, "per_batch_fn": aug.per_batch_fn}
    return make_dataset(index, "train", image_size=SIZE, batch_size=BATCH, one_hot=True, **fns)


def ftkit_plain():
    return _ftkit_loader()


def ftkit_keras():
    return _ftkit_loader(standard_policy("keras", image_size=SIZE))


def ftkit_albumentations():
    return _ftkit_loader(standard_policy("albumentations", image_size=SIZE))


PIPELINES = {
    "Keras loader, no augmentation (reference)": reference,
    "Keras loader + RandomFlip/Rotation/Zoom (peer)": peer,
    "ftkit.data loader, no augmentation": ftkit_plain,
    "ftkit keras back end, standard policy": ftkit_keras,
    "ftkit albumentations back end, standard policy": ftkit_albumentations,
}


def images_per_second(dataset) -> tuple[float, float]:
    """Images per second, and CPU milliseconds per image (all threads of this process)."""
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start), (time.process_time() - cpu) / count * 1e3


def bench_pipelines(rounds: int) -> None:
    datasets = {name: make() for name, make in PIPELINES.items()}
    for dataset in datasets.values():
        images_per_second(dataset)  # warm-up: traces functions, fills the OS file cache
    rates = {name: [] for name in datasets}
    cpu = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            rate, cpu_ms = images_per_second(dataset)
            rates[name].append(rate)
            cpu[name].append(cpu_ms)
    first = next(iter(rates))
    ref, ref_cpu, ref_best = statistics.median(rates[first]), statistics.median(cpu[first]), max(rates[first])
    # Wall-clock rates of pipelines that keep tf.data's autotuning model (the Keras loader's) jump between two
    # levels ~1.4x apart: deleting the iterator after a pass stalls ~0.5 s in about half the epochs (BENCHMARKS.md,
    # Data, seventh session), so a median can land on either level. Printed next to it: the best epoch of each row
    # (the least disturbed one, as timeit takes the minimum) and CPU time per image, which does not jump.
    print(f"\n| pipeline (catsdogs/train, 1000 images, {SIZE[0]}x{SIZE[1]}, batch {BATCH}) | median images/s | x reference "
          "| best epoch images/s | x reference | CPU ms/img | x reference by CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in rates.items():
        rate, best, cpu_ms = statistics.median(values), max(values), statistics.median(cpu[name])
        print(f"| {name} | {rate:,.0f} | {rate / ref:.2f} | {best:,.0f} | {best / ref_best:.2f} | {cpu_ms:.2f} "
              f"| {ref_cpu / cpu_ms:.2f} |")


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

    jitter = dict(standard_policy("keras").ops[2][1])  # timm's ImageNet default: 0.4 each, no hue
    rows = [
        ("random resized crop", layer(keras_cv.layers.RandomCropAndResize(SIZE, (0.08, 1.0), (0.75, 4 / 3))),
         "keras-cv RandomCropAndResize", ftkit_op("random_resized_crop", {})),
        ("horizontal flip", layer(keras.layers.RandomFlip("horizontal")), "Keras RandomFlip", ftkit_op("flip", {})),
        ("colour jitter", layer(keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=jitter["brightness"], contrast_factor=jitter["contrast"],
            saturation_factor=jitter["saturation"], hue_factor=jitter["hue"] or None)), "Keras RandomColorJitter",
         ftkit_op("color_jitter", jitter)),
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-ops", action="store_true", help="skip the op-by-op table")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {len(tf.config.list_physical_devices('GPU'))} GPU(s)")
    print(f"load average before: {os.getloadavg()}")
    bench_pipelines(args.rounds)
    print(f"load average after the pipelines: {os.getloadavg()}")
    if not args.no_ops:
        bench_ops(repeats=5)


if __name__ == "__main__":
    main()
