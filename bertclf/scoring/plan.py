"""One scoring run, decided before any unit is scored: `ScoringRun`, and the unit and actor plans it holds.

The exactly-once rules read this one record: what every part records (the actors' ScoringSettings.for_run) and
what the commit checks (bertclf.scoring.manifest.commit) are the same values, decided once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.model.checkpoint import LoadedCheckpoint
from bertclf.records import UnitPlan, WorkUnit
from bertclf.resources import ScorePlan, plan_scoring
from bertclf.scoring.tokens import ReadSettings
from bertclf.units import balanced_rows_per_unit, text_bytes

PLAN = "_plan.json"
# mean text bytes per row from which units are sized by their texts' bytes too (about 250 tokens and up: where a
# row's work grows with its length beyond short texts' fixed costs); shorter corpora are cut by rows alone
LONG_TEXT_BYTES = 1000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringRun:
    """What one run scores, with what, into where: built once in `bertclf.scoring.run` under the output's lease."""

    cfg: ScoreConfig
    checkpoint: LoadedCheckpoint
    output: str
    date: dt.date
    run_id: str  # the run holding the output's lease
    files: tuple[str, ...]
    passthrough: tuple[str, ...]  # the id column, then the pass-through columns
    sha256: str  # the checkpoint's weights, as planned: an actor that loaded others commits nothing
    settings: Mapping[str, Any]  # bertclf.scoring.manifest.scored_with: what every part must carry alike
    reuse_key: Mapping[str, Any]  # bertclf.scoring.reuse.reuse_key: what makes a previous score reusable
    unit_plan: UnitPlan
    units: tuple[WorkUnit, ...]
    todo: tuple[WorkUnit, ...]  # the units without a committed part when the run started (all but a resume's)
    actors: ScorePlan | None  # the actors that score `todo` (None: nothing to score, Ray not needed)
    cluster: Mapping[str, float]  # the Ray cluster's resources ({} when Ray was not needed)

    @property
    def long_text(self) -> str:
        """truncate or chunk, as scored_with resolved the config against the checkpoint."""
        return self.settings["long_text"]

    @property
    def read(self) -> ReadSettings:
        """How the actors read a unit's rows."""
        return ReadSettings(text_column=self.cfg.text_column, passthrough=self.passthrough,
                            empty_text=self.cfg.empty_text, read_batch_rows=self.cfg.read_batch_rows)


def unit_plan(cfg: ScoreConfig, output: str, done: set[str], footers: dict, actors: Callable[[], int],
              guard: Callable[[str], None]) -> UnitPlan:
    """The unit size for this output: the plan of the run that started it, else sized so every scoring actor
    (`actors()`, asked only for a new output) gets several units by rows (at most `cfg.rows_per_unit`) and by text
    bytes (the work: long documents cost more per row), recorded in _plan.json before the first part lands."""
    if PLAN in done:
        plan = UnitPlan.from_json(storage.read_bytes(storage.join(output, PLAN)))
        log.info("resuming %s with its unit plan: %d rows per unit%s", output, plan.rows_per_unit,
                 f", {plan.text_bytes_per_unit:,} text bytes per unit" if plan.text_bytes_per_unit else "")
        return plan
    if any(storage.is_data_file(name) for name in done):  # parts written before unit plans existed
        return UnitPlan(rows_per_unit=cfg.rows_per_unit, actors=0)
    count = actors()
    rows = sum(m.num_rows for m in footers.values())
    size = text_bytes(footers, cfg.text_column)
    long_texts = cfg.units_by_text == "auto" and rows > 0 and size / rows >= LONG_TEXT_BYTES
    plan = UnitPlan(rows_per_unit=balanced_rows_per_unit(rows, count, cfg.rows_per_unit), actors=count,
                    text_bytes_per_unit=balanced_rows_per_unit(size, count, 2**62) if long_texts else None)
    if long_texts:
        log.info("long texts (%.0f bytes per row): units of at most %s text bytes, so every actor gets several",
                 size / rows, f"{plan.text_bytes_per_unit:,}")
    guard(PLAN)
    storage.write_bytes(storage.join(output, PLAN), plan.to_json().encode())
    return plan


def actor_plan(cfg: ScoreConfig, cluster: dict[str, float]) -> ScorePlan:
    """The scoring actors for this cluster (`connect`'s resources), before the units are known."""
    return plan_scoring(cluster, cfg.num_actors, cfg.cpus_per_actor, **_knobs(cfg))


def fit_to_units(plan: ScorePlan, cfg: ScoreConfig, cluster: dict[str, float], units: int) -> ScorePlan:
    """With fewer units to score than actors, fewer CPU actors with more threads each."""
    if units >= plan.num_actors or plan.use_gpu or cfg.cpus_per_actor is not None:
        return plan
    import ray

    # only CPUs free now: asking for CPUs another job (a Serve replica, a trainer) holds would wait forever
    free = min(cluster.get("CPU", 1), ray.available_resources().get("CPU", 0)) - plan.tokenizers
    per = max(1.0, float(int(free // max(1, units))))
    return plan_scoring(cluster, units, per, **_knobs(cfg))


def _knobs(cfg: ScoreConfig) -> dict[str, Any]:
    return dict(tokenize_stage=cfg.tokenize_stage, max_tokens_per_batch=cfg.max_tokens_per_batch,
                max_batch_rows=cfg.max_batch_rows)


__all__ = ["LONG_TEXT_BYTES", "PLAN", "ScoringRun", "actor_plan", "fit_to_units", "unit_plan"]
