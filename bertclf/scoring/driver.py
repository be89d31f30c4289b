"""Bulk scoring with Ray Data: plan units from the input footers, score the missing ones, commit last.

`run(ScoreConfig)` (bertclf.scoring.run) is what `bertclf score` and `jobs/score.py` call. The output holds
one Parquet part per unit (deterministic names), then `_manifest.json`, then `_SUCCESS`. A re-run scores only
the units whose part is missing, so a crash anywhere costs at most the units in flight. One run writes an output
at a time (its lease, bertclf.scoring.lease), and a re-run finishes an output only with the checkpoint and settings
its parts were scored with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bertclf import logs, storage
from bertclf.config import ScoreConfig
from bertclf.errors import DataError, RecordError, ScoreError, StorageError
from bertclf.model import checkpoint
from bertclf.model.checkpoint import LoadedCheckpoint
from bertclf.progress import Progress
from bertclf.records import DriftReport, Manifest, ReuseSource, ReuseSummary, UnitError, UnitResult
from bertclf.resources import ScorePlan, connect
from bertclf.scoring import shards
from bertclf.scoring.actor import ScoringSettings, UnitScorer
from bertclf.scoring.checks import check_before_ray
from bertclf.scoring.dates import fill_date, resolve_date
from bertclf.scoring.lease import LEASE, LeaseKeeper, OutputLeasedError, new_run_id
from bertclf.scoring.manifest import (
    LEGACY_MANIFEST,
    MANIFEST,
    SUCCESS,
    CompleteOutputMismatchError,
    ResumeCheck,
    ResumeMismatchError,
    check_complete,
    commit,
    read_manifest,
    scored_with,
)
from bertclf.scoring.parts import PartsFold, fold_existing, fold_scored
from bertclf.scoring.plan import ScoringRun, actor_plan, fit_to_units, unit_plan
from bertclf.scoring.reuse import INDEX_DIR, candidates, find_previous, reuse_key
from bertclf.scoring.shards import ShardedIndex
from bertclf.scoring.table import DATE_COLUMN, NightlyTable, check_table, commit_night, earlier_nights
from bertclf.scoring.tokens import UnitTokenizer
from bertclf.units import cut_units, read_footers


class EmptyInputError(DataError):
    """A scoring input with 0 rows (exit 2) where allow_empty is off."""


log = logging.getLogger(__name__)

__all__ = ["EmptyInputError", "OutputLeasedError", "ResumeMismatchError", "ScoreError", "ScoreSummary", "run"]


@dataclass
class ScoreSummary:
    output: str
    rows_in: int = 0
    rows_out: int = 0
    rows_per_s: float = 0.0
    seconds: float = 0.0
    units_scored: int = 0
    units_skipped: int = 0
    actors_used: int = 0
    already_complete: bool = False
    label_distribution: dict[str, float] = field(default_factory=dict)
    distribution_change: dict[str, float] | None = None
    drift: DriftReport | None = None
    scored: list[UnitResult] = field(default_factory=list)  # this run's units: which processes did what, timings
    run_id: str = ""  # the run that held the output's lease and committed its parts (bertclf.scoring.lease)
    duplicate_rows: int = 0  # rows repeating a text of their unit: scored once, copied
    rows_reused: int = 0  # rows whose probabilities were copied from a previous output
    reused_from: str | None = None
    table_snapshot: int | None = None  # the output_table snapshot holding this night

    def one_line(self) -> str:
        """The run's result in one line (`bertclf score` logs it last, then the drift report's line if any)."""
        if self.already_complete:
            return f"{self.output} is already complete (_SUCCESS present; --overwrite to redo): nothing to do"
        top = sorted(self.label_distribution.items(), key=lambda kv: -kv[1])[:5]
        dist = ", ".join(f"{k} {v:.1%}" for k, v in top)
        change = ""
        if self.distribution_change:
            moved = sorted(self.distribution_change.items(), key=lambda kv: -abs(kv[1]))[:3]
            change = "; vs previous partition: " + ", ".join(f"{k} {v * 100:+.1f}pp" for k, v in moved)
        reuse = f", {self.rows_reused} reused from {self.reused_from}" if self.rows_reused else ""
        table = f" and table snapshot {self.table_snapshot}" if self.table_snapshot else ""
        return (f"scored {self.rows_out}/{self.rows_in} rows into {self.output}{table} in {self.seconds:.1f}s "
                f"({self.rows_per_s:.1f} rows/s; {self.units_scored} unit(s) scored, "
                f"{self.units_skipped} already done; {self.duplicate_rows} duplicate row(s){reuse}); "
                f"labels: {dist}{change}")


def run(cfg: ScoreConfig) -> ScoreSummary:
    """Validate inputs and checkpoint, score what is missing, then write _manifest.json and _SUCCESS."""
    t_start = time.perf_counter()
    cfg.validate()
    date = resolve_date(cfg.date)
    inputs = [fill_date(u, date) for u in ([cfg.input] if isinstance(cfg.input, str) else cfg.input)]
    output = storage.absolute(fill_date(cfg.output, date))
    _check_output_outside_inputs(output, inputs)

    if storage.exists(storage.join(output, SUCCESS)) and not cfg.overwrite:
        manifest = _check_complete_output(cfg, output, date)  # by another checkpoint or other settings: exit 2
        log.info("%s already has %s, scored with this checkpoint and settings: nothing to score", output, SUCCESS)
        table = NightlyTable.of_config(cfg)
        night = commit_night(table, manifest) if table else None  # its table commit may not have landed
        return ScoreSummary(output=output, already_complete=True, table_snapshot=night.snapshot_id if night else None)

    files = storage.list_parquet_files(inputs)
    ckpt = checkpoint.load(storage.absolute(cfg.checkpoint))
    footers, unreadable = read_footers(files)
    timings = {"list_seconds": time.perf_counter() - t_start}
    passthrough = _check_columns(cfg, {uri: meta.schema.to_arrow_schema() for uri, meta in footers.items()})
    _check_not_empty(cfg, footers, unreadable)
    check_before_ray(cfg, ckpt, footers, unreadable)  # text types, a UTF-8 sample, weights' sha256: exit 2 before Ray
    if table := NightlyTable.of_config(cfg):
        check_table(table, ckpt.space)  # the catalog answers (else exit 1) and the table holds these labels (else 2)
    storage.check_writable(output)
    timings["check_inputs_seconds"] = time.perf_counter() - t_start - timings["list_seconds"]

    with LeaseKeeper(output, new_run_id()) as lease:  # refused (exit 2) while another run holds the output
        run, fold = _plan_run(cfg, ckpt, output, date, files, footers, passthrough, lease)
        return _score_and_commit(run, fold, dict(unreadable), lease, timings, t_start)


def _check_complete_output(cfg: ScoreConfig, output: str, date: dt.date) -> Manifest:
    """A complete output is left alone only when this run's checkpoint and settings wrote it (its manifest says,
    and is returned)."""
    ckpt = checkpoint.load(storage.absolute(cfg.checkpoint))
    try:
        manifest = read_manifest(output)
    except (FileNotFoundError, RecordError) as exc:
        raise CompleteOutputMismatchError(
            f"{output} is complete ({SUCCESS}) but its manifest can't be read ({exc}), so which checkpoint wrote it "
            f"is unknown: pass --overwrite to score it again with {cfg.checkpoint}, or choose another --output"
        ) from None
    passthrough = _passthrough(cfg)
    check_complete(output, manifest, cfg.checkpoint, ckpt.fingerprint(), scored_with(cfg, ckpt, passthrough, date))
    return manifest


def _reuse_source(run: ScoringRun) -> tuple[ReuseSource | None, ReuseSummary]:
    """The earlier committed output this run may copy probabilities from (manifests only: no text on the driver)."""
    cfg = run.cfg
    if cfg.reuse == "none":
        return None, ReuseSummary(mode="none", note="reuse: none")
    table = NightlyTable.of_config(cfg)
    if table and not cfg.reuse_from:  # the table says which outputs are its nights
        found = [n.output for n in earlier_nights(table, run.date, cfg.reuse_lookback_days)]
    else:
        found = candidates(cfg.output, run.date, cfg.reuse_from, cfg.reuse_lookback_days)
    if not found:
        note = (f"table {table.name} has no night in the {cfg.reuse_lookback_days} days before" if table else
                "the output has no {date} partition and no reuse_from was given")
        return None, ReuseSummary(mode=cfg.reuse, note=note)
    labels = len(run.checkpoint.space.names)
    source, note = find_previous(run.output, found, dict(run.reuse_key),
                                 lambda rows: shards.fits_cluster(rows, labels, run.cluster.get("memory", 0.0),
                                                                  cfg.reuse_index_max_mb),
                                 read_manifest)
    if source is not None:
        log.info("reuse: texts already scored in %s (%d rows, %d indexed part(s)) are copied, not scored again",
                 source.output, source.rows, len(source.parts))
    else:
        log.info("reuse: nothing to reuse (%s): every text is scored", note)
    return source, ReuseSummary(mode=cfg.reuse, source=source.output if source else None, note=note)


def _plan_run(cfg: ScoreConfig, ckpt: LoadedCheckpoint, output: str, date: dt.date, files: list[str],
              footers: dict, passthrough: tuple[str, ...], lease: LeaseKeeper) -> tuple[ScoringRun, PartsFold]:
    """Under the output's lease: start clean or check that a resume matches, then fix the units and everything the
    parts will record, once. Returns the run and the parts it found, folded for the commit (each footer read once)."""
    sha256 = ckpt.fingerprint()
    settings = scored_with(cfg, ckpt, passthrough, date)
    if cfg.overwrite:
        _start_clean(output, lease)
    done = storage.list_names(output)
    cluster: dict[str, float] = {}

    @functools.cache
    def actors() -> ScorePlan:  # Ray is joined once, and only when there is something to score or a new output
        cluster.update(connect(cfg.ray_address))
        return actor_plan(cfg, cluster)

    plan = unit_plan(cfg, output, done, footers, lambda: actors().num_actors, lease.check)
    units = cut_units(files, footers, plan.rows_per_unit, cfg.text_column, plan.text_bytes_per_unit)
    fold = PartsFold(list(ckpt.space.names), sha256, settings)
    resume = ResumeCheck(output, sha256, settings)
    fold_existing(units, output, sorted(n for n in done if storage.is_data_file(n)), fold, resume.see)
    resume.done()
    todo = tuple(u for u in units if u.name not in done)
    run = ScoringRun(cfg=cfg, checkpoint=ckpt, output=output, date=date, run_id=lease.run_id, files=tuple(files),
                     passthrough=passthrough, sha256=sha256, settings=settings, reuse_key=reuse_key(sha256, settings),
                     unit_plan=plan, units=tuple(units), todo=todo,
                     actors=fit_to_units(actors(), cfg, cluster, len(todo)) if todo else None, cluster=cluster)
    return run, fold


def _score_and_commit(run: ScoringRun, fold: PartsFold, failures: dict[str, UnitError], lease: LeaseKeeper,
                      timings: dict[str, float], t_start: float) -> ScoreSummary:
    """Score the run's missing units, then commit: every part read back and checked, the manifest, _SUCCESS."""
    cfg, output = run.cfg, run.output
    todo = run.todo
    rows_total = sum(u.num_rows for u in run.units)
    log.info("scoring %s (run %s): %d file(s), %d row(s) in %d unit(s) of at most %d rows; %d unit(s) already done; "
             "checkpoint %s (weights sha256 %s…)", output, run.run_id, len(run.files), rows_total, len(run.units),
             run.unit_plan.rows_per_unit, len(run.units) - len(todo), cfg.checkpoint, run.sha256[:12])
    source, reuse = _reuse_source(run) if todo else (
        None, ReuseSummary(mode=cfg.reuse, note="every unit was already scored"))
    timings["plan_seconds"] = time.perf_counter() - t_start - sum(timings.values())

    t_score = time.perf_counter()
    scored: dict[str, UnitResult] = {}
    index = None
    if source is not None:  # the previous index, spread over shard actors by hash range
        labels = len(run.checkpoint.space.names)
        index = shards.start(source, dict(run.reuse_key), labels,
                             shards.shard_count(source.rows, labels, cfg.reuse_index_max_mb))
        if index is None:
            reuse = ReuseSummary(mode=cfg.reuse, note=f"the index of {source.output} could not be loaded (logged)")
            source = None
    if todo:
        try:
            scored, unit_failures = _score_units(run, lease, source, index)
        finally:
            shards.stop(index)
        failures.update(unit_failures)
    timings["scoring_seconds"] = time.perf_counter() - t_score
    if failures:
        lease.check(f"{len(failures)} failed file(s) reported")  # a lost lease is why units failed: say so
        listing = "\n".join(f"  {uri}: {err}" for uri, err in sorted(failures.items()))
        raise ScoreError(f"{len(failures)} input file(s) failed; other outputs are kept and {SUCCESS} is not "
                         f"written. Fix or remove these and re-run to finish:\n{listing}",
                         kinds=tuple(err.kind for err in failures.values()))

    # the manifest counts what the committed parts hold: this run's parts read back from their footers (the parts
    # a resume found were read, checked and folded when it started)
    t_read = time.perf_counter()
    fold_scored(run, fold, {n: r.seconds for n, r in scored.items()})
    timings["read_parts_seconds"] = time.perf_counter() - t_read
    timings["total_seconds"] = time.perf_counter() - t_start
    manifest = commit(run, fold, timings, reuse=reuse, guard=lease.check)
    night = None
    if table := NightlyTable.of_config(cfg):
        lease.check(f"the commit to table {table.name}")
        night = commit_night(table, manifest)
    return ScoreSummary(output=output, rows_in=manifest.rows_in, rows_out=manifest.rows_out,
                        rows_per_s=manifest.rows_per_s or 0.0, seconds=manifest.timings["total_seconds"],
                        units_scored=len(scored), units_skipped=len(run.units) - len(scored),
                        actors_used=len({r.actor_pid for r in scored.values()}),
                        label_distribution=manifest.predicted_label_distribution,
                        distribution_change=manifest.distribution_change_vs_previous, drift=manifest.drift,
                        scored=list(scored.values()), run_id=run.run_id, duplicate_rows=manifest.duplicate_rows,
                        rows_reused=manifest.reuse.rows_reused if manifest.reuse else 0,
                        reused_from=manifest.reuse.source if manifest.reuse else None,
                        table_snapshot=night.snapshot_id if night else None)


def _start_clean(output: str, lease: LeaseKeeper) -> None:
    """--overwrite: delete everything the output holds but our lease, _SUCCESS and the manifest first."""
    names = storage.list_names(output) - {LEASE}
    index = storage.join(output, INDEX_DIR)
    if not names and not storage.exists(index):
        return
    lease.check("deleting the old output")
    log.info("--overwrite: deleting the %d file(s) of the old output %s", len(names), output)
    first = [n for n in (SUCCESS, MANIFEST, LEGACY_MANIFEST) if n in names]
    for name in first + sorted(names - set(first)):
        storage.delete(storage.join(output, name))
    storage.delete(index)  # the parts' reuse indexes (bertclf.scoring.reuse)


def _check_output_outside_inputs(output: str, inputs: list[str]) -> None:
    def norm(uri: str) -> str:
        return (uri if storage.is_s3(uri) else storage.resolve(uri)[1]).rstrip("/") + "/"

    out = norm(output)
    for src in inputs:
        base = norm(src.split("*", 1)[0])
        if out.startswith(base) or base.startswith(out):
            raise DataError(f"output {output} is inside the input {src} (or contains it): a re-run would read "
                             "its own scores; choose an output outside the input prefix")


def _check_columns(cfg: ScoreConfig, schemas: dict) -> tuple[str, ...]:
    """The text, id and pass-through columns must be in every input file, the id and pass-through columns of one
    type in all of them (parts of mixed types make one output no reader can load whole); errors name the files."""
    wanted = _passthrough(cfg)
    if cfg.output_table and DATE_COLUMN in wanted:
        raise DataError(f"column {DATE_COLUMN!r} is copied to the output, but with output_table the output's "
                        f"{DATE_COLUMN!r} column is the night's partition: rename it upstream or leave it out")
    first: dict[str, tuple[str, object]] = {}  # column -> (the first file, its type there)
    for uri, schema in schemas.items():
        for col in [cfg.text_column, *wanted]:
            role = "text" if col == cfg.text_column else "id" if col == cfg.id_column else "pass-through"
            if col not in schema.names:
                raise DataError(f"{uri}: {role} column {col!r} not found; columns are {schema.names}")
            if col == cfg.text_column:
                continue
            kind = _comparable_type(schema.field(col).type)
            seen_uri, seen = first.setdefault(col, (uri, kind))
            if kind != seen:
                raise DataError(f"{role} column {col!r} is {seen} in {seen_uri} but {kind} in {uri}: the output would "
                                "hold parts of both types; cast the column to one type in every input file")
    return wanted


def _passthrough(cfg: ScoreConfig) -> tuple[str, ...]:
    """The columns copied to the output: the id column, then the pass-through columns, each once."""
    return tuple(dict.fromkeys(c for c in [cfg.id_column, *cfg.passthrough_columns] if c))


def _comparable_type(arrow_type):
    """A column's type with the Arrow encodings that read back alike (large_string/string, dictionary) made equal."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}.get(arrow_type, arrow_type)


def _check_not_empty(cfg: ScoreConfig, footers: dict, unreadable: dict[str, UnitError]) -> None:
    """An input of 0 rows is refused unless allowed: for a nightly partition it is usually an upstream failure."""
    if unreadable or cfg.allow_empty or any(meta.num_rows for meta in footers.values()):
        return
    names = ", ".join(sorted(footers)[:5]) + (f" and {len(footers) - 5} more" if len(footers) > 5 else "")
    raise EmptyInputError(f"the input has 0 rows ({len(footers)} file(s): {names}); an empty partition is usually an "
                          "upstream failure. Nothing was scored; pass --allow-empty to commit an empty output")


def _score_units(run: ScoringRun, lease: LeaseKeeper, source: ReuseSource | None,
                 index: ShardedIndex | None) -> tuple[dict[str, UnitResult], dict[str, UnitError]]:
    """Run the run's missing units through a Ray Data actor pool; print progress as units land; stop if the lease
    is lost.

    Returns ({part name: its result}, {input URI: why its unit failed}).
    """
    import ray.data

    output, plan, cluster, todo = run.output, run.actors, run.cluster, run.todo
    assert plan is not None, "a run with units to score has its actors planned"
    size = min(plan.num_actors, len(todo))
    log.info("resources: cluster has CPU=%s GPU=%s; plan: %s (using %d for %d unit(s))",
             cluster.get("CPU", 0), cluster.get("GPU", 0), plan.describe(), size, len(todo))
    settings = ScoringSettings.for_run(run, plan, source, index)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = logs.ray_data_progress()  # off but at DEBUG: our progress lines say rows, rate, ETA
    ds = ray.data.from_items([{"unit": u.to_json()} for u in todo], override_num_blocks=len(todo))
    if plan.tokenizers:  # GPU-shaped: CPU actors read and tokenize whole units, the GPU actors get token ids
        ds = ds.map_batches(UnitTokenizer, fn_constructor_args=(run.checkpoint.uri, run.read, run.long_text),
                            batch_size=1, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=min(plan.tokenizers, len(todo))))
    ds = ds.map_batches(
        UnitScorer, fn_constructor_args=(settings,), batch_size=1,
        # one unit at a time per actor: a unit is seconds of work, and units queued on the first actor to
        # start can leave the others idle at the end of the run
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
        num_cpus=plan.cpus_per_actor, num_gpus=1 if plan.use_gpu else 0,
    )
    failures: dict[str, UnitError] = {}
    scored: dict[str, UnitResult] = {}
    rows_done = 0
    rows_todo = sum(u.num_rows for u in todo)
    rows = Progress("scored", rows_todo, "rows", log=log)
    for result in _results_as_they_land(ds):
        if lease.lost:  # another run took the output, or it expired while storage was down: stop
            lease.check("the remaining units")
        if result.error is not None:
            failures[result.input] = result.error
            log.error("unit %s failed: %s", result.unit, result.error)
            if result.error.kind == "storage":
                # storage gave out after every retry: each remaining unit would wait the same retries and fail
                # alike, so the run ends now (its time must not grow with the number of units); parts stay
                raise StorageError(
                    f"storage failed while scoring {output}: unit {result.unit} of {result.input}: {result.error}. "
                    f"Stopped after {len(scored)} of {len(todo)} unit(s) (committed parts are kept, {SUCCESS} is "
                    "not written); re-run to finish the rest")
            continue
        rows_done += result.stats.rows_in
        # kept for the summary without its stats (label counts, histograms): the commit reads every part's stats
        # back from the part itself, so the driver's memory doesn't grow with them
        scored[result.unit] = dataclasses.replace(result, stats=None)
        log.debug("unit %s: %d rows in %.1fs (actor %d ready after %.1fs)", result.unit, result.stats.rows_in,
                  result.seconds, result.actor_pid, result.actor_ready_seconds)
        rows.update(rows_done, f"{len(scored)}/{len(todo)} unit(s)")
    rows.finish(f"{len(scored)}/{len(todo)} unit(s)")
    return scored, failures


def _results_as_they_land(ds) -> Iterator[UnitResult]:
    """Each unit's result as soon as its actor returns it.

    `iter_rows()` prefetches one block, so it would hand a result over only once the next one exists:
    progress lines and failures would show up one unit late.
    """
    for batch in ds.iter_batches(batch_size=None, prefetch_batches=0):
        for result in batch["result"]:
            yield UnitResult.from_json(result)
