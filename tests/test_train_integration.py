"""Ray Train end to end on a real local Ray and a real S3 server: tiny BERT, 2 workers, 3 Parquet shards."""

from __future__ import annotations

import json

import pytest
from conftest import make_rows, write_rows

from bertclf import storage
from bertclf.config import TrainConfig
from bertclf.training import run

EPOCH_KEYS = {"epoch", "train_loss", "val_loss", "f1_micro", "f1_macro", "f1_weighted", "roc_auc_macro", "per_label"}


def _shards_to_s3(tmp_path, bucket: str, multi_label: bool) -> tuple[str, str]:
    for i in range(3):
        write_rows(tmp_path / f"train-{i}.parquet", make_rows(120, seed=i, multi_label=multi_label), row_group_size=50)
        storage.write_bytes(f"s3://{bucket}/train/part-{i}.parquet", (tmp_path / f"train-{i}.parquet").read_bytes())
    write_rows(tmp_path / "val.parquet", make_rows(60, seed=99, multi_label=multi_label))
    storage.write_bytes(f"s3://{bucket}/val/val.parquet", (tmp_path / "val.parquet").read_bytes())
    return f"s3://{bucket}/train/", f"s3://{bucket}/val/"


def _config(**kw) -> TrainConfig:
    base = dict(epochs=2, num_workers=2, batch_size=16, learning_rate=2e-3, warmup_ratio=0.0, max_length=32,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def _metrics_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(storage.join(output, "metrics.jsonl")).splitlines()]


@pytest.mark.parametrize("multi_label", [True, False], ids=["multi_label", "multi_class"])
def test_two_workers_train_from_s3_shards_and_best_lands_on_s3(ray_local, tiny_model, bucket, tmp_path, multi_label):
    from transformers import AutoModelForSequenceClassification

    train_uri, val_uri = _shards_to_s3(tmp_path, bucket, multi_label)
    output = f"s3://{bucket}/runs/tiny"
    result = run(_config(train=train_uri, validation=val_uri, output=output, model=str(tiny_model)))

    assert result.best_uri == f"{output}/best"
    local = storage.download_dir(result.best_uri, tmp_path / "best")
    model = AutoModelForSequenceClassification.from_pretrained(local)
    assert model.config.problem_type == ("multi_label_classification" if multi_label else "single_label_classification")
    assert sorted(model.config.id2label.values()) == ["anger", "fear", "joy"]
    assert not (local / "train_state.safetensors").exists(), "optimizer state must not ship with the best model"
    assert not list(local.glob("*.bin")) and (local / "model.safetensors").exists()

    meta = json.loads((local / "bertclf.json").read_text())
    assert meta["format"] == 3 and "per_label" in meta["metrics"], "per-label scores inside metrics"
    assert meta["tuning"]["method"] == "full" and meta["tuning"]["loads_with_transformers"] is True
    assert meta["labels"]["task"] == ("multi_label" if multi_label else "multi_class")
    assert len(meta["labels"]["thresholds"]) == 3
    lines = _metrics_lines(output)
    assert [m["epoch"] for m in lines] == [1, 2]
    assert EPOCH_KEYS <= set(lines[0])
    assert sum(v["support"] for v in lines[-1]["per_label"].values()) > 0
    if multi_label:
        assert {"subset_accuracy", "hamming_loss", "f1_macro_at_0.5", "thresholds"} <= set(lines[0])
        assert all(0.05 <= t <= 0.95 for t in meta["labels"]["thresholds"])
        assert meta["labels"]["thresholds"] == list(lines[meta["epoch"] - 1]["thresholds"].values())
    else:
        assert "accuracy" in lines[0]
    assert meta["metrics"]["f1_macro"] == max(m["f1_macro"] for m in lines), "best/ holds the best epoch (ties: any)"


def test_hash_split_when_no_validation_given(ray_local, tiny_model, tmp_path):
    rows = make_rows(300, seed=5, multi_label=False)
    write_rows(tmp_path / "all.parquet", rows)
    result = run(_config(train=str(tmp_path / "all.parquet"), validation=None, output=str(tmp_path / "run"),
                         model=str(tiny_model), epochs=1))
    meta = json.loads((tmp_path / "run" / "best" / "bertclf.json").read_text())
    n_val = meta["data"]["n_validation"]
    assert 0 < n_val < 100 and meta["data"]["n_train"] + n_val == 300
    assert result.history[0].validation_rows == n_val


def test_worker_killed_mid_training_is_replaced_and_resumes(ray_local, tiny_model, tmp_path):
    arm = ray_local / "kill_worker"
    arm.write_text("1")  # the last worker dies at the start of epoch index 1, after epoch 1's checkpoint
    write_rows(tmp_path / "t.parquet", make_rows(200, seed=1, multi_label=True))
    write_rows(tmp_path / "v.parquet", make_rows(40, seed=2, multi_label=True))
    output = str(tmp_path / "run")
    result = run(_config(train=str(tmp_path / "t.parquet"), validation=str(tmp_path / "v.parquet"), output=output,
                         model=str(tiny_model), epochs=3, max_failures=1))
    assert not arm.exists(), "the injected failure never fired"
    lines = _metrics_lines(output)
    assert [m["epoch"] for m in lines] == [1, 2, 3], "each epoch once: resumed from the checkpoint, not restarted"
    assert result.epochs_run == 3


def test_same_command_again_resumes_from_latest_checkpoint(ray_local, tiny_model, tmp_path):
    write_rows(tmp_path / "t.parquet", make_rows(200, seed=3, multi_label=False))
    write_rows(tmp_path / "v.parquet", make_rows(40, seed=4, multi_label=False))
    cfg = dict(train=str(tmp_path / "t.parquet"), validation=str(tmp_path / "v.parquet"),
               output=str(tmp_path / "run"), model=str(tiny_model))
    run(_config(epochs=1, **cfg))
    first = _metrics_lines(cfg["output"])
    run(_config(epochs=2, **cfg))
    second = _metrics_lines(cfg["output"])
    assert [m["epoch"] for m in second] == [1, 2]
    assert second[0] == first[0], "epoch 1 was not trained again"
