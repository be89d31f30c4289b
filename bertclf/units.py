"""Units of work over Parquet files: runs of whole row groups of one file, planned from the footers.

A unit is the grain of reading for training and of exactly-once output for scoring: its rows are fixed
by the input file's layout, so a re-run maps every row to the same unit and the same output name.
We read units ourselves (inside Ray Data tasks and actors) rather than through `read_parquet`, whose
listing task wants a whole CPU and starves next to train workers on small nodes.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage


class UnreadableFileError(ValueError):
    """A Parquet file whose footer or pages can't be read; names the file."""


@dataclass(frozen=True)
class WorkUnit:
    uri: str
    row_groups: tuple[int, ...]
    num_rows: int
    file_index: int

    @property
    def name(self) -> str:
        """Deterministic output name: input file stem + a hash of its URI + the row-group range."""
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", posixpath.basename(self.uri).removesuffix(".parquet"))[:80]
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:10]
        return f"{stem}-{digest}-rg{self.row_groups[0]:05d}-{self.row_groups[-1]:05d}.parquet"

    def to_dict(self) -> dict:
        return {"uri": self.uri, "row_groups": list(self.row_groups), "num_rows": self.num_rows,
                "file_index": self.file_index}

    @classmethod
    def from_dict(cls, d: dict) -> WorkUnit:
        return cls(d["uri"], tuple(int(g) for g in d["row_groups"]), int(d["num_rows"]), int(d["file_index"]))


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
