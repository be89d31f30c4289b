"""Benchmark: the previous night's reuse index in shard actors against one whole copy per scoring actor (issue 34).

    python benchmarks/reuse_shards.py [--texts 1000000,10000000] [--shards 1,4] [--json PATH]

For each index size (distinct random texts in parts of 20,000, written with the reuse module's writer by
benchmarks/scale.py's `write_previous_index`, on local disk), on a local Ray of the machine's CPUs:
- baseline: one actor loads the whole index as every scoring actor did before (`load_previous`, full range) and
  looks up batches of 20,000 distinct hashes (half of them in the index) in process;
- shards: `bertclf.scoring.shards.start` with K shard actors, then a prober actor (standing in for a scoring actor)
  sends the same batches through `ShardedIndex.find`.
Each reports the load's wall time, each process's RSS growth over an idle actor's (its `ru_maxrss` less the idle
worker's), and milliseconds per batch of 20,000 lookups; the ratios printed are per-process memory (baseline /
largest shard) and lookup time (shards / baseline). The cluster's memory for A scoring actors is A x the baseline
before and the sum of the shards now.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import common as bc

bc.setup_env()

BATCH = 20_000
BATCHES = 20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Idle:
    """A worker with the modules a shard imports and nothing loaded: the RSS every actor starts from."""

    def __init__(self):
        import bertclf.scoring.shards  # noqa: F401 - the imports a shard has

    def rss(self) -> float:
        return _rss_mb()


class Whole:
    """The baseline: one scoring actor's whole copy of the index (before shards)."""

    def __init__(self, output: str, names: list[str], labels: int):
        from bertclf.records import ReuseSource
        from bertclf.scoring.reuse import load_previous

        t0 = time.perf_counter()
        self.texts = load_previous(ReuseSource(output=output, parts=names, rows=0), {"bench": True}, labels)[0]["fp32"]
        self.seconds = time.perf_counter() - t0

    def loaded(self) -> dict:
        return {"seconds": self.seconds, "texts": len(self.texts), "peak_rss_mb": _rss_mb()}

    def probe(self, batches: list) -> float:
        t0 = time.perf_counter()
        for hashes in batches:
            found, pos = self.texts.lookup(hashes)
            self.texts.probs[pos[found]]
        return 1000 * (time.perf_counter() - t0) / len(batches)


class Prober:
    """A scoring actor's side of the shards: ShardedIndex.find per batch."""

    def probe(self, index, batches: list) -> tuple[float, int]:
        t0 = time.perf_counter()
        found = sum(int(index.find(hashes, "fp32")[0].sum()) for hashes in batches)
        return 1000 * (time.perf_counter() - t0) / len(batches), found


def batches_of(output: str, names: list[str], labels: int) -> list:
    """BATCHES batches of BATCH distinct hashes: half from the index (spread over its parts), half new."""
    import numpy as np

    from bertclf.scoring.reuse import HASH_DTYPE, INDEX_DIR, read_index

    rng = np.random.default_rng(0)
    known = np.concatenate([read_index(f"{output}/{INDEX_DIR}/{n}", labels)[1]
                            for n in names[:: max(1, len(names) // 8)]])
    out = []
    for _ in range(BATCHES):
        new = rng.integers(0, 256, size=(BATCH // 2, 16), dtype=np.uint8).view(HASH_DTYPE).reshape(-1)
        out.append(np.unique(np.concatenate([rng.choice(known, BATCH // 2, replace=False), new])))
    return out


def one_size(texts: int, shard_counts: list[int], workdir: Path) -> dict:
    import ray
    from scale import LABELS, write_previous_index

    from bertclf.records import ReuseSource
    from bertclf.scoring import shards

    index = write_previous_index(workdir, texts, str(workdir / "local"))
    batches = batches_of(index["output"], index["names"], LABELS)
    idle = ray.remote(Idle).options(num_cpus=0).remote()
    base = ray.get(idle.rss.remote())
    whole = ray.remote(Whole).options(num_cpus=0).remote(index["output"], index["names"], LABELS)
    loaded = ray.get(whole.loaded.remote())
    baseline = {**loaded, "rss_growth_mb": round(loaded["peak_rss_mb"] - base, 1),
                "ms_per_batch": round(ray.get(whole.probe.remote(batches)), 2)}
    ray.kill(whole)
    print(f"[bench] {texts:,} texts, one whole copy per actor: loaded in {baseline['seconds']:.1f}s, "
          f"+{baseline['rss_growth_mb']:.0f} MiB, {baseline['ms_per_batch']:.1f} ms per {BATCH:,} lookups", flush=True)
    prober = ray.remote(Prober).options(num_cpus=0).remote()
    out = {"texts": texts, "index_bytes": index["index_bytes"], "parts": index["parts"], "idle_rss_mb": base,
           "baseline": baseline, "sharded": []}
    source = ReuseSource(output=index["output"], parts=index["names"], rows=texts)
    for k in shard_counts:
        t0 = time.perf_counter()
        sharded = shards.start(source, {"bench": True}, LABELS, k)
        seconds = time.perf_counter() - t0
        assert sharded is not None, "the shards did not load"
        ready = ray.get([s.ready.remote() for s in sharded.shards])
        ms, found = ray.get(prober.probe.remote(sharded, batches))
        shards.stop(sharded)
        growth = [r["peak_rss_mb"] - base for r in ready]
        row = {"shards": k, "seconds": round(seconds, 2), "texts": sum(r["texts"] for r in ready),
               "shard_load_seconds": [round(r["seconds"], 2) for r in ready],
               "rss_growth_mb": [round(g, 1) for g in growth], "ms_per_batch": round(ms, 2), "found": found,
               "memory_ratio": round(baseline["rss_growth_mb"] / max(growth), 2),
               "lookup_ratio": round(ms / baseline["ms_per_batch"], 2)}
        assert row["texts"] == baseline["texts"], "the shards hold the whole index between them"
        out["sharded"].append(row)
        print(f"[bench] {texts:,} texts, {k} shard(s): loaded in {seconds:.1f}s, largest shard +{max(growth):.0f} MiB "
              f"(baseline/shard {row['memory_ratio']}x), {ms:.1f} ms per {BATCH:,} lookups "
              f"({row['lookup_ratio']}x the in-process lookup)", flush=True)
    ray.kill(prober)
    ray.kill(idle)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", default="1000000,10000000")
    p.add_argument("--shards", default="1,4")
    p.add_argument("--workdir", default=str(bc.DEFAULT_RUNS_DIR / "bench_scale"))
    p.add_argument("--json")
    args = p.parse_args()
    import ray

    started = bc.now_utc()
    machine = bc.machine_info()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=machine["logical_cores"], include_dashboard=False, log_to_driver=False)
    try:
        sizes = [one_size(int(t), [int(k) for k in args.shards.split(",")], workdir) for t in args.texts.split(",")]
    finally:
        ray.shutdown()
    machine["load_avg_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    result = {"benchmark": "reuse_shards", "date": started, "finished": bc.now_utc(),
              "warning": bc.contention_warning(machine), "cpu_class": machine["cpu_class"], "machine": machine,
              "versions": bc.versions(), "batch": BATCH, "batches": BATCHES, "sizes": sizes}
    bc.write_json(bc.result_path("reuse-shards", machine, started, args.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
