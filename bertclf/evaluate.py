"""`bertclf evaluate`: a checkpoint's metrics on labelled Parquet, at its tuned thresholds and at 0.5.

The numbers are the evaluation report's (bertclf.report.evaluation): the data is scored through the scoring
pipeline and streamed into bounded counts, so evaluate and report agree to the last digit at any size; evaluate
skips the figures and the page unless --report asks for them.
"""

from __future__ import annotations

import dataclasses

from bertclf.config import EvaluateConfig, LabelledDataConfig, ReportConfig
from bertclf.report.evaluation import against_baseline, count_labelled, evaluation_report, numbers


def evaluate(cfg: EvaluateConfig) -> dict:
    """Metrics with the checkpoint's thresholds (and, for multi-label, at a flat 0.5 for comparison), per label;
    with `report`, the evaluation report is written too."""
    cfg.validate()
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LabelledDataConfig)}
    if cfg.report:
        report = evaluation_report(ReportConfig(**shared, output=cfg.report))
        return {"checkpoint": cfg.checkpoint, "report": cfg.report, "long_text": report["long_text"],
                **report["headline"], **_baseline_line(report.get("baseline")), "per_label": report["per_label"]}
    counts, ckpt, long_text = count_labelled(ReportConfig(**shared))
    headline, per_label = numbers(counts)
    return {"checkpoint": ckpt.uri, "long_text": long_text, **headline,
            **_baseline_line(against_baseline(ckpt.meta.metrics)), "per_label": per_label}


def _baseline_line(compared: dict | None) -> dict:
    """The checkpoint's validation comparison with its TF-IDF baseline, as one sentence (none: older checkpoints)."""
    return {"against_baseline": compared["sentence"]} if compared else {}


# the interface other modules, jobs and benchmarks use
__all__ = ["evaluate"]
