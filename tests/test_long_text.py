"""Texts longer than the model: windows, pooling, and evaluate's long_text override (on a local Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertclf.config import EvaluateConfig
from bertclf.dev.synthetic import LABEL_WORDS, make_rows, write_rows
from bertclf.evaluate import evaluate
from bertclf.labels import LabelSpace
from bertclf.model import adapters
from bertclf.model.inference import pool_window_logits, special_tokens_around, window_starts, windows
from bertclf.model.modeling import build_classifier, load_tokenizer
from bertclf.records import CheckpointMeta


def test_windows_cover_every_token_in_overlapping_windows_with_the_tokenizers_special_tokens(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    prefix, suffix = special_tokens_around(tok)
    assert (prefix, suffix) == ([tok.cls_token_id], [tok.sep_token_id])
    content = [list(range(100, 130)), [], list(range(200, 205))]
    parts, owner = windows(content, tok, max_length=12, stride=4)
    assert owner.tolist() == [0, 0, 0, 0, 0, 1, 2], "30 tokens in windows of 10, 6 apart: 5"
    assert all(len(p) <= 12 and p[0] == tok.cls_token_id and p[-1] == tok.sep_token_id for p in parts)
    inner = [p[1:-1] for p in parts[:5]]
    assert inner[0] == list(range(100, 110)) and inner[1][:4] == inner[0][-4:], "neighbours share `stride` tokens"
    assert sorted({t for w in inner for t in w}) == content[0], "every token is in some window"
    assert parts[5] == prefix + suffix, "an empty text: one window of special tokens"
    assert len(window_starts(30, 10, 6)) == 5 and len(window_starts(10, 10, 6)) == 1


def test_pooling_takes_the_max_for_multi_label_and_the_mean_for_multi_class():
    logits = np.array([[1.0, -2.0], [3.0, -5.0], [0.0, 0.0]], dtype=np.float32)
    owner = np.array([0, 0, 1])
    np.testing.assert_array_equal(pool_window_logits(logits, owner, 2, "multi_label"), [[3.0, -2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(pool_window_logits(logits, owner, 2, "multi_class"), [[2.0, -3.5], [0.0, 0.0]])


@pytest.fixture
def two_checkpoints(tiny_model, tmp_path):
    """The same weights saved twice: windows of 16 tokens pooled (chunk) and truncated at 16."""
    space = LabelSpace("multi_label", sorted(LABEL_WORDS), [0.5, 0.5, 0.5])
    torch.manual_seed(0)
    model = build_classifier(str(tiny_model), space)
    with torch.no_grad():  # spread the random logits over many of the report's probability bins
        model.classifier.weight.mul_(200.0)
    tok = load_tokenizer(str(tiny_model))
    out = {}
    for long_text in ("chunk", "truncate"):
        adapters.save_model_dir(tmp_path / long_text, model, tok, CheckpointMeta(
            labels=space, max_length=16, epoch=1, long_text=long_text, chunk_stride=4))
        out[long_text] = tmp_path / long_text
    rows = make_rows(40, 5, True)
    for i, row in enumerate(rows):
        row["text"] = " ".join([row["text"]] * (1 + i % 5))
    write_rows(tmp_path / "long.parquet", rows)
    return out, str(tmp_path / "long.parquet")


@pytest.mark.slow  # an evaluation and a report over Ray (~35 s); windows and pooling are checked by default
def test_evaluate_can_score_a_chunk_checkpoint_truncated_and_its_report_gives_the_same_numbers(
        two_checkpoints, ray_local, tmp_path):
    ckpts, data = two_checkpoints
    chunked = evaluate(EvaluateConfig(checkpoint=str(ckpts["chunk"]), data=data))
    as_truncated = evaluate(EvaluateConfig(checkpoint=str(ckpts["chunk"]), data=data, long_text="truncate",
                                           report=str(tmp_path / "report")))
    truncated = evaluate(EvaluateConfig(checkpoint=str(ckpts["truncate"]), data=data))
    assert chunked["long_text"] == "chunk" and as_truncated["long_text"] == truncated["long_text"] == "truncate"
    assert as_truncated["roc_auc_macro"] == truncated["roc_auc_macro"], "the override is the truncated checkpoint"
    assert chunked["roc_auc_macro"] != truncated["roc_auc_macro"], "pooled windows see the whole text"
    page = json.loads((tmp_path / "report" / "report.json").read_text())
    assert page["long_text"] == "truncate" and page["headline"] == {k: truncated[k] for k in page["headline"]}
    assert as_truncated["per_label"] == truncated["per_label"] == page["per_label"], "one engine, one set of numbers"
