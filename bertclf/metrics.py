"""Classification metrics and per-label threshold tuning, on numpy arrays of targets and probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from bertclf.labels import LabelSpace

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def tune_thresholds(targets: np.ndarray, probs: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> list[float]:
    """Each label's threshold with the best validation F1; 0.5 where validation has no positive to judge by."""
    thresholds = []
    for j in range(targets.shape[1]):
        y = targets[:, j] > 0.5
        if not y.any():
            thresholds.append(0.5)
            continue
        pred = probs[:, j][None, :] >= grid[:, None]  # (grid, rows)
        tp = (pred & y).sum(axis=1)
        fp = (pred & ~y).sum(axis=1)
        fn = (~pred & y).sum(axis=1)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = int(np.argmax(f1))  # ties: the lowest threshold, first in the grid
        thresholds.append(float(grid[best]) if f1[best] > 0 else 0.5)
    return thresholds


def predictions(space: LabelSpace, probs: np.ndarray, thresholds: list[float] | None = None) -> np.ndarray:
    """0/1 indicator matrix (multi-label) or class ids (multi-class)."""
    if space.task == "multi_class":
        return probs.argmax(axis=1)
    th = np.asarray(thresholds if thresholds is not None else space.thresholds, dtype=np.float32)
    return (probs >= th).astype(np.int64)


def classification_metrics(space: LabelSpace, targets: np.ndarray, probs: np.ndarray,
                           thresholds: list[float] | None = None) -> dict:
    """F1 micro/macro/weighted, ROC AUC, accuracy (+ Hamming loss for multi-label) and per-label scores."""
    names = space.names
    pred = predictions(space, probs, thresholds)
    if space.task == "multi_class":
        y_true = targets.astype(np.int64)
        y_ind = np.eye(len(names), dtype=np.int64)[y_true]
        labels = list(range(len(names)))
        out = {"accuracy": float(accuracy_score(y_true, pred))}
        f1_args = {"y_true": y_true, "y_pred": pred, "labels": labels}
    else:
        y_true = (targets > 0.5).astype(np.int64)
        y_ind = y_true
        out = {"subset_accuracy": float(accuracy_score(y_true, pred)),
               "hamming_loss": float(hamming_loss(y_true, pred))}
        f1_args = {"y_true": y_true, "y_pred": pred}
    for avg in ("micro", "macro", "weighted"):
        out[f"f1_{avg}"] = float(f1_score(average=avg, zero_division=0, **f1_args))
    out["roc_auc_macro"] = _roc_auc(y_ind, probs)
    p, r, f, s = precision_recall_fscore_support(average=None, zero_division=0, **f1_args)
    out["per_label"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(names)
    }
    return out


def _roc_auc(y_ind: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro ROC AUC over the labels that have both classes present; None when no label does."""
    cols = [j for j in range(y_ind.shape[1]) if 0 < y_ind[:, j].sum() < len(y_ind)]
    if not cols:
        return None
    return float(np.mean([roc_auc_score(y_ind[:, j], probs[:, j]) for j in cols]))


# the interface other modules, jobs and benchmarks use
__all__ = ["THRESHOLD_GRID", "classification_metrics", "predictions", "tune_thresholds"]
