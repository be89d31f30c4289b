"""Long documents against the baseline every user tries first, on any labelled Parquet set, in one command: train
with bertclf (its TF-IDF baseline and blend included), then score the test split in-process three ways from the one
checkpoint -- the transformer alone, the baseline alone, the checkpoint's output (the blend where it is used) --
with the thresholds tuned on validation, and write `benchmarks/results/<date>-long-<name>.json`.

    python benchmarks/long_documents.py --name newsgroups20 --data-dir ../shared/data/newsgroups20 \\
        --config jobs/configs/newsgroups20.yaml --set max_length=128 --set epochs=2
    python benchmarks/long_documents.py --name mine --train a.parquet --validation b.parquet --test c.parquet
    python benchmarks/long_documents.py --name newsgroups20 --run runs/ng --data-dir ../shared/data/newsgroups20

Settings are chosen on validation only (by the training run); test is for reporting.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="the data set's name in the result file")
    p.add_argument("--data-dir", help="a folder with train/validation/test.parquet (instead of the three flags)")
    p.add_argument("--train"), p.add_argument("--validation"), p.add_argument("--test")
    p.add_argument("--config", help="a training config YAML (its train/validation are replaced by the data's)")
    p.add_argument("--set", action="append", default=[], help="key=value training overrides")
    p.add_argument("--run", help="an existing run directory to evaluate instead of training one")
    p.add_argument("--json", help="result file (default benchmarks/results/<date>-long-<name>.json)")
    args = p.parse_args(argv)
    bc.setup_env()
    from bertclf.config import TrainConfig, load_config, parse_set_overrides
    from bertclf.training import run

    splits = {k: getattr(args, k) or (args.data_dir and str(Path(args.data_dir, f"{k}.parquet")))
              for k in ("train", "validation", "test")}
    if not all(splits.values()):
        p.error("give --data-dir or all of --train, --validation, --test")
    machine, started = bc.machine_info(), bc.now_utc()
    train_seconds = None
    run_dir = args.run
    if run_dir is None:
        overrides = {**parse_set_overrides(args.set), "train": splits["train"], "validation": splits["validation"]}
        overrides.setdefault("output", str(bc.DEFAULT_RUNS_DIR / f"long-{args.name}"))
        cfg = load_config(TrainConfig, args.config, overrides)
        t0 = time.perf_counter()
        run(cfg)
        train_seconds = time.perf_counter() - t0
        run_dir = cfg.output
    result = evaluate_three_ways(str(Path(run_dir, "best")), splits["test"])
    result.update({"benchmark": "long_documents", "dataset": args.name, "date": started[:10], "started": started,
                   "cpu_class": machine["cpu_class"], "machine": machine, "run": run_dir, "config": args.config,
                   "overrides": args.set, "train_wall_minutes": round(train_seconds / 60, 1) if train_seconds
                   else None, "versions": bc.versions()})
    for name, m in result["test"].items():
        print(f"[bench] {args.name} test, {name}: " + ", ".join(f"{k} {v}" for k, v in m.items()), flush=True)
    path = Path(args.json) if args.json else bc.RESULTS_DIR / f"{started[:10]}-long-{args.name}.json"
    bc.write_json(path, result)
    return 0


def evaluate_three_ways(best: str, test_uri: str, text_column: str = "text") -> dict:
    """Test metrics of the transformer alone, the baseline alone and the checkpoint's own output (one Predictor:
    the probabilities `bertclf score` writes), each with its validation-tuned thresholds."""
    import pyarrow.parquet as pq

    from bertclf.baseline import Baseline
    from bertclf.blend import combine
    from bertclf.labels import encode_targets, label_format
    from bertclf.metrics import classification_metrics
    from bertclf.model import checkpoint
    from bertclf.model.inference import Predictor

    predictor = Predictor.load(best, device="cpu")
    ckpt, space = predictor.checkpoint, predictor.space
    label_column = "labels" if space.task == "multi_label" else "label"
    table = pq.read_table(test_uri)
    fmt = label_format({f.name: f.type for f in table.schema}, label_column, [])
    targets = encode_targets(table, space, fmt, label_column, [])
    texts = table[text_column].to_pylist()
    t0 = time.perf_counter()
    transformer = predictor.transformer_probabilities(predictor.token_ids(texts))
    transformer_seconds = time.perf_counter() - t0
    record, blend = ckpt.meta.metrics, ckpt.meta.blend
    baseline = Baseline.load(ckpt.local_dir)
    keys = ("accuracy", "f1_macro", "f1_micro", "subset_accuracy")

    def scores(probs: np.ndarray, thresholds: list[float] | None) -> dict:
        m = classification_metrics(space, targets, probs, thresholds)
        return {k: round(m[k], 4) for k in keys if m.get(k) is not None}

    own = list(record.thresholds.values()) if record and record.thresholds else None
    out = {"transformer": scores(transformer, own)}
    seconds = {"transformer": round(transformer_seconds, 1)}
    if baseline is not None:
        t0 = time.perf_counter()
        base = baseline.probabilities(texts)
        seconds["baseline"] = round(time.perf_counter() - t0, 1)
        out["baseline"] = scores(base, baseline.fit_info.get("thresholds"))
        weight = blend.best_weight if blend else 1.0
        out[f"blend at {weight}"] = scores(combine(transformer, base, weight), blend.thresholds if blend else None)
    out["checkpoint"] = (out.get(f"blend at {blend.weight}") if blend and blend.used else out["transformer"])
    history = checkpoint.run_history(best, ckpt.meta)
    return {"task": space.task, "rows": len(texts),
            "train_loop_minutes": round(sum(h.train_seconds for h in history) / 60, 1) if history else None,
            "epochs": len(history), "labels": len(space.names), "max_length": ckpt.max_length,
            "long_text": predictor.long_text, "test": out, "inference_seconds": seconds,
            "validation": {"transformer": {k: record.metric(k) for k in keys if record.metric(k) is not None},
                           "baseline": record.baseline, "blend": blend.to_dict() if blend else None}
            if record else None}


if __name__ == "__main__":
    sys.exit(main())
