"""A committed night as the date partition of an Apache Iceberg table (`output_table`), in one Iceberg commit.

The directory output stays the exactly-once machinery (lease, parts, `_manifest.json`, `_SUCCESS`); the table
commit is the last step and the point of truth for table readers. It copies the night's parts (bytes, not
rewritten: server-side on S3) to `<table location>/data/date=<date>/<run id>-<part>` and, in one commit, drops the
date's earlier files and adds these: a re-run replaces its night, a failed run leaves the table as it was (copies
that no snapshot lists are invisible to readers). The table is created on first use, partitioned by `date`, with
the parts' columns: one float32 `prob_<label>` column per label, so `WHERE prob_anger > 0.9` works in every engine
without list functions and each column keeps its own min/max statistics for file skipping.

Catalogs: one configured the pyiceberg way (~/.pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__*: REST, Glue, SQL,
...), else an embedded SQL catalog on SQLite (`table_warehouse`), which needs no server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertclf import storage
from bertclf.config import ScoreConfig, TableName
from bertclf.errors import ConfigError, DataError, InputError, StorageError
from bertclf.labels import LabelSpace
from bertclf.records import Manifest
from bertclf.scoring.parts import part_names

DATE_COLUMN = "date"
PROB_PREFIX = "prob_"
SNAPSHOT_KEY = "bertclf."  # the prefix of this module's snapshot-summary properties
# pyiceberg re-applies a failed commit on the new table state by itself; a replace must instead see whether
# another run committed the same night meanwhile, so the table's own retries are off and ours decide
TABLE_PROPERTIES = {"commit.retry.num-retries": "0"}
COMMIT_ATTEMPTS = 4

log = logging.getLogger(__name__)


class TableConflictError(InputError):
    """Another run committed the same night to the table while this one ran (the lease was bypassed): exit 2."""


@dataclass(frozen=True)
class NightCommit:
    """What a table snapshot of bertclf records of the night it committed (its summary's bertclf.* properties)."""

    date: str
    run_id: str
    checkpoint_sha256: str
    rows: int
    output: str
    manifest_sha256: str
    snapshot_id: int = 0

    def properties(self) -> dict[str, str]:
        return {f"{SNAPSHOT_KEY}{key}": str(getattr(self, key)) for key in
                ("date", "run_id", "checkpoint_sha256", "rows", "output", "manifest_sha256")}

    @classmethod
    def from_summary(cls, snapshot_id: int, props: dict[str, str]) -> NightCommit | None:
        if f"{SNAPSHOT_KEY}manifest_sha256" not in props:
            return None
        get = lambda key: props.get(f"{SNAPSHOT_KEY}{key}", "")  # noqa: E731
        return cls(get("date"), get("run_id"), get("checkpoint_sha256"), int(get("rows") or 0), get("output"),
                   get("manifest_sha256"), snapshot_id)


@dataclass(frozen=True)
class NightlyTable:
    """The table a run commits to or reads nights from: its name, and the embedded catalog's warehouse (used when
    the name's catalog is not configured the pyiceberg way)."""

    name: TableName
    warehouse: str

    @classmethod
    def of(cls, table: str, warehouse: str) -> NightlyTable:
        return cls(TableName.parse(table), warehouse)

    @classmethod
    def of_config(cls, cfg: ScoreConfig) -> NightlyTable | None:
        return cls.of(cfg.output_table, cfg.table_warehouse) if cfg.output_table else None


def open_catalog(target: NightlyTable):
    """The target's catalog: configured the pyiceberg way, else the embedded SQL catalog. A catalog that can't be
    reached is a StorageError (exit 1, naming it); a missing pyiceberg a ConfigError (exit 2)."""
    name = target.name
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.utils.config import Config
    except ImportError:
        raise ConfigError(f"output_table {name} needs pyiceberg: pip install 'bertclf[iceberg]'") from None
    configured = Config().get_catalog_config(name.catalog)  # read now: the environment of this call
    props = {**_s3_properties(), **configured} if configured else _embedded_properties(name.catalog,
                                                                                        target.warehouse)
    try:
        catalog = load_catalog(name.catalog, **props)
        catalog.list_namespaces()  # a REST or Glue catalog answers only when asked
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise StorageError(f"Iceberg catalog {name.catalog!r} can't be reached: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pyiceberg wraps transport errors in many types; name the catalog
        if _is_network_failure(exc):
            raise StorageError(f"Iceberg catalog {name.catalog!r} can't be reached: {exc}") from None
        raise ConfigError(f"Iceberg catalog {name.catalog!r} can't be used: {type(exc).__name__}: {exc}") from None
    return catalog


def check_table(target: NightlyTable, space: LabelSpace) -> None:
    """Before any scoring: the catalog answers and an existing table holds this checkpoint's labels (exit 2 if not:
    a label space that changed is refused, not evolved silently)."""
    table = _load(open_catalog(target), target.name)
    if table is not None:
        _check_labels(table, space, str(target.name))


def committed_night(target: NightlyTable, date: dt.date) -> NightCommit | None:
    """The table's latest commit of this night (None: never committed, or no table)."""
    nights = _nights(target)
    return nights.get(date.isoformat())


def earlier_nights(target: NightlyTable, date: dt.date, days: int) -> list[NightCommit]:
    """The table's nights in the `days` before `date`, nearest first (what reuse and drift read as the previous
    nights when the output is a table)."""
    first = (date - dt.timedelta(days=days)).isoformat()
    nights = _nights(target)
    return [nights[d] for d in sorted(nights, reverse=True) if first <= d < date.isoformat()]


def scores_of(spec: str, warehouse: str) -> str:
    """A scoring output to read: `CATALOG.NAMESPACE.TABLE@YYYY-MM-DD` (a table's night: the output its latest
    commit copied) or a directory URI as it is."""
    if "@" not in spec or "/" in spec.split("@", 1)[0]:
        return storage.absolute(spec)
    table, day = spec.split("@", 1)
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        raise ConfigError(f"scores {spec!r}: {day!r} is not a date (TABLE@YYYY-MM-DD)") from None
    night = committed_night(NightlyTable.of(table, warehouse), date)
    if night is None:
        raise DataError(f"table {table} has no committed {day} partition")
    return night.output


def commit_night(target: NightlyTable, manifest: Manifest) -> NightCommit:
    """Replace the night's partition with the committed output's parts, in one Iceberg commit (module docstring).
    Nothing happens when the table already holds exactly this output (a re-run after the commit landed)."""
    name = target.name
    output = manifest.output
    night = NightCommit(date=manifest.date, run_id=manifest.run_id or "", checkpoint_sha256=manifest.checkpoint.sha256,
                        rows=manifest.rows_out, output=output, manifest_sha256=_manifest_sha256(output))
    catalog = open_catalog(target)
    parts = part_names(output, manifest)
    table = _load(catalog, name) or _create(catalog, name, storage.join(output, parts[0]) if parts else None,
                                             manifest.labels)
    _check_labels(table, manifest.labels, str(name))
    before = _latest_night(table, night.date)
    if before is not None and before.manifest_sha256 == night.manifest_sha256:
        log.info("table %s already holds %s as its %s partition (snapshot %d)", name, output, night.date,
                 before.snapshot_id)
        return before
    files = list(_copy_parts(output, parts, table.location(), night))
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            snapshot_id = _replace_partition(table, night, files)
            break
        except Exception as exc:  # noqa: BLE001 - CommitFailedException, imported lazily with pyiceberg
            if type(exc).__name__ != "CommitFailedException" or attempt == COMMIT_ATTEMPTS:
                error = _as_bertclf_error(exc, name)
                if error is exc:
                    raise
                raise error from exc
            table.refresh()
            now = _latest_night(table, night.date)
            if now != before:  # the same night, committed by another run since this one looked: refuse
                raise TableConflictError(
                    f"table {name}: run {now.run_id if now else '?'} committed the {night.date} partition while run "
                    f"{night.run_id} was committing it (two runs of one night; the lease was bypassed?). This run's "
                    f"scores stay in {output}; the table keeps the other run's") from None
            log.warning("table %s: another night was committed meanwhile; committing again (%d/%d)", name, attempt,
                        COMMIT_ATTEMPTS)
    log.info("table %s: %s partition replaced by %d part(s), %d row(s) of run %s (snapshot %d)", name, night.date,
             len(files), night.rows, night.run_id, snapshot_id)
    return NightCommit(**{**night.__dict__, "snapshot_id": snapshot_id})


def _replace_partition(table, night: NightCommit, files: list[str]) -> int:
    from pyiceberg.expressions import EqualTo

    props = night.properties()
    with table.transaction() as tx:
        if _has_rows(table, night.date):
            tx.delete(EqualTo(DATE_COLUMN, night.date), snapshot_properties=props)
        tx.add_files(files, snapshot_properties=props)
    table.refresh()
    return table.current_snapshot().snapshot_id


def _has_rows(table, date: str) -> bool:
    from pyiceberg.expressions import EqualTo

    return any(True for _ in table.scan(row_filter=EqualTo(DATE_COLUMN, date)).plan_files())


def _latest_night(table, date: str) -> NightCommit | None:
    return _nights_of(table).get(date)


def _nights(target: NightlyTable) -> dict[str, NightCommit]:
    table = _load(open_catalog(target), target.name)
    return {} if table is None else _nights_of(table)


def _nights_of(table) -> dict[str, NightCommit]:
    """{date: its latest bertclf commit}, from the current snapshot's ancestry (the nights readers see)."""
    nights: dict[str, NightCommit] = {}
    snapshot = table.current_snapshot()
    while snapshot is not None:
        night = NightCommit.from_summary(snapshot.snapshot_id, dict(snapshot.summary.additional_properties)
                                         if snapshot.summary else {})
        if night is not None:
            nights.setdefault(night.date, night)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return nights


def _copy_parts(output: str, parts: list[str], location: str, night: NightCommit) -> Iterator[str]:
    """Each part copied, bytes as they are, under the table's data directory with this run's id in its name."""
    root = storage.join(_storage_uri(location), "data", f"{DATE_COLUMN}={night.date}")
    for name in parts:
        target = storage.join(root, f"{night.run_id}-{name}")
        storage.copy_file(storage.join(output, name), target)
        yield target


def _create(catalog, name: TableName, first_part: str | None, space: LabelSpace):
    """A new table with the parts' columns, partitioned by date (its creation is a commit of its own)."""
    import pyarrow.parquet as pq
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError

    if first_part is None:
        raise DataError(f"table {name} doesn't exist yet and this night has no part to take its columns from")
    fs, path = storage.resolve(first_part)
    with fs.open_input_file(path) as f:
        schema = pq.ParquetFile(f).schema_arrow
    schema = schema.remove_metadata()
    try:
        catalog.create_namespace(name.namespace)
    except NamespaceAlreadyExistsError:
        pass
    try:
        tx = catalog.create_table_transaction(f"{name.namespace}.{name.table}", schema=schema,
                                              properties=TABLE_PROPERTIES)
        with tx.update_spec() as spec:
            spec.add_identity(DATE_COLUMN)
        tx.commit_transaction()
        log.info("table %s created (%d columns, %d labels, partitioned by %s)", name, len(schema), len(space.names),
                 DATE_COLUMN)
    except TableAlreadyExistsError:  # created by another run meanwhile
        pass
    return catalog.load_table(f"{name.namespace}.{name.table}")


def _load(catalog, name: TableName):
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        table = catalog.load_table(f"{name.namespace}.{name.table}")
    except (NoSuchTableError, NoSuchNamespaceError):
        return None
    if table.properties.get("commit.retry.num-retries") != TABLE_PROPERTIES["commit.retry.num-retries"]:
        with table.transaction() as tx:  # a table made elsewhere: our replace decides its own retries
            tx.set_properties(TABLE_PROPERTIES)
    return table


def _check_labels(table, space: LabelSpace, name: str) -> None:
    theirs = [c[len(PROB_PREFIX):] for c in table.schema().column_names if c.startswith(PROB_PREFIX)]
    if theirs != list(space.names):
        raise DataError(f"table {name} holds the labels {theirs}, this checkpoint scores {list(space.names)}: a "
                        "changed label space is not evolved into a nightly table. Write to another table (or "
                        "migrate this one yourself)")


def _manifest_sha256(output: str) -> str:
    from bertclf.scoring.manifest import manifest_uri

    return hashlib.sha256(storage.read_bytes(manifest_uri(output))).hexdigest()


def _storage_uri(location: str) -> str:
    """A table location (file:///..., s3://..., s3a://...) as a bertclf storage URI."""
    if location.startswith("file://"):
        return location[len("file://"):]
    if location.startswith(("s3a://", "s3n://")):
        return "s3://" + location.split("://", 1)[1]
    return location


def _embedded_properties(catalog: str, warehouse: str) -> dict[str, Any]:
    """pyiceberg's SQL catalog on SQLite: the database beside a local warehouse, else on this host, one per
    warehouse (SQLite can't live on S3: a multi-node cluster configures a shared catalog instead)."""
    if storage.is_s3(warehouse):
        root = Path(os.environ.get("BERTCLF_ICEBERG_DB_DIR", Path.home() / ".cache" / "bertclf" / "iceberg"))
        db = root / hashlib.sha256(warehouse.rstrip("/").encode()).hexdigest()[:16]
        location = warehouse
    else:
        db = Path(storage.absolute(warehouse))
        location = db.as_uri()
    db.mkdir(parents=True, exist_ok=True)
    return {"type": "sql", "uri": f"sqlite:///{db / f'{catalog}.db'}", "warehouse": location, **_s3_properties()}


def _s3_properties() -> dict[str, Any]:
    """The S3 endpoint and region of this process for pyiceberg's FileIO (credentials stay with the AWS chain)."""
    props = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        props["s3.endpoint"] = endpoint
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        props["s3.region"] = region
    return props


def _is_network_failure(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "OperationalError"})


def _as_bertclf_error(exc: Exception, name: TableName) -> Exception:
    """A failed commit as bertclf's failure kinds: storage or network (exit 1), parts the table can't take (exit 2),
    else the exception itself."""
    if _is_network_failure(exc) or isinstance(exc, OSError):
        return StorageError(f"committing to table {name}: {exc}")
    if isinstance(exc, ValueError) and not isinstance(exc, InputError):  # pyiceberg's schema checks of the files
        return DataError(f"table {name} can't take this night's parts: {exc}")
    return exc


__all__ = ["DATE_COLUMN", "NightCommit", "NightlyTable", "TableConflictError", "check_table", "commit_night",
           "committed_night", "earlier_nights", "open_catalog", "scores_of"]
