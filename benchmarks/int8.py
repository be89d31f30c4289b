"""int8 on CPU: why dynamic quantization lost, what bertclf's int8 keeps, and what it gains, in one run.

    python benchmarks/int8.py --checkpoint runs/go16k/best --data ../shared/data/goemotions/test.parquet \
        [--checkpoint runs/yt-blend/best --data ../shared/data/youtube_trending/test.parquet] [--rows 2000]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/int8.py ...   # an AVX2 CPU on an AVX512 host
    (on a CPU with native bf16 the run adds real bf16 autocast to the quality variants and eager / compiled bf16 to
    the speed rounds: there int8 has to beat bf16, auto's choice)

(1) What the quantized engine does on this CPU: its name, and whether a u8 x s8 product pair saturates int16 without
reduce_range (fbgemm reads the CPU's features itself: only VNNI avoids it). (2) Per Linear layer, the input's max |x|
against its 99.9th percentile and the channels that hold the maximum (outliers), on a sample of the texts.
(3) Quality: each int8 variant (and bf16) against fp32 on --rows labelled rows of each checkpoint, through the quality
gate bertclf uses (bertclf.model.precision.quality_gate), for the transformer alone and for the checkpoint's output (its
TF-IDF blend included: what users get). (4) Speed at --threads (1 = one scoring actor's share): the HF pipeline
(fp32), bertclf eager fp32, compiled fp32 (AOTInductor), bertclf int8 (per-token inputs) and int8 with one input range
per tensor (torch's scheme, the same fbgemm kernel), each --pairs times in rotating order on the same rows, in a
scoring actor's micro-batches, with each round's ratios. --record writes bertclf int8's gate into
each checkpoint directory (what `precision: auto` reads). Results: benchmarks/results/<date>-int8-<cpu class>.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402

FFN_OUT = "FFN output dense (input: GELU(intermediate))"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="a trained checkpoint (repeat for several)")
    p.add_argument("--data", action="append", required=True, help="labelled Parquet for each --checkpoint, in order")
    p.add_argument("--rows", type=int, default=2000, help="labelled rows for the quality gate (and the speed runs)")
    p.add_argument("--stats-rows", type=int, default=300, help="rows whose Linear inputs are measured")
    p.add_argument("--pairs", type=int, default=3, help="speed rounds; each runs every mode once, order rotating")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a CPU scoring actor has 1 per CPU)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--record", action="store_true", help="write bertclf int8's gate into each checkpoint directory")
    p.add_argument("--workdir", default=str(bc.DEFAULT_RUNS_DIR / "bench_int8"), help="compile cache and scratch")
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-int8-<cpu class>.json)")
    args = p.parse_args(argv)
    if len(args.checkpoint) != len(args.data):
        p.error("give one --data per --checkpoint")
    return args


# ------------------------------------------------------------------------------------------------ the engine


def engine_facts() -> dict:
    """The quantized engines, the CPU features fbgemm cares about, and a saturation probe per engine: x all at its
    max (quantized 255 without reduce_range), w all 1 (127): each pair of products is 64,770 > int16's 32,767, so a
    kernel built on vpmaddubsw (AVX2, AVX512 without VNNI) returns about half the exact sum."""
    import torch

    from bertclf.resources import cpu_flags

    flags = cpu_flags()[1]
    probe = {}
    default = torch.backends.quantized.engine
    for engine in [e for e in ("fbgemm", "x86", "onednn") if e in torch.backends.quantized.supported_engines]:
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = torch.quantize_per_tensor(torch.ones(8, 256), 1 / 127, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        x = torch.full((4, 256), 2.0)
        x[:, 0] = 0.0  # min 0: zero point 0, every other element quantizes to the top of the range
        exact = float((x @ torch.ones(256, 8))[0, 0])
        probe[engine] = {f"reduce_range_{rr}": float(torch.ops.quantized.linear_dynamic(x, packed, rr)[0, 0]) / exact
                         for rr in (False, True)}
    torch.backends.quantized.engine = default
    return {"engine": default, "supported_engines": list(torch.backends.quantized.supported_engines),
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "vnni_flags": sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16"}),
            "saturation_probe_ratio": probe,
            "saturates_without_reduce_range": {e: r["reduce_range_False"] < 0.99 for e, r in probe.items()},
            "probe_note": "ratio of the engine's output to the exact sum; < 1 without reduce_range = u8 x s8 pairs "
                          "saturate int16 (no VNNI). torch's dynamic Linear always passes reduce_range=True (7-bit "
                          "activations), so saturation is not what loses quality; the lost bit is part of it"}


# ------------------------------------------------------------------------------------------------ the model


def linear_kind(name: str) -> str:
    if name.endswith(("query", "key", "value")):
        return "attention Q/K/V"
    if name.endswith("attention.output.dense"):
        return "attention output dense"
    if name.endswith("intermediate.dense"):
        return "FFN intermediate dense"
    if name.endswith("output.dense"):
        return FFN_OUT
    return "head (pooler, classifier)"


def activation_ranges(model, predictor, token_ids) -> list[dict]:
    """Per Linear layer: max |input|, its 99.9th percentile, their ratio, and the 3 channels with the largest max."""
    import numpy as np
    import torch

    seen: dict[str, dict] = {}

    def hook(name):
        def record(_module, inputs):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs()
            entry = seen.setdefault(name, {"max": 0.0, "p999": [], "channel_max": torch.zeros(x.shape[1])})
            entry["max"] = max(entry["max"], float(x.max()))
            flat = x.flatten()
            if flat.numel() > 4_000_000:
                flat = flat[torch.randint(0, flat.numel(), (4_000_000,))]
            entry["p999"].append(float(torch.quantile(flat, 0.999)))
            entry["channel_max"] = torch.maximum(entry["channel_max"], x.amax(0))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    try:
        predictor.model = model
        predictor.transformer_probabilities(token_ids)
    finally:
        for h in handles:
            h.remove()
    out = []
    for name, e in seen.items():
        p999 = float(np.median(e["p999"]))
        top = torch.topk(e["channel_max"], 3)
        out.append({"layer": name, "kind": linear_kind(name), "max_abs": round(e["max"], 3),
                    "p99_9_abs": round(p999, 3), "max_over_p99_9": round(e["max"] / p999, 2) if p999 else None,
                    "top_channels": top.indices.tolist(),
                    "top_channel_max": [round(v, 2) for v in top.values.tolist()],
                    "median_channel_max": round(float(e["channel_max"].median()), 3)})
    return out


def replace_linear(model, selected, make) -> object:
    """A copy of `model` with each nn.Linear whose name `selected` accepts replaced by make(linear)."""
    import torch

    model = copy.deepcopy(model)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, torch.nn.Linear) and selected(full):
                setattr(parent, name, make(child))
    return model


def torch_dynamic(model, selected, per_channel: bool):
    """torch.ao's quantize_dynamic (the earlier attempts): per-tensor or per-channel weights, 7-bit inputs with one
    range per tensor."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and selected(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), {n: qconfig for n in names}, dtype=torch.qint8)


def weights_rounded(model, selected, how: str):
    """Simulations in fp32 arithmetic: int8 per-channel weights with fp32 inputs (the ceiling of any scheme that keeps
    int8 weights), or bf16-rounded weights and inputs (what bf16 autocast's matmuls see)."""
    import torch

    def make(linear):
        w = linear.weight.data
        if how == "int8_weights":
            scale = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
            linear.weight.data = torch.round(w / scale) * scale
            return linear
        linear.weight.data = w.bfloat16().float()
        linear.forward = types.MethodType(
            lambda self, x: torch.nn.functional.linear(x.bfloat16().float(), self.weight, self.bias), linear)
        return linear

    return replace_linear(model, selected, make)


def simulated_int8(model, selected, bits: int):
    """Simulated in fp32 arithmetic: int8 per-channel weights and `bits`-bit symmetric per-token inputs. 8 bits is
    what a CPU with VNNI could run exactly (no int16 saturation, so no reduce_range); 7 bits is bertclf's int8."""
    import torch

    def make(linear):
        w = linear.weight.data
        scale = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
        linear.weight.data = torch.round(w / scale) * scale
        top = 2 ** (bits - 1) - 1

        def forward(self, x):
            rows = x.reshape(-1, x.shape[-1])
            s = (rows.abs().amax(1, keepdim=True) / top).clamp(min=1e-12)
            q = (torch.round(rows / s).clamp(-top, top) * s).reshape(x.shape)
            return torch.nn.functional.linear(q, self.weight, self.bias)

        linear.forward = types.MethodType(forward, linear)
        return linear

    return replace_linear(model, selected, make)


def variants(model) -> dict:
    """name -> (what it is, builder of the variant model)."""
    from bertclf.model.precision import Int8Linear

    def encoder(n):
        return ".encoder." in f".{n}"

    def no_ffn_out(n):
        return encoder(n) and linear_kind(n) != FFN_OUT

    return {
        "torch_default_all": ("quantize_dynamic, per-tensor weights, every Linear (head too): the earlier attempt",
                              lambda: torch_dynamic(model, lambda n: True, per_channel=False)),
        "torch_per_channel": ("quantize_dynamic, per-channel weights, encoder only (head fp32)",
                              lambda: torch_dynamic(model, encoder, per_channel=True)),
        "torch_per_channel_no_ffn_out": ("as above, FFN output dense kept fp32",
                                         lambda: torch_dynamic(model, no_ffn_out, per_channel=True)),
        "bertclf_int8": ("bertclf precision int8: per-channel weights, 7-bit inputs over each token's min..max, "
                         "head fp32",
                         lambda: replace_linear(model, encoder, Int8Linear)),
        "bertclf_int8_no_ffn_out": ("bertclf int8 with the FFN output dense kept fp32",
                                    lambda: replace_linear(model, no_ffn_out, Int8Linear)),
        "bertclf_int8_attention_output_only": (
            "bertclf int8 on the attention output dense only (1/12 of the encoder's matmul FLOPs)",
            lambda: replace_linear(model, lambda n: linear_kind(n) == "attention output dense", Int8Linear)),
        "sim_int8_a8_per_token": ("simulated: int8 per-channel weights, 8-bit per-token inputs (VNNI CPUs could run "
                                  "8-bit inputs without saturation)",
                                  lambda: simulated_int8(model, encoder, 8)),
        "sim_int8_weights_only": ("simulated: int8 per-channel weights, fp32 inputs (no activation rounding at all)",
                                  lambda: weights_rounded(model, encoder, "int8_weights")),
        "sim_bf16": ("simulated: bf16-rounded weights and inputs of every Linear (bf16 autocast's matmuls)",
                     lambda: weights_rounded(model, lambda n: True, "bf16")),
    }


# ------------------------------------------------------------------------------------------------ one checkpoint


def quality(checkpoint: str, data: str, rows: int, stats_rows: int) -> tuple[dict, object, list, object]:
    """Gates of every variant on `rows` labelled rows; returns (result, fp32 predictor, token ids, texts)."""
    from bertclf.model.calibration import labelled_rows
    from bertclf.model.inference import Predictor
    from bertclf.model.precision import quality_gate
    from bertclf.resources import cpu_has_native_bf16, plan_scoring

    plan = plan_scoring({"CPU": 1})  # a CPU scoring actor's micro-batches
    fp32 = Predictor.load(checkpoint, device="cpu", precision="fp32", compile="off",
                          max_tokens=plan.max_tokens_per_batch, max_rows=plan.max_batch_rows)
    texts, targets = labelled_rows(data, fp32.space, rows)
    token_ids = fp32.token_ids(texts)
    baseline = fp32.baseline_probabilities(texts)
    model32 = fp32.model
    ranges = activation_ranges(model32, fp32, token_ids[:stats_rows])

    def scored(model):
        fp32.model = model
        t0 = time.perf_counter()
        transformer = fp32.transformer_probabilities(token_ids)
        seconds = time.perf_counter() - t0
        output = fp32.probabilities_for_ids(token_ids, baseline) if fp32.blends else transformer
        return transformer, output, seconds

    ref_t, ref_c, seconds = scored(model32)
    import numpy as np

    thresholds = np.asarray(fp32.space.thresholds, dtype=np.float32)
    near = (np.abs(ref_t - thresholds) < 0.01).any(axis=1).mean() if fp32.space.task == "multi_label" else None
    result = {"checkpoint": checkpoint, "data": data, "rows": len(texts), "task": fp32.space.task,
              "labels": len(fp32.space.names), "blend_weight": fp32.blend_weight,
              "rows_with_a_transformer_prob_within_0_01_of_a_threshold": near,
              "fp32_rows_per_s_quality_pass": len(texts) / seconds, "activation_ranges": ranges, "variants": {}}
    builds = {name: (what, build, False) for name, (what, build) in variants(model32).items()}
    if cpu_has_native_bf16():  # the real thing where the CPU runs it (AMX, AVX512-BF16): autocast, head in fp32
        builds["bf16_autocast"] = ("bertclf precision bf16 (autocast; pooler and classifier fp32)",
                                   lambda: model32, True)
    for name, (what, build, bf16) in builds.items():
        fp32.bf16 = bf16
        transformer, output, seconds = scored(build())
        fp32.bf16 = False
        result["variants"][name] = {
            "what": what, "transformer": quality_gate(fp32.space, targets, ref_t, transformer, name).to_dict(),
            "checkpoint_output": quality_gate(fp32.space, targets, ref_c, output, name).to_dict(),
            "rows_per_s_quality_pass": len(texts) / seconds}
        g, c = result["variants"][name]["transformer"], result["variants"][name]["checkpoint_output"]
        print(f"[bench] {name:38s} transformer: Δ{g['metric']} {g['metric_delta']:+.4f} agree {g['agreement']:.4f} "
              f"max|Δp| {g['max_abs_dprob']:.4f} {'PASS' if g['passed'] else 'fail'} | checkpoint: Δ "
              f"{c['metric_delta']:+.4f} agree {c['agreement']:.4f} max|Δp| {c['max_abs_dprob']:.4f} "
              f"{'PASS' if c['passed'] else 'fail'}", flush=True)
    fp32.model = model32
    return result, fp32, token_ids, texts


def speed(checkpoint: str, fp32, token_ids, texts, pairs: int) -> dict:
    """rows/s of each mode on the same rows, `pairs` rounds in rotating order, and the per-round ratios."""
    import torch
    from transformers import pipeline

    from bertclf.model.inference import Predictor
    from bertclf.model.precision import Int8Linear
    from bertclf.resources import cpu_has_native_bf16

    budget = {"max_tokens": fp32.max_tokens, "max_rows": fp32.max_rows}
    compiled = Predictor.load(checkpoint, device="cpu", precision="fp32", compile="on", **budget)
    t0 = time.perf_counter()
    compiled.transformer_probabilities(token_ids[:64])  # loads (or waits for) the graph
    compile_s = time.perf_counter() - t0
    int8 = Predictor.load(checkpoint, device="cpu", precision="int8", compile="off", **budget)
    per_tensor = replace_linear(fp32.model, lambda n: ".encoder." in f".{n}", lambda lin: Int8Linear(lin, False))
    hf = pipeline("text-classification", model=str(fp32.checkpoint.local_dir), top_k=None, batch_size=64,
                  device=-1, dtype=torch.float32)
    function = "sigmoid" if fp32.space.task == "multi_label" else "softmax"
    model32 = fp32.model

    def int8_per_tensor(ids):
        fp32.model = per_tensor
        try:
            fp32.transformer_probabilities(ids)
        finally:
            fp32.model = model32

    modes = {
        "hf_pipeline_fp32": lambda n: hf(texts[:n], truncation=True, max_length=fp32.max_length,
                                         function_to_apply=function),
        "bertclf_eager_fp32": lambda n: fp32.transformer_probabilities(token_ids[:n]),
        "bertclf_compiled_fp32": lambda n: compiled.transformer_probabilities(token_ids[:n]),
        "bertclf_int8": lambda n: int8.transformer_probabilities(token_ids[:n]),
        "bertclf_int8_per_tensor": lambda n: int8_per_tensor(token_ids[:n]),
    }
    if compiled.graph is None:
        del modes["bertclf_compiled_fp32"]
    if cpu_has_native_bf16():  # where bf16 is native it is auto's choice: int8 has to beat it there
        bf16 = Predictor.load(checkpoint, device="cpu", precision="bf16", compile="off", **budget)
        bf16_compiled = Predictor.load(checkpoint, device="cpu", precision="bf16", compile="on", **budget)
        modes["bertclf_eager_bf16"] = lambda n: bf16.transformer_probabilities(token_ids[:n])
        if bf16_compiled.graph is not None:
            modes["bertclf_compiled_bf16"] = lambda n: bf16_compiled.transformer_probabilities(token_ids[:n])
    for run in modes.values():  # warm-up: kernels, packing, the graph
        run(256)
    names = list(modes)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(pairs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            modes[name](len(texts))
            rates[name].append(len(texts) / (time.perf_counter() - t0))
        print(f"[bench] speed round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), flush=True)

    def ratios(a, b):
        return [x / y for x, y in zip(rates[a], rates[b], strict=True)] if a in rates and b in rates else None

    out = {"rows": len(texts), "rows_per_s": {n: statistics.median(v) for n, v in rates.items()},
           "rows_per_s_rounds": rates, "compile_or_load_seconds": compile_s, "ratios": {}}
    for a, b in (("bertclf_int8", "bertclf_eager_fp32"), ("bertclf_int8", "bertclf_compiled_fp32"),
                 ("bertclf_int8", "hf_pipeline_fp32"), ("bertclf_eager_fp32", "hf_pipeline_fp32"),
                 ("bertclf_compiled_fp32", "bertclf_eager_fp32"),
                 ("bertclf_int8_per_tensor", "bertclf_eager_fp32"), ("bertclf_int8_per_tensor", "bertclf_int8"),
                 ("bertclf_int8", "bertclf_eager_bf16"), ("bertclf_int8", "bertclf_compiled_bf16"),
                 ("bertclf_compiled_bf16", "hf_pipeline_fp32")):
        if (rs := ratios(a, b)) is not None:
            out["ratios"][f"{a}/{b}"] = {"median": statistics.median(rs), "rounds": rs}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bc.setup_env()
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BERTCLF_COMPILE_CACHE", str(workdir / "compile_cache"))
    import torch

    machine = bc.machine_info()
    warning = bc.contention_warning(machine)
    started = bc.now_utc()
    torch.set_num_threads(args.threads)
    facts = engine_facts()
    print(f"[bench] CPU class {machine['cpu_class']}, quantized engine {facts['engine']}, saturates without "
          f"reduce_range: {facts['saturates_without_reduce_range']}", flush=True)
    cases = []
    for checkpoint, data in zip(args.checkpoint, args.data, strict=True):
        print(f"[bench] {checkpoint} on {data}", flush=True)
        case, fp32, token_ids, texts = quality(checkpoint, data, args.rows, args.stats_rows)
        if not args.skip_speed:
            case["speed"] = speed(checkpoint, fp32, token_ids, texts, args.pairs)
            rates, ratios = case["speed"]["rows_per_s"], case["speed"]["ratios"]
            print("[bench] rows/s (median): " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + "; "
                  + ", ".join(f"{k} {v['median']:.2f}" for k, v in ratios.items()), flush=True)
        if args.record:
            from bertclf.model.precision import GateResult, write_gates

            gate = GateResult.from_dict(case["variants"]["bertclf_int8"]["checkpoint_output"])
            gate = GateResult(**{**gate.to_dict(), "precision": "int8"})
            case["recorded"] = write_gates(fp32.checkpoint.uri, fp32.checkpoint.fingerprint(), [gate],
                                           {"data": [data], "cpu_class": machine["cpu_class"],
                                            "torch": torch.__version__, "by": "benchmarks/int8.py"})
        cases.append(case)
    result = {"benchmark": "int8", "date": started[:10], "started": started, "finished": bc.now_utc(),
              "cpu_class": machine["cpu_class"], "machine": machine, "versions": bc.versions(),
              "threads": args.threads, "engine": facts, "cases": cases, "warning": warning,
              "gate": "bertclf.model.precision.quality_gate: |Δ task metric| <= 0.003 and label agreement >= 0.99 "
                      "against "
                      "fp32 (eager) on the same rows; 'checkpoint_output' includes the checkpoint's TF-IDF blend",
              "speed_note": "in-process, the same token ids for every bertclf mode (the pipeline tokenizes its own), "
                            "transformer forward only; median of the rounds; ratios are per round, then the median"}
    bc.write_json(bc.result_path("int8", machine, started, args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
