"""Committing a scoring output: check the committed parts, write _parts and _manifest.json, then _SUCCESS.

Consumers read only outputs with _SUCCESS, so nothing here may run before every part has landed. Both names start
with "_", which Parquet readers (pandas, pyarrow datasets, Spark) skip, so `pd.read_parquet(output)` reads the parts.
The manifest is computed from the stats read back from the parts themselves, and every part must name the same
checkpoint and scoring settings (`scored_with`), so an output mixed by two runs or a changed resume is never
marked complete.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.errors import InputError, RecordError, ScoreError
from bertclf.model.checkpoint import LoadedCheckpoint, long_text_setting, versions
from bertclf.records import CheckpointRef, EmptyTexts, Manifest, PartStats, ReuseSummary, UnitCounts
from bertclf.scoring.dates import fill_date, has_date
from bertclf.scoring.drift import compare
from bertclf.scoring.parts import PARTS

if TYPE_CHECKING:
    from bertclf.scoring.parts import PartsFold
    from bertclf.scoring.plan import ScoringRun

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"  # the name before 2026-12: still read, never written


class ResumeMismatchError(InputError):
    """An output partly scored with another checkpoint or other settings (exit 2): finishing it would mix them."""


class CompleteOutputMismatchError(ResumeMismatchError):
    """A complete output (_SUCCESS) written by another checkpoint or other settings than this run's (exit 2)."""


def scored_with(cfg: ScoreConfig, ckpt: LoadedCheckpoint, passthrough: tuple[str, ...],
                date: dt.date) -> dict[str, Any]:
    """The settings that change a part's numbers or columns, besides the weights (checkpoint_sha256): every part of
    one output must carry the same. JSON-shaped, so what is read back from a footer compares equal. `table_date`:
    the night's date, a column of every part when the night goes to a table (bertclf.scoring.table)."""
    meta = ckpt.meta
    long_text, chunk_stride = long_text_setting(cfg.long_text, meta)
    settings = {"labels": ckpt.space.to_dict(), "max_length": meta.max_length, "long_text": long_text,
                "chunk_stride": chunk_stride, "precision": cfg.precision,
                "text_column": cfg.text_column, "columns": list(passthrough), "empty_text": cfg.empty_text,
                "blend": meta.blend.weight if meta.blend is not None and meta.blend.used else None,
                "files_sha256": ckpt.files_sha256(),
                "table_date": date.isoformat() if cfg.output_table else None}
    return json.loads(json.dumps(settings))


def differences(stats: PartStats, sha256: str, settings: dict[str, Any]) -> list[str]:
    """What in a committed part differs from this run's checkpoint and settings ("key: part's vs this run's")."""
    if not stats.checkpoint_sha256:
        return ["checkpoint: not recorded (the part was written by a bertclf before 2026-12)"]
    diffs = [] if stats.checkpoint_sha256 == sha256 else [
        f"checkpoint: sha256 {stats.checkpoint_sha256[:12]}… vs {sha256[:12]}…"]
    for key in sorted(set(settings) | set(stats.scored_with)):
        theirs, ours = stats.scored_with.get(key), settings.get(key)
        if theirs != ours:
            diffs.append(f"{key}: {json.dumps(theirs)} vs {json.dumps(ours)}")
    return diffs


class ResumeCheck:
    """The parts a resume finds, checked one at a time (`see`, in name order), then `done()`: refuse to finish an
    output whose parts were scored with another checkpoint or other settings, naming the first and counting all."""

    def __init__(self, output: str, sha256: str, settings: dict[str, Any]):
        self.output, self.sha256, self.settings = output, sha256, settings
        self.seen = self.mismatched = 0
        self.first: tuple[str, list[str]] | None = None

    def see(self, name: str, stats: PartStats) -> None:
        self.seen += 1
        if diffs := differences(stats, self.sha256, self.settings):
            self.mismatched += 1
            self.first = self.first or (name, diffs)

    def done(self) -> None:
        if self.first is None:
            return
        name, diffs = self.first
        raise ResumeMismatchError(
            f"{self.output} is partly scored with another checkpoint or other settings: {self.mismatched} of its "
            f"{self.seen} part(s) differ from this run (e.g. {name}: {'; '.join(diffs)}; the part's vs this run's). "
            "Finishing it would mix two models' scores in one output: re-run with the same checkpoint and settings, "
            "or pass --overwrite to delete its parts and score it all again")


def check_complete(output: str, manifest: Manifest, checkpoint_uri: str, sha256: str,
                   settings: dict[str, Any]) -> None:
    """An output that another checkpoint or other settings completed is refused, not reported as done: a user who
    retrained expects the new checkpoint's scores (exit 2, naming both checkpoints and --overwrite)."""
    diffs = [] if manifest.checkpoint.sha256 == sha256 else [
        f"checkpoint: {manifest.checkpoint.uri} (weights sha256 {manifest.checkpoint.sha256[:12]}…) wrote it, this "
        f"run has {checkpoint_uri} (weights sha256 {sha256[:12]}…)"]
    if manifest.scored_with:  # manifests before 2026-12 don't record the settings: the checkpoint is all we can check
        diffs += [f"{key}: {json.dumps(manifest.scored_with.get(key))} vs {json.dumps(settings.get(key))}"
                  for key in sorted(set(settings) | set(manifest.scored_with))
                  if manifest.scored_with.get(key) != settings.get(key)]
    if diffs:
        raise CompleteOutputMismatchError(
            f"{output} is already complete ({SUCCESS}), scored by {manifest.checkpoint.uri} with other weights or "
            f"settings than this run's ({'; '.join(diffs)}; the output's vs this run's). Its scores are left as they "
            f"are: pass --overwrite to replace them with {checkpoint_uri}'s, or choose another --output")


def commit(run: ScoringRun, fold: PartsFold, timings: dict[str, float], reuse: ReuseSummary | None = None,
           guard: Callable[[str], None] | None = None) -> Manifest:
    """Check the folded parts (`fold`: every committed part's footer stats, read back) against the run's units,
    checkpoint and settings and rows in == rows out (+ skipped empties), then write `_parts`, _manifest.json
    and, last, _SUCCESS; `guard(name)` runs before each write (the lease check). `timings`: the driver's phases so
    far in seconds, total_seconds included; the commit adds its own (check_seconds, drift_seconds)."""
    cfg, output = run.cfg, run.output
    t0 = time.perf_counter()
    fold.check(output, run.units, storage.list_names(output))
    expected_out = fold.rows_in - (fold.empty_texts if cfg.empty_text == "skip" else 0)
    planned = sum(u.num_rows for u in run.units)
    if fold.rows_in != planned or fold.rows_out != expected_out:
        raise ScoreError(f"row counts don't add up in {output}: planned {planned}, read {fold.rows_in}, wrote "
                         f"{fold.rows_out} (expected {expected_out}); {SUCCESS} not written")
    counts = dict(sorted(fold.label_counts.items()))
    distribution = {k: v / max(1, fold.rows_out) for k, v in counts.items()}
    histograms = fold.score_histograms
    t_drift = time.perf_counter()
    previous = previous_manifest(cfg, run.date)
    drift = None
    if previous is not None:
        drift = compare(distribution, histograms, previous.predicted_label_distribution, previous.score_histograms,
                        previous.output, cfg.drift_psi_threshold, cfg.drift_share_threshold)
    t_write = time.perf_counter()
    if reuse is not None:  # rows reused and from where, as the committed parts (of any run) say
        reuse = ReuseSummary(mode=reuse.mode, source=reuse.source, note=reuse.note,
                             rows_reused=sum(fold.reused_from.values()), reused_from=dict(fold.reused_from))
    score_seconds = timings.get("scoring_seconds", 0.0)
    # the manifest's own write is the one phase it can't hold; total_seconds: from the run's start to this point
    timings = {**timings, "check_seconds": t_drift - t0, "drift_seconds": t_write - t_drift,
               "total_seconds": timings.get("total_seconds", 0.0) + time.perf_counter() - t0}
    manifest = Manifest(
        output=output, date=run.date.isoformat(), created=dt.datetime.now(dt.timezone.utc).isoformat(),
        inputs=[], parts=[], parts_file=PARTS, input_files=len(run.files),
        rows_in=fold.rows_in, rows_out=fold.rows_out, empty_texts=EmptyTexts(count=fold.empty_texts,
                                                                             policy=cfg.empty_text),
        checkpoint=CheckpointRef(uri=run.checkpoint.uri, sha256=run.sha256, epoch=run.checkpoint.meta.epoch),
        labels=run.checkpoint.space, predicted_label_counts=counts, predicted_label_distribution=distribution,
        distribution_change_vs_previous=_share_change(distribution, previous),
        rows_per_s=fold.scored_rows / score_seconds if score_seconds else None,
        timings=timings,
        units=UnitCounts(total=len(run.units), scored_this_run=fold.scored_units,
                         already_done=len(run.units) - fold.scored_units, rows_per_unit=run.unit_plan.rows_per_unit),
        config=asdict(cfg), versions=versions(), score_histograms=histograms, drift=drift,
        run_id=run.run_id, scored_with=dict(run.settings), part_runs=dict(fold.part_runs),
        precisions_used=dict(fold.precisions), windows_scored=fold.windows, duplicate_rows=fold.duplicate_rows,
        texts_scored=fold.texts_scored, reuse=reuse, reuse_key=dict(run.reuse_key),
    )
    for name, data in ((PARTS, fold.parts_file()), (MANIFEST, (manifest.to_json(indent=2) + "\n").encode()),
                       (SUCCESS, b"")):
        if guard is not None:
            guard(name)
        storage.write_bytes(storage.join(output, name), data)
    return manifest


def manifest_uri(output: str) -> str:
    """Where a scoring output's manifest is: _manifest.json, or manifest.json in outputs written before the rename
    (the new name when neither exists)."""
    uri = storage.join(output, MANIFEST)
    if not storage.exists(uri) and storage.exists(legacy := storage.join(output, LEGACY_MANIFEST)):
        return legacy
    return uri


def read_manifest(output: str) -> Manifest:
    """The manifest of a scoring output (any format this bertclf reads, under either name)."""
    return Manifest.from_json(storage.read_bytes(manifest_uri(output)))


def previous_manifest(cfg: ScoreConfig, date: dt.date) -> Manifest | None:
    """The previous day's manifest when that day was committed: the table's night when the output is a table, else
    the output's {date} partition."""
    from bertclf.scoring.table import NightlyTable, earlier_nights

    if table := NightlyTable.of_config(cfg):
        nights = earlier_nights(table, date, 1)
        previous = nights[0].output if nights else None
    else:
        previous = fill_date(cfg.output, date - dt.timedelta(days=1)) if has_date(cfg.output) else None
    if previous is None:
        return None
    try:
        return read_manifest(previous)
    except (FileNotFoundError, RecordError, storage.StorageError, OSError):
        return None


def _share_change(distribution: dict[str, float], previous: Manifest | None) -> dict[str, float] | None:
    """Share of each predicted label minus the previous day's."""
    if previous is None:
        return None
    before = previous.predicted_label_distribution
    return {k: distribution.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(before) | set(distribution))}


__all__ = ["LEGACY_MANIFEST", "MANIFEST", "SUCCESS", "CompleteOutputMismatchError", "ResumeCheck",
           "ResumeMismatchError", "check_complete", "commit", "differences", "manifest_uri",
           "previous_manifest", "read_manifest", "scored_with"]
