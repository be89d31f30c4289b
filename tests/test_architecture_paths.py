"""Every path for every architecture a user brings. The seven tiny random encoders (bertclf/dev/tiny_architectures.py)
go through `predict` and `explain` in the default suite, and `score` through Ray Data there for one architecture per
tokenizer family (all seven with `-m slow`). The slower paths are marked
`slow`: 2-worker training with each method the architecture takes, then resume, `report` and `serve` on the
result; `tune`; the compiled graph. The GPU-shaped plan per architecture is in test_score_gpu_shape.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from reference_scores import assert_scores_match_reference, reference_probabilities

from bertclf.config import ReportConfig, ScoreConfig, ServeConfig, TrainConfig
from bertclf.dev.ports import free_port
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_architectures import ARCHITECTURES, TAKES_PREFIX, arch_checkpoint, build_tiny
from bertclf.explain import Explainer
from bertclf.model.inference import Predictor, predict_texts
from bertclf.scoring import run as score

REPO = Path(__file__).resolve().parents[1]

TEXTS = ["happy glad smile the day", "angry mad it was so very furious today", "x"]
NAMES = ["anger", "fear", "joy"]
# every method an architecture can train with; prefix only where its encoder's forward takes `cache`
METHODS = {arch: (["full", "lora", "prefix"] if arch in TAKES_PREFIX else ["full", "lora"]) for arch in ARCHITECTURES}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Per architecture, a bertclf checkpoint of its tiny model with a fresh multi-label head."""
    root = tmp_path_factory.mktemp("arch_checkpoints")
    return {arch: arch_checkpoint(root / arch, arch) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_predict_and_explain_each_architecture(checkpoints, arch):
    ckpt = checkpoints[arch]
    predictor = Predictor.load(str(ckpt), device="cpu", compile="off")
    np.testing.assert_allclose(predictor.probabilities(TEXTS), reference_probabilities(ckpt, TEXTS), atol=1e-5)
    rows = predict_texts(str(ckpt), TEXTS)
    assert [r["text"] for r in rows] == TEXTS and all(set(r["probabilities"]) == set(NAMES) for r in rows)

    explainer = Explainer.load(str(ckpt), steps=64)
    (e,) = explainer.explain(TEXTS[1], label="joy")
    assert [w.word for w in e.words] == TEXTS[1].split()
    gap = e.logit - e.baseline_logit
    assert sum(w.score for w in e.words) == pytest.approx(gap, abs=0.02 * max(1.0, abs(gap)))  # completeness


# one per tokenizer family in the default suite (each run starts a scoring actor: ~9 s); the rest are `slow`
TOKENIZER_FAMILIES = {"bert", "roberta", "deberta-v2"}  # WordPiece, byte-level BPE, Unigram


@pytest.mark.parametrize("arch", [a if a in TOKENIZER_FAMILIES else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ARCHITECTURES])
def test_score_each_architecture_through_ray_data(ray_local, checkpoints, arch, tmp_path):
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(40, 3, True))]
    write_rows(tmp_path / "in.parquet", rows, row_group_size=20)
    summary = score(ScoreConfig(checkpoint=str(checkpoints[arch]), input=str(tmp_path / "in.parquet"),
                                output=str(tmp_path / "scores"), precision="fp32", compile="off", max_batch_rows=8))
    assert summary.rows_out == 40 and (tmp_path / "scores" / "_SUCCESS").exists()
    assert_scores_match_reference(read_scores(tmp_path / "scores"), checkpoints[arch], rows)


@pytest.mark.slow  # one torch.export + AOTInductor compile per architecture: about 30 s each on 2 cores
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_compiled_graph_of_each_architecture_matches_eager(checkpoints, arch):
    texts = [r["text"] for r in make_rows(20, 4, True)] + TEXTS
    compiled = Predictor.load(str(checkpoints[arch]), device="cpu", max_rows=8, compile="on")
    assert compiled.graph is not None, f"{arch}: torch.export refused the model, so it would score eagerly"
    eager = Predictor.load(str(checkpoints[arch]), device="cpu", max_rows=8, compile="off")
    np.testing.assert_allclose(compiled.probabilities(texts), eager.probabilities(texts), atol=1e-5)


def _train_config(tmp_path: Path, model: Path, method: str, epochs: int) -> TrainConfig:
    return TrainConfig(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                       output=str(tmp_path / "run"), model=str(model), method=method, lora_rank=4, prefix_length=4,
                       epochs=epochs, num_workers=2, batch_size=16, learning_rate=2e-3, precision="fp32",
                       warmup_ratio=0.0)


@pytest.mark.slow  # per architecture and method: 2-worker training, resume, report, serve (about 1-2 min each)
@pytest.mark.parametrize("arch, method", [(a, m) for a in ARCHITECTURES for m in METHODS[a]])
def test_train_resume_report_and_serve_each_architecture_and_method(ray_local, arch, method, tmp_path):
    from bertclf.report import evaluation_report
    from bertclf.serve import start
    from bertclf.training import run as train

    model = build_tiny(tmp_path / arch, arch)
    write_rows(tmp_path / "train.parquet", make_rows(96, seed=1, multi_label=True))
    write_rows(tmp_path / "val.parquet", make_rows(24, seed=2, multi_label=True))
    first = train(_train_config(tmp_path, model, method, epochs=1))
    assert first.epochs_run == 1
    resumed = train(_train_config(tmp_path, model, method, epochs=2))  # same output: resumes after epoch 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2], "epoch 1 was not trained again"
    meta = json.loads(Path(resumed.best_uri, "bertclf.json").read_text())
    assert meta["tuning"]["method"] == method

    report = evaluation_report(ReportConfig(checkpoint=resumed.best_uri, data=str(tmp_path / "val.parquet"),
                                            output=str(tmp_path / "report")))
    assert report["headline"]["rows"] == 24 and (tmp_path / "report" / "index.html").exists()

    from ray import serve

    port = free_port()
    url = start(ServeConfig(checkpoint=resumed.best_uri, port=port, precision="fp32"))
    try:
        request = urllib.request.Request(f"{url}/predict", data=json.dumps({"texts": TEXTS}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        serve.shutdown()
    direct = predict_texts(resumed.best_uri, TEXTS)
    assert [p["predicted"] for p in served] == [d["predicted"] for d in direct]
    for p, d in zip(served, direct, strict=True):
        assert p["probabilities"] == pytest.approx(d["probabilities"], abs=1e-5)


@pytest.mark.slow  # a two-trial search per architecture, each in its own Ray (as test_tune.py runs them)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tune_each_architecture(arch, tmp_path, s3_server):
    model = build_tiny(tmp_path / arch, arch)
    write_rows(tmp_path / "train.parquet", make_rows(64, seed=1, multi_label=True))
    write_rows(tmp_path / "val.parquet", make_rows(16, seed=2, multi_label=True))
    base = dataclasses.asdict(_train_config(tmp_path, model, "lora", epochs=1))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**base, "num_workers": 1, "output": str(tmp_path / "search")}))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"num_samples": 1, "scheduler": "fifo",
                                                          "space": {"learning_rate": {"grid": [1e-3, 3e-3]}}}))
    run = subprocess.run([sys.executable, "-m", "bertclf.cli", "tune", "--config", str(tmp_path / "base.yaml"),
                          "--search", str(tmp_path / "search.yaml")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = json.loads((tmp_path / "search" / "trials.json").read_text())
    assert len(table) == 2 and {t["status"] for t in table} == {"completed"}
    best = tmp_path / "search" / "best"
    assert json.loads((best / "bertclf.json").read_text())["tuning"]["method"] == "lora"
    assert len(predict_texts(str(best), TEXTS)) == len(TEXTS)
