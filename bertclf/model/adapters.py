"""Parameter-efficient fine-tuning with peft: LoRA or prefix-tuning around the encoder, and the two shapes
their checkpoints take.

The classification head (and the pooler, which bertclf re-initializes for sentence-transformers models) always
trains, as peft's `modules_to_save`. A LoRA checkpoint is published merged: plain weights that load with
`AutoModelForSequenceClassification`. A prefix-tuned one can't be merged: its `model.safetensors` holds the
frozen encoder with the trained head, and `adapter/` the prefix (peft's safetensors), which every bertclf load
applies (`load_adapter`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from bertclf.baseline import Baseline
from bertclf.config import TrainConfig
from bertclf.errors import CheckpointError, ConfigError
from bertclf.model import checkpoint, modeling
from bertclf.model.checkpoint import ADAPTER_DIR, ADAPTER_WEIGHTS
from bertclf.model.modeling import head_modules
from bertclf.records import CheckpointMeta, TuningInfo

DEFAULT_ADAPTER_LR = {"lora": 1e-3, "prefix": 1e-2}


class PrefixTuned(torch.nn.Module):
    """A peft prefix-tuning model called the way transformers 5 encoders take a prefix: as `cache`.

    peft 0.21 looks for a `past_key_values` argument by name and refuses BERT, whose forward now calls it
    `cache`; the prefix, its attention mask and the head are peft's own.
    """

    def __init__(self, peft_model) -> None:
        super().__init__()
        self.peft = peft_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        rows = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = attention_mask.new_ones(rows, self.peft.active_peft_config.num_virtual_tokens)
        return self.peft.base_model(input_ids=input_ids, attention_mask=torch.cat([prefix, attention_mask], dim=1),
                                    cache=self.peft.get_prompt(rows), **kwargs)


# peft's LoRA targets per model type, with the encoders it lacks; used when lora_target_modules is left at its default
LORA_TARGETS_FILLED = {"distilbert": ["q_lin", "v_lin"], "mpnet": ["q", "v"],
                       "deberta-v2": ["query_proj", "value_proj"], "electra": ["query", "value"]}
PREFIX_ALTERNATIVES = "use method lora (adapters on the attention layers) or full"


def default_lora_targets(model_type: str) -> list[str] | None:
    """The linear layers LoRA adapts by default for this model type: peft's choice, or ours where peft has none."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    targets = PEFT_TARGETS.get(model_type) or LORA_TARGETS_FILLED.get(model_type)
    return list(targets) if isinstance(targets, (list, tuple)) else None


def lora_targets(model, cfg: TrainConfig) -> list[str]:
    """cfg.lora_target_modules, or, left at its default (BERT's query,value), the model type's own names."""
    if list(cfg.lora_target_modules) != list(TrainConfig().lora_target_modules):
        return list(cfg.lora_target_modules)
    return default_lora_targets(getattr(model.config, "model_type", "")) or list(cfg.lora_target_modules)


def takes_prefix(model) -> bool:
    """Whether the encoder takes a prefix the way PrefixTuned gives it: a `cache` argument of its forward (BERT,
    RoBERTa, XLM-R, ELECTRA do under transformers 5; DistilBERT, MPNet, DeBERTa don't)."""
    import inspect

    return "cache" in inspect.signature(model.base_model.forward).parameters


def check_method_fits(model, cfg: TrainConfig) -> None:
    """Refuse a method the model's architecture can't train with, naming what it can."""
    if cfg.method == "prefix" and not takes_prefix(model):
        raise ConfigError(f"method prefix doesn't work with {type(model.base_model).__name__} (model type "
                          f"{model.config.model_type!r}): prefix-tuning passes the prefix to every layer as the "
                          f"encoder's `cache` argument, which this encoder doesn't take; {PREFIX_ALTERNATIVES}")


def apply_method(model, cfg: TrainConfig):
    """The model to train for `cfg.method`: as it is (full), or wrapped by peft with only adapter + head trainable."""
    if cfg.method == "full":
        return model
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    check_method_fits(model, cfg)
    heads = list(head_modules(model))
    if cfg.method == "lora":
        targets = lora_targets(model, cfg)
        peft_config = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                 lora_dropout=cfg.lora_dropout, target_modules=targets, modules_to_save=heads)
        available = sorted({name.rsplit(".", 1)[-1] for name, module in model.base_model.named_modules()
                            if isinstance(module, torch.nn.Linear)})
        missing = sorted(set(targets) - set(available))
        if missing:
            raise ConfigError(f"lora_target_modules {missing} are not linear layers of this model; "
                              f"it has: {', '.join(available)}")
    else:
        peft_config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg.prefix_length,
                                         modules_to_save=heads)
    wrapped = get_peft_model(model, peft_config)
    return PrefixTuned(wrapped) if cfg.method == "prefix" else wrapped


def _peft(model):
    """The peft model inside `model`, or None for a plain (full fine-tuning) transformers model."""
    model = model.peft if isinstance(model, PrefixTuned) else model
    return model if hasattr(model, "peft_config") else None


def hf_model(model):
    """The transformers model inside whatever wraps it (peft, PrefixTuned), with adapters still applied."""
    peft_model = _peft(model)
    return peft_model.get_base_model() if peft_model is not None else model


def encoder_learning_rate(cfg: TrainConfig) -> float:
    """The rate of what trains in the encoder: its weights (full) or the adapter (lora, prefix)."""
    if cfg.method == "full":
        return cfg.learning_rate
    return cfg.adapter_learning_rate or DEFAULT_ADAPTER_LR[cfg.method]


def tuning_info(model, cfg: TrainConfig) -> TuningInfo:
    """bertclf.json's account of the method: settings, trainable and total parameters, adapter to apply."""
    settings: dict[str, Any] = {}
    if cfg.method == "lora":
        settings = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                    "target_modules": lora_targets(hf_model(model), cfg)}
    elif cfg.method == "prefix":
        settings = {"prefix_length": cfg.prefix_length}
    if cfg.method != "full":
        settings["adapter_learning_rate"] = encoder_learning_rate(cfg)
    params = list(model.parameters())
    return TuningInfo(method=cfg.method, settings=settings,
                      trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
                      total_parameters=sum(p.numel() for p in params),
                      adapter=ADAPTER_DIR if cfg.method == "prefix" else None)


def save(directory: Path, model) -> None:
    """model.safetensors as plain transformers weights and, for peft methods, `adapter/` (what resuming needs)."""
    peft_model = _peft(model)
    if peft_model is None:
        model.save_pretrained(directory, safe_serialization=True)
        return
    peft_model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    plain = copy.deepcopy(peft_model)
    if isinstance(model, PrefixTuned):
        plain = _with_trained_heads(plain.get_base_model())
    else:
        plain = plain.merge_and_unload()
    plain.save_pretrained(directory, safe_serialization=True)


def save_model_dir(directory: Path, model, tokenizer, meta: CheckpointMeta, baseline: Baseline | None = None) -> None:
    """A checkpoint directory: the weights (with the adapter where the method keeps one), the tokenizer, the TF-IDF
    baseline when the run fitted one and, last, bertclf.json."""
    directory.mkdir(parents=True, exist_ok=True)
    save(directory, model)
    tokenizer.save_pretrained(directory)
    if baseline is not None:
        baseline.save(directory)
    checkpoint.write_meta(directory, meta)


def _with_trained_heads(model):
    """The model with each peft head wrapper replaced by the copy that trained."""
    from peft.utils import ModulesToSaveWrapper, _get_submodules

    wrapped = [name for name, module in model.named_modules() if isinstance(module, ModulesToSaveWrapper)]
    for name in wrapped:
        parent, target, child = _get_submodules(model, name)
        setattr(parent, child, target.modules_to_save[target.active_adapter])
    return model


def load_weights(model, directory: Path) -> None:
    """Resume: the trained weights of a Ray Train checkpoint into a freshly built model of the same method."""
    from safetensors.torch import load_file

    peft_model = _peft(model)
    if peft_model is None:
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
        return
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, load_file(str(directory / ADAPTER_DIR / ADAPTER_WEIGHTS)))


def load_adapter(model, directory: Path, adapter: str):
    """A published checkpoint's model with its adapter applied, for inference."""
    from peft import PeftModel

    if not (directory / adapter / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {directory} needs its adapter {adapter}/{ADAPTER_WEIGHTS}, which is missing")
    wrapped = PeftModel.from_pretrained(model, str(directory / adapter))
    return PrefixTuned(wrapped) if wrapped.active_peft_config.is_prompt_learning else wrapped


def load_for_inference(model_dir: str | Path, device=None, adapter: str | None = None):
    """(model, tokenizer) from a checkpoint directory, in eval mode on `device` (default CPU), with the
    checkpoint's adapter applied when it has one (bertclf.json's tuning.adapter)."""
    import torch

    device = torch.device(device or "cpu")
    model = modeling.from_pretrained(str(model_dir), modeling.attention_for(device.type, model_dir))
    if adapter:
        model = load_adapter(model, Path(model_dir), adapter)
    model.eval()
    model.to(device)
    modeling.keep_head_in_fp32(hf_model(model))
    return model, modeling.load_tokenizer(str(model_dir))


# the interface other modules, jobs and benchmarks use
__all__ = ["DEFAULT_ADAPTER_LR", "PREFIX_ALTERNATIVES", "apply_method", "check_method_fits", "default_lora_targets",
           "encoder_learning_rate", "hf_model", "load_adapter", "load_for_inference", "load_weights", "lora_targets",
           "save", "save_model_dir", "takes_prefix", "tuning_info"]
