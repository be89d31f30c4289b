"""Benchmark: bertclf bulk scoring (Ray Data) against a Hugging Face pipeline in one process, on GoEmotions.

    python jobs/bench_score.py --rows 20000 --json runs/bench_score.json [--checkpoint URI] [--workdir DIR]
    ray job submit --working-dir . -- python jobs/bench_score.py --rows 20000 --json /tmp/bs.json \
        --data-dir /abs/shared/data --workdir /abs/runs/bench_score

Steps: (1) a checkpoint (--checkpoint, or a brief 1-epoch library training run on an 8,000-row GoEmotions slice,
reused from the workdir on later runs unless --retrain); (2) a corpus of --rows GoEmotions texts (repeated,
ids made unique) in 4 Parquet files; (3) fp32 and bf16 matmul peak of this machine; (4) the baseline: a
`transformers.pipeline` in one process with every core, fp32, run in a subprocess before the job's Ray starts;
(5) `bertclf.score.run` end to end through Ray Data, timed around the call, then its output compared with the
baseline's by id; (6) tokens/s, model FLOPs per token and the fraction of the matmul peak reached;
(7) peak memory of the job (driver + every Ray process of its session) at N and 10 x N rows.
Results: a table on stdout and --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

bc.setup_env()

FLOPS_NOTE = ("flops_per_token = 2*P_encoder + 4*n_layers*hidden*avg_tokens + 2*P_head/avg_tokens, where P_encoder = "
              "parameters of the transformer layers (embeddings excluded: lookups), the attention term counts "
              "Q.K^T and A.V (2*seq*hidden FLOPs each per token per layer) at the mean real (unpadded) length, and "
              "P_head = pooler + classifier, run once per sequence. Useful FLOPs only: padding is not counted.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, help="rows to score (N); the memory run also scores 10 x N")
    p.add_argument("--json", help="where to write the results (JSON)")
    p.add_argument("--checkpoint", help="checkpoint URI to score with (default: train a small one in the workdir)")
    p.add_argument("--workdir", default=str(bc.DEFAULT_RUNS_DIR / "bench_score"),
                   help="scratch directory: data slices, checkpoint, corpora, outputs (default runs/bench_score)")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR), help="directory holding goemotions/*.parquet")
    p.add_argument("--repeats", type=int, default=3,
                   help="bertclf runs at N, each on a fresh local Ray; the median one is reported (a minute-long "
                        "run on a shared VM moves by +-10%%)")
    p.add_argument("--skip-memory", action="store_true", help="skip the 10 x N memory run")
    p.add_argument("--retrain", action="store_true", help="train a new checkpoint even if the workdir has one")
    p.add_argument("--train-rows", type=int, default=8000,
                   help="rows of the brief training run without --checkpoint (2,000 gave a collapsed model, 8,000 "
                        "does not; a weak model still has many probabilities near its thresholds: pass --checkpoint "
                        "for a meaningful agreement)")
    p.add_argument("--validation-rows", type=int, default=400)
    p.add_argument("--files", type=int, default=4, help="Parquet files the corpus is written in")
    p.add_argument("--row-group-rows", type=int, default=5000, help="rows per Parquet row group of the corpus")
    p.add_argument("--baseline-batch-size", type=int, default=64)
    p.add_argument("--baseline-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the one-process baseline (default: every core)")
    p.add_argument("--max-tokens-per-batch", type=int, help="bertclf ScoreConfig.max_tokens_per_batch (default: its)")
    p.add_argument("--max-batch-rows", type=int, help="bertclf ScoreConfig.max_batch_rows (default: its)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="bertclf ScoreConfig.precision")
    p.add_argument("--internal-baseline", help=argparse.SUPPRESS)  # subprocess mode: path of a spec JSON
    args = p.parse_args(argv)
    if not args.internal_baseline and (args.rows is None or args.json is None):
        p.error("--rows and --json are required")
    if args.rows is not None and args.rows < 1:
        p.error("--rows must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------ inputs


def ensure_checkpoint(args: argparse.Namespace, workdir: Path) -> tuple[str, str, float | None]:
    """(uri, how it was obtained, training seconds): --checkpoint, the workdir's, or a fresh brief run."""
    if args.checkpoint:
        uri = args.checkpoint if "://" in args.checkpoint else str(Path(args.checkpoint).expanduser().resolve())
        return uri, "given", None
    run_dir = workdir / "ckpt_run"
    best = run_dir / "best"
    if (best / "bertclf.json").exists() and not args.retrain:
        print(f"[bench] reusing the checkpoint trained earlier: {best} (--retrain to train a new one)", flush=True)
        return str(best), "reused", None
    import pyarrow.parquet as pq

    from bertclf import train
    from bertclf.config import TrainConfig

    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    table = bc.read_goemotions(args.data_dir, "train", ["text", "labels"]).slice(0, args.train_rows)
    pq.write_table(table, data / "train.parquet")
    pq.write_table(bc.validation_slice(args.data_dir, args.validation_rows, table), data / "validation.parquet")
    shutil.rmtree(run_dir, ignore_errors=True)  # an old ray_train/ there would be resumed, not retrained
    cfg = TrainConfig(train=str(data / "train.parquet"), validation=str(data / "validation.parquet"),
                      output=str(run_dir), epochs=1, num_workers=2, max_length=64, learning_rate=1e-4)
    print(f"[bench] training a checkpoint: {args.train_rows} train / {args.validation_rows} validation rows, "
          f"1 epoch -> {best}", flush=True)
    bc.start_ray(include_dashboard=True)  # Ray Train's placement-group cleaner polls the state API
    t0 = time.perf_counter()
    result = train.run(cfg)
    seconds = time.perf_counter() - t0
    if not bc.in_existing_cluster():
        bc.stop_ray()  # the baseline gets the cores to itself
    return result.best_uri, "trained", seconds


def write_corpus(args: argparse.Namespace, out_dir: Path, rows: int) -> list[int]:
    """`rows` GoEmotions train texts (repeated as needed, ids `<id>-<k>`) in --files Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = bc.read_goemotions(args.data_dir, "train", ["id", "text"])
    n = source.num_rows
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    idx = pa.array([i % n for i in range(rows)], pa.int64())
    table = source.take(idx)
    ids = pa.array([f"{rid}-{i // n}" for i, rid in enumerate(table["id"].to_pylist())], pa.string())
    table = pa.table({"id": ids, "text": table["text"]})
    files = max(1, min(args.files, rows))
    bounds = [round(k * rows / files) for k in range(files + 1)]
    sizes = []
    for k in range(files):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        pq.write_table(part, out_dir / f"part-{k:04d}.parquet", row_group_size=args.row_group_rows)
        sizes.append(part.num_rows)
    return sizes


# ------------------------------------------------------------------------------------------------ baseline


def baseline_worker(spec_path: str) -> None:
    """Subprocess: matmul peaks, then the HF pipeline over the corpus in one process with every core."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import pipeline

    from bertclf.inference import plan_microbatches

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    peaks = {d: bc.matmul_peak_gflops(d) for d in ("fp32", "bf16")}  # on every core
    threads = spec["threads"]
    torch.set_num_threads(threads)
    print(f"[bench] matmul peak ({os.cpu_count()} threads, 2048x2048): fp32 {peaks['fp32']:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.1f} GFLOP/s", flush=True)

    files = sorted(Path(spec["corpus"]).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["id", "text"]) for f in files])
    texts, ids = table["text"].to_pylist(), table["id"].to_pylist()
    max_length = spec["max_length"]

    t0 = time.perf_counter()
    clf = pipeline("text-classification", model=spec["ckpt_dir"], top_k=None, batch_size=spec["batch_size"],
                   device=-1, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    function = "sigmoid" if spec["task"] == "multi_label" else "softmax"
    t0 = time.perf_counter()
    results = clf(texts, truncation=True, max_length=max_length, function_to_apply=function)
    infer_s = time.perf_counter() - t0
    print(f"[bench] baseline: {len(texts)} rows in {infer_s:.2f}s ({len(texts) / infer_s:.1f} rows/s; "
          f"model load {load_s:.2f}s)", flush=True)

    names = spec["names"]
    col = {name: j for j, name in enumerate(names)}
    probs = np.full((len(texts), len(names)), np.nan, dtype=np.float32)
    for i, row in enumerate(results):
        for item in row:
            probs[i, col[item["label"]]] = item["score"]
    if np.isnan(probs).any():
        raise RuntimeError("the pipeline's labels don't match the checkpoint's label names")

    lengths = np.asarray([len(x) for x in clf.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
    bs = spec["batch_size"]
    padded_baseline = sum(int(lengths[i:i + bs].max()) * len(lengths[i:i + bs]) for i in range(0, len(lengths), bs))
    # what bertclf's actors run: per file, per read batch, length-sorted micro-batches within a token budget
    padded_bertclf, start = 0, 0
    for size in spec["file_rows"]:
        for s in range(start, start + size, spec["read_batch_rows"]):
            chunk = lengths[s:min(s + spec["read_batch_rows"], start + size)]
            for b in plan_microbatches(chunk.tolist(), spec["max_tokens_per_batch"], spec["max_batch_rows"]):
                padded_bertclf += int(chunk[b].max()) * len(b)
        start += size

    model = clf.model
    p_emb = p_head = p_enc = 0
    for name, param in model.named_parameters():
        if ".embeddings." in name or name.startswith("embeddings."):
            p_emb += param.numel()
        elif "pooler" in name or "classifier" in name:
            p_head += param.numel()
        else:
            p_enc += param.numel()
    cfg = model.config
    np.save(out / "probs.npy", probs)
    (out / "ids.json").write_text(json.dumps(ids))
    (out / "result.json").write_text(json.dumps({
        "rows": len(texts), "seconds": infer_s, "model_load_seconds": load_s, "threads": threads,
        "peaks": peaks, "tokens": int(lengths.sum()), "padded_tokens_baseline": padded_baseline,
        "padded_tokens_bertclf": padded_bertclf, "max_tokens_seen": int(lengths.max()),
        "params": {"embeddings": p_emb, "encoder": p_enc, "head": p_head},
        "n_layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "dtype": str(model.dtype),
        "attn_implementation": getattr(cfg, "_attn_implementation", None), "function_to_apply": function,
    }))


def run_baseline(args: argparse.Namespace, workdir: Path, ckpt, corpus: Path, file_rows: list[int]) -> dict:
    out = workdir / f"baseline_{args.rows}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    defaults = score_config(args, "", "", "")
    spec = {"threads": args.baseline_threads, "corpus": str(corpus), "ckpt_dir": str(ckpt.local_dir),
            "max_length": ckpt.max_length,
            "task": ckpt.space.task, "names": ckpt.space.names, "batch_size": args.baseline_batch_size,
            "out": str(out), "file_rows": file_rows, "read_batch_rows": defaults.read_batch_rows,
            "max_tokens_per_batch": defaults.max_tokens_per_batch, "max_batch_rows": defaults.max_batch_rows}
    (out / "spec.json").write_text(json.dumps(spec))
    bc.run_python([str(Path(__file__).resolve()), "--internal-baseline", str(out / "spec.json")])
    import numpy as np

    result = json.loads((out / "result.json").read_text())
    result["probs"] = np.load(out / "probs.npy")
    result["ids"] = json.loads((out / "ids.json").read_text())
    return result


# ------------------------------------------------------------------------------------------------ bertclf


def score_config(args: argparse.Namespace, ckpt_uri: str, corpus: str, output: str):
    from bertclf.config import ScoreConfig

    knobs = {k: getattr(args, k) for k in ("max_tokens_per_batch", "max_batch_rows", "precision") if getattr(args, k)}
    return ScoreConfig(checkpoint=ckpt_uri, input=corpus, output=output, overwrite=True, id_column="id", **knobs)


def score_once(args: argparse.Namespace, ckpt_uri: str, corpus: Path, output: Path, session_dir: str | None) -> dict:
    """One bertclf.score.run, timed around the call, with the job's memory sampled throughout."""
    from bertclf import score
    from bertclf.scorer import unit_stats

    sampler = bc.MemorySampler(session_dir or "").start()
    ray_start_s = 0.0
    if session_dir is None:  # a fresh local Ray for this run, inside the memory window
        session_dir, ray_start_s = bc.start_ray()
        sampler.session_dir = session_dir
    warmup_s = bc.warm_ray_data()
    cfg = score_config(args, ckpt_uri, str(corpus), str(output))
    t0 = time.perf_counter()
    summary = score.run(cfg)
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    manifest = json.loads((output / score.MANIFEST).read_text())
    parts = sorted(output.glob("*.parquet"))
    tokens = sum(unit_stats(str(p))["tokens"] for p in parts)
    import ray

    cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    print(f"[bench] bertclf: {summary.rows_out} rows in {wall:.2f}s around score.run ({summary.rows_out / wall:.1f} "
          f"rows/s; manifest {manifest['rows_per_s']:.1f} rows/s); peak RSS {memory['peak_rss_mb']:.0f} MB, "
          f"PSS {memory['peak_pss_mb']:.0f} MB", flush=True)
    return {"rows": summary.rows_out, "wall_seconds": wall, "max_tokens_per_batch": cfg.max_tokens_per_batch,
            "max_batch_rows": cfg.max_batch_rows, "ray_start_seconds": ray_start_s, "ray_data_warmup_seconds": warmup_s,
            "manifest_rows_per_s": manifest["rows_per_s"], "timings": manifest["timings"],
            "units": manifest["units"], "tokens": tokens, "memory": memory, "session_dir": session_dir,
            "cluster": cluster, "parts": [str(p) for p in parts]}


def compare(baseline: dict, parts: list[str], space) -> dict:
    """Align bertclf's output with the baseline by id: label-set agreement and max |dprob|."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in parts])
    prob_cols = [f"prob_{n}" for n in space.names]
    ours = np.stack([table[c].to_numpy() for c in prob_cols], axis=1).astype(np.float32)
    row_of = {rid: i for i, rid in enumerate(table["id"].to_pylist())}
    order = np.asarray([row_of[rid] for rid in baseline["ids"]])  # KeyError = a row missing from the output
    ours = ours[order]
    predicted = table["predicted"].to_pylist()
    ours_sets = [frozenset(predicted[i]) for i in order]
    theirs_sets = [frozenset(s) for s in space.predict(baseline["probs"])]
    same = sum(a == b for a, b in zip(ours_sets, theirs_sets, strict=True))
    diff = np.abs(ours - baseline["probs"])
    # disagreements come from probabilities within max|dprob| of a threshold: how many rows have one
    margin = np.abs(baseline["probs"] - np.asarray(space.thresholds, dtype=np.float32))
    near = (margin <= max(float(diff.max()), 1e-6)).any(axis=1) if space.task == "multi_label" else None
    # a collapsed model (same probabilities for every text) has thresholds tuned onto those constants, so
    # any numeric noise flips labels: agreement then says nothing about bertclf
    spread = float(baseline["probs"].std(axis=0).max()) if len(order) > 1 else None
    collapsed = spread is not None and spread < 0.01
    if collapsed:
        print(f"[bench] WARNING: the checkpoint gives nearly the same probabilities for every text (largest per-label "
              f"std {spread:.4f}): agreement is not meaningful; pass --checkpoint with a trained model", flush=True)
    return {"agreement": same / len(order), "rows_compared": len(order), "rows_disagreeing": len(order) - same,
            "baseline_prob_std_max": spread, "checkpoint_collapsed": collapsed,
            "max_abs_dprob": float(diff.max()), "mean_abs_dprob": float(diff.mean()),
            "rows_with_a_prob_within_max_dprob_of_threshold": int(near.sum()) if near is not None else None}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.internal_baseline:
        baseline_worker(args.internal_baseline)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from bertclf import checkpoint
    from bertclf.resources import use_bf16

    started = bc.now_utc()
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    machine = bc.machine_info()
    warning = bc.contention_warning(machine)
    n = args.rows
    existing = bc.in_existing_cluster()
    try:
        ckpt_uri, ckpt_source, ckpt_train_s = ensure_checkpoint(args, workdir)
        ckpt = checkpoint.load(ckpt_uri)
        corpus = workdir / f"corpus_{n}"
        file_rows = write_corpus(args, corpus, n)

        baseline = run_baseline(args, workdir, ckpt, corpus, file_rows)

        session = bc.start_ray()[0] if existing else None
        runs_n = []
        for i in range(max(1, args.repeats)):
            if i and not existing:
                bc.stop_ray()
            runs_n.append(score_once(args, ckpt_uri, corpus, workdir / f"scores_{n}", session))
        run_n = sorted(runs_n, key=lambda r: r["wall_seconds"])[len(runs_n) // 2]
        quality = compare(baseline, run_n["parts"], ckpt.space)
        run_10n = None
        if not args.skip_memory:
            if not existing:
                bc.stop_ray()
            corpus_10 = workdir / f"corpus_{10 * n}"
            write_corpus(args, corpus_10, 10 * n)
            run_10n = score_once(args, ckpt_uri, corpus_10, workdir / f"scores_{10 * n}", session)
    finally:
        bc.stop_ray()

    precision = args.precision or "auto"
    dtype = "bf16" if use_bf16(precision, "cpu") else "fp32"
    peaks = baseline["peaks"]
    tokens = baseline["tokens"]
    avg_tokens = tokens / n
    params = baseline["params"]
    layers, hidden = baseline["n_layers"], baseline["hidden"]
    flops_per_token = 2 * params["encoder"] + 4 * layers * hidden * avg_tokens + 2 * params["head"] / avg_tokens

    baseline_rps = n / baseline["seconds"]
    bertclf_rps = n / run_n["wall_seconds"]
    baseline_tps = tokens / baseline["seconds"]
    bertclf_tps = tokens / run_n["wall_seconds"]
    scoring_tps = run_n["manifest_rows_per_s"] * avg_tokens if run_n["manifest_rows_per_s"] else None
    peak_fraction = bertclf_tps * flops_per_token / (peaks[dtype] * 1e9)
    mem_n = run_n["memory"]["peak_rss_mb"]
    mem_10n = run_10n["memory"]["peak_rss_mb"] if run_10n else None
    extra = (run_10n["wall_seconds"] - run_n["wall_seconds"]) if run_10n else 0.0
    marginal = 9 * n / extra if run_10n and extra > max(2.0, 0.2 * run_n["wall_seconds"]) else None
    rps_10n = (run_10n["rows"] / run_10n["wall_seconds"]) if run_10n else None

    result = {
        "rows": n, "warning": warning, "date": started, "finished": bc.now_utc(), "machine": machine,
        "versions": bc.versions(),
        "checkpoint": {"uri": ckpt_uri, "source": ckpt_source, "training_seconds": ckpt_train_s,
                       "task": ckpt.space.task, "labels": len(ckpt.space.names), "max_length": ckpt.max_length},
        "dtype": dtype, "baseline_dtype": "fp32",
        "baseline": {"what": "transformers.pipeline('text-classification', top_k=None, batch_size="
                             f"{args.baseline_batch_size}, device=-1, fp32), one process, "
                             f"torch threads {baseline['threads']}; timed around the pipeline call only "
                             "(model load excluded)",
                     "function_to_apply": baseline["function_to_apply"], "seconds": baseline["seconds"],
                     "model_load_seconds": baseline["model_load_seconds"],
                     "attn_implementation": baseline["attn_implementation"]},
        "baseline_rows_per_s": baseline_rps,
        "bertclf_rows_per_s": bertclf_rps,
        "bertclf_timing": "wall time around bertclf.score.run (planning, actor start + model load, read, score, "
                          "write, manifest); Ray startup is reported apart as ray_start_seconds, and Ray Data's "
                          "detached helper actors are created before timing (ray_data_warmup_seconds), as on a "
                          "standing cluster after its first Ray Data job",
        "bertclf_manifest_rows_per_s": run_n["manifest_rows_per_s"],
        "bertclf_wall_seconds_runs": [r["wall_seconds"] for r in runs_n],
        "repeats_note": "the N run was repeated, each time on a fresh local Ray (or the given cluster); rows/s and "
                        "memory are the median run's, all wall times are listed; quality is read from the parts on "
                        "disk, which every run rewrites identically (same checkpoint, units and micro-batches)",
        "speedup": bertclf_rps / baseline_rps,
        "speedup_scoring_only": (run_n["manifest_rows_per_s"] / baseline_rps) if run_n["manifest_rows_per_s"] else None,
        "tokens": tokens, "tokens_bertclf_footers": run_n["tokens"], "avg_tokens_per_row": avg_tokens,
        "padding_overhead_baseline": baseline["padded_tokens_baseline"] / tokens - 1,
        "padding_overhead_bertclf": baseline["padded_tokens_bertclf"] / tokens - 1,
        "baseline_tokens_per_s": baseline_tps, "bertclf_tokens_per_s": bertclf_tps,
        "bertclf_scoring_tokens_per_s": scoring_tps,
        "flops_per_token": flops_per_token, "flops_note": FLOPS_NOTE, "params": params,
        "peak_gflops_fp32": peaks["fp32"], "peak_gflops_bf16": peaks["bf16"],
        "peak_note": f"best of 7 x (2048x2048 matmul) with torch, {machine['logical_cores']} threads, measured in "
                     "this run",
        "peak_fraction": peak_fraction,
        "peak_fraction_scoring_only": (scoring_tps * flops_per_token / (peaks[dtype] * 1e9)
                                       if scoring_tps else None),
        "baseline_peak_fraction": baseline_tps * flops_per_token / (peaks["fp32"] * 1e9),
        **quality,
        "peak_mem_mb_N": mem_n, "peak_mem_mb_10N": mem_10n,
        "memory_ratio_10x": (mem_10n / mem_n) if mem_10n else None,
        "peak_pss_mb_N": run_n["memory"]["peak_pss_mb"],
        "peak_pss_mb_10N": run_10n["memory"]["peak_pss_mb"] if run_10n else None,
        "memory_note": "sum of RSS (and, sampled 1 in 4, PSS) every 0.5 s over the driver, its descendants and "
                       "the processes of the job's Ray session, from Ray start to the end of score.run; RSS counts "
                       "shared pages (torch libraries, object store) once per process, PSS once",
        "run_N": {k: v for k, v in run_n.items() if k != "parts"},
        "run_10N": {k: v for k, v in run_10n.items() if k != "parts"} if run_10n else None,
        "bertclf_rows_per_s_10N": rps_10n,
        "speedup_10N": rps_10n / baseline_rps if rps_10n else None,
        "peak_fraction_10N": (rps_10n * avg_tokens * flops_per_token / (peaks[dtype] * 1e9)) if rps_10n else None,
        "note_10N": "the 10 x N memory run end to end, against the baseline's rate at N (the pipeline's cost per "
                    "row does not depend on N; it is not rerun at 10 x N)",
        "bertclf_marginal_rows_per_s": marginal,
        "marginal_note": "9N / (wall_10N - wall_N): scoring rate with the fixed startup (actors, model load) "
                         "cancelled out; null when the 10N run was not clearly longer (> 2 s and > 20%)",
    }

    bc.print_table(f"bench_score: {n} rows, {machine['cpu_model']}, {machine['logical_cores']} cores",
                   ["", "rows/s", "tokens/s", "speedup", "peak_fraction", "dtype"],
                   [["HF pipeline (1 proc)", baseline_rps, baseline_tps, 1.0, result["baseline_peak_fraction"], "fp32"],
                    ["bertclf (wall)", bertclf_rps, bertclf_tps, result["speedup"], peak_fraction, dtype],
                    ["bertclf (scoring only)", run_n["manifest_rows_per_s"], scoring_tps,
                     result["speedup_scoring_only"], result["peak_fraction_scoring_only"], dtype]])
    bc.print_table("quality vs fp32 baseline, memory", ["metric", "value"],
                   [["agreement (label sets)", quality["agreement"]],
                    ["max_abs_dprob", quality["max_abs_dprob"]],
                    ["rows near a threshold", quality["rows_with_a_prob_within_max_dprob_of_threshold"]],
                    ["peak_gflops_fp32 / bf16", f"{peaks['fp32']:.1f} / {peaks['bf16']:.1f}"],
                    ["flops_per_token", f"{flops_per_token / 1e6:.2f} M"],
                    ["peak_mem_mb_N (RSS / PSS)", f"{mem_n:.0f} / {run_n['memory']['peak_pss_mb']:.0f}"],
                    ["peak_mem_mb_10N (RSS / PSS)",
                     f"{mem_10n:.0f} / {run_10n['memory']['peak_pss_mb']:.0f}" if run_10n else "skipped"],
                    ["memory_ratio_10x", result["memory_ratio_10x"]]])
    bc.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
