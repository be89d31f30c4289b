"""Labelled Parquet checked against a checkpoint's label space before it is scored for evaluation: columns, label
layout, labels the checkpoint knows and texts that are there, so a bad file fails by name before Ray starts.

`missing_texts` / `refuse_missing_texts` are the one rule for the texts of labelled data (training and evaluation
alike): a null, empty or blank text has no words to learn from or to be judged on, so it is an error naming the file
and the counts, never scored quietly."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import DataError, LabelError
from bertclf.labels import LabelFormat, LabelSpace, label_format, labels_in_column
from bertclf.units import check_utf8, is_text_type, read_parquet_part, read_table


def missing_texts(col: pa.Array | pa.ChunkedArray) -> tuple[int, int]:
    """(null, empty or whitespace-only) rows of a text column."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode() if isinstance(col, pa.Array) else pa.chunked_array(
            [c.dictionary_decode() for c in col.chunks], col.type.value_type)
    empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col.fill_null("x"))), 0)).as_py() or 0
    return col.null_count, empty


def refuse_missing_texts(uri: str, text_column: str, nulls: int, empty: int, doing: str) -> None:
    """The rule: labelled data holds a text in every row (`doing`: "training", "evaluating")."""
    if nulls or empty:
        raise DataError(f"{uri}: text column {text_column!r} has {nulls} null and {empty} empty row(s); "
                        f"drop or fill them before {doing}")


def _count_missing_texts(uri: str, text_column: str) -> tuple[int, int]:
    """Null and empty texts of one file, streamed a row group at a time (only the text column is read); invalid
    UTF-8 is refused naming the row, as training and scoring refuse it."""
    fs, path = storage.resolve(uri)

    def count() -> tuple[int, int] | DataError:
        nulls = empty = row = 0
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=[text_column], batch_size=65_536):
                try:
                    check_utf8(batch.column(0), text_column, uri, row)
                except DataError as exc:  # returned, not raised: read_parquet_part would call it a damaged file
                    return exc
                n, e = missing_texts(batch.column(0))
                nulls, empty, row = nulls + n, empty + e, row + batch.num_rows
        return nulls, empty

    counted = read_parquet_part(uri, count, f" (text column {text_column!r})")
    if isinstance(counted, DataError):
        raise counted
    return counted


def check_labelled_files(files: list[str], space: LabelSpace, text_column: str, label_column: str | None,
                         label_columns: list[str]) -> tuple[str | None, list[str], LabelFormat, int]:
    """Every file has the text and label columns, a text in every row, only labels the checkpoint knows, and rows.

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
        if is_text_type(schema.field(text_column).type):  # another type is scoring's check (it names the type)
            refuse_missing_texts(uri, text_column, *_count_missing_texts(uri, text_column), "evaluating")
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
