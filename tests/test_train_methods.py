"""LoRA and prefix-tuning through the whole product on real Ray and a real S3 server: 2 workers from S3 shards,
a worker killed mid-run, the published checkpoint scored with Ray Data and used by `predict`."""

from __future__ import annotations

import json

import pytest
from test_train_integration import _config, _metrics_lines, _shards_to_s3

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.model.inference import Predictor, predict_texts
from bertclf.scoring import run as score
from bertclf.training import run as train


# slow (~100 s a method on 2 cores): training, resuming and loading each method by every path is in test_adapters.py
@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_method_trains_on_two_workers_resumes_and_scores(ray_local, tiny_model, bucket, tmp_path, method):
    train_uri, val_uri = _shards_to_s3(tmp_path, bucket, multi_label=True)
    output = f"s3://{bucket}/runs/{method}"
    arm = ray_local / "kill_worker"
    arm.write_text("1")  # the last worker dies at the start of epoch index 1, after epoch 1's checkpoint
    result = train(_config(train=train_uri, validation=val_uri, output=output, model=str(tiny_model), epochs=3,
                           method=method, max_failures=1, lora_rank=4, prefix_length=4))
    assert not arm.exists(), "the injected failure never fired"
    assert [m["epoch"] for m in _metrics_lines(output)] == [1, 2, 3], "resumed from the checkpoint, not restarted"

    local = storage.download_dir(result.best_uri, tmp_path / "best")
    tuning = json.loads((local / "bertclf.json").read_text())["tuning"]
    assert tuning["method"] == method
    assert 0 < tuning["trainable_parameters"] < tuning["total_parameters"] / 3
    assert (local / "adapter").is_dir() == (method == "prefix")
    assert tuning["loads_with_transformers"] == (method == "lora")

    write_rows(tmp_path / "corpus.parquet", make_rows(80, seed=7, multi_label=True))
    corpus = f"s3://{bucket}/corpus/corpus.parquet"
    storage.write_bytes(corpus, (tmp_path / "corpus.parquet").read_bytes())
    summary = score(ScoreConfig(checkpoint=result.best_uri, input=corpus, output=f"s3://{bucket}/scores/{method}",
                                precision="fp32"))
    assert summary.rows_out == 80
    scored = read_scores(f"s3://{bucket}/scores/{method}").to_pandas()
    texts = sorted(make_rows(80, seed=7, multi_label=True), key=lambda r: r["id"])
    texts = [r["text"] for r in texts]
    direct = Predictor.load(result.best_uri, device="cpu").probabilities(texts)
    prob_columns = [c for c in scored.columns if c.startswith("prob_")]
    assert abs(scored[prob_columns].to_numpy() - direct).max() < 1e-4, "Ray Data scoring applies the method too"
    predicted = predict_texts(result.best_uri, texts[:2])
    assert [p["probabilities"][c[len("prob_"):]] for p in predicted[:1] for c in prob_columns] == pytest.approx(
        list(direct[0]), abs=1e-5)
