"""`bertclf evaluate`: a checkpoint's metrics on labelled Parquet, at its tuned thresholds and at 0.5."""

from __future__ import annotations

import pyarrow as pa

from bertclf import checkpoint, storage
from bertclf.data import read_table
from bertclf.inference import logits_for_texts
from bertclf.labels import encode_targets, label_format, probabilities
from bertclf.metrics import classification_metrics
from bertclf.modeling import load_for_inference


def evaluate(checkpoint_uri: str, data: str | list[str], text_column: str = "text", label_column: str | None = None,
             label_columns: list[str] | None = None) -> dict:
    """Metrics with the checkpoint's thresholds (and, for multi-label, at a flat 0.5 for comparison)."""
    import torch

    ckpt = checkpoint.load(checkpoint_uri)
    space = ckpt.space
    label_columns = label_columns or []
    if label_column is None and not label_columns:
        label_column = "labels" if space.task == "multi_label" else "label"
    columns = [text_column, *(label_columns or [label_column])]
    tables = [read_table(uri, columns) for uri in storage.list_parquet_files(data)]
    table = pa.concat_tables(tables)
    fmt = label_format({f.name: f.type for f in table.schema}, label_column, label_columns)
    targets = encode_targets(table, space, fmt, label_column, label_columns)
    model, tokenizer = load_for_inference(ckpt.local_dir)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    logits = logits_for_texts(model, tokenizer, table[text_column].to_pylist(), max_length=ckpt.max_length)
    probs = probabilities(space.task, logits)
    report = {"rows": table.num_rows, "checkpoint": checkpoint_uri, **classification_metrics(space, targets, probs)}
    if space.task == "multi_label":
        flat = classification_metrics(space, targets, probs, [0.5] * len(space.names))
        report.update({f"{k}_at_0.5": v for k, v in flat.items() if k.startswith("f1_")})
    return report
