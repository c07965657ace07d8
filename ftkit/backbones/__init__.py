"""Backbones: the registry (entry points group ``ftkit.backbones``) and ftkit's own zoo.

The zoo families live one per file (``lenet``, ``alexnet``, ``vgg``, ``googlenet``, ``resnet``) and are
imported only when asked for, through the registry.
"""

from ftkit.backbones._metadata import (
    BUILDER_ARGS,
    CAFFE_PREPROCESSING,
    HEAD_GROUP,
    IMAGENET_PREPROCESSING,
    METADATA_ATTR,
    RAW_PREPROCESSING,
    BackboneInfo,
    assign_layer_groups,
    info_from_builder,
)
from ftkit.backbones._registry import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    BackboneConflictError,
    BackboneRegistry,
    PluginError,
    PluginProblem,
    UnknownBackboneError,
    backbone_info,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "BUILDER_ARGS",
    "CAFFE_PREPROCESSING",
    "ENTRY_POINT_GROUP",
    "HEAD_GROUP",
    "IMAGENET_PREPROCESSING",
    "METADATA_ATTR",
    "RAW_PREPROCESSING",
    "REGISTRY",
    "BackboneConflictError",
    "BackboneInfo",
    "BackboneRegistry",
    "PluginError",
    "PluginProblem",
    "UnknownBackboneError",
    "assign_layer_groups",
    "backbone_info",
    "create_backbone",
    "info_from_builder",
    "list_backbones",
    "register_backbone",
]
