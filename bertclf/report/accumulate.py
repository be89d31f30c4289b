"""One streaming pass over scored Parquet that keeps what the evaluation report needs, in memory that does not
grow with the row count: per-label histograms of the probabilities of positive and negative rows (PR, ROC and
calibration come from them), confusion and co-occurrence counts, word counts per label, and a bounded heap of
the most confident errors."""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from bertclf.labels import LabelFormat, LabelSpace, encode_targets

PROB_BINS = 2000  # probability histogram bins, equal-width in logit space: fine near 0 and 1, where most rows are
_LOGIT_EDGES = np.linspace(-14.0, 14.0, PROB_BINS + 1)[1:-1]
BIN_CENTERS = 1.0 / (1.0 + np.exp(-(np.linspace(-14.0, 14.0, PROB_BINS + 1)[:-1] + 14.0 / PROB_BINS)))


def probability_bins(probs: np.ndarray) -> np.ndarray:
    """The histogram bin of each probability (same shape, int64)."""
    with np.errstate(divide="ignore"):
        logits = np.log(probs) - np.log1p(-probs)
    return np.searchsorted(_LOGIT_EDGES, logits, side="right").astype(np.int64)
MAX_WORDS_PER_LABEL = 20_000  # word counters are pruned to this many words so memory stays bounded
_WORD = re.compile(r"[a-z][a-z']+")


def _stopwords() -> frozenset[str]:
    from wordcloud import STOPWORDS

    return frozenset(STOPWORDS) | {"name", "religion"}  # GoEmotions' masks: [NAME], [RELIGION]


@dataclass(order=True)
class ErrorExample:
    """A wrong prediction and how confident the model was in it (the probability behind the worst mistake)."""

    confidence: float
    text: str = field(compare=False)
    true: list[str] = field(compare=False)
    predicted: list[str] = field(compare=False)
    worst_label: str = field(compare=False)  # the label behind the mistake
    worst: str = field(compare=False)  # e.g. "joy predicted at 0.97" or "fear missed at 0.02"


@dataclass
class EvaluationCounts:
    """Everything the report computes from, filled batch by batch by `add`."""

    space: LabelSpace
    max_examples: int = 20
    rows: int = 0
    pos_hist: np.ndarray = field(init=False)  # (labels, PROB_BINS): probabilities of rows that carry the label
    neg_hist: np.ndarray = field(init=False)  # (labels, PROB_BINS): probabilities of rows that don't
    confusion: np.ndarray = field(init=False)  # (true, predicted): classes, or label co-occurrence (multi-label)
    top_correct: np.ndarray = field(init=False)  # multi-class: top-1 probabilities of right predictions
    top_wrong: np.ndarray = field(init=False)  # multi-class: top-1 probabilities of wrong predictions
    exact_matches: int = 0  # rows whose predicted label set equals the true one
    half_counts: np.ndarray = field(init=False)  # multi-label at a flat 0.5: (labels, [tp, fp, fn])
    tuned_counts: np.ndarray = field(init=False)  # multi-label at the checkpoint's thresholds: (labels, [tp, fp, fn])
    missed_for: Counter = field(default_factory=Counter)  # multi-label: (missed true label, wrong predicted label)
    words_true: dict[str, Counter] = field(default_factory=dict)
    words_predicted: dict[str, Counter] = field(default_factory=dict)
    errors: list[ErrorExample] = field(default_factory=list)  # a min-heap of the most confident errors

    def __post_init__(self) -> None:
        n = len(self.space.names)
        self.pos_hist = np.zeros((n, PROB_BINS), dtype=np.int64)
        self.neg_hist = np.zeros((n, PROB_BINS), dtype=np.int64)
        self.confusion = np.zeros((n, n), dtype=np.int64)
        self.top_correct = np.zeros(PROB_BINS, dtype=np.int64)
        self.top_wrong = np.zeros(PROB_BINS, dtype=np.int64)
        self.half_counts = np.zeros((n, 3), dtype=np.int64)
        self.tuned_counts = np.zeros((n, 3), dtype=np.int64)
        self.words_true = {name: Counter() for name in self.space.names}
        self.words_predicted = {name: Counter() for name in self.space.names}

    @property
    def multi_label(self) -> bool:
        return self.space.task == "multi_label"

    def add(self, table: pa.Table, text_column: str, fmt: LabelFormat, label_column: str | None,
            label_columns: list[str]) -> None:
        """Count one batch of scored rows (its pass-through text and label columns, and prob_<label>)."""
        names = self.space.names
        probs = np.column_stack([table[f"prob_{n}"].to_numpy(zero_copy_only=False) for n in names]).astype(np.float32)
        targets = encode_targets(table, self.space, fmt, label_column, label_columns)
        truth = targets > 0.5 if self.multi_label else np.eye(len(names), dtype=bool)[targets]
        bins = probability_bins(probs.astype(np.float64))
        for j in range(len(names)):
            self.pos_hist[j] += np.bincount(bins[truth[:, j], j], minlength=PROB_BINS)
            self.neg_hist[j] += np.bincount(bins[~truth[:, j], j], minlength=PROB_BINS)
        if self.multi_label:
            predicted = probs >= np.asarray(self.space.thresholds, dtype=np.float32)
            self._count_multi_label(truth, predicted, probs)
        else:
            top = probs.argmax(axis=1)
            predicted = np.eye(len(names), dtype=bool)[top]
            np.add.at(self.confusion, (targets, top), 1)
            top_bins = bins[np.arange(len(top)), top]
            self.top_correct += np.bincount(top_bins[top == targets], minlength=PROB_BINS)
            self.top_wrong += np.bincount(top_bins[top != targets], minlength=PROB_BINS)
        self.exact_matches += int((predicted == truth).all(axis=1).sum())
        self.rows += table.num_rows
        texts = table[text_column].to_pylist()
        self._count_words(texts, truth, predicted)
        self._keep_errors(texts, truth, predicted, probs)

    def _count_multi_label(self, truth: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> None:
        for counts, pred in ((self.tuned_counts, predicted), (self.half_counts, probs >= 0.5)):
            counts[:, 0] += (pred & truth).sum(axis=0)
            counts[:, 1] += (pred & ~truth).sum(axis=0)
            counts[:, 2] += (~pred & truth).sum(axis=0)
        self.confusion += truth.astype(np.int64).T @ predicted.astype(np.int64)
        names = self.space.names
        for row in np.flatnonzero((truth & ~predicted).any(axis=1) & (predicted & ~truth).any(axis=1)):
            for i in np.flatnonzero(truth[row] & ~predicted[row]):
                for j in np.flatnonzero(predicted[row] & ~truth[row]):
                    self.missed_for[(names[i], names[j])] += 1

    def _count_words(self, texts: list, truth: np.ndarray, predicted: np.ndarray) -> None:
        stop = _stopwords()
        names = self.space.names
        for row, text in enumerate(texts):
            words = [w for w in _WORD.findall((text or "").lower()) if len(w) > 2 and w not in stop]
            if not words:
                continue
            for j in np.flatnonzero(truth[row]):
                self.words_true[names[j]].update(words)
            for j in np.flatnonzero(predicted[row]):
                self.words_predicted[names[j]].update(words)
        for counters in (self.words_true, self.words_predicted):
            for name, counter in counters.items():
                if len(counter) > 2 * MAX_WORDS_PER_LABEL:
                    counters[name] = Counter(dict(counter.most_common(MAX_WORDS_PER_LABEL)))

    def _keep_errors(self, texts: list, truth: np.ndarray, predicted: np.ndarray, probs: np.ndarray) -> None:
        names = self.space.names
        wrong = np.flatnonzero((predicted != truth).any(axis=1))
        # how sure the model was of its worst mistake: a wrong label's probability, or 1 - a missed label's
        margin = np.where(predicted & ~truth, probs, np.where(truth & ~predicted, 1.0 - probs, -1.0))
        for row in wrong:
            j = int(margin[row].argmax())
            kind = "predicted" if predicted[row, j] else "missed"
            example = ErrorExample(
                confidence=float(margin[row, j]), text=texts[row] or "",
                true=[names[k] for k in np.flatnonzero(truth[row])],
                predicted=[names[k] for k in np.flatnonzero(predicted[row])], worst_label=names[j],
                worst=f"{names[j]} {kind} at p={probs[row, j]:.3f}")
            if len(self.errors) < self.max_examples:
                heapq.heappush(self.errors, example)
            elif example.confidence > self.errors[0].confidence:
                heapq.heapreplace(self.errors, example)

    def most_confident_errors(self) -> list[ErrorExample]:
        return sorted(self.errors, reverse=True)
