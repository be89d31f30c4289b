"""`max_length: auto`: the truncation length comes from the training texts' token counts and the model's limit."""

from __future__ import annotations

import pyarrow as pa
import pytest

from bertclf.config import TrainConfig
from bertclf.dev.synthetic import FILLER, make_rows, write_rows
from bertclf.model.modeling import load_tokenizer
from bertclf.training.driver import prepare
from bertclf.training.lengths import auto_long_text, auto_max_length, model_length_limit, text_sample, token_counts


def _texts(words: int, n: int) -> list[str]:
    return [" ".join(FILLER[i % len(FILLER)] for i in range(words))] * n


def test_the_99th_percentile_rounded_up_to_16_within_the_model_limit(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    assert model_length_limit(str(tiny_model), tok) == 64  # position embeddings; the tokenizer states no limit
    # 980 texts of 10 words (12 tokens with [CLS] and [SEP]), 20 of 30 words (32 tokens): the 99th percentile is 32
    assert auto_max_length(token_counts(tok, _texts(10, 980) + _texts(30, 20)), limit=64) == (32, 32)
    # 995 short, 5 long: the long 0.5% are truncated; 12 tokens round up to 16
    assert auto_max_length(token_counts(tok, _texts(10, 995) + _texts(30, 5)), limit=64) == (16, 12)
    assert auto_max_length(token_counts(tok, _texts(100, 50)), limit=64) == (64, 102)  # never past what the model takes
    assert auto_max_length(token_counts(tok, _texts(1, 50)), limit=64) == (16, 3)


def test_the_sample_spreads_over_each_file_and_all_files_share_it():
    texts = pa.chunked_array([[str(i) for i in range(50_000)], [str(i) for i in range(50_000, 100_000)]])
    one = text_sample(texts, files=1)
    assert len(one) == 8_000 and one[0] == "0" and one[-1] == "99999" and len(set(one)) == 8_000
    assert len(text_sample(texts, files=80)) == 100
    assert text_sample(texts[:10], files=1) == [str(i) for i in range(10)]


def test_training_resolves_auto_before_any_worker_starts(tiny_model, tmp_path):
    rows = make_rows(200, seed=5, multi_label=True)
    for row in rows[:20]:
        row["text"] += " " + " ".join(FILLER * 2)  # 10% of texts 26 words longer: they set the 99th percentile
    write_rows(tmp_path / "train.parquet", rows)
    write_rows(tmp_path / "val.parquet", make_rows(20, seed=6, multi_label=True))
    base = dict(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                output=str(tmp_path / "out"), model=str(tiny_model))
    cfg, data = prepare(TrainConfig(**base))
    longest = max(len(load_tokenizer(str(tiny_model))(r["text"])["input_ids"]) for r in rows)
    assert TrainConfig().max_length == "auto" and cfg.max_length == 16 * -(-longest // 16) <= 64
    assert not any(isinstance(v, list) and v and isinstance(v[0], str) and v[0] in {r["text"] for r in rows}
                   for v in vars(data).values()), "no texts in what the workers receive"
    assert prepare(TrainConfig(**base, max_length=24))[0].max_length == 24


@pytest.mark.parametrize("value, message", [("long", "'long' is not a valid int or auto"),
                                            (0, "max_length must be >= 1")])
def test_bad_max_length(value, message):
    from bertclf.config import load_config
    from bertclf.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, overrides={"max_length": value})


def test_long_text_auto_chunks_multi_label_texts_only_when_many_would_be_cut():
    assert auto_long_text([100] * 90 + [600] * 10, 512, "multi_label") == ("chunk", 0.1)
    assert auto_long_text([100] * 90 + [600] * 10, 512, "multi_class") == ("truncate", 0.1)
    assert auto_long_text([100] * 97 + [600] * 3, 512, "multi_label") == ("truncate", 0.03)
    assert auto_long_text([], 512, "multi_label") == ("truncate", 0.0)
