"""``ftkit export``: a finished run's model for deployment, taking raw uint8 images, giving probabilities.

Formats: ``keras`` (a ``.keras`` file), ``savedmodel`` (TensorFlow SavedModel, serving signature) and
``tflite``. The class names are written beside the model (``class_names.json``), in output order. The model is
the run's ``model.keras`` or, with ``checkpoint``, its best or last epoch (:func:`ftkit.evaluate.load_model`).
"""

from __future__ import annotations

import json
from pathlib import Path

FORMATS = ("keras", "savedmodel", "tflite")


def uint8_model(model, *, image_size, channels: int):
    """``model`` behind a uint8 input: a built-in Rescaling(1.0) layer casts to float32 (no custom code)."""
    import keras

    inputs = keras.Input(shape=(*image_size, channels), dtype="uint8", name="image_uint8")
    x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    return keras.Model(inputs, model(x), name=f"{model.name}_uint8")


def export_run(run_dir: str | Path, *, format: str = "keras", out: str | Path | None = None,
               checkpoint: str | None = None) -> Path:
    """Export ``RUN/model.keras``, or with ``checkpoint="best"``/``"last"`` the inference model of that epoch;
    returns the written file or folder (default ``RUN/export/``; ``RUN/export-best/`` or ``RUN/export-last/`` for
    a checkpoint, so that exporting both keeps both)."""
    from ftkit.evaluate.runs import load_model

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}. Received: format={format!r}")
    loaded = load_model(run_dir, checkpoint=checkpoint)
    model = uint8_model(loaded.model, image_size=loaded.image_size, channels=loaded.channels)
    out_dir = Path(out) if out else Path(loaded.run_dir) / (f"export-{checkpoint}" if checkpoint else "export")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "class_names.json").write_text(json.dumps(loaded.class_names, indent=2))
    if format == "keras":
        target = out_dir / "model.keras"
        model.save(target)
        return target
    if format == "savedmodel":
        saved = out_dir / "savedmodel"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        return saved
    import tempfile

    import tensorflow as tf

    target = out_dir / "model.tflite"
    # The converter reads a SavedModel; this one is a step, not a deliverable, so it is not left in out_dir.
    with tempfile.TemporaryDirectory(prefix="ftkit-export-") as scratch:
        model.export(scratch, format="tf_saved_model", verbose=False)
        target.write_bytes(tf.lite.TFLiteConverter.from_saved_model(scratch).convert())
    return target
