"""The training pipeline's records: an epoch's metrics, the checkpoint's bertclf.json, the tracking reference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from bertclf.labels import LabelSpace
from bertclf.records.base import Record


@dataclass
class BlendChoice(Record):
    """How a checkpoint mixes the transformer with its TF-IDF baseline (bertclf.blend): `weight` is the
    transformer's share of the probabilities (1.0: the transformer alone), chosen on validation."""

    mode: str  # auto / on / off, as configured
    used: bool
    weight: float
    best_weight: float  # the best weight on validation, used or not
    metric: str
    transformer: float  # validation metric of the transformer alone
    baseline: float  # ... of the baseline alone
    blended: float  # ... at best_weight
    margin: float
    reason: str
    thresholds: list[float] | None = None  # multi-label thresholds tuned for the blend (when used)


@dataclass
class EpochRecord(Record):
    """Everything known about one epoch: losses, validation metrics, thresholds (multi-label), throughput."""

    epoch: int
    train_loss: float
    val_loss: float
    f1_micro: float
    f1_macro: float
    f1_weighted: float
    roc_auc_macro: float | None
    train_seconds: float
    samples_per_s: float
    tokens_per_s: float
    workers: int
    first_batch_seconds: float  # mean over workers: the wait for the first batch (pipeline start)
    data_wait_seconds: float  # mean over workers: the wait for all batches
    validation_rows: int
    accuracy: float | None = None  # multi-class
    subset_accuracy: float | None = None  # multi-label
    hamming_loss: float | None = None  # multi-label
    f1_macro_at_half: float | None = field(default=None, metadata={"json": "f1_macro_at_0.5"})
    f1_micro_at_half: float | None = field(default=None, metadata={"json": "f1_micro_at_0.5"})
    thresholds: dict[str, float] | None = None  # tuned on validation (multi-label)
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, float] | None = None  # the TF-IDF baseline's validation metrics (bertclf.baseline)
    baseline_per_label: dict[str, float] = field(default_factory=dict)  # its validation F1 per label
    blend: BlendChoice | None = None  # the blend chosen on this epoch's validation (bertclf.blend)

    def scalars(self) -> dict[str, float]:
        """The numeric metrics by JSON key (what Ray Train's report and checkpoint ranking see), with the
        baseline's as baseline_<metric> and the blend's weight and score as blend_weight, blend_<metric>."""
        out = {k: v for k, v in self.to_dict().items()
               if k != "format" and isinstance(v, int | float) and not isinstance(v, bool)}
        out.update({f"baseline_{k}": v for k, v in (self.baseline or {}).items()})
        if self.blend is not None:
            out.update({"blend_weight": self.blend.weight, f"blend_{self.blend.metric}": self.blend.blended})
        return out

    def metric(self, name: str) -> float | None:
        return self.scalars().get(name)

    def without_per_label(self) -> EpochRecord:
        return dataclasses.replace(self, per_label={}, baseline_per_label={})


@dataclass
class DataSummary(Record):
    """Which training data made a checkpoint: files, row counts, label counts and a fingerprint."""

    fingerprint: str
    train_files: list[str]
    validation_files: list[str] | None
    n_train: int
    n_validation: int
    label_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class TuningInfo(Record):
    """How a checkpoint was fine-tuned: the method, its settings, and what of the model trained.

    `adapter` names the checkpoint's sub-directory holding a peft adapter that every load must apply (prefix-
    tuning); None when the weights alone are the model, which then loads with plain transformers.
    """

    method: str = "full"
    settings: dict[str, Any] = field(default_factory=dict)
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    adapter: str | None = None

    @property
    def loads_with_transformers(self) -> bool:
        return self.adapter is None

    def _fields_dict(self) -> dict[str, Any]:
        return {**super()._fields_dict(), "loads_with_transformers": self.loads_with_transformers}


@dataclass
class CheckpointMeta(Record):
    """bertclf.json: what a checkpoint predicts (labels, thresholds, max length) and how it was made.

    Format 2 keeps the best epoch's per-label scores inside `metrics` (format 1 kept them beside it). Format 3
    adds `tuning`: a prefix-tuned checkpoint needs its adapter, which a format-2 reader would silently skip. Format
    4 adds `blend`: a format-3 reader would silently give the transformer's probabilities without the baseline.
    """

    FORMAT: ClassVar[int] = 4

    labels: LabelSpace
    max_length: int
    epoch: int | None = None
    metrics: EpochRecord | None = None  # the epoch this checkpoint is, per-label scores included
    history: list[EpochRecord] = field(default_factory=list)  # every epoch up to it, without per-label scores
    training_config: dict[str, Any] = field(default_factory=dict)
    data: DataSummary | None = None
    versions: dict[str, str] = field(default_factory=dict)
    tuning: TuningInfo = field(default_factory=TuningInfo)
    long_text: Literal["truncate", "chunk"] = "truncate"  # chunk: windows of max_length, pooled per text
    chunk_stride: int = 0  # tokens neighbouring windows share
    blend: BlendChoice | None = None  # None: no baseline (checkpoints before 2026-12-06); else how it is mixed in

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        if version == 1 and isinstance(data.get("metrics"), dict) and "per_label" in data:
            data["metrics"] = {**data["metrics"], "per_label": data.pop("per_label")}
        return data


@dataclass
class TrackingRef(Record):
    """tracking.json in a run directory and its best/: the MLflow run that tracked it, so `bertclf report` (and
    a rank-0 training worker) can log to the same run."""

    tracking_uri: str
    experiment_id: str
    run_id: str
