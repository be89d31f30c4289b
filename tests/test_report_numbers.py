"""The report's numbers from streamed, binned counts agree with scikit-learn on the full arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from bertclf.labels import LabelSpace
from bertclf.report.accumulate import EvaluationCounts
from bertclf.report.summary import calibration, headline, label_curves, per_label_scores, top_confusions

NAMES = ["anger", "fear", "joy", "love"]


def _scored(probs: np.ndarray, labels: list, multi_label: bool) -> pa.Table:
    columns = {"text": [f"text {i} happy" if i % 2 else "" for i in range(len(probs))]}
    columns["labels" if multi_label else "label"] = labels
    for j, n in enumerate(NAMES):
        columns[f"prob_{n}"] = probs[:, j].astype(np.float32)
    return pa.table(columns)


def _count(space: LabelSpace, table: pa.Table, fmt: str, column: str) -> EvaluationCounts:
    counts = EvaluationCounts(space, max_examples=5)
    for start in range(0, table.num_rows, 300):  # several batches, as when streaming parts
        counts.add(table.slice(start, 300), "text", fmt, column, [])
    return counts


def test_multi_label_numbers_match_scikit_learn():
    rng = np.random.default_rng(0)
    n = 1000
    truth = rng.random((n, len(NAMES))) < [0.3, 0.1, 0.5, 0.05]
    probs = np.clip(0.35 * truth + rng.random((n, len(NAMES))) * 0.65, 0, 1)
    thresholds = [0.4, 0.5, 0.6, 0.45]
    space = LabelSpace("multi_label", NAMES, thresholds)
    labels = [[NAMES[j] for j in np.flatnonzero(row)] for row in truth]
    counts = _count(space, _scored(probs, labels, True), "list", "labels")

    assert counts.rows == n
    pred = probs.astype(np.float32) >= np.asarray(thresholds, np.float32)
    per_label, averages = per_label_scores(counts)
    p, r, f, s = precision_recall_fscore_support(truth, pred, average=None, zero_division=0)
    for j, name in enumerate(NAMES):
        assert per_label[name]["f1-score"] == pytest.approx(f[j]) and per_label[name]["support"] == s[j]
        assert per_label[name]["precision"] == pytest.approx(p[j]) and per_label[name]["recall"] == pytest.approx(r[j])
    assert averages["f1_micro"] == pytest.approx(f1_score(truth, pred, average="micro"))
    assert averages["f1_macro"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert averages["f1_weighted"] == pytest.approx(f1_score(truth, pred, average="weighted"))
    np.testing.assert_array_equal(counts.confusion, truth.astype(int).T @ pred.astype(int))
    curves = label_curves(counts)
    for j, name in enumerate(NAMES):
        assert curves[name]["roc_auc"] == pytest.approx(roc_auc_score(truth[:, j], probs[:, j]), abs=0.005)
    hl = headline(counts, curves, averages, per_label_scores(counts, at_half=True)[1], 0.0)
    assert hl["subset_accuracy"] == pytest.approx((pred == truth).all(axis=1).mean())
    assert hl["f1_macro_at_0.5"] == pytest.approx(f1_score(truth, probs.astype(np.float32) >= 0.5, average="macro"))
    # every listed error is a row whose predicted set differs, most confident first
    errors = counts.most_confident_errors()
    assert len(errors) == 5 and [e.confidence for e in errors] == sorted((e.confidence for e in errors), reverse=True)
    assert all(set(e.true) != set(e.predicted) for e in errors)
    assert {(c["true"], c["predicted"]) for c in top_confusions(counts)} <= {(a, b) for a in NAMES for b in NAMES}


def test_multi_class_confusion_calibration_and_words():
    rng = np.random.default_rng(1)
    n = 900
    target = rng.integers(0, len(NAMES), n)
    logits = rng.normal(size=(n, len(NAMES))) + 2.0 * np.eye(len(NAMES))[target]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    space = LabelSpace("multi_class", NAMES)
    counts = _count(space, _scored(probs, [NAMES[t] for t in target], False), "single", "label")

    top = probs.astype(np.float32).argmax(axis=1)
    np.testing.assert_array_equal(counts.confusion, confusion_matrix(target, top, labels=range(len(NAMES))))
    assert counts.confusion.sum() == n
    per_label, averages = per_label_scores(counts)
    assert averages["accuracy"] == pytest.approx((top == target).mean())
    assert averages["f1_macro"] == pytest.approx(f1_score(target, top, average="macro"))
    cal = calibration(counts)
    conf = probs.max(axis=1)
    edges = np.minimum((conf * 10).astype(int), 9)
    expected = sum(abs((top == target)[edges == b].mean() - conf[edges == b].mean()) * (edges == b).mean()
                   for b in range(10) if (edges == b).any())
    assert cal["expected_calibration_error"] == pytest.approx(expected, abs=0.01)
    assert sum(b["count"] for b in cal["bins"]) == n
    # odd rows say "text <i> happy", even rows are empty: each odd row counts once, under its true label
    assert sum(counts.words_true[name]["happy"] for name in NAMES) == n // 2
    assert sum(counts.words_predicted[name]["text"] for name in NAMES) == n // 2
