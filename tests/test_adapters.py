"""LoRA and prefix-tuning on the tiny BERT: what trains, what a checkpoint holds, and that every load of it
predicts what the trained model predicted."""

from __future__ import annotations

import json

import pytest
import torch

from bertclf.config import TrainConfig
from bertclf.dev.synthetic import LABEL_WORDS
from bertclf.errors import CheckpointError, ConfigError
from bertclf.labels import LabelSpace
from bertclf.model import adapters, checkpoint
from bertclf.model.adapters import load_for_inference
from bertclf.model.modeling import build_classifier, keep_head_in_fp32, load_tokenizer
from bertclf.records import CheckpointMeta

SPACE = LabelSpace("multi_label", sorted(LABEL_WORDS), [0.5] * len(LABEL_WORDS))
TEXTS = ["joy happy smile", "anger rage mad furious", "calm"]


def trained(tiny_model, method: str, **settings):
    """A model of the method after a few optimizer steps, so head and adapter differ from their initial values."""
    cfg = TrainConfig(method=method, **settings)
    model = adapters.apply_method(build_classifier(str(tiny_model), SPACE, reinit_pooler=True), cfg)
    keep_head_in_fp32(adapters.hf_model(model))
    tokenizer = load_tokenizer(str(tiny_model))
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(5):
        loss = model(**enc).logits.pow(2).mean() - model(**enc).logits[:, 0].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return cfg, model, tokenizer, enc


def save(tmp_path, tiny_model, method: str, **settings):
    cfg, model, tokenizer, enc = trained(tiny_model, method, **settings)
    info = adapters.tuning_info(model, cfg)
    directory = tmp_path / method
    adapters.save_model_dir(directory, model, tokenizer, CheckpointMeta(labels=SPACE, max_length=32, tuning=info))
    with torch.no_grad():
        expected = model(**enc).logits
    return directory, info, enc, expected


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_peft_methods_train_only_adapter_and_head(tiny_model, method):
    cfg, model, _, _ = trained(tiny_model, method)
    info = adapters.tuning_info(model, cfg)
    full = adapters.tuning_info(build_classifier(str(tiny_model), SPACE), TrainConfig())
    assert full.trainable_parameters == full.total_parameters
    assert info.trainable_parameters < full.total_parameters / 3
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in names) and any("pooler" in n for n in names)
    adapter_kind = "lora_" if method == "lora" else "prompt_encoder"
    assert any(adapter_kind in n for n in names)
    assert not any("encoder.layer.0.attention.self.query.base_layer" in n or n.endswith("embeddings.word_embeddings"
                                                                                     ".weight") for n in names)


def test_lora_checkpoint_is_merged_and_loads_with_plain_transformers(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification

    directory, info, enc, expected = save(tmp_path, tiny_model, "lora", lora_rank=4)
    assert info.adapter is None and info.loads_with_transformers
    checkpoint.strip_training_state(directory)
    assert not (directory / checkpoint.ADAPTER_DIR).exists()  # merged: the adapter was only for resuming
    plain = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, expected, atol=1e-5)
    meta = json.loads((directory / checkpoint.MARKER).read_text())
    assert meta["tuning"]["method"] == "lora" and meta["tuning"]["settings"]["rank"] == 4
    assert meta["tuning"]["loads_with_transformers"] is True


def test_prefix_checkpoint_keeps_its_adapter_and_every_bertclf_load_applies_it(tmp_path, tiny_model):
    from transformers import AutoModelForSequenceClassification

    directory, info, enc, expected = save(tmp_path, tiny_model, "prefix", prefix_length=4)
    checkpoint.strip_training_state(directory)
    assert (directory / "adapter" / checkpoint.ADAPTER_WEIGHTS).is_file()
    meta = json.loads((directory / checkpoint.MARKER).read_text())
    assert meta["tuning"]["adapter"] == "adapter" and meta["tuning"]["loads_with_transformers"] is False
    model, _ = load_for_inference(directory, adapter=info.adapter)
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, expected, atol=1e-5)
        # the weights alone are the encoder without its prefix: not the model that trained
        plain = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
        assert not torch.allclose(plain(**enc).logits, expected, atol=1e-3)
    ckpt = checkpoint.load(str(directory))
    before = ckpt.fingerprint()
    (directory / "adapter" / checkpoint.ADAPTER_WEIGHTS).write_bytes(b"changed")
    assert ckpt.fingerprint() != before  # the adapter is part of the model's identity
    (directory / "adapter" / checkpoint.ADAPTER_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="adapter"):
        load_for_inference(directory, adapter=info.adapter)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_resume_restores_the_trained_weights(tmp_path, tiny_model, method):
    directory, _, enc, expected = save(tmp_path, tiny_model, method)
    cfg = TrainConfig(method=method)
    fresh = adapters.apply_method(build_classifier(str(tiny_model), SPACE, reinit_pooler=True), cfg).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(**enc).logits, expected, atol=1e-4)
        adapters.load_weights(fresh, directory)
        assert torch.allclose(fresh(**enc).logits, expected, atol=1e-5)


def test_prefix_runs_under_bf16_autocast(tiny_model):
    _, model, _, enc = trained(tiny_model, "prefix")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**enc).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_unknown_lora_target_names_the_layers_there_are(tiny_model):
    cfg = TrainConfig(method="lora", lora_target_modules=["q_proj"])
    with pytest.raises(ConfigError, match=r"q_proj.*query"):
        adapters.apply_method(build_classifier(str(tiny_model), SPACE), cfg)


@pytest.mark.parametrize("settings, message", [
    ({"method": "adapterfusion"}, "method must be one of full, lora, prefix"),
    ({"lora_rank": 0}, "lora_rank must be >= 1"),
    ({"prefix_length": 0}, "prefix_length must be >= 1"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"method": "lora", "lora_target_modules": []}, "lora_target_modules is empty"),
    ({"adapter_learning_rate": 0.0}, "adapter_learning_rate must be > 0"),
])
def test_bad_method_settings_fail_validation(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings).validate()
