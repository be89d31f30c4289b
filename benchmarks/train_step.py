"""Benchmark: where a training step's time goes (issue 33): data, forward, backward, DDP's all-reduce, optimizer.

    python benchmarks/train_step.py [--workers 2] [--batch-size 32] [--steps 40] [--max-length 128] [--json PATH]

bertclf's own step, as each Ray Train worker runs it, without Ray: `--workers` processes joined by torch.distributed
(gloo, as Ray Train's CPU workers are), each with cores / workers torch threads, the packaged all-MiniLM-L6-v2 with a
28-label head (build_classifier, head in fp32, DDP with gradient_as_bucket_view, fused AdamW, clipping), on its
rank's share of GoEmotions train rows in bertclf's length-grouped batches (bertclf.training.batching, tokenized as the
loop goes), each step through `bertclf.training.step.accumulate_gradients` with its phase marks. The precision is what
bertclf trains at on this CPU (bf16 autocast where native, else fp32).

Per step and rank: `data` (the next batch: tokenizing a pool, padding), `forward` (loss included), `backward` (with
DDP's all-reduce where it isn't hidden behind the backward), `optimizer` (clipping, the AdamW step, zero_grad).
With more than one worker, the steps alternate between DDP's all-reduce and its no_sync (so warm-up and the pools'
tokenization fall on both alike); the backward's difference is what the all-reduce costs where the backward doesn't
hide it. FLOPs: torch.utils.flop_counter over one batch's forward + backward gives FLOPs per padded token,
times the run's padded tokens; the training peak fraction is those FLOPs over forward + backward time against the
matmul peak at the run's precision on all cores (measured here first).
Results: one JSON (default benchmarks/results/<date>-train-step-<cpu class>.json) and a table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import common as bc

bc.setup_env()

PHASES = ("data", "forward", "backward", "optimizer")
WARMUP_STEPS = 3


def goemotions(data_dir: str, rows: int) -> tuple[list[str], list[list[str]]]:
    table = bc.read_goemotions(data_dir, "train", ["text", "labels"]).slice(0, rows)
    return table["text"].to_pylist(), table["labels"].to_pylist()


def rank_main(rank: int, spec: dict) -> None:
    """One worker: build as bertclf's worker does, then time its steps by phase; writes rank<r>.json."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.utils.flop_counter import FlopCounterMode

    from bertclf.labels import LabelSpace
    from bertclf.model.modeling import build_classifier, keep_head_in_fp32, load_tokenizer, resolve_model_dir
    from bertclf.training.batching import length_grouped_batches
    from bertclf.training.step import StepContext, accumulate_gradients

    world = spec["workers"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    texts, labels = goemotions(spec["data_dir"], spec["rows"])
    names = sorted({name for row in labels for name in row})
    target = np.zeros((len(texts), len(names)), np.float32)
    for i, row in enumerate(labels):
        target[i, [names.index(n) for n in row]] = 1.0
    model_dir = resolve_model_dir(spec["model"])
    tokenizer = load_tokenizer(model_dir)
    model = build_classifier(model_dir, LabelSpace("multi_label", names), False, "cpu")
    keep_head_in_fp32(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    step = StepContext(model=ddp, device=torch.device("cpu"), bf16=spec["precision"] == "bf16",
                       loss_fn=torch.nn.BCEWithLogitsLoss(), max_tokens_per_batch=spec["max_tokens"])
    mine = slice(rank, None, world)
    pool = spec["batch_size"] * spec["length_group_batches"]
    ids = np.arange(len(texts))[mine]

    def batches():
        pools = ({"text": np.asarray([texts[i] for i in ids[k:k + pool]], dtype=object),
                  "target": target[ids[k:k + pool]]} for k in range(0, len(ids), pool))
        return length_grouped_batches(pools, tokenizer, max_length=spec["max_length"], batch_size=spec["batch_size"],
                                      seed=0)

    modes = ("all_reduce", "no_sync") if world > 1 else ("all_reduce",)
    totals = {m: {"seconds": {p: 0.0 for p in PHASES}, "steps": 0, "samples": 0, "padded_tokens": 0} for m in modes}
    it = batches()
    dist.barrier()
    t_run = time.perf_counter()
    for n in range(WARMUP_STEPS + spec["steps"] * len(modes)):
        if n == WARMUP_STEPS:
            dist.barrier()
            t_run = time.perf_counter()
        # the modes alternate step by step, so warm-up effects and the pools' tokenization fall on both alike
        mode = modes[n % len(modes)]
        seconds = {p: 0.0 for p in PHASES}
        t0 = time.perf_counter()
        batch = next(it)
        clock = [time.perf_counter()]
        seconds["data"] += clock[0] - t0

        def mark(phase: str) -> None:
            now = time.perf_counter()
            seconds[phase] += now - clock[0]  # noqa: B023 - this step's clock and totals
            clock[0] = now  # noqa: B023

        with ddp.no_sync() if mode == "no_sync" else torch.enable_grad():
            accumulate_gradients(step, batch, mark)
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds["optimizer"] += time.perf_counter() - t1
        if n >= WARMUP_STEPS:
            total = totals[mode]
            for p in PHASES:
                total["seconds"][p] += seconds[p]
            total["steps"] += 1
            total["samples"] += len(batch.target)
            total["padded_tokens"] += int(batch.attention_mask.numel())
    result: dict = {"rank": rank, "wall_seconds": time.perf_counter() - t_run, **totals}
    if rank == 0:  # FLOPs per padded token of one batch's forward + backward, counted by torch on the bare model
        batch = next(batches())
        counter = FlopCounterMode(display=False)
        with counter:
            accumulate_gradients(dataclasses.replace(step, model=model), batch)
        optimizer.zero_grad(set_to_none=True)
        result["flops_per_padded_token"] = counter.get_total_flops() / int(batch.attention_mask.numel())
    dist.destroy_process_group()
    Path(spec["out_dir"], f"rank{rank}.json").write_text(json.dumps(result))


def summarize(ranks: list[dict], peak_gflops: float | None) -> dict:
    """Rank 0's phases per mode (every rank runs the same steps of the same sizes); samples/s of all ranks with the
    all-reduce, from each step's own time (the modes alternate); its cost; the training peak fraction."""
    modes = [m for m in ("all_reduce", "no_sync") if m in ranks[0]]
    out: dict = {"modes": modes}
    for mode in modes:
        r0 = ranks[0][mode]
        step_seconds = max(sum(r[mode]["seconds"].values()) / r[mode]["steps"] for r in ranks)
        out[mode] = {"samples_per_s": len(ranks) * r0["samples"] / r0["steps"] / step_seconds,
                     "ms_per_step": {p: 1000 * r0["seconds"][p] / r0["steps"] for p in PHASES},
                     "share": {p: r0["seconds"][p] / max(1e-9, sum(r0["seconds"].values())) for p in PHASES}}
    out["all_reduce_ms_per_step"] = (out["all_reduce"]["ms_per_step"]["backward"]
                                     - out["no_sync"]["ms_per_step"]["backward"]) if "no_sync" in out else 0.0
    flops = ranks[0]["flops_per_padded_token"] * sum(r["all_reduce"]["padded_tokens"] for r in ranks)
    compute = max(r["all_reduce"]["seconds"]["forward"] + r["all_reduce"]["seconds"]["backward"] for r in ranks)
    out["train_gflops"] = flops / compute / 1e9
    out["peak_gflops"] = peak_gflops
    out["peak_fraction"] = out["train_gflops"] / peak_gflops if peak_gflops else None
    return out


def main() -> int:
    import socket

    import torch.multiprocessing as mp

    from bertclf.config import PACKAGED_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="per worker, as bertclf's batch_size")
    p.add_argument("--steps", type=int, default=40, help="timed steps per mode (after 3 warm-up steps)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--length-group-batches", type=int, default=16, help="batches per tokenized, length-sorted pool")
    p.add_argument("--max-tokens", type=int, default=8192, help="a micro-batch's padded tokens (whole batches here)")
    p.add_argument("--model", default=PACKAGED_MODEL, help="what bertclf trains from by default")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR))
    p.add_argument("--json")
    args = p.parse_args()

    started = bc.now_utc()
    machine = bc.machine_info()
    cores = machine["logical_cores"]
    precision = bc.precision_for("auto")
    if precision == "int8":
        precision = "fp32"  # training never runs int8
    peak = bc.matmul_peak_gflops(precision, threads=cores) if bc.can_time(precision) else None
    rows = (2 * args.steps + WARMUP_STEPS + args.length_group_batches) * args.batch_size * args.workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = Path(bc.DEFAULT_RUNS_DIR / "bench_train_step")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"workers": args.workers, "threads": max(1, cores // args.workers), "batch_size": args.batch_size,
            "steps": args.steps, "max_length": args.max_length, "length_group_batches": args.length_group_batches,
            "max_tokens": args.max_tokens, "model": args.model, "data_dir": args.data_dir, "rows": rows,
            "precision": precision, "port": port, "out_dir": str(out_dir)}
    mp.spawn(rank_main, args=(spec,), nprocs=args.workers, join=True)
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(args.workers)]
    summary = summarize(ranks, peak)
    machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "train_step", "date": started, "finished": bc.now_utc(),
              "warning": bc.contention_warning(machine), "cpu_class": machine["cpu_class"], "machine": machine,
              "versions": bc.versions(), "precision": precision, "spec": spec, "summary": summary, "ranks": ranks}
    bc.write_json(bc.result_path("train-step", machine, started, args.json), result)
    for mode in summary["modes"]:
        m = summary[mode]
        print(f"[bench] {mode:>10}: {m['samples_per_s']:.1f} samples/s; ms per step "
              + ", ".join(f"{k} {v:.1f} ({m['share'][k]:.0%})" for k, v in m["ms_per_step"].items()), flush=True)
    print(f"[bench] all-reduce not hidden by the backward: {summary['all_reduce_ms_per_step']:.1f} ms per step; "
          f"training {summary['train_gflops']:.1f} GFLOP/s in forward + backward"
          + (f" = {summary['peak_fraction']:.3f} of the {precision} matmul peak ({peak:.0f} GFLOP/s on {cores} cores)"
             if peak else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
