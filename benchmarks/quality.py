"""Quality of a trained run on test splits: `bertclf.evaluate` per split, plus the run's per-epoch validation
history, written as one `benchmarks/results/<date>-quality-<dataset>.json` (what README's Quality table shows).

    python benchmarks/quality.py --dataset youtube --run runs/youtube --splits test,test_unseen \\
        --config jobs/configs/youtube.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402

DATASETS = {"goemotions": ("GoEmotions", "goemotions", {}),
            "youtube": ("YouTube trending", "youtube_trending",
                        {"test": "83.5% of its titles also occur in train", "test_unseen": "leak-free"}),
            "newsgroups20": ("20 Newsgroups", "newsgroups20", {})}
KEYS = ("f1_macro", "f1_macro_at_0.5", "f1_micro", "f1_micro_at_0.5", "accuracy", "subset_accuracy", "roc_auc_macro")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--run", required=True, help="the training run directory (holds best/ and metrics.jsonl)")
    p.add_argument("--splits", default="test", help="comma-separated split names of the dataset")
    p.add_argument("--config", help="the training config the run used (recorded as is)")
    p.add_argument("--data-dir", default=str(bc.DEFAULT_DATA_DIR))
    p.add_argument("--long-text", default="checkpoint",
                   help="comma-separated: evaluate each split as the checkpoint says and/or with truncate / chunk")
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-quality-<dataset>.json)")
    args = p.parse_args(argv)
    bc.setup_env()
    from bertclf.config import EvaluateConfig
    from bertclf.evaluate import evaluate
    from bertclf.model import checkpoint

    title, folder, notes = DATASETS[args.dataset]
    best = str(Path(args.run, "best").resolve())
    ckpt = checkpoint.load(best)
    history = checkpoint.run_history(best, ckpt.meta)
    started = bc.now_utc()
    machine = bc.machine_info()
    splits = []
    variants = args.long_text.split(",")
    for split in args.splits.split(","):
        for long_text in variants:
            metrics = evaluate(EvaluateConfig(checkpoint=best, long_text=long_text,
                                              data=str(Path(args.data_dir, folder, f"{split}.parquet"))))
            note = ", ".join(n for n in (notes.get(split), len(variants) > 1 and
                                         f"long_text {metrics['long_text']}, windows of {ckpt.max_length}") if n)
            splits.append({"split": split, "rows": metrics["rows"], "labels": len(ckpt.space.names),
                           "long_text": metrics["long_text"],
                           **{k: round(metrics[k], 4) for k in KEYS if metrics.get(k) is not None},
                           **({"note": note} if note else {})})
        print(f"[bench] {title} {split}: " + ", ".join(f"{k} {v}" for k, v in splits[-1].items()
                                                      if k in KEYS), flush=True)
    metric = "accuracy" if ckpt.space.task == "multi_class" else "f1_macro"
    result = {
        "benchmark": "quality", "dataset": args.dataset, "title": title, "date": started[:10], "started": started,
        "cpu_class": machine["cpu_class"], "machine": machine, "model": ckpt.meta.training_config.get("model"),
        "config": args.config, "task": ckpt.space.task, "output": args.run,
        "training": {"epochs": len(history), "workers": history[-1].workers if history else None,
                     "train_loop_minutes": round(sum(h.train_seconds for h in history) / 60, 1),
                     "samples_per_s_range": [round(min(h.samples_per_s for h in history)),
                                             round(max(h.samples_per_s for h in history))] if history else None,
                     "max_length": ckpt.max_length,
                     f"validation_{metric}_by_epoch": [round(h.metric(metric) or 0.0, 3) for h in history]},
        "splits": splits, "versions": bc.versions(),
    }
    path = Path(args.json) if args.json else bc.RESULTS_DIR / f"{started[:10]}-quality-{args.dataset}.json"
    bc.write_json(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
