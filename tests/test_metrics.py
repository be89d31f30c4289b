"""Metrics against scikit-learn called directly, threshold tuning against a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from bertclf.labels import LabelSpace, probabilities
from bertclf.metrics import THRESHOLD_GRID, classification_metrics, tune_thresholds

# ---------------------------------------------------------------- fixed data

ML_NAMES = ["a", "b", "c", "d"]
# label "d" is never positive: it must be ignored by ROC AUC
ML_TARGETS = np.array([
    [1, 0, 1, 0],
    [0, 1, 0, 0],
    [1, 1, 0, 0],
    [0, 0, 1, 0],
    [1, 0, 0, 0],
    [0, 1, 1, 0],
], dtype=np.float32)
ML_PROBS = np.array([
    [0.90, 0.20, 0.60, 0.10],
    [0.30, 0.70, 0.40, 0.20],
    [0.45, 0.80, 0.10, 0.60],
    [0.20, 0.10, 0.55, 0.05],
    [0.65, 0.40, 0.30, 0.30],
    [0.10, 0.35, 0.70, 0.40],
], dtype=np.float32)
ML_THRESHOLDS = [0.5, 0.3, 0.5, 0.5]

MC_NAMES = ["neg", "neu", "pos"]
MC_TARGETS = np.array([0, 1, 2, 2, 0, 1, 2, 0])
MC_PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.2, 0.3, 0.5],
    [0.1, 0.1, 0.8],
    [0.3, 0.4, 0.3],
    [0.6, 0.3, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.2, 0.6],
    [0.4, 0.5, 0.1],
], dtype=np.float32)


def _ml_pred():
    return np.stack([(ML_PROBS[:, j] >= ML_THRESHOLDS[j]).astype(int) for j in range(len(ML_NAMES))], axis=1)


# ---------------------------------------------------------------- multi-label


@pytest.fixture(scope="module")
def ml_metrics():
    return classification_metrics(LabelSpace("multi_label", ML_NAMES, list(ML_THRESHOLDS)), ML_TARGETS, ML_PROBS)


@pytest.mark.parametrize("avg", ["micro", "macro", "weighted"])
def test_multi_label_f1_matches_sklearn(ml_metrics, avg):
    y = ML_TARGETS.astype(int)
    assert ml_metrics[f"f1_{avg}"] == pytest.approx(f1_score(y, _ml_pred(), average=avg, zero_division=0))


def test_multi_label_subset_accuracy_and_hamming(ml_metrics):
    y, pred = ML_TARGETS.astype(int), _ml_pred()
    # computed by hand as well as with sklearn
    exact = np.mean([(y[i] == pred[i]).all() for i in range(len(y))])
    wrong = np.mean(y != pred)
    assert ml_metrics["subset_accuracy"] == pytest.approx(exact)
    assert ml_metrics["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert ml_metrics["hamming_loss"] == pytest.approx(wrong)
    assert ml_metrics["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert "accuracy" not in ml_metrics


def test_multi_label_per_label(ml_metrics):
    y, pred = ML_TARGETS.astype(int), _ml_pred()
    assert list(ml_metrics["per_label"]) == ML_NAMES
    for j, name in enumerate(ML_NAMES):
        row = ml_metrics["per_label"][name]
        tp = int(((pred[:, j] == 1) & (y[:, j] == 1)).sum())
        fp = int(((pred[:, j] == 1) & (y[:, j] == 0)).sum())
        fn = int(((pred[:, j] == 0) & (y[:, j] == 1)).sum())
        assert row["support"] == int(y[:, j].sum())
        assert row["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert row["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 0.0)
        assert row["precision"] == pytest.approx(precision_score(y[:, j], pred[:, j], zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y[:, j], pred[:, j], zero_division=0))
        assert row["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j], zero_division=0))


def test_multi_label_roc_auc_ignores_single_class_label(ml_metrics):
    y = ML_TARGETS.astype(int)
    expected = np.mean([roc_auc_score(y[:, j], ML_PROBS[:, j]) for j in range(3)])  # "d" has no positive
    assert ml_metrics["roc_auc_macro"] == pytest.approx(expected)


def test_multi_label_explicit_thresholds_override_space():
    space = LabelSpace("multi_label", ML_NAMES)  # 0.5 everywhere
    with_space = classification_metrics(space, ML_TARGETS, ML_PROBS)
    with_arg = classification_metrics(space, ML_TARGETS, ML_PROBS, thresholds=list(ML_THRESHOLDS))
    y = ML_TARGETS.astype(int)
    assert with_arg["f1_micro"] == pytest.approx(f1_score(y, _ml_pred(), average="micro"))
    assert with_space["f1_micro"] == pytest.approx(f1_score(y, (ML_PROBS >= 0.5).astype(int), average="micro"))


def test_roc_auc_none_when_no_label_has_both_classes():
    targets = np.array([[1, 0], [1, 0], [1, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], dtype=np.float32)
    assert classification_metrics(LabelSpace("multi_label", ["x", "y"]), targets, probs)["roc_auc_macro"] is None


# ---------------------------------------------------------------- multi-class


@pytest.fixture(scope="module")
def mc_metrics():
    return classification_metrics(LabelSpace("multi_class", MC_NAMES), MC_TARGETS, MC_PROBS)


@pytest.mark.parametrize("avg", ["micro", "macro", "weighted"])
def test_multi_class_f1_matches_sklearn(mc_metrics, avg):
    pred = MC_PROBS.argmax(axis=1)
    assert mc_metrics[f"f1_{avg}"] == pytest.approx(f1_score(MC_TARGETS, pred, average=avg, zero_division=0))


def test_multi_class_accuracy(mc_metrics):
    pred = MC_PROBS.argmax(axis=1)
    assert mc_metrics["accuracy"] == pytest.approx(np.mean(pred == MC_TARGETS))
    assert "hamming_loss" not in mc_metrics


def test_multi_class_per_label_and_roc(mc_metrics):
    pred = MC_PROBS.argmax(axis=1)
    for k, name in enumerate(MC_NAMES):
        row = mc_metrics["per_label"][name]
        yk, pk = (MC_TARGETS == k).astype(int), (pred == k).astype(int)
        assert row["support"] == int(yk.sum())
        assert row["precision"] == pytest.approx(precision_score(yk, pk, zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(yk, pk, zero_division=0))
    expected_auc = np.mean([roc_auc_score((MC_TARGETS == k).astype(int), MC_PROBS[:, k]) for k in range(3)])
    assert mc_metrics["roc_auc_macro"] == pytest.approx(expected_auc)


def test_multi_class_absent_class_still_reported():
    # class "pos" never appears in targets nor predictions: support 0, skipped by ROC AUC, counted in macro F1
    targets = np.array([0, 1, 0, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32)
    m = classification_metrics(LabelSpace("multi_class", MC_NAMES), targets, probs)
    pred = probs.argmax(axis=1)
    assert m["per_label"]["pos"]["support"] == 0
    assert m["f1_macro"] == pytest.approx(f1_score(targets, pred, labels=[0, 1, 2], average="macro", zero_division=0))
    expected_auc = np.mean([roc_auc_score((targets == k).astype(int), probs[:, k]) for k in range(2)])
    assert m["roc_auc_macro"] == pytest.approx(expected_auc)


# ---------------------------------------------------------------- tune_thresholds


def _brute_force_thresholds(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    out = []
    for j in range(targets.shape[1]):
        y = (targets[:, j] > 0.5).astype(int)
        if y.sum() == 0:
            out.append(0.5)
            continue
        best_t, best_f1 = 0.5, 0.0
        for t in THRESHOLD_GRID:  # ascending: a strict '>' keeps the lowest threshold on ties
            f1 = f1_score(y, (probs[:, j] >= t).astype(int), zero_division=0)
            if f1 > best_f1 + 1e-12:
                best_t, best_f1 = float(t), f1
        out.append(best_t)
    return out


def test_threshold_grid_shape():
    assert THRESHOLD_GRID[0] == pytest.approx(0.05) and THRESHOLD_GRID[-1] == pytest.approx(0.95)
    assert len(THRESHOLD_GRID) == 91 and np.all(np.diff(THRESHOLD_GRID) > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tune_thresholds_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 5
    targets = (rng.random((n, k)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # no positives: 0.5
    # informative but noisy probabilities, rounded so ties between grid points happen
    probs = np.clip(0.35 * targets + rng.random((n, k)) * 0.65, 0, 1).round(2).astype(np.float32)
    got = tune_thresholds(targets, probs)
    assert got == pytest.approx(_brute_force_thresholds(targets, probs))
    assert got[4] == 0.5


def test_tune_thresholds_lowest_threshold_on_ties():
    # positives at 0.8, negatives at 0.2: every threshold in (0.2, 0.8] is perfect; the lowest is 0.21
    targets = np.array([[1], [1], [0], [0]], dtype=np.float32)
    probs = np.array([[0.8], [0.8], [0.2], [0.2]], dtype=np.float32)
    assert tune_thresholds(targets, probs) == [pytest.approx(0.21)]


def test_tune_thresholds_no_positive_label_gets_half():
    targets = np.zeros((5, 2), dtype=np.float32)
    targets[0, 0] = 1
    probs = np.full((5, 2), 0.9, dtype=np.float32)
    assert tune_thresholds(targets, probs)[1] == 0.5


# ---------------------------------------------------------------- probabilities


def test_softmax_rows_sum_to_one_and_keep_argmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=5, size=(10, 4))
    logits[0] = [1000, 999, -1000, 0]  # large values: must stay finite
    p = probabilities("multi_class", logits)
    assert p.dtype == np.float32
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))
    expected = np.exp(logits[1:]) / np.exp(logits[1:]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p[1:], expected, rtol=1e-4, atol=1e-6)


def test_sigmoid_matches_formula():
    logits = np.linspace(-8, 8, 33).reshape(3, 11)
    p = probabilities("multi_label", logits)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert p[1, 5] == pytest.approx(0.5)
