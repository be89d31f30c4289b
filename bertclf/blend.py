"""Blending the transformer with the TF-IDF baseline: the weight chosen on validation, and applied the same way by
every path that gives probabilities (score, evaluate, report, predict, serve).

The blend is a weighted mean of probabilities, `weight * transformer + (1 - weight) * baseline`; `weight` 1.0 is
the transformer alone. On long documents the two make different mistakes (the baseline sees every word, the
transformer a few hundred tokens in context), so the mean can beat both.
"""

from __future__ import annotations

import numpy as np

from bertclf.labels import LabelSpace
from bertclf.records import BlendChoice

WEIGHTS = tuple(round(float(w), 2) for w in np.linspace(0.0, 1.0, 21))  # the transformer's weight, 0.05 apart
MAX_METRICS = ("f1_macro", "f1_micro", "f1_weighted", "accuracy", "subset_accuracy")


def combine(transformer: np.ndarray, baseline: np.ndarray, weight: float) -> np.ndarray:
    """(rows, labels) float32 blended probabilities."""
    return (weight * transformer + (1.0 - weight) * baseline).astype(np.float32, copy=False)


def selection_metric(space: LabelSpace, best_metric: str) -> str:
    """The validation metric the blend (and the baseline's C) is chosen by: the run's best_metric when it is a
    thresholded score that grows with quality, else macro-F1."""
    allowed = set(MAX_METRICS) - ({"subset_accuracy"} if space.task == "multi_class" else {"accuracy"})
    return best_metric if best_metric in allowed else "f1_macro"


def choose(mode: str, space: LabelSpace, targets: np.ndarray, transformer: np.ndarray, baseline: np.ndarray,
           metric: str, margin: float) -> BlendChoice:
    """The transformer's weight with the best validation `metric`, and whether the checkpoint uses it: `on`
    always blends (the best weight below 1), `auto` only when the blend beats the transformer alone by at least
    `margin`, `off` never. Multi-label thresholds are tuned on validation for each weight."""
    from bertclf.metrics import classification_metrics, tune_thresholds  # scikit-learn: not for scoring actors

    values: dict[float, tuple[float, list[float] | None]] = {}
    for w in WEIGHTS:
        probs = combine(transformer, baseline, w)
        thresholds = tune_thresholds(targets, probs) if space.task == "multi_label" else None
        values[w] = (float(classification_metrics(space, targets, probs, thresholds)[metric]), thresholds)
    alone, base = values[1.0][0], values[0.0][0]
    candidates = [w for w in WEIGHTS if w < 1.0] if mode == "on" else list(WEIGHTS)
    best = max(candidates, key=lambda w: (values[w][0], w))  # ties: more weight on the transformer
    gain = values[best][0] - alone
    if mode == "off":
        used, reason = False, "blend off"
    elif mode == "on":
        used, reason = True, f"blend on: the best weight below 1 on validation is {best}"
    else:
        used = best < 1.0 and gain >= margin
        reason = (f"blend auto: weight {best} beats the transformer alone by {gain:+.4f} {metric} on validation "
                  f"(margin {margin})" if used else
                  f"blend auto: the best blend (weight {best}) gains {gain:+.4f} {metric} on validation, under the "
                  f"margin {margin}: the transformer alone")
    return BlendChoice(mode=mode, used=used, weight=best if used else 1.0, best_weight=best, metric=metric,
                       transformer=round(alone, 6), baseline=round(base, 6), blended=round(values[best][0], 6),
                       margin=margin, reason=reason,
                       thresholds=values[best][1] if used and values[best][1] is not None else None)


def comparison(choice: BlendChoice) -> str:
    """The sentence a reader needs: how the transformer did against the TF-IDF baseline on validation."""
    gap = choice.transformer - choice.baseline
    verb = "beats" if gap > 0 else "loses to" if gap < 0 else "ties with"
    return (f"the transformer {verb} a TF-IDF baseline by {abs(gap):.4f} {choice.metric} on validation "
            f"({choice.transformer:.4f} vs {choice.baseline:.4f})")


__all__ = ["WEIGHTS", "choose", "combine", "comparison", "selection_metric"]
