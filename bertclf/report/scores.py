"""`bertclf report --scores OUTPUT_URI|TABLE@DATE --output DIR`: the page of one scoring run, from its manifest alone
(label distribution, probability histograms, drift against the previous partition, throughput)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from bertclf import storage
from bertclf.config import ReportConfig
from bertclf.errors import DataError
from bertclf.records import PartEntry
from bertclf.report import figures
from bertclf.report import html as h
from bertclf.report.writer import commit_report
from bertclf.scoring.manifest import SUCCESS, read_manifest
from bertclf.scoring.parts import part_entries
from bertclf.scoring.table import scores_of

log = logging.getLogger(__name__)
PARTS_SHOWN = 200  # the throughput table's slowest parts: a night of 10^5 parts would be a page no one reads


def scores_report(cfg: ReportConfig) -> dict:
    """Render the page of the scoring output `cfg.scores` into `cfg.output`."""
    cfg.validate()
    scores = scores_of(cfg.scores or "", cfg.table_warehouse)  # a directory, or a table's night
    output = storage.absolute(cfg.output)
    if not storage.exists(storage.join(scores, SUCCESS)):
        raise DataError(f"{scores} has no {SUCCESS}: not a finished scoring output (run or resume `bertclf score`)")
    manifest = read_manifest(scores)
    storage.check_writable(output)
    with tempfile.TemporaryDirectory(prefix="bertclf-report-") as tmp:
        staging = Path(tmp)
        fig_dir = staging / "figures"
        figs = [figures.bar_chart(manifest.predicted_label_distribution, "share of rows predicted with each label",
                                  "share of rows", fig_dir, "label_distribution.png")]
        if manifest.score_histograms:
            figs.append(figures.histograms(manifest.score_histograms, "probability per label", fig_dir,
                                           "probability_histograms.png"))
        drift = manifest.drift
        if drift and any(d.psi is not None for d in drift.labels.values()):
            figs.append(figures.bar_chart({n: d.psi or 0.0 for n, d in drift.labels.items()},
                                          f"PSI against {drift.previous_output}", "PSI", fig_dir, "drift_psi.png",
                                          threshold=drift.psi_threshold))
        report = {"kind": "scores", "scores": scores, "manifest": manifest.to_dict(), "figures": figs}
        commit_report(staging, output, report, render(manifest, figs, part_entries(scores, manifest)))
    log.info("report: %s (%d rows scored)", storage.join(output, "index.html"), manifest.rows_out)
    return report


def render(m, figs: list[str], parts: list[PartEntry]) -> str:
    captions = {"label_distribution.png": "predicted-label shares",
                "probability_histograms.png": "probability histograms (log scale)",
                "drift_psi.png": "PSI per label against the previous partition"}
    sections = [h.section("Summary", h.table(["field", "value"], [
        ["rows in / out", f"{m.rows_in:,} / {m.rows_out:,}"], ["empty texts", f"{m.empty_texts.count:,} "
                                                                            f"({m.empty_texts.policy})"],
        ["checkpoint", m.checkpoint.uri], ["checkpoint sha256", m.checkpoint.sha256[:16]],
        ["rows/s (this run's scoring)", m.rows_per_s], ["total seconds", m.timings.get("total_seconds")],
        ["units scored this run / already done", f"{m.units.scored_this_run} / {m.units.already_done}"],
        ["date", m.date], ["created", m.created]]), anchor="summary")]
    shares = h.table(["label", "rows", "share", "change vs previous"],
                     [[n, m.predicted_label_counts.get(n, 0), m.predicted_label_distribution.get(n, 0.0),
                       (m.distribution_change_vs_previous or {}).get(n)] for n in m.labels.names])
    sections.append(h.section("Labels", shares, *(h.figure(f, captions[f]) for f in figs if f != "drift_psi.png"),
                              anchor="labels"))
    if m.drift:
        d = m.drift
        sections.append(h.section(
            "Drift",
            h.paragraph(d.one_line(), "alert" if d.alert else ""),
            h.table(["label", "share", "previous share", "change", "PSI", "JS distance"],
                    [[n, x.share, x.previous_share, x.share_change, x.psi, x.js_distance]
                     for n, x in d.labels.items()]),
            *(h.figure(f, captions[f]) for f in figs if f == "drift_psi.png"), anchor="drift"))
    else:
        sections.append(h.section("Drift", h.paragraph("No previous partition to compare with (the output has no "
                                                       "{date} placeholder, or the previous day was not scored).",
                                                       "muted"), anchor="drift"))
    shown = sorted(parts, key=lambda p: (p.rows / p.seconds) if p.seconds else float("inf"))[:PARTS_SHOWN]
    more = (f"the {PARTS_SHOWN} slowest of {len(parts):,} parts (every part: {m.parts_file})"
            if len(parts) > PARTS_SHOWN else "")
    sections.append(h.section("Throughput", *([h.paragraph(more, "muted")] if more else []), h.table(
        ["part", "input", "rows", "seconds", "rows/s"],
        [[p.name, p.input, p.rows, p.seconds, (p.rows / p.seconds) if p.seconds else None] for p in shown]),
        anchor="throughput"))
    return h.page(f"Scoring run: {m.output}", f"{m.rows_out:,} rows, {len(m.labels.names)} labels ({m.labels.task})",
                  sections)
