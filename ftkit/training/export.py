"""``ftkit export``: a finished run's model for deployment, taking raw uint8 images, giving probabilities.

Formats: ``keras`` (a ``.keras`` file), ``savedmodel`` (TensorFlow SavedModel, serving signature) and
``tflite``. The model is the run's ``model.keras`` or, with ``checkpoint``, its best or last epoch
(:func:`ftkit.evaluate.load_model`). Beside it: ``class_names.json`` (in output order) and ``preprocessing.json``
(the input the model takes and how to make it from an image file as ``ftkit predict`` does). Every format takes
images already resized to the run's size and refuses others: the run's models end in a global pooling, so they
would otherwise return probabilities for any size, different from ftkit's.
"""

from __future__ import annotations

import json
from pathlib import Path

FORMATS = ("keras", "savedmodel", "tflite")
INPUT_NAME = "image_uint8"
PREPROCESSING_FILE = "preprocessing.json"

# How each resize policy (``ftkit_run.json``'s ``resize``, ftkit.data.pipeline.resize_image) makes H x W.
_RESIZE_POLICIES = {
    "stretch": "tf.image.resize(image, (H, W), method='bilinear') (no antialias), ignoring the aspect ratio",
    "crop": "centre crop to the H:W aspect ratio (the crop's sides rounded), then tf.image.resize(image, (H, W), "
            "method='bilinear') (no antialias)",
    "pad": "tf.image.resize_with_pad(image, H, W) (bilinear, aspect kept, black borders)",
}
_JPEG_SCALE = ("JPEGs are decoded at a reduced DCT scale, tf.io.decode_jpeg(data, channels=3, ratio=r) with r the "
               "largest of 1, 2, 4, 8 that keeps {sides} at least r times the target's (unless, over all the files "
               "of one ftkit call, that would save less than a quarter of the decoded pixels: then r = 1)")


def uint8_model(model, *, image_size, channels: int):
    """``model`` behind a uint8 input: a built-in Rescaling(1.0) layer casts to float32 (no custom code)."""
    import keras

    inputs = keras.Input(shape=(*image_size, channels), dtype="uint8", name=INPUT_NAME)
    x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    return keras.Model(inputs, model(x), name=f"{model.name}_uint8")


def serving_function(model, *, image_size, channels: int):
    """``model`` (uint8 in) as the SavedModel/TFLite serving function, refusing any other H, W or channels with an
    error naming the expected size. Its signature says ``[None, H, W, C]``, but neither a loaded SavedModel's
    signature nor a TFLite interpreter after ``resize_tensor_input(..., strict=False)`` enforces that."""
    import tensorflow as tf

    height, width = image_size
    expected = tf.constant([height, width, channels])
    message = (f"This model takes uint8 images of {height}x{width}x{channels} (H x W x channels), resized as "
               f"{PREPROCESSING_FILE} beside it says. Received: shape [batch, H, W, C] =")
    # The TFLite converter drops Assert ops; a CONCATENATION with one image of the right size (sliced off again)
    # is a builtin that refuses any other H/W/C when the interpreter prepares it.
    reference = tf.zeros([1, height, width, channels], tf.uint8)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name=INPUT_NAME)])
    def serve(image_uint8):
        shape = tf.shape(image_uint8)
        check = tf.debugging.Assert(tf.reduce_all(tf.equal(shape[1:], expected)), [message, shape], summarize=4)
        with tf.control_dependencies([check]):
            checked = tf.concat([reference, image_uint8], axis=0)[1:]
        return model(checked)

    return serve


def preprocessing_spec(loaded) -> dict:
    """What the exported model takes and how ``ftkit predict`` makes it from an image file (``preprocessing.json``)."""
    height, width = loaded.image_size
    resize = _RESIZE_POLICIES[loaded.resize]
    sides = "the side that fills the target" if loaded.resize == "pad" else "both sides"
    colour = "RGB" if loaded.channels == 3 else "grayscale (tf.image.rgb_to_grayscale of the RGB image)"
    return {
        "input_name": INPUT_NAME,
        "input_shape": [None, height, width, loaded.channels],
        "image_size": [height, width],
        "channels": loaded.channels,
        "dtype": "uint8",
        "range": [0, 255],
        "colour": colour,
        "normalisation": "none: the model normalises internally (raw 0..255 pixels in)",
        "resize": loaded.resize,
        "resize_method": resize,
        "jpeg_dct_scale": _JPEG_SCALE.format(sides=sides),
        "class_names": list(loaded.class_names),
        "output": f"probabilities [batch, {len(loaded.class_names)}], in the order of class_names",
        "how_to": (f"Decode the file upright as {colour} (EXIF orientation applied, alpha over white); "
                   f"{_JPEG_SCALE.format(sides=sides)}. Resize with {resize}, round to uint8 "
                   f"(tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)); stack into [batch, {height}, "
                   f"{width}, {loaded.channels}]. ftkit predict feeds the float pixels before rounding (as training "
                   f"did), so its probabilities differ from the export's by the rounding's effect, a few 1e-4."),
    }


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
    (out_dir / PREPROCESSING_FILE).write_text(json.dumps(preprocessing_spec(loaded), indent=2))
    if format == "keras":
        target = out_dir / "model.keras"
        model.save(target)
        return target
    if format == "savedmodel":
        saved = out_dir / "savedmodel"
        _write_saved_model(model, saved, image_size=loaded.image_size, channels=loaded.channels)
        return saved
    import tempfile

    import tensorflow as tf

    target = out_dir / "model.tflite"
    # The converter reads a SavedModel; this one is a step, not a deliverable, so it is not left in out_dir.
    with tempfile.TemporaryDirectory(prefix="ftkit-export-") as scratch:
        _write_saved_model(model, scratch, image_size=loaded.image_size, channels=loaded.channels)
        target.write_bytes(tf.lite.TFLiteConverter.from_saved_model(scratch).convert())
    return target


def _write_saved_model(model, path, *, image_size, channels: int) -> None:
    """A SavedModel whose ``serving_default`` is :func:`serving_function` (input ``image_uint8``, output
    ``output_0``, as ``Model.export`` names them)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serving_function(model, image_size=image_size, channels=channels))
    archive.write_out(str(path), verbose=False)
