"""`max_length: auto`: the truncation length chosen from the training texts, so long texts are read whole and
short ones don't pay for padding they never use."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from bertclf.errors import ConfigError, ModelError

LENGTH_QUANTILE = 0.99  # share of the sampled training texts that fit whole
LENGTH_STEP = 16        # lengths rounded up to a multiple of this: fewer distinct shapes for kernels and caches
SAMPLE_ROWS = 8_000     # texts sampled over all training files
CHUNK_WHEN_LONGER = 0.05  # long_text auto: chunk when more of the sampled texts than this exceed max_length


# model types whose position ids start at padding_idx + 1 (RoBERTa's numbering): 514 position embeddings hold 512
# tokens. Types not listed are recognized by their modeling code numbering positions from the padding index.
PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer",
                                  "data2vec-text", "ibert", "roberta-prelayernorm", "xmod", "luke", "markuplm",
                                  "lilt", "layoutlmv3"})
FIXED_PADDING_IDX = {"mpnet": 1}  # MPNetEmbeddings numbers from 1 whatever the config's pad_token_id


def model_length_limit(model_dir: str, tokenizer, prefix_length: int = 0) -> int:
    """The longest input the model takes: its position embeddings less the positions it never gives a token
    (RoBERTa-style offsets) and less a prefix-tuning prefix, which takes positions too on absolute-position
    models; and the tokenizer's limit where it sets one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < 100_000:
        positions -= position_offset(config)
        if prefix_length and absolute_positions(config):
            positions -= prefix_length
    limits = [positions, tokenizer.model_max_length]
    limits = [int(n) for n in limits if isinstance(n, int) and n < 100_000]  # tokenizers say 1e30 for none
    if not limits:
        raise ModelError(f"model {model_dir} states no maximum input length: set max_length to a number")
    if min(limits) < 1:
        raise ModelError(f"model {model_dir} has {config.max_position_embeddings} position embeddings: no room for "
                         f"text after a prefix of {prefix_length} (lower prefix_length)")
    return min(limits)


def position_offset(config) -> int:
    """Position ids no token gets: RoBERTa-style models number positions from padding_idx + 1, so the first
    padding_idx + 1 embeddings are never a token's."""
    model_type = getattr(config, "model_type", "")
    if model_type in FIXED_PADDING_IDX:
        return FIXED_PADDING_IDX[model_type] + 1
    if model_type in PADDING_OFFSET_TYPES or _numbers_positions_from_padding(config):
        pad = getattr(config, "pad_token_id", None)
        return (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
    return 0


def absolute_positions(config) -> bool:
    """Whether each token looks up a learned absolute position embedding (so a prefix shifts the text's
    positions), rather than relative positions only (DeBERTa-v3's position_biased_input=False)."""
    if getattr(config, "position_embedding_type", None) not in (None, "absolute"):
        return False
    return getattr(config, "position_biased_input", True) is not False


def _numbers_positions_from_padding(config) -> bool:
    """True where the model's modeling code numbers positions from the padding index (RoBERTa's helper)."""
    import importlib

    from bertclf.model.modeling import classifier_class

    cls = classifier_class(config)
    if cls is None:
        return False
    try:
        module = importlib.import_module(cls.__module__)
    except ImportError:
        return False
    if hasattr(module, "create_position_ids_from_input_ids"):
        return True
    return any(hasattr(obj, "create_position_ids_from_input_ids") for name, obj in vars(module).items()
               if name.endswith("Embeddings") and isinstance(obj, type))


def prefix_positions(cfg) -> int:
    """Positions a TrainConfig's prefix-tuning prefix takes (0 for other methods)."""
    return cfg.prefix_length if cfg.method == "prefix" else 0


def check_max_length(cfg, model_dir: str) -> None:
    """Refuse an explicit max_length past what the model takes (it would fail as an index error on a worker)."""
    if cfg.max_length == "auto":
        return
    from bertclf.model.modeling import load_tokenizer

    prefix = prefix_positions(cfg)
    limit = model_length_limit(model_dir, load_tokenizer(model_dir), prefix)
    if int(cfg.max_length) > limit:
        raise ConfigError(f"max_length {cfg.max_length} is more than model {cfg.model} takes: {limit} tokens "
                          f"(its position embeddings and tokenizer" + (f", less the prefix of {prefix}" if prefix
                                                                       else "")
                          + f"). Set max_length to {limit} or less, or auto.")


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Each text's tokens, special tokens included, untruncated."""
    return [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]


def auto_long_text(counts: list[int], max_length: int, task: str) -> tuple[str, float]:
    """(truncate or chunk, share of the sampled texts longer than max_length): chunk multi-label texts when more
    than CHUNK_WHEN_LONGER of them would lose text to truncation (a label anywhere in the text counts); multi-class
    texts keep their first window, which scored above the mean over windows on the long-text set (README)."""
    share = float(np.mean(np.asarray(counts) > max_length)) if counts else 0.0
    return ("chunk" if task == "multi_label" and share > CHUNK_WHEN_LONGER else "truncate"), share


def auto_max_length(counts: list[int], limit: int) -> tuple[int, int]:
    """(max_length, tokens at LENGTH_QUANTILE): that quantile of the texts' token counts, special tokens included,
    rounded up to LENGTH_STEP and kept within [LENGTH_STEP, limit]."""
    at_quantile = int(math.ceil(np.quantile(counts, LENGTH_QUANTILE))) if counts else limit
    rounded = LENGTH_STEP * math.ceil(at_quantile / LENGTH_STEP)
    return max(min(LENGTH_STEP, limit), min(rounded, limit)), at_quantile


def text_sample(texts: pa.ChunkedArray, files: int) -> list[str]:
    """One file's share of SAMPLE_ROWS, spread over the file (a file sorted by length stays represented); only
    the sampled rows become Python strings."""
    take = min(len(texts), max(1, SAMPLE_ROWS // files))
    return texts.take(np.linspace(0, len(texts) - 1, take).round().astype(np.int64)).to_pylist() if take else []
