"""The committed parts of an output, read back from their footers and folded as they are read; `_parts`.

A night of a billion rows is tens of thousands of parts. The commit needs their sums (rows, label counts,
histograms) and one check per part, never all their stats at once: `PartsFold` adds each part's footer stats as it
is read (in a bounded window of parallel reads) and keeps one short row per part for `_parts`, the list of
parts that `_manifest.json` held before it grew with the corpus (36 MB at 10^5 parts). Each part's footer is read
once per run: a resume folds the parts it finds while it checks them, the commit folds the ones this run scored.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.errors import ScoreError
from bertclf.records import Manifest, PartEntry, PartStats, WorkUnit
from bertclf.scoring.drift import HIST_BINS

if TYPE_CHECKING:
    from bertclf.scoring.plan import ScoringRun

PARTS = "_parts"  # Parquet, named like Parquet's own `_metadata`: no ".parquet", so `out/*.parquet` globs skip it
READ_WORKERS = 16
PROBLEMS_LISTED = 20

T = TypeVar("T")
R = TypeVar("R")

PARTS_SCHEMA = pa.schema([
    ("name", pa.string()), ("input", pa.string()), ("row_groups", pa.list_(pa.int64())), ("rows_in", pa.int64()),
    ("rows_out", pa.int64()), ("seconds", pa.float64()), ("run_id", pa.string()), ("precision_used", pa.string()),
    ("rows_reused", pa.int64()),
])


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int = READ_WORKERS,
                ahead: int = 4 * READ_WORKERS) -> Iterator[R]:
    """fn over items in parallel threads, results in order, with at most `ahead` results waiting: unlike
    Executor.map, which submits every item at once, memory doesn't grow with the number of items."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[R]] = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def read_stats(output: str, names: Iterable[str], required: bool = False) -> Iterator[tuple[str, PartStats]]:
    """(name, stats in its footer) of committed parts, read in parallel, in order; with `required`, a missing part
    fails the commit by name."""
    from bertclf.scoring.actor import read_part_stats
    from bertclf.scoring.manifest import SUCCESS

    def read(name: str) -> tuple[str, PartStats]:
        try:
            return name, read_part_stats(storage.join(output, name))
        except FileNotFoundError:
            if not required:
                raise
            raise ScoreError(f"part {name} of {output} is missing after scoring (deleted by another process?); "
                             f"{SUCCESS} not written: re-run to finish") from None

    yield from bounded_map(read, names)


class PartsFold:
    """The sums and checks of an output's parts, one part at a time: the manifest's figures without every part's
    stats in memory (one row per part is kept, for `_parts`)."""

    def __init__(self, labels: list[str], sha256: str, settings: dict[str, Any]):
        self.labels = labels
        self.sha256 = sha256
        self.settings = settings
        self.rows_in = self.rows_out = self.empty_texts = self.windows = self.duplicate_rows = 0
        self.scored_units = self.scored_rows = 0
        self.texts_scored: int | None = 0
        self.label_counts: Counter[str] = Counter()
        self.histograms = np.zeros((len(labels), HIST_BINS), np.int64)
        self.reused_from: Counter[str] = Counter()
        self.part_runs: Counter[str] = Counter()
        self.precisions: Counter[str] = Counter()
        self.problems = 0
        self.problem_lines: list[str] = []
        self.folded: set[str] = set()
        self._rows: dict[str, list[Any]] = {name: [] for name in PARTS_SCHEMA.names}

    def add(self, unit: WorkUnit, stats: PartStats, seconds: float | None = None) -> None:
        """Fold one committed part, read back for `unit`; `seconds` when this run scored it. A part that doesn't hold
        its unit or wasn't scored with this run's checkpoint and settings is counted as a problem (`check`)."""
        from bertclf.scoring.manifest import differences

        if stats.unit != unit.name or stats.input != unit.uri or stats.rows_in != unit.num_rows:
            self._problem(f"{unit.name}: holds {stats.unit} ({stats.rows_in} rows of {stats.input}), planned "
                          f"{unit.num_rows} rows of {unit.uri}")
        elif diffs := differences(stats, self.sha256, self.settings):
            self._problem(f"{unit.name} (run {stats.run_id or '?'}): {'; '.join(diffs)}")
        self.folded.add(unit.name)
        self.rows_in += stats.rows_in
        self.rows_out += stats.rows_out
        self.empty_texts += stats.empty_texts
        self.windows += stats.windows
        self.duplicate_rows += stats.duplicate_rows
        if seconds is not None:
            self.scored_units += 1
            self.scored_rows += unit.num_rows
        self.texts_scored = None if self.texts_scored is None or stats.texts_scored is None else \
            self.texts_scored + stats.texts_scored
        self.label_counts.update(stats.label_counts)
        for j, name in enumerate(self.labels):
            if counts := stats.prob_histograms.get(name):
                self.histograms[j] += np.asarray(counts, np.int64)
        if stats.rows_reused:
            self.reused_from[stats.reused_from] += stats.rows_reused
        self.part_runs[stats.run_id or "?"] += 1
        self.precisions[stats.precision_used or "?"] += 1
        for key, value in (("name", stats.unit), ("input", stats.input), ("row_groups", list(stats.row_groups)),
                           ("rows_in", stats.rows_in), ("rows_out", stats.rows_out), ("seconds", seconds),
                           ("run_id", stats.run_id), ("precision_used", stats.precision_used),
                           ("rows_reused", stats.rows_reused)):
            self._rows[key].append(value)

    def _problem(self, line: str) -> None:
        self.problems += 1
        if len(self.problem_lines) < PROBLEMS_LISTED:
            self.problem_lines.append(line)

    def check(self, output: str, units: Iterable[WorkUnit], present: set[str]) -> None:
        """Before _SUCCESS: one folded part per unit, none a problem (`add`), each still in the output (`present`:
        its listing now; a resume's parts were read when it started)."""
        from bertclf.scoring.manifest import SUCCESS

        for unit in units:
            if unit.name not in self.folded:
                self._problem(f"{unit.name}: no committed part of {unit.uri}'s {unit.num_rows} rows")
            elif unit.name not in present:
                self._problem(f"{unit.name}: its part was read, then deleted (by another process?)")
        if self.problems:
            listing = "\n".join(f"  {p}" for p in self.problem_lines)
            more = f"\n  ... and {self.problems - len(self.problem_lines)} more" \
                if self.problems > len(self.problem_lines) else ""
            raise ScoreError(f"{self.problems} part(s) of {output} are missing or don't match this run (another run "
                             f"wrote or deleted them?); {SUCCESS} not written. Re-run with --overwrite to score it "
                             f"clean:\n{listing}{more}")

    @property
    def score_histograms(self) -> dict[str, list[int]]:
        return {name: self.histograms[j].tolist() for j, name in enumerate(self.labels)}

    def parts_file(self) -> bytes:
        """`_parts`: one row per part, in the order folded."""
        sink = io.BytesIO()
        pq.write_table(pa.table(self._rows, schema=PARTS_SCHEMA), sink, compression="zstd")
        return sink.getvalue()


def fold_existing(run_units: Iterable[WorkUnit], output: str, names: list[str], fold: PartsFold,
                  on_part: Callable[[str, PartStats], None]) -> None:
    """Read the parts a resume finds once: `on_part(name, stats)` sees every one (the resume check), and each that is
    one of the run's units is folded for the commit."""
    by_name = {u.name: u for u in run_units}
    for name, stats in read_stats(output, names):
        on_part(name, stats)
        if (unit := by_name.get(name)) is not None:
            fold.add(unit, stats)


def fold_scored(run: ScoringRun, fold: PartsFold, seconds: dict[str, float]) -> None:
    """Fold the parts this run scored (read back from their footers: what was committed, not what was sent)."""
    units = {u.name: u for u in run.todo}
    for name, stats in read_stats(run.output, [u.name for u in run.todo if u.name in seconds], required=True):
        fold.add(units[name], stats, seconds[name])


def part_entries(output: str, manifest: Manifest) -> list[PartEntry]:
    """The parts of a committed output: `_parts`, or the manifest's own list in outputs written before it."""
    if not manifest.parts_file:
        return list(manifest.parts)
    rows = _parts_table(output, manifest, ["name", "input", "row_groups", "rows_out", "seconds"]).to_pylist()
    return [PartEntry(name=r["name"], input=r["input"], row_groups=r["row_groups"], rows=r["rows_out"],
                      seconds=r["seconds"]) for r in rows]


def part_names(output: str, manifest: Manifest) -> list[str]:
    """The names of a committed output's parts, without building an entry per part."""
    if not manifest.parts_file:
        return [p.name for p in manifest.parts]
    return _parts_table(output, manifest, ["name"])["name"].to_pylist()


def _parts_table(output: str, manifest: Manifest, columns: list[str]) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, manifest.parts_file))), columns=columns)


__all__ = ["PARTS", "PartsFold", "bounded_map", "fold_existing", "fold_scored", "part_entries", "part_names",
           "read_stats"]
