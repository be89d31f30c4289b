"""Full fine-tuning against LoRA and prefix-tuning on one dataset, the table the seed projects show: test metric,
trainable parameters, samples/s, wall time and checkpoint size per method, each trained with the same shipped
config (only `method` differs), in one run on one machine.

    python benchmarks/methods.py --dataset youtube --config jobs/configs/youtube.yaml --splits test,test_unseen

Writes benchmarks/results/<date>-methods-<dataset>.json (what README's Methods table shows).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402
from quality import DATASETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--config", required=True, help="the shipped training config (method is overridden)")
    p.add_argument("--methods", default="full,lora,prefix")
    p.add_argument("--splits", default="test")
    p.add_argument("--runs", default="runs/methods", help="where each method's run directory goes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR))
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-methods-<dataset>.json)")
    args = p.parse_args(argv)
    bc.setup_env()
    from bertclf.config import EvaluateConfig, TrainConfig, load_config, parse_set_overrides
    from bertclf.evaluate import evaluate
    from bertclf.model import checkpoint
    from bertclf.training import run

    title, folder, _ = DATASETS[args.dataset]
    started = bc.now_utc()
    machine = bc.machine_info()
    rows = []
    for method in args.methods.split(","):
        output = str(Path(args.runs, f"{args.dataset}-{method}").resolve())
        cfg = load_config(TrainConfig, args.config, {**parse_set_overrides(args.set), "method": method,
                                                     "output": output})
        t0 = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - t0
        meta = checkpoint.load(result.best_uri).meta
        best_dir = Path(result.best_uri)
        row = {"method": method, "settings": meta.tuning.settings,
               "trainable_parameters": meta.tuning.trainable_parameters,
               "total_parameters": meta.tuning.total_parameters, "wall_seconds": round(wall, 1),
               "samples_per_s": round(sum(h.samples_per_s for h in result.history) / len(result.history), 1),
               "best_epoch": result.best.epoch, f"validation_{cfg.best_metric}": round(result.best.metric(
                   cfg.best_metric) or 0.0, 4),
               "checkpoint_mb": round(sum(f.stat().st_size for f in best_dir.rglob("*") if f.is_file()) / 2**20, 1),
               "splits": {}}
        for split in args.splits.split(","):
            metrics = evaluate(EvaluateConfig(checkpoint=result.best_uri,
                                              data=str(Path(args.data_dir, folder, f"{split}.parquet"))))
            row["splits"][split] = {k: round(metrics[k], 4) for k in ("accuracy", "f1_macro", "f1_micro")
                                    if metrics.get(k) is not None}
        print(f"[bench] {title} {method}: {row}", flush=True)
        rows.append(row)
    result = {"benchmark": "methods", "dataset": args.dataset, "title": title, "date": started[:10],
              "started": started, "cpu_class": machine["cpu_class"], "machine": machine, "config": args.config,
              "model": cfg.model, "overrides": args.set, "methods": rows, "versions": bc.versions()}
    path = Path(args.json) if args.json else bc.RESULTS_DIR / f"{started[:10]}-methods-{args.dataset}.json"
    bc.write_json(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
