"""Online endpoint under load: `bertclf serve` on 127.0.0.1 against the same texts through `bertclf predict`'s
code in this process, measured in the same run.

For each request size (1 and 32 texts) a fixed number of requests is sent by concurrent client threads, with a
time limit; every answer is checked (HTTP 200, one prediction per text sent). Reported: requests/s, texts/s,
p50/p95/p99 latency, failed and lost answers, and the RSS of every process of the benchmark's Ray session after
each half of each run (memory flat = the second half ends where the first did; after a warm-up).

    python benchmarks/serve.py --checkpoint runs/youtube/best --requests 300 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402

from bertclf.dev.ports import free_port  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a bertclf checkpoint (e.g. runs/youtube/best)")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR), help="where goemotions/ lives (texts to send)")
    p.add_argument("--requests", type=int, default=300, help="requests per request size")
    p.add_argument("--concurrency", type=int, default=8, help="client threads")
    p.add_argument("--sizes", default="1,32", help="texts per request, comma-separated")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per request size at most")
    p.add_argument("--replicas", type=int, default=None, help="default: one per CPU")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-serve-<cpu class>.json)")
    return p.parse_args(argv)


def post(url: str, texts: list[str]) -> tuple[int, int, float]:
    """(status, predictions answered, seconds) of one /predict request."""
    body = json.dumps({"texts": texts}).encode()
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answered = len(json.loads(response.read())["predictions"])
            return response.status, answered, time.perf_counter() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, 0, time.perf_counter() - t0
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, 0, time.perf_counter() - t0


def load_run(url: str, texts: list[str], size: int, requests: int, concurrency: int, time_limit: float,
             offset: int = 0) -> dict:
    """Send `requests` requests of `size` texts from `concurrency` threads, stopping at `time_limit` s."""
    deadline = time.perf_counter() + time_limit
    lock = threading.Lock()
    latencies: list[float] = []
    failed = lost = sent = 0

    def one(i: int) -> None:
        nonlocal failed, lost, sent
        if time.perf_counter() > deadline:
            return
        batch = [texts[((offset + i) * size + k) % len(texts)] for k in range(size)]
        status, answered, seconds = post(url, batch)
        with lock:
            sent += 1
            latencies.append(seconds)
            failed += status != 200
            lost += status == 200 and answered != size
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    q = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(q[min(len(q) - 1, int(p * len(q)))] * 1000, 1) if q else None
    return {"texts_per_request": size, "requests_sent": sent, "failed": failed, "lost_answers": lost,
            "seconds": round(wall, 2), "requests_per_s": round(sent / wall, 2),
            "texts_per_s": round(sent * size / wall, 1),
            "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99)},
            "stopped_by_time_limit": sent < requests}


def flat_memory_run(url: str, texts: list[str], size: int, args: argparse.Namespace, sampler) -> dict:
    """A load run in two halves, with the session's RSS after each: growth in the second half means a leak."""
    first = load_run(url, texts, size, args.requests // 2, args.concurrency, args.time_limit / 2)
    after_first = sampler.rss_now_mb()
    second = load_run(url, texts, size, args.requests - args.requests // 2, args.concurrency, args.time_limit / 2,
                      offset=args.requests // 2)
    after_second = sampler.rss_now_mb()
    both = [first, second]
    sent = sum(r["requests_sent"] for r in both)
    wall = sum(r["seconds"] for r in both)
    return {"texts_per_request": size, "requests_sent": sent, "failed": sum(r["failed"] for r in both),
            "lost_answers": sum(r["lost_answers"] for r in both), "seconds": round(wall, 2),
            "requests_per_s": round(sent / wall, 2), "texts_per_s": round(sent * size / wall, 1),
            "latency_ms_halves": [first["latency_ms"], second["latency_ms"]], "latency_ms": second["latency_ms"],
            "memory_after_first_half_mb": after_first, "memory_after_second_half_mb": after_second,
            "memory_growth_second_half": round(after_second / after_first, 3),
            "stopped_by_time_limit": any(r["stopped_by_time_limit"] for r in both)}


def in_process_rate(checkpoint: str, texts: list[str], size: int, precision: str, seconds: float = 20.0) -> float:
    """texts/s of `Predictor.predict` (what `bertclf predict` runs) on batches of `size`, in this process."""
    import torch

    from bertclf.model.inference import Predictor

    torch.set_num_threads(os.cpu_count() or 1)
    predictor = Predictor.load(checkpoint, precision=precision)
    predictor.predict(texts[:size])  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predictor.predict([texts[(done + k) % len(texts)] for k in range(size)])
        done += size
    return round(done / (time.perf_counter() - t0), 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bc.setup_env()
    from ray import serve

    from bertclf.config import ServeConfig
    from bertclf.serve import start

    started = bc.now_utc()
    machine = bc.machine_info()
    texts = bc.read_goemotions(args.data_dir, "validation", ["text"])["text"].to_pylist()
    sizes = [int(s) for s in args.sizes.split(",")]
    precision = bc.precision_for(args.precision)
    baseline = {size: in_process_rate(args.checkpoint, texts, size, args.precision) for size in sizes}
    print(f"[bench] in-process Predictor.predict texts/s: {baseline}", flush=True)

    session, _ = bc.start_ray()
    cpus = os.cpu_count() or 1
    replicas = args.replicas or cpus
    port = free_port()
    url = start(ServeConfig(checkpoint=str(Path(args.checkpoint).resolve()), port=port, replicas=replicas,
                            cpus_per_replica=max(1.0, cpus / replicas) if replicas <= cpus else 1.0,
                            precision=args.precision))
    for size in sizes:  # warm-up: replicas, batch shapes and allocator pools reach their steady state
        load_run(url, texts, size, 2 * args.concurrency, args.concurrency, args.time_limit)
    sampler = bc.MemorySampler(session)
    memory_before = sampler.rss_now_mb()
    sampler.start()
    runs = [flat_memory_run(url, texts, size, args, sampler) for size in sizes]
    memory = sampler.stop()
    serve.shutdown()
    bc.stop_ray()
    for run in runs:
        run["in_process_texts_per_s"] = baseline[run["texts_per_request"]]
        run["vs_in_process"] = round(run["texts_per_s"] / baseline[run["texts_per_request"]], 3)
        print(f"[bench] {run['texts_per_request']:>3} text(s)/request: {run['requests_per_s']} req/s, "
              f"{run['texts_per_s']} texts/s ({run['vs_in_process']}x in-process), latency {run['latency_ms']}, "
              f"failed {run['failed']}, lost {run['lost_answers']}, memory {run['memory_after_first_half_mb']} -> "
              f"{run['memory_after_second_half_mb']} MB", flush=True)
    result = {"benchmark": "serve", "date": started[:10], "started": started, "machine": machine,
              "cpu_class": machine["cpu_class"],
              "precision": precision, "checkpoint": args.checkpoint, "replicas": replicas,
              "concurrency": args.concurrency, "runs": runs, "memory_before_load_mb": round(memory_before, 1),
              "memory_peak_during_load_mb": memory["peak_rss_mb"],
              "memory_growth_second_half": max(r["memory_growth_second_half"] for r in runs),
              "versions": bc.versions(), "warning": bc.contention_warning(machine)}
    path = bc.result_path("serve", machine, started, args.json)
    bc.write_json(path, result)
    return 0 if all(r["failed"] == 0 and r["lost_answers"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
