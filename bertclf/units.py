"""Reading Parquet: whole files with their columns checked, and units of work (runs of whole row groups of
one file, planned from the footers).

A unit is the grain of reading for training and of exactly-once output for scoring: its rows are fixed
by the input file's layout, so a re-run maps every row to the same unit and the same output name.
We read units ourselves (inside Ray Data tasks and actors) rather than through `read_parquet`, whose
listing task wants a whole CPU and starves next to train workers on small nodes.
"""

from __future__ import annotations

import math
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


def read_footers(files: list[str], threads: int = 16) -> tuple[dict[str, pq.FileMetaData], dict[str, str]]:
    """({uri: footer} for the readable files, {uri: error} for the others), read in parallel."""
    def _one(uri: str):
        try:
            return uri, file_metadata(uri), None
        except UnreadableFileError as exc:
            return uri, None, str(exc)

    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(files)))) as pool:
        results = list(pool.map(_one, files))
    return ({uri: meta for uri, meta, _ in results if meta is not None},
            {uri: error for uri, _, error in results if error})


def cut_units(files: list[str], footers: dict[str, pq.FileMetaData], rows_per_unit: int) -> list[WorkUnit]:
    """Each readable file's row groups in runs of at most `rows_per_unit` rows (a larger group is a unit alone).

    A file's units depend only on its own layout and `rows_per_unit`, so the same value always gives the same
    units and output names.
    """
    units: list[WorkUnit] = []
    for i, uri in enumerate(files):
        meta = footers.get(uri)
        if meta is None:
            continue
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
    return units


def balanced_rows_per_unit(total_rows: int, workers: int, ceiling: int, units_per_worker: int = 4) -> int:
    """Rows per unit so `workers` get about `units_per_worker` units each (never above `ceiling`): a small
    corpus is still spread over every worker, and the last units to finish are short."""
    return max(1, min(ceiling, math.ceil(total_rows / max(1, workers * units_per_worker))))


def plan_units(files: list[str], rows_per_unit: int, threads: int = 16
               ) -> tuple[list[WorkUnit], dict[str, str], dict[str, pa.Schema]]:
    """Units for every readable file, plus {uri: error} for files whose footer can't be read, plus schemas."""
    footers, errors = read_footers(files, threads)
    schemas = {uri: meta.schema.to_arrow_schema() for uri, meta in footers.items()}
    return cut_units(files, footers, rows_per_unit), errors, schemas


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
