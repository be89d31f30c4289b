"""Nightly monitoring: per-label drift of a scoring output against the previous partition.

Two signals per label, both cheap to keep for any corpus size: the share of rows predicted with the label,
and the distribution of its probability over fixed bins (PSI and Jensen-Shannon distance between the two
days' histograms). A drift alert never blocks or loses scores: it is recorded in _manifest.json and logged.
"""

from __future__ import annotations

import math

import numpy as np

from bertclf.records import DriftReport, LabelDrift

HIST_BINS = 20  # equal-width probability bins in [0, 1]
EPSILON = 1e-4  # smoothing for empty bins: PSI's log needs both shares > 0


def probability_histograms(probs: np.ndarray) -> np.ndarray:
    """(labels, HIST_BINS) counts of each label's probabilities in equal bins (1.0 falls in the last)."""
    bins = np.minimum((probs * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    return np.stack([np.bincount(bins[:, j], minlength=HIST_BINS) for j in range(probs.shape[1])])


def add_histograms(total: dict[str, list[int]], more: dict[str, list[int]]) -> dict[str, list[int]]:
    out = {k: list(v) for k, v in total.items()}
    for name, counts in more.items():
        out[name] = [a + b for a, b in zip(out.get(name, [0] * len(counts)), counts, strict=True)]
    return out


def _shares(counts: list[int]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return np.maximum(c / max(c.sum(), 1.0), EPSILON)


def psi(current: list[int], previous: list[int]) -> float:
    """Population stability index of two histograms over the same bins (0: same; > 0.2: a large shift)."""
    a, b = _shares(current), _shares(previous)
    return float(np.sum((a - b) * np.log(a / b)))


def jensen_shannon(current: list[int], previous: list[int]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms over the same bins."""
    from scipy.spatial.distance import jensenshannon

    value = float(jensenshannon(np.asarray(current, float), np.asarray(previous, float), base=2))
    return 0.0 if math.isnan(value) else value


def compare(share: dict[str, float], histograms: dict[str, list[int]], previous_share: dict[str, float],
            previous_histograms: dict[str, list[int]], previous_output: str, psi_threshold: float,
            share_threshold: float) -> DriftReport:
    """Per-label drift of today's predicted shares and probability histograms against the previous day's."""
    report = DriftReport(previous_output=previous_output, psi_threshold=psi_threshold,
                         share_threshold=share_threshold)
    for name in sorted(set(share) | set(previous_share) | set(histograms)):
        now, before = share.get(name, 0.0), previous_share.get(name, 0.0)
        drift = LabelDrift(share=now, previous_share=before, share_change=now - before)
        if name in histograms and name in previous_histograms:
            drift.psi = psi(histograms[name], previous_histograms[name])
            drift.js_distance = jensen_shannon(histograms[name], previous_histograms[name])
        report.labels[name] = drift
        reasons = []
        if drift.psi is not None and drift.psi > psi_threshold:
            reasons.append(f"PSI {drift.psi:.3f} > {psi_threshold:g}")
        if abs(drift.share_change) > share_threshold:
            reasons.append(f"predicted share {before:.1%} -> {now:.1%}")
        if reasons:
            report.alerts.append(f"{name}: {', '.join(reasons)}")
    return report


__all__ = ["HIST_BINS", "add_histograms", "compare", "jensen_shannon", "probability_histograms", "psi"]
