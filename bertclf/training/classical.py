"""The run's classical baseline, fitted where the data is: a Ray task reads the training rows (a bounded sample),
fits TF-IDF + logistic regression (bertclf.baseline) and returns it with its probabilities for the validation rows,
in the order the workers read them, so each epoch can put the baseline and the blend beside the transformer."""

from __future__ import annotations

import logging

import numpy as np

from bertclf.baseline import Baseline, fit
from bertclf.blend import selection_metric
from bertclf.config import TrainConfig
from bertclf.training.data import TrainingData, training_rows, validation_rows

log = logging.getLogger(__name__)


def fit_on_cluster(cfg: TrainConfig, data: TrainingData) -> tuple[Baseline, np.ndarray]:
    """(baseline, its validation probabilities) from a one-CPU Ray task, before the train workers take the CPUs.
    Inside a Tune trial (a placement group whose bundles hold the trial's CPUs for its workers) it is fitted
    here, in the trial's driver: a task would either not fit the group or wait for CPUs the trials hold."""
    import ray
    from ray.util import get_current_placement_group

    if get_current_placement_group() is not None:
        return fit_baseline(cfg, data)
    task = ray.remote(num_cpus=1, max_retries=1)(fit_baseline)
    return ray.get(task.options(name="bertclf-baseline").remote(cfg, data))


def fit_baseline(cfg: TrainConfig, data: TrainingData) -> tuple[Baseline, np.ndarray]:
    """Fit on a bounded sample of the training rows; C chosen on validation by the blend's metric."""
    texts, targets = training_rows(data, cfg.baseline_max_rows, cfg.seed)
    val_texts, val_targets = validation_rows(data, 0, 1)
    baseline = fit(data.space, texts, targets, val_texts, val_targets, selection_metric(data.space, cfg.best_metric),
                   max_features=cfg.baseline_max_features)
    return baseline, baseline.probabilities(val_texts)


__all__ = ["fit_baseline", "fit_on_cluster"]
