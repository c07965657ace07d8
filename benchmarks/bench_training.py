"""Fine-tuning engine speed, each against its peer measured in the same run.

1. ftkit's training loop (``ftkit.train``: per-epoch fit, checkpoints, TensorBoard, history) against a plain
   ``model.fit`` script on the same model (ResNet-18, 32x32x3) and the same data (MNIST digits 0-4, 2,000
   images, in memory): images per second over the whole run, model building and tracing included.
2. The frozen (head-only) phase with the feature cache against without it, ResNet-50 at 224x224 on
   ../shared/data/hymenoptera (245 train / 153 val images): seconds per epoch after the first.

    python benchmarks/bench_training.py [--skip-loop] [--skip-cache] [--epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
QUIET = dict(log=lambda *a: None)


def loop_recipe(epochs: int) -> dict:
    return {
        "data": {"train": str(DATA / "mnist"), "classes": ["0", "1", "2", "3", "4"], "samples_per_class": 400,
                 "image_size": [32, 32], "channels": 3, "batch_size": 64},
        "backbone": {"name": "resnet18"},
        "schedule": {"phases": [{"train": "all", "epochs": epochs, "lr": 0.001}]},
        "train": {"verbose": 0, "seed": 0},
        "evaluate": {"enabled": False},
    }


def run_ftkit(epochs: int) -> float:
    from ftkit.training import train

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(loop_recipe(epochs), out=Path(tmp) / "run", **QUIET)
        return time.perf_counter() - start


def run_plain_fit(epochs: int) -> float:
    """What a hand-written script does: the same model and data, one fit() call, one save at the end."""
    import keras

    from ftkit.head import build_model
    from ftkit.recipe import load_recipe
    from ftkit.training.inputs import load_data

    recipe = load_recipe(loop_recipe(epochs))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = load_data(recipe.data, image_shape=(32, 32, 3))
        keras.utils.set_random_seed(0)
        model = build_model("resnet18", num_classes=5, image_shape=(32, 32, 3), head=recipe.head).model
        model.compile(keras.optimizers.Adam(0.001), keras.losses.CategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        import ftkit.data

        train = ftkit.data.make_dataset(data.index, "train", image_size=(32, 32), channels=3, batch_size=64,
                                        shuffle=True, seed=0, one_hot=True)
        model.fit(train, epochs=epochs, verbose=0)
        model.save(Path(tmp) / "model.keras")
        return time.perf_counter() - start


def bench_loop(epochs: int, repeats: int) -> list[str]:
    images = 2000 * epochs
    ftkit_s, plain_s = [], []
    for _ in range(repeats):  # interleaved, so load from other jobs hits both alike
        plain_s.append(run_plain_fit(epochs))
        ftkit_s.append(run_ftkit(epochs))
    best_ftkit, best_plain = min(ftkit_s), min(plain_s)
    return [
        f"| plain `model.fit` script | {best_plain:.1f} | {images / best_plain:.0f} | 1.00 |",
        f"| `ftkit.train` | {best_ftkit:.1f} | {images / best_ftkit:.0f} | {best_plain / best_ftkit:.2f} |",
    ]


def cache_recipe(cached: bool, epochs: int) -> dict:
    return {
        "data": {"train": str(DATA / "hymenoptera"), "image_size": [224, 224], "batch_size": 32},
        "backbone": {"name": "resnet50"},
        "schedule": {"phases": [{"train": "head", "epochs": epochs, "lr": 0.001}]},
        "train": {"verbose": 0, "seed": 0, "feature_cache": cached},
        "evaluate": {"enabled": False},
    }


def bench_cache(epochs: int) -> list[str]:
    from ftkit.training import train

    rows, per_epoch = [], {}
    for cached in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = train(cache_recipe(cached, epochs), out=Path(tmp) / "run", **QUIET)
            total = time.perf_counter() - start
            with open(result.path / "history.csv") as fp:
                seconds = [float(r["seconds"]) for r in csv.DictReader(fp)]
        per_epoch[cached] = sum(seconds[1:]) / len(seconds[1:])
        rows.append((cached, seconds[0], per_epoch[cached], total))
    out = []
    for cached, first, later, total in rows:
        ratio = per_epoch[False] / per_epoch[cached]
        out.append(f"| {'with' if cached else 'without'} feature cache | {first:.2f} | {later:.2f} | {total:.1f} | "
                   f"{ratio:.1f}x |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    args = parser.parse_args()
    if not args.skip_loop:
        print(f"Training loop, ResNet-18 32x32x3, MNIST 0-4 (2,000 images), {args.epochs} epochs, best of "
              f"{args.repeats} (build, tracing and saving included)")
        print("| run | seconds | images/s | ratio vs plain fit |\n|---|---|---|---|")
        print("\n".join(bench_loop(args.epochs, args.repeats)))
    if not args.skip_cache:
        print(f"\nHead-only phase, ResNet-50 224x224, hymenoptera (245 train + 153 val), {args.epochs} epochs")
        print("| path | epoch 1 fit s | later epochs s/epoch | total s | speed-up after epoch 1 |\n|---|---|---|---|---|")
        print("\n".join(bench_cache(args.epochs)))


if __name__ == "__main__":
    main()
