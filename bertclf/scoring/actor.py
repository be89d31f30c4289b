"""The scoring actor: loads a checkpoint once, then turns whole work units into committed output files.

Each unit streams in read batches (only the needed columns), is tokenized (here, or by the CPU stage of
bertclf.scoring.tokens on GPU clusters), sorted by length, run in token-budget micro-batches, and written to a
local Parquet file that is committed to the output in one piece under a deterministic name. A unit either lands
whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import DataError, ScoreError
from bertclf.progress import Progress
from bertclf.records import PartStats, ReuseSource, UnitError, UnitResult, WorkUnit
from bertclf.scoring.drift import HIST_BINS, probability_histograms
from bertclf.scoring.lease import check_lease
from bertclf.scoring.reuse import INDEX_DIR, ScoredTexts, write_index
from bertclf.scoring.table import DATE_COLUMN
from bertclf.scoring.tokens import PackedUnit, ReadSettings, TokenizedBatch, pooled, tokenized_batches, unpack
from bertclf.units import file_metadata

if TYPE_CHECKING:  # driver-side types, only named in for_run's signature
    from bertclf.resources import ScorePlan
    from bertclf.scoring.plan import ScoringRun
    from bertclf.scoring.shards import ShardedIndex

PART_STATS_KEY = "bertclf.unit_stats"  # the Parquet footer key of a part's PartStats
# plain footer keys for readers without bertclf: which weights scored the part and which run committed it
PART_CHECKPOINT_KEY = "bertclf.checkpoint_sha256"
PART_RUN_KEY = "bertclf.run_id"

log = logging.getLogger("bertclf")


@dataclass(frozen=True)
class ScoringSettings:
    """What each actor needs to know, passed once at construction."""

    checkpoint_uri: str
    output_uri: str
    read: ReadSettings
    precision: str
    compile: str
    max_tokens_per_batch: int
    max_batch_rows: int
    torch_threads: int
    run_id: str = ""  # the run holding the output's lease: checked before each part is committed ("": no lease)
    checkpoint_sha256: str = ""  # the weights the driver planned with: an actor that loaded others commits nothing
    scored_with: dict[str, Any] = field(default_factory=dict)  # bertclf.scoring.manifest.scored_with
    long_text: str = "checkpoint"  # truncate | chunk, resolved for the run (ScoringRun.long_text)
    dedupe: bool = True  # score each distinct text of a unit once
    reuse_key: dict[str, Any] = field(default_factory=dict)  # written into each part's index (bertclf.scoring.reuse)
    reuse_source: ReuseSource | None = None  # a previous output to copy probabilities from (recorded per part)
    reuse_index: ShardedIndex | None = None  # its index, held by shard actors (bertclf.scoring.shards)
    table_date: str | None = None  # the night's date (ISO), written as a date column when it goes to a table

    @classmethod
    def for_run(cls, run: ScoringRun, actors: ScorePlan, reuse_source: ReuseSource | None,
                reuse_index: ShardedIndex | None) -> ScoringSettings:
        """The actors' share of the run: the identity each part records is the one the commit checks."""
        cfg = run.cfg
        return cls(checkpoint_uri=run.checkpoint.uri, output_uri=run.output, read=run.read, precision=cfg.precision,
                   compile=cfg.compile, max_tokens_per_batch=actors.max_tokens_per_batch,
                   max_batch_rows=actors.max_batch_rows, torch_threads=actors.torch_threads, run_id=run.run_id,
                   checkpoint_sha256=run.sha256, scored_with=dict(run.settings), long_text=run.long_text,
                   dedupe=cfg.dedupe, reuse_key=dict(run.reuse_key), reuse_source=reuse_source, reuse_index=reuse_index,
                   table_date=run.settings["table_date"])


def read_part_stats(uri: str) -> PartStats:
    """The stats a committed output part carries in its footer (rows, label counts, checkpoint, run), read without
    its data; the rows they claim are checked against the footer's own row count."""
    fs, path = storage.resolve(uri)

    def _read():
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    footer = storage.with_retries(_read, f"reading the footer of {uri}")
    raw = (footer.metadata or {}).get(PART_STATS_KEY.encode())
    if raw is None:
        raise DataError(f"{uri} is not a bertclf scoring part (no {PART_STATS_KEY} in its footer): remove it or "
                         "re-run with --overwrite")
    stats = PartStats.from_json(raw)
    if footer.num_rows != stats.rows_out:
        raise DataError(f"{uri}: its footer says {footer.num_rows} rows but its stats {stats.rows_out}: re-run with "
                         "--overwrite")
    return stats


class UnitScorer:
    """Ray Data actor (one per GPU, or per CPU slice): scores a batch of work units."""

    def __init__(self, settings: ScoringSettings):
        t0 = time.perf_counter()
        import ray
        import torch

        from bertclf.model.inference import Predictor

        torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.predictor = Predictor.load(settings.checkpoint_uri, precision=settings.precision,
                                        max_tokens=settings.max_tokens_per_batch, max_rows=settings.max_batch_rows,
                                        compile=settings.compile, long_text=settings.long_text)
        self.sha256 = self.predictor.checkpoint.fingerprint()  # what this actor loaded, not the plan
        self.space = self.predictor.space
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.precision_used = self.predictor.precision  # fp32, bf16 or int8: what each part and its index record
        self._index_lost = False  # a reuse shard died: score every text from then on
        self.ready_seconds = time.perf_counter() - t0  # imports + checkpoint + model load, reported per unit

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Units to score: {"unit": [...]}, or from the CPU stage also {"tokens", "rows_in", "empty", ...}."""
        results = []
        for i, item in enumerate(batch["unit"]):
            unit = WorkUnit.from_json(item)
            t0 = time.perf_counter()
            try:
                if "tokens" not in batch:
                    stats = self.score_unit(unit, tokenized_batches(unit, self.settings.read, self.predictor.token_ids,
                                                                    self.predictor.baseline_probabilities))
                    result = UnitResult(unit=unit.name, input=unit.uri, stats=stats)
                elif batch["tokenize_error"][i]:  # reading or tokenizing failed in the CPU stage
                    error = UnitError.from_json(batch["tokenize_error"][i])
                    result = UnitResult(unit=unit.name, input=unit.uri, error=error)
                else:
                    packed = PackedUnit(batch["tokens"][i], int(batch["rows_in"][i]), int(batch["empty"][i]))
                    result = UnitResult(unit=unit.name, input=unit.uri, stats=self.score_unit(unit, unpack(packed)))
            except Exception as exc:  # noqa: BLE001 - reported per unit; the driver fails the job naming the file
                result = UnitResult(unit=unit.name, input=unit.uri, error=UnitError.of(exc))
            result.seconds = time.perf_counter() - t0
            result.actor_ready_seconds = self.ready_seconds
            result.actor_pid = os.getpid()
            result.tokenizer_pid = int(batch["tokenizer_pid"][i]) if "tokenizer_pid" in batch else os.getpid()
            result.gpu_ids = self.gpu_ids
            results.append(result.to_json())
        return {"result": results}

    def score_unit(self, unit: WorkUnit, batches: Iterator[TokenizedBatch]) -> PartStats:
        """Score one unit's tokenized batches into a local Parquet file and commit it whole under the unit's name,
        its reuse index first."""
        s = self.settings
        counts: Counter[str] = Counter()
        histograms = np.zeros((len(self.space.names), HIST_BINS), dtype=np.int64)
        rows_in = rows_out = empty = tokens = windows = scored = rows_reused = 0
        seen = ScoredTexts(len(self.space.names))  # this unit's distinct texts so far: its index when committed
        # a unit of long documents can take minutes: say how far it is, not only when it ends
        progress = Progress(f"unit {unit.name}", unit.num_rows, "rows", log=log)
        with tempfile.TemporaryDirectory(prefix="bertclf-unit-") as tmp:
            local = os.path.join(tmp, unit.name)
            writer: pq.ParquetWriter | None = None
            holds = (lambda h: self._previous_find(h, probs=False)[0]) if s.reuse_index is not None else None
            for batch in pooled(batches, holds, s.read.read_batch_rows):
                rows_in += batch.rows_in
                empty += batch.empty
                if not batch.token_ids:
                    continue
                probs, run_ids, reused = self._probabilities(batch, seen)
                scored += len(run_ids)
                rows_reused += reused
                tokens += sum(len(i) for i in run_ids)
                windows += self.predictor.windows_for(run_ids)
                out = self._output(batch, probs)
                histograms += probability_histograms(probs)
                rows_out += out.num_rows
                counts.update(pc.list_flatten(out["predicted"]).to_pylist())
                if writer is None:
                    writer = pq.ParquetWriter(local, out.schema, compression="zstd")
                writer.write_table(out)
                progress.update(rows_in, lambda: f"{windows:,} model inputs"  # noqa: B023 - called right here
                                if self.predictor.long_text == "chunk" else "")
            stats = PartStats(unit=unit.name, input=unit.uri, row_groups=list(unit.row_groups), rows_in=rows_in,
                              rows_out=rows_out, empty_texts=empty, label_counts=dict(counts), tokens=tokens,
                              windows=windows,
                              prob_histograms=dict(zip(self.space.names, histograms.tolist(), strict=True)),
                              checkpoint_sha256=self.sha256, scored_with=s.scored_with, run_id=s.run_id,
                              precision_used=self.precision_used, duplicate_rows=rows_out - len(seen),
                              texts_scored=scored, rows_reused=rows_reused,
                              reused_from=s.reuse_source.output if rows_reused and s.reuse_source else "")
            if writer is None:  # every row skipped as empty: still commit a valid, empty part
                schema = file_metadata(unit.uri).schema.to_arrow_schema()
                writer = pq.ParquetWriter(local, self._empty_output(schema), compression="zstd")
            writer.add_key_value_metadata({PART_STATS_KEY: stats.to_json(), PART_CHECKPOINT_KEY: self.sha256,
                                           PART_RUN_KEY: s.run_id})
            writer.close()
            index = os.path.join(tmp, "index.parquet")
            write_index(index, seen, self._index_key())
            if s.checkpoint_sha256 and self.sha256 != s.checkpoint_sha256:
                raise ScoreError(f"the checkpoint {s.checkpoint_uri} changed during the run (weights sha256 "
                                 f"{self.sha256[:12]}… here, {s.checkpoint_sha256[:12]}… when the run started): part "
                                 f"{unit.name} not committed")
            if s.run_id:
                check_lease(s.output_uri, s.run_id, f"part {unit.name}")
            # the index lands first: a committed part always has one; an index without its part (a crash between
            # the two) is overwritten when the unit is scored again
            storage.upload_file(index, storage.join(s.output_uri, INDEX_DIR, unit.name))
            storage.upload_file(local, storage.join(s.output_uri, unit.name))
        return stats

    def _index_key(self) -> dict[str, Any]:
        return {**self.settings.reuse_key, "precision_used": self.precision_used}

    def _probabilities(self, batch: TokenizedBatch, seen: ScoredTexts) -> tuple[np.ndarray, list[list[int]], int]:
        """(rows, labels) probabilities of a batch: texts seen earlier in the unit or found in the previous output
        are copied, each other distinct text is run once. Returns them, the token ids that were run and how many
        rows got probabilities from the previous output."""
        hashes = batch.text_hashes
        if self.settings.dedupe:
            distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
        else:
            distinct, first, inverse = hashes, np.arange(len(hashes)), np.arange(len(hashes))
        probs = np.empty((len(distinct), len(self.space.names)), np.float32)
        known, pos = seen.lookup(distinct) if self.settings.dedupe else (np.zeros(len(distinct), bool), None)
        if known.any():
            probs[known] = seen.probs[pos[known]]
        from_previous = np.zeros(len(distinct), bool)
        if self.settings.reuse_index is not None and len(ask := np.flatnonzero(~known)):
            found, found_probs = self._previous_find(distinct[ask])
            from_previous[ask[found]] = True
            probs[ask[found]] = found_probs[found]
        run = ~known & ~from_previous
        run_ids = [batch.token_ids[i] for i in first[run]]
        if run_ids:
            baseline = batch.baseline[first[run]] if batch.baseline is not None else None
            probs[run] = self.predictor.probabilities_for_ids(run_ids, baseline)
        copied = from_previous.copy()
        if known.any():
            copied[known] = seen.from_previous[pos[known]]
        reused = int(np.bincount(inverse, minlength=len(distinct))[copied].sum())
        seen.add(distinct[~known], probs[~known], from_previous[~known])
        return probs[inverse], run_ids, reused

    def _previous_find(self, hashes: np.ndarray, probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The reuse index's (found, probabilities) for hashes (ShardedIndex.find); nothing found once a shard is
        lost: reuse only saves work, so the actor scores every text from then on instead of failing its units."""
        index = self.settings.reuse_index
        if index is not None and not self._index_lost:
            try:
                return index.find(hashes, self.precision_used, probs)
            except Exception as exc:  # noqa: BLE001 - a shard actor died (RayActorError) or its node was lost
                self._index_lost = True
                log.warning("reuse: the previous index is no longer reachable (%s: %s); this actor scores every "
                            "text from now on", type(exc).__name__, exc)
        return (np.zeros(len(hashes), bool),
                np.zeros((len(hashes), len(self.space.names)), np.float32) if probs else None)

    def _empty_output(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [input_schema.field(c) for c in self.settings.read.passthrough]
        fields += [pa.field(f"prob_{name}", pa.float32()) for name in self.space.names]
        fields += [pa.field("predicted", pa.list_(pa.string())), pa.field("top_label", pa.string()),
                   pa.field("top_score", pa.float32())]
        if self.settings.table_date:
            fields.append(pa.field(DATE_COLUMN, pa.date32()))
        return pa.schema(fields)

    def _output(self, batch: TokenizedBatch, probs: np.ndarray) -> pa.Table:
        top = probs.argmax(axis=1)
        columns = {c: batch.passthrough[c] for c in self.settings.read.passthrough}
        for j, name in enumerate(self.space.names):
            columns[f"prob_{name}"] = pa.array(probs[:, j], pa.float32())
        columns["predicted"] = pa.array(self.space.predict(probs), pa.list_(pa.string()))
        columns["top_label"] = pa.array(np.asarray(self.space.names, dtype=object)[top], pa.string())
        columns["top_score"] = pa.array(probs[np.arange(len(top)), top], pa.float32())
        if self.settings.table_date:
            day = dt.date.fromisoformat(self.settings.table_date)
            columns[DATE_COLUMN] = pa.array([day] * len(top), pa.date32())
        return pa.table(columns)


# the part footer's keys are a data contract: readers without bertclf find the weights and the run there
__all__ = ["PART_CHECKPOINT_KEY", "PART_RUN_KEY", "PART_STATS_KEY", "ScoringSettings", "UnitScorer", "read_part_stats"]
