"""Fast forward passes over many texts: tokenize once, sort by length, micro-batch by token budget.

Shared by validation during training, evaluation and the scoring actors, so all three compute the
same probabilities the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch


def plan_microbatches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Row indices grouped so each padded batch (rows x longest) stays within the token budget.

    Sorting by length first means rows of similar length share a batch and little is spent on padding.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        # lengths ascend, so the last row of a candidate batch is its longest
        while end < n and end - start < max_rows and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def pad_batch(token_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded to the longest row of this batch only."""
    longest = max(len(ids) for ids in token_ids)
    ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def autocast(device_type: str, bf16: bool):
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16) if bf16 else nullcontext()


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def logits_for_token_ids(model, token_ids: list[list[int]], pad_id: int, *, max_tokens: int, max_rows: int,
                         bf16: bool, device: torch.device) -> np.ndarray:
    """float32 logits in the input order, computed in length-sorted micro-batches under inference_mode."""
    out: np.ndarray | None = None
    with torch.inference_mode(), autocast(device.type, bf16):
        for idx in plan_microbatches([len(t) for t in token_ids], max_tokens, max_rows):
            ids, mask = pad_batch([token_ids[i] for i in idx], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
            if out is None:
                out = np.empty((len(token_ids), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    if out is None:
        return np.empty((0, model.config.num_labels), dtype=np.float32)
    return out


def logits_for_texts(model, tokenizer, texts: list[str], *, max_length: int, max_tokens: int = 8192,
                     max_rows: int = 256, bf16: bool = False, device: torch.device | None = None) -> np.ndarray:
    device = device or torch.device("cpu")
    return logits_for_token_ids(model, tokenize(tokenizer, texts, max_length), tokenizer.pad_token_id,
                                max_tokens=max_tokens, max_rows=max_rows, bf16=bf16, device=device)
