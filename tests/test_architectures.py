"""Any encoder a user brings: tiny random BERT, RoBERTa, XLM-R, DistilBERT, DeBERTa-v2 (v3-style), MPNet and ELECTRA
models, each with its own tokenizer class, through building, attention choice, usable length, LoRA and prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bertclf.config import TrainConfig
from bertclf.dev.synthetic import LABEL_WORDS, make_rows, write_rows
from bertclf.dev.tiny_architectures import ARCHITECTURES, TAKES_PREFIX, build_tiny
from bertclf.errors import ConfigError
from bertclf.labels import LabelSpace
from bertclf.model import adapters
from bertclf.model.modeling import attention_for, build_classifier, load_tokenizer
from bertclf.training.lengths import absolute_positions, check_max_length, model_length_limit

SPACE = LabelSpace("multi_label", sorted(LABEL_WORDS), [0.5] * len(LABEL_WORDS))
TEXTS = ["happy glad smile the day", "angry mad it was so very furious today"]
SDPA = {"bert", "roberta", "xlm-roberta", "distilbert", "electra"}  # transformers 5 refuses it for MPNet, DeBERTa-v2
LORA_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
                "electra": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "mpnet": ["q", "v"],
                "deberta-v2": ["query_proj", "value_proj"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {arch: build_tiny(root / arch, arch) for arch in ARCHITECTURES}


def _batch(model_dir: Path):
    return load_tokenizer(str(model_dir))(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_builds_and_classifies(tiny, arch):
    model = build_classifier(str(tiny[arch]), SPACE).eval()
    assert model.config.model_type == arch
    enc = _batch(tiny[arch])
    assert enc["input_ids"].shape[1] <= 12, "the tokenizer knows the synthetic words"
    with torch.inference_mode():
        assert model(**enc).logits.shape == (2, 3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_attention_is_chosen_per_model_class(tiny, arch):
    assert attention_for("cpu", str(tiny[arch])) == "eager"
    expected = "sdpa" if arch in SDPA else "eager"
    assert attention_for("cuda", str(tiny[arch])) == expected
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        model = build_classifier(str(tiny[arch]), SPACE, device_type="cuda")  # built on CPU with the CUDA choice
        assert model.config._attn_implementation == expected
        # SDPA runs without cuDNN's kernels, which build a plan per batch shape; eager leaves the setting alone
        assert torch.backends.cuda.cudnn_sdp_enabled() == (expected == "eager")
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_usable_length_comes_from_the_model(tiny, arch):
    tokenizer = load_tokenizer(str(tiny[arch]))
    assert model_length_limit(str(tiny[arch]), tokenizer) == 64  # RoBERTa-style: 66 embeddings, 64 tokens
    prefix = model_length_limit(str(tiny[arch]), tokenizer, prefix_length=20)
    assert prefix == (64 if arch == "deberta-v2" else 44)  # relative positions only: a prefix takes none


def test_roberta_514_position_embeddings_hold_512_tokens(tmp_path):
    from transformers import AutoConfig

    model_dir = build_tiny(tmp_path / "roberta", "roberta", positions=512)
    assert AutoConfig.from_pretrained(str(model_dir)).max_position_embeddings == 514
    assert model_length_limit(str(model_dir), load_tokenizer(str(model_dir))) == 512
    assert absolute_positions(AutoConfig.from_pretrained(str(model_dir)))


def test_explicit_max_length_past_the_model_is_refused_naming_both(tiny):
    model = str(tiny["roberta"])
    check_max_length(TrainConfig(model=model, max_length=64), model)
    with pytest.raises(ConfigError, match=r"max_length 65 .* 64 tokens"):
        check_max_length(TrainConfig(model=model, max_length=65), model)
    with pytest.raises(ConfigError, match=r"max_length 64 .* 44 tokens .*prefix of 20"):
        check_max_length(TrainConfig(model=model, max_length=64, method="prefix", prefix_length=20), model)


def _lora_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_default_targets_fit_each_architecture_and_train_one_step(tiny, arch):
    cfg = TrainConfig(method="lora", lora_rank=4)
    model = adapters.apply_method(build_classifier(str(tiny[arch]), SPACE), cfg)
    assert _lora_names(model) == set(LORA_TARGETS[arch])
    assert adapters.tuning_info(model, cfg).settings["target_modules"] == LORA_TARGETS[arch]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable), trainable
    assert any("lora_" in name for name in trainable) and any("modules_to_save" in name for name in trainable)

    model.train()
    loss = model(**_batch(tiny[arch]), labels=torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for name, g in grads.items() if "lora_B" in name)  # (A's are 0 while B is 0)
    assert any(g.abs().sum() > 0 for name, g in grads.items() if "modules_to_save" in name)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad), "the encoder stays frozen"


def test_explicit_lora_targets_are_kept(tiny):
    cfg = TrainConfig(method="lora", lora_target_modules=["q", "k", "v"])
    model = adapters.apply_method(build_classifier(str(tiny["mpnet"]), SPACE), cfg)
    assert _lora_names(model) == {"q", "k", "v"}
    with pytest.raises(ConfigError, match="not linear layers of this model; it has: .*q_lin"):
        adapters.apply_method(build_classifier(str(tiny["distilbert"]), SPACE),
                              TrainConfig(method="lora", lora_target_modules=["query"]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_only_where_the_encoder_takes_cache(tiny, arch):
    cfg = TrainConfig(method="prefix", prefix_length=4)
    model = build_classifier(str(tiny[arch]), SPACE)
    if arch not in TAKES_PREFIX:
        with pytest.raises(ConfigError, match=r"method prefix doesn't work with .*`cache`.*method lora .* or full"):
            adapters.apply_method(model, cfg)
        return
    wrapped = adapters.apply_method(model, cfg)
    wrapped.train()
    loss = wrapped(**_batch(tiny[arch])).logits.pow(2).mean()
    loss.backward()
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert all("prompt_encoder" in name or "modules_to_save" in name for name in trainable), trainable


def _data(tmp_path: Path) -> dict:
    write_rows(tmp_path / "train.parquet", make_rows(60, seed=1, multi_label=True))
    write_rows(tmp_path / "val.parquet", make_rows(12, seed=2, multi_label=True))
    return dict(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                output=str(tmp_path / "out"))


def test_the_driver_refuses_before_any_worker_starts(tiny, tmp_path):
    from bertclf.training.driver import prepare

    base = _data(tmp_path)
    with pytest.raises(ConfigError, match="method prefix doesn't work with DistilBertModel.*method lora"):
        prepare(TrainConfig(**base, model=str(tiny["distilbert"]), method="prefix"))
    with pytest.raises(ConfigError, match=r"max_length 100 is more than .* 64 tokens"):
        prepare(TrainConfig(**base, model=str(tiny["roberta"]), max_length=100))
    cfg, _ = prepare(TrainConfig(**base, model=str(tiny["roberta"]), method="prefix", prefix_length=20))
    assert cfg.max_length <= 44  # auto stays within the positions the prefix leaves


@pytest.mark.slow  # three Ray Train runs of 2 workers: about 2-3 min on 2 busy cores
@pytest.mark.parametrize("arch, method", [("distilbert", "lora"), ("mpnet", "full"), ("deberta-v2", "lora")])
def test_two_workers_train_and_score_each_architecture(ray_local, tmp_path, arch, method):
    from transformers import AutoModelForSequenceClassification

    from bertclf.model.inference import Predictor
    from bertclf.training import run as train

    model_dir = build_tiny(tmp_path / arch, arch)
    write_rows(tmp_path / "train.parquet", make_rows(120, seed=1, multi_label=True))
    write_rows(tmp_path / "val.parquet", make_rows(24, seed=2, multi_label=True))
    result = train(TrainConfig(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                               output=str(tmp_path / "out"), model=str(model_dir), method=method, lora_rank=4,
                               epochs=1, num_workers=2, batch_size=16, learning_rate=2e-3, precision="fp32"))
    assert result.epochs_run == 1
    published = AutoModelForSequenceClassification.from_pretrained(result.best_uri)  # LoRA published merged
    assert published.config.model_type == arch
    probabilities = Predictor.load(result.best_uri, device="cpu").probabilities(TEXTS)
    assert probabilities.shape == (2, 3) and ((probabilities >= 0) & (probabilities <= 1)).all()
