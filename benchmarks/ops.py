"""Where a scoring actor's time goes: a per-op profile of bertclf's forward over one actor's micro-batches.

    python benchmarks/ops.py --checkpoint runs/demo/best [--rows 1024] [--threads 1] [--compile off] [--precision P]
        [--json PATH]
        [--budgets 2048x64,4096x128,8192x256 [--pairs 3]]

Scores --rows GoEmotions validation texts the way a scoring actor does (Predictor: sorted by length, token-budget
micro-batches, the precision bertclf picks for this CPU) on --threads torch threads (an actor's share), once to warm
up and once under torch.profiler. Prints and writes each op's share of the time. The matrix multiplies' achieved
GFLOP/s (the profiler's FLOP count for addmm/mm/bmm) are compared with the matmul peak on the same thread count.
That tells how much of the gap to the peak is the GEMMs' own efficiency at these shapes, and how much is the other
ops (GELU, copies, softmax, layer norm). With --budgets, the same rows are also scored (no profiler) at each
micro-batch budget (tokens x rows), in --pairs rotating rounds, against bertclf's CPU budget: the figure that decides
a CPU class's budget (bertclf.resources' CPU budget; AMX may want larger tiles than AVX2). Results:
benchmarks/results/<date>-ops-<cpu class>.json; README's performance section shows the newest per CPU class.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402

MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "quantized::linear_dynamic")  # the last: int8, FLOPs not counted
SHOWN = 8  # ops listed by name; the rest are summed into "other"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (e.g. runs/demo/best)")
    p.add_argument("--rows", type=int, default=1024, help="validation texts scored under the profiler")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a CPU scoring actor has 1 per CPU)")
    p.add_argument("--compile", default="off", choices=["off", "on"], help="profile the compiled graph instead")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                   help="the forward's precision (auto: what bertclf picks on this CPU without a gate record)")
    p.add_argument("--budgets", default="", help="micro-batch budgets to time, TOKENSxROWS,... (e.g. 4096x128)")
    p.add_argument("--pairs", type=int, default=3, help="rotating rounds of the --budgets timing")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR))
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-ops-<cpu class>.json)")
    args = p.parse_args(argv)
    try:
        args.budgets = [tuple(int(v) for v in b.lower().split("x")) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        p.error(f"--budgets: expected TOKENSxROWS,... (e.g. 2048x64,4096x128), got {args.budgets!r}")
    if any(len(b) != 2 or min(b) < 1 for b in args.budgets):
        p.error(f"--budgets: each budget is two positive numbers, TOKENSxROWS; got {args.budgets}")
    return args


def profile_ops(predictor, token_ids: list[list[int]]) -> tuple[list[dict], float]:
    """Per op: self CPU milliseconds, share of the total, and (for matmuls) FLOPs; and the wall seconds."""
    from torch.profiler import ProfilerActivity, profile

    predictor.transformer_probabilities(token_ids)  # warm-up: kernels, thread pool, a compiled graph's load
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t0 = time.perf_counter()
        predictor.transformer_probabilities(token_ids)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(({"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                   "calls": e.count, "flops": int(e.flops or 0)} for e in events), key=lambda o: -o["self_ms"])
    return ops, wall


def time_budgets(predictor, token_ids: list[list[int]], budgets: list[tuple[int, int]], pairs: int) -> dict:
    """rows/s of the same rows at each micro-batch budget (the predictor's, an actor's, first), `pairs` rounds in
    rotating order, and each budget's median ratio to the actor's, round by round."""
    import statistics

    names = [f"{t}x{r}" for t, r in dict.fromkeys([(predictor.max_tokens, predictor.max_rows), *budgets])]
    rates: dict[str, list[float]] = {n: [] for n in names}

    def run(name: str) -> float:
        predictor.max_tokens, predictor.max_rows = (int(v) for v in name.split("x"))
        t0 = time.perf_counter()
        predictor.transformer_probabilities(token_ids)
        return len(token_ids) / (time.perf_counter() - t0)

    for name in names:  # warm-up: each budget's shapes once
        run(name)
    for r in range(pairs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(run(name))
        print("[bench] budgets, round " + str(r + 1) + ": " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names),
              flush=True)
    default = names[0]
    return {"rows_per_s": {n: statistics.median(v) for n, v in rates.items()}, "rounds": rates, "default": default,
            "vs_default": {n: statistics.median(a / b for a, b in zip(v, rates[default], strict=True))
                           for n, v in rates.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bc.setup_env()
    import torch

    from bertclf.model.inference import Predictor
    from bertclf.resources import plan_scoring

    machine = bc.machine_info()
    started = bc.now_utc()
    precision = bc.precision_for(args.precision)
    peak = bc.matmul_peak_gflops(precision, threads=args.threads) if bc.can_time(precision) else None  # none: int8
    torch.set_num_threads(args.threads)
    texts = bc.read_goemotions(args.data_dir, "validation", ["text"]).column("text").to_pylist()[:args.rows]
    plan = plan_scoring({"CPU": 1})  # a CPU scoring actor's micro-batches (Predictor.load's own defaults are larger)
    tokens, rows = plan.max_tokens_per_batch, plan.max_batch_rows
    predictor = Predictor.load(args.checkpoint, device="cpu", precision=precision, compile=args.compile,
                               max_tokens=tokens, max_rows=rows)
    token_ids = predictor.token_ids(texts)
    ops, wall = profile_ops(predictor, token_ids)

    matmul = [o for o in ops if o["op"] in MATMULS]
    matmul_seconds = sum(o["self_ms"] for o in matmul) / 1e3
    matmul_gflops = (sum(o["flops"] for o in matmul) / matmul_seconds / 1e9
                     if matmul_seconds and precision != "int8" else None)
    rest = ops[SHOWN:]
    shown = ops[:SHOWN] + [{"op": "other", "self_ms": sum(o["self_ms"] for o in rest),
                            "share": sum(o["share"] for o in rest), "calls": sum(o["calls"] for o in rest), "flops": 0}]
    result = {"benchmark": "ops", "date": started[:10], "started": started, "cpu_class": machine["cpu_class"],
              "machine": machine, "versions": bc.versions(), "checkpoint": args.checkpoint, "rows": len(texts),
              "threads": args.threads, "precision": precision, "compile": args.compile, "wall_seconds": wall,
              "micro_batch_budget": {"tokens": tokens, "rows": rows},
              "rows_per_s": len(texts) / wall, "matmul_peak_gflops": peak, "matmul_share":
                  sum(o["share"] for o in matmul), "matmul_gflops": matmul_gflops,
              "matmul_fraction_of_peak": matmul_gflops / peak if matmul_gflops and peak else None, "ops": shown,
              "warning": bc.contention_warning(machine),
              "budgets": time_budgets(predictor, token_ids, args.budgets, args.pairs) if args.budgets else None}
    rate = (f" at {matmul_gflops:.1f} GFLOP/s = {result['matmul_fraction_of_peak']:.2f} of the {peak:.1f} GFLOP/s peak"
            if result["matmul_fraction_of_peak"] else "")
    print(f"[bench] {len(texts)} rows in {wall:.2f} s ({result['rows_per_s']:.0f} rows/s, {args.threads} thread(s), "
          f"{precision}, compile {args.compile}); matmuls {result['matmul_share']:.0%} of the time{rate}", flush=True)
    for o in shown:
        print(f"  {o['op']:<28} {o['share']:6.1%}  {o['self_ms']:9.1f} ms  {o['calls']:5d} calls", flush=True)
    bc.write_json(Path(args.json) if args.json else bc.result_path("ops", machine, started), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
