"""Integrated Gradients explanations: completeness holds, and a planted trigger word comes out on top."""

from __future__ import annotations

import json
import random

import pytest
import torch

from bertclf import cli
from bertclf.dev.synthetic import FILLER
from bertclf.dev.tiny_model import build_tiny_bert, save_tiny_checkpoint
from bertclf.errors import InputError
from bertclf.explain import Explainer, render_html, render_terminal
from bertclf.labels import LabelSpace
from bertclf.model import adapters
from bertclf.records import CheckpointMeta

TRIGGER = "zebra"


@pytest.fixture(scope="module")
def trigger_checkpoint(tmp_path_factory):
    """A tiny BERT trained in-process until it says "trigger" exactly when the text holds the word zebra."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("trigger")
    base = build_tiny_bert(root / "base", extra_words=(TRIGGER,))
    space = LabelSpace("multi_class", ["none", "trigger"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    rng = random.Random(0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(150):
        texts, labels = [], []
        for _ in range(32):
            words = rng.sample(FILLER, rng.randint(2, 7))
            label = rng.random() < 0.5
            if label:
                words.insert(rng.randrange(len(words) + 1), TRIGGER)
            texts.append(" ".join(words))
            labels.append(int(label))
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor(labels)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.config.id2label, model.config.label2id = {0: "none", 1: "trigger"}, {"none": 0, "trigger": 1}
    directory = root / "ckpt"
    adapters.save_model_dir(directory, model, tokenizer, CheckpointMeta(labels=space, max_length=32, epoch=1))
    return directory


def test_planted_trigger_word_has_the_largest_attribution(trigger_checkpoint):
    explainer = Explainer.load(str(trigger_checkpoint), steps=64)
    text = "the day was so zebra very work"
    (e,) = explainer.explain(text)
    assert e.label == "trigger" and e.probability > 0.9, "the toy model learned its trigger"
    assert e.top(1)[0].word == TRIGGER and e.top(1)[0].score > 0
    assert [w.word for w in e.words] == text.split()
    (none,) = explainer.explain("the day was so very work")
    assert none.label == "none"


@pytest.mark.parametrize("text", ["happy glad day", "scared panic work today and so very angry", "x"])
def test_completeness_attributions_sum_to_the_logit_difference(tiny_model, tmp_path, text):
    ckpt = save_tiny_checkpoint(tmp_path / "ck", tiny_model, "multi_label", [0.5, 0.5, 0.5])
    explainer = Explainer.load(str(ckpt), steps=100)
    for label in ("anger", "fear", "joy"):
        (e,) = explainer.explain(text, label=label)
        total = sum(w.score for w in e.words)
        gap = e.logit - e.baseline_logit
        # special tokens are kept in the baseline, so their attributions are zero and dropping them loses nothing
        assert total == pytest.approx(gap, abs=0.01 * max(1.0, abs(gap))), (total, gap, e.delta)
        assert abs(e.delta) < 0.01 * max(1.0, abs(gap))


def test_views_and_cli(trigger_checkpoint, capsys):
    explainer = Explainer.load(str(trigger_checkpoint), steps=32)
    (e,) = explainer.explain("zebra & <b>friend</b>")
    view = render_html(e)
    assert "&lt;" in view and "<b>friend" not in view and view.count("<span") == len(e.words)
    assert "zebra(" in render_terminal([e]) and "trigger: p=" in render_terminal([e])
    with pytest.raises(InputError, match="label 'nope' is not in the checkpoint's labels"):
        explainer.explain("a", label="nope")
    assert cli.main(["explain", "--checkpoint", str(trigger_checkpoint), "--json", "the zebra day"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["label"] == "trigger" and {w["word"] for w in line["words"]} == {"the", "zebra", "day"}
