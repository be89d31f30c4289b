"""Skip work already done: texts keyed by a hash, each part's compact index, and the previous output to copy from.

A scored text is known by the 128-bit blake2b of its UTF-8 bytes. Each committed part has an index beside it,
`_reuse/<part name>`: one row per distinct text of the part (its hash and its probabilities, sorted by hash), written
before the part itself, so a committed part always has one. A later run with `reuse: previous` finds one earlier
committed output scored by the same checkpoint and settings (`reuse_key`); shard actors (bertclf.scoring.shards)
each load one hash range of that output's indexes as two sorted numpy arrays and answer the scoring actors' lookups.
The driver only reads manifests and part names: it never holds a text or a hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import RecordError
from bertclf.records import Manifest, ReuseSource
from bertclf.scoring.dates import fill_date, has_date
from bertclf.scoring.manifest import SUCCESS
from bertclf.scoring.parts import bounded_map, part_names

INDEX_DIR = "_reuse"  # "_" so Parquet readers of the output skip it, like _manifest.json
HASH_BYTES = 16
HASH_DTYPE = f"S{HASH_BYTES}"
INDEX_KEY = "bertclf.reuse_key"  # footer key of an index: the reuse key and the precision its actor ran
PRECISION_KEY = "precision_used"  # the index key's entry a shard groups by instead of matching (one run, one precision)
INDEX_ROW_GROUP = 4096  # rows per row group of an index: a shard reads only the row groups overlapping its range
PREFIX_END = 2**64

log = logging.getLogger("bertclf")


def text_hashes(texts: list[str]) -> np.ndarray:
    """Per text, the 16-byte blake2b of its UTF-8 bytes (numpy S16: fixed width, sortable, no Python objects)."""
    return np.array([hashlib.blake2b(t.encode("utf-8"), digest_size=HASH_BYTES).digest() for t in texts],
                    dtype=HASH_DTYPE)


def hash_array(hashes: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Hashes as an Arrow fixed_size_binary(16) column, without a Python object per row."""
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(HASH_BYTES), len(hashes),
                                                [None, pa.py_buffer(np.ascontiguousarray(hashes).tobytes())])


def hashes_of(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_binary(16) column back as numpy S16."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.frombuffer(column.buffers()[1], HASH_DTYPE, count=len(column), offset=column.offset * HASH_BYTES)


def reuse_key(sha256: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' probabilities for one text the same: every file inference reads (weights, baseline,
    tokenizer, model config: `files_sha256`), the label head's bias, the length, the long-text windows and the
    blend weight (the precision an actor ran is checked per index). Thresholds only change `predicted`, which is
    recomputed from the copied probabilities."""
    labels = {k: v for k, v in settings.get("labels", {}).items() if k != "thresholds"}
    return json.loads(json.dumps({"checkpoint_sha256": sha256, "labels": labels,
                                  **{k: settings.get(k) for k in ("max_length", "long_text", "chunk_stride",
                                                                  "blend", "files_sha256")}}))


def hash_prefixes(hashes: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each hash as a uint64 (big-endian: integer order is byte order)."""
    return np.ascontiguousarray(hashes).view(">u8").reshape(-1, 2)[:, 0].astype(np.uint64)


def sorted_first(keys: np.ndarray) -> np.ndarray:
    """Positions of `keys` (S16) in sorted order, the first of equal keys only: np.unique(keys, return_index=True)'s
    indices, but sorted by the hashes' first 8 bytes as integers: 1.3 s against 6.5 s for np.unique on 10^7 keys in
    random order (2 AVX2 cores); on a previous night's parts, each already sorted, the two take the same time (its
    mergesort finds the runs) and this one a third less memory: only neighbours that share a prefix are compared
    whole. Uniform hashes share 8-byte prefixes only when equal: where two different keys do, the sort is redone on
    all 16 bytes."""
    if len(keys) < 2:
        return np.arange(len(keys))
    keys = np.ascontiguousarray(keys)
    halves = keys.view(">u8").reshape(-1, 2)  # big-endian: integer order is byte order
    high = hash_prefixes(keys)
    order = np.argsort(high, kind="stable")  # stable: the first of equal keys stays first, as np.unique's
    high = high[order]
    distinct = np.empty(len(keys), bool)
    distinct[0] = True
    np.not_equal(high[1:], high[:-1], out=distinct[1:])
    del high
    # only neighbours with one prefix are compared whole (duplicates, mostly): no sorted copy of every key
    same = np.flatnonzero(~distinct[1:])
    whole = keys[order[same]] != keys[order[same + 1]]
    if whole.any():  # two different texts with one 8-byte prefix: sort on all 16 bytes
        order = np.lexsort((halves[:, 1].astype(np.uint64), halves[:, 0].astype(np.uint64)))
        ranked = keys[order]
        distinct[1:] = ranked[1:] != ranked[:-1]
    return order[distinct]


class ScoredTexts:
    """Distinct text hashes, sorted, with their probabilities: a unit's texts so far, or a previous output's index.

    Memory: 16 bytes + 4 per label for each distinct text.
    """

    def __init__(self, labels: int, keys: np.ndarray | None = None, probs: np.ndarray | None = None,
                 from_previous: np.ndarray | None = None):
        self.keys = np.empty(0, HASH_DTYPE) if keys is None else keys
        self.probs = np.empty((0, labels), np.float32) if probs is None else probs
        self.from_previous = np.zeros(len(self.keys), bool) if from_previous is None else from_previous

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, position) per hash; positions index keys/probs where found."""
        if not len(self.keys) or not len(hashes):
            return np.zeros(len(hashes), bool), np.zeros(len(hashes), np.int64)
        pos = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        return self.keys[pos] == hashes, pos

    def add(self, hashes: np.ndarray, probs: np.ndarray, from_previous: np.ndarray) -> None:
        """Add texts not held yet (the caller looked them up first); keeps the keys sorted and unique."""
        keys = np.concatenate([self.keys, hashes])
        first = sorted_first(keys)
        self.keys = keys[first]
        self.probs = np.concatenate([self.probs, probs.astype(np.float32, copy=False)])[first]
        self.from_previous = np.concatenate([self.from_previous, from_previous])[first]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.probs.nbytes


def write_index(local_path: str, texts: ScoredTexts, key: dict[str, Any]) -> None:
    """A part's index: its distinct texts' hashes and probabilities (float32, as in the part), key in the footer."""
    labels = texts.probs.shape[1]
    values = pa.array(np.ascontiguousarray(texts.probs, np.float32).reshape(-1), pa.float32())
    table = pa.table({"hash": hash_array(texts.keys), "probs": pa.FixedSizeListArray.from_arrays(values, labels)})
    table = table.replace_schema_metadata({INDEX_KEY: json.dumps(key, sort_keys=True)})
    pq.write_table(table, local_path, compression="zstd", row_group_size=INDEX_ROW_GROUP)


def read_index(uri: str, labels: int, lo: int = 0, hi: int = PREFIX_END) -> tuple[dict[str, Any], np.ndarray,
                                                                                  np.ndarray]:
    """(key, hashes, probs) of one part's index, only its texts whose hash prefix is in [lo, hi): the row groups
    whose min/max hash can't overlap the range are not read."""
    fs, path = storage.resolve(uri)

    def read() -> pa.Table:
        with fs.open_input_file(path) as f:
            index = pq.ParquetFile(f)
            groups = [g for g in range(index.metadata.num_row_groups) if _overlaps(index.metadata.row_group(g), lo, hi)]
            return index.read_row_groups(groups) if groups else index.schema_arrow.empty_table()

    table = storage.with_retries(read, f"reading {uri}")
    key = json.loads((table.schema.metadata or {}).get(INDEX_KEY.encode(), b"{}"))
    hashes = hashes_of(table["hash"])
    probs = table["probs"].combine_chunks().flatten().to_numpy().reshape(-1, labels)
    if lo > 0 or hi < PREFIX_END:
        prefixes = hash_prefixes(hashes)
        keep = (prefixes >= np.uint64(lo)) & (prefixes <= np.uint64(hi - 1))
        return key, hashes[keep], probs[keep]
    return key, hashes.copy(), probs


def _overlaps(group: pq.RowGroupMetaData, lo: int, hi: int) -> bool:
    """Whether a row group of an index may hold a hash whose prefix is in [lo, hi) (no statistics: it may)."""
    stats = group.column(0).statistics
    if stats is None or not stats.has_min_max or lo == 0 and hi == PREFIX_END:
        return True
    low, high = (int.from_bytes(bytes(v)[:8], "big") for v in (stats.min, stats.max))
    return low < hi and high >= lo


def load_previous(source: ReuseSource, key: dict[str, Any], labels: int, lo: int = 0,
                  hi: int = PREFIX_END) -> tuple[dict[str, ScoredTexts], list[str]]:
    """A previous output's indexes scored with `key`, the texts whose hash prefix is in [lo, hi) (one shard's
    range), by the precision their actor ran; and one line per index left out and why."""
    def read(name: str):
        return name, *read_index(storage.join(source.output, INDEX_DIR, name), labels, lo, hi)

    keys: dict[str, list[np.ndarray]] = {}
    probs: dict[str, list[np.ndarray]] = {}
    skipped = []
    for name, theirs, k, p in bounded_map(read, source.parts, workers=8):
        precision = str(theirs.get(PRECISION_KEY, "?"))
        if (theirs := {n: v for n, v in theirs.items() if n != PRECISION_KEY}) != key:
            skipped.append(f"{name}: scored with {_diff(theirs, key)}")
            continue
        keys.setdefault(precision, []).append(k)
        probs.setdefault(precision, []).append(p)
    return {precision: _joined(keys[precision], probs[precision]) for precision in keys}, skipped


def _joined(keys: list[np.ndarray], probs: list[np.ndarray]) -> ScoredTexts:
    """Parts' indexes as one, each text once. One copy of the parts at a time: each list is emptied once joined,
    and the sort works on 8-byte prefixes (10^7 texts in 500 parts: 6.0 s, peak +790 MiB for a 267 MiB index;
    np.unique: 5.8 s, +1,148 MiB; benchmarks/results/2026-12-06-scale-avx2.json, reruns)."""
    all_keys = np.concatenate(keys)
    del keys[:]
    first = sorted_first(all_keys)
    all_keys = all_keys[first]
    all_probs = np.concatenate(probs)
    del probs[:]
    return ScoredTexts(all_probs.shape[1], all_keys, all_probs[first], np.ones(len(first), bool))


def _diff(theirs: dict[str, Any], ours: dict[str, Any]) -> str:
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    return "; ".join(f"{k} {json.dumps(theirs.get(k))} (this run: {json.dumps(ours.get(k))})" for k in keys)


def find_previous(output: str, candidates: list[str], key: dict[str, Any], fits: Callable[[int], str],
                  read_manifest: Callable[[str], Manifest]) -> tuple[ReuseSource | None, str]:
    """The first candidate output that is committed, scored with this key, has indexes and whose index of so many
    rows `fits` the cluster ("" or why not); else None and why none was taken (each refusal is logged)."""
    reasons = []
    for uri in candidates:
        uri = storage.absolute(uri)
        if uri.rstrip("/") == output.rstrip("/"):
            continue
        why = _refusal(uri, key, fits, read_manifest)
        if isinstance(why, ReuseSource):
            return why, ""
        log.info("reuse: not reusing %s: %s", uri, why)
        reasons.append(f"{uri}: {why}")
    return None, "; ".join(reasons) or "no earlier output to reuse"


def _refusal(uri: str, key: dict[str, Any], fits: Callable[[int], str],
             read_manifest: Callable[[str], Manifest]) -> ReuseSource | str:
    if not storage.exists(storage.join(uri, SUCCESS)):
        return f"no {SUCCESS} (not scored, or not finished)"
    try:
        manifest = read_manifest(uri)
    except (FileNotFoundError, RecordError, storage.StorageError, OSError) as exc:
        return f"its manifest can't be read ({type(exc).__name__}: {exc})"
    if not manifest.reuse_key:
        return "its manifest records no reuse key (scored before bertclf wrote reuse indexes)"
    if manifest.reuse_key != key:
        return f"scored with another checkpoint or settings: {_diff(manifest.reuse_key, key)}"
    indexed = storage.list_names(storage.join(uri, INDEX_DIR))
    parts = [name for name in part_names(uri, manifest) if name in indexed]
    if not parts:
        return "none of its parts has a reuse index"
    if why := fits(manifest.rows_out):
        return why
    return ReuseSource(output=uri, parts=parts, rows=manifest.rows_out)


def candidates(output_template: str, date: dt.date, reuse_from: str | None, lookback_days: int) -> list[str]:
    """Where to look: reuse_from when given, else the earlier {date} partitions of the output, nearest first."""
    if reuse_from:
        return [fill_date(reuse_from, date)]
    if not has_date(output_template):
        return []
    return [fill_date(output_template, date - dt.timedelta(days=k)) for k in range(1, lookback_days + 1)]


__all__ = ["HASH_BYTES", "HASH_DTYPE", "INDEX_DIR", "INDEX_ROW_GROUP", "PREFIX_END", "ScoredTexts", "candidates",
           "find_previous", "hash_array", "hash_prefixes", "hashes_of", "load_previous", "read_index", "reuse_key",
           "sorted_first", "text_hashes", "write_index"]
