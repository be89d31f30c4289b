"""The scoring actor: loads a checkpoint once, then turns whole work units into committed output files.

Each unit streams in read batches (only the needed columns), is tokenized, sorted by length, run in
token-budget micro-batches, and written to a local Parquet file that is committed to the output
in one piece under a deterministic name. A unit either lands whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import DataError
from bertclf.records import PartStats, UnitResult, WorkUnit
from bertclf.scoring.drift import HIST_BINS, probability_histograms
from bertclf.units import file_metadata, read_unit

PART_STATS_KEY = "bertclf.unit_stats"  # the Parquet footer key of a part's PartStats


@dataclass(frozen=True)
class ScoringSettings:
    """What each actor needs to know, passed once at construction."""

    checkpoint_uri: str
    output_uri: str
    text_column: str
    passthrough: tuple[str, ...]
    empty_text: str
    precision: str
    compile: str
    max_tokens_per_batch: int
    max_batch_rows: int
    read_batch_rows: int
    torch_threads: int


def read_part_stats(uri: str) -> PartStats:
    """The stats a committed output part carries in its footer (rows, label counts), read without its data."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata.metadata or {}
    return PartStats.from_json(meta[PART_STATS_KEY.encode()])


class UnitScorer:
    """Ray Data actor (one per GPU, or per CPU slice): scores a batch of work units."""

    def __init__(self, settings: ScoringSettings):
        t0 = time.perf_counter()
        import torch

        from bertclf.inference import Predictor

        torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.predictor = Predictor.load(settings.checkpoint_uri, precision=settings.precision,
                                        max_tokens=settings.max_tokens_per_batch, max_rows=settings.max_batch_rows,
                                        compile=settings.compile)
        self.space = self.predictor.space
        self.ready_seconds = time.perf_counter() - t0  # imports + checkpoint + model load, reported per unit

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results = []
        for item in batch["unit"]:
            unit = WorkUnit.from_json(item)
            t0 = time.perf_counter()
            try:
                stats = self.score_unit(unit)
                result = UnitResult(unit=unit.name, input=unit.uri, stats=stats)
            except Exception as exc:  # noqa: BLE001 - reported per unit; the driver fails the job naming the file
                result = UnitResult(unit=unit.name, input=unit.uri, error=f"{type(exc).__name__}: {exc}")
            result.seconds = time.perf_counter() - t0
            result.actor_ready_seconds = self.ready_seconds
            result.actor_pid = os.getpid()
            results.append(result.to_json())
        return {"result": results}

    def score_unit(self, unit: WorkUnit) -> PartStats:
        """Score one unit into a local Parquet file and commit it whole under the unit's name."""
        s = self.settings
        counts: Counter[str] = Counter()
        histograms = np.zeros((len(self.space.names), HIST_BINS), dtype=np.int64)
        rows_in = rows_out = empty = tokens = 0
        columns = list(dict.fromkeys([*s.passthrough, s.text_column]))
        with tempfile.TemporaryDirectory(prefix="bertclf-unit-") as tmp:
            local = os.path.join(tmp, unit.name)
            writer: pq.ParquetWriter | None = None
            for record_batch in read_unit(unit, columns, s.read_batch_rows):
                table = pa.Table.from_batches([record_batch])
                rows_in += table.num_rows
                table, n_empty = self._handle_empty(table, unit.uri)
                empty += n_empty
                out, probs, n_tokens = self._score_table(table)
                tokens += n_tokens
                histograms += probability_histograms(probs)
                rows_out += out.num_rows
                counts.update(pc.list_flatten(out["predicted"]).to_pylist())
                if writer is None:
                    writer = pq.ParquetWriter(local, out.schema, compression="zstd")
                writer.write_table(out)
            stats = PartStats(unit=unit.name, input=unit.uri, row_groups=list(unit.row_groups), rows_in=rows_in,
                              rows_out=rows_out, empty_texts=empty, label_counts=dict(counts), tokens=tokens,
                              prob_histograms=dict(zip(self.space.names, histograms.tolist(), strict=True)))
            if writer is None:  # every row skipped as empty: still commit a valid, empty part
                schema = file_metadata(unit.uri).schema.to_arrow_schema()
                writer = pq.ParquetWriter(local, self._empty_output(schema), compression="zstd")
            writer.add_key_value_metadata({PART_STATS_KEY: stats.to_json()})
            writer.close()
            storage.upload_file(local, storage.join(s.output_uri, unit.name))
        return stats

    def _empty_output(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [input_schema.field(c) for c in self.settings.passthrough]
        fields += [pa.field(f"prob_{name}", pa.float32()) for name in self.space.names]
        fields += [pa.field("predicted", pa.list_(pa.string())), pa.field("top_label", pa.string()),
                   pa.field("top_score", pa.float32())]
        return pa.schema(fields)

    def _handle_empty(self, table: pa.Table, uri: str) -> tuple[pa.Table, int]:
        text = table[self.settings.text_column]
        is_empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), True)
        n = int(pc.sum(is_empty).as_py() or 0)
        if not n:
            return table, 0
        mode = self.settings.empty_text
        if mode == "error":
            raise DataError(f"{uri}: {n} null or empty text(s) in column {self.settings.text_column!r} "
                             "(empty_text=error; use score or skip)")
        if mode == "skip":
            return table.filter(pc.invert(is_empty)), n
        idx = table.schema.get_field_index(self.settings.text_column)
        return table.set_column(idx, self.settings.text_column, pc.fill_null(text, "")), n

    def _score_table(self, table: pa.Table) -> tuple[pa.Table, np.ndarray, int]:
        s = self.settings
        ids = self.predictor.token_ids(table[s.text_column].to_pylist())
        probs = self.predictor.probabilities_for_ids(ids)
        top = probs.argmax(axis=1)
        columns = {c: table[c] for c in s.passthrough}
        for j, name in enumerate(self.space.names):
            columns[f"prob_{name}"] = pa.array(probs[:, j], pa.float32())
        columns["predicted"] = pa.array(self.space.predict(probs), pa.list_(pa.string()))
        columns["top_label"] = pa.array(np.asarray(self.space.names, dtype=object)[top], pa.string())
        columns["top_score"] = pa.array(probs[np.arange(len(top)), top], pa.float32())
        return pa.table(columns), probs, sum(len(i) for i in ids)
