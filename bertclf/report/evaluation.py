"""`bertclf report --checkpoint CK --data TEST.parquet --output DIR`: the evaluation report a person reads, and the
one evaluation engine (`count_labelled`, `numbers`) that `bertclf evaluate` prints from.

The data is scored through the same Ray Data path as `bertclf score` (so any size works), the scored Parquet
is read once in batches into bounded counts, and the page, report.json and figures are built in a staging
directory that is committed to DIR last (index.html last of all): a failed run leaves no page that looks done.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage, tracking
from bertclf.blend import comparison
from bertclf.config import ReportConfig, ScoreConfig
from bertclf.labelled import check_labelled_files
from bertclf.model import checkpoint
from bertclf.progress import Progress
from bertclf.records import EpochRecord
from bertclf.report import figures
from bertclf.report import html as h
from bertclf.report.accumulate import EvaluationCounts
from bertclf.report.summary import calibration, headline, label_curves, per_label_scores, top_confusions
from bertclf.report.writer import commit_report

log = logging.getLogger(__name__)


def evaluation_report(cfg: ReportConfig) -> dict:
    """Score `cfg.data` with `cfg.checkpoint`, then write index.html, report.json and figures/ to `cfg.output`."""
    cfg.validate()
    output = storage.absolute(cfg.output)
    storage.check_writable(output)
    tracked = tracking.for_report(cfg, storage.absolute(cfg.checkpoint))  # an unreachable tracker fails before scoring
    counts, ckpt, long_text = count_labelled(cfg)
    with tempfile.TemporaryDirectory(prefix="bertclf-report-") as tmp:
        staging = Path(tmp) / "report"
        report = build(counts, ckpt, cfg, long_text, staging / "figures")
        commit_report(staging, output, report, render(report))
        if tracked:
            tracking.log_report(tracked, staging, report["headline"])
    log.info("report: %s (macro-F1 %.3f over %d rows)", storage.join(output, "index.html"),
             report["headline"]["f1_macro"], counts.rows)
    return report


def count_labelled(cfg: ReportConfig) -> tuple[EvaluationCounts, checkpoint.LoadedCheckpoint, str]:
    """The labelled data checked, scored through the scoring pipeline (bertclf.scoring) and streamed into bounded
    counts: (counts, the checkpoint, the long_text it was scored with). Every evaluation number comes from here."""
    from bertclf import scoring

    cfg.validate()
    ckpt = checkpoint.load(storage.absolute(cfg.checkpoint))
    files = storage.list_parquet_files(cfg.data)
    label_column, label_columns, fmt, rows = check_labelled_files(files, ckpt.space, cfg.text_column,
                                                                  cfg.label_column, list(cfg.label_columns))
    long_text, _ = checkpoint.long_text_setting(cfg.long_text, ckpt.meta)
    log.info("evaluation: scoring %d labelled row(s) from %d file(s) with %s (long_text %s)", rows, len(files),
             ckpt.uri, long_text)
    with tempfile.TemporaryDirectory(prefix="bertclf-scores-") as tmp:
        scores_uri = storage.absolute(cfg.scores_dir) if cfg.scores_dir else str(Path(tmp) / "scores")
        passthrough = list(dict.fromkeys([cfg.text_column, *(label_columns or [label_column])]))
        scoring.run(ScoreConfig(checkpoint=ckpt.uri, input=files, output=scores_uri, text_column=cfg.text_column,
                                id_column=None, passthrough_columns=passthrough, overwrite=True,
                                long_text=cfg.long_text, num_actors=cfg.num_actors, ray_address=cfg.ray_address))
        counts = EvaluationCounts(ckpt.space, cfg.max_examples)
        counted = Progress("counted", rows, "rows", log=log)
        for table in scored_batches(scores_uri):
            counts.add(table, cfg.text_column, fmt, label_column, label_columns)
            counted.update(counts.rows)
        counted.finish()
    return counts, ckpt, long_text


def numbers(counts: EvaluationCounts) -> tuple[dict, dict[str, dict]]:
    """(headline metrics, per-label precision / recall / F1 / support, worst F1 first) from the counts."""
    return _numbers(counts)[:2]


def _numbers(counts: EvaluationCounts) -> tuple[dict, dict[str, dict], dict[str, dict], dict]:
    """(headline, per label, curves per label, calibration)."""
    curves = label_curves(counts)
    per_label, averages = per_label_scores(counts)
    at_half = per_label_scores(counts, at_half=True)[1] if counts.multi_label else None
    calib = calibration(counts)
    for name, c in curves.items():
        c["at_threshold"] = {"precision": per_label[name]["precision"], "recall": per_label[name]["recall"]}
    per_label = dict(sorted(per_label.items(), key=lambda kv: (kv[1]["f1-score"], kv[0])))
    return headline(counts, curves, averages, at_half, calib["expected_calibration_error"]), per_label, curves, calib


def scored_batches(scores_uri: str, batch_rows: int = 8192):
    """The scored parts of an output, one record batch at a time."""
    fs, base = storage.resolve(scores_uri)
    for name in sorted(n for n in storage.list_names(scores_uri) if storage.is_data_file(n)):
        with fs.open_input_file(f"{base}/{name}") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])


def build(counts: EvaluationCounts, ckpt: checkpoint.LoadedCheckpoint, cfg: ReportConfig, long_text: str,
          fig_dir: Path) -> dict:
    """Every number of the report (report.json) and the figures, named in report["figures"]."""
    space = ckpt.space
    names = space.names
    head, per_label, curves, calib = _numbers(counts)
    thresholds = dict(zip(names, space.thresholds, strict=True)) if counts.multi_label else None
    history = [r.without_per_label().to_dict() for r in checkpoint.run_history(ckpt.uri, ckpt.meta)]
    figs: dict[str, list[str]] = {"training": [], "confusion": [], "curves": [], "calibration": [], "words": []}
    if history:
        figs["training"].append(figures.training_curves(history, fig_dir))
    if counts.multi_label:
        figs["confusion"] += [figures.per_label_counts(counts.tuned_counts, names, fig_dir),
                              figures.cooccurrence(counts.confusion, names, fig_dir)]
    else:
        figs["confusion"] += figures.confusion_matrices(counts.confusion, names, fig_dir)
    figs["curves"] += [figures.pr_curves(curves, thresholds, fig_dir), figures.roc_curves(curves, fig_dir)]
    figs["calibration"].append(figures.reliability(calib, fig_dir))
    clouds = {}
    for name in names:
        pair = {}
        for kind, words in (("true", counts.words_true[name]), ("predicted", counts.words_predicted[name])):
            pair[kind] = figures.word_cloud(words, fig_dir, f"words_{figures.slug(name)}_{kind}.png")
        clouds[name] = pair
        figs["words"] += [f for f in pair.values() if f]
    meta = ckpt.meta
    return {
        "kind": "evaluation", "checkpoint": ckpt.uri, "data": cfg.data, "task": space.task, "long_text": long_text,
        "headline": head, "per_label": per_label,
        "curves": {n: {k: v for k, v in c.items() if k in ("positives", "negatives", "average_precision",
                                                            "roc_auc", "at_threshold")} for n, c in curves.items()},
        "confusion": {"labels": names, "matrix": counts.confusion.tolist(),
                      "kind": "label co-occurrence (true rows x predicted columns)" if counts.multi_label
                      else "true rows x predicted columns"},
        "per_label_counts": ({n: dict(zip(("tp", "fp", "fn"), map(int, counts.tuned_counts[j]), strict=True))
                              for j, n in enumerate(names)} if counts.multi_label else None),
        "calibration": calib, "top_confusions": top_confusions(counts),
        "errors": _explained_errors(counts, ckpt, cfg.explain_errors),
        "word_clouds": clouds, "history": history, "figures": figs, "baseline": against_baseline(meta.metrics),
        "card": {"model": meta.training_config.get("model"), "task": space.task, "labels": names,
                 "thresholds": thresholds, "max_length": meta.max_length, "epoch": meta.epoch,
                 "training_config": meta.training_config, "data": meta.data.to_dict() if meta.data else None,
                 "versions": meta.versions},
    }


def against_baseline(record: EpochRecord | None) -> dict | None:
    """The checkpoint's epoch on validation beside the TF-IDF baseline fitted on the same split (and the blend):
    the comparison users make first. None for checkpoints from before the baseline."""
    if record is None or record.baseline is None or record.blend is None:
        return None
    b = record.blend
    transformer = record.scalars()
    compared = comparison(b)
    sentence = (f"{compared[0].upper()}{compared[1:]}. "
                + (f"The checkpoint blends the two (transformer weight {b.weight}): {b.blended:.4f}."
                   if b.used else f"The checkpoint is the transformer alone ({b.reason})."))
    return {"sentence": sentence, "blend": b.to_dict(),
            "metrics": {k: {"transformer": transformer.get(k), "baseline": v} for k, v in record.baseline.items()},
            "per_label_f1": {n: {"transformer": s.get("f1"), "baseline": record.baseline_per_label.get(n)}
                             for n, s in record.per_label.items()}}


def _explained_errors(counts: EvaluationCounts, ckpt: checkpoint.LoadedCheckpoint, n: int) -> list[dict]:
    """The most confident errors; the first `n` with word attributions for the label behind the mistake."""
    errors = [asdict(e) for e in counts.most_confident_errors()]
    if n and errors:
        from bertclf.explain import Explainer, render_html

        explainer = Explainer.load(ckpt.uri)
        for error in errors[:n]:
            (explanation,) = explainer.explain(error["text"], label=error["worst_label"])
            error["explanation"] = {"label": explanation.label, "delta": explanation.delta,
                                    "words": [asdict(w) for w in explanation.words],
                                    "html": render_html(explanation)}
    return errors


def render(r: dict) -> str:
    """index.html from the report's numbers."""
    hl = r["headline"]
    multi_label = r["task"] == "multi_label"
    metric_rows = [[k, v] for k, v in hl.items() if not k.endswith("_at_0.5")]
    if multi_label:
        metric_rows = [[k, v, hl.get(f"{k}_at_0.5")] for k, v in hl.items() if not k.endswith("_at_0.5")]
    sections = [
        h.section("Summary", h.table(["metric", "at the checkpoint's thresholds" if multi_label else "value",
                                      *(["at 0.5"] if multi_label else [])], metric_rows), anchor="summary"),
    ]
    if r.get("baseline"):
        b = r["baseline"]
        sections.append(h.section(
            "Against the TF-IDF baseline (validation)", h.paragraph(b["sentence"]),
            h.table(["metric", "transformer", "TF-IDF baseline"],
                    [[k, v["transformer"], v["baseline"]] for k, v in b["metrics"].items()]),
            h.table(["label", "transformer F1", "TF-IDF baseline F1"],
                    [[n, v["transformer"], v["baseline"]] for n, v in b["per_label_f1"].items()]),
            anchor="baseline"))
    if r["figures"]["training"]:
        sections.append(h.section("Training curves", *(h.figure(f, "per epoch: loss, F1, accuracy")
                                                       for f in r["figures"]["training"]), anchor="training"))
    sections.append(h.section(
        "Per label (worst F1 first)",
        h.table(["label", "precision", "recall", "F1", "support"],
                [[n, s["precision"], s["recall"], s["f1-score"], int(s["support"])]
                 for n, s in r["per_label"].items()]),
        anchor="per-label"))
    confusion_caption = ("per-label counts and true-vs-predicted co-occurrence" if multi_label
                         else "confusion matrix")
    sections.append(h.section("Confusion", *(h.figure(f, confusion_caption) for f in r["figures"]["confusion"]),
                              anchor="confusion"))
    sections.append(h.section("Precision-recall and ROC", *(h.figure(f, "per label") for f in r["figures"]["curves"]),
                              anchor="curves"))
    cal = r["calibration"]
    sections.append(h.section(
        "Calibration", h.paragraph(f"Expected calibration error {cal['expected_calibration_error']:.4f} "
                                   f"({cal['of']}, {len(cal['bins'])} bins)."),
        *(h.figure(f, "reliability diagram") for f in r["figures"]["calibration"]), anchor="calibration"))
    clouds = []
    for name, pair in r["word_clouds"].items():
        for kind, f in pair.items():
            caption = f"{name}: texts that carry it" if kind == "true" else f"{name}: texts predicted as it"
            clouds.append(h.figure(f, caption) if f else h.paragraph(f"{name}: no {kind} texts", "muted"))
    sections.append(h.section("Word clouds", *clouds, anchor="words"))
    sections.append(h.section(
        "Errors",
        h.table(["true", "predicted instead", "rows"], [[c["true"], c["predicted"], c["count"]]
                                                        for c in r["top_confusions"]]),
        h.table(["confidence", "text", "true", "predicted", "worst mistake", "why (Integrated Gradients)"],
                [[e["confidence"], e["text"], ", ".join(e["true"]), ", ".join(e["predicted"]) or "(none)",
                  e["worst"], h.Raw(e["explanation"]["html"]) if "explanation" in e else ""]
                 for e in r["errors"]]), anchor="errors"))
    card = r["card"]
    sections.append(h.section(
        "Checkpoint card",
        h.table(["field", "value"], [["checkpoint", r["checkpoint"]], ["model", card["model"]], ["task", card["task"]],
                                     ["max_length", card["max_length"]], ["epoch", card["epoch"]],
                                     ["data fingerprint", (card["data"] or {}).get("fingerprint")]]),
        h.table(["label", "threshold"], [[n, (card["thresholds"] or {}).get(n, "argmax")] for n in card["labels"]]),
        h.code_block({"training_config": card["training_config"], "versions": card["versions"]}), anchor="card"))
    return h.page(f"Evaluation report: {r['checkpoint']}",
                  f"{hl['rows']:,} rows of {r['data']}; {r['task']}, {len(card['labels'])} labels", sections)
