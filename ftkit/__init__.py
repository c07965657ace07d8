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


# Subpackages loaded on first use, so ``import ftkit`` then ``ftkit.evaluate.evaluate_run(...)`` works as the README
# shows without importing them (and TensorFlow) up front.
_SUBMODULES = {"augment", "backbones", "data", "distribute", "evaluate", "head", "layers", "recipe", "schedule",
               "training"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"ftkit.{name}")
    raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
