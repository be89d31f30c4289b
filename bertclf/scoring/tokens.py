"""The CPU half of scoring: read a unit's columns, apply the empty-text policy, tokenize.

On CPU clusters the scoring actor does this itself between forwards (one fused stage). On GPU clusters it is a
stage of its own: `UnitTokenizer` actors on CPUs read and tokenize whole units and hand the GPU actors token
ids, packed as one Arrow IPC payload per unit so a unit still reaches exactly one scoring actor whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertclf.errors import DataError
from bertclf.records import UnitError, WorkUnit
from bertclf.scoring.reuse import HASH_DTYPE, hash_array, hashes_of, text_hashes
from bertclf.units import check_utf8, is_text_type, read_unit

TOKENS_COLUMN = "__bertclf_input_ids"
HASH_COLUMN = "__bertclf_text_hash"
BASELINE_COLUMN = "__bertclf_baseline_probs"
Tokenize = Callable[[list[str]], list[list[int]]]
BaselineProbs = Callable[[list[str]], np.ndarray | None]  # Predictor.baseline_probabilities


@dataclass(frozen=True)
class ReadSettings:
    """Which columns a unit is read with, how empty texts are treated, and the read batch size."""

    text_column: str
    passthrough: tuple[str, ...]
    empty_text: str
    read_batch_rows: int


@dataclass
class TokenizedBatch:
    """Rows ready for the model: their pass-through columns, token ids and text hashes (bertclf.scoring.reuse),
    with what reading them counted."""

    passthrough: pa.Table
    token_ids: list[list[int]]
    rows_in: int
    empty: int
    text_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, HASH_DTYPE))
    baseline: np.ndarray | None = None  # (rows, labels) the checkpoint's baseline probabilities, when it blends


def tokenized_batches(unit: WorkUnit, s: ReadSettings, tokenize: Tokenize,
                      baseline: BaselineProbs | None = None) -> Iterator[TokenizedBatch]:
    """A unit's rows in read batches (only the needed columns), empty texts handled, hashed, and tokenized once
    per distinct text of the batch; with `baseline`, the baseline's probabilities too, while the texts are here."""
    columns = list(dict.fromkeys([*s.passthrough, s.text_column]))
    rows_read = unit.row_range[0] if unit.row_range else 0  # rows are numbered within the unit's row groups
    for record_batch in read_unit(unit, columns, s.read_batch_rows):
        table = _checked_text(pa.Table.from_batches([record_batch]), unit, s.text_column, rows_read)
        rows_in = table.num_rows
        rows_read += rows_in
        table, empty = _handle_empty(table, unit.uri, s)
        texts = table[s.text_column].to_pylist()
        hashes = text_hashes(texts)
        first, inverse = _distinct(hashes)
        distinct = [texts[i] for i in first]
        ids = tokenize(distinct) if texts else []
        probs = baseline(distinct) if baseline is not None and texts else None
        yield TokenizedBatch(table.select(list(s.passthrough)), [ids[j] for j in inverse], rows_in, empty, hashes,
                             None if probs is None else probs[inverse])


def merge_batches(batches: list[TokenizedBatch]) -> TokenizedBatch:
    """Consecutive read batches of one unit as one batch, rows in order."""
    if len(batches) == 1:
        return batches[0]
    with_baseline = [b.baseline for b in batches if b.baseline is not None]
    return TokenizedBatch(pa.concat_tables([b.passthrough for b in batches]),
                          [ids for b in batches for ids in b.token_ids], sum(b.rows_in for b in batches),
                          sum(b.empty for b in batches), np.concatenate([b.text_hashes for b in batches]),
                          np.concatenate(with_baseline) if with_baseline else None)


def pooled(batches: Iterable[TokenizedBatch], previous: Callable[[np.ndarray], np.ndarray] | None,
           rows: int) -> Iterator[TokenizedBatch]:
    """Read batches merged until they hold at least `rows` texts that `previous` (whether a reuse source's index
    holds each hash) lacks,
    so the model still sorts and batches pools as large as a full re-score's when most texts are copied (small
    pools mean more padding and more partial micro-batches; benchmarks/results/NOTES.md, 2026-12-04). Without a
    reuse source the batches pass as they are."""
    if previous is None:
        yield from batches
        return
    pool: list[TokenizedBatch] = []
    to_run = 0
    for batch in batches:
        pool.append(batch)
        to_run += int(np.count_nonzero(~previous(np.unique(batch.text_hashes))))
        if to_run >= rows:
            yield merge_batches(pool)
            pool, to_run = [], 0
    if pool:
        yield merge_batches(pool)


def _distinct(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct text, distinct index of each row): each distinct text is tokenized once and
    rows of one text share its token list."""
    if not len(hashes):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _checked_text(table: pa.Table, unit: WorkUnit, column: str, rows_before: int) -> pa.Table:
    """The text column as plain strings of valid UTF-8, or DataError naming the file, row groups and row (the
    driver checks types from the schema and a sample for UTF-8; this catches what the sample missed)."""
    where = f"{unit.uri} (row groups {unit.row_groups[0]}-{unit.row_groups[-1]})"
    idx = table.schema.get_field_index(column)
    col = table.column(idx)
    if not is_text_type(col.type):
        raise DataError(f"{where}: text column {column!r} must hold strings, found type {col.type}")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
        table = table.set_column(idx, column, col)
    check_utf8(col, column, where, first_row=rows_before)
    return table


def _handle_empty(table: pa.Table, uri: str, s: ReadSettings) -> tuple[pa.Table, int]:
    text = table[s.text_column]
    is_empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), True)
    n = int(pc.sum(is_empty).as_py() or 0)
    if not n:
        return table, 0
    if s.empty_text == "error":
        raise DataError(f"{uri}: {n} null or empty text(s) in column {s.text_column!r} "
                        "(empty_text=error; use score or skip)")
    if s.empty_text == "skip":
        return table.filter(pc.invert(is_empty)), n
    idx = table.schema.get_field_index(s.text_column)
    return table.set_column(idx, s.text_column, pc.fill_null(text, "")), n


@dataclass
class PackedUnit:
    """A whole tokenized unit for the GPU stage: one Arrow IPC stream of its rows, and what reading counted."""

    payload: bytes
    rows_in: int
    empty: int


def pack(batches: Iterator[TokenizedBatch]) -> PackedUnit:
    """The unit's tokenized read batches as one Arrow IPC stream (token ids as list<int32>)."""
    sink = pa.BufferOutputStream()
    writer = None
    rows_in = empty = 0
    for b in batches:
        rows_in, empty = rows_in + b.rows_in, empty + b.empty
        table = b.passthrough.append_column(TOKENS_COLUMN, pa.array(b.token_ids, pa.list_(pa.int32())))
        table = table.append_column(HASH_COLUMN, hash_array(b.text_hashes))
        if b.baseline is not None:
            values = pa.array(np.ascontiguousarray(b.baseline, np.float32).reshape(-1), pa.float32())
            table = table.append_column(BASELINE_COLUMN,
                                        pa.FixedSizeListArray.from_arrays(values, b.baseline.shape[1]))
        if writer is None:
            writer = pa.ipc.new_stream(sink, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    return PackedUnit(sink.getvalue().to_pybytes(), rows_in, empty)


def unpack(unit: PackedUnit) -> Iterator[TokenizedBatch]:
    """The batches `pack` wrote, in order; the counts of rows read and of empty texts ride on the last one."""
    rows = 0
    if unit.payload:
        for batch in pa.ipc.open_stream(unit.payload):
            ids = batch.column(TOKENS_COLUMN)
            offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy()
            token_ids = [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(ids))]
            text_hashes = hashes_of(batch.column(HASH_COLUMN))
            baseline = None
            if BASELINE_COLUMN in batch.schema.names:
                column = batch.column(BASELINE_COLUMN)
                baseline = column.values.to_numpy().reshape(len(column), column.type.list_size)
            passthrough = pa.Table.from_batches([batch]).drop_columns(
                [c for c in (TOKENS_COLUMN, HASH_COLUMN, BASELINE_COLUMN) if c in batch.schema.names])
            rows += batch.num_rows
            yield TokenizedBatch(passthrough, token_ids, batch.num_rows, 0, text_hashes, baseline)
    if unit.rows_in > rows or unit.empty:  # rows skipped as empty, or no batch at all
        yield TokenizedBatch(pa.table({}), [], unit.rows_in - rows, unit.empty)


class UnitTokenizer:
    """Ray Data actor of the CPU stage on GPU clusters: the checkpoint's tokenizer, loaded once."""

    def __init__(self, checkpoint_uri: str, read: ReadSettings, long_text: str):
        """`long_text`: truncate or chunk, as the run resolved it (ScoringRun.long_text)."""
        from bertclf.model import checkpoint
        from bertclf.model.inference import encode_texts, load_blend
        from bertclf.model.modeling import load_tokenizer

        ckpt = checkpoint.load(checkpoint_uri)
        tokenizer = load_tokenizer(str(ckpt.local_dir))
        self.tokenize: Tokenize = lambda texts: encode_texts(tokenizer, texts, ckpt.max_length, long_text)
        baseline, _ = load_blend(ckpt)
        self.baseline: BaselineProbs | None = baseline.probabilities if baseline is not None else None
        self.read = read

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"unit": [], "tokens": [], "rows_in": [], "empty": [], "tokenize_error": []}
        for item in batch["unit"]:
            try:
                packed, error = pack(tokenized_batches(WorkUnit.from_json(item), self.read, self.tokenize,
                                                       self.baseline)), ""
            except Exception as exc:  # noqa: BLE001 - the scoring actor reports it as this unit's failure
                packed, error = PackedUnit(b"", 0, 0), UnitError.of(exc).to_json()
            for key, value in (("unit", item), ("tokens", packed.payload), ("rows_in", packed.rows_in),
                               ("empty", packed.empty), ("tokenize_error", error)):
                out[key].append(value)
        out["tokenizer_pid"] = [os.getpid()] * len(out["unit"])
        return out
