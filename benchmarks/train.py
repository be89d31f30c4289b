"""Benchmark: training samples/s of bertclf's Ray Train loop against Hugging Face `Trainer` on the same cores.

    python benchmarks/train.py [--steps 100] [--batch-size 32] [--time-to-f1] [--json PATH]

bertclf: `bertclf.training.run` with --workers DDP workers on a GoEmotions slice of steps x batch x workers rows
(so each worker runs --steps optimizer steps); samples/s is read from the returned history (the train loop
measures it: all workers' samples over rank 0's loop time, validation excluded).
Baselines: `transformers.Trainer` in one process with every core (a subprocess, run before Ray starts), the same
packaged all-MiniLM-L6-v2 with the same classification head, the same rows, global batch (bertclf's per-worker
batch x workers), optimizer steps, learning rate, weight decay, warmup and clipping, multi-label BCE. Four
runs: dynamic padding (DataCollatorWithPadding) and fixed padding (padding="max_length", 128), each in fp32
and, where the CPU runs bf16 natively, bf16; each speedup is against the faster precision of that padding
(said in the JSON). The Trainer's
time is its train() call; its tokenization happens before (as in the usual `dataset.map`), while bertclf
tokenizes inside its loop.
--time-to-f1: wall time for bertclf (jobs/configs/goemotions.yaml: full train split, up to 3 epochs) to reach
validation macro-F1 >= 0.35, from before Ray starts to the epoch's line in metrics.jsonl (long); null otherwise.
Results: one JSON (default benchmarks/results/<date>-train-<cpu class>.json) and its tables on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import common as bc
import report

bc.setup_env()

F1_TARGET = 0.35
HF_RUNS = [("dynamic", "fp32"), ("dynamic", "bf16"), ("max_length", "fp32"), ("max_length", "bf16")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="where to write the results (default: benchmarks/results/<date>-train-<cpu>.json)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per worker (and for the Trainer)")
    p.add_argument("--batch-size", type=int, default=32, help="bertclf's per-worker batch; Trainer's = this x workers")
    p.add_argument("--workers", type=int, default=2, help="bertclf train workers")
    p.add_argument("--max-length", type=int, default=128, help="truncation length (and the fixed padding length)")
    p.add_argument("--epochs", type=int, default=1, help="bertclf epochs over the slice (samples/s: the last epoch)")
    p.add_argument("--validation-rows", type=int, default=200)
    p.add_argument("--workdir", default=str(bc.DEFAULT_RUNS_DIR / "bench_train"))
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR), help="directory holding goemotions/*.parquet")
    p.add_argument("--hf-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the one-process Trainer (default: every core)")
    p.add_argument("--hf-attention", default="sdpa", choices=["sdpa", "eager"],
                   help="the Trainer model's attention kernel (default sdpa: what from_pretrained gives BERT)")
    p.add_argument("--hf-runs", default=",".join(f"{a}_{b}" for a, b in HF_RUNS),
                   help="comma-separated Trainer runs to do, of " + ", ".join(f"{a}_{b}" for a, b in HF_RUNS)
                   + " (default: all; bf16 ones are skipped on CPUs without native bf16; fixed-padding fp32 is the "
                   "slowest by far; '' for none)")
    p.add_argument("--time-to-f1", action="store_true",
                   help=f"also time bertclf to validation macro-F1 >= {F1_TARGET} on full GoEmotions (long)")
    p.add_argument("--f1-config", default=str(bc.REPO / "jobs" / "configs" / "goemotions.yaml"))
    p.add_argument("--f1-target", type=float, default=F1_TARGET, help="macro-F1 to reach (the JSON key keeps its name)")
    p.add_argument("--f1-epochs", type=int, default=3)
    p.add_argument("--f1-train-rows", type=int, help="first rows of the train split only (smoke tests)")
    p.add_argument("--internal-hf", help=argparse.SUPPRESS)  # subprocess mode: path of a spec JSON
    args = p.parse_args(argv)
    args.hf_runs = [r for r in args.hf_runs.split(",") if r]  # "" = no Trainer runs (e.g. only --time-to-f1)
    unknown = set(args.hf_runs) - {f"{a}_{b}" for a, b in HF_RUNS}
    if unknown:
        p.error(f"--hf-runs: unknown run(s) {sorted(unknown)}")
    args.hf_runs_skipped = [r for r in args.hf_runs if not bc.can_time(r.rsplit("_", 1)[1])]
    if args.hf_runs_skipped and not args.internal_hf:  # never time a precision this CPU only emulates
        print(f"[bench] skipping --hf-runs {','.join(args.hf_runs_skipped)}: this CPU has no native bf16", flush=True)
        args.hf_runs = [r for r in args.hf_runs if r not in args.hf_runs_skipped]
    for name in ("steps", "batch_size", "workers", "max_length", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def training_config(train: str, validation: str, output: str, args: argparse.Namespace):
    from bertclf.config import TrainConfig

    return TrainConfig(train=train, validation=validation, output=output, task="multi_label", label_column="labels",
                       epochs=args.epochs, num_workers=args.workers, batch_size=args.batch_size,
                       max_length=args.max_length)


# ------------------------------------------------------------------------------------------------ HF Trainer


def hf_worker(spec_path: str) -> None:
    """Subprocess: one `transformers.Trainer` run, one process, every core; writes result.json."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    from bertclf.model.modeling import build_classifier, load_tokenizer, packaged_model_dir
    from bertclf.training import encode_batch, inspect_training_data
    from bertclf.units import read_table

    spec = json.loads(Path(spec_path).read_text())
    threads = spec["threads"]
    torch.set_num_threads(threads)
    torch.manual_seed(spec["seed"])
    cfg_args = argparse.Namespace(**spec["args"])
    cfg = training_config(spec["train"], spec["validation"], spec["out"], cfg_args)
    data = inspect_training_data(cfg)  # the same label space (order included) bertclf builds
    batch = encode_batch(read_table(spec["train"], data.read_columns), data)

    model_dir = str(packaged_model_dir())
    tokenizer = load_tokenizer(model_dir)
    model = build_classifier(model_dir, data.space)
    model.set_attn_implementation(spec["attention"])  # the Trainer as users run it: HF's default (sdpa)
    padding = spec["padding"]
    enc = tokenizer(list(batch["text"]), truncation=True, max_length=cfg.max_length,
                    padding="max_length" if padding == "max_length" else False, return_token_type_ids=False)
    rows = [{"input_ids": ids, "attention_mask": mask, "labels": target.tolist()}
            for ids, mask, target in zip(enc["input_ids"], enc["attention_mask"], batch["target"], strict=True)]
    collator = default_data_collator if padding == "max_length" else DataCollatorWithPadding(tokenizer)
    batch_size = cfg.batch_size * cfg.num_workers
    result: dict = {"padding": padding, "precision": spec["precision"], "threads": threads, "batch_size": batch_size,
                    "attn_implementation": model.config._attn_implementation,
                    "steps": spec["steps"], "rows": len(rows)}
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        try:
            targs = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=spec["steps"], report_to=[],
                save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_num_workers=0,
                bf16=spec["precision"] == "bf16", learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear",
                seed=cfg.seed, disable_tqdm=True)
            trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator)
            t0 = time.perf_counter()
            out = trainer.train()
            seconds = time.perf_counter() - t0
            result.update(ok=True, seconds=seconds, samples_per_s=spec["steps"] * batch_size / seconds,
                          train_loss=out.training_loss, optim=str(targs.optim),
                          trainer_metrics={k: v for k, v in out.metrics.items() if isinstance(v, int | float)})
        except Exception as exc:  # noqa: BLE001 - e.g. bf16 unsupported here: reported, not fatal
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    Path(spec["result"]).write_text(json.dumps(result))
    status = f"{result['samples_per_s']:.1f} samples/s in {result['seconds']:.1f}s" if result["ok"] else result["error"]
    print(f"[bench] HF Trainer {padding}/{spec['precision']}: {status}", flush=True)


def run_hf(args: argparse.Namespace, workdir: Path, train: str, validation: str) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for padding, precision in HF_RUNS:
        if f"{padding}_{precision}" not in args.hf_runs:
            continue
        out = workdir / f"hf_{padding}_{precision}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        spec = {"train": train, "validation": validation, "out": str(out), "padding": padding, "precision": precision,
                "steps": args.steps, "seed": 42, "threads": args.hf_threads, "result": str(out / "result.json"),
                "attention": args.hf_attention,
                "args": {k: getattr(args, k) for k in ("epochs", "workers", "batch_size", "max_length")}}
        (out / "spec.json").write_text(json.dumps(spec))
        bc.run_python([str(Path(__file__).resolve()), "--internal-hf", str(out / "spec.json")])
        results[f"{padding}_{precision}"] = json.loads((out / "result.json").read_text())
    return results


# ------------------------------------------------------------------------------------------------ bertclf


def as_dict(record) -> dict:
    """A library record (a dataclass, or anything with to_dict) or a plain dict, as a dict for the JSON."""
    if isinstance(record, dict):
        return record
    return record.to_dict() if hasattr(record, "to_dict") else dataclasses.asdict(record)


def run_bertclf(cfg) -> dict:
    import ray

    from bertclf import training
    from bertclf.resources import plan_training

    shutil.rmtree(cfg.output, ignore_errors=True)  # an old ray_train/ there would be resumed
    ray_start_s = bc.start_ray(include_dashboard=True)[1]
    try:
        # the layout training.run plans on this cluster, recorded as the library decides it
        plan = plan_training(ray.cluster_resources(), cfg.num_workers, cfg.use_gpu, cfg.cpus_per_worker)
        t0 = time.perf_counter()
        result = training.run(cfg)
        wall = time.perf_counter() - t0
    finally:
        bc.stop_ray()
    history = [{k: v for k, v in as_dict(h).items() if k not in ("per_label", "thresholds")} for h in result.history]
    return {"wall_seconds": wall, "ray_start_seconds": ray_start_s, "history": history, "plan": plan.describe(),
            "workers": plan.num_workers, "torch_threads_per_worker": plan.torch_threads,
            "samples_per_s_by_epoch": [h["samples_per_s"] for h in history],
            "tokens_per_s_by_epoch": [h["tokens_per_s"] for h in history], "best_uri": result.best_uri}


def time_to_f1(args: argparse.Namespace, workdir: Path) -> dict:
    """bertclf on full GoEmotions with the goemotions.yaml recipe; wall time until macro-F1 >= target."""
    from bertclf.config import TrainConfig, load_config

    data = Path(args.data_dir) / "goemotions"
    output = workdir / "time_to_f1"
    train, validation = str(data / "train.parquet"), str(data / "validation.parquet")
    if args.f1_train_rows:  # smoke tests: a slice, and the validation rows whose labels it has
        import pyarrow.parquet as pq

        table = bc.read_goemotions(args.data_dir, "train", ["text", "labels"]).slice(0, args.f1_train_rows)
        train = str(workdir / "data" / f"f1_train_{args.f1_train_rows}.parquet")
        validation = str(workdir / "data" / f"f1_validation_{args.f1_train_rows}.parquet")
        pq.write_table(table, train)
        pq.write_table(bc.validation_slice(args.data_dir, None, table), validation)
    cfg = load_config(TrainConfig, args.f1_config, {"train": train, "validation": validation,
                                                    "output": str(output), "epochs": args.f1_epochs})
    metrics = output / "metrics.jsonl"
    shutil.rmtree(output, ignore_errors=True)  # no stale metrics.jsonl for the watcher to find
    reached: dict = {}
    stop = threading.Event()
    t0 = time.perf_counter()

    def check(late: bool = False) -> None:
        try:
            for line in metrics.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("f1_macro", 0) >= args.f1_target:
                    reached.update(seconds=time.perf_counter() - t0, epoch=rec["epoch"], f1_macro=rec["f1_macro"],
                                   seen_after_training_ended=late)
                    return
        except (OSError, ValueError):
            pass

    def watch() -> None:
        while not stop.is_set() and not reached:
            check()
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    print(f"[bench] time to macro-F1 >= {args.f1_target}: {cfg.train}, up to {cfg.epochs} epochs -> {output}",
          flush=True)
    watcher.start()
    try:
        run = run_bertclf(cfg)
    finally:
        stop.set()
        watcher.join()
    if not reached:
        check(late=True)  # the last epoch's line can land after the final poll
    return {"target": args.f1_target, **reached, "seconds": reached.get("seconds"),
            "config": str(args.f1_config), "history": run["history"], "train_run_seconds": run["wall_seconds"],
            "ray_start_seconds": run["ray_start_seconds"],
            "note": "from before Ray starts (run_bertclf: local Ray start + bertclf.training.run) to the poll (1 s) "
                    "that sees the epoch's line in metrics.jsonl; macro-F1 with per-label thresholds tuned on the "
                    "validation split, as bertclf reports it"}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.internal_hf:
        hf_worker(args.internal_hf)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import importlib.util

    import pyarrow.parquet as pq

    if importlib.util.find_spec("accelerate") is None:
        raise SystemExit("transformers.Trainer needs accelerate, which is not installed: pip install 'accelerate>=1.1'")

    started = bc.now_utc()
    workdir = Path(args.workdir).expanduser().resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    machine = bc.machine_info()
    warning = bc.contention_warning(machine)
    rows = args.steps * args.batch_size * args.workers
    source = bc.read_goemotions(args.data_dir, "train", ["text", "labels"])
    if rows > source.num_rows:
        raise SystemExit(f"--steps x --batch-size x --workers = {rows} rows > the {source.num_rows} GoEmotions train "
                         "rows; lower --steps")
    train = str(workdir / "data" / f"train_{rows}.parquet")
    validation = str(workdir / "data" / f"validation_{args.validation_rows}.parquet")
    pq.write_table(source.slice(0, rows), train)
    pq.write_table(bc.validation_slice(args.data_dir, args.validation_rows, source.slice(0, rows)), validation)

    hf = run_hf(args, workdir, train, validation)  # before Ray: the cores are the Trainer's alone
    cfg = training_config(train, validation, str(workdir / "bertclf_run"), args)
    precision = bc.precision_for(cfg.precision)
    ours = run_bertclf(cfg)
    f1 = time_to_f1(args, workdir) if args.time_to_f1 else None

    bertclf_sps = ours["samples_per_s_by_epoch"][-1]
    # like for like with the Trainer, whose data is tokenized before train(): bertclf's last epoch without the wait for
    # its first batch (the Ray Data pipeline's start, the read tasks' processes)
    last = ours["history"][-1]
    steady_seconds = last["train_seconds"] - last["first_batch_seconds"]
    bertclf_steady = last["samples_per_s"] * last["train_seconds"] / steady_seconds if steady_seconds > 0 else None

    def faster(padding: str) -> tuple[str | None, float | None]:
        done = {k: v["samples_per_s"] for k, v in hf.items() if k.startswith(padding + "_") and v.get("ok")}
        if not done:
            return None, None
        key = max(done, key=done.get)
        return key, done[key]

    dyn_key, dyn_sps = faster("dynamic")
    fix_key, fix_sps = faster("max_length")
    sps = {k: (v["samples_per_s"] if v.get("ok") else None) for k, v in hf.items()}
    result = {
        "benchmark": "train", "warning": warning, "date": started, "finished": bc.now_utc(),
        "cpu_class": machine["cpu_class"], "precision": precision, "machine": machine, "versions": bc.versions(),
        "steps": args.steps, "per_worker_batch_size": args.batch_size, "workers": args.workers,
        "global_batch_size": args.batch_size * args.workers, "rows": rows, "max_length": args.max_length,
        "bertclf_precision": "bf16 autocast" if precision == "bf16" else "fp32", "bertclf_layout": ours["plan"],
        "bertclf_torch_threads_per_worker": ours["torch_threads_per_worker"], "hf_runs": args.hf_runs,
        "hf_runs_skipped": args.hf_runs_skipped,
        "bertclf_samples_per_s": bertclf_sps,
        "bertclf_samples_per_s_after_first_batch": bertclf_steady,
        "bertclf_first_batch_seconds": last["first_batch_seconds"],
        "bertclf_samples_per_s_by_epoch": ours["samples_per_s_by_epoch"],
        "bertclf_tokens_per_s_by_epoch": ours["tokens_per_s_by_epoch"],
        "bertclf_wall_seconds": ours["wall_seconds"], "bertclf_ray_start_seconds": ours["ray_start_seconds"],
        "bertclf_note": "samples/s from the train loop's history (last epoch): both workers' samples over rank 0's "
                        "loop time, tokenization and Ray Data reading included, validation and startup excluded",
        "hf_trainer_samples_per_s": {k: v for k, v in sps.items()},
        "hf_trainer_fp32_samples_per_s": sps.get("dynamic_fp32"),
        "hf_trainer_bf16_samples_per_s": sps.get("dynamic_bf16"),
        "hf_trainer_fixed_padding_fp32_samples_per_s": sps.get("max_length_fp32"),
        "hf_trainer_fixed_padding_bf16_samples_per_s": sps.get("max_length_bf16"),
        "hf_trainer_runs": hf,
        "hf_note": "transformers.Trainer in one process, torch threads = all cores; samples/s = max_steps x batch / "
                   f"wall time of train(); tokenization done before train() (not timed); attention {args.hf_attention} "
                   "(bertclf uses eager attention on CPU: see bertclf.model.modeling.attention_for)",
        "speedup_vs_hf_trainer": (bertclf_sps / dyn_sps) if dyn_sps else None,
        "speedup_vs_hf_trainer_against": dyn_key,
        "speedup_vs_hf_trainer_after_first_batch": (bertclf_steady / dyn_sps) if dyn_sps and bertclf_steady else None,
        "speedup_vs_fixed_padding": (bertclf_sps / fix_sps) if fix_sps else None,
        "speedup_vs_fixed_padding_against": fix_key,
        "speedup_note": "each speedup is against the faster precision (fp32 or bf16) of that padding's Trainer runs",
        "bertclf_history": ours["history"],
        "time_to_macro_f1_0_35": f1["seconds"] if f1 else None,
        "time_to_macro_f1_0_35_detail": f1,
    }
    bc.write_json(bc.result_path("train", machine, started, args.json), result)
    report.print_train(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
