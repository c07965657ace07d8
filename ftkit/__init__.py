"""ftkit: a pluggable transfer-learning toolkit for image classification on TensorFlow 2 / Keras 3.

Importing ftkit is cheap: TensorFlow is imported by the stages that need it, when they are used.
"""

__version__ = "0.1.0"

from ftkit.backbones import (  # noqa: E402
    BackboneConflictError,
    BackboneInfo,
    PluginError,
    UnknownBackboneError,
    backbone_info,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "BackboneConflictError",
    "BackboneInfo",
    "PluginError",
    "UnknownBackboneError",
    "__version__",
    "backbone_info",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "load_recipe",
    "train",
]

# Lazy exports: importing them here would pull in the whole engine at ``import ftkit``.
_LAZY = {"train": "ftkit.training.engine", "load_recipe": "ftkit.recipe"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
