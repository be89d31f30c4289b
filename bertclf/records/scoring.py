"""The scoring pipeline's records: driver -> actor, actor -> driver, a part's footer, the manifest, the lease."""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bertclf.errors import FailureKind, failure_kind
from bertclf.labels import LabelSpace
from bertclf.records.base import Record


@dataclass(frozen=True)
class WorkUnit(Record):
    """A run of whole row groups of one Parquet file, or a slice of rows of one row group whose texts are too much
    work for one unit (long documents): the grain of reading and of exactly-once output."""

    uri: str
    row_groups: tuple[int, ...]
    num_rows: int
    file_index: int
    row_range: tuple[int, int] | None = None  # [start, end) rows within its one row group; None: whole groups

    @property
    def name(self) -> str:
        """Deterministic output name: input file stem + a hash of its URI + the row-group range (+ row slice)."""
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", posixpath.basename(self.uri).removesuffix(".parquet"))[:80]
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:10]
        rows = f"-r{self.row_range[0]:09d}-{self.row_range[1]:09d}" if self.row_range else ""
        return f"{stem}-{digest}-rg{self.row_groups[0]:05d}-{self.row_groups[-1]:05d}{rows}.parquet"


@dataclass
class PartStats(Record):
    """What one committed output part holds; stored in its Parquet footer, so a re-run can count it unread."""

    unit: str
    input: str
    row_groups: list[int]
    rows_in: int
    rows_out: int
    empty_texts: int
    label_counts: dict[str, int]
    tokens: int = 0
    windows: int = 0  # model inputs run: one per text scored, more under long_text chunk (0 in older parts)
    prob_histograms: dict[str, list[int]] = field(default_factory=dict)  # per label, bertclf.scoring.drift bins
    # which model and settings made the part, so a resume or a second run can't mix two models in one output
    # ("" / {} in parts written before they were recorded): the weights' sha256 as the actor loaded them, the
    # settings that change the numbers (bertclf.scoring.lease.scored_with), the run that committed it and the
    # precision the actor ran ("bf16" / "fp32", what `precision: auto` resolved to on its device)
    checkpoint_sha256: str = ""
    scored_with: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    precision_used: str = ""
    # skipping work already done (bertclf.scoring.reuse): rows repeating a text seen earlier in the unit, the
    # distinct texts run through the model, and the rows whose probabilities were copied from `reused_from`
    duplicate_rows: int = 0
    texts_scored: int | None = None  # None: written before it was counted (every row was scored)
    rows_reused: int = 0
    reused_from: str = ""


@dataclass
class ReuseSource(Record):
    """A previous committed scoring output whose per-part indexes (bertclf.scoring.reuse) a run may copy from."""

    output: str
    parts: list[str]  # the parts that have an index, by name
    rows: int  # its rows out: the most index entries an actor may load


@dataclass
class ReuseSummary(Record):
    """In _manifest.json: which output was reused (or why none was), and how many rows were copied from where."""

    mode: str  # none | previous
    source: str | None = None  # the output this run's actors looked texts up in
    note: str = ""  # why nothing was reused (no earlier partition, no _SUCCESS, another checkpoint, ...)
    rows_reused: int = 0  # over every part, read back from the parts
    reused_from: dict[str, int] = field(default_factory=dict)  # output -> rows copied from it


@dataclass
class UnitError(Record):
    """Why a unit failed, typed where it was caught: the exit code and whether the run stops follow `kind`."""

    error_type: str  # the exception's class, for people
    message: str
    kind: FailureKind  # input | storage | other (bertclf.errors.failure_kind)

    @classmethod
    def of(cls, exc: BaseException) -> UnitError:
        return cls(type(exc).__name__, str(exc), failure_kind(exc))

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


@dataclass
class UnitResult(Record):
    """A scoring actor's answer for one unit: its part's stats, or the error that stopped it."""

    unit: str
    input: str
    stats: PartStats | None = None
    error: UnitError | None = None
    seconds: float = 0.0
    actor_ready_seconds: float = 0.0
    actor_pid: int = 0
    tokenizer_pid: int = 0  # the process that read and tokenized the unit: the actor itself, or the CPU stage
    gpu_ids: list[str] = field(default_factory=list)  # the GPUs Ray gave the scoring actor (none on CPU)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class InputRows(Record):
    uri: str
    rows: int


@dataclass
class PartEntry(Record):
    name: str
    input: str
    row_groups: list[int]
    rows: int
    seconds: float | None = None  # None: scored by an earlier run


@dataclass
class EmptyTexts(Record):
    count: int
    policy: str


@dataclass
class CheckpointRef(Record):
    uri: str
    sha256: str
    epoch: int | None = None


@dataclass
class UnitCounts(Record):
    total: int
    scored_this_run: int
    already_done: int
    rows_per_unit: int | None = None  # the unit plan's size (see UnitPlan)


@dataclass
class UnitPlan(Record):
    """_plan.json of a scoring output, written before its first part: the unit size every re-run must use,
    so a resumed run (on any number of actors) cuts the inputs into the same units and names."""

    rows_per_unit: int
    actors: int
    text_bytes_per_unit: int | None = None  # None: plans from before units were sized by their texts' bytes


@dataclass
class LabelDrift(Record):
    share: float  # predicted share today
    previous_share: float
    share_change: float
    psi: float | None = None  # None: the previous output has no histograms (written before they existed)
    js_distance: float | None = None


@dataclass
class DriftReport(Record):
    """Drift of one scoring output against the previous partition, and which labels crossed a threshold."""

    previous_output: str
    psi_threshold: float
    share_threshold: float
    labels: dict[str, LabelDrift] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)  # "label: why", one per label over a threshold

    @property
    def alert(self) -> bool:
        return bool(self.alerts)

    def one_line(self) -> str:
        if self.alerts:
            return f"DRIFT ALERT vs {self.previous_output}: " + "; ".join(self.alerts)
        worst = max(self.labels.items(), key=lambda kv: kv[1].psi or 0.0, default=None)
        detail = f" (largest PSI {worst[1].psi:.3f}, {worst[0]})" if worst and worst[1].psi is not None else ""
        return f"drift vs {self.previous_output}: no label over the thresholds{detail}"


@dataclass
class Manifest(Record):
    """_manifest.json of a scoring output: what went in, what came out, with which model, and how fast.

    Format 2: the parts (and the input files they came from) are listed in the side file `parts_file`
    (bertclf.scoring.parts), so the manifest's size doesn't grow with the corpus; format 1 listed them in `parts` and
    `inputs`, which format 2 leaves empty.
    """

    FORMAT: ClassVar[int] = 2

    output: str
    date: str
    created: str
    inputs: list[InputRows]
    parts: list[PartEntry]
    rows_in: int
    rows_out: int
    empty_texts: EmptyTexts
    checkpoint: CheckpointRef
    labels: LabelSpace
    predicted_label_counts: dict[str, int]
    predicted_label_distribution: dict[str, float]
    distribution_change_vs_previous: dict[str, float] | None
    rows_per_s: float | None
    timings: dict[str, float]
    units: UnitCounts
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    score_histograms: dict[str, list[int]] = field(default_factory=dict)  # per label, bertclf.scoring.drift bins
    drift: DriftReport | None = None  # against the previous partition, when there is one
    run_id: str | None = None  # the run that committed the manifest (it held the output's lease)
    scored_with: dict[str, Any] = field(default_factory=dict)  # the settings every part was checked to carry
    part_runs: dict[str, int] = field(default_factory=dict)  # run id -> parts it committed (read from the parts)
    precisions_used: dict[str, int] = field(default_factory=dict)  # "bf16" / "fp32" -> parts (read from the parts)
    windows_scored: int = 0  # model inputs run: rows_out, or more where long_text chunk cut texts into windows
    duplicate_rows: int = 0  # rows repeating a text seen earlier in their unit (scored once, copied)
    texts_scored: int | None = None  # distinct texts run through the model (None: some part did not count them)
    reuse: ReuseSummary | None = None
    reuse_key: dict[str, Any] = field(default_factory=dict)  # what a later run must match to reuse these scores
    parts_file: str | None = None  # "_parts": one row per part (None: format 1, listed in `parts`)
    input_files: int | None = None  # how many input files (None: format 1, listed in `inputs`)


@dataclass
class Lease(Record):
    """_lease.json of a scoring output: which run may write it, and until when unless renewed."""

    run_id: str
    host: str
    pid: int
    acquired: str  # ISO 8601, UTC
    expires: str

    def expires_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.expires)

    def live(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at() > (now or dt.datetime.now(dt.timezone.utc))

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}) until {self.expires}"
