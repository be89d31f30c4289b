"""Benchmark reporting: read result JSON files, print their tables, and write README's result tables.

    python benchmarks/report.py                          # newest result per (benchmark, CPU class / dataset)
    python benchmarks/report.py benchmarks/results/2026-11-23-score-avx512_bf16.json   # one run in detail
    python benchmarks/report.py --readme README.md       # rewrite README's Quality and Performance tables

Measuring is benchmarks/score.py and benchmarks/train.py (each writes one JSON into benchmarks/results/);
quality results are `bertclf evaluate --json` reports per split, collected into a quality JSON by hand.
README's tables sit between `<!-- results:<name>-start -->` and `<!-- results:<name>-end -->` comments;
only what is between them is rewritten, and the same result files always give the same text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bertclf.config import PACKAGED_MODEL

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------ reading


def load_results(results_dir: str | Path = RESULTS_DIR) -> list[dict]:
    """Every result JSON in the folder, each with its file name under "_file"."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        result = json.loads(path.read_text())
        result["_file"] = path.name
        out.append(result)
    return out


def model_name(result: dict) -> str:
    """The model a result was made with, without the `packaged:` prefix; results from before this was recorded
    were all made with the default (the packaged MiniLM)."""
    return (result.get("model") or PACKAGED_MODEL).removeprefix("packaged:")


def group_key(result: dict) -> tuple[str, str]:
    """Results replace each other per benchmark, CPU class (quality, methods: dataset; int8: CPU class and the
    checkpoints' data sets) and model."""
    benchmark = result.get("benchmark", "unknown")
    subject = result.get("dataset" if benchmark in ("quality", "methods", "long_documents") else "cpu_class") \
        or "unknown"
    if benchmark == "int8":
        subject += " " + "+".join(Path(case["data"]).parent.name for case in result.get("cases", []))
    return benchmark, f"{subject} {model_name(result)}"


def newest(results: list[dict]) -> dict[tuple[str, str], dict]:
    """The newest result per group_key, by its start date (then file name), in a stable order."""
    best: dict[tuple[str, str], dict] = {}
    for result in results:
        key = group_key(result)
        rank = (str(result.get("date", "")), result.get("_file", ""))
        if key not in best or rank > (str(best[key].get("date", "")), best[key].get("_file", "")):
            best[key] = result
    return dict(sorted(best.items()))


# ------------------------------------------------------------------------------------------------ formatting


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if 0 < abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.{digits}f}"
    return str(value)


def num(value, digits: int) -> str:
    """A fixed number of decimals (README tables), "-" for missing values."""
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in header]] + [[fmt(c) for c in row] for row in rows]
    left = [[True] * len(header)] + [[i == 0 or isinstance(c, str) for i, c in enumerate(row)] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for k, row in enumerate(cells):
        padded = [c.ljust(w) if left[k][i] else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print(("  " + "  ".join(padded)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(flush=True)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_name(result: dict) -> str:
    machine = result.get("machine", {})
    return f"{machine.get('cpu_model', 'unknown')}, {machine.get('logical_cores', '?')} cores"


# ------------------------------------------------------------------------------------------------ one run


def print_score(r: dict) -> None:
    """The tables benchmarks/score.py prints at the end of a run."""
    precision, peaks = r.get("precision", r.get("dtype")), []
    for name in ("fp32", "bf16"):
        if r.get(f"peak_gflops_{name}") is not None:
            peaks.append(f"{name} {r[f'peak_gflops_{name}']:.1f}")
    print_table(f"score: {r.get('rows')} rows, {machine_name(r)}, CPU class {r.get('cpu_class')}, {r.get('date')}",
                ["", "rows/s", "tokens/s", "speedup", "peak_fraction", "precision"],
                [["HF pipeline (1 proc)", r.get("baseline_rows_per_s"), r.get("baseline_tokens_per_s"), 1.0,
                  r.get("baseline_peak_fraction"), "fp32"],
                 ["bertclf (wall)", r.get("bertclf_rows_per_s"), r.get("bertclf_tokens_per_s"), r.get("speedup"),
                  r.get("peak_fraction"), precision],
                 ["bertclf (scoring only)", r.get("bertclf_manifest_rows_per_s"), r.get("bertclf_scoring_tokens_per_s"),
                  r.get("speedup_scoring_only"), r.get("peak_fraction_scoring_only"), precision],
                 ["bertclf at 10 x N", r.get("bertclf_rows_per_s_10N"), None, r.get("speedup_10N"),
                  r.get("peak_fraction_10N"), precision],
                 ["bertclf eager (compile=off)", r.get("eager_rows_per_s"), None, r.get("speedup_eager"), None,
                  precision]])
    flops = r.get("flops_per_token")
    print_table("quality vs the fp32 baseline, memory", ["metric", "value"],
                [["bertclf layout", r.get("bertclf_layout")],
                 ["compile / compiled_vs_eager", f"{r.get('compile', '-')} / {fmt(r.get('compiled_vs_eager'), 2)}"],
                 ["agreement (label sets)", r.get("agreement")],
                 ["max_abs_dprob", r.get("max_abs_dprob")],
                 ["quality gate (labelled split vs fp32)", gate_text(r.get("quality_gate"))],
                 ["rows near a threshold", r.get("rows_with_a_prob_within_max_dprob_of_threshold")],
                 ["matmul peak GFLOP/s", " / ".join(peaks) or None],
                 ["flops_per_token", f"{flops / 1e6:.2f} M" if flops else None],
                 ["peak_mem_mb_N (RSS / PSS)", f"{fmt(r.get('peak_mem_mb_N'), 0)} / {fmt(r.get('peak_pss_mb_N'), 0)}"],
                 ["peak_mem_mb_10N (RSS / PSS)",
                  f"{fmt(r.get('peak_mem_mb_10N'), 0)} / {fmt(r.get('peak_pss_mb_10N'), 0)}"],
                 ["memory_ratio_10x", r.get("memory_ratio_10x")],
                 ["warning", r.get("warning")]])


def gate_text(gate: dict | None) -> str:
    """One line for a quality gate's result (bertclf.model.precision.GateResult as a dict): verdict, metric,
    agreement."""
    if not gate:
        return "-"
    return (f"{'pass' if gate['passed'] else 'FAIL'}: {gate['metric']} {gate['metric_delta']:+.4f}, agreement "
            f"{gate['agreement']:.4f}, max |dp| {gate['max_abs_dprob']:.4f} ({gate['rows']:,} rows)")


def print_train(r: dict) -> None:
    """The tables benchmarks/train.py prints at the end of a run."""
    bertclf = r.get("bertclf_samples_per_s")
    rows = [["bertclf Ray Train", r.get("bertclf_layout") or f"{r.get('workers')} workers",
             r.get("bertclf_precision"), bertclf, 1.0]]
    for key, value in (r.get("hf_trainer_samples_per_s") or {}).items():
        padding, precision = key.rsplit("_", 1)
        rows.append([f"HF Trainer {padding}", "1 process", precision, value,
                     bertclf / value if value and bertclf else None])
    print_table(f"train: {r.get('steps')} steps x global batch {r.get('global_batch_size')}, {machine_name(r)}, "
                f"CPU class {r.get('cpu_class')}, {r.get('date')}",
                ["", "layout", "precision", "samples/s", "bertclf speedup"], rows)
    print_table("summary", ["metric", "value"],
                [["speedup_vs_hf_trainer", r.get("speedup_vs_hf_trainer")],
                 ["  against", r.get("speedup_vs_hf_trainer_against")],
                 ["  after bertclf's first batch", r.get("speedup_vs_hf_trainer_after_first_batch")],
                 ["speedup_vs_fixed_padding", r.get("speedup_vs_fixed_padding")],
                 ["  against", r.get("speedup_vs_fixed_padding_against")],
                 ["time_to_macro_f1_0_35 (s)", r.get("time_to_macro_f1_0_35")],
                 ["warning", r.get("warning")]])


def print_quality(r: dict) -> None:
    print_table(f"quality: {r.get('dataset')}, {r.get('date')}", ["split", "rows", "metric", "value"],
                [[s["split"], s.get("rows"), k, v] for s in r.get("splits", [])
                 for k, v in s.items() if k not in ("split", "rows", "labels", "note")])


def print_result(r: dict) -> None:
    {"score": print_score, "train": print_train, "quality": print_quality,
     "int8": print_int8}.get(r.get("benchmark"), print)(r)


def print_int8(r: dict) -> None:
    """The tables benchmarks/int8.py's result holds: the engine, each variant's gates, and the speeds."""
    engine = r["engine"]
    print(f"int8, CPU class {r['cpu_class']}, {r.get('date')}: engine {engine['engine']}, VNNI-type flags "
          f"{engine['vnni_flags'] or 'none'}, saturates without reduce_range "
          f"{engine['saturates_without_reduce_range']}")
    for case in r["cases"]:
        print_table(f"{case['checkpoint']} on {case['rows']} rows of {case['data']} (blend {case['blend_weight']:g})",
                    ["variant", "transformer alone", "checkpoint output"],
                    [[name, gate_cell(v["transformer"]) + f", max |dp| {v['transformer']['max_abs_dprob']:.3f}",
                      gate_cell(v["checkpoint_output"]) + f", max |dp| {v['checkpoint_output']['max_abs_dprob']:.3f}"]
                     for name, v in case["variants"].items()])
        if case.get("speed"):
            print_table("rows/s (median of the rounds)", ["mode", "rows/s"],
                        [[k, v] for k, v in case["speed"]["rows_per_s"].items()]
                        + [[k, v["median"]] for k, v in case["speed"]["ratios"].items()])


# ------------------------------------------------------------------------------------------------ README


def performance_tables(groups: dict[tuple[str, str], dict]) -> str:
    score = [r for (b, _), r in groups.items() if b == "score"]
    train = [r for (b, _), r in groups.items() if b == "train"]
    parts = ["Scoring (`benchmarks/score.py`: bertclf end to end against a one-process fp32 HF pipeline):", "",
             markdown_table(
                 ["CPU class", "machine", "model", "date", "rows", "precision", "compile", "baseline rows/s",
                  "bertclf rows/s", "`speedup`", "`compiled_vs_eager`", "`agreement`", "`max_abs_dprob`",
                  "`memory_ratio_10x`", "`peak_fraction`", "gate: Δ metric, agreement"],
                 [[r["cpu_class"], machine_name(r), model_name(r), str(r.get("date", ""))[:10],
                   num(r.get("rows"), 0),
                   r.get("precision", "-"), r.get("compile", "off"), num(r.get("baseline_rows_per_s"), 1),
                   num(r.get("bertclf_rows_per_s"), 1), num(r.get("speedup"), 2), num(r.get("compiled_vs_eager"), 2),
                   num(r.get("agreement"), 4), num(r.get("max_abs_dprob"), 4), num(r.get("memory_ratio_10x"), 2),
                   num(r.get("peak_fraction"), 2), gate_cell(r.get("quality_gate"))] for r in score]),
             "", "Training (`benchmarks/train.py`: bertclf Ray Train against HF `Trainer` in one process;",
             "each Trainer figure is the faster of its precisions; the Trainer's tokenization is done before its",
             "timed train(), so `after bertclf's first batch` leaves out bertclf's wait for its pipeline's start too):",
             "",
             markdown_table(
                 ["CPU class", "machine", "date", "steps", "precision", "bertclf samples/s", "Trainer samples/s",
                  "`speedup_vs_hf_trainer`", "after bertclf's first batch", "Trainer fixed-padding samples/s",
                  "`speedup_vs_fixed_padding`", "`time_to_macro_f1_0_35`"],
                 [[r["cpu_class"], machine_name(r), str(r.get("date", ""))[:10], str(r.get("steps", "-")),
                   r.get("precision", "-"), num(r.get("bertclf_samples_per_s"), 1),
                   trainer_rate(r, "dynamic", "speedup_vs_hf_trainer_against"),
                   num(r.get("speedup_vs_hf_trainer"), 2), num(r.get("speedup_vs_hf_trainer_after_first_batch"), 2),
                   trainer_rate(r, "max_length", "speedup_vs_fixed_padding_against"),
                   num(r.get("speedup_vs_fixed_padding"), 2),
                   "-" if r.get("time_to_macro_f1_0_35") is None else f"{r['time_to_macro_f1_0_35']:.0f} s"]
                  for r in train])]
    parts += optional_table(
        groups, "memory",
        "Training memory (`benchmarks/memory.py`: peak RSS of one worker's optimizer step of 32 rows of "
        "newsgroups20 posts at each length, the packaged model, fp32 or bf16 as the CPU runs it; `whole`: "
        "the batch in one forward/backward, `planned`: bertclf's token-budget micro-batches):",
        ["CPU class", "date", "precision", "length", "rows per micro-batch", "whole MiB", "planned MiB",
         "planned, SDPA MiB", "whole s/step", "planned s/step", "planned, SDPA s/step", "whole / planned"],
        lambda r: [[r["cpu_class"], str(r.get("date", ""))[:10], r.get("precision", "-"), str(row["length"]),
                    str(row["planned_rows"]), num(row["whole"].get("peak_rss_mib"), 0),
                    num(row["planned"].get("peak_rss_mib"), 0), num(row["planned_sdpa"].get("peak_rss_mib"), 0),
                    num(row["whole"].get("seconds_per_step"), 1), num(row["planned"].get("seconds_per_step"), 1),
                    num(row["planned_sdpa"].get("seconds_per_step"), 1),
                    num(row.get("peak_ratio_whole_vs_planned"), 2)] for row in r["rows"]])
    parts += optional_table(
        groups, "nightly",
        "Nightly reuse (`benchmarks/nightly.py`: day 2's corpus repeats a share of day 1's texts; day 2 "
        "scored with `reuse: previous` against `reuse: none`, same checkpoint, same run):",
        ["CPU class", "date", "rows", "repeated", "full rows/s", "reuse rows/s", "`speedup`", "`agreement`",
         "`max_abs_dprob`", "note"],
        lambda r: [[r["cpu_class"], str(r.get("date", ""))[:10], num(r.get("rows"), 0),
                    f"{r.get('repeat_share', 0):.0%}", num(r.get("full_rows_per_s"), 1),
                    num(r.get("reuse_rows_per_s"), 1), num(r.get("speedup"), 2),
                    num(r["quality"].get("agreement"), 4), f"{r['quality'].get('max_abs_dprob', 0):.1e}",
                    "machine busy at start" if r.get("warning") else ""]])
    parts += optional_table(
        groups, "ops",
        "Where a scoring actor's time goes (`benchmarks/ops.py`: torch.profiler over the forward of "
        "GoEmotions validation texts in an actor's micro-batches and threads; matmul GFLOP/s from the "
        "profiler's FLOP count, against the matmul peak on the same threads):",
        ["CPU class", "date", "precision", "compile", "threads", "rows/s", "matmul share", "matmul GFLOP/s",
         "of peak", "ops by share of time"],
        lambda r: [[r["cpu_class"], str(r.get("date", ""))[:10], r.get("precision", "-"), r.get("compile", "-"),
                    str(r.get("threads")), num(r.get("rows_per_s"), 0), f"{r['matmul_share']:.0%}",
                    num(r.get("matmul_gflops"), 1), num(r.get("matmul_fraction_of_peak"), 2),
                    ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.0%}" for o in r["ops"])]])
    parts += optional_table(
        groups, "serve",
        "Serving (`benchmarks/serve.py`: `bertclf serve` on 127.0.0.1 under concurrent clients, against "
        "`Predictor.predict` in one process on the same texts):",
        ["CPU class", "date", "precision", "replicas x clients", "texts/request", "requests/s", "texts/s",
         "vs in-process", "p50 / p95 / p99 ms", "failed / lost", "memory, 2nd half / 1st"],
        lambda r: [[r["cpu_class"], str(r.get("started", ""))[:10], r.get("precision", "-"),
                    f"{r.get('replicas')} x {r.get('concurrency')}", str(run["texts_per_request"]),
                    num(run["requests_per_s"], 1), num(run["texts_per_s"], 1), num(run["vs_in_process"], 2),
                    " / ".join(num(run["latency_ms"][k], 0) for k in ("p50", "p95", "p99")),
                    f"{run['failed']} / {run['lost_answers']}", num(run.get("memory_growth_second_half"), 3)]
                   for run in r["runs"]])
    parts += optional_table(
        groups, "int8",
        "int8 on CPU (`benchmarks/int8.py`: bertclf `precision: int8` in one process at 1 thread, in a scoring "
        "actor's micro-batches, against eager fp32, compiled fp32 and the HF pipeline on the same rows, rotating "
        "rounds; gate: task metric change and label agreement against fp32 on the labelled split):",
        ["CPU class", "date", "checkpoint", "rows", "int8 rows/s", "int8 / eager fp32", "int8 / compiled fp32",
         "int8 / HF pipeline", "gate, transformer alone", "gate, checkpoint output", "note"],
        int8_rows)
    parts += optional_table(
        groups, "score_long",
        "Long documents (`benchmarks/score_long.py`: `bertclf score` of long posts, units cut by text bytes against "
        "whole row groups, and with the blend against the same checkpoint without it):",
        ["CPU class", "date", "long_text", "rows", "row groups rows/s", "text bytes rows/s", "units",
         "`text bytes / row groups`", "no blend rows/s", "`blend / no blend`"],
        lambda r: [[r["cpu_class"], str(r.get("started", ""))[:10], r["long_text"],
                    num(r["runs"]["text bytes"]["rows"], 0), num(r["runs"]["row groups"]["rows_per_s"], 1),
                    num(r["runs"]["text bytes"]["rows_per_s"], 1),
                    f"{r['runs']['row groups']['units']} -> {r['runs']['text bytes']['units']}",
                    num(r["ratios"]["text bytes / row groups"], 2),
                    num(r["runs"].get("text bytes, no blend", {}).get("rows_per_s"), 1),
                    num(r["ratios"].get("blend / no blend"), 3)]])
    return "\n".join(parts)


def gate_cell(gate: dict | None) -> str:
    """A table cell for a quality gate: "pass, f1_macro +0.0004, 0.9960" ("-" where the run had none)."""
    if not gate:
        return "-"
    verdict = "pass" if gate["passed"] else "fail"
    return f"{verdict}, {gate['metric']} {gate['metric_delta']:+.4f}, {gate['agreement']:.4f}"


def int8_rows(r: dict) -> list[list[str]]:
    """benchmarks/int8.py: one row per checkpoint: speed ratios and bertclf int8's gate (transformer, checkpoint)."""
    rows = []
    for case in r["cases"]:
        variant = case["variants"]["bertclf_int8"]
        speed = case.get("speed") or {}
        ratio = {k: v["median"] for k, v in speed.get("ratios", {}).items()}
        rows.append([r["cpu_class"], str(r.get("date", ""))[:10],
                     f"{Path(case['data']).parent.name}, {case['task']}, {case['labels']} labels, blend "
                     f"{case['blend_weight']:g}", num(case["rows"], 0),
                     num(speed.get("rows_per_s", {}).get("bertclf_int8"), 0),
                     num(ratio.get("bertclf_int8/bertclf_eager_fp32"), 2),
                     num(ratio.get("bertclf_int8/bertclf_compiled_fp32"), 2),
                     num(ratio.get("bertclf_int8/hf_pipeline_fp32"), 2),
                     gate_cell(variant["transformer"]), gate_cell(variant["checkpoint_output"]),
                     "machine busy at start" if r.get("warning") else ""])
    return rows


def optional_table(groups: dict[tuple[str, str], dict], benchmark: str, intro: str, header: list[str],
                   rows: Callable[[dict], list[list[str]]]) -> list[str]:
    """The lines of one benchmark's table (its intro, then the rows of each newest result), or none without one."""
    results = [r for (b, _), r in groups.items() if b == benchmark]
    return ["", intro, "", markdown_table(header, [row for r in results for row in rows(r)])] if results else []


def trainer_rate(result: dict, padding: str, against_key: str) -> str:
    """The Trainer run a speedup was taken against: its samples/s and precision, e.g. "96.5 (bf16)"."""
    against = result.get(against_key)
    value = (result.get("hf_trainer_samples_per_s") or {}).get(against) if against else None
    return f"{value:,.1f} ({against.rsplit('_', 1)[1]})" if value is not None else "-"


QUALITY_COLUMNS = [("f1_macro", "macro-F1"), ("f1_macro_at_0.5", "macro-F1 at 0.5"), ("f1_micro", "micro-F1"),
                   ("f1_micro_at_0.5", "micro-F1 at 0.5"), ("accuracy", "accuracy"),
                   ("subset_accuracy", "subset accuracy"), ("roc_auc_macro", "macro ROC AUC")]


def quality_table(groups: dict[tuple[str, str], dict]) -> str:
    rows = []
    for (benchmark, _), r in groups.items():
        if benchmark != "quality":
            continue
        for s in r.get("splits", []):
            split = f"`{s['split']}`" + (f" ({s['note']})" if s.get("note") else "")
            rows.append([r.get("title", r["dataset"]), model_name(r), split, num(s.get("rows"), 0),
                         str(s.get("labels", "-")), *(num(s.get(key), 3) for key, _ in QUALITY_COLUMNS),
                         str(r.get("date", ""))[:10]])
    return markdown_table(["dataset", "model", "split", "rows", "labels", *(name for _, name in QUALITY_COLUMNS),
                           "date"], rows)


def methods_table(groups: dict[tuple[str, str], dict]) -> str:
    """Full fine-tuning against LoRA and prefix-tuning per dataset (benchmarks/methods.py)."""
    rows = []
    for (benchmark, _), r in groups.items():
        if benchmark != "methods":
            continue
        for m in r["methods"]:
            tests = ", ".join(f"`{split}` {num(v.get('accuracy', v.get('f1_macro')), 3)}"
                              for split, v in m["splits"].items())
            rows.append([r.get("title", r["dataset"]), model_name(r), m["method"], tests,
                         f"{m['trainable_parameters']:,} of {m['total_parameters']:,}", num(m["samples_per_s"], 0),
                         f"{m['wall_seconds'] / 60:.1f} min", f"{m['checkpoint_mb']:.0f} MB", r["cpu_class"],
                         str(r.get("date", ""))[:10]])
    return markdown_table(["dataset", "model", "method", "test metric", "trainable parameters", "samples/s",
                           "wall time", "checkpoint", "CPU class", "date"], rows)


def long_documents_table(groups: dict[tuple[str, str], dict]) -> str:
    """The transformer, its TF-IDF baseline and the checkpoint's output (the blend where used) on each test split,
    with the validation choice and the training time (benchmarks/long_documents.py)."""
    rows = []
    for (benchmark, _), r in groups.items():
        if benchmark != "long_documents":
            continue
        key = "accuracy" if r["task"] == "multi_class" else "f1_macro"
        test = r["test"]
        blend = (r.get("validation") or {}).get("blend") or {}
        chosen = (f"weight {blend['weight']} ({blend['mode']})" if blend.get("used") else
                  f"off ({blend.get('mode', '-')})")
        rows.append([r["dataset"], f"{r['task']}, {r['labels']} labels, {r['rows']:,} rows", key,
                     num(test["transformer"].get(key), 3), num(test.get("baseline", {}).get(key), 3),
                     num(test["checkpoint"].get(key), 3), chosen, f"{r['max_length']}, {r['long_text']}",
                     (f"{r['train_wall_minutes']} min" if r.get("train_wall_minutes") else
                      f"{r['train_loop_minutes']} min (train loop)" if r.get("train_loop_minutes") else "-")
                     + (f", {r['epochs']} epoch(s)" if r.get("epochs") else ""),
                     r["cpu_class"],
                     str(r.get("date", ""))[:10]])
    return markdown_table(["dataset", "test split", "metric", "transformer", "TF-IDF baseline", "checkpoint",
                           "blend (chosen on validation)", "max_length, long_text", "train wall time",
                           "CPU class", "date"], rows)


def replace_between(text: str, name: str, body: str) -> str:
    start, end = f"<!-- results:{name}-start -->", f"<!-- results:{name}-end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"expected one {start} ... {end} pair in the README; add them where the {name} tables go")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def rewrite_readme(path: str | Path, groups: dict[tuple[str, str], dict]) -> bool:
    """Put the newest results' tables between the README's markers; True when the file changed."""
    path = Path(path)
    before = path.read_text()
    after = replace_between(before, "performance", performance_tables(groups))
    after = replace_between(after, "quality", quality_table(groups))
    after = replace_between(after, "methods", methods_table(groups))
    after = replace_between(after, "long", long_documents_table(groups))
    if after != before:
        path.write_text(after)
    return after != before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="result JSON files to print in detail (default: the newest per group)")
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder of result JSON files (default: results/)")
    p.add_argument("--readme", help="rewrite this README's tables between its results:* markers")
    args = p.parse_args(argv)
    if args.files:
        for f in args.files:
            print_result(json.loads(Path(f).read_text()))
        return 0
    groups = newest(load_results(args.results))
    if args.readme:
        changed = rewrite_readme(args.readme, groups)
        print(f"[report] {args.readme}: {'tables updated' if changed else 'unchanged'} from "
              + ", ".join(r["_file"] for r in groups.values()))
        return 0
    for result in groups.values():
        print(f"== {result['_file']}")
        print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
