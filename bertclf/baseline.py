"""The classical baseline every user tries first: TF-IDF word 1-2-grams + logistic regression.

Fitted beside every training run on the same split, reported next to the transformer, and stored in the checkpoint
without pickle (`baseline.json`: vocabulary and settings; `baseline.safetensors`: idf, coefficients, intercepts),
so any process applies it with numpy and scikit-learn's tokenizer, or loads it back into scikit-learn.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertclf.errors import CheckpointError
from bertclf.labels import LabelSpace, probabilities

log = logging.getLogger(__name__)

FORMAT = 1
BASELINE_JSON = "baseline.json"
BASELINE_WEIGHTS = "baseline.safetensors"
BASELINE_FILES = (BASELINE_JSON, BASELINE_WEIGHTS)
C_GRID = (4.0, 16.0, 64.0)  # inverse regularization strengths tried; the best on validation is kept
MAX_FEATURES = 200_000
MAX_ROWS = 200_000
VECTORIZER = {"ngram_range": [1, 2], "sublinear_tf": True, "min_df": 2, "lowercase": True,
              "token_pattern": r"(?u)\b\w\w+\b", "norm": "l2", "smooth_idf": True}
ABSENT_CLASS_INTERCEPT = -30.0  # a class missing from the (capped) training rows: probability ~0, never NaN


@dataclass
class Baseline:
    """A fitted TF-IDF + logistic-regression model: (labels, features) coefficients over a fixed vocabulary."""

    task: str
    labels: list[str]
    vocabulary: list[str]  # term of each feature column, in column order
    idf: np.ndarray  # (features,) float32
    coef: np.ndarray  # (labels, features) float32: softmax over rows (multi-class), sigmoid per row (multi-label)
    intercept: np.ndarray  # (labels,) float32
    settings: dict[str, Any] = field(default_factory=dict)  # vectorizer settings and the chosen C
    fit_info: dict[str, Any] = field(default_factory=dict)  # rows, seconds, validation metric per C
    _vectorizer: Any = field(default=None, repr=False, compare=False)

    def vectorizer(self):
        """scikit-learn's TfidfVectorizer with this vocabulary and idf: the same analyzer as at fit time."""
        if self._vectorizer is None:
            self._vectorizer = _make_vectorizer(self.settings, vocabulary={t: i for i, t in enumerate(self.vocabulary)})
            self._vectorizer.idf_ = self.idf.astype(np.float64)
        return self._vectorizer

    def logits(self, texts: list[str]) -> np.ndarray:
        """(rows, labels) float32 decision values; a text with no known term gets the intercepts alone."""
        if not texts:
            return np.empty((0, len(self.labels)), np.float32)
        features = self.vectorizer().transform(texts)
        return np.asarray(features @ self.coef.T, dtype=np.float32) + self.intercept

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(rows, labels) float32: softmax (multi-class) or sigmoid (multi-label) of the decision values."""
        return probabilities(self.task, self.logits(texts))

    def to_sklearn(self):
        """(vectorizer, classifier) as scikit-learn objects whose predict_proba gives `probabilities` (multi-class:
        a multinomial LogisticRegression; multi-label: one binary LogisticRegression per label)."""
        from sklearn.linear_model import LogisticRegression

        def model(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray) -> LogisticRegression:
            m = LogisticRegression()
            m.coef_, m.intercept_, m.classes_ = coef.astype(np.float64), intercept.astype(np.float64), classes
            m.n_features_in_ = coef.shape[1]
            return m

        if self.task == "multi_class":
            return self.vectorizer(), model(self.coef, self.intercept, np.arange(len(self.labels)))
        return self.vectorizer(), [model(self.coef[j:j + 1], self.intercept[j:j + 1], np.arange(2))
                                   for j in range(len(self.labels))]

    def save(self, directory: Path) -> None:
        """baseline.safetensors (arrays) and baseline.json (vocabulary, settings, format): no pickle."""
        from safetensors.numpy import save_file

        arrays = {"idf": self.idf, "coef": self.coef, "intercept": self.intercept}
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()},
                  str(directory / BASELINE_WEIGHTS))
        (directory / BASELINE_JSON).write_text(json.dumps(
            {"format": FORMAT, "kind": "tfidf-logistic-regression", "task": self.task, "labels": self.labels,
             "settings": self.settings, "fit": self.fit_info, "vocabulary": self.vocabulary}))

    @classmethod
    def load(cls, directory: Path) -> Baseline | None:
        """The baseline stored in a checkpoint directory, or None when it has none (older checkpoints)."""
        from safetensors.numpy import load_file

        meta_path, weights_path = directory / BASELINE_JSON, directory / BASELINE_WEIGHTS
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            arrays = load_file(str(weights_path))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta_path.parent}: the baseline can't be read ({exc})") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: baseline format {meta.get('format')!r} is not {FORMAT}: "
                                  "upgrade bertclf to read it")
        baseline = cls(task=meta["task"], labels=list(meta["labels"]), vocabulary=list(meta["vocabulary"]),
                       idf=arrays["idf"], coef=arrays["coef"], intercept=arrays["intercept"],
                       settings=meta["settings"], fit_info=meta.get("fit", {}))
        if baseline.coef.shape != (len(baseline.labels), len(baseline.vocabulary)):
            raise CheckpointError(f"{weights_path}: coefficients of shape {baseline.coef.shape} do not match "
                                  f"{len(baseline.labels)} labels x {len(baseline.vocabulary)} terms")
        return baseline


def _make_vectorizer(settings: dict[str, Any], vocabulary: dict[str, int] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=tuple(settings["ngram_range"]), sublinear_tf=settings["sublinear_tf"],
                           min_df=1 if vocabulary else settings["min_df"], lowercase=settings["lowercase"],
                           token_pattern=settings["token_pattern"], norm=settings["norm"],
                           smooth_idf=settings["smooth_idf"], max_features=None if vocabulary else
                           settings["max_features"], vocabulary=vocabulary, dtype=np.float32)


def fit(space: LabelSpace, train_texts: list[str], train_targets: np.ndarray, val_texts: list[str],
        val_targets: np.ndarray, metric: str, max_features: int = MAX_FEATURES,
        c_grid: tuple[float, ...] = C_GRID) -> Baseline:
    """Fit on the training rows; keep the C whose validation `metric` is best (thresholds tuned on validation for
    multi-label, exactly as the transformer's are)."""
    from bertclf.metrics import classification_metrics, tune_thresholds

    t0 = time.perf_counter()
    settings = {**VECTORIZER, "max_features": max_features}
    vectorizer = _make_vectorizer(settings)
    try:
        x_train = vectorizer.fit_transform(train_texts)
    except ValueError:  # no term occurs in two training texts: fit on every term instead
        settings["min_df"] = 1
        vectorizer = _make_vectorizer(settings)
        x_train = vectorizer.fit_transform(train_texts)
    x_val = vectorizer.transform(val_texts)
    vocabulary = [""] * len(vectorizer.vocabulary_)
    for term, column in vectorizer.vocabulary_.items():
        vocabulary[column] = term
    best: tuple[float, float, np.ndarray, np.ndarray, list[float] | None] | None = None
    scores: dict[str, float] = {}
    for c in c_grid:
        coef, intercept = _fit_linear(space, x_train, train_targets, c)
        probs = probabilities(space.task, np.asarray(x_val @ coef.T, np.float32) + intercept)
        thresholds = tune_thresholds(val_targets, probs) if space.task == "multi_label" else None
        value = float(classification_metrics(space, val_targets, probs, thresholds)[metric])
        scores[str(c)] = round(value, 4)
        if best is None or value > best[0]:
            best = (value, c, coef, intercept, thresholds)
    assert best is not None
    _, c, coef, intercept, thresholds = best
    seconds = time.perf_counter() - t0
    log.info("baseline: TF-IDF (%d terms) + logistic regression on %d rows, C %s chosen on validation %s %s, %.1fs",
             len(vocabulary), len(train_texts), c, metric, scores, seconds)
    return Baseline(task=space.task, labels=list(space.names), vocabulary=vocabulary,
                    idf=vectorizer.idf_.astype(np.float32), coef=coef, intercept=intercept,
                    settings={**settings, "C": c},
                    fit_info={"train_rows": len(train_texts), "seconds": round(seconds, 2), "metric": metric,
                              "validation_by_C": scores, "thresholds": thresholds})


def _fit_linear(space: LabelSpace, x, targets: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, features) coefficients and intercepts: one multinomial model (multi-class), or one binary model
    per label (multi-label); a label with one outcome only in training gets its prior as a constant."""
    from sklearn.linear_model import LogisticRegression

    n_labels, n_features = len(space.names), x.shape[1]
    coef = np.zeros((n_labels, n_features), np.float32)
    intercept = np.full(n_labels, ABSENT_CLASS_INTERCEPT, np.float32)
    if space.task == "multi_class":
        classes = np.unique(targets)
        if len(classes) == 1:
            intercept[classes[0]] = 0.0
            return coef, intercept
        model = LogisticRegression(C=c, max_iter=200, tol=1e-3).fit(x, targets)
        if len(classes) == 2:  # sklearn's one binary row: softmax over (-w/2, +w/2) gives the same probabilities
            rows = np.vstack([-model.coef_[0] / 2, model.coef_[0] / 2])
            biases = np.array([-1, 1]) * model.intercept_[0] / 2
        else:
            rows, biases = model.coef_, model.intercept_
        coef[model.classes_] = rows
        intercept[model.classes_] = biases
        return coef, intercept
    for j in range(n_labels):
        y = targets[:, j] > 0.5
        prior = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        if y.all() or not y.any():
            intercept[j] = np.log(prior / (1 - prior))
            continue
        model = LogisticRegression(C=c, solver="liblinear", max_iter=200, tol=1e-3).fit(x, y)
        coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
    return coef, intercept


__all__ = ["BASELINE_FILES", "Baseline", "fit"]
