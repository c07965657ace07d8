"""Evaluation: metrics (scikit-learn), the report bundle (json/md/html/png/csv), predict and compare.

For the training engine: ``evaluate_run(run_dir, data, out_dir)`` evaluates a finished run folder;
``evaluate_model(LoadedModel(...), data, out_dir)`` evaluates an in-memory inference model (raw 0..255 images
in, probabilities out) with the run's class names; ``evaluate_predictions(...)`` scores predictions already
made (``predict_batches(model, batches)`` predicts in-memory batches without Keras' progress bar). Each
returns the report dict that ``report.json`` holds.
"""

from ftkit.evaluate.compare import compare_runs, mcnemar
from ftkit.evaluate.evaluation import default_report_dir, evaluate_model, evaluate_predictions, evaluate_run
from ftkit.evaluate.images import ClassMismatchError, LabelledFiles, scan_split
from ftkit.evaluate.metrics import compute_metrics, expected_calibration_error, most_confused_pairs
from ftkit.evaluate.predict import Predictions, predict_batches, predict_files, predict_paths
from ftkit.evaluate.runs import LoadedModel, load_model

__all__ = [
    "ClassMismatchError",
    "LabelledFiles",
    "LoadedModel",
    "Predictions",
    "compare_runs",
    "compute_metrics",
    "default_report_dir",
    "evaluate_model",
    "evaluate_predictions",
    "evaluate_run",
    "expected_calibration_error",
    "load_model",
    "mcnemar",
    "most_confused_pairs",
    "predict_batches",
    "predict_files",
    "predict_paths",
    "scan_split",
]
