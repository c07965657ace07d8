"""The fine-tuning engine: ``train`` (plan, phases, checkpoints, resume), ``export_run``, ``lr_find``.

Importing this package does not import TensorFlow; the functions do, when called.
"""

from ftkit.training.engine import RunResult, get_strategy, plan_run, train
from ftkit.training.export import export_run
from ftkit.training.lr_find import lr_find

__all__ = ["RunResult", "export_run", "get_strategy", "lr_find", "plan_run", "train"]
