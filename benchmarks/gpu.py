"""GPU check and sizing, run on one GPU without Ray: the pieces Ray's GPU workers, scoring actors and Serve
replicas run, called directly.

    python benchmarks/gpu.py --models minilm=DIR mpnet=DIR --short texts.parquet --long texts.parquet --out r.json

1. Every architecture (the seven tiny random encoders of bertclf/dev/tiny_architectures.py): the classifier built as a
   GPU train worker builds it (attention chosen per model class), each method it takes trained for a few bf16
   steps through the worker's own `accumulate_gradients` with the worker's planned GPU token budget, and a
   checkpoint's probabilities from `Predictor` on the GPU (fp32 and bf16) against the CPU's fp32.
2. Real sizes (a model directory's config and tokenizer; random weights where it holds none, since speed and
   memory do not depend on the values): scoring rows/s and peak memory in fp32 and bf16 at three micro-batch
   budgets, short and 512-token texts; one tokenizer process's rows/s (how many CPU tokenizers feed a GPU actor);
   training samples/s and peak memory per batch against the memory planner's estimate.

Figures are for the GPU the run lands on; the result JSON names it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bertclf from this checkout: the GPU machine runs it uninstalled

BUDGETS = [(16384, 256), (65536, 1024), (262144, 4096)]  # (max tokens, max rows) per scoring micro-batch
TRAIN_LENGTHS = [128, 512]
TRAIN_BATCH = 32
TRAIN_STEPS = 13
WARMUP_STEPS = 3  # of TRAIN_STEPS, not timed
DEVICE = "cuda"  # --device cpu: a smoke run of this script on a machine without a GPU (its figures mean nothing)
CPU_SMOKE_SHARE = 4 * 2**30


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def synthetic_rows(n: int, seed: int) -> tuple[list[str], list[list[float]]]:
    """Texts whose words predict their labels (the tests' synthetic rows) with multi-hot targets."""
    from bertclf.dev.synthetic import LABEL_WORDS, make_rows

    names = sorted(LABEL_WORDS)
    rows = make_rows(n, seed, True)
    return [r["text"] for r in rows], [[float(name in r["labels"]) for name in names] for r in rows]


def batches(tokenizer, texts: list[str], targets: list[list[float]], size: int, max_length: int):
    import numpy as np

    from bertclf.training.batching import Batch

    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i:i + size], truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                        return_token_type_ids=False)
        yield Batch(enc["input_ids"], enc["attention_mask"], np.asarray(targets[i:i + size], dtype=np.float32))


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    import torch

    return gib(torch.cuda.max_memory_allocated()) if DEVICE == "cuda" else None


def precisions() -> tuple[str, ...]:
    """bf16 on the GPU; fp32 alone in a CPU smoke run (bf16 is emulated, minutes per matmul, on AVX2 CPUs)."""
    return ("fp32", "bf16") if DEVICE == "cuda" else ("fp32",)


def step_for(model, device, cfg):
    """(the step context a train worker builds for `model`, multi-label; the memory plan a GPU worker makes, or on
    a CPU smoke run the planner's answer for a fixed share)."""
    import torch

    from bertclf.model.adapters import hf_model
    from bertclf.training import StepContext
    from bertclf.training.memory import plan_for_model
    from bertclf.training.worker import gpu_memory_plan

    plan = (gpu_memory_plan(cfg, model, device, True) if DEVICE == "cuda" else
            plan_for_model(model, hf_model(model).config, cfg, share_bytes=CPU_SMOKE_SHARE, device_type="cpu",
                           bf16=False))
    step = StepContext(model=model, device=device, bf16=DEVICE == "cuda", loss_fn=torch.nn.BCEWithLogitsLoss(),
                       max_tokens_per_batch=plan.max_tokens_per_batch)
    return step, plan


def train_steps(model_dir: Path, method: str, device, steps: int = 30) -> dict:
    import torch

    from bertclf.config import TrainConfig
    from bertclf.dev.synthetic import LABEL_WORDS
    from bertclf.labels import LabelSpace
    from bertclf.model import adapters
    from bertclf.model.modeling import attention_for, build_classifier, keep_head_in_fp32, load_tokenizer
    from bertclf.training import accumulate_gradients

    cfg = TrainConfig(model=str(model_dir), method=method, lora_rank=4, prefix_length=4, max_length=32,
                      batch_size=16, learning_rate=2e-3)
    space = LabelSpace("multi_label", sorted(LABEL_WORDS), [])
    model = adapters.apply_method(build_classifier(str(model_dir), space, False, DEVICE), cfg)
    keep_head_in_fp32(adapters.hf_model(model))
    model.to(device).train()
    step, _ = step_for(model, device, cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, fused=True)
    texts, targets = synthetic_rows(16 * steps, seed=1)
    losses = []
    for batch in batches(load_tokenizer(str(model_dir)), texts, targets, 16, 32):
        losses.append(float(accumulate_gradients(step, batch)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"attention": attention_for(DEVICE, str(model_dir)), "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4), "finite": all(math.isfinite(x) for x in losses),
            "planned_max_tokens": step.max_tokens_per_batch}


def architectures(workdir: Path) -> dict:
    import numpy as np
    import torch

    from bertclf.dev.tiny_architectures import ARCHITECTURES, TAKES_PREFIX, build_tiny
    from bertclf.dev.tiny_model import save_tiny_checkpoint
    from bertclf.model.inference import Predictor

    device = torch.device(DEVICE)
    texts, _ = synthetic_rows(64, seed=3)
    out = {}
    for arch in ARCHITECTURES:
        entry: dict = {"methods": {}}
        try:
            model_dir = build_tiny(workdir / arch / "base", arch)
            for method in ["full", "lora", "prefix"] if arch in TAKES_PREFIX else ["full", "lora"]:
                entry["methods"][method] = train_steps(model_dir, method, device)
            ckpt = save_tiny_checkpoint(workdir / arch / "ckpt", model_dir, "multi_label", [0.45, 0.5, 0.55])
            cpu = Predictor.load(str(ckpt), device="cpu", precision="fp32").probabilities(texts)
            for precision in precisions():
                got = Predictor.load(str(ckpt), device=DEVICE, precision=precision).probabilities(texts)
                entry[f"predict_{precision}_max_abs_dprob"] = float(np.abs(got - cpu).max())
            entry["ok"] = True
        except Exception as exc:  # a failing architecture is a finding; the others still run
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        print(f"[gpu] {arch}: {json.dumps(entry)}", flush=True)
        out[arch] = entry
    return out


def random_checkpoint(model_dir: Path, workdir: Path, max_length: int) -> tuple[Path, bool]:
    """A bertclf checkpoint of the model (28 multi-label outputs), and whether its weights are random (the
    directory holds none)."""
    import transformers as t

    from bertclf.labels import LabelSpace
    from bertclf.model import adapters
    from bertclf.model.modeling import build_classifier, load_tokenizer
    from bertclf.records import CheckpointMeta

    source = model_dir
    random = not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin"))
    if random:
        source = workdir / "weights"
        t.AutoModel.from_config(t.AutoConfig.from_pretrained(model_dir)).save_pretrained(source)
        load_tokenizer(str(model_dir)).save_pretrained(source)
    space = LabelSpace("multi_label", [f"label{i:02d}" for i in range(28)], [0.5] * 28)
    ckpt = workdir / "ckpt"
    adapters.save_model_dir(ckpt, build_classifier(str(source), space), load_tokenizer(str(source)),
                            CheckpointMeta(labels=space, max_length=max_length, epoch=1))
    return ckpt, random


def variants(ckpt: Path) -> list[tuple[str, bool]]:
    """(precision, cuDNN attention on): bertclf's settings, and for SDPA models on a GPU also bf16 with torch's
    default backend order (cuDNN first), the baseline for `without_cudnn_attention`."""
    from bertclf.model.modeling import attention_for

    runs = [(precision, False) for precision in precisions()]
    return runs + ([("bf16", True)] if DEVICE == "cuda" and attention_for(DEVICE, str(ckpt)) == "sdpa" else [])


def scoring(ckpt: Path, texts: list[str], max_length: int) -> dict:
    import torch

    from bertclf.model.inference import Predictor
    from bertclf.model.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(ckpt))
    t0 = time.perf_counter()
    ids = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    tokenize_seconds = time.perf_counter() - t0
    out = {"rows": len(texts), "max_length": max_length, "mean_tokens": round(sum(map(len, ids)) / len(ids), 1),
           "tokenizer_rows_per_s_one_process": round(len(texts) / tokenize_seconds, 1), "runs": []}
    for precision, cudnn in variants(ckpt):
        p = Predictor.load(str(ckpt), device=DEVICE, precision=precision)
        if cudnn:
            torch.backends.cuda.enable_cudnn_sdp(True)  # torch's default, the baseline bertclf turns off
        for max_tokens, max_rows in BUDGETS:
            p.max_tokens, p.max_rows = max_tokens, max_rows
            p.probabilities_for_ids(ids[:2048])  # warm-up: kernels, allocator
            reset_peak()
            t0 = time.perf_counter()
            p.probabilities_for_ids(ids)  # returns host arrays: the device is done
            seconds = time.perf_counter() - t0
            run = {"precision": precision, "cudnn_sdpa": cudnn, "max_tokens": max_tokens, "max_rows": max_rows,
                   "rows_per_s": round(len(ids) / seconds, 1), "peak_gib": peak_gib()}
            print(f"[gpu]   score {json.dumps(run)}", flush=True)
            out["runs"].append(run)
        torch.backends.cuda.enable_cudnn_sdp(False)
        del p
    return out


def training(ckpt: Path, texts: list[str], steps: int) -> list[dict]:
    """Full fine-tuning steps of TRAIN_BATCH rows padded to each length, bf16 autocast, against the planner."""
    import torch

    from bertclf.config import TrainConfig
    from bertclf.model.adapters import hf_model
    from bertclf.model.modeling import attention_for, from_pretrained, load_tokenizer
    from bertclf.training import accumulate_gradients

    device = torch.device(DEVICE)
    tokenizer = load_tokenizer(str(ckpt))
    results = []
    for length in TRAIN_LENGTHS:
        model = from_pretrained(str(ckpt), attention_for(DEVICE, str(ckpt))).to(device).train()
        config = hf_model(model).config
        step, plan = step_for(model, device, TrainConfig(model=str(ckpt), max_length=length, batch_size=TRAIN_BATCH))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        long_text = " ".join(texts)  # one long text cut to `length` tokens: every row is full length
        rows = [long_text] * TRAIN_BATCH
        target = [[0.0] * config.num_labels for _ in rows]
        (batch,) = batches(tokenizer, rows, target, TRAIN_BATCH, length)
        reset_peak()
        t0 = 0.0
        for step in range(steps):
            if step == WARMUP_STEPS:
                sync()
                t0 = time.perf_counter()
            accumulate_gradients(step, batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        timed = steps - WARMUP_STEPS
        seconds = time.perf_counter() - t0
        eager = attention_for(DEVICE, config) == "eager"
        run = {"length": length, "batch": TRAIN_BATCH, "attention": "eager" if eager else "sdpa",
               "planned_max_tokens": plan.max_tokens_per_batch,
               "samples_per_s": round(timed * TRAIN_BATCH / seconds, 1), "peak_gib": peak_gib(),
               "planner_estimate_gib": gib(plan.estimated_bytes)}
        print(f"[gpu]   train {json.dumps(run)}", flush=True)
        results.append(run)
        del model, optimizer, step
    return results


def sizes(models: dict[str, Path], short: list[str], long: list[str], workdir: Path, steps: int) -> dict:
    out = {}
    for name, model_dir in models.items():
        print(f"[gpu] {name}", flush=True)
        try:
            ckpt, random = random_checkpoint(model_dir, workdir / name, 512)
            out[name] = {"random_weights": random,
                         "score_short": scoring(ckpt, short, 128), "score_long": scoring(ckpt, long, 512),
                         "train": training(ckpt, long, steps)}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"[gpu] {name}: {out[name]['error']}", flush=True)
    return out


def texts_of(path: str | None, limit: int) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["text"])["text"].to_pylist()[:limit] if path else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=[], help="NAME=DIR: a model directory (config, tokenizer)")
    ap.add_argument("--short", help="Parquet with a text column: short texts (scored at 128 tokens)")
    ap.add_argument("--long", help="Parquet with a text column: long texts (scored and trained at 512 tokens)")
    ap.add_argument("--short-rows", type=int, default=20000)
    ap.add_argument("--long-rows", type=int, default=2000)
    ap.add_argument("--skip-architectures", action="store_true")
    ap.add_argument("--steps", type=int, default=TRAIN_STEPS,
                    help=f"training steps per length ({WARMUP_STEPS} of them warm-up, not timed)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of this script")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch
    import transformers

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("[gpu] no CUDA device: nothing to check", file=sys.stderr)
        return 2
    short = texts_of(args.short, args.short_rows)
    short = (short * math.ceil(args.short_rows / max(1, len(short))))[:args.short_rows] if short else short
    long = texts_of(args.long, args.long_rows)
    cuda = DEVICE == "cuda"
    result = {"benchmark": "gpu", "date": time.strftime("%Y-%m-%d"), "device": DEVICE,
              "gpu": torch.cuda.get_device_name() if cuda else None,
              "gpu_memory_gib": gib(torch.cuda.get_device_properties(0).total_memory) if cuda else None,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_architectures:
            result["architectures"] = architectures(Path(tmp) / "arch")
        models = dict(m.split("=", 1) for m in args.models)
        result["sizes"] = sizes({k: Path(v) for k, v in models.items()}, short, long, Path(tmp) / "sizes",
                                 args.steps)
    Path(args.out).write_text(json.dumps(result, indent=1))
    failed = [a for a, e in result.get("architectures", {}).items() if not e["ok"]]
    print(f"[gpu] wrote {args.out}; architectures failing: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
