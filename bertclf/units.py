"""Reading Parquet: whole files with their columns checked, and units of work (runs of whole row groups of
one file, planned from the footers).

A unit is the grain of reading for training and of exactly-once output for scoring: its rows are fixed
by the input file's layout, so a re-run maps every row to the same unit and the same output name.
We read units ourselves (inside Ray Data tasks and actors) rather than through `read_parquet`, whose
listing task wants a whole CPU and starves next to train workers on small nodes.
"""

from __future__ import annotations

import gc
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import DataError, UnreadableFileError
from bertclf.records import UnitError, WorkUnit

T = TypeVar("T")
FOOTER_GC_EVERY = 32  # read_footers: footers read between two collections of their decoded FileMetaData


def is_storage_failure(uri: str, exc: BaseException) -> bool:
    """Whether an error reading `uri` is object storage or the network failing (retry, exit 1) rather than the
    file's bytes (corrupt, truncated, not Parquet: exit 2). pyarrow raises OSError for both (a corrupt footer is
    "Couldn't deserialize thrift"), so only an s3:// error that reads like the network or the store counts."""
    return isinstance(exc, OSError) and storage.is_s3(uri) and (storage.is_transient(exc) or storage.is_permanent(exc))


def _unreadable(uri: str, exc: BaseException, where: str = "") -> UnreadableFileError:
    return UnreadableFileError(f"{uri}{where} is not a readable Parquet file (corrupt or truncated): "
                               f"{' '.join(str(exc).split())[:500]}; replace or remove the file")


def read_parquet_part(uri: str, fn: Callable[[], T], where: str = "") -> T:
    """Run a whole read of `uri`: storage failures retried (logged per attempt) and then StorageError; anything
    wrong with the bytes UnreadableFileError naming the file. A missing file stays FileNotFoundError."""
    def _once() -> T:
        try:
            return fn()
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            if is_storage_failure(uri, exc):
                raise  # with_retries retries it, or says it is a storage failure
            raise _unreadable(uri, exc, where) from None

    return storage.with_retries(_once, f"reading {uri}{where}")


def is_text_type(arrow_type: pa.DataType) -> bool:
    """string, large_string, string_view, or a dictionary of one of them: what can be read as text."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_string_view(arrow_type))


def check_utf8(col: pa.ChunkedArray | pa.Array, column: str, uri: str, first_row: int = 0) -> None:
    """Text that is valid UTF-8, checked in Arrow (Parquet readers don't; the tokenizer would fail on a worker).
    Raises DataError naming the file, column and first bad row."""
    offset = first_row
    for chunk in (col.chunks if isinstance(col, pa.ChunkedArray) else [col]):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid as exc:
            found = re.search(r"index (\d+)", str(exc))
            row = f"row {offset + int(found.group(1))}" if found else f"a row in {offset}-{offset + len(chunk) - 1}"
            raise DataError(f"{uri}: text column {column!r} holds invalid UTF-8 ({row}); re-encode the text as UTF-8 "
                            "or drop the row") from None
        offset += len(chunk)


def file_metadata(uri: str) -> pq.FileMetaData:
    fs, path = storage.resolve(uri)

    def _read() -> pq.FileMetaData:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    try:
        return read_parquet_part(uri, _read)
    except FileNotFoundError as exc:
        raise UnreadableFileError(f"{uri} is not a readable Parquet file: {exc}") from None


class ColumnSizes(NamedTuple):
    """One column chunk of a row group, as planning reads it (pyarrow's ColumnChunkMetaData names)."""

    path_in_schema: str
    total_compressed_size: int
    total_uncompressed_size: int


class RowGroupSizes(NamedTuple):
    """One row group, as planning reads it (pyarrow's RowGroupMetaData names)."""

    num_rows: int
    paths: tuple[str, ...]
    sizes: np.ndarray  # (columns, 2): compressed, uncompressed bytes

    @property
    def num_columns(self) -> int:
        return len(self.paths)

    def column(self, j: int) -> ColumnSizes:
        return ColumnSizes(self.paths[j], int(self.sizes[j, 0]), int(self.sizes[j, 1]))


class SchemaColumn(NamedTuple):
    path: str


class FooterSchema(NamedTuple):
    """A file's schema, as planning reads it (pyarrow's ParquetSchema names): one object shared by every file of
    the input with the same schema."""

    arrow: pa.Schema
    paths: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return self.arrow.names

    def to_arrow_schema(self) -> pa.Schema:
        return self.arrow

    def column(self, j: int) -> SchemaColumn:
        return SchemaColumn(self.paths[j])


class SchemaCache:
    """The schemas of the footers read so far (at most `size`), so files with one schema share one FooterSchema.

    A file's schema is matched on the footer itself (its Parquet schema and the Arrow schema pyarrow stored with it)
    before anything is built from it: objects made while a footer is decoded and kept after it (an Arrow schema,
    the column names) pin the freed decoding memory around them, ~600 KB per file of 22 columns and 50 row groups
    (benchmarks/scale.py). Each entry keeps its own footer alive: a few files' worth."""

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: list[tuple[object, bytes | None, FooterSchema]] = []
        self.lock = threading.Lock()

    def get(self, meta: pq.FileMetaData) -> FooterSchema:
        arrow_bytes = (meta.metadata or {}).get(b"ARROW:schema")
        with self.lock:
            for parquet_schema, stored, schema in self.entries:
                if stored == arrow_bytes and meta.schema.equals(parquet_schema):
                    return schema
        schema = FooterSchema(meta.schema.to_arrow_schema(),
                              tuple(meta.schema.column(j).path for j in range(meta.num_columns)))
        with self.lock:
            if len(self.entries) < self.size:
                self.entries.append((meta.schema, arrow_bytes, schema))
        return schema


class Footer:
    """What planning and the driver's checks read from one file's Parquet footer, kept small: the schema (shared
    between files), the rows, and per row group its rows and each column's compressed and uncompressed bytes. Its
    names are pyarrow's FileMetaData's, so code reads either alike. Why: the driver holds every input's footer
    until its units are cut, and a decoded FileMetaData is ~8x its bytes on storage (940 KB for a file of 22
    columns and 50 row groups: 1.9 GB of driver memory for 2,000 such files); this keeps 16 bytes per column
    chunk (benchmarks/scale.py, 2026-12-06)."""

    __slots__ = ("schema", "num_rows", "_rows", "_sizes")

    def __init__(self, meta: pq.FileMetaData, schemas: SchemaCache | None = None):
        self.schema = (schemas or SchemaCache(0)).get(meta)
        self.num_rows = meta.num_rows
        groups, columns = meta.num_row_groups, meta.num_columns
        rows = np.zeros(groups, np.int64)  # numpy arrays only: no small objects between the footer's allocations
        sizes = np.zeros((groups, columns, 2), np.int64)
        for g in range(groups):
            group = meta.row_group(g)
            rows[g] = group.num_rows
            for j in range(group.num_columns):
                chunk = group.column(j)
                sizes[g, j, 0] = chunk.total_compressed_size
                sizes[g, j, 1] = chunk.total_uncompressed_size
        self._rows, self._sizes = rows, sizes

    @property
    def num_columns(self) -> int:
        return len(self.schema.paths)

    @property
    def num_row_groups(self) -> int:
        return len(self._rows)

    def row_group(self, g: int) -> RowGroupSizes:
        if not 0 <= g < len(self._rows):
            raise IndexError(f"row group {g} of {len(self._rows)}")
        return RowGroupSizes(int(self._rows[g]), self.schema.paths, self._sizes[g])

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes + self._sizes.nbytes


def read_footers(files: list[str], threads: int = 16) -> tuple[dict[str, Footer], dict[str, UnitError]]:
    """({uri: footer} for the readable files, {uri: why not} for the others), read in parallel; each footer is kept
    as a compact Footer (files with the same schema share one), not pyarrow's whole FileMetaData."""
    schemas = SchemaCache()

    def _one(uri: str):
        try:
            return uri, Footer(file_metadata(uri), schemas), None
        except UnreadableFileError as exc:  # storage failures are raised: the whole run is worth retrying
            return uri, None, UnitError.of(exc)

    results = []
    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(files)))) as pool:
        for k, result in enumerate(pool.map(_one, files)):
            results.append(result)
            if k % FOOTER_GC_EVERY == FOOTER_GC_EVERY - 1:
                # a FileMetaData whose .schema was read is in a reference cycle with it: only the cycle collector
                # frees it, and it does not see the decoded footer's C++ memory (~1 MB for 22 columns x 50 row
                # groups): collected here, every few footers, so the driver holds only the Footers
                gc.collect(1)
    return ({uri: meta for uri, meta, _ in results if meta is not None},
            {uri: error for uri, _, error in results if error})


def cut_units(files: list[str], footers: dict[str, Footer | pq.FileMetaData], rows_per_unit: int,
              text_column: str | None = None, text_bytes_per_unit: int | None = None) -> list[WorkUnit]:
    """Each readable file's row groups in runs of at most `rows_per_unit` rows and, given `text_bytes_per_unit`,
    at most that many bytes of `text_column` (uncompressed, from the footer): the work of a unit follows its
    texts' length, not its row count. A group over the byte budget is cut into row slices of about that size, so
    one row group of long documents still spreads over every actor; a group over the row budget alone is a unit.

    A file's units depend only on its own layout and the two budgets, so the same values always give the same
    units and output names.
    """
    units: list[WorkUnit] = []
    for i, uri in enumerate(files):
        meta = footers.get(uri)
        if meta is None:
            continue
        column = _column_index(meta, text_column)
        group: list[int] = []
        rows = size = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            b = meta.row_group(g).column(column).total_uncompressed_size if column is not None else 0
            if text_bytes_per_unit and b > text_bytes_per_unit and n > 1:
                if group:
                    units.append(WorkUnit(uri, tuple(group), rows, i))
                    group, rows, size = [], 0, 0
                units += _row_slices(uri, g, n, i, math.ceil(b / text_bytes_per_unit))
                continue
            if group and (rows + n > rows_per_unit or (text_bytes_per_unit and size + b > text_bytes_per_unit)):
                units.append(WorkUnit(uri, tuple(group), rows, i))
                group, rows, size = [], 0, 0
            group.append(g)
            rows += n
            size += b
        if group:  # a file without row groups has no rows and so no unit
            units.append(WorkUnit(uri, tuple(group), rows, i))
    return units


def _column_index(meta: Footer | pq.FileMetaData, name: str | None) -> int | None:
    if name is None:
        return None
    for j in range(meta.num_columns):
        if meta.schema.column(j).path == name:
            return j
    return None


def _row_slices(uri: str, group: int, rows: int, file_index: int, parts: int) -> list[WorkUnit]:
    """One row group as `parts` units of consecutive rows (as equal as the count allows)."""
    parts = min(rows, parts)
    bounds = [round(k * rows / parts) for k in range(parts + 1)]
    return [WorkUnit(uri, (group,), bounds[k + 1] - bounds[k], file_index, (bounds[k], bounds[k + 1]))
            for k in range(parts)]


def text_bytes(footers: dict[str, Footer | pq.FileMetaData], text_column: str) -> int:
    """Uncompressed bytes of the text column over every file (footers only)."""
    total = 0
    for meta in footers.values():
        column = _column_index(meta, text_column)
        if column is not None:
            total += sum(meta.row_group(g).column(column).total_uncompressed_size for g in range(meta.num_row_groups))
    return total


def balanced_rows_per_unit(total_rows: int, workers: int, ceiling: int, units_per_worker: int = 4) -> int:
    """Rows per unit so `workers` get about `units_per_worker` units each (never above `ceiling`): a small
    corpus is still spread over every worker, and the last units to finish are short."""
    return max(1, min(ceiling, math.ceil(total_rows / max(1, workers * units_per_worker))))


def plan_units(files: list[str], rows_per_unit: int, threads: int = 16
               ) -> tuple[list[WorkUnit], dict[str, UnitError], dict[str, pa.Schema]]:
    """Units for every readable file, plus {uri: error} for files whose footer can't be read, plus schemas."""
    footers, errors = read_footers(files, threads)
    schemas = {uri: meta.schema.to_arrow_schema() for uri, meta in footers.items()}
    return cut_units(files, footers, rows_per_unit), errors, schemas


def read_unit(unit: WorkUnit, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream a unit's rows in batches, reading only `columns`. A storage failure mid-stream is retried like a
    write (logged per attempt; the batches already handed over are skipped on the next try); a corrupt or
    truncated file is UnreadableFileError naming it and the row groups."""
    fs, path = storage.resolve(unit.uri)
    where = f" (row groups {unit.row_groups[0]}-{unit.row_groups[-1]})"
    attempts = storage.io_attempts()
    started = time.monotonic()  # a stream failing for longer than the storage deadline stops retrying
    done = 0
    for attempt in range(attempts):
        try:
            with fs.open_input_file(path) as f:
                batches = pq.ParquetFile(f).iter_batches(batch_size=batch_rows, row_groups=list(unit.row_groups),
                                                         columns=columns)
                for i, batch in enumerate(_in_range(batches, unit.row_range)):
                    if i >= done:
                        done += 1
                        yield batch
            return
        except FileNotFoundError as exc:
            raise UnreadableFileError(f"{unit.uri}{where}: the file is gone: {exc}") from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            if not is_storage_failure(unit.uri, exc):
                raise _unreadable(unit.uri, exc, where) from None
            storage.retry_or_raise(exc, attempt, attempts, f"reading {unit.uri}{where}", started=started)


def _in_range(batches: Iterator[pa.RecordBatch], row_range: tuple[int, int] | None) -> Iterator[pa.RecordBatch]:
    """The batches' rows within [start, end) of the row group (all of them without a range)."""
    if row_range is None:
        yield from batches
        return
    start, end = row_range
    offset = 0
    for batch in batches:
        lo, hi = max(start - offset, 0), min(end - offset, batch.num_rows)
        offset += batch.num_rows
        if hi > lo:
            yield batch.slice(lo, hi - lo)
        if offset >= end:
            return


def read_unit_table(unit: WorkUnit, columns: list[str]) -> pa.Table:
    """A unit's rows as one table (training shards: small enough to hold)."""
    fs, path = storage.resolve(unit.uri)

    def _read() -> pa.Table:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_groups(list(unit.row_groups), columns=columns)

    return read_parquet_part(unit.uri, _read, f" (row groups {unit.row_groups[0]}-{unit.row_groups[-1]})")


def read_table(uri: str, columns: list[str]) -> pa.Table:
    """Read some columns of one Parquet file; errors name the file and the missing column."""
    fs, path = storage.resolve(uri)
    try:
        schema = read_parquet_part(uri, lambda: pq.read_schema(path, filesystem=fs))
    except FileNotFoundError as exc:
        raise UnreadableFileError(f"{uri} is not a readable Parquet file: {exc}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{uri}: column(s) {', '.join(map(repr, missing))} not found; columns are {schema.names}")
    return read_parquet_part(uri, lambda: pq.read_table(path, columns=columns, filesystem=fs))


# the interface other modules, jobs and benchmarks use
__all__ = ["Footer", "balanced_rows_per_unit", "check_utf8", "cut_units", "file_metadata", "is_text_type", "plan_units",
           "read_footers", "read_parquet_part", "read_table", "read_unit", "read_unit_table"]
