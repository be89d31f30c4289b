"""Benchmark: peak memory of one training worker against text length, planned micro-batches vs whole batches.

    python benchmarks/memory.py [--lengths 64,128,256,512] [--batch-size 32] [--workers-per-node 2] [--json PATH]

For each length, three runs, each in a fresh process (so its peak RSS is its own): the packaged all-MiniLM-L6-v2
doing `--steps` optimizer steps (fused AdamW, full fine-tuning, the precision the CPU runs natively) on
`--batch-size` newsgroups20 training texts truncated to the length:
- `whole`: the baseline, every row of the batch in one forward/backward (bertclf before token budgets);
- `planned`: bertclf's worker step (bertclf.training.accumulate_gradients) in micro-batches of the token
  budget bertclf.training.memory plans for a worker on this node with --workers-per-node workers, eager attention;
- `planned_sdpa`: the same budget with PyTorch's SDPA attention, to see whether its fused CPU kernels save memory
  or time at long lengths.
Printed and written per length: peak RSS (MiB), seconds per step, rows per micro-batch, the worker share, and the
ratio of the baseline's peak to the planned one. The machine's CPU class is named beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common as bc
import report

bc.setup_env()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="64,128,256,512")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per run (the first warms up)")
    p.add_argument("--workers-per-node", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a train worker here has 1 core)")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR), help="directory holding newsgroups20/")
    p.add_argument("--json", help="default: benchmarks/results/<date>-memory-<cpu class>.json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    return p.parse_args(argv)


def one_run(spec: dict) -> dict:
    """One configuration in this process; returns its peak RSS and step time."""
    import pyarrow.parquet as pq
    import torch

    from bertclf.model.inference import pad_batch, tokenize
    from bertclf.model.modeling import load_tokenizer, packaged_model_dir
    from bertclf.training import Batch, StepContext, accumulate_gradients

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from transformers import AutoModelForSequenceClassification

    model_dir = str(packaged_model_dir())
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=20,
                                                               attn_implementation=spec["attention"])
    model.train()
    tokenizer = load_tokenizer(model_dir)
    table = pq.read_table(Path(spec["data_dir"]) / "newsgroups20" / "train.parquet", columns=["text"])
    texts = table["text"].to_pylist()
    texts = sorted(texts, key=len, reverse=True)[: spec["batch_size"]]  # long posts: every row at the length
    ids, mask = pad_batch(tokenize(tokenizer, texts, spec["length"]), tokenizer.pad_token_id)
    batch = Batch(ids, mask, torch.randint(0, 20, (len(texts),)).numpy())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    step = StepContext(model=model, device=torch.device("cpu"), bf16=spec["bf16"],
                       loss_fn=torch.nn.CrossEntropyLoss(), max_tokens_per_batch=spec["max_tokens"])
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        accumulate_gradients(step, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": round(peak_kib / 1024, 1), "seconds_per_step": round(min(times[1:] or times), 2),
            "padded_length": int(ids.shape[1])}


def plan_for(length: int, batch_size: int, workers: int, bf16: bool) -> tuple[int, int]:
    """(token budget, worker share in bytes) bertclf plans for a worker of this node at this length."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from bertclf.config import TrainConfig
    from bertclf.model.modeling import packaged_model_dir
    from bertclf.training.memory import node_share, plan_for_model

    config = AutoConfig.from_pretrained(str(packaged_model_dir()), num_labels=20)
    model = AutoModelForSequenceClassification.from_config(config)
    psutil = bc.import_psutil()
    share = node_share(psutil.virtual_memory().total, workers)
    # a CPU worker: eager attention (bertclf.model.modeling.attention_for), full fine-tuning
    plan = plan_for_model(model, config, TrainConfig(max_length=length, batch_size=batch_size), share_bytes=share,
                          device_type="cpu", bf16=bf16)
    return plan.max_tokens_per_batch, share


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))), flush=True)
        return 0
    started = bc.now_utc()
    machine = bc.machine_info()
    bf16 = bc.precision_for(None) == "bf16"
    rows = []
    for length in [int(n) for n in args.lengths.split(",")]:
        budget, share = plan_for(length, args.batch_size, args.workers_per_node, bf16)
        row = {"length": length, "planned_tokens": budget, "planned_rows": max(1, budget // length),
               "worker_share_mib": round(share / 2**20)}
        for name, attention, tokens in (("whole", "eager", args.batch_size * length),
                                        ("planned", "eager", budget), ("planned_sdpa", "sdpa", budget)):
            spec = {"length": length, "batch_size": args.batch_size, "steps": args.steps, "threads": args.threads,
                    "attention": attention, "max_tokens": tokens, "bf16": bf16, "data_dir": args.data_dir}
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                                 text=True, env=os.environ.copy())
            if out.returncode != 0:
                row[name] = {"error": out.stderr.strip().splitlines()[-1:]}
            else:
                row[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[bench] length {length} {name}: {row[name]}", flush=True)
        whole, planned = row["whole"].get("peak_rss_mib"), row["planned"].get("peak_rss_mib")
        row["peak_ratio_whole_vs_planned"] = round(whole / planned, 2) if whole and planned else None
        rows.append(row)
    result = {"benchmark": "memory", "date": started, "cpu_class": machine["cpu_class"], "machine": machine,
              "precision": "bf16" if bf16 else "fp32", "batch_size": args.batch_size, "threads": args.threads,
              "workers_per_node": args.workers_per_node, "model": "packaged:all-MiniLM-L6-v2", "rows": rows,
              "warning": bc.contention_warning(machine), "versions": bc.versions()}
    bc.write_json(bc.result_path("memory", machine, started, args.json), result)
    report.print_table(f"memory per train worker, {machine['cpu_model']} ({machine['cpu_class']}), "
                       f"{result['precision']}, batch {args.batch_size}",
                       ["length", "rows/micro-batch", "whole MiB", "planned MiB", "sdpa MiB", "whole s/step",
                        "planned s/step", "sdpa s/step", "ratio"],
                       [[r["length"], r["planned_rows"], r["whole"].get("peak_rss_mib"),
                         r["planned"].get("peak_rss_mib"), r["planned_sdpa"].get("peak_rss_mib"),
                         r["whole"].get("seconds_per_step"), r["planned"].get("seconds_per_step"),
                         r["planned_sdpa"].get("seconds_per_step"), r["peak_ratio_whole_vs_planned"]] for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
