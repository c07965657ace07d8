"""ftkit's Keras layers, for loading the models ftkit saves in any Keras 3 program.

A run's ``model.keras`` (and ``ftkit export --format keras``) carries its backbone's normalisation as ftkit's
``Preprocess`` layer, so it takes raw images. Keras loads a custom layer only once its class is registered,
which importing this module does, as ``import keras_hub`` does for keras-hub's models::

    import ftkit.layers  # noqa: F401
    import keras
    model = keras.saving.load_model("runs/quickstart/model.keras")

``import ftkit`` alone does not, on purpose: it stays free of TensorFlow. The SavedModel and TFLite exports
need nothing from ftkit.
"""

from ftkit.backbones._preprocessing import Preprocess

__all__ = ["Preprocess"]
