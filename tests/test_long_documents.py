"""Long documents: units sized by their texts' bytes (a row group of long posts spreads over every actor), one
sampled window per text in training, the run's projected time, and a long multi-label set end to end (slow)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from bertclf.config import ScoreConfig, TrainConfig
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import FILLER, LABEL_WORDS, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import ConfigError
from bertclf.model.inference import window_layout
from bertclf.model.modeling import load_tokenizer
from bertclf.records import WorkUnit
from bertclf.scoring import run as score
from bertclf.training.batching import sampled_windows
from bertclf.training.worker import run_projection
from bertclf.units import cut_units, file_metadata, read_unit


def _long_rows(n: int, words: int, seed: int) -> list[dict]:
    """Multi-label rows whose label words are spread over a long text of filler."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = sorted(rng.sample(list(LABEL_WORDS), rng.choice([1, 2])))
        text = [rng.choice(FILLER) for _ in range(words)]
        for label in labels:
            for _ in range(3):
                text[rng.randrange(words)] = rng.choice(LABEL_WORDS[label])
        rows.append({"id": f"d{seed}-{i}", "text": " ".join(text), "labels": labels})
    return rows


def test_a_row_group_of_long_texts_is_cut_into_row_slices_read_back_exactly(tmp_path):
    path = tmp_path / "long.parquet"
    write_rows(path, _long_rows(30, 200, seed=1), row_group_size=30)  # one row group
    meta = file_metadata(str(path))
    budget = meta.row_group(0).column(1).total_uncompressed_size // 4 + 1
    units = cut_units([str(path)], {str(path): meta}, 1000, "text", budget)
    assert len(units) == 4 and [u.row_range for u in units] == [(0, 8), (8, 15), (15, 22), (22, 30)]
    assert len({u.name for u in units}) == 4 and sum(u.num_rows for u in units) == 30
    ids = [i for u in units for b in read_unit(u, ["id"], 4) for i in b.column(0).to_pylist()]
    assert ids == pq.read_table(path, columns=["id"])["id"].to_pylist(), "every row once, in order"
    assert cut_units([str(path)], {str(path): meta}, 1000) == [WorkUnit(str(path), (0,), 30, 0)], \
        "without a byte budget: whole row groups, as before"


@pytest.mark.slow  # a Ray run (~20 s); row slices read back exactly are checked by default
def test_long_texts_in_one_row_group_are_scored_by_every_actor_once(ray_local, tiny_model, tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label")
    rows = _long_rows(24, 300, seed=2)
    write_rows(tmp_path / "in.parquet", [{"id": r["id"], "text": r["text"]} for r in rows], row_group_size=24)
    summary = score(
        ScoreConfig(checkpoint=str(ckpt), input=str(tmp_path / "in.parquet"), output=str(tmp_path / "out"),
                    precision="fp32", compile="off", long_text="chunk", num_actors=2))
    plan = json.loads((tmp_path / "out" / "_plan.json").read_text())
    assert plan["text_bytes_per_unit"] and summary.rows_out == 24
    parts = sorted(p.name for p in (tmp_path / "out").glob("*.parquet"))
    assert len(parts) >= 4 and all("-r0" in p for p in parts), "one row group cut into row slices"
    assert read_scores(tmp_path / "out")["id"].to_pylist() == sorted(r["id"] for r in rows)


def test_sampled_windows_are_windows_of_the_text_and_vary_with_the_seed(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    text = " ".join(f"{w}" for w in (FILLER * 20)[:120])
    prefix, suffix, room, _ = window_layout(tokenizer, 16, 4)
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    seen = set()
    for seed in range(12):
        (ids,) = sampled_windows(tokenizer, [text], 16, 4, random.Random(seed))
        assert ids[:len(prefix)] == prefix and ids[-len(suffix):] == suffix and len(ids) <= 16
        body = ids[len(prefix):len(ids) - len(suffix)]
        starts = [s for s in range(len(content)) if content[s:s + len(body)] == body]
        assert starts and len(body) == room
        seen.add(starts[0])
    assert len(seen) > 3, "different windows across epochs' seeds"
    (short,) = sampled_windows(tokenizer, ["joy"], 16, 4, random.Random(0))
    assert short == tokenizer("joy")["input_ids"], "a text that fits is its own window"


def test_train_windows_sample_needs_pooled_inference():
    with pytest.raises(ConfigError, match="long_text chunk"):
        TrainConfig(train_windows="sample", long_text="truncate").validate()


def test_the_first_epoch_projects_the_whole_run():
    w = SimpleNamespace(start_epoch=0, steps_per_epoch=100, cfg=SimpleNamespace(epochs=3))
    line = run_projection(w, 0, 10, 60.0)  # 10 of 300 steps in a minute: 30 minutes in all
    assert "3 epoch(s)" in line and "30m00s" in line
    assert run_projection(w, 1, 10, 60.0) == "", "only the first epoch of the run projects"


@pytest.mark.slow  # a 2-worker training run and a scoring run on long synthetic multi-label texts (~3 min)
def test_long_multi_label_texts_train_on_sampled_windows_and_blend(ray_local, tiny_model, tmp_path):
    from bertclf.model.inference import Predictor
    from bertclf.training import run

    write_rows(tmp_path / "train.parquet", _long_rows(160, 120, seed=3))
    write_rows(tmp_path / "val.parquet", _long_rows(60, 120, seed=4))
    result = run(TrainConfig(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                             output=str(tmp_path / "run"), model=str(tiny_model), epochs=2, batch_size=16,
                             learning_rate=2e-3, max_length=32, train_windows="sample", precision="fp32"))
    meta = json.loads((tmp_path / "run" / "best" / "bertclf.json").read_text())
    assert meta["long_text"] == "chunk" and meta["training_config"]["train_windows"] == "sample"
    assert result.best.baseline["f1_micro"] > 0.5, "the words decide the labels: the baseline learns them"
    predictor = Predictor.load(result.best_uri, device="cpu", precision="fp32")
    probs = predictor.probabilities([r["text"] for r in _long_rows(5, 120, seed=5)])
    assert probs.shape == (5, 3) and np.isfinite(probs).all()
    assert predictor.blends == meta["blend"]["used"]
