"""`bertclf evaluate`: a checkpoint's metrics on labelled Parquet, at its tuned thresholds and at 0.5; and the
checks on labelled data that the evaluation report shares."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.config import EvaluateConfig, TrainConfig
from bertclf.errors import DataError, LabelError
from bertclf.inference import Predictor
from bertclf.labels import LabelFormat, LabelSpace, encode_targets, label_format, labels_in_column
from bertclf.metrics import classification_metrics
from bertclf.units import read_table


def check_labelled_files(files: list[str], space: LabelSpace, text_column: str, label_column: str | None,
                         label_columns: list[str]) -> tuple[str | None, list[str], LabelFormat, int]:
    """Every file has the text and label columns, only labels the checkpoint knows, and rows.

    Returns (label column, wide label columns, label layout, row count); errors name the file, column or label.
    """
    if label_column is None and not label_columns:
        label_column = "labels" if space.task == "multi_label" else "label"
    fmt: LabelFormat | None = None
    rows = 0
    for uri in files:
        fs, path = storage.resolve(uri)
        try:
            schema = storage.with_retries(lambda: pq.read_schema(path, filesystem=fs), f"reading {uri}")  # noqa: B023
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{uri} is not a readable Parquet file: {exc}") from None
        if text_column not in schema.names:
            raise DataError(f"{uri}: text column {text_column!r} not found; columns are {schema.names}")
        try:
            fmt = label_format({f.name: f.type for f in schema}, label_column, label_columns)
        except LabelError as exc:
            raise DataError(f"{uri}: {exc}; columns are {schema.names}") from None
        if fmt == "single" and space.task == "multi_label" or fmt != "single" and space.task == "multi_class":
            raise DataError(f"{uri}: the checkpoint is {space.task} but the label column(s) hold {fmt} labels")
        table = read_table(uri, label_columns or [label_column])
        rows += table.num_rows
        found = set(label_columns) if fmt == "wide" else labels_in_column(table[label_column], fmt)
        unknown = found - set(space.names)
        if unknown:
            raise LabelError(f"{uri}: label(s) {sorted(unknown)} in column {label_column or label_columns!r} are not "
                             f"in the checkpoint's label space {space.names}")
    if rows == 0:
        raise DataError(f"evaluation data {files} has no rows")
    assert fmt is not None  # list_parquet_files never returns an empty list
    return label_column if fmt != "wide" else None, list(label_columns), fmt, rows


def evaluate(cfg: EvaluateConfig) -> dict:
    """Metrics with the checkpoint's thresholds (and, for multi-label, at a flat 0.5 for comparison).

    With `report`, the data is scored through Ray Data and the evaluation report is written too; its
    headline metrics are returned.
    """
    cfg.validate()
    if cfg.report:
        from bertclf.config import LabelledDataConfig, ReportConfig
        from bertclf.report import evaluation_report

        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LabelledDataConfig)}
        report = evaluation_report(ReportConfig(**shared, output=cfg.report))
        return {"checkpoint": cfg.checkpoint, "report": cfg.report, **report["headline"],
                "per_label": report["per_label"]}
    predictor = Predictor.load(cfg.checkpoint, device="cpu")
    if cfg.long_text != "checkpoint":
        predictor.long_text = cfg.long_text
        predictor.chunk_stride = predictor.chunk_stride or TrainConfig.chunk_stride
    space = predictor.space
    files = storage.list_parquet_files(cfg.data)
    label_column, label_columns, fmt, _ = check_labelled_files(files, space, cfg.text_column, cfg.label_column,
                                                               list(cfg.label_columns))
    columns = [cfg.text_column, *(label_columns or [label_column])]
    table = pa.concat_tables([read_table(uri, columns) for uri in files])
    targets = encode_targets(table, space, fmt, label_column, label_columns)
    probs = predictor.probabilities(table[cfg.text_column].to_pylist())
    report = {"rows": table.num_rows, "checkpoint": cfg.checkpoint, "long_text": predictor.long_text,
              **classification_metrics(space, targets, probs)}
    if space.task == "multi_label":
        flat = classification_metrics(space, targets, probs, [0.5] * len(space.names))
        report.update({f"{k}_at_0.5": v for k, v in flat.items() if k.startswith("f1_")})
    return report
