"""A previous night's reuse index spread over Ray actors by hash range, so no process holds all of it.

Every scoring actor used to load the whole previous index: 16 + 4 x labels bytes per distinct text in each actor,
so a night past a few ten million texts could not reuse at all. Now the index is cut into `shards` ranges of the
hashes' first 8 bytes; one `IndexShard` actor per range loads only its range from every part's index (each index
is sorted by hash in row groups of INDEX_ROW_GROUP rows, so a shard reads only the row groups that overlap its range
according to their min/max statistics) and answers lookups. Each scoring actor holds a `ShardedIndex`: the shard
handles and the range bounds, and sends each batch's distinct hashes to the shards that own them. The index is held
once in the cluster, not once per scoring actor, and each shard holds at most `reuse_index_max_mb` of it.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bertclf.records import ReuseSource
from bertclf.scoring.reuse import HASH_BYTES, PREFIX_END, hash_prefixes, load_previous

# a shard actor's peak while it loads, over its share of the index: the parts' arrays, their join and the sorted copy,
# and the reads in flight (benchmarks/reuse_shards.py: 3.1x for one shard of 10^7 texts, 4.3x for each of four)
LOAD_PEAK_FACTOR = 4.5
MIN_SHARD_BYTES = 256 * 2**20  # the reads in flight and the allocator's pools, whatever the share
# the most of the cluster's memory that the shards may reserve in all: the rest is the scoring actors' and Ray's
CLUSTER_MEMORY_SHARE = 0.5
SHARD_CONCURRENCY = 8  # lookups from several scoring actors at once (numpy's search releases the GIL)

log = logging.getLogger("bertclf")


def index_bytes(rows: int, labels: int) -> int:
    """A previous output's index in memory: a hash and a float32 per label for each of (at most) `rows` texts."""
    return rows * (HASH_BYTES + 4 * labels)


def shard_count(rows: int, labels: int, max_mb: int) -> int:
    """How many shards keep each under `max_mb` (reuse_index_max_mb)."""
    return max(1, math.ceil(index_bytes(rows, labels) / (max_mb * 2**20)))


def reserved_bytes(rows: int, labels: int, shards: int) -> int:
    """The Ray `memory` one shard reserves: its loading peak."""
    return max(MIN_SHARD_BYTES, int(index_bytes(rows, labels) / shards * LOAD_PEAK_FACTOR))


def fits_cluster(rows: int, labels: int, cluster_memory: float, max_mb: int) -> str:
    """"" when the shards' loading peak fits the cluster's memory share, else why not (the reuse note)."""
    shards = shard_count(rows, labels, max_mb)
    need = reserved_bytes(rows, labels, shards) * shards
    if not cluster_memory or need <= cluster_memory * CLUSTER_MEMORY_SHARE:
        return ""
    return (f"its index ({rows:,} rows, {need / 2**30:.1f} GiB while loading) is over {CLUSTER_MEMORY_SHARE:.0%} of "
            f"the cluster's memory ({cluster_memory / 2**30:.1f} GiB): every text is scored")


def bounds(shards: int) -> tuple[int, ...]:
    """The `shards + 1` range bounds on the hashes' first 8 bytes (a big-endian uint64)."""
    return tuple(k * PREFIX_END // shards for k in range(shards)) + (PREFIX_END,)


class IndexShard:
    """Ray actor: the texts of a previous output whose hash prefix is in [lo, hi), by the precision they were
    scored at; `find` answers a scoring actor's lookups."""

    def __init__(self, source: ReuseSource, key: dict[str, Any], labels: int, lo: int, hi: int):
        t0 = time.perf_counter()
        self.labels = labels
        self.texts, self.skipped = load_previous(source, key, labels, lo, hi)
        self.load_seconds = time.perf_counter() - t0

    def ready(self) -> dict[str, Any]:
        """What it loaded (called once by the driver, which waits for every shard before scoring)."""
        return {"texts": sum(len(t) for t in self.texts.values()),
                "bytes": sum(t.nbytes for t in self.texts.values()), "precisions": sorted(self.texts),
                "skipped": self.skipped[:5], "skipped_count": len(self.skipped), "seconds": self.load_seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def find(self, hashes: np.ndarray, precision: str, probs: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(found per hash, the probabilities of the found ones in order: none unless `probs`)."""
        texts = self.texts.get(precision)
        if texts is None:
            return np.zeros(len(hashes), bool), np.empty((0, self.labels), np.float32)
        found, pos = texts.lookup(hashes)
        return found, texts.probs[pos[found]] if probs else np.empty((0, self.labels), np.float32)


@dataclass(frozen=True)
class ShardedIndex:
    """A scoring actor's view of the shards (picklable: actor handles and bounds): find probabilities by hash."""

    shards: tuple[Any, ...]  # IndexShard actor handles, one per range
    bounds: tuple[int, ...]
    labels: int

    def find(self, hashes: np.ndarray, precision: str, probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(found per hash, probabilities per hash with rows of zeros where not found; None, and none sent, unless
        `probs`): each shard is asked for its own hashes, all at once."""
        import ray

        found = np.zeros(len(hashes), bool)
        out = np.zeros((len(hashes), self.labels), np.float32) if probs else None
        owner = self.owners(hashes)
        asked = [(k, rows) for k in range(len(self.shards)) if len(rows := np.flatnonzero(owner == k))]
        answers = ray.get([self.shards[k].find.remote(hashes[rows], precision, probs) for k, rows in asked])
        for (_, rows), (hit, shard_probs) in zip(asked, answers, strict=True):
            found[rows[hit]] = True
            if out is not None:
                out[rows[hit]] = shard_probs
        return found, out

    def owners(self, hashes: np.ndarray) -> np.ndarray:
        """The shard of each hash."""
        if len(self.shards) == 1:
            return np.zeros(len(hashes), np.int64)
        inner = np.array(self.bounds[1:-1], np.uint64)
        return np.searchsorted(inner, hash_prefixes(hashes), side="right")


def start(source: ReuseSource, key: dict[str, Any], labels: int, shards: int) -> ShardedIndex | None:
    """Start the shard actors, spread over the cluster with their memory reserved, and wait until each has loaded
    its range; None (logged) when they can't load: reuse only saves work, so the run scores every text instead."""
    import ray

    edges = bounds(shards)
    per_shard = index_bytes(source.rows, labels) / shards
    actor = ray.remote(IndexShard).options(num_cpus=0, memory=reserved_bytes(source.rows, labels, shards),
                                           max_concurrency=SHARD_CONCURRENCY, scheduling_strategy="SPREAD")
    index = ShardedIndex(shards=tuple(actor.remote(source, key, labels, edges[k], edges[k + 1]) for k in range(shards)),
                         bounds=edges, labels=labels)
    t0 = time.perf_counter()
    log.info("reuse: loading the index of %s (%d part(s), up to %s texts) into %d shard actor(s) of at most %.0f MiB",
             source.output, len(source.parts), f"{source.rows:,}", shards, per_shard / 2**20)
    try:
        loaded = ray.get([h.ready.remote() for h in index.shards])
    except Exception as exc:  # noqa: BLE001 - a storage error or a lost node while loading: score every text
        log.warning("reuse: the index of %s could not be loaded (%s: %s): every text is scored", source.output,
                    type(exc).__name__, exc)
        stop(index)
        return None
    texts = sum(r["texts"] for r in loaded)
    skipped = sum(r["skipped_count"] for r in loaded) // shards  # each shard reads (and skips) every index
    for line in loaded[0]["skipped"]:
        log.warning("reuse: not reusing the index of %s", line)
    log.info("reuse: %s distinct texts (%.1f MiB, %s) loaded in %.1fs over %d shard(s); %d index(es) left out",
             f"{texts:,}", sum(r["bytes"] for r in loaded) / 2**20,
             ", ".join(sorted({p for r in loaded for p in r["precisions"]})) or "none", time.perf_counter() - t0,
             shards, skipped)
    return index


def stop(index: ShardedIndex | None) -> None:
    """Free the shards' memory once the units are scored."""
    import ray

    for handle in index.shards if index is not None else ():
        ray.kill(handle)


__all__ = ["IndexShard", "ShardedIndex", "bounds", "fits_cluster", "index_bytes", "reserved_bytes", "shard_count",
           "start", "stop"]
