"""The report's figures, each saved as its own PNG: matplotlib and scikit-learn's displays for the plots,
wordcloud for the word clouds."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in Ray jobs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def slug(name: str) -> str:
    """A label as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "label"


def _save(fig, directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def _grid(n: int, cols: int = 4, size: tuple[float, float] = (3.2, 2.8)):
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def training_curves(history: list[dict], directory: Path) -> str:
    """Loss, F1 and (multi-class) accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    panels = [("loss", ["train_loss", "val_loss"]), ("F1", ["f1_micro", "f1_macro"])]
    if any(h.get("accuracy") is not None for h in history):
        panels.append(("accuracy", ["accuracy"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for k in keys:
            ax.plot(epochs, [h.get(k) for h in history], marker="o", label=k)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.legend()
    return _save(fig, directory, "training_curves.png")


def confusion_matrices(matrix: np.ndarray, names: list[str], directory: Path) -> list[str]:
    """Multi-class: counts and row-normalized (each true class's row sums to 1)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    files = []
    size = max(5.0, 0.55 * len(names) + 2)
    rows = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    for values, name, fmt in ((matrix, "confusion_counts.png", "d"), (normalized, "confusion_normalized.png", ".2f")):
        fig, ax = plt.subplots(figsize=(size, size))
        ConfusionMatrixDisplay(values, display_labels=names).plot(ax=ax, values_format=fmt, xticks_rotation=45,
                                                                  colorbar=False, cmap="Blues")
        ax.set_title("confusion matrix" + (" (row-normalized)" if fmt != "d" else " (counts)"))
        files.append(_save(fig, directory, name))
    return files


def cooccurrence(matrix: np.ndarray, names: list[str], directory: Path) -> str:
    """Multi-label: rows with true label i (rows) that were predicted label j (columns)."""
    size = max(5.0, 0.32 * len(names) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(np.log1p(matrix), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title("true vs predicted label co-occurrence (log scale)")
    fig.colorbar(im, ax=ax, shrink=0.6, label="log(1 + rows)")
    return _save(fig, directory, "label_cooccurrence.png")


def per_label_counts(counts: np.ndarray, names: list[str], directory: Path) -> str:
    """Multi-label: true positives, false positives and false negatives per label."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4))
    x = np.arange(len(names))
    for k, (label, color) in enumerate((("true positives", "tab:green"), ("false positives", "tab:red"),
                                        ("false negatives", "tab:orange"))):
        ax.bar(x + (k - 1) * 0.27, counts[:, k], width=0.27, label=label, color=color)
    ax.set_xticks(x, names, rotation=90)
    ax.set_ylabel("rows")
    ax.set_title("per-label confusion counts (at the checkpoint's thresholds)")
    ax.legend()
    return _save(fig, directory, "per_label_counts.png")


def pr_curves(curves: dict[str, dict], thresholds: dict[str, float] | None, directory: Path) -> str:
    """One precision-recall curve per label; the checkpoint's threshold marked (multi-label)."""
    from sklearn.metrics import PrecisionRecallDisplay

    fig, axes = _grid(len(curves))
    for ax, (name, c) in zip(axes, curves.items(), strict=False):
        ax.set_title(name, fontsize=9)
        if "precision" not in c:
            ax.text(0.5, 0.5, "no positive rows", ha="center", va="center")
            continue
        PrecisionRecallDisplay(precision=np.asarray(c["precision"]), recall=np.asarray(c["recall"]),
                               average_precision=c["average_precision"]).plot(ax=ax, name="")
        if thresholds and name in thresholds and c.get("at_threshold"):
            point = c["at_threshold"]
            ax.plot(point["recall"], point["precision"], "o", color="tab:red",
                    label=f"threshold {thresholds[name]:.2f}")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, directory, "pr_curves.png")


def roc_curves(curves: dict[str, dict], directory: Path) -> str:
    from sklearn.metrics import RocCurveDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, c in curves.items():
        if "fpr" in c:
            RocCurveDisplay(fpr=np.asarray(c["fpr"]), tpr=np.asarray(c["tpr"]), roc_auc=c["roc_auc"],
                            name=name).plot(ax=ax)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_title("ROC curves, one per label")
    return _save(fig, directory, "roc_curves.png")


def reliability(calibration: dict, directory: Path) -> str:
    bins = [b for b in calibration["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=0.09, alpha=0.6,
           label="observed frequency")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="tab:red",
            label="mean probability vs frequency")
    ax.set_xlabel(f"predicted probability ({calibration['of']})")
    ax.set_ylabel("fraction positive / correct")
    ax.set_title(f"reliability (ECE {calibration['expected_calibration_error']:.3f})")
    ax.legend(fontsize=8)
    return _save(fig, directory, "reliability.png")


def word_cloud(words: Counter, directory: Path, name: str) -> str | None:
    """A word cloud of the most frequent words; None when there are no words to draw."""
    from wordcloud import WordCloud

    if not words:
        return None
    cloud = WordCloud(width=420, height=240, background_color="white", max_words=80, random_state=0)
    cloud.generate_from_frequencies(dict(words.most_common(200)))
    directory.mkdir(parents=True, exist_ok=True)
    cloud.to_file(str(directory / name))
    return name


def bar_chart(values: dict[str, float], title: str, ylabel: str, directory: Path, name: str,
              threshold: float | None = None) -> str:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(values) + 2), 3.8))
    ax.bar(range(len(values)), list(values.values()), color="tab:blue")
    ax.set_xticks(range(len(values)), list(values), rotation=90)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", label=f"alert threshold {threshold:g}")
        ax.legend()
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, directory, name)


def histograms(hists: dict[str, list[int]], title: str, directory: Path, name: str) -> str:
    """One probability histogram per label (counts over equal bins in [0, 1])."""
    fig, axes = _grid(len(hists), cols=5, size=(2.6, 2.0))
    for ax, (label, counts) in zip(axes, hists.items(), strict=False):
        edges = np.linspace(0, 1, len(counts) + 1)
        ax.bar(edges[:-1], counts, width=1 / len(counts), align="edge")
        ax.set_yscale("symlog")
        ax.set_title(label, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, directory, name)
