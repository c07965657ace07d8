"""ftkit's data stage: read real, messy image folders correctly and fast, and say what is wrong with them.

Public API (stable; the training, augmentation and evaluation stages call it):

- :func:`scan(source, *, val_fraction=0.2, test_fraction=0.0, seed=0, class_names=None, policy="skip",
  verify=None, max_pixels=..., root=None, progress=False) <ftkit.data.sources.scan>` -> :class:`DataIndex`:
  a class-per-folder tree (with or without ``train/ val/ test/``), a ``path,label[,split]`` CSV, an MNIST
  IDX folder or ``mnist.npz``. ``DataIndex`` holds per split (``index["train"]``) numpy arrays ``paths``
  and int32 ``labels``, the ``class_names`` (order fixed by the training data), ``skipped`` (path,
  reason, detail, split) and dataset-level ``problems``; ``summary()`` is the run-record view.
- :func:`make_dataset(index, split, *, image_size, channels=3, resize="stretch", batch_size=32,
  shuffle=False, seed=0, cache=None, per_image_fn=None, per_batch_fn=None, one_hot=None,
  deterministic=False, drop_remainder=False, repeat=False, epoch=0, augment_decoded=None)
  <ftkit.data.pipeline.make_dataset>`: batches of float32 ``[B, H, W, C]`` raw 0..255 images and int32 ``[B]``
  labels. No normalisation: the model carries it. Augmentation functions that take ``seed=`` get stateless
  seeds from ``(seed, epoch, position)``, so the same arguments give the same augmented batches.
- :func:`distribute(ds, strategy=None)`: distribute under a strategy, or prefetch onto the GPU.
- :func:`save_class_names` / :func:`load_class_names`: the class order saved with a run.
- :func:`check(source, ...) -> DoctorReport <ftkit.data.doctor.check>`: the ``ftkit data check`` report.
- :mod:`ftkit.data.decode`: Pillow decoding and its conversion policy (alpha over white, EXIF applied,
  first frame of animations, 16-bit kept until the final rounding).

Bad files never crash an epoch and are never modified: ``policy="skip"`` (default) skips and records each
with its reason (files found bad only when the pipeline decodes them are appended to ``index.skipped``); ``policy="strict"`` raises :class:`DataError` listing every bad file before training.

TensorFlow is imported only when the pipeline is used, so scanning and the doctor stay light.
"""

from ftkit.data.classes import load_class_names, save_class_names
from ftkit.data.decode import REASONS, SUPPORTED_FORMATS
from ftkit.data.sources import DataError, DataIndex, Problem, Skipped, Split, scan

__all__ = [
    "REASONS", "SUPPORTED_FORMATS", "DataError", "DataIndex", "DoctorReport", "Problem", "Skipped", "Split",
    "check", "distribute", "load_class_names", "make_dataset", "save_class_names", "scan",
]

_LAZY = {"make_dataset": "ftkit.data.pipeline", "distribute": "ftkit.data.pipeline",
         "check": "ftkit.data.doctor", "DoctorReport": "ftkit.data.doctor"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ftkit.data' has no attribute {name!r}")
