"""Training at the model's full length on a small memory share: planned micro-batches on a real local Ray with 2
workers, the same weights as one micro-batch per step, and a plan that cannot fit refused before training."""

from __future__ import annotations

import logging
import random

import pytest

from bertclf import storage
from bertclf.cli import main as cli_main
from bertclf.config import TrainConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.training import run


def _long_rows(n: int, seed: int) -> list[dict]:
    """The synthetic rows, padded with label-free words to ~60 tokens: the tiny model's whole length (64)."""
    rng = random.Random(seed)
    rows = make_rows(n, seed=seed, multi_label=True)
    for row in rows:
        filler = [rng.choice(["the", "day", "was", "so", "very"]) for _ in range(rng.randint(40, 70))]
        row["text"] += " " + " ".join(filler)
    return rows


@pytest.fixture
def no_dropout_model(tiny_model, tmp_path):
    """The tiny BERT without dropout, so splitting a batch cannot change which activations are dropped."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _share_for_rows(model_dir, rows: int, length: int) -> float:
    """The worker_memory_gb under which `rows` rows of `length` tokens fit (the plan's own arithmetic)."""
    from transformers import AutoConfig, AutoModel

    from bertclf.training.memory import GIB, SAFETY, ModelShape, activation_bytes_per_row, fixed_bytes

    config = AutoConfig.from_pretrained(str(model_dir))
    params = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    shape = ModelShape.from_config(config, params + 200)  # + the 3-label head
    row = activation_bytes_per_row(shape, length, bf16=False, eager_attention=True)
    return (fixed_bytes(shape, bf16=False) + (rows + 0.5) * row / SAFETY) / GIB


@pytest.mark.slow
def test_full_length_micro_batches_train_the_same_weights_as_whole_batches(ray_local, no_dropout_model, tmp_path,
                                                                            caplog):
    from safetensors.torch import load_file

    write_rows(tmp_path / "train.parquet", _long_rows(96, seed=1))
    write_rows(tmp_path / "val.parquet", _long_rows(24, seed=2))
    base = dict(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                model=str(no_dropout_model), epochs=1, num_workers=2, batch_size=16, learning_rate=1e-3,
                warmup_ratio=0.0, precision="fp32", max_failures=0)
    with caplog.at_level(logging.INFO, logger="bertclf"):
        small = run(TrainConfig(**base, output=str(tmp_path / "small"),
                                worker_memory_gb=_share_for_rows(no_dropout_model, 4, 64)))
    plan_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:")]
    assert plan_lines and "64-token rows: 4 per micro-batch, 4 micro-batch(es) per step of 16 rows" in plan_lines[-1]
    whole = run(TrainConfig(**base, output=str(tmp_path / "whole"), max_tokens_per_batch=16 * 64))

    assert small.epochs_run == whole.epochs_run == 1
    a = load_file(storage.join(small.best_uri, "model.safetensors"))
    b = load_file(storage.join(whole.best_uri, "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"accumulated micro-batches changed the weights by up to {worst}"
    assert small.best.train_loss == pytest.approx(whole.best.train_loss, rel=1e-4)


def test_a_plan_that_cannot_fit_fails_before_training_with_exit_code_2(ray_local, tiny_model, tmp_path, capsys):
    write_rows(tmp_path / "train.parquet", _long_rows(40, seed=3))
    write_rows(tmp_path / "val.parquet", _long_rows(10, seed=4))
    code = cli_main(["train", "--train", str(tmp_path / "train.parquet"), "--validation", str(tmp_path / "val.parquet"),
                     "--output", str(tmp_path / "out"), "--model", str(tiny_model), "--set", "worker_memory_gb=0.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "64-token row needs about" in err and "lower max_length" in err
    assert not storage.exists(str(tmp_path / "out" / "ray_train")), "nothing trained, no Ray Train run directory"
