"""`bertclf evaluate`: a checkpoint's metrics on labelled Parquet, at its tuned thresholds and at 0.5."""

from __future__ import annotations

import pyarrow as pa

from bertclf import storage
from bertclf.config import EvaluateConfig
from bertclf.inference import Predictor
from bertclf.labels import encode_targets, label_format
from bertclf.metrics import classification_metrics
from bertclf.units import read_table


def evaluate(cfg: EvaluateConfig) -> dict:
    """Metrics with the checkpoint's thresholds (and, for multi-label, at a flat 0.5 for comparison)."""
    cfg.validate()
    predictor = Predictor.load(cfg.checkpoint, device="cpu")
    space = predictor.space
    label_column, label_columns = cfg.label_column, list(cfg.label_columns)
    if label_column is None and not label_columns:
        label_column = "labels" if space.task == "multi_label" else "label"
    columns = [cfg.text_column, *(label_columns or [label_column])]
    table = pa.concat_tables([read_table(uri, columns) for uri in storage.list_parquet_files(cfg.data)])
    fmt = label_format({f.name: f.type for f in table.schema}, label_column, label_columns)
    targets = encode_targets(table, space, fmt, label_column, label_columns)
    probs = predictor.probabilities(table[cfg.text_column].to_pylist())
    report = {"rows": table.num_rows, "checkpoint": cfg.checkpoint, **classification_metrics(space, targets, probs)}
    if space.task == "multi_label":
        flat = classification_metrics(space, targets, probs, [0.5] * len(space.names))
        report.update({f"{k}_at_0.5": v for k, v in flat.items() if k.startswith("f1_")})
    return report
