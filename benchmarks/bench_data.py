"""Data-stage benchmark: ftkit's pipeline against ``keras.utils.image_dataset_from_directory``.

    python benchmarks/bench_data.py [--repeats 3] [--scan-files 100000] [--skip-scan]

Part 1, on ``catsdogs/train`` and ``hymenoptera/train`` (224x224, batch 32, no shuffle), images per second
over one epoch of: the Keras loader with ``prefetch(AUTOTUNE)`` (its second epoch, so files sit in the OS
page cache for every contender); ftkit cold (no cache: every epoch reads and decodes every file; Keras and
ftkit epochs interleaved); ftkit with its decoded in-memory cache (second epoch on). Medians of
``--repeats`` epochs, and the best epoch of each (the Keras loader's rates are bimodal: its iterator deletion
stalls in about half the epochs, BENCHMARKS.md); ratios against Keras.
Also shown: ftkit's very first epoch (tracing included) and the time each takes to list the folder (ftkit's scan reads every header), and the CPU time per image of
the cold epochs, which other jobs on a shared machine disturb less than the wall-clock rate.

Part 2: time and peak memory (max RSS of a fresh process that imports only ``ftkit.data``) to scan a
generated folder of small images (10 classes; written once under the system temp folder and reused), at
a tenth and at the full size, to show memory per file; then the time to the first batch and the RSS
growth while streaming 200 batches from it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = [DATA / "catsdogs" / "train", DATA / "hymenoptera" / "train"]
SIZE = (224, 224)
BATCH = 32


def _epoch(ds) -> tuple[float, float]:
    """Images per second, and CPU milliseconds per image (all threads of this process)."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for _, labels in ds:
        n += int(labels.shape[0])
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e3


def _epoch_rate(ds) -> float:
    return _epoch(ds)[0]


def _loader_rates(folder: Path, repeats: int) -> dict[str, list[float]]:
    """Epoch rates, Keras and ftkit epochs interleaved so that load from other jobs hits both alike."""
    import keras
    import tensorflow as tf

    from ftkit.data import make_dataset, scan

    start = time.perf_counter()
    keras_ds = keras.utils.image_dataset_from_directory(folder, image_size=SIZE, batch_size=BATCH,
                                                        shuffle=False, verbose=False).prefetch(tf.data.AUTOTUNE)
    rates = {"keras listing s": [time.perf_counter() - start]}
    start = time.perf_counter()
    index = scan(folder, val_fraction=0.0)
    rates["ftkit scan s"] = [time.perf_counter() - start]
    _epoch_rate(keras_ds)  # fills the OS page cache and traces the Keras pipeline
    cold = make_dataset(index, "train", image_size=SIZE, batch_size=BATCH)
    rates["ftkit first epoch"] = [_epoch_rate(cold)]
    for _ in range(repeats):
        for name, ds in (("keras", keras_ds), ("ftkit cold", cold)):
            rate, cpu_ms = _epoch(ds)
            rates.setdefault(name, []).append(rate)
            rates.setdefault(f"{name} cpu", []).append(cpu_ms)
    cached = make_dataset(index, "train", image_size=SIZE, batch_size=BATCH, cache="memory")
    _epoch_rate(cached)  # fills the cache
    rates["ftkit cached"] = [_epoch_rate(cached) for _ in range(repeats)]
    return rates


def bench_loaders(repeats: int) -> None:
    print("| folder | images | Keras img/s | ftkit cold img/s (x Keras) | best epochs Keras / ftkit cold img/s (x) "
          "| ftkit cached img/s (x Keras) | CPU ms/img Keras / ftkit cold | ftkit first epoch img/s "
          "| Keras listing / ftkit scan s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in FOLDERS:
        rates = _loader_rates(folder, repeats)
        med = {k: statistics.median(v) for k, v in rates.items()}
        # The best epoch of each: the Keras loader's rates jump between two levels ~1.4x apart (BENCHMARKS.md).
        best_keras, best_cold = max(rates["keras"]), max(rates["ftkit cold"])
        n = sum(1 for p in folder.rglob("*") if p.is_file())
        print(f"| {folder.parent.name}/{folder.name} | {n} | {med['keras']:.0f} | "
              f"{med['ftkit cold']:.0f} ({med['ftkit cold'] / med['keras']:.2f}x) | "
              f"{best_keras:.0f} / {best_cold:.0f} ({best_cold / best_keras:.2f}x) | "
              f"{med['ftkit cached']:.0f} ({med['ftkit cached'] / med['keras']:.2f}x) | "
              f"{med['keras cpu']:.2f} / {med['ftkit cold cpu']:.2f} | "
              f"{med['ftkit first epoch']:.0f} | {med['keras listing s']:.2f} / {med['ftkit scan s']:.2f} |",
              flush=True)


def make_folder(root: Path, files: int) -> Path:
    """Writes ``files`` small images (16x16, alternating JPEG and PNG, 64 distinct pictures) in 10 classes."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete-{files}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG" if i % 2 else "PNG")
        blobs.append((buf.getvalue(), ".jpg" if i % 2 else ".png"))
    for i in range(files):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        data, ext = blobs[i % len(blobs)]
        (folder / f"img{i:06d}{ext}").write_bytes(data)
    marker.touch()
    return root


def _child_scan(folder: str, limit: int) -> None:
    from ftkit.data import sources

    base = _status_mb("VmHWM")
    start = time.perf_counter()
    index = sources.scan(folder, val_fraction=0.0)
    seconds = time.perf_counter() - start
    assert len(index["train"]) == limit, (len(index["train"]), limit)
    print(json.dumps({"seconds": seconds, "files": limit, "base_mb": base, "peak_mb": _status_mb("VmHWM")}))


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc (ru_maxrss would include the parent's peak before exec)."""
    with open("/proc/self/status") as fp:
        line = next(row for row in fp if row.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _child_stream(folder: str) -> None:
    import tensorflow as tf  # noqa: F401 - imported before the baseline so its own memory is not counted

    from ftkit.data import make_dataset, scan

    index = scan(folder, val_fraction=0.0, verify="none")
    baseline = _rss_mb()
    start = time.perf_counter()
    ds = make_dataset(index, "train", image_size=(32, 32), batch_size=BATCH, shuffle=True)
    it = iter(ds)
    next(it)
    first = time.perf_counter() - start
    rss = [baseline, _rss_mb()]
    for i in range(200):
        next(it)
        if i in (49, 199):
            rss.append(_rss_mb())
    print(json.dumps({"first_batch_s": first, "rss_mb": rss}))


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_scan(files: int) -> None:
    base = Path(tempfile.gettempdir()) / "ftkit-bench-data"
    print("\n| files | scan time s | files/s | peak RSS MB (after import) | KB per file |")
    print("|---|---|---|---|---|")
    for n in (files // 10, files):
        folder = make_folder(base / str(n), n)
        _run_child("--child-scan", str(folder), str(n))  # warm the OS cache of the directory entries
        r = _run_child("--child-scan", str(folder), str(n))
        grow = r["peak_mb"] - r["base_mb"]
        print(f"| {n} | {r['seconds']:.1f} | {n / r['seconds']:.0f} | {r['peak_mb']:.0f} ({r['base_mb']:.0f}) | "
              f"{grow * 1024 / n:.2f} |", flush=True)
    s = _run_child("--child-stream", str(base / str(files)))
    print(f"\nStreaming {files} files (verify='none' scan, 32x32, batch 32, shuffled): first batch after "
          f"{s['first_batch_s']:.2f} s; RSS before the pipeline (TensorFlow and the index loaded) / after 1 / 50 / "
          "200 batches: "
          + " / ".join(f"{v:.0f} MB" for v in s["rss_mb"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan-files", type=int, default=100_000)
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--skip-loaders", action="store_true")
    parser.add_argument("--child-scan", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_scan:
        return _child_scan(args.child_scan[0], int(args.child_scan[1]))
    if args.child_stream:
        return _child_stream(args.child_stream)
    if not args.skip_loaders:
        print(f"load average before: {os.getloadavg()}")
        bench_loaders(args.repeats)
        print(f"load average after: {os.getloadavg()}")
    if not args.skip_scan:
        bench_scan(args.scan_files)


if __name__ == "__main__":
    main()
