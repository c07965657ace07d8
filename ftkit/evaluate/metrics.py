"""Classification metrics on ``(y_true, probs, class_names)``: pure functions, no model, no files.

Everything that scikit-learn computes comes from scikit-learn, always called with ``labels=range(K)`` so a
class that is never predicted, or that has no samples in the evaluation split, still gets its row and
column. Where a metric is undefined for the data at hand the value is ``None`` and ``notes`` says why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

ECE_BINS = 15
DEFAULT_TOP_K = (5,)  # reported by default where defined: for data with more than 5 classes
PROB_SUM_TOLERANCE = 1e-3


def check_inputs(y_true, probs, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: ``y_true`` int ``[N]`` in ``0..K-1``, ``probs`` float ``[N, K]`` rows summing to 1."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if k < 2:
        raise ValueError(f"Need at least 2 class names. Received: class_names={list(class_names)!r}")
    if len(set(class_names)) != k:
        raise ValueError(f"Class names must be unique. Received: class_names={list(class_names)!r}")
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must have shape [N, {k}] (one column per class). Received: probs.shape={probs.shape}")
    if y_true.shape != (probs.shape[0],):
        raise ValueError(
            f"y_true must have one label per row of probs ({probs.shape[0]}). Received: y_true.shape={y_true.shape}"
        )
    if probs.shape[0] == 0:
        raise ValueError("Cannot compute metrics on an empty evaluation set. Received: N=0")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(
            f"y_true must hold integer class indices in 0..{k - 1}. "
            f"Received: y_true with dtype {y_true.dtype}, range {y_true.min()}..{y_true.max()}"
        )
    row_sums = probs.sum(axis=1)
    if probs.min() < 0 or probs.max() > 1 or np.abs(row_sums - 1).max() > PROB_SUM_TOLERANCE:
        raise ValueError(
            "probs must be class probabilities (each row in 0..1 summing to 1); a model that returns logits "
            "is a training model, use the run's inference model.keras. "
            f"Received: probs in {probs.min():.4g}..{probs.max():.4g}, row sums {row_sums.min():.4g}..{row_sums.max():.4g}"
        )
    return y_true.astype(np.int64), probs


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def expected_calibration_error(y_true, probs, *, n_bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Top-label expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    Confidence is the top-1 probability; samples fall into ``n_bins`` equal-width bins over 0..1, each
    right-closed ``(lo, hi]`` (the first also holds 0) -- the same bin edges and assignment as
    ``sklearn.calibration.calibration_curve(strategy="uniform")``, so the reliability diagram drawn from it
    shows exactly these bins. ``ECE = sum_b |accuracy_b - confidence_b| * n_b / N``.

    scikit-learn has no multi-class ECE (its calibration tools are binary), hence this function.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], confidence)
    counts = np.bincount(bin_ids, minlength=n_bins)
    conf_sums = np.bincount(bin_ids, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(bin_ids, weights=correct, minlength=n_bins)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        n = int(counts[b])
        acc = correct_sums[b] / n if n else None
        conf = conf_sums[b] / n if n else None
        if n:
            ece += abs(acc - conf) * n / len(y_true)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "accuracy": acc, "confidence": conf})
    return float(ece), bins


def _top_k(y_true, probs, k_values: Sequence[int] | None, notes: list[str]) -> dict[str, float | None]:
    n_classes = probs.shape[1]
    if k_values is None:  # the default, not asked for: only where it means something, with no note otherwise
        k_values = [k for k in DEFAULT_TOP_K if k < n_classes]
    result = {}
    for k in k_values:
        if k < 1:
            raise ValueError(f"top-k values must be >= 1. Received: top_k={list(k_values)!r}")
        if k >= n_classes:
            result[str(k)] = None
            notes.append(f"top-{k} accuracy: undefined (k >= number of classes {n_classes}, always 1).")
            continue
        # sklearn takes binary problems as the positive class's score only.
        scores = probs[:, 1] if n_classes == 2 else probs
        result[str(k)] = float(skm.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(n_classes)))
    return result


def _roc_auc(y_true, probs, class_names, notes: list[str]) -> dict:
    """One-vs-rest ROC-AUC per class; ``None`` for a class whose one-vs-rest split has a single side.

    sklearn's ``roc_auc_score(multi_class="ovr")`` raises when any class is absent from ``y_true``; the
    per-class binary scores below are what it averages, so the macro value equals sklearn's whenever
    sklearn can compute it.
    """
    per_class = {}
    for c, name in enumerate(class_names):
        positives = int((y_true == c).sum())
        if positives == 0 or positives == len(y_true):
            side = "no samples of" if positives == 0 else "only samples of"
            notes.append(f"ROC-AUC for {name!r}: undefined (the evaluation set has {side} this class).")
            per_class[name] = None
            continue
        per_class[name] = float(skm.roc_auc_score(y_true == c, probs[:, c]))
    defined = [(v, int((y_true == c).sum())) for c, v in enumerate(per_class.values()) if v is not None]
    macro = float(np.mean([v for v, _ in defined])) if defined else None
    weighted = float(np.average([v for v, _ in defined], weights=[s for _, s in defined])) if defined else None
    if defined and len(defined) < len(class_names):
        notes.append("ROC-AUC macro/weighted averages: over the classes where it is defined.")
    return {"macro": macro, "weighted": weighted, "per_class": per_class}


def _per_class(y_true, y_pred, class_names, notes: list[str]) -> tuple[dict, dict, dict]:
    labels = np.arange(len(class_names))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0.0)
    per_class = {
        name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(s[c])}
        for c, name in enumerate(class_names)
    }
    averages = []
    for average in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0.0
        )
        averages.append({"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(len(y_true))})
    never_predicted = [n for c, n in enumerate(class_names) if not (y_pred == c).any()]
    no_samples = [n for c, n in enumerate(class_names) if s[c] == 0]
    if never_predicted:
        notes.append(f"Never predicted: {never_predicted}; their precision is reported as 0 (zero_division=0).")
    if no_samples:
        notes.append(
            f"No samples in this evaluation set: {no_samples}; their recall is reported as 0 (zero_division=0) "
            "and counts in the macro average; balanced accuracy averages only the classes that have samples."
        )
    return per_class, averages[0], averages[1]


def _mcc(y_true, y_pred, notes: list[str]) -> float | None:
    # sklearn returns 0.0 when MCC's denominator is 0; report that case as undefined instead.
    if len(np.unique(y_true)) < 2 or len(np.unique(y_pred)) < 2:
        notes.append("Matthews correlation: undefined (truth or predictions contain a single class).")
        return None
    return float(skm.matthews_corrcoef(y_true, y_pred))


def most_confused_pairs(confusion: np.ndarray, class_names: Sequence[str], *, limit: int = 10) -> list[dict]:
    """Off-diagonal cells ``true -> predicted``, most frequent first (ties by class order)."""
    confusion = np.asarray(confusion)
    row_totals = confusion.sum(axis=1)
    cells = [
        (int(confusion[t, p]), t, p)
        for t in range(len(class_names))
        for p in range(len(class_names))
        if t != p and confusion[t, p] > 0
    ]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": n, "fraction_of_true": n / int(row_totals[t])}
        for n, t, p in cells[:limit]
    ]


def compute_metrics(y_true, probs, class_names: Sequence[str], *, top_k: Sequence[int] | None = None) -> dict:
    """All evaluation metrics as a JSON-ready dict (``None`` where undefined, with a note saying why).

    ``top_k``: the k of the top-k accuracies, each reported (a k at or above the number of classes as undefined,
    with a note); ``None``: those of :data:`DEFAULT_TOP_K` below the number of classes."""
    class_names = list(class_names)
    y_true, probs = check_inputs(y_true, probs, class_names)
    labels = np.arange(len(class_names))
    y_pred = probs.argmax(axis=1)
    notes: list[str] = []
    per_class, macro, weighted = _per_class(y_true, y_pred, class_names, notes)
    confusion = skm.confusion_matrix(y_true, y_pred, labels=labels)
    # Rows of absent classes are 0/0; sklearn turns them into zeros, which is what the plot should show.
    confusion_normalized = skm.confusion_matrix(y_true, y_pred, labels=labels, normalize="true")
    with warnings.catch_warnings():
        # Single-class sets make kappa 0/0 (nan -> None, noted below); sklearn also warns about it.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        kappa = _finite_or_none(skm.cohen_kappa_score(y_true, y_pred, labels=labels))
        balanced = float(skm.balanced_accuracy_score(y_true, y_pred))
    if kappa is None:
        notes.append("Cohen's kappa: undefined (expected agreement is 1: one class in both truth and predictions).")
    ece, ece_bins = expected_calibration_error(y_true, probs)
    roc_auc = _roc_auc(y_true, probs, class_names, notes)
    for name, auc in roc_auc["per_class"].items():
        per_class[name]["roc_auc"] = auc
    return {
        "class_names": class_names,
        "n_samples": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "top_k_accuracy": _top_k(y_true, probs, top_k, notes),
        "per_class": per_class,
        "macro_avg": macro,
        "weighted_avg": weighted,
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_normalized": confusion_normalized.tolist(),
        "mcc": _mcc(y_true, y_pred, notes),
        "cohen_kappa": kappa,
        "roc_auc": roc_auc,
        # float32 softmax rows sum to 1 only within ~1e-7 and sklearn's log_loss warns past ~1e-8; the rows
        # were checked to sum to 1 within PROB_SUM_TOLERANCE, so renormalising here only removes that noise.
        "log_loss": float(skm.log_loss(y_true, probs / probs.sum(axis=1, keepdims=True), labels=labels)),
        "ece": ece,
        "ece_n_bins": len(ece_bins),
        "ece_bins": ece_bins,
        "most_confused": most_confused_pairs(confusion, class_names),
        "notes": notes,
    }
