"""Throughput of ftkit's ResNet-50 and VGG-16 against keras.applications' on the same inputs, in one run.

    python benchmarks/bench_zoo.py                 # batch 8 at 224x224, 3 warm-up steps, 6 timed repetitions
    python benchmarks/bench_zoo.py --models resnet50 --batch 4 --repeats 10

Both implementations get the same compiled training step (SGD, sparse categorical cross-entropy, no XLA)
and the same inference call. Repetitions alternate between them in ABBA order, and the ratio is the median
of the ratios of adjacent repetitions, so background load (other jobs on a shared machine) and drift hit
both alike. The ratio is ftkit / keras.applications in images per second (target: >= 0.97).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ftkit.backbones.resnet import resnet50  # noqa: E402
from ftkit.backbones.vgg import vgg16  # noqa: E402

PAIRS = {
    "resnet50": (resnet50, keras.applications.ResNet50),
    "vgg16": (vgg16, keras.applications.VGG16),
}


def _compiled(builder):
    model = builder(weights=None)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy", jit_compile=False)
    return model


def _time_steps(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def bench_pair(name: str, *, batch: int, size: int, warmup: int, repeats: int, steps: int) -> list[dict]:
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-120, 150, (batch, size, size, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 1000, batch).astype("int32"))
    models = {impl: _compiled(builder) for impl, builder in zip(("ftkit", "keras"), PAIRS[name], strict=True)}
    rows = []
    for mode in ("train", "infer"):
        calls = {
            impl: (lambda m=m: m.train_on_batch(images, labels)) if mode == "train"
            else (lambda m=m: m.predict_on_batch(images))
            for impl, m in models.items()
        }
        for call in calls.values():
            _time_steps(call, warmup)
        seconds = {impl: [] for impl in calls}
        for repeat in range(repeats):
            for impl in (("ftkit", "keras") if repeat % 2 == 0 else ("keras", "ftkit")):
                seconds[impl].append(_time_steps(calls[impl], steps))
        paired = [k / f for f, k in zip(seconds["ftkit"], seconds["keras"], strict=True)]
        rate = {impl: batch * steps / statistics.median(s) for impl, s in seconds.items()}
        rows.append({"model": name, "mode": mode, "ftkit": rate["ftkit"], "keras": rate["keras"],
                     "ratio": statistics.median(paired), "spread": (min(paired), max(paired))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1, help="steps per timed repetition")
    args = parser.parse_args()

    devices = ", ".join(d.device_type for d in tf.config.list_physical_devices())
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, devices: {devices}; "
          f"TF {tf.__version__}, Keras {keras.__version__}; batch {args.batch} at {args.size}x{args.size}, "
          f"{args.repeats} ABBA repetitions of {args.steps} step(s) after {args.warmup} warm-up", flush=True)
    print("| model | step | ftkit img/s | keras.applications img/s | ratio (median) | ratio range |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.models:
        for row in bench_pair(name, batch=args.batch, size=args.size, warmup=args.warmup,
                              repeats=args.repeats, steps=args.steps):
            low, high = row["spread"]
            print(f"| {row['model']} | {row['mode']} | {row['ftkit']:.2f} | {row['keras']:.2f} | {row['ratio']:.3f} "
                  f"| {low:.2f}-{high:.2f} |", flush=True)


if __name__ == "__main__":
    main()
