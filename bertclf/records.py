"""Every payload that crosses a process or file boundary, as a typed record with a format version.

Driver -> actor (WorkUnit), actor -> driver (UnitResult), a part's Parquet footer (PartStats), rank 0 ->
metrics.jsonl (EpochRecord), bertclf.json (CheckpointMeta), _manifest.json (Manifest, with its DriftReport),
_lease.json (Lease), tracking.json (TrackingRef).
Each record writes `"format": N`; a reader takes any format up to its own (a file without the key is format 1)
and refuses newer ones by name, so a file written by a later bertclf fails clearly instead of being misread.
Records nested in another carry no format of their own: they follow their parent's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import posixpath
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from bertclf.errors import RecordError
from bertclf.labels import LabelSpace

R = TypeVar("R", bound="Record")


class Record:
    """Base of the records: to_dict/from_dict (JSON-ready values), to_json/from_json (text).

    Subclasses are dataclasses; a field's JSON key is its name unless `metadata={"json": key}` says otherwise.
    `upgrade` turns an older format's dict into the current one.
    """

    FORMAT: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values, with its format version (nested records carry none of their own)."""
        return {"format": self.FORMAT, **self._fields_dict()}

    def _fields_dict(self) -> dict[str, Any]:
        return {f.metadata.get("json", f.name): _encode(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=indent is not None)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        version = int(data.get("format", 1))
        if version > cls.FORMAT:
            raise RecordError(f"{cls.__name__} format {version} is newer than this bertclf reads ({cls.FORMAT}): "
                              "upgrade bertclf")
        data = cls.upgrade(dict(data), version)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f.metadata.get("json", f.name)
            if key in data:
                values[f.name] = _decode(hints[f.name], data[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise RecordError(f"{cls.__name__} is missing fields: {exc}") from None

    @classmethod
    def from_json(cls: type[R], text: str | bytes) -> R:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{cls.__name__}: not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """An older format's dict in the current shape; the default: the shape did not change."""
        return data


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value._fields_dict()
    if isinstance(value, LabelSpace):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(hint: Any, value: Any) -> Any:
    """A JSON value as the field's type: records and LabelSpace rebuilt, containers walked, the rest as is."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _decode(options[0], value) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Record | LabelSpace):
        return hint.from_dict(value)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return [_decode(item, v) for v in value]
    if origin is tuple:
        item = (typing.get_args(hint) or (Any,))[0]
        return tuple(_decode(item, v) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint) or (str, Any)
        return {k: _decode(item, v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------ scoring ----


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
class UnitResult(Record):
    """A scoring actor's answer for one unit: its part's stats, or the error that stopped it."""

    unit: str
    input: str
    stats: PartStats | None = None
    error: str | None = None
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
    """_manifest.json of a scoring output: what went in, what came out, with which model, and how fast."""

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


# ----------------------------------------------------------------------------------------- training ----


@dataclass
class BlendChoice(Record):
    """How a checkpoint mixes the transformer with its TF-IDF baseline (bertclf.blend): `weight` is the
    transformer's share of the probabilities (1.0: the transformer alone), chosen on validation."""

    mode: str  # auto / on / off, as configured
    used: bool
    weight: float
    best_weight: float  # the best weight on validation, used or not
    metric: str
    transformer: float  # validation metric of the transformer alone
    baseline: float  # ... of the baseline alone
    blended: float  # ... at best_weight
    margin: float
    reason: str
    thresholds: list[float] | None = None  # multi-label thresholds tuned for the blend (when used)


@dataclass
class EpochRecord(Record):
    """Everything known about one epoch: losses, validation metrics, thresholds (multi-label), throughput."""

    epoch: int
    train_loss: float
    val_loss: float
    f1_micro: float
    f1_macro: float
    f1_weighted: float
    roc_auc_macro: float | None
    train_seconds: float
    samples_per_s: float
    tokens_per_s: float
    workers: int
    first_batch_seconds: float  # mean over workers: the wait for the first batch (pipeline start)
    data_wait_seconds: float  # mean over workers: the wait for all batches
    validation_rows: int
    accuracy: float | None = None  # multi-class
    subset_accuracy: float | None = None  # multi-label
    hamming_loss: float | None = None  # multi-label
    f1_macro_at_half: float | None = field(default=None, metadata={"json": "f1_macro_at_0.5"})
    f1_micro_at_half: float | None = field(default=None, metadata={"json": "f1_micro_at_0.5"})
    thresholds: dict[str, float] | None = None  # tuned on validation (multi-label)
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, float] | None = None  # the TF-IDF baseline's validation metrics (bertclf.baseline)
    baseline_per_label: dict[str, float] = field(default_factory=dict)  # its validation F1 per label
    blend: BlendChoice | None = None  # the blend chosen on this epoch's validation (bertclf.blend)

    def scalars(self) -> dict[str, float]:
        """The numeric metrics by JSON key (what Ray Train's report and checkpoint ranking see), with the
        baseline's as baseline_<metric> and the blend's weight and score as blend_weight, blend_<metric>."""
        out = {k: v for k, v in self.to_dict().items()
               if k != "format" and isinstance(v, int | float) and not isinstance(v, bool)}
        out.update({f"baseline_{k}": v for k, v in (self.baseline or {}).items()})
        if self.blend is not None:
            out.update({"blend_weight": self.blend.weight, f"blend_{self.blend.metric}": self.blend.blended})
        return out

    def metric(self, name: str) -> float | None:
        return self.scalars().get(name)

    def without_per_label(self) -> EpochRecord:
        return dataclasses.replace(self, per_label={}, baseline_per_label={})


@dataclass
class DataSummary(Record):
    """Which training data made a checkpoint: files, row counts, label counts and a fingerprint."""

    fingerprint: str
    train_files: list[str]
    validation_files: list[str] | None
    n_train: int
    n_validation: int
    label_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class TuningInfo(Record):
    """How a checkpoint was fine-tuned: the method, its settings, and what of the model trained.

    `adapter` names the checkpoint's sub-directory holding a peft adapter that every load must apply (prefix-
    tuning); None when the weights alone are the model, which then loads with plain transformers.
    """

    method: str = "full"
    settings: dict[str, Any] = field(default_factory=dict)
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    adapter: str | None = None

    @property
    def loads_with_transformers(self) -> bool:
        return self.adapter is None

    def _fields_dict(self) -> dict[str, Any]:
        return {**super()._fields_dict(), "loads_with_transformers": self.loads_with_transformers}


@dataclass
class CheckpointMeta(Record):
    """bertclf.json: what a checkpoint predicts (labels, thresholds, max length) and how it was made.

    Format 2 keeps the best epoch's per-label scores inside `metrics` (format 1 kept them beside it). Format 3
    adds `tuning`: a prefix-tuned checkpoint needs its adapter, which a format-2 reader would silently skip. Format
    4 adds `blend`: a format-3 reader would silently give the transformer's probabilities without the baseline.
    """

    FORMAT: ClassVar[int] = 4

    labels: LabelSpace
    max_length: int
    epoch: int | None = None
    metrics: EpochRecord | None = None  # the epoch this checkpoint is, per-label scores included
    history: list[EpochRecord] = field(default_factory=list)  # every epoch up to it, without per-label scores
    training_config: dict[str, Any] = field(default_factory=dict)
    data: DataSummary | None = None
    versions: dict[str, str] = field(default_factory=dict)
    tuning: TuningInfo = field(default_factory=TuningInfo)
    long_text: Literal["truncate", "chunk"] = "truncate"  # chunk: windows of max_length, pooled per text
    chunk_stride: int = 0  # tokens neighbouring windows share
    blend: BlendChoice | None = None  # None: no baseline (checkpoints before 2026-12-06); else how it is mixed in

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        if version == 1 and isinstance(data.get("metrics"), dict) and "per_label" in data:
            data["metrics"] = {**data["metrics"], "per_label": data.pop("per_label")}
        return data


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


@dataclass
class TrackingRef(Record):
    """tracking.json in a run directory and its best/: the MLflow run that tracked it, so `bertclf report` (and
    a rank-0 training worker) can log to the same run."""

    tracking_uri: str
    experiment_id: str
    run_id: str


# the records other modules, jobs and benchmarks use
__all__ = ["Record", "BlendChoice",
           "CheckpointMeta", "CheckpointRef", "DataSummary", "DriftReport", "EmptyTexts", "EpochRecord",
           "InputRows", "LabelDrift", "Lease", "Manifest", "PartEntry", "PartStats", "ReuseSource", "ReuseSummary",
           "TrackingRef", "TuningInfo", "UnitCounts", "UnitPlan", "UnitResult", "WorkUnit"]
