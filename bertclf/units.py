"""Reading Parquet: whole files with their columns checked, and units of work (runs of whole row groups of
one file, planned from the footers).

A unit is the grain of reading for training and of exactly-once output for scoring: its rows are fixed
by the input file's layout, so a re-run maps every row to the same unit and the same output name.
We read units ourselves (inside Ray Data tasks and actors) rather than through `read_parquet`, whose
listing task wants a whole CPU and starves next to train workers on small nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import DataError, UnreadableFileError
from bertclf.records import WorkUnit


def file_metadata(uri: str) -> pq.FileMetaData:
    fs, path = storage.resolve(uri)

    def _read() -> pq.FileMetaData:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    try:
        return storage.with_retries(_read, f"reading {uri}")
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise UnreadableFileError(f"{uri} is not a readable Parquet file: {exc}") from None


def plan_units(files: list[str], rows_per_unit: int, threads: int = 16
               ) -> tuple[list[WorkUnit], dict[str, str], dict[str, pa.Schema]]:
    """Units for every readable file, plus {uri: error} for files whose footer can't be read, plus schemas."""
    def _one(item: tuple[int, str]):
        i, uri = item
        try:
            return i, uri, file_metadata(uri), None
        except UnreadableFileError as exc:
            return i, uri, None, str(exc)

    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(files)))) as pool:
        results = list(pool.map(_one, enumerate(files)))
    units: list[WorkUnit] = []
    errors: dict[str, str] = {}
    schemas: dict[str, pa.Schema] = {}
    for i, uri, meta, error in results:
        if error:
            errors[uri] = error
            continue
        schemas[uri] = meta.schema.to_arrow_schema()
        group: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if group and rows + n > rows_per_unit:
                units.append(WorkUnit(uri, tuple(group), rows, i))
                group, rows = [], 0
            group.append(g)
            rows += n
        if group:  # a file without row groups has no rows and so no unit
            units.append(WorkUnit(uri, tuple(group), rows, i))
    return units, errors, schemas


def read_unit(unit: WorkUnit, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream a unit's rows in batches, reading only `columns`; errors name the file."""
    fs, path = storage.resolve(unit.uri)
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=list(unit.row_groups), columns=columns)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise UnreadableFileError(f"{unit.uri}: can't read row groups {unit.row_groups[0]}-{unit.row_groups[-1]}: "
                                  f"{exc}") from None


def read_unit_table(unit: WorkUnit, columns: list[str]) -> pa.Table:
    """A unit's rows as one table (training shards: small enough to hold)."""
    fs, path = storage.resolve(unit.uri)
    try:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_groups(list(unit.row_groups), columns=columns)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise UnreadableFileError(f"{unit.uri}: can't read row groups {unit.row_groups}: {exc}") from None


def read_table(uri: str, columns: list[str]) -> pa.Table:
    """Read some columns of one Parquet file; errors name the file and the missing column."""
    fs, path = storage.resolve(uri)
    try:
        schema = storage.with_retries(lambda: pq.read_schema(path, filesystem=fs), f"reading {uri}")
    except storage.StorageError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableFileError(f"{uri} is not a readable Parquet file: {exc}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{uri}: column(s) {', '.join(map(repr, missing))} not found; columns are {schema.names}")
    try:
        return storage.with_retries(lambda: pq.read_table(path, columns=columns, filesystem=fs), f"reading {uri}")
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableFileError(f"{uri} is not a readable Parquet file: {exc}") from None
