"""Benchmark: bertclf bulk scoring (Ray Data) against a Hugging Face pipeline in one process, on GoEmotions.

    python benchmarks/score.py --rows 20000 [--checkpoint URI] [--workdir DIR] [--json PATH]
    ray job submit --working-dir . -- python benchmarks/score.py --rows 20000 --json /tmp/bs.json \
        --data-dir /abs/shared/data --workdir /abs/runs/bench_score

Steps: (1) a checkpoint (--checkpoint, or a brief 1-epoch training run, reused from the workdir unless
--retrain); (2) a corpus of --rows GoEmotions texts in --files Parquet files; (3) the matmul peak for the
precisions the run uses (bertclf's, as the library picks it for this CPU, and the baseline's fp32); (4) the
baseline: `transformers.pipeline`, one process, every core, fp32, in a subprocess before Ray starts;
(5) `bertclf.scoring.run` end to end, timed around the call, its output compared with the baseline's by id;
(6) FLOPs per token and the fraction of the matmul peak reached; (7) peak memory at N and 10 x N rows; (8) the
quality gate users care about: a labelled split (--quality-data, GoEmotions test by default) scored in this process at
fp32 and at bertclf's precision, the task metric of each (macro-F1 or accuracy), agreement and max |dp|, judged by
bertclf.model.precision.quality_gate, the gate `precision: auto` uses.
Results: one JSON (default benchmarks/results/<date>-score-<cpu class>.json) and its tables on stdout.
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

import common as bc
import report

bc.setup_env()

FLOPS_NOTE = ("flops_per_token = 2*P_encoder + 4*n_layers*hidden*avg_tokens + 2*P_head/avg_tokens: P_encoder = the "
              "transformer layers' parameters (embeddings are lookups), the attention term counts Q.K^T and A.V at "
              "the mean real length, P_head (bertclf.model.modeling.head_modules) runs once per sequence; "
              "padding is not counted")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, help="rows to score (N); the memory run also scores 10 x N")
    p.add_argument("--json", help="where to write the results (default: benchmarks/results/<date>-score-<cpu>.json)")
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
                   help="rows of the brief training run without --checkpoint (too few give a collapsed model; pass "
                        "--checkpoint for a meaningful agreement)")
    p.add_argument("--validation-rows", type=int, default=400)
    p.add_argument("--files", type=int, default=4, help="Parquet files the corpus is written in")
    p.add_argument("--row-group-rows", type=int, default=5000, help="rows per Parquet row group of the corpus")
    p.add_argument("--baseline-batch-size", type=int, default=64)
    p.add_argument("--baseline-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the one-process baseline (default: every core)")
    p.add_argument("--max-tokens-per-batch", type=int, help="bertclf ScoreConfig.max_tokens_per_batch (default: its)")
    p.add_argument("--max-batch-rows", type=int, help="bertclf ScoreConfig.max_batch_rows (default: its)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32", "int8"], help="bertclf ScoreConfig.precision")
    p.add_argument("--quality-data", help="labelled Parquet for the quality gate (default: GoEmotions test in "
                                          "--data-dir; give the checkpoint's own test split for other tasks)")
    p.add_argument("--quality-rows", type=int, default=2000, help="rows of --quality-data the gate scores")
    p.add_argument("--skip-quality", action="store_true", help="skip the labelled split's quality gate")
    p.add_argument("--tokenize-stage", choices=["auto", "fused", "separate"],
                   help="bertclf ScoreConfig.tokenize_stage (default: its)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="bertclf ScoreConfig.compile; unless off, the compile cache starts empty, so the first run "
                        "at N compiles, and one extra eager run at N measures what the compiled graph gained")
    p.add_argument("--internal-baseline", help=argparse.SUPPRESS)  # subprocess mode: path of a spec JSON
    args = p.parse_args(argv)
    if not args.internal_baseline and args.rows is None:
        p.error("--rows is required")
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
    uri, seconds = bc.train_checkpoint(args.data_dir, workdir, run_dir, args.train_rows, args.validation_rows)
    return uri, "trained", seconds


def token_lengths(spec: dict, tokenizer):
    """Token lengths of the corpus in file order, the padded tokens bertclf's actors run, and its units count:
    the library's own units (plan_units), read batches (read_unit), tokenize and micro-batches."""
    import numpy as np

    from bertclf.model.inference import plan_microbatches, tokenize
    from bertclf.units import plan_units, read_unit

    files = [str(f) for f in sorted(Path(spec["corpus"]).glob("*.parquet"))]
    units, errors, _ = plan_units(files, spec["rows_per_unit"])
    if errors:
        raise RuntimeError(f"unreadable corpus files: {errors}")
    lengths: list[int] = []
    padded = 0
    for unit in units:
        for batch in read_unit(unit, [spec["text_column"]], spec["read_batch_rows"]):
            texts = batch.column(spec["text_column"]).to_pylist()
            chunk = [len(ids) for ids in tokenize(tokenizer, texts, spec["max_length"])]
            for b in plan_microbatches(chunk, spec["max_tokens_per_batch"], spec["max_batch_rows"]):
                padded += max(chunk[i] for i in b) * len(b)
            lengths.extend(chunk)
    return np.asarray(lengths), padded, len(units)


# ------------------------------------------------------------------------------------------------ baseline


def baseline_worker(spec_path: str) -> None:
    """Subprocess: matmul peaks, then the HF pipeline over the corpus in one process with every core."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import pipeline

    from bertclf.model.modeling import head_parameter_ids, load_tokenizer

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    peaks = {d: bc.matmul_peak_gflops(d) for d in spec["peak_precisions"]}  # on every core
    threads = spec["threads"]
    torch.set_num_threads(threads)
    print(f"[bench] matmul peak ({os.cpu_count()} threads, 2048x2048): "
          + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in peaks.items()), flush=True)

    files = sorted(Path(spec["corpus"]).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["id", spec["text_column"]]) for f in files])
    texts, ids = table[spec["text_column"]].to_pylist(), table["id"].to_pylist()

    t0 = time.perf_counter()
    clf = pipeline("text-classification", model=spec["ckpt_dir"], top_k=None, batch_size=spec["batch_size"],
                   device=-1, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    function = "sigmoid" if spec["task"] == "multi_label" else "softmax"
    t0 = time.perf_counter()
    results = clf(texts, truncation=True, max_length=spec["max_length"], function_to_apply=function)
    infer_s = time.perf_counter() - t0
    print(f"[bench] baseline: {len(texts)} rows in {infer_s:.2f}s ({len(texts) / infer_s:.1f} rows/s; "
          f"model load {load_s:.2f}s)", flush=True)

    col = {name: j for j, name in enumerate(spec["names"])}
    probs = np.full((len(texts), len(col)), np.nan, dtype=np.float32)
    for i, row in enumerate(results):
        for item in row:
            probs[i, col[item["label"]]] = item["score"]
    if np.isnan(probs).any():
        raise RuntimeError("the pipeline's labels don't match the checkpoint's label names")

    lengths, padded_bertclf, units = token_lengths(spec, load_tokenizer(spec["ckpt_dir"]))
    if len(lengths) != len(texts):
        raise RuntimeError(f"bertclf's units hold {len(lengths)} rows, the corpus {len(texts)}")
    bs = spec["batch_size"]  # the pipeline pads each batch, in input order, to its longest row
    padded_baseline = sum(int(lengths[i:i + bs].max()) * len(lengths[i:i + bs]) for i in range(0, len(lengths), bs))

    model = clf.model
    head = head_parameter_ids(model)
    params = {"embeddings": 0, "encoder": 0, "head": 0}
    for name, param in model.named_parameters():
        kind = "head" if id(param) in head else "embeddings" if ".embeddings." in f".{name}" else "encoder"
        params[kind] += param.numel()
    cfg = model.config
    np.save(out / "probs.npy", probs)
    (out / "ids.json").write_text(json.dumps(ids))
    (out / "result.json").write_text(json.dumps({
        "rows": len(texts), "seconds": infer_s, "model_load_seconds": load_s, "threads": threads,
        "peaks": peaks, "tokens": int(lengths.sum()), "padded_tokens_baseline": padded_baseline,
        "padded_tokens_bertclf": padded_bertclf, "units": units, "max_tokens_seen": int(lengths.max()),
        "params": params, "n_layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "dtype": str(model.dtype),
        "attn_implementation": getattr(cfg, "_attn_implementation", None), "function_to_apply": function,
    }))


def run_baseline(args: argparse.Namespace, workdir: Path, ckpt, corpus: Path, peak_precisions: list[str]) -> dict:
    import numpy as np

    out = workdir / f"baseline_{args.rows}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from bertclf.resources import plan_scoring

    cfg = score_config(args, "", "", "")
    budget = plan_scoring({"CPU": os.cpu_count() or 1}, max_tokens_per_batch=cfg.max_tokens_per_batch,
                          max_batch_rows=cfg.max_batch_rows)  # bertclf's micro-batches on this machine
    spec = {"threads": args.baseline_threads, "corpus": str(corpus), "ckpt_dir": str(ckpt.local_dir),
            "max_length": ckpt.max_length, "task": ckpt.space.task, "names": list(ckpt.space.names),
            "batch_size": args.baseline_batch_size, "out": str(out), "peak_precisions": peak_precisions,
            "text_column": cfg.text_column, "rows_per_unit": cfg.rows_per_unit,
            "read_batch_rows": cfg.read_batch_rows, "max_tokens_per_batch": budget.max_tokens_per_batch,
            "max_batch_rows": budget.max_batch_rows}
    (out / "spec.json").write_text(json.dumps(spec))
    bc.run_python([str(Path(__file__).resolve()), "--internal-baseline", str(out / "spec.json")])
    result = json.loads((out / "result.json").read_text())
    result["probs"] = np.load(out / "probs.npy")
    result["ids"] = json.loads((out / "ids.json").read_text())
    return result


# ------------------------------------------------------------------------------------------------ bertclf


def score_config(args: argparse.Namespace, ckpt_uri: str, corpus: str, output: str, compile: str | None = None):
    from bertclf.config import ScoreConfig

    knobs = {k: getattr(args, k) for k in ("max_tokens_per_batch", "max_batch_rows", "precision", "tokenize_stage")
             if getattr(args, k)}
    return ScoreConfig(checkpoint=ckpt_uri, input=corpus, output=output, overwrite=True, id_column="id",
                       compile=compile or args.compile, **knobs)


def score_once(args: argparse.Namespace, ckpt_uri: str, corpus: Path, output: Path, session_dir: str | None,
               compile: str | None = None) -> dict:
    """One bertclf.scoring.run, timed around the call, with the benchmark's memory sampled throughout."""
    import ray

    from bertclf import scoring
    from bertclf.resources import plan_scoring
    from bertclf.scoring import read_manifest, read_part_stats

    sampler = bc.MemorySampler(session_dir or "").start()
    ray_start_s = 0.0
    if session_dir is None:  # a fresh local Ray for this run, inside the memory window
        session_dir, ray_start_s = bc.start_ray()
        sampler.session_dir = session_dir
    warmup_s = bc.warm_ray_data()
    cfg = score_config(args, ckpt_uri, str(corpus), str(output), compile)
    t0 = time.perf_counter()
    scoring.run(cfg)
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    manifest = read_manifest(str(output))
    parts = sorted(output.glob("*.parquet"))
    tokens = sum(read_part_stats(str(p)).tokens for p in parts)
    cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    plan = plan_scoring(cluster, cfg.num_actors, cfg.cpus_per_actor, cfg.tokenize_stage, cfg.max_tokens_per_batch,
                        cfg.max_batch_rows)  # what scoring.run planned on this cluster
    rows = manifest.rows_out
    print(f"[bench] bertclf: {rows} rows in {wall:.2f}s around scoring.run ({rows / wall:.1f} rows/s; manifest "
          f"{manifest.rows_per_s:.1f} rows/s); peak RSS {memory['peak_rss_mb']:.0f} MB, "
          f"PSS {memory['peak_pss_mb']:.0f} MB", flush=True)
    return {"rows": rows, "wall_seconds": wall, "max_tokens_per_batch": plan.max_tokens_per_batch,
            "max_batch_rows": plan.max_batch_rows, "tokenize_stage": cfg.tokenize_stage,
            "ray_start_seconds": ray_start_s, "ray_data_warmup_seconds": warmup_s,
            "manifest_rows_per_s": manifest.rows_per_s, "timings": manifest.timings,
            "units": manifest.units.to_dict(), "tokens": tokens, "memory": memory, "session_dir": session_dir,
            "cluster": cluster, "plan": plan.describe(), "torch_threads_per_actor": plan.torch_threads,
            "actors_used": min(plan.num_actors, manifest.units.total), "compile": cfg.compile,
            "parts": [str(p) for p in parts]}


def as_checkpoint_output(baseline: dict, corpus: Path, ckpt_uri: str) -> None:
    """Make the pipeline's probabilities what the checkpoint outputs, in place: its class bias (multi-class; softmax
    is shift-invariant, so log p + bias is the biased logits up to a constant) and its TF-IDF blend. Without this a
    blending checkpoint's scores were compared with the transformer alone (agreement 0.13 on a blend of 0.35)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertclf.blend import combine
    from bertclf.model.inference import Predictor

    predictor = Predictor.load(ckpt_uri, device="cpu", precision="fp32", compile="off")
    space, probs = predictor.space, baseline["probs"]
    if space.task == "multi_class" and space.class_bias:
        probs = space.probabilities(np.log(np.clip(probs, 1e-30, 1.0)))
    if predictor.blends:
        table = pa.concat_tables([pq.read_table(f, columns=["id", "text"]) for f in sorted(corpus.glob("*.parquet"))])
        text_of = dict(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))
        probs = combine(probs, predictor.baseline_probabilities([text_of[i] for i in baseline["ids"]]),
                        predictor.blend_weight)
    baseline["probs"] = probs
    baseline["as_checkpoint_output"] = {"class_bias": bool(space.task == "multi_class" and space.class_bias),
                                        "blend_weight": predictor.blend_weight if predictor.blends else None}


def compare(baseline: dict, parts: list[str], space) -> dict:
    """Align bertclf's output with the baseline by id: label-set agreement and max |dprob|."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in parts])
    ours = np.stack([table[f"prob_{n}"].to_numpy() for n in space.names], axis=1).astype(np.float32)
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


def summarize(n: int, precision: str, baseline: dict, runs_n: list[dict], run_n: dict, run_10n: dict | None) -> dict:
    """Rates, ratios, FLOPs and memory from the measurements; peak fractions against the run's own precision."""
    peaks, tokens, params = baseline["peaks"], baseline["tokens"], baseline["params"]
    avg_tokens = tokens / n
    flops_per_token = (2 * params["encoder"] + 4 * baseline["n_layers"] * baseline["hidden"] * avg_tokens
                       + 2 * params["head"] / avg_tokens)
    peak = peaks.get(precision)

    def fraction(tokens_per_s: float | None, of: float | None = peak) -> float | None:
        return tokens_per_s * flops_per_token / (of * 1e9) if tokens_per_s and of else None

    baseline_rps, bertclf_rps = n / baseline["seconds"], n / run_n["wall_seconds"]
    scoring_rps = run_n["manifest_rows_per_s"]
    mem_n = run_n["memory"]["peak_rss_mb"]
    mem_10n = run_10n["memory"]["peak_rss_mb"] if run_10n else None
    extra = (run_10n["wall_seconds"] - run_n["wall_seconds"]) if run_10n else 0.0
    rps_10n = run_10n["rows"] / run_10n["wall_seconds"] if run_10n else None
    return {
        "baseline_rows_per_s": baseline_rps, "bertclf_rows_per_s": bertclf_rps,
        "bertclf_manifest_rows_per_s": scoring_rps,
        "bertclf_wall_seconds_runs": [r["wall_seconds"] for r in runs_n],
        "speedup": bertclf_rps / baseline_rps,
        "speedup_scoring_only": scoring_rps / baseline_rps if scoring_rps else None,
        "tokens": tokens, "tokens_bertclf_footers": run_n["tokens"], "avg_tokens_per_row": avg_tokens,
        "padding_overhead_baseline": baseline["padded_tokens_baseline"] / tokens - 1,
        "padding_overhead_bertclf": baseline["padded_tokens_bertclf"] / tokens - 1,
        "baseline_tokens_per_s": tokens / baseline["seconds"], "bertclf_tokens_per_s": tokens / run_n["wall_seconds"],
        "bertclf_scoring_tokens_per_s": scoring_rps * avg_tokens if scoring_rps else None,
        "flops_per_token": flops_per_token, "flops_note": FLOPS_NOTE, "params": params,
        "peak_gflops": peak, "peak_gflops_fp32": peaks.get("fp32"), "peak_gflops_bf16": peaks.get("bf16"),
        "peak_fraction": fraction(tokens / run_n["wall_seconds"]),
        "peak_fraction_scoring_only": fraction(scoring_rps * avg_tokens if scoring_rps else None),
        "baseline_peak_fraction": fraction(tokens / baseline["seconds"], peaks.get("fp32")),
        "peak_mem_mb_N": mem_n, "peak_mem_mb_10N": mem_10n,
        "memory_ratio_10x": mem_10n / mem_n if mem_10n else None,
        "peak_pss_mb_N": run_n["memory"]["peak_pss_mb"],
        "peak_pss_mb_10N": run_10n["memory"]["peak_pss_mb"] if run_10n else None,
        "bertclf_rows_per_s_10N": rps_10n, "speedup_10N": rps_10n / baseline_rps if rps_10n else None,
        "peak_fraction_10N": fraction(rps_10n * avg_tokens if rps_10n else None),
        "bertclf_marginal_rows_per_s": (9 * n / extra if run_10n and extra > max(2.0, 0.2 * run_n["wall_seconds"])
                                        else None),
    }


def labelled_gate(args: argparse.Namespace, ckpt_uri: str, precision: str) -> dict | None:
    """bertclf's precision (and compile setting) against fp32 eager on the same checkpoint and labelled rows, in this
    process, through the library's quality gate: the task metric's change, label agreement, max |dp|."""
    import torch

    from bertclf.model.calibration import labelled_rows
    from bertclf.model.inference import Predictor
    from bertclf.model.precision import quality_gate

    if precision == "bf16" and not bc.can_time("bf16"):
        print("[bench] quality gate skipped: bf16 is emulated on this CPU (minutes per batch)", flush=True)
        return None
    data = args.quality_data or str(Path(args.data_dir) / "goemotions" / "test.parquet")
    torch.set_num_threads(os.cpu_count() or 1)
    fp32 = Predictor.load(ckpt_uri, device="cpu", precision="fp32", compile="off")
    texts, targets = labelled_rows(data, fp32.space, args.quality_rows)
    reference = fp32.probabilities(texts)
    ours = Predictor.load(ckpt_uri, device="cpu", precision=precision, compile=args.compile)
    gate = quality_gate(fp32.space, targets, reference, ours.probabilities(texts), precision).to_dict()
    gate.update(data=data, compiled=ours.graph is not None, thresholds="the checkpoint's")
    print(f"[bench] quality gate on {len(texts)} labelled rows of {data}: {precision} "
          f"{'passed' if gate['passed'] else 'FAILED'}: {gate['reason']}; max |dp| {gate['max_abs_dprob']:.4f}",
          flush=True)
    return gate


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]


def compiled_vs_eager(n: int, runs_n: list[dict], runs_eager: list[dict], baseline: dict) -> dict:
    """What the compiled graph gained: the compiled runs against the eager runs paired with them."""
    if not runs_eager:
        return {"compile": runs_n[0]["compile"]}
    eager = median_run(runs_eager)
    ratios = sorted(e["wall_seconds"] / c["wall_seconds"] for c, e in zip(runs_n, runs_eager, strict=True))
    return {"compile": runs_n[0]["compile"], "eager_wall_seconds_runs": [r["wall_seconds"] for r in runs_eager],
            "eager_rows_per_s": n / eager["wall_seconds"],
            "speedup_eager": n / eager["wall_seconds"] / (n / baseline["seconds"]),
            "compiled_vs_eager": ratios[len(ratios) // 2], "compiled_vs_eager_pairs": ratios,
            "compile_note": "the compile cache starts empty: the first compiled run at N compiled the graph (its wall "
                            "time is bertclf_wall_seconds_runs[0]); later runs and the 10N run loaded it. Each "
                            "repeat is a (compiled, eager) pair in alternating order; compiled_vs_eager is the median "
                            "of the pairs' eager/compiled wall-time ratios"}


NOTES = {
    "bertclf_timing": "wall time around bertclf.scoring.run (planning, actor start + model load, read, score, write, "
                      "manifest); Ray startup is apart (ray_start_seconds); Ray Data's detached helper actors are "
                      "created before timing (ray_data_warmup_seconds), as on a standing cluster",
    "repeats_note": "the N run repeated, each on a fresh local Ray (or the given cluster); rows/s and memory are the "
                    "median run's; quality is read from the parts on disk, which every run rewrites identically",
    "peak_note": "best of 7 x (2048x2048 matmul) with torch on every core, measured in this run for the precisions "
                 "it uses only (bf16 where the CPU runs it natively); peak_fraction is against bertclf's precision",
    "memory_note": "sum of RSS (and, 1 sample in 4, PSS) every 0.5 s over the driver, its descendants and the Ray "
                   "session's processes, from Ray start to the end of scoring.run; PSS counts shared pages once",
    "note_10N": "the 10 x N run end to end, against the baseline's rate at N (not rerun: its cost per row is flat)",
    "marginal_note": "9N / (wall_10N - wall_N): the rate with fixed startup cancelled out; null unless the 10N run "
                     "was clearly longer (> 2 s and > 20%)",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.internal_baseline:
        baseline_worker(args.internal_baseline)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from bertclf.model import checkpoint

    started = bc.now_utc()
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    machine = bc.machine_info()
    warnings = [w for w in [bc.contention_warning(machine)] if w]
    n = args.rows
    existing = bc.in_existing_cluster()
    compile_cache = workdir / "compile_cache"  # empty: the first run pays the compile, as a new checkpoint's does
    shutil.rmtree(compile_cache, ignore_errors=True)
    os.environ["BERTCLF_COMPILE_CACHE"] = str(compile_cache)  # before Ray starts, so its workers inherit it
    try:
        ckpt_uri, ckpt_source, ckpt_train_s = ensure_checkpoint(args, workdir)
        ckpt = checkpoint.load(ckpt_uri)
        precision = bc.precision_for(args.precision, ckpt)  # as the actors resolve it (auto reads the gate record)
        peak_precisions = ["fp32"] + ([precision] if precision != "fp32" and bc.can_time(precision) else [])
        if precision == "bf16" and precision not in peak_precisions:  # bf16 forced where it is emulated
            warnings.append("bf16 forced on a CPU without native bf16 (emulated): its matmul peak is not measured")
            print(f"[bench] WARNING: {warnings[-1]}", flush=True)
        corpus = workdir / f"corpus_{n}"
        bc.write_corpus(args.data_dir, corpus, n, args.files, args.row_group_rows)

        baseline = run_baseline(args, workdir, ckpt, corpus, peak_precisions)
        as_checkpoint_output(baseline, corpus, ckpt_uri)

        session = bc.start_ray()[0] if existing else None
        runs_n, runs_eager = [], []
        # with compile on, each repeat is a pair (compiled, eager) in alternating order: the host's speed drifts by
        # more than the difference over a few minutes, so the two are compared pair by pair
        modes = [None] if args.compile == "off" else [None, "off"]
        for i in range(max(1, args.repeats)):
            for mode in modes if i % 2 == 0 else modes[::-1]:
                if not existing:
                    bc.stop_ray()
                out = workdir / f"scores_{n}{'_eager' if mode else ''}"
                (runs_eager if mode else runs_n).append(score_once(args, ckpt_uri, corpus, out, session, mode))
        run_n = median_run(runs_n)
        quality = compare(baseline, run_n["parts"], ckpt.space)
        run_10n = None
        if not args.skip_memory:
            if not existing:
                bc.stop_ray()
            corpus_10 = workdir / f"corpus_{10 * n}"
            bc.write_corpus(args.data_dir, corpus_10, 10 * n, args.files, args.row_group_rows)
            run_10n = score_once(args, ckpt_uri, corpus_10, workdir / f"scores_{10 * n}", session)
    finally:
        bc.stop_ray()
    gate = None if args.skip_quality else labelled_gate(args, ckpt_uri, precision)

    result = {
        "benchmark": "score", "rows": n, "warning": "; ".join(warnings) or None, "date": started,
        "finished": bc.now_utc(), "cpu_class": machine["cpu_class"], "precision": precision, "machine": machine,
        "versions": bc.versions(), "model": ckpt.meta.training_config.get("model"),
        "checkpoint": {"uri": ckpt_uri, "source": ckpt_source, "training_seconds": ckpt_train_s,
                       "task": ckpt.space.task, "labels": len(ckpt.space.names), "max_length": ckpt.max_length},
        "dtype": precision, "baseline_dtype": "fp32", "bertclf_layout": run_n["plan"],
        "bertclf_actors_used": run_n["actors_used"], "units": baseline["units"],
        "baseline": {"what": "transformers.pipeline('text-classification', top_k=None, batch_size="
                             f"{args.baseline_batch_size}, device=-1, fp32), one process, "
                             f"torch threads {baseline['threads']}; timed around the pipeline call only "
                             "(model load excluded)",
                     "function_to_apply": baseline["function_to_apply"], "seconds": baseline["seconds"],
                     "compared_as": baseline["as_checkpoint_output"],
                     "model_load_seconds": baseline["model_load_seconds"],
                     "attn_implementation": baseline["attn_implementation"]},
        **summarize(n, precision, baseline, runs_n, run_n, run_10n),
        **quality,
        "quality_gate": gate,
        "run_N": {k: v for k, v in run_n.items() if k != "parts"},
        "run_10N": {k: v for k, v in run_10n.items() if k != "parts"} if run_10n else None,
        **compiled_vs_eager(n, runs_n, runs_eager, baseline),
        **NOTES,
    }
    bc.write_json(bc.result_path("score", machine, started, args.json), result)
    report.print_score(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
