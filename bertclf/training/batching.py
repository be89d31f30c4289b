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

from bertclf.inference import pad_batch, tokenize


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: np.ndarray


def length_grouped_batches(pools: Iterable[dict[str, np.ndarray]], tokenizer, *, max_length: int, batch_size: int,
                           seed: int) -> Iterator[Batch]:
    """Tokenize each pool of rows ({"text", "target"}) once, sort it by length and yield its batches.

    The batch order inside a pool is a permutation drawn from `seed` and the pool's index only, identical on
    every rank. Each pool yields ceil(rows / batch_size) batches, so ranks with equal row counts take equal
    numbers of steps. Pools of one batch (length_group_batches=1) are plain dynamic padding.
    """
    for index, pool in enumerate(pools):
        texts = pool["text"].tolist()
        if not texts:
            continue
        token_ids = tokenize(tokenizer, texts, max_length)
        order = np.argsort([len(t) for t in token_ids], kind="stable")
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        random.Random(f"{seed}-{index}").shuffle(chunks)
        for rows in chunks:
            ids, mask = pad_batch([token_ids[i] for i in rows], tokenizer.pad_token_id)
            yield Batch(ids, mask, pool["target"][rows])


__all__ = ["Batch", "length_grouped_batches"]
