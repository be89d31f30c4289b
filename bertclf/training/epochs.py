"""What an epoch produced: its record (losses, validation metrics, tuned thresholds, throughput), its log line,
whether it is checkpointed, and the checkpoint's metadata."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from bertclf.blend import choose, comparison, selection_metric
from bertclf.config import TrainConfig, as_dict
from bertclf.labels import LabelSpace, probabilities
from bertclf.metrics import classification_metrics, tune_thresholds
from bertclf.records import CheckpointMeta, EpochRecord, TuningInfo
from bertclf.training.data import TrainingData

log = logging.getLogger(__name__)

BASELINE_KEYS = ("f1_micro", "f1_macro", "f1_weighted", "roc_auc_macro", "accuracy", "subset_accuracy")


@dataclass
class EpochTotals:
    """One rank's counts for an epoch; summed over ranks before rank 0 records the epoch."""

    seen: int = 0
    tokens: int = 0
    loss_sum: float = 0.0
    steps: int = 0
    first_batch_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    seconds: float = 0.0

    def all_reduced(self) -> EpochTotals:
        """The sum over every rank (a collective: every rank must call it)."""
        import torch
        import torch.distributed as dist

        names = ["seen", "tokens", "loss_sum", "steps", "first_batch_seconds", "data_wait_seconds", "seconds"]
        values = torch.tensor([float(getattr(self, n)) for n in names], dtype=torch.float64)
        dist.all_reduce(values)
        summed = dict(zip(names, values.tolist(), strict=True))
        return EpochTotals(**{**summed, "seen": int(summed["seen"]), "tokens": int(summed["tokens"]),
                              "steps": int(summed["steps"])})


def epoch_record(epoch: int, space: LabelSpace, logits: np.ndarray, targets: np.ndarray, summed: EpochTotals,
                 train_seconds: float, world: int) -> EpochRecord:
    """The epoch's record from all validation logits; multi-label thresholds are tuned on them."""
    import torch

    logits = space.adjusted_logits(logits)  # loss and metrics of the posteriors the checkpoint will output
    probs = probabilities(space.task, logits)
    t_logits = torch.from_numpy(logits)
    thresholds = at_half = None
    if space.task == "multi_label":
        val_loss = torch.nn.functional.binary_cross_entropy_with_logits(t_logits, torch.from_numpy(targets)).item()
        thresholds = tune_thresholds(targets, probs)
        at_half = classification_metrics(space, targets, probs, [0.5] * len(space.names))
    else:
        val_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(targets).long()).item()
    m = classification_metrics(space, targets, probs, thresholds)
    return EpochRecord(
        epoch=epoch + 1, train_loss=summed.loss_sum / max(summed.steps, 1), val_loss=val_loss,
        f1_micro=m["f1_micro"], f1_macro=m["f1_macro"], f1_weighted=m["f1_weighted"],
        roc_auc_macro=m["roc_auc_macro"], accuracy=m.get("accuracy"), subset_accuracy=m.get("subset_accuracy"),
        hamming_loss=m.get("hamming_loss"), train_seconds=train_seconds,
        samples_per_s=summed.seen / train_seconds if train_seconds else 0.0,
        tokens_per_s=summed.tokens / train_seconds if train_seconds else 0.0, workers=world,
        first_batch_seconds=summed.first_batch_seconds / world, data_wait_seconds=summed.data_wait_seconds / world,
        validation_rows=int(len(targets)),
        f1_macro_at_half=at_half["f1_macro"] if at_half else None,
        f1_micro_at_half=at_half["f1_micro"] if at_half else None,
        thresholds=dict(zip(space.names, thresholds, strict=True)) if thresholds else None,
        per_label=m["per_label"],
    )


def with_baseline(record: EpochRecord, space: LabelSpace, targets: np.ndarray, logits: np.ndarray,
                  baseline_probs: np.ndarray, cfg: TrainConfig) -> EpochRecord:
    """The record with the TF-IDF baseline's validation metrics (thresholds tuned as the transformer's) and the
    blend chosen on this epoch's validation (bertclf.blend)."""
    metric = selection_metric(space, cfg.best_metric)
    thresholds = tune_thresholds(targets, baseline_probs) if space.task == "multi_label" else None
    m = classification_metrics(space, targets, baseline_probs, thresholds)
    scores = {k: round(float(m[k]), 6) for k in BASELINE_KEYS if m.get(k) is not None}
    transformer = probabilities(space.task, space.adjusted_logits(logits))
    choice = choose(cfg.blend, space, targets, transformer, baseline_probs, metric, cfg.blend_margin)
    per_label = {name: round(float(s["f1"]), 6) for name, s in m["per_label"].items()}
    return dataclasses.replace(record, baseline=scores, baseline_per_label=per_label, blend=choice)


def log_epoch(record: EpochRecord, epochs: int) -> None:
    keys = ["train_loss", "val_loss", "f1_micro", "f1_macro", "f1_weighted", "roc_auc_macro", "accuracy",
            "subset_accuracy", "hamming_loss", "f1_macro_at_0.5"]
    values = record.scalars()
    parts = [f"{k} {values[k]:.4f}" for k in keys if isinstance(values.get(k), float)]
    log.info(f"epoch {record.epoch}/{epochs} " + " ".join(parts)
             + f" | {record.samples_per_s:.1f} samples/s, {record.train_seconds:.1f}s "
             f"(waiting for data {record.data_wait_seconds:.1f}s, of which first batch "
             f"{record.first_batch_seconds:.1f}s)")
    if record.blend is not None:
        b = record.blend
        log.info(f"epoch {record.epoch}/{epochs} {comparison(b)}; blend at weight {b.best_weight}: {b.blended:.4f}; "
                 f"{b.reason}")


def should_checkpoint(epoch: int, cfg: TrainConfig, history: list[EpochRecord]) -> bool:
    """Periodic, last epoch, or a new best by the chosen metric."""
    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
        return True
    values = [v for v in (h.metric(cfg.best_metric) for h in history) if v is not None]
    if not values:
        return False
    best = max(values) if cfg.best_mode == "max" else min(values)
    return values[-1] == best


def checkpoint_meta(cfg: TrainConfig, data: TrainingData, record: EpochRecord, history: list[EpochRecord],
                    tuning: TuningInfo) -> CheckpointMeta:
    """bertclf.json of this epoch's checkpoint: the label space with this epoch's tuned thresholds."""
    space = data.space
    if record.blend is not None and record.blend.thresholds:
        space = dataclasses.replace(space, thresholds=list(record.blend.thresholds))
    elif record.thresholds:
        space = dataclasses.replace(space, thresholds=[record.thresholds[n] for n in space.names])
    return CheckpointMeta(labels=space, max_length=cfg.max_length, epoch=record.epoch, metrics=record,
                          history=[h.without_per_label() for h in history], training_config=as_dict(cfg),
                          long_text="chunk" if cfg.long_text == "chunk" else "truncate", chunk_stride=cfg.chunk_stride,
                          data=data.summary(), tuning=tuning, blend=record.blend)
