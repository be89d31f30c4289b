"""Ray Train end to end on a real local Ray and a real S3 server: tiny BERT, 2 workers, 3 Parquet shards, a worker
killed mid-run; multi-class from a hash split, resumed by running the same command again."""

from __future__ import annotations

import json

import pytest

from bertclf import storage
from bertclf.config import TrainConfig
from bertclf.dev.synthetic import make_rows, write_rows
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


def test_two_workers_train_from_s3_shards_a_killed_worker_resumes_and_best_lands_on_s3(ray_local, tiny_model,
                                                                                      bucket, tmp_path):
    from transformers import AutoModelForSequenceClassification

    arm = ray_local / "kill_worker"
    arm.write_text("1")  # the last worker dies at the start of epoch index 1, after epoch 1's checkpoint
    train_uri, val_uri = _shards_to_s3(tmp_path, bucket, multi_label=True)
    output = f"s3://{bucket}/runs/tiny"
    result = run(_config(train=train_uri, validation=val_uri, output=output, model=str(tiny_model), epochs=3,
                         max_failures=1, max_length="auto", max_tokens_per_batch=64))

    assert not arm.exists(), "the injected failure never fired"
    assert result.epochs_run == 3
    assert result.best_uri == f"{output}/best"
    local = storage.download_dir(result.best_uri, tmp_path / "best")
    model = AutoModelForSequenceClassification.from_pretrained(local)
    assert model.config.problem_type == "multi_label_classification"
    assert sorted(model.config.id2label.values()) == ["anger", "fear", "joy"]
    assert not (local / "train_state.safetensors").exists(), "optimizer state must not ship with the best model"
    assert not list(local.glob("*.bin")) and (local / "model.safetensors").exists()

    meta = json.loads((local / "bertclf.json").read_text())
    assert meta["format"] == 4 and "per_label" in meta["metrics"], "per-label scores inside metrics"
    assert meta["max_length"] == 16, "max_length auto: the synthetic texts need at most 16 tokens"
    assert meta["training_config"]["max_tokens_per_batch"] == 64, "16-row steps, micro-batches of <= 4 x 16 tokens"
    assert meta["tuning"]["method"] == "full" and meta["tuning"]["loads_with_transformers"] is True
    assert meta["labels"]["task"] == "multi_label"
    assert len(meta["labels"]["thresholds"]) == 3
    lines = _metrics_lines(output)
    assert [m["epoch"] for m in lines] == [1, 2, 3], "each epoch once: resumed from the checkpoint, not restarted"
    assert EPOCH_KEYS <= set(lines[0])
    assert sum(v["support"] for v in lines[-1]["per_label"].values()) > 0
    assert {"subset_accuracy", "hamming_loss", "f1_macro_at_0.5", "thresholds"} <= set(lines[0])
    assert all(0.05 <= t <= 0.95 for t in meta["labels"]["thresholds"])
    best = lines[meta["epoch"] - 1]
    assert {"f1_macro", "f1_micro"} <= set(best["baseline"]) and best["blend"] == meta["blend"]
    assert meta["blend"]["mode"] == "auto" and (local / "baseline.safetensors").exists()
    assert meta["labels"]["thresholds"] == (meta["blend"]["thresholds"] if meta["blend"]["used"]
                                            else list(best["thresholds"].values()))
    assert meta["metrics"]["f1_macro"] == max(m["f1_macro"] for m in lines), "best/ holds the best epoch (ties: any)"


def _multi_class_from_a_hash_split(tiny_model, tmp_path) -> dict:
    """No validation data: a hash split of train. One epoch, checked; returns the run's settings."""
    from transformers import AutoModelForSequenceClassification

    write_rows(tmp_path / "all.parquet", make_rows(300, seed=5, multi_label=False))
    cfg = dict(train=str(tmp_path / "all.parquet"), validation=None, output=str(tmp_path / "run"),
               model=str(tiny_model))
    result = run(_config(epochs=1, **cfg))
    first = _metrics_lines(cfg["output"])
    meta = json.loads((tmp_path / "run" / "best" / "bertclf.json").read_text())
    n_val = meta["data"]["n_validation"]
    assert 0 < n_val < 100 and meta["data"]["n_train"] + n_val == 300
    assert result.history[0].validation_rows == n_val
    assert meta["labels"]["task"] == "multi_class" and "accuracy" in first[0]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "best")
    assert model.config.problem_type == "single_label_classification"
    return cfg


def test_multi_class_from_a_hash_split(ray_local, tiny_model, tmp_path):
    _multi_class_from_a_hash_split(tiny_model, tmp_path)


@pytest.mark.slow  # two training runs (~80 s on 2 cores); resuming after a killed worker runs by default
def test_multi_class_with_a_hash_split_and_the_same_command_again_resumes(ray_local, tiny_model, tmp_path):
    """Run again with more epochs: resumes from the latest checkpoint."""
    cfg = _multi_class_from_a_hash_split(tiny_model, tmp_path)
    first = _metrics_lines(cfg["output"])
    run(_config(epochs=2, **cfg))
    second = _metrics_lines(cfg["output"])
    assert [m["epoch"] for m in second] == [1, 2]
    assert second[0] == first[0], "epoch 1 was not trained again"
