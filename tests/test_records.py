"""Typed records: round trips, readers of older formats, and files from a newer bertclf refused by name."""

from __future__ import annotations

import json

import pytest

from bertclf.errors import InputError, RecordError
from bertclf.labels import LabelSpace
from bertclf.records import CheckpointMeta, EpochRecord, Manifest, PartStats, UnitError, UnitResult, WorkUnit

EPOCH = {"epoch": 2, "train_loss": 0.4, "val_loss": 0.5, "f1_micro": 0.6, "f1_macro": 0.55, "f1_weighted": 0.58,
         "roc_auc_macro": 0.9, "subset_accuracy": 0.3, "hamming_loss": 0.1, "f1_macro_at_0.5": 0.5,
         "f1_micro_at_0.5": 0.52, "thresholds": {"a": 0.3, "b": 0.6}, "train_seconds": 10.0,
         "samples_per_s": 100.0, "tokens_per_s": 2000.0, "workers": 2, "first_batch_seconds": 1.0,
         "data_wait_seconds": 1.5, "validation_rows": 40}

# bertclf.json as stop 8's bertclf wrote it: format 1, per-label scores beside the metrics
FORMAT_1_CHECKPOINT = {
    "format": 1, "labels": {"task": "multi_label", "names": ["a", "b"], "thresholds": [0.3, 0.6]}, "max_length": 64,
    "epoch": 2, "metrics": EPOCH, "per_label": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 4}},
    "history": [{**EPOCH, "epoch": 1}, EPOCH], "training_config": {"epochs": 2},
    "data": {"fingerprint": "abc", "train_files": ["t.parquet"], "validation_files": None, "n_train": 90,
             "n_validation": 10, "label_counts": {"a": 5}}, "versions": {"bertclf": "0.1.0"},
}


def test_epoch_record_keeps_the_json_keys_of_metrics_jsonl():
    record = EpochRecord.from_dict(EPOCH)  # a metrics.jsonl line without "format" is format 1
    assert record.f1_macro_at_half == 0.5 and record.thresholds == {"a": 0.3, "b": 0.6}
    line = json.loads(record.to_json())
    assert line["format"] == 1 and line["f1_macro_at_0.5"] == 0.5 and "f1_macro_at_half" not in line
    assert EpochRecord.from_json(record.to_json()) == record
    assert record.scalars()["f1_macro"] == 0.55 and "thresholds" not in record.scalars()
    assert record.metric("accuracy") is None


def test_format_1_checkpoint_meta_is_read_with_per_label_inside_metrics():
    meta = CheckpointMeta.from_dict(FORMAT_1_CHECKPOINT)
    assert meta.labels == LabelSpace("multi_label", ["a", "b"], [0.3, 0.6])
    assert meta.metrics.per_label["a"]["support"] == 4
    assert [h.epoch for h in meta.history] == [1, 2] and meta.data.n_train == 90
    written = json.loads(meta.to_json())
    assert written["format"] == 4 and "per_label" not in written and written["metrics"]["per_label"]["a"]["f1"] == 0.67
    assert meta.tuning.method == "full" and written["tuning"]["loads_with_transformers"] is True  # format 1-2: full
    assert CheckpointMeta.from_json(meta.to_json()) == meta


def test_a_newer_format_is_refused_by_name():
    with pytest.raises(RecordError, match="CheckpointMeta format 5 is newer"):
        CheckpointMeta.from_dict({**FORMAT_1_CHECKPOINT, "format": 5})
    assert issubclass(RecordError, InputError)


def test_missing_fields_and_bad_json_are_record_errors():
    with pytest.raises(RecordError, match="CheckpointMeta is missing fields"):
        CheckpointMeta.from_dict({"max_length": 3})
    with pytest.raises(RecordError, match="not valid JSON"):
        PartStats.from_json("{not json")


def test_unit_records_round_trip_across_the_actor_boundary():
    unit = WorkUnit("s3://b/in/part-1.parquet", (0, 1, 2), 150, 1)
    assert WorkUnit.from_json(unit.to_json()) == unit and unit.name.startswith("part-1-")
    stats = PartStats(unit=unit.name, input=unit.uri, row_groups=[0, 1, 2], rows_in=150, rows_out=149, empty_texts=1,
                      label_counts={"a": 7}, tokens=900)
    ok = UnitResult.from_json(UnitResult(unit=unit.name, input=unit.uri, stats=stats, seconds=1.5).to_json())
    assert ok.ok and ok.stats == stats
    error = UnitError("StorageError", "boom", "storage")
    failed = UnitResult.from_json(UnitResult(unit=unit.name, input=unit.uri, error=error).to_json())
    assert not failed.ok and failed.stats is None and failed.error == error


def test_manifest_of_format_1_reads():
    manifest = {
        "output": "o", "date": "2026-11-22", "created": "t", "inputs": [{"uri": "i.parquet", "rows": 3}],
        "parts": [{"name": "p", "input": "i.parquet", "row_groups": [0], "rows": 3, "seconds": None}],
        "rows_in": 3, "rows_out": 3, "empty_texts": {"count": 0, "policy": "score"},
        "checkpoint": {"uri": "c", "sha256": "x", "epoch": 1},
        "labels": {"task": "multi_class", "names": ["x", "y"], "thresholds": [0.5, 0.5]},
        "predicted_label_counts": {"x": 3}, "predicted_label_distribution": {"x": 1.0},
        "distribution_change_vs_previous": None, "rows_per_s": None, "timings": {"total_seconds": 1.0},
        "units": {"total": 1, "scored_this_run": 1, "already_done": 0}, "config": {}, "versions": {},
    }
    read = Manifest.from_dict(manifest)
    assert read.parts[0].seconds is None and read.empty_texts.policy == "score" and read.labels.names == ["x", "y"]
    written = read.to_dict()
    assert {k: written[k] for k in manifest if k != "units"} == {k: v for k, v in manifest.items() if k != "units"}
    assert written["units"] == {**manifest["units"], "rows_per_unit": None}
    assert written["drift"] is None and written["score_histograms"] == {}, "fields added since format 1 default"
