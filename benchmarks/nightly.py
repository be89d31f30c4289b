"""Benchmark: a nightly re-score with `reuse: previous` against a full re-score of the same day, on GoEmotions.

    python benchmarks/nightly.py --rows 8000 [--repeat-share 0.8] [--checkpoint URI] [--workdir DIR] [--json PATH]

Steps: (1) a checkpoint (--checkpoint, or the packaged all-MiniLM-L6-v2 with a seeded, untrained 28-label head:
speed does not depend on what the head learned); (2) two days of N rows from GoEmotions (all splits): day 1 is N
distinct texts, day 2 is --repeat-share of N texts drawn from day 1 (each once: within-day duplicates would add the
within-unit dedup's gain to the ratio) and the rest texts day 1 never had, shuffled, under new ids; (3) on one local
Ray, warmed up: day 1 scored into `scores/date=<day 1>`, then day 2 scored twice, in the same run and order
alternating over --repeats: a full re-score (`reuse: none`, `dedupe: false`: every row through the model, as before
reuse existed) and `reuse: previous` into `scores/date=<day 2>`, which finds day 1; (4) rows/s of each (rows over the
wall time around `bertclf.scoring.run`), the ratio, rows reused, and the two outputs compared by id.
Results: one JSON (default benchmarks/results/<date>-nightly-<cpu class>.json) and a line for the README table.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import time
from pathlib import Path

import common as bc

bc.setup_env()

DAY1, DAY2 = "2026-11-21", "2026-11-22"
SPLITS = ("train", "validation", "test")  # a speed benchmark: every distinct text is usable, none chooses settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, required=True, help="rows per day (N)")
    p.add_argument("--repeat-share", type=float, default=0.8, help="share of day 2's rows whose text day 1 had")
    p.add_argument("--repeats", type=int, default=1, help="pairs (full, reuse) of day-2 runs; the medians are reported")
    p.add_argument("--json", help="where to write the results (default: benchmarks/results/<date>-nightly-<cpu>.json)")
    p.add_argument("--checkpoint", help="checkpoint URI (default: packaged MiniLM with a seeded untrained head)")
    p.add_argument("--workdir", default=str(bc.DEFAULT_RUNS_DIR / "bench_nightly"), help="scratch directory")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR), help="directory holding goemotions/*.parquet")
    p.add_argument("--files", type=int, default=2, help="Parquet files per day")
    p.add_argument("--row-group-rows", type=int, default=1000, help="rows per Parquet row group")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rows < 10 or not 0 <= args.repeat_share <= 1:
        p.error("--rows must be >= 10 and --repeat-share in [0, 1]")
    return args


def make_checkpoint(workdir: Path) -> str:
    """The packaged MiniLM with a seeded 28-label multi-label head, saved as a bertclf checkpoint (no training)."""
    import torch

    from bertclf.config import PACKAGED_MODEL
    from bertclf.labels import LabelSpace
    from bertclf.model import adapters
    from bertclf.model.modeling import build_classifier, load_tokenizer, resolve_model_dir
    from bertclf.records import CheckpointMeta

    names = sorted({lab for labels in bc.read_goemotions(bc.DEFAULT_DATA_DIR, "validation", ["labels"])["labels"]
                    .to_pylist() for lab in labels})
    directory = workdir / "checkpoint"
    if (directory / "bertclf.json").exists():
        return str(directory)
    torch.manual_seed(0)
    model_dir = resolve_model_dir(PACKAGED_MODEL)
    space = LabelSpace("multi_label", names, [])
    adapters.save_model_dir(directory, build_classifier(model_dir, space), load_tokenizer(model_dir),
                            CheckpointMeta(labels=space, max_length=64, epoch=0))
    return str(directory)


def write_days(args: argparse.Namespace, root: Path) -> dict:
    """Day 1 and day 2 as `root/date=<day>/part-*.parquet`; returns how day 2 was made."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = list(dict.fromkeys(t for split in SPLITS
                               for t in bc.read_goemotions(args.data_dir, split, ["text"])["text"].to_pylist()))
    n = args.rows
    repeated = round(args.repeat_share * n)
    if 2 * n - repeated > len(texts):
        raise SystemExit(f"--rows {n}: day 1's {n} texts and day 2's {n - repeated} new ones need "
                         f"{2 * n - repeated} distinct texts; GoEmotions has {len(texts)}")
    rng = random.Random(args.seed)
    rng.shuffle(texts)
    day1, unseen = texts[:n], texts[n:]
    day2 = rng.sample(day1, repeated) + unseen[:n - repeated]
    rng.shuffle(day2)
    shutil.rmtree(root, ignore_errors=True)
    for day, rows in ((DAY1, day1), (DAY2, day2)):
        folder = root / f"date={day}"
        folder.mkdir(parents=True)
        bounds = [round(k * n / args.files) for k in range(args.files + 1)]
        for k in range(args.files):
            chunk = rows[bounds[k]:bounds[k + 1]]
            table = pa.table({"id": [f"{day}-{k}-{j}" for j in range(len(chunk))], "text": chunk})
            pq.write_table(table, folder / f"part-{k}.parquet", row_group_size=args.row_group_rows)
    return {"rows_per_day": n, "day2_rows_from_day1": repeated, "day2_new_rows": n - repeated,
            "source": f"GoEmotions {', '.join(SPLITS)} (distinct texts, shuffled with --seed)"}


def score(ckpt: str, inputs: str, output: str, date: str, **kw) -> dict:
    from bertclf import scoring
    from bertclf.config import ScoreConfig
    from bertclf.scoring import read_manifest

    t0 = time.perf_counter()
    summary = scoring.run(ScoreConfig(checkpoint=ckpt, input=inputs, output=output, date=date, id_column="id", **kw))
    wall = time.perf_counter() - t0
    manifest = read_manifest(summary.output)
    print(f"[bench] {summary.output}: {summary.rows_out} rows in {wall:.1f}s ({summary.rows_out / wall:.1f} rows/s); "
          f"{summary.rows_reused} reused, {manifest.texts_scored} texts run", flush=True)
    return {"output": summary.output, "rows": summary.rows_out, "wall_seconds": wall,
            "rows_per_s": summary.rows_out / wall, "manifest_rows_per_s": manifest.rows_per_s,
            "rows_reused": summary.rows_reused, "texts_scored": manifest.texts_scored,
            "duplicate_rows": manifest.duplicate_rows, "windows_scored": manifest.windows_scored,
            "timings": manifest.timings, "reuse": manifest.reuse.to_dict() if manifest.reuse else None}


def compare(a: str, b: str) -> dict:
    """Probabilities and predictions of two outputs, row by row (by id)."""
    import numpy as np
    import pyarrow.dataset as pads

    ta = pads.dataset(a, format="parquet").to_table().sort_by("id")
    tb = pads.dataset(b, format="parquet").to_table().sort_by("id")
    assert ta["id"].equals(tb["id"]), "the two outputs hold other rows"
    cols = [c for c in ta.column_names if c.startswith("prob_")]
    pa_, pb = (np.stack([t[c].to_numpy() for c in cols], axis=1) for t in (ta, tb))
    same = sum(x == y for x, y in zip(ta["predicted"].to_pylist(), tb["predicted"].to_pylist(), strict=True))
    return {"rows": ta.num_rows, "max_abs_dprob": float(np.abs(pa_ - pb).max()), "agreement": same / ta.num_rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = bc.now_utc()
    machine = bc.machine_info()
    warnings = [w for w in [bc.contention_warning(machine)] if w]
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or make_checkpoint(workdir)
    data = workdir / "days"
    days = write_days(args, data)
    scores = workdir / "scores"
    shutil.rmtree(scores, ignore_errors=True)
    inputs, template = str(data / "date={date}"), str(scores / "date={date}")
    full_runs, reuse_runs = [], []
    try:
        bc.start_ray()
        bc.warm_ray_data()
        day1 = score(ckpt, inputs, template, DAY1, reuse="none")  # also compiles the graph into the node cache
        for i in range(max(1, args.repeats)):
            order = ("full", "reuse") if i % 2 == 0 else ("reuse", "full")
            for mode in order:
                if mode == "full":
                    full_runs.append(score(ckpt, inputs, str(workdir / f"full_{i}"), DAY2, reuse="none",
                                           dedupe=False, overwrite=True))
                else:
                    reuse_runs.append(score(ckpt, inputs, template, DAY2, reuse="previous", overwrite=True))
    finally:
        bc.stop_ray()
    full_rate = statistics.median(r["rows_per_s"] for r in full_runs)
    reuse_rate = statistics.median(r["rows_per_s"] for r in reuse_runs)
    quality = compare(reuse_runs[-1]["output"], full_runs[-1]["output"])
    result = {
        "benchmark": "nightly", "rows": args.rows, "repeat_share": args.repeat_share, "date": started,
        "finished": bc.now_utc(), "warning": "; ".join(warnings) or None, "cpu_class": machine["cpu_class"],
        "machine": machine, "versions": bc.versions(), "checkpoint": ckpt, "days": days, "day1": day1,
        "day2_full": full_runs, "day2_reuse": reuse_runs, "full_rows_per_s": full_rate,
        "reuse_rows_per_s": reuse_rate, "speedup": reuse_rate / full_rate, "quality": quality,
    }
    bc.write_json(bc.result_path("nightly", machine, started, args.json), result)
    print(f"[bench] day 2 ({args.rows} rows, {args.repeat_share:.0%} repeated from day 1): full re-score "
          f"{full_rate:.1f} rows/s, reuse: previous {reuse_rate:.1f} rows/s, {reuse_rate / full_rate:.2f}x; "
          f"max |dprob| {quality['max_abs_dprob']:.2e}, agreement {quality['agreement']:.4f}", flush=True)
    print(f"| {machine['cpu_class']} | {started[:10]} | {args.rows} | {args.repeat_share:.0%} | {full_rate:.1f} | "
          f"{reuse_rate:.1f} | {reuse_rate / full_rate:.2f} | {quality['max_abs_dprob']:.1e} | "
          f"{quality['agreement']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
