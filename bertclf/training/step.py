"""One training step's forward and backward, in micro-batches of a token budget with the gradients accumulated over
them: what each train worker runs per batch, and what the memory and GPU benchmarks time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bertclf.training.batching import Batch
from bertclf.training.memory import micro_batch_rows

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepContext:
    """What a step needs of its worker, and nothing else: so a benchmark or test builds one, not a fake worker."""

    model: Any  # as prepared by Ray Train (DDP-wrapped when world > 1): all-reduce on the last micro-batch
    device: Any  # torch.device
    bf16: bool  # bf16 autocast for the forward pass
    loss_fn: Any  # (logits as fp32, targets) -> the micro-batch's mean loss
    max_tokens_per_batch: int  # padded tokens per micro-batch (bertclf.training.memory plans it)


def accumulate_gradients(step: StepContext, batch: Batch,
                         mark: Callable[[str], None] | None = None) -> torch.Tensor:
    """Forward and backward over the batch in micro-batches of at most `max_tokens_per_batch` padded tokens; each
    micro-batch's mean loss is weighted by its share of the rows, so the gradients equal the whole batch's.
    DDP all-reduces once, on the last micro-batch. Returns the batch's mean loss as a 0-d tensor on the device
    (detached): reading it would make the host wait for the device every step. `mark(phase)`, when given, is called
    as each micro-batch's "forward" (loss included) and "backward" (DDP's all-reduce included) end: a profiler's
    clock (benchmarks/train_step.py)."""
    import torch

    parts = micro_batch_rows(len(batch.target), batch.input_ids.shape[1], step.max_tokens_per_batch)
    total = torch.zeros((), device=step.device)
    for i, rows in enumerate(parts):
        mask = batch.attention_mask[rows]
        longest = int(mask.sum(dim=1).max())  # a micro-batch pads only to its own longest row
        enc = {"input_ids": batch.input_ids[rows, :longest].to(step.device),
               "attention_mask": mask[:, :longest].to(step.device)}
        target = torch.as_tensor(batch.target[rows], device=step.device)
        sync = i == len(parts) - 1 or not hasattr(step.model, "no_sync")
        with contextlib.nullcontext() if sync else step.model.no_sync():
            with torch.autocast(device_type=step.device.type, dtype=torch.bfloat16, enabled=step.bf16):
                logits = step.model(**enc).logits
            loss = step.loss_fn(logits.float(), target) * (len(target) / len(batch.target))
            if mark is not None:
                mark("forward")
            loss.backward()
            if mark is not None:
                mark("backward")
        total += loss.detach()
    return total


__all__ = ["StepContext", "accumulate_gradients"]
