"""Labelled Parquet checked against a checkpoint's label space before it is scored for evaluation: columns, label
layout and labels the checkpoint knows, so a bad file fails by name before Ray starts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import DataError, LabelError
from bertclf.labels import LabelFormat, LabelSpace, label_format, labels_in_column
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
