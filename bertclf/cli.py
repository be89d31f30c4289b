"""The `bertclf` command (train, tune, score, predict, evaluate, report, explain, serve); jobs/*.py call `main`.

Flags override the YAML given with --config, which overrides the built-in defaults; `--set key=value`
reaches every config key. The flags are made from the config dataclasses' fields (bertclf.config), so a new
key is declared once. Exit codes: 0 done; 1 failed: storage or the network (S3 unreachable, timeouts, 5xx after
retries; the message says a retry may fix it) or a crash; 2 bad input, checkpoint or config (don't retry: the
message names the file to fix; also a scoring run whose every failed file failed for its data); 3 scores committed
but drift alerted (only with drift_fails_job).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from typing import Any

from bertclf import __version__, logs
from bertclf.config import (
    EvaluateConfig,
    ReportConfig,
    ScoreConfig,
    ServeConfig,
    TrainConfig,
    literal_choices,
    load_config,
    parse_set_overrides,
)
from bertclf.errors import (
    STORAGE_FAILURE,
    ConfigError,
    DataError,
    InputError,
    ScoreError,
    StorageError,
    unicode_problem,
)
from bertclf.logs import DEFAULT_LEVEL, LEVEL_ENV, LEVELS
from bertclf.progress import DEFAULT_EVERY_S, EVERY_ENV, every_seconds

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DRIFT = 3  # scores committed (_SUCCESS written), drift alerted, and the config asks the job to say so

CONFIGS: dict[str, tuple[type, str]] = {
    "train": (TrainConfig, "fine-tune a classifier with Ray Train"),
    "tune": (TrainConfig, "hyperparameter search with Ray Tune: trials are training runs; the best is published. "
                          "--config and the flags give the base training config; --output is the search's "
                          "directory (trials/, trials.csv, best/)"),
    "score": (ScoreConfig, "score a Parquet corpus with a checkpoint through Ray Data"),
    "evaluate": (EvaluateConfig, "metrics of a checkpoint on labelled Parquet (e.g. a test split)"),
    "report": (ReportConfig, "an HTML report: a checkpoint on labelled Parquet, or a scoring run (--scores)"),
    "serve": (ServeConfig, "an online endpoint with Ray Serve: POST /predict, GET /healthz, GET /labels"),
}


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per config field marked as a flag; values stay strings here and are typed by load_config."""
    parser.add_argument("--config", help="YAML file with config keys; flags override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True):
            continue
        hint = hints[f.name]
        help_text = f.metadata.get("help")
        if f.default is not dataclasses.MISSING and f.default not in (None, False, "") and hint is not bool:
            help_text = f"{help_text} (default: {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        options = typing.get_args(hint) or (hint,)
        if hint is bool:
            kwargs.update(action="store_true", default=None)
        elif bool in options:
            kwargs.update(choices=["auto", "true", "false"])
        elif literal_choices(hint):
            kwargs.update(choices=list(literal_choices(hint)))
        elif any(typing.get_origin(o) is list for o in options) and str in options:
            kwargs.update(nargs="+", metavar="URI")
        elif f.name.endswith("columns"):
            kwargs.update(metavar="A,B,...")
        else:
            kwargs.update(metavar=_metavar(hint))
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _metavar(hint: Any) -> str:
    options = [o for o in (typing.get_args(hint) or (hint,)) if o is not type(None)]
    return {int: "N", float: "X"}.get(options[0], "VALUE") if options else "VALUE"


def _output_flags() -> argparse.ArgumentParser:
    """--log-level and --progress-seconds, on every command (they reach the Ray workers through the env)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LEVELS, type=str.upper,
                        help=f"DEBUG adds Ray Data's progress and third-party INFO lines (default: ${LEVEL_ENV} "
                             f"or {DEFAULT_LEVEL})")
    common.add_argument("--progress-seconds", type=float, metavar="X",
                        help=f"seconds between progress lines (default: ${EVERY_ENV} or {DEFAULT_EVERY_S:g})")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertclf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _output_flags()
    for name, (cls, help_text) in CONFIGS.items():
        add_config_flags(sub.add_parser(name, help=help_text, description=help_text, parents=[common]), cls)
    sub.choices["evaluate"].add_argument("--json", dest="json_path", help="also write the metrics to this JSON file")
    sub.choices["tune"].add_argument("--search", required=True,
                                     help="search YAML: space, num_samples, time_budget_s, scheduler, ...")

    p = sub.add_parser("predict", help="print labels and probabilities for a few texts", parents=[common])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("texts", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    x = sub.add_parser("explain", help="per-word Integrated Gradients attributions for a few texts",
                       parents=[common])
    x.add_argument("--checkpoint", required=True)
    x.add_argument("texts", nargs="+")
    x.add_argument("--label", help="explain this label (default: each predicted label)")
    x.add_argument("--steps", type=int, default=50, help="integration steps (more: smaller completeness gap)")
    x.add_argument("--json", action="store_true", help="print JSON lines instead of the terminal view")
    x.add_argument("--html", help="also write an HTML view (words shaded by attribution) to this file")
    c = sub.add_parser("calibrate", help="judge a checkpoint's int8 (and bf16) against fp32 on labelled rows and "
                                         "record the verdicts for precision: auto", parents=[common])
    c.add_argument("--checkpoint", required=True, help="checkpoint directory (local or s3://); the record goes there")
    c.add_argument("--data", required=True, nargs="+",
                   help="labelled Parquet the checkpoint was not trained on (validation at best)")
    c.add_argument("--precisions", default="int8", help="comma-separated: int8, bf16 (bf16 only on a bf16 CPU)")
    c.add_argument("--rows", type=int, default=2000, help="labelled rows to judge on (the first N)")
    c.add_argument("--text-column", default="text")
    c.add_argument("--label-column", help="list-of-strings (multi-label) or string (multi-class) label column")
    c.add_argument("--label-columns", help="comma-separated wide 0/1 label columns (multi-label)")
    c.add_argument("--no-record", dest="record", action="store_false",
                   help="print the verdicts without writing precision_gate.json")
    return parser


def config_from_args(args: argparse.Namespace):
    """The command's config: defaults, then --config, then flags and --set."""
    cls, _ = CONFIGS[args.command]
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if getattr(args, f.name, None) is not None}
    for name, value in overrides.items():
        if isinstance(value, list) and len(value) == 1:
            overrides[name] = value[0]
    overrides.update(parse_set_overrides(args.set))
    return load_config(cls, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline unless the user sets HF_HUB_OFFLINE=0
    args = build_parser().parse_args(argv)
    try:
        # a bad interval stops here (exit 2), not in a worker an hour in; only a good one reaches the environment
        if args.progress_seconds is not None:
            os.environ[EVERY_ENV] = f"{every_seconds(str(args.progress_seconds)):g}"
        every_seconds()
        logs.setup(args.log_level)
        log.debug("bertclf %s %s on %s", __version__, args.command, logs.versions())
        return _dispatch(args)
    except InputError as exc:
        print(f"bertclf {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except StorageError as exc:
        message = str(exc) if STORAGE_FAILURE in str(exc) else f"{STORAGE_FAILURE}: {exc}"
        log.error("failed: %s", message)
        print(f"bertclf {args.command}: failed: {message}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a scheduler needs an exit code and one clear line
        if isinstance(exc, ScoreError) and exc.bad_input_only:
            print(f"bertclf {args.command}: error: bad input file(s), not retryable: {exc}", file=sys.stderr,
                  flush=True)
            return EXIT_BAD_INPUT
        log.exception("failed")
        print(f"bertclf {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED


def _train(args: argparse.Namespace) -> int:
    from bertclf import training

    result = training.run(config_from_args(args))
    print(json.dumps({"best": result.best_uri, "epochs": result.epochs_run,
                      **{k: result.best.metric(k) for k in ("epoch", "f1_macro", "f1_micro", "accuracy")
                         if result.best.metric(k) is not None}}))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from bertclf import tuning

    result = tuning.run(config_from_args(args), load_config(tuning.SearchSpec, args.search))
    print(json.dumps({"best": result.best_uri, "trials": result.table_uri, "trial": result.best.trial_id,
                      result.best.metric: result.best.best, "values": result.best.values}))
    return 0


def _score(args: argparse.Namespace) -> int:
    from bertclf import scoring

    cfg = config_from_args(args)
    summary = scoring.run(cfg)
    log.info("%s", summary.one_line())
    if summary.drift:
        log.log(logging.WARNING if summary.drift.alert else logging.INFO, "%s", summary.drift.one_line())
    return EXIT_DRIFT if cfg.drift_fails_job and summary.drift and summary.drift.alert else 0


def _evaluate(args: argparse.Namespace) -> int:
    from bertclf.evaluate import evaluate

    report = evaluate(config_from_args(args))
    print(json.dumps({k: v for k, v in report.items() if k != "per_label"}, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _report(args: argparse.Namespace) -> int:
    from bertclf import storage
    from bertclf.report import evaluation_report, scores_report

    cfg = config_from_args(args)
    report = scores_report(cfg) if cfg.scores else evaluation_report(cfg)
    page = storage.join(storage.absolute(cfg.output), "index.html")
    print(json.dumps({"report": page, **report.get("headline", {})}, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bertclf.serve import serve_forever

    serve_forever(config_from_args(args))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from bertclf import explain

    _check_texts(args.texts)
    explainer = explain.Explainer.load(args.checkpoint, steps=args.steps)
    explanations = [e for text in args.texts for e in explainer.explain(text, args.label)]
    print(explain.render_json(explanations) if args.json else explain.render_terminal(explanations))
    if args.html:
        with open(args.html, "w") as f:
            f.write(explain.render_html_page(explanations))
    return 0


def _check_texts(texts: list[str]) -> None:
    """predict's and explain's text arguments, checked as serve checks a request's texts: one that isn't valid
    Unicode (invalid UTF-8 in argv arrives as lone surrogates) is refused naming it (exit 2), not a tokenizer crash."""
    for i, text in enumerate(texts, 1):
        if problem := unicode_problem(text):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise DataError(f"text argument {i} ({ascii(shown)}) is {problem}: pass UTF-8 text")


def _predict(args: argparse.Namespace) -> int:
    from bertclf.model.inference import predict_texts

    _check_texts(args.texts)

    print(render_predictions(predict_texts(args.checkpoint, args.texts), as_json=args.json))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from bertclf.model.calibration import calibrate

    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if bad := [p for p in precisions if p not in ("int8", "bf16")]:
        raise ConfigError(f"--precisions {args.precisions!r}: {', '.join(bad)} is not int8 or bf16")
    if args.rows < 1:
        raise ConfigError(f"--rows {args.rows}: judge on at least one row")
    results = calibrate(args.checkpoint, args.data[0] if len(args.data) == 1 else args.data, precisions,
                        rows=args.rows, text_column=args.text_column, label_column=args.label_column,
                        label_columns=tuple(c for c in (args.label_columns or "").split(",") if c),
                        record=args.record)
    for result in results:
        print(json.dumps(result.to_dict()))
    return 0


COMMANDS = {"train": _train, "tune": _tune, "score": _score, "evaluate": _evaluate, "report": _report,
            "serve": _serve, "explain": _explain, "predict": _predict, "calibrate": _calibrate}


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; it prints its result line(s) and returns the exit code."""
    return COMMANDS[args.command](args)


def render_predictions(rows: list[dict], as_json: bool = False, top: int = 5) -> str:
    """`bertclf predict` output: JSON lines, or each text with its labels and top probabilities."""
    if as_json:
        return "\n".join(json.dumps(r) for r in rows)
    lines = []
    for r in rows:
        lines.append(f"{r['text']!r}\n  predicted: {', '.join(r['predicted']) or '(none)'}")
        lines.extend(f"  {name:<24} {p:.3f}" for name, p in list(r["probabilities"].items())[:top])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
