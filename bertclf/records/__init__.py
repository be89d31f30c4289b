"""Every payload that crosses a process or file boundary, as a typed record with a format version.

Driver -> actor (WorkUnit), actor -> driver (UnitResult), a part's Parquet footer (PartStats), rank 0 ->
metrics.jsonl (EpochRecord), bertclf.json (CheckpointMeta), _manifest.json (Manifest, with its DriftReport),
_lease.json (Lease), tracking.json (TrackingRef).
Each record writes `"format": N`; a reader takes any format up to its own (a file without the key is format 1)
and refuses newer ones by name, so a file written by a later bertclf fails clearly instead of being misread.
Records nested in another carry no format of their own: they follow their parent's.
"""

from bertclf.records.base import Record
from bertclf.records.scoring import (
    CheckpointRef,
    DriftReport,
    EmptyTexts,
    InputRows,
    LabelDrift,
    Lease,
    Manifest,
    PartEntry,
    PartStats,
    ReuseSource,
    ReuseSummary,
    UnitCounts,
    UnitError,
    UnitPlan,
    UnitResult,
    WorkUnit,
)
from bertclf.records.training import BlendChoice, CheckpointMeta, DataSummary, EpochRecord, TrackingRef, TuningInfo

# the records other modules, jobs and benchmarks use
__all__ = ["Record", "BlendChoice",
           "CheckpointMeta", "CheckpointRef", "DataSummary", "DriftReport", "EmptyTexts", "EpochRecord",
           "InputRows", "LabelDrift", "Lease", "Manifest", "PartEntry", "PartStats", "ReuseSource", "ReuseSummary",
           "TrackingRef", "TuningInfo", "UnitCounts", "UnitError", "UnitPlan", "UnitResult", "WorkUnit"]
