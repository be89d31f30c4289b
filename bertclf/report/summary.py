"""The evaluation report's numbers, from the streamed counts: scikit-learn's metrics and curves fed the binned
probabilities with their counts as sample weights, so any number of rows costs the same memory."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from bertclf.report.accumulate import BIN_CENTERS, PROB_BINS, EvaluationCounts

CALIBRATION_BINS = 10


def _weighted_scores(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, score, weight) with one entry per non-empty bin of positives and of negatives."""
    y = np.concatenate([np.ones(PROB_BINS, dtype=np.int64), np.zeros(PROB_BINS, dtype=np.int64)])
    score = np.concatenate([BIN_CENTERS, BIN_CENTERS])
    weight = np.concatenate([pos, neg]).astype(np.float64)
    keep = weight > 0
    return y[keep], score[keep], weight[keep]


def label_curves(counts: EvaluationCounts) -> dict[str, dict]:
    """Per label: PR curve and average precision, ROC curve and AUC (None where a class is absent)."""
    out: dict[str, dict] = {}
    for j, name in enumerate(counts.space.names):
        y, score, w = _weighted_scores(counts.pos_hist[j], counts.neg_hist[j])
        entry: dict = {"positives": int(counts.pos_hist[j].sum()), "negatives": int(counts.neg_hist[j].sum())}
        if entry["positives"] and entry["negatives"]:
            precision, recall, _ = precision_recall_curve(y, score, sample_weight=w)
            fpr, tpr, _ = roc_curve(y, score, sample_weight=w)
            entry |= {"precision": precision.tolist(), "recall": recall.tolist(),
                      "average_precision": float(average_precision_score(y, score, sample_weight=w)),
                      "fpr": fpr.tolist(), "tpr": tpr.tolist(),
                      "roc_auc": float(roc_auc_score(y, score, sample_weight=w))}
        out[name] = entry
    return out


def per_label_scores(counts: EvaluationCounts, at_half: bool = False) -> tuple[dict[str, dict], dict[str, float]]:
    """scikit-learn's classification report: per label precision/recall/F1/support, and the averages."""
    names = counts.space.names
    if not counts.multi_label:
        t, p = np.nonzero(counts.confusion)
        report = classification_report(t, p, labels=list(range(len(names))), target_names=names,
                                       sample_weight=counts.confusion[t, p], output_dict=True, zero_division=0)
        per_label = {n: {k: float(v) for k, v in report[n].items()} for n in names}
        averages = {"accuracy": float(report["accuracy"])}
        for avg in ("macro", "weighted"):
            averages[f"f1_{avg}"] = float(report[f"{avg} avg"]["f1-score"])
            averages[f"precision_{avg}"] = float(report[f"{avg} avg"]["precision"])
            averages[f"recall_{avg}"] = float(report[f"{avg} avg"]["recall"])
        averages["f1_micro"] = averages["accuracy"]  # single-label: micro F1 is accuracy
        return per_label, averages
    table = counts.half_counts if at_half else counts.tuned_counts
    per_label = {}
    for j, name in enumerate(names):
        tp, fp, fn = (int(v) for v in table[j])
        tn = counts.rows - tp - fp - fn
        p, r, f, _ = precision_recall_fscore_support([1, 1, 0, 0], [1, 0, 1, 0], sample_weight=[tp, fn, fp, tn],
                                                     average="binary", zero_division=0)
        per_label[name] = {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": tp + fn}
    tp, fp, fn = table.sum(axis=0)
    support = np.asarray([per_label[n]["support"] for n in names], dtype=np.float64)
    f1s = np.asarray([per_label[n]["f1-score"] for n in names])
    averages = {"f1_micro": float(2 * tp / max(2 * tp + fp + fn, 1)), "f1_macro": float(f1s.mean()),
                "f1_weighted": float((f1s * support).sum() / max(support.sum(), 1)),
                "precision_macro": float(np.mean([per_label[n]["precision"] for n in names])),
                "recall_macro": float(np.mean([per_label[n]["recall"] for n in names])),
                "hamming_loss": float((fp + fn) / max(counts.rows * len(names), 1))}
    return per_label, averages


def calibration(counts: EvaluationCounts) -> dict:
    """Reliability diagram bins and expected calibration error: of the top-1 probability (multi-class) or of
    every label's probability pooled (multi-label)."""
    if counts.multi_label:
        positives, totals = counts.pos_hist.sum(axis=0), (counts.pos_hist + counts.neg_hist).sum(axis=0)
        kind = "every label's probability, pooled"
    else:
        positives, totals = counts.top_correct, counts.top_correct + counts.top_wrong
        kind = "top-1 probability"
    coarse = np.minimum((BIN_CENTERS * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    bins = []
    ece = 0.0
    n_all = max(int(totals.sum()), 1)
    for b in range(CALIBRATION_BINS):
        sl = coarse == b
        n = int(totals[sl].sum())
        if not n:
            bins.append({"low": b / CALIBRATION_BINS, "high": (b + 1) / CALIBRATION_BINS, "count": 0,
                         "confidence": None, "accuracy": None})
            continue
        confidence = float((totals[sl] * BIN_CENTERS[sl]).sum() / n)
        accuracy = float(positives[sl].sum() / n)
        ece += n / n_all * abs(accuracy - confidence)
        bins.append({"low": b / CALIBRATION_BINS, "high": (b + 1) / CALIBRATION_BINS, "count": n,
                     "confidence": confidence, "accuracy": accuracy})
    return {"of": kind, "bins": bins, "expected_calibration_error": ece}


def top_confusions(counts: EvaluationCounts, k: int = 10) -> list[dict]:
    """The label pairs most often confused: true -> predicted (multi-class), missed -> wrongly predicted in the
    same row (multi-label)."""
    names = counts.space.names
    if counts.multi_label:
        pairs = counts.missed_for.most_common(k)
        return [{"true": t, "predicted": p, "count": c} for (t, p), c in pairs]
    off = counts.confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:k]
    return [{"true": names[i], "predicted": names[j], "count": int(off[i, j])}
            for i, j in zip(*np.unravel_index(order, off.shape), strict=True) if off[i, j] > 0]


def headline(counts: EvaluationCounts, curves: dict[str, dict], averages: dict[str, float],
             averages_at_half: dict[str, float] | None, ece: float) -> dict[str, float | None]:
    aucs = [c["roc_auc"] for c in curves.values() if "roc_auc" in c]
    out: dict[str, float | None] = {"rows": counts.rows, **averages,
                                    "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
                                    "expected_calibration_error": ece}
    if counts.multi_label:
        out["subset_accuracy"] = counts.exact_matches / max(counts.rows, 1)
        if averages_at_half:
            out["f1_macro_at_0.5"] = averages_at_half["f1_macro"]
            out["f1_micro_at_0.5"] = averages_at_half["f1_micro"]
    return out
