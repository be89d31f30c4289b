"""The `bertclf` command (train, score, predict, evaluate); jobs/*.py call the same `main`.

Flags override the YAML given with --config, which overrides the built-in defaults; `--set key=value`
reaches every other config key. Exit codes: 0 done, 1 failed, 2 bad input or config (don't retry).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from bertclf.config import ConfigError, ScoreConfig, TrainConfig, load_config, parse_set_overrides

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with config keys; flags override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS or local)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertclf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a classifier with Ray Train")
    _common(t)
    t.add_argument("--train", nargs="+", help="Parquet file(s), directory or glob; local or s3://")
    t.add_argument("--validation", nargs="+", help="validation Parquet; default: a hash split of --train")
    t.add_argument("--output", help="run directory (local or s3://); the best checkpoint lands in <output>/best/")
    t.add_argument("--model", help="model directory, s3:// directory or hub id (default: packaged all-MiniLM-L6-v2)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--num-workers", dest="num_workers", type=int)
    t.add_argument("--task", choices=["auto", "multi_label", "multi_class"])
    t.add_argument("--text-column", dest="text_column")
    t.add_argument("--label-column", dest="label_column")
    t.add_argument("--label-columns", dest="label_columns", help="comma-separated wide 0/1 label columns")
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--learning-rate", dest="learning_rate", type=float)

    s = sub.add_parser("score", help="score a Parquet corpus with a checkpoint through Ray Data")
    _common(s)
    s.add_argument("--checkpoint", help="checkpoint URI (e.g. <train output>/best)")
    s.add_argument("--input", nargs="+", help="Parquet file(s), directory or glob; {date} is filled in")
    s.add_argument("--output", help="output URI for scores; {date} is filled in")
    s.add_argument("--date", help="date for {date} placeholders, YYYY-MM-DD (default: yesterday, UTC)")
    s.add_argument("--text-column", dest="text_column")
    s.add_argument("--id-column", dest="id_column")
    s.add_argument("--overwrite", action="store_true", default=None, help="re-score an output that is complete")
    s.add_argument("--num-actors", dest="num_actors", type=int)

    p = sub.add_parser("predict", help="print labels and probabilities for a few texts")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("texts", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on labelled Parquet (e.g. a test split)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, nargs="+")
    e.add_argument("--text-column", dest="text_column", default="text")
    e.add_argument("--label-column", dest="label_column")
    e.add_argument("--label-columns", dest="label_columns")
    e.add_argument("--json", dest="json_path", help="also write the metrics to this JSON file")
    return parser


def _overrides(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    for key in ("train", "validation", "input"):
        if key in out and isinstance(out[key], list) and len(out[key]) == 1:
            out[key] = out[key][0]
    out.update(parse_set_overrides(args.set))
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[bertclf] %(message)s", stream=sys.stdout)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline unless the user sets HF_HUB_OFFLINE=0
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"bertclf {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a scheduler needs an exit code and one clear line
        logging.getLogger("bertclf").exception("failed")
        print(f"bertclf {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from bertclf import train

        cfg = load_config(TrainConfig, args.config, _overrides(args, [
            "train", "validation", "output", "model", "epochs", "num_workers", "task", "text_column",
            "label_column", "label_columns", "batch_size", "learning_rate", "ray_address"]))
        result = train.run(cfg)
        print(json.dumps({"best": result.best_uri, "epochs": result.epochs_run,
                          **{k: result.best_metrics.get(k) for k in ("epoch", "f1_macro", "f1_micro", "accuracy")
                             if k in result.best_metrics}}))
        return 0
    if args.command == "score":
        from bertclf import score

        cfg = load_config(ScoreConfig, args.config, _overrides(args, [
            "checkpoint", "input", "output", "date", "text_column", "id_column", "overwrite", "num_actors",
            "ray_address"]))
        summary = score.run(cfg)
        print(summary.one_line())
        return 0
    if args.command == "predict":
        from bertclf.predict import predict_texts, render

        print(render(predict_texts(args.checkpoint, args.texts), as_json=args.json))
        return 0
    if args.command == "evaluate":
        from bertclf.evaluate import evaluate

        label_columns = [c for c in (args.label_columns or "").split(",") if c]
        report = evaluate(args.checkpoint, args.data, args.text_column, args.label_column, label_columns)
        print(json.dumps({k: v for k, v in report.items() if k != "per_label"}, indent=2))
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(report, f, indent=2)
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
