"""ftkit: a pluggable transfer-learning toolkit for image classification on TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
