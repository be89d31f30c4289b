"""Committing a scoring output: check the row counts, write _manifest.json, then _SUCCESS, last.

Consumers read only outputs with _SUCCESS, so nothing here may run before every part has landed. Both names start
with "_", which Parquet readers (pandas, pyarrow datasets, Spark) skip, so `pd.read_parquet(output)` reads the parts.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict

from bertclf import storage
from bertclf.checkpoint import LoadedCheckpoint, versions
from bertclf.config import ScoreConfig
from bertclf.dates import fill_date, has_date
from bertclf.errors import RecordError
from bertclf.records import (
    CheckpointRef,
    EmptyTexts,
    InputRows,
    Manifest,
    PartEntry,
    PartStats,
    UnitCounts,
    WorkUnit,
)
from bertclf.scoring.drift import add_histograms, compare

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"  # the name before 2026-12: still read, never written


class ScoreError(RuntimeError):
    """Scoring that could not finish; the message names the files that failed. No _SUCCESS is written."""


def commit(cfg: ScoreConfig, ckpt: LoadedCheckpoint, output: str, date: dt.date, files: list[str],
           units: list[WorkUnit], stats: list[PartStats], seconds: dict[str, float], scored_names: set[str],
           score_seconds: float, total_seconds: float, rows_per_unit: int | None = None) -> Manifest:
    """Check rows in == rows out (+ skipped empties), then write _manifest.json and, last, _SUCCESS."""
    rows_in = sum(s.rows_in for s in stats)
    rows_out = sum(s.rows_out for s in stats)
    empties = sum(s.empty_texts for s in stats)
    expected_out = rows_in - (empties if cfg.empty_text == "skip" else 0)
    planned = sum(u.num_rows for u in units)
    if rows_in != planned or rows_out != expected_out:
        raise ScoreError(f"row counts don't add up in {output}: planned {planned}, read {rows_in}, wrote {rows_out} "
                         f"(expected {expected_out}); {SUCCESS} not written")
    counts: Counter[str] = Counter()
    for s in stats:
        counts.update(s.label_counts)
    distribution = {k: v / max(1, rows_out) for k, v in sorted(counts.items())}
    histograms: dict[str, list[int]] = {}
    for s in stats:
        histograms = add_histograms(histograms, s.prob_histograms)
    previous = previous_manifest(cfg, date)
    drift = None
    if previous is not None:
        drift = compare(distribution, histograms, previous.predicted_label_distribution, previous.score_histograms,
                        previous.output, cfg.drift_psi_threshold, cfg.drift_share_threshold)
    scored_rows = sum(u.num_rows for u in units if u.name in scored_names)
    per_file: Counter[str] = Counter()
    for s in stats:
        per_file[s.input] += s.rows_in
    manifest = Manifest(
        output=output, date=date.isoformat(), created=dt.datetime.now(dt.timezone.utc).isoformat(),
        inputs=[InputRows(uri=f, rows=per_file.get(f, 0)) for f in files],
        parts=[PartEntry(name=s.unit, input=s.input, row_groups=s.row_groups, rows=s.rows_out,
                         seconds=seconds.get(s.unit)) for s in stats],
        rows_in=rows_in, rows_out=rows_out, empty_texts=EmptyTexts(count=empties, policy=cfg.empty_text),
        checkpoint=CheckpointRef(uri=ckpt.uri, sha256=ckpt.fingerprint(), epoch=ckpt.meta.epoch),
        labels=ckpt.space, predicted_label_counts=dict(sorted(counts.items())),
        predicted_label_distribution=distribution,
        distribution_change_vs_previous=_share_change(distribution, previous),
        rows_per_s=scored_rows / score_seconds if score_seconds else None,
        timings={"scoring_seconds": score_seconds, "total_seconds": total_seconds},
        units=UnitCounts(total=len(units), scored_this_run=len(scored_names),
                         already_done=len(units) - len(scored_names), rows_per_unit=rows_per_unit),
        config=asdict(cfg), versions=versions(), score_histograms=histograms, drift=drift,
    )
    storage.write_bytes(storage.join(output, MANIFEST), (manifest.to_json(indent=2) + "\n").encode())
    storage.write_bytes(storage.join(output, SUCCESS), b"")
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
    """The previous day's manifest when the output is a dated partition and that day was committed."""
    if not has_date(cfg.output):
        return None
    try:
        return read_manifest(fill_date(cfg.output, date - dt.timedelta(days=1)))
    except (FileNotFoundError, RecordError, storage.StorageError, OSError):
        return None


def _share_change(distribution: dict[str, float], previous: Manifest | None) -> dict[str, float] | None:
    """Share of each predicted label minus the previous day's."""
    if previous is None:
        return None
    before = previous.predicted_label_distribution
    return {k: distribution.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(before) | set(distribution))}


__all__ = ["LEGACY_MANIFEST", "MANIFEST", "SUCCESS", "ScoreError", "commit", "manifest_uri", "previous_manifest",
           "read_manifest"]
