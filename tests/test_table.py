"""Nightly scores committed to an Apache Iceberg table: the embedded SQL catalog on SQLite, a warehouse on the S3
test server, real Ray scoring; read back with pyiceberg scans and DuckDB's Parquet reader."""

from __future__ import annotations

import datetime as dt
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from bertclf.cli import main
from bertclf.config import ScoreConfig, TableName
from bertclf.dev.synthetic import LABEL_WORDS, make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import ConfigError, DataError
from bertclf.labels import LabelSpace
from bertclf.scoring import run
from bertclf.scoring.table import (
    NightCommit,
    NightlyTable,
    TableConflictError,
    check_table,
    committed_night,
    open_catalog,
)

pyiceberg = pytest.importorskip("pyiceberg", reason="the iceberg extra: pip install 'bertclf[iceberg]'")

TABLE = "local.nightly.scores"


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """A multi-label checkpoint of the tiny BERT."""
    return (save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", [0.45, 0.5, 0.55]),)


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Two nights of input: {date} partitions of 120 and 90 rows (row groups of 40: several units each)."""
    root = tmp_path_factory.mktemp("in")
    for day, n in (("2026-12-04", 120), ("2026-12-05", 90)):
        (root / day).mkdir()
        rows = [{"id": f"{day}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(n, n, True))]
        write_rows(root / day / "texts.parquet", rows, row_group_size=40)
    return root


def _cfg(ckpt, nights, out, warehouse, date, **kw) -> ScoreConfig:
    base = dict(checkpoint=str(ckpt), input=str(nights / "{date}"), output=str(out / "{date}"), date=date,
                output_table=TABLE, table_warehouse=warehouse, precision="fp32", rows_per_unit=40, num_actors=1,
                reuse="none")
    return ScoreConfig(**{**base, **kw})


def _table(cfg):
    return open_catalog(_target(cfg)).load_table("nightly.scores")


def _target(cfg) -> NightlyTable:
    return NightlyTable.of(cfg.output_table, cfg.table_warehouse)


@pytest.mark.slow  # S3 twice end to end (~30 s); the local nights, drift and reuse through the table run by default
def test_two_nights_on_s3_read_back_equal_to_the_directory_output_and_a_rerun_replaces_its_night(
        ray_local, checkpoints, nights, tmp_path, bucket, monkeypatch):
    import duckdb
    from pyiceberg.expressions import EqualTo

    monkeypatch.setenv("BERTCLF_ICEBERG_DB_DIR", str(tmp_path / "catalogs"))  # the SQLite beside an S3 warehouse
    warehouse = f"s3://{bucket}/warehouse"
    first = _cfg(checkpoints[0], nights, tmp_path / "out", warehouse, "2026-12-04")
    second = _cfg(checkpoints[0], nights, tmp_path / "out", warehouse, "2026-12-05")
    one = run(first)
    two = run(second)
    table = _table(first)
    assert [f.name for f in table.spec().fields] == ["date"]
    probs = [f"prob_{name}" for name in sorted(LABEL_WORDS)]
    assert all(table.schema().find_field(p).field_type.__class__.__name__ == "FloatType" for p in probs)

    for summary, day, rows in ((one, "2026-12-04", 120), (two, "2026-12-05", 90)):
        scanned = table.scan(row_filter=EqualTo("date", day)).to_arrow().sort_by("id")
        directory = pq.read_table(summary.output).sort_by("id")
        assert scanned.num_rows == directory.num_rows == rows
        assert scanned.column("id").to_pylist() == directory.column("id").to_pylist()
        for label in probs:
            assert np.array_equal(scanned.column(label).to_numpy(), directory.column(label).to_numpy())
        assert set(scanned.column("date").to_pylist()) == {dt.date.fromisoformat(day)}
        night = committed_night(_target(first), dt.date.fromisoformat(day))
        assert night is not None and night.rows == rows and night.run_id == summary.run_id
        assert night.checkpoint_sha256 and night.snapshot_id == summary.table_snapshot

    # DuckDB, no Iceberg: the data files the current snapshot lists are plain Parquet with the same rows
    files = [t.file.file_path for t in table.scan().plan_files()]
    assert all(f.startswith(f"s3://{bucket}/warehouse/") for f in files)
    assert list((tmp_path / "catalogs").glob("*/local.db"))
    local = tmp_path / "copies"
    local.mkdir()
    from bertclf import storage

    for i, f in enumerate(files):
        storage.copy_file(f, str(local / f"{i}.parquet"))
    counts = duckdb.sql(f"SELECT CAST(date AS VARCHAR) d, count(*) n FROM read_parquet('{local}/*.parquet') "
                        "GROUP BY d ORDER BY d").fetchall()
    assert counts == [("2026-12-04", 120), ("2026-12-05", 90)]

    # a re-run of a night (--overwrite) replaces its rows: no duplicates, the other night untouched
    again = run(_cfg(checkpoints[0], nights, tmp_path / "out", warehouse, "2026-12-04", overwrite=True))
    table.refresh()
    assert table.scan(row_filter=EqualTo("date", "2026-12-04")).to_arrow().num_rows == 120
    assert table.scan(row_filter=EqualTo("date", "2026-12-05")).to_arrow().num_rows == 90
    assert committed_night(_target(first), dt.date(2026, 12, 4)).run_id == again.run_id != one.run_id
    # a re-run of a complete night adds nothing: the table already holds exactly this output
    snapshots = len(table.snapshots())
    assert run(first).already_complete
    table.refresh()
    assert len(table.snapshots()) == snapshots


def test_drift_reuse_and_the_report_read_the_previous_night_from_the_table(
        ray_local, checkpoints, nights, tmp_path):
    """Outputs named without {date}: the table alone says which output holds the night before."""
    warehouse = str(tmp_path / "warehouse")
    first = _cfg(checkpoints[0], nights, tmp_path, warehouse, "2026-12-04", output=str(tmp_path / "monday"))
    second = _cfg(checkpoints[0], nights, tmp_path, warehouse, "2026-12-05", output=str(tmp_path / "tuesday"),
                  reuse="previous")
    run(first)
    run(second)
    from bertclf.scoring import read_manifest

    manifest = read_manifest(str(tmp_path / "tuesday"))
    assert manifest.drift is not None and manifest.drift.previous_output == str(tmp_path / "monday")
    assert manifest.distribution_change_vs_previous is not None
    assert manifest.reuse is not None and manifest.reuse.source == str(tmp_path / "monday")

    report = tmp_path / "report"
    argv = ["report", "--scores", f"{TABLE}@2026-12-05", "--output", str(report), "--set",
            f"table_warehouse={warehouse}"]
    assert main(argv) == 0
    assert "tuesday" in (report / "index.html").read_text()
    assert main([*argv[:2], f"{TABLE}@2026-12-01", *argv[3:]]) == 2  # a night the table doesn't hold


def test_a_run_killed_before_the_table_commit_leaves_the_table_as_it_was_and_the_rerun_commits(
        ray_local, checkpoints, nights, tmp_path, monkeypatch):
    from pyiceberg.expressions import EqualTo

    from bertclf.scoring import driver

    warehouse = str(tmp_path / "warehouse")
    cfg = _cfg(checkpoints[0], nights, tmp_path / "out", warehouse, "2026-12-04")
    run(_cfg(checkpoints[0], nights, tmp_path / "out", warehouse, "2026-12-05"))
    table = _table(cfg)
    before = table.current_snapshot().snapshot_id

    def killed(table, manifest):
        raise KeyboardInterrupt("killed before the table commit")

    monkeypatch.setattr(driver, "commit_night", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.undo()
    table.refresh()
    assert table.current_snapshot().snapshot_id == before
    assert table.scan(row_filter=EqualTo("date", "2026-12-04")).to_arrow().num_rows == 0  # nothing visible
    assert committed_night(_target(cfg), dt.date(2026, 12, 4)) is None

    summary = run(cfg)  # the directory is complete: the re-run only commits it to the table
    assert summary.already_complete and summary.table_snapshot
    table.refresh()
    assert table.scan(row_filter=EqualTo("date", "2026-12-04")).to_arrow().num_rows == 120


def test_a_changed_label_space_is_refused_before_scoring_and_a_bad_name_or_catalog_exits_2_or_1(
        ray_local, checkpoints, nights, tmp_path, capsys):
    warehouse = str(tmp_path / "warehouse")
    cfg = _cfg(checkpoints[0], nights, tmp_path / "out", warehouse, "2026-12-04")
    run(cfg)
    renamed = LabelSpace("multi_label", [*sorted(LABEL_WORDS)[:-1], "renamed"], [0.5] * len(LABEL_WORDS))
    with pytest.raises(DataError, match=rf"holds the labels {re.escape(str(sorted(LABEL_WORDS)))}"):
        check_table(_target(cfg), renamed)  # what run() asks before Ray: a changed label space is refused (exit 2)
    check_table(_target(cfg), LabelSpace("multi_class", sorted(LABEL_WORDS)))  # same columns: another task type is fine

    with pytest.raises(ConfigError, match="not CATALOG.NAMESPACE.TABLE"):
        TableName.parse("scores")
    argv = ["score", "--checkpoint", str(checkpoints[0]), "--input", str(nights / "2026-12-04"), "--output",
            str(tmp_path / "o3"), "--output-table"]
    assert main([*argv, "nightly.scores"]) == 2
    assert "not CATALOG.NAMESPACE.TABLE" in capsys.readouterr().err
    os.environ["PYICEBERG_CATALOG__DOWN__URI"] = "http://127.0.0.1:9"  # a REST catalog nobody serves
    try:
        assert main([*argv, "down.nightly.scores", "--precision", "fp32"]) == 1
        assert "Iceberg catalog 'down' can't be reached" in capsys.readouterr().err
    finally:
        del os.environ["PYICEBERG_CATALOG__DOWN__URI"]


@pytest.mark.slow
def test_a_second_writer_of_the_same_night_is_refused_by_the_tables_concurrency_check(
        ray_local, checkpoints, nights, tmp_path, monkeypatch):
    """The lease bypassed (two outputs of one night): the commit that loses the race for the same date is refused by
    name and the table keeps the winner's rows once; another night committed meanwhile is no conflict (retried)."""
    from pyiceberg.expressions import EqualTo

    from bertclf.scoring import table as table_module

    warehouse = str(tmp_path / "warehouse")
    night = lambda out, date="2026-12-04": _cfg(checkpoints[0], nights, tmp_path / out, warehouse, date)  # noqa: E731
    run(night("a"))
    replace = table_module._replace_partition
    racer: list = []

    def race_first(cfg):
        def replace_after_another_commit(table, committing, files):
            if not racer:  # just before this commit lands, another run commits (its own commit is not raced)
                racer.append(None)
                racer[0] = run(cfg)
            return replace(table, committing, files)
        return replace_after_another_commit

    monkeypatch.setattr(table_module, "_replace_partition", race_first(night("c", "2026-12-05")))
    b = run(night("b"))  # lost the race to another night's commit: committed again, on top of it
    assert committed_night(_target(night("b")), dt.date(2026, 12, 4)).run_id == b.run_id
    assert committed_night(_target(night("b")), dt.date(2026, 12, 5)).run_id == racer[0].run_id

    racer.clear()
    monkeypatch.setattr(table_module, "_replace_partition", race_first(night("e")))
    with pytest.raises(TableConflictError, match="committed the 2026-12-04 partition while run"):
        run(night("d"))
    monkeypatch.undo()
    table = _table(night("a"))
    assert table.scan(row_filter=EqualTo("date", "2026-12-04")).to_arrow().num_rows == 120
    assert committed_night(_target(night("a")), dt.date(2026, 12, 4)).run_id == racer[0].run_id
    assert isinstance(committed_night(_target(night("a")), dt.date(2026, 12, 5)), NightCommit)
