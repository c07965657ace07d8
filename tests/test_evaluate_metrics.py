"""Evaluation metrics against scikit-learn and hand-computed values (no model, no TensorFlow)."""

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from ftkit.evaluate import compute_metrics, expected_calibration_error, mcnemar, most_confused_pairs, plots

NAMES3 = ["ant", "bee", "wasp"]


def probs_predicting(predictions, n_classes, *, confidence=0.8):
    """Probability rows whose argmax is ``predictions``, the rest spread evenly."""
    rest = (1 - confidence) / (n_classes - 1)
    probs = np.full((len(predictions), n_classes), rest)
    probs[np.arange(len(predictions)), predictions] = confidence
    return probs


def test_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(200), y] += rng.uniform(0, 1, 200)  # make it better than chance
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    labels = np.arange(4)
    names = ["a", "b", "c", "d"]
    m = compute_metrics(y, probs, names, top_k=(2, 3))

    assert m["n_samples"] == 200
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["top_k_accuracy"]["2"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=2, labels=labels))
    assert m["top_k_accuracy"]["3"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3, labels=labels))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels)
    for c, name in enumerate(names):
        assert m["per_class"][name]["precision"] == pytest.approx(p[c])
        assert m["per_class"][name]["recall"] == pytest.approx(r[c])
        assert m["per_class"][name]["f1"] == pytest.approx(f[c])
        assert m["per_class"][name]["support"] == s[c]
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(y, pred, average=avg)
        assert [m[f"{avg}_avg"][k] for k in ("precision", "recall", "f1")] == pytest.approx([ap, ar, af])
    np.testing.assert_array_equal(m["confusion_matrix"], skm.confusion_matrix(y, pred))
    np.testing.assert_allclose(m["confusion_matrix_normalized"], skm.confusion_matrix(y, pred, normalize="true"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["roc_auc"]["macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["roc_auc"]["weighted"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="weighted"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs))
    assert m["notes"] == []


def test_confusion_matrix_agrees_with_accuracy_and_support():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    m = compute_metrics(y, rng.dirichlet(np.ones(3), 90), NAMES3)
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 90
    assert np.trace(cm) / cm.sum() == pytest.approx(m["accuracy"])
    assert cm.sum(axis=1).tolist() == [m["per_class"][n]["support"] for n in NAMES3]


def test_never_predicted_class_hand_computed():
    # truth: ant ant bee bee wasp wasp; predicted: ant ant bee ant bee ant -> wasp never predicted
    y = np.array([0, 0, 1, 1, 2, 2])
    m = compute_metrics(y, probs_predicting([0, 0, 1, 0, 1, 0], 3), NAMES3)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["per_class"]["ant"] == pytest.approx({"precision": 2 / 4, "recall": 1.0, "f1": 2 / 3, "support": 2, "roc_auc": m["per_class"]["ant"]["roc_auc"]})
    assert m["per_class"]["bee"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["bee"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["wasp"]["precision"] == 0.0  # zero_division=0, stated in the notes
    assert m["per_class"]["wasp"]["recall"] == 0.0
    assert m["macro_avg"]["precision"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert any("Never predicted: ['wasp']" in note and "zero_division=0" in note for note in m["notes"])
    # three cells of one image each: ties go in class order (true, then predicted)
    assert [(c["true"], c["predicted"]) for c in m["most_confused"]] == [("bee", "ant"), ("wasp", "ant"), ("wasp", "bee")]
    assert m["most_confused"][0]["fraction_of_true"] == 0.5


def test_class_absent_from_evaluation_split():
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    m = compute_metrics(y, probs, NAMES3)
    labels = np.arange(3)
    assert m["per_class"]["wasp"]["support"] == 0
    assert m["per_class"]["wasp"]["roc_auc"] is None
    assert any("ROC-AUC for 'wasp'" in n and "no samples" in n for n in m["notes"])
    # Defined classes match sklearn's binary one-vs-rest scores; the macro averages only those.
    auc_ant = skm.roc_auc_score(y == 0, probs[:, 0])
    auc_bee = skm.roc_auc_score(y == 1, probs[:, 1])
    assert m["roc_auc"]["per_class"]["ant"] == pytest.approx(auc_ant)
    assert m["roc_auc"]["macro"] == pytest.approx((auc_ant + auc_bee) / 2)
    assert m["confusion_matrix"][2] == [0, 0, 0]
    assert m["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    assert m["confusion_matrix"][0] == [2, 0, 1]  # the third ant image is predicted as the absent wasp class
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=labels))
    # balanced accuracy averages the recall of the classes that have samples: (2/3 + 2/3) / 2
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_single_class_evaluation_set():
    y = np.zeros(4, dtype=int)
    m = compute_metrics(y, probs_predicting([0, 0, 0, 0], 3), NAMES3)
    assert m["accuracy"] == 1.0
    assert m["mcc"] is None and m["cohen_kappa"] is None
    assert m["roc_auc"] == {"macro": None, "weighted": None, "per_class": {"ant": None, "bee": None, "wasp": None}}
    assert any("only samples of" in n for n in m["notes"])
    assert m["most_confused"] == []


def test_top_k_at_or_above_class_count_is_null_with_reason():
    m = compute_metrics([0, 1], probs_predicting([0, 0], 2), ["cat", "dog"], top_k=(1, 2))
    assert m["top_k_accuracy"] == {"1": 0.5, "2": None}
    assert any("top-2" in n for n in m["notes"])


def test_ece_hand_computed_and_bins_match_calibration_curve():
    # top-1 confidences 0.9 (right), 0.9 (wrong), 0.58 (right), 0.55 (wrong)
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.58, 0.42], [0.55, 0.45]])
    ece, bins = expected_calibration_error(y, probs)
    # bin (13/15, 14/15]: accuracy 0.5, confidence 0.9; bin (8/15, 9/15]: accuracy 0.5, confidence 0.565
    assert ece == pytest.approx(abs(0.5 - 0.9) * 2 / 4 + abs(0.5 - 0.565) * 2 / 4)
    assert len(bins) == 15
    assert [b["count"] for b in bins] == [0] * 8 + [2] + [0] * 4 + [2, 0]
    correct = (probs.argmax(axis=1) == y).astype(int)
    prob_true, prob_pred = calibration_curve(correct, probs.max(axis=1), n_bins=15, strategy="uniform")
    filled = [b for b in bins if b["count"]]
    assert [b["accuracy"] for b in filled] == pytest.approx(prob_true.tolist())
    assert [b["confidence"] for b in filled] == pytest.approx(prob_pred.tolist())
    assert compute_metrics(y, probs, ["a", "b"])["ece"] == pytest.approx(ece)


def test_perfectly_calibrated_has_zero_ece():
    probs = np.tile([[0.75, 0.25]], (8, 1))
    y = np.array([0, 0, 0, 1] * 2)  # 75% of the 0.75-confident predictions are right
    assert expected_calibration_error(y, probs)[0] == pytest.approx(0.0)


def test_most_confused_pairs_order():
    cm = np.array([[5, 3, 0], [1, 4, 3], [0, 6, 2]])
    pairs = most_confused_pairs(cm, NAMES3, limit=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("wasp", "bee", 6), ("ant", "bee", 3), ("bee", "wasp", 3)]
    assert pairs[0]["fraction_of_true"] == pytest.approx(6 / 8)


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        ([0, 1], [[2.0, -1.0], [0.5, 3.0]], "logits"),
        ([0, 1], [[0.5, 0.5, 0.0]] * 2, "shape"),
        ([0, 3], [[0.5, 0.5]] * 2, "0..1"),
        ([0], [[0.5, 0.5]] * 2, "one label per row"),
    ],
)
def test_bad_inputs_are_refused_with_what_was_received(y, probs, message):
    with pytest.raises(ValueError, match="Received") as error:
        compute_metrics(y, probs, ["cat", "dog"])
    assert message in str(error.value)


def test_mcnemar_exact_and_chi_square():
    from scipy import stats

    a = np.array([True] * 10 + [False] * 2 + [True] * 50)
    b = np.array([False] * 10 + [True] * 2 + [True] * 50)
    exact = mcnemar(a, b)
    assert (exact["a_right_b_wrong"], exact["a_wrong_b_right"]) == (10, 2)
    assert exact["method"].startswith("exact binomial")
    assert exact["p_value"] == pytest.approx(stats.binomtest(10, 12, 0.5).pvalue)
    assert exact["p_value"] == pytest.approx(2 * sum(stats.binom.pmf(k, 12, 0.5) for k in range(0, 3)))

    a = np.array([True] * 30 + [False] * 10)
    chi = mcnemar(a, ~a)
    assert chi["method"].startswith("chi-square with continuity correction")
    assert chi["statistic"] == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)
    assert chi["p_value"] == pytest.approx(stats.chi2.sf(9.025, df=1))

    same = mcnemar(a, a)
    assert same["discordant"] == 0 and same["p_value"] == 1.0


@pytest.mark.parametrize("n_classes", [2, 50])
def test_confusion_png_size_scales_with_class_count(tmp_path, n_classes):
    names = [f"class_{i:02d}" for i in range(n_classes)]
    cm = np.random.default_rng(0).integers(0, 30, (n_classes, n_classes))
    path = tmp_path / "cm.png"
    returned = plots.save_confusion_matrix(cm, names, path, normalized=False, title="t")
    width, height = plots.confusion_figure_size(n_classes)
    expected = (round(width * plots.DPI), round(height * plots.DPI))
    assert returned == expected
    assert Image.open(path).size == expected
    if n_classes == 50:
        assert expected[1] >= 50 * 35  # at least ~35 px per class row at 50 classes
    else:
        assert expected == (600, 500)


def test_predictions_csv_reproduces_the_reports_roc_auc_and_log_loss(tmp_path):
    """Probabilities rounded to 6 decimals became ties and zeros: recomputed from the file, macro ROC-AUC and log
    loss drifted from the report's. They are now written so that every float32 reads back as itself."""
    from ftkit.evaluate.report import read_predictions_csv, write_predictions_csv

    rng = np.random.default_rng(0)
    n, k = 400, 10
    names = [str(c) for c in range(k)]
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    logits = rng.normal(scale=6.0, size=(n, k))  # wide logits: many probabilities far below 1e-6
    logits[np.arange(n), y] += 3.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    report = compute_metrics(y, probs, names, top_k=())

    write_predictions_csv(tmp_path / "predictions.csv", [f"test[{i}]" for i in range(n)], y, probs, names)
    _, _, _, read, _ = read_predictions_csv(tmp_path / "predictions.csv")
    again = compute_metrics(y, read, names, top_k=())

    assert again["log_loss"] == pytest.approx(report["log_loss"], abs=1e-6)
    assert again["roc_auc"]["macro"] == pytest.approx(report["roc_auc"]["macro"], abs=1e-6)
    for name in names:
        assert again["roc_auc"]["per_class"][name] == pytest.approx(report["roc_auc"]["per_class"][name], abs=1e-6)
    np.testing.assert_array_equal(read.astype(np.float32), probs)
    longest = max(len(field) for line in (tmp_path / "predictions.csv").read_text().splitlines()[1:]
                  for field in line.split(",")[3:])
    assert longest <= len("1.23456789e-12")  # float32: at most 9 significant digits
