"""Where a scoring actor's time goes: a per-op profile of bertclf's forward over one actor's micro-batches.

    python benchmarks/ops.py --checkpoint runs/demo/best [--rows 1024] [--threads 1] [--compile off] [--json PATH]

Scores --rows GoEmotions validation texts the way a scoring actor does (Predictor: sorted by length, token-budget
micro-batches, the precision bertclf picks for this CPU) on --threads torch threads (an actor's share), once to warm
up and once under torch.profiler. Prints and writes each op's share of the time. The matrix multiplies' achieved
GFLOP/s (the profiler's FLOP count for addmm/mm/bmm) are compared with the matmul peak on the same thread count.
That tells how much of the gap to the peak is the GEMMs' own efficiency at these shapes, and how much is the other
ops (GELU, copies, softmax, layer norm). Results: benchmarks/results/<date>-ops-<cpu class>.json; README's
performance section shows the newest per CPU class.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402

MATMULS = ("aten::addmm", "aten::mm", "aten::bmm")
SHOWN = 8  # ops listed by name; the rest are summed into "other"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (e.g. runs/demo/best)")
    p.add_argument("--rows", type=int, default=1024, help="validation texts scored under the profiler")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a CPU scoring actor has 1 per CPU)")
    p.add_argument("--compile", default="off", choices=["off", "on"], help="profile the compiled graph instead")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR))
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-ops-<cpu class>.json)")
    return p.parse_args(argv)


def profile_ops(predictor, token_ids: list[list[int]]) -> tuple[list[dict], float]:
    """Per op: self CPU milliseconds, share of the total, and (for matmuls) FLOPs; and the wall seconds."""
    from torch.profiler import ProfilerActivity, profile

    predictor.probabilities_for_ids(token_ids)  # warm-up: kernels, thread pool, a compiled graph's load
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t0 = time.perf_counter()
        predictor.probabilities_for_ids(token_ids)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(({"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                   "calls": e.count, "flops": int(e.flops or 0)} for e in events), key=lambda o: -o["self_ms"])
    return ops, wall


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bc.setup_env()
    import torch

    from bertclf.model.inference import Predictor

    machine = bc.machine_info()
    started = bc.now_utc()
    precision = bc.precision_for("auto")
    peak = bc.matmul_peak_gflops(precision, threads=args.threads)
    torch.set_num_threads(args.threads)
    texts = bc.read_goemotions(args.data_dir, "validation", ["text"]).column("text").to_pylist()[:args.rows]
    predictor = Predictor.load(args.checkpoint, device="cpu", precision=precision, compile=args.compile)
    ops, wall = profile_ops(predictor, predictor.token_ids(texts))

    matmul = [o for o in ops if o["op"] in MATMULS]
    matmul_seconds = sum(o["self_ms"] for o in matmul) / 1e3
    matmul_gflops = sum(o["flops"] for o in matmul) / matmul_seconds / 1e9 if matmul_seconds else None
    rest = ops[SHOWN:]
    shown = ops[:SHOWN] + [{"op": "other", "self_ms": sum(o["self_ms"] for o in rest),
                            "share": sum(o["share"] for o in rest), "calls": sum(o["calls"] for o in rest), "flops": 0}]
    result = {"benchmark": "ops", "date": started[:10], "started": started, "cpu_class": machine["cpu_class"],
              "machine": machine, "versions": bc.versions(), "checkpoint": args.checkpoint, "rows": len(texts),
              "threads": args.threads, "precision": precision, "compile": args.compile, "wall_seconds": wall,
              "rows_per_s": len(texts) / wall, "matmul_peak_gflops": peak, "matmul_share":
                  sum(o["share"] for o in matmul), "matmul_gflops": matmul_gflops,
              "matmul_fraction_of_peak": matmul_gflops / peak if matmul_gflops else None, "ops": shown,
              "warning": bc.contention_warning(machine)}
    print(f"[bench] {len(texts)} rows in {wall:.2f} s ({result['rows_per_s']:.0f} rows/s, {args.threads} thread(s), "
          f"{precision}, compile {args.compile}); matmuls {result['matmul_share']:.0%} of the time at "
          f"{matmul_gflops:.1f} GFLOP/s = {result['matmul_fraction_of_peak']:.2f} of the {peak:.1f} GFLOP/s peak",
          flush=True)
    for o in shown:
        print(f"  {o['op']:<28} {o['share']:6.1%}  {o['self_ms']:9.1f} ms  {o['calls']:5d} calls", flush=True)
    bc.write_json(Path(args.json) if args.json else bc.result_path("ops", machine, started), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
