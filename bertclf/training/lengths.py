"""`max_length: auto`: the truncation length chosen from the training texts, so long texts are read whole and
short ones don't pay for padding they never use."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from bertclf.errors import ModelError

LENGTH_QUANTILE = 0.99  # share of the sampled training texts that fit whole
LENGTH_STEP = 16        # lengths rounded up to a multiple of this: fewer distinct shapes for kernels and caches
SAMPLE_ROWS = 8_000     # texts sampled over all training files


def model_length_limit(model_dir: str, tokenizer) -> int:
    """The longest input the model takes: its position embeddings, and the tokenizer's limit where it sets one."""
    from transformers import AutoConfig

    limits = [getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None),
              tokenizer.model_max_length]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 100_000]  # tokenizers say 1e30 for none
    if not limits:
        raise ModelError(f"model {model_dir} states no maximum input length: set max_length to a number")
    return min(limits)


def auto_max_length(tokenizer, texts: list[str], limit: int) -> tuple[int, int]:
    """(max_length, tokens at LENGTH_QUANTILE): that quantile of the texts' token counts, special tokens included,
    rounded up to LENGTH_STEP and kept within [LENGTH_STEP, limit]."""
    counts = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    at_quantile = int(math.ceil(np.quantile(counts, LENGTH_QUANTILE))) if counts else limit
    rounded = LENGTH_STEP * math.ceil(at_quantile / LENGTH_STEP)
    return max(min(LENGTH_STEP, limit), min(rounded, limit)), at_quantile


def text_sample(texts: pa.ChunkedArray, files: int) -> list[str]:
    """One file's share of SAMPLE_ROWS, spread over the file (a file sorted by length stays represented); only
    the sampled rows become Python strings."""
    take = min(len(texts), max(1, SAMPLE_ROWS // files))
    return texts.take(np.linspace(0, len(texts) - 1, take).round().astype(np.int64)).to_pylist() if take else []
