"""Length-grouped training batches: shuffled rows, but each batch holds texts of similar length.

Random batches of short texts pad to their longest row, so most of the tokens a step computes are padding.
Sorting a pool of `length_group_batches` shuffled batches by length and cutting it into batches removes most
of it, the same idea as Hugging Face's `group_by_length` (the effect is measured in benchmarks/). Every DDP
rank walks its pool's batches in the same seeded order, so at each step all ranks hold batches of similar
length and none waits long at the gradient all-reduce.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bertclf.model.inference import encode_texts, pad_batch, tokenize, window_layout, window_starts


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: np.ndarray


def length_grouped_batches(pools: Iterable[dict[str, np.ndarray]], tokenizer, *, max_length: int, batch_size: int,
                           seed: int, windows: str = "first", stride: int = 0) -> Iterator[Batch]:
    """Tokenize each pool of rows ({"text", "target"}) once, sort it by length and yield its batches.

    The batch order inside a pool is a permutation drawn from `seed` and the pool's index only, identical on
    every rank. Each pool yields ceil(rows / batch_size) batches, so ranks with equal row counts take equal
    numbers of steps. Pools of one batch (length_group_batches=1) are plain dynamic padding. `windows` sample:
    each text longer than max_length trains on one of its windows (as long_text chunk cuts them), drawn from the
    seed, so over the epochs every part of a long text is learned at the cost of one window per text.
    """
    for index, pool in enumerate(pools):
        texts = pool["text"].tolist()
        if not texts:
            continue
        token_ids = (sampled_windows(tokenizer, texts, max_length, stride, random.Random(f"{seed}-{index}-windows"))
                     if windows == "sample" else tokenize(tokenizer, texts, max_length))
        order = np.argsort([len(t) for t in token_ids], kind="stable")
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        random.Random(f"{seed}-{index}").shuffle(chunks)
        for rows in chunks:
            ids, mask = pad_batch([token_ids[i] for i in rows], tokenizer.pad_token_id)
            yield Batch(ids, mask, pool["target"][rows])


def sampled_windows(tokenizer, texts: list[str], max_length: int, stride: int, rng: random.Random) -> list[list[int]]:
    """One window per text, with the tokenizer's special tokens, chosen uniformly among the windows inference
    pools for it (bertclf.model.inference.windows); a text that fits is its only window."""
    prefix, suffix, room, step = window_layout(tokenizer, max_length, stride)
    out = []
    for ids in encode_texts(tokenizer, texts, max_length, "chunk"):
        start = rng.choice(window_starts(len(ids), room, step))
        out.append([*prefix, *ids[start:start + room], *suffix])
    return out


__all__ = ["Batch", "length_grouped_batches", "sampled_windows"]
