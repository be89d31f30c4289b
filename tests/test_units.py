"""Units of work planned from Parquet footers, and reading them back."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf.errors import UnreadableFileError
from bertclf.records import WorkUnit
from bertclf.units import plan_units, read_unit, read_unit_table


def _write(path, n, row_group_size, start=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"r{start + i}" for i in range(n)], "text": [f"text {start + i}" for i in range(n)],
                      "extra": list(range(start, start + n))})
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)


def _expected_groups(sizes, rows_per_unit):
    """Greedy grouping written out independently: close a unit when the next group would overflow it."""
    units, cur = [], []
    for g, n in enumerate(sizes):
        if cur and sum(sizes[i] for i in cur) + n > rows_per_unit:
            units.append(tuple(cur))
            cur = []
        cur.append(g)
    if cur:
        units.append(tuple(cur))
    return units


def test_plan_units_groups_row_groups(tmp_path):
    f = _write(tmp_path / "a.parquet", 95, row_group_size=10)  # 9 groups of 10 + one of 5
    meta = pq.ParquetFile(f).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert sizes == [10] * 9 + [5]
    units, errors, schemas = plan_units([f], rows_per_unit=25, threads=2)
    assert errors == {}
    assert [u.row_groups for u in units] == _expected_groups(sizes, 25)
    assert [u.row_groups for u in units] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert all(u.num_rows <= 25 for u in units)
    assert sum(u.num_rows for u in units) == 95
    assert all(u.uri == f and u.file_index == 0 for u in units)
    assert schemas[f].names == ["id", "text", "extra"]


def test_plan_units_big_row_group_gets_own_unit(tmp_path):
    f = _write(tmp_path / "a.parquet", 30, row_group_size=30)
    units, _, _ = plan_units([f], rows_per_unit=7)
    assert [(u.row_groups, u.num_rows) for u in units] == [((0,), 30)]


def test_plan_units_whole_file_in_one_unit(tmp_path):
    f = _write(tmp_path / "a.parquet", 40, row_group_size=8)
    units, _, _ = plan_units([f], rows_per_unit=1000)
    assert [(u.row_groups, u.num_rows) for u in units] == [((0, 1, 2, 3, 4), 40)]


def test_unit_names_deterministic_and_distinct(tmp_path):
    f1 = _write(tmp_path / "day1" / "part-0.parquet", 20, row_group_size=5)
    f2 = _write(tmp_path / "day2" / "part-0.parquet", 20, row_group_size=5)
    units, _, _ = plan_units([f1, f2], rows_per_unit=10)
    again, _, _ = plan_units([f1, f2], rows_per_unit=10)
    names = [u.name for u in units]
    assert names == [u.name for u in again]
    assert len(set(names)) == len(names) == 4
    by_file = {f: {u.name for u in units if u.uri == f} for f in (f1, f2)}
    assert not by_file[f1] & by_file[f2]
    for name in names:
        assert name.startswith("part-0-") and name.endswith(".parquet")
        assert "/" not in name and os.sep not in name
    assert [u.file_index for u in units] == [0, 0, 1, 1]
    assert WorkUnit(f1, (0, 1), 10, 0).name == WorkUnit(f1, (0, 1), 10, 5).name  # the name depends on URI + groups
    assert WorkUnit(f1, (0, 1), 10, 0).name != WorkUnit(f1, (2, 3), 10, 0).name


def test_unit_dict_round_trip(tmp_path):
    unit = WorkUnit(str(tmp_path / "a.parquet"), (3, 4, 5), 42, 2)
    assert WorkUnit.from_json(unit.to_json()) == unit


def test_corrupt_file_reported_others_planned(tmp_path):
    good1 = _write(tmp_path / "a.parquet", 12, row_group_size=4)
    bad = tmp_path / "b.parquet"
    bad.write_bytes(random.Random(1).randbytes(2048))
    good2 = _write(tmp_path / "c.parquet", 8, row_group_size=4)
    files = [good1, str(bad), good2]
    units, errors, schemas = plan_units(files, rows_per_unit=4)
    assert list(errors) == [str(bad)]
    error = errors[str(bad)]
    assert str(bad) in error.message and (error.error_type, error.kind) == ("UnreadableFileError", "input")
    assert set(schemas) == {good1, good2}
    assert sum(u.num_rows for u in units if u.uri == good1) == 12
    assert sum(u.num_rows for u in units if u.uri == good2) == 8
    assert {u.file_index for u in units if u.uri == good2} == {2}


def test_missing_file_reported(tmp_path):
    missing = str(tmp_path / "gone.parquet")
    units, errors, _ = plan_units([missing], rows_per_unit=10)
    assert units == [] and missing in errors


def test_read_unit_streams_requested_columns(tmp_path):
    f = _write(tmp_path / "a.parquet", 50, row_group_size=10)
    units, _, _ = plan_units([f], rows_per_unit=20)
    seen = []
    for unit in units:
        batches = list(read_unit(unit, ["text", "id"], batch_rows=7))
        assert all(b.num_rows <= 7 for b in batches)
        assert all(b.schema.names == ["text", "id"] for b in batches)  # no "extra" column read
        ids = [v for b in batches for v in b.column("id").to_pylist()]
        first = unit.row_groups[0] * 10
        assert ids == [f"r{i}" for i in range(first, first + unit.num_rows)]
        seen.extend(ids)
    assert seen == [f"r{i}" for i in range(50)]


def test_read_unit_table_matches_stream(tmp_path):
    f = _write(tmp_path / "a.parquet", 30, row_group_size=10)
    unit = WorkUnit(f, (1, 2), 20, 0)
    table = read_unit_table(unit, ["extra"])
    assert table.column_names == ["extra"] and table.column("extra").to_pylist() == list(range(10, 30))
    streamed = pa.Table.from_batches(list(read_unit(unit, ["extra"], batch_rows=4)))
    assert streamed.equals(table)


def test_read_unit_corrupt_file_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(random.Random(2).randbytes(512))
    with pytest.raises(UnreadableFileError, match="bad.parquet"):
        list(read_unit(WorkUnit(str(bad), (0,), 10, 0), ["id"], batch_rows=5))
