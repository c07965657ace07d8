"""Evaluation: metrics (scikit-learn), the report bundle (json/md/html/png/csv), predict and compare.

For the training engine: ``evaluate_run(run_dir, data, out_dir)`` evaluates a finished run folder (without
``data``, on the run's own split, as training carved it: :mod:`ftkit.evaluate.run_data`);
``evaluate_model(LoadedModel(...), data, out_dir)`` evaluates an in-memory inference model (raw 0..255 images
in, probabilities out) with the run's class names; ``evaluate_predictions(...)`` scores predictions already
made (``predict_batches(model, batches)`` predicts in-memory batches without Keras' progress bar). Each
returns the report dict that ``report.json`` holds.
"""

# Loaded on first use (PEP 562), as ``ftkit`` does: the CLI imports ``ftkit.evaluate.runs`` to build its parser,
# and these modules bring in scikit-learn and Matplotlib (seconds).
_LAZY = {
    "compare_runs": "compare", "mcnemar": "compare",
    "default_report_dir": "evaluation", "evaluate_model": "evaluation", "evaluate_predictions": "evaluation",
    "evaluate_run": "evaluation",
    "ClassMismatchError": "images", "LabelledFiles": "images", "scan_split": "images",
    "compute_metrics": "metrics", "expected_calibration_error": "metrics", "most_confused_pairs": "metrics",
    "Predictions": "predict", "predict_batches": "predict", "predict_files": "predict", "predict_paths": "predict",
    "LoadedModel": "runs", "load_model": "runs",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"ftkit.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ftkit.evaluate' has no attribute {name!r}")


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
