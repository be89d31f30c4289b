"""Training memory plans and gradient accumulation over token-budget micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertclf.errors import ConfigError
from bertclf.training.batching import Batch
from bertclf.training.memory import (
    GIB,
    ModelShape,
    activation_bytes_per_row,
    fixed_bytes,
    micro_batch_rows,
    node_share,
    plan_memory,
    train_workers_share,
)
from bertclf.training.step import StepContext, accumulate_gradients

MINILM = ModelShape(layers=6, hidden=384, heads=12, intermediate=1536, parameters=22_700_000,
                    trainable_parameters=22_700_000)


def test_activation_memory_grows_with_length_and_eager_attention_costs_quadratically():
    eager = [activation_bytes_per_row(MINILM, n, bf16=False, eager_attention=True) for n in (128, 256, 512)]
    fused = [activation_bytes_per_row(MINILM, n, bf16=False, eager_attention=False) for n in (128, 256, 512)]
    assert abs(fused[1] - 2 * fused[0]) <= 1 and abs(fused[2] - 2 * fused[1]) <= 1, "no attention scores: linear"
    assert all(e > f for e, f in zip(eager, fused, strict=True))
    assert eager[2] / eager[1] > eager[1] / eager[0] > 2, "eager attention scores: faster than linear"
    assert abs(activation_bytes_per_row(MINILM, 512, bf16=True, eager_attention=True) * 2 - eager[2]) <= 2
    # benchmarks/memory.py measured 11.6 GiB for a 32-row step of 512 tokens (fp32, eager): the estimate is above it
    assert 11.6 * GIB < 32 * eager[2] + fixed_bytes(MINILM, bf16=False) < 14 * GIB


def test_plan_fits_the_share_and_keeps_the_step_of_batch_size_rows():
    share = node_share(24 * GIB, 2)
    assert 8 * GIB < share < 10 * GIB, "a 24 GiB node with 2 train workers"
    plan = plan_memory(MINILM, share_bytes=share, max_length=512, batch_size=32, bf16=False, eager_attention=True)
    rows = plan.rows_at_max_length
    assert 1 <= rows < 32 and plan.max_tokens_per_batch == rows * 512
    assert plan.estimated_bytes == fixed_bytes(MINILM, bf16=False) + rows * activation_bytes_per_row(
        MINILM, 512, bf16=False, eager_attention=True) <= share, "the plan reports the estimate it fits to the share"
    assert plan.micro_batches_at_max_length * rows >= 32
    assert f"{rows} per micro-batch" in plan.describe() and "worker share" in plan.describe()
    short = plan_memory(MINILM, share_bytes=share, max_length=48, batch_size=32, bf16=False, eager_attention=True)
    assert short.rows_at_max_length == 32 and short.micro_batches_at_max_length == 1, "short texts: one micro-batch"


def test_a_plan_that_cannot_fit_one_row_is_refused_with_what_to_change():
    refused = r"one 512-token row needs about .* GiB .* share is 1\.0 GiB: lower max_length"
    with pytest.raises(ConfigError, match=refused):
        plan_memory(MINILM, share_bytes=GIB, max_length=512, batch_size=32, bf16=False, eager_attention=True)
    fixed = plan_memory(MINILM, share_bytes=GIB, max_length=512, batch_size=32, bf16=False, eager_attention=True,
                        max_tokens_per_batch=1024)
    assert fixed.rows_at_max_length == 2 and not fixed.planned, "a budget set by hand is taken as given"


def test_worker_share_from_ray_nodes_takes_the_smallest_node_that_hosts_workers():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 17e9, "object_store_memory": 7e9}},
             {"Alive": True, "Resources": {"CPU": 8.0, "memory": 50e9, "object_store_memory": 20e9}},
             {"Alive": False, "Resources": {"CPU": 2.0, "memory": 1e9}},
             {"Alive": True, "Resources": {"memory": 1e9}}]  # no CPU: hosts no worker
    assert train_workers_share(nodes, 2, 0.75) == node_share(24e9, 2)
    with pytest.raises(ConfigError, match="no alive Ray node has 4 CPU"):
        train_workers_share(nodes[:1], 2, 4)


def test_micro_batches_cover_every_row_once_within_the_budget():
    parts = micro_batch_rows(32, 512, 4096)
    assert [p.stop - p.start for p in parts] == [8, 8, 8, 8]
    assert micro_batch_rows(3, 600, 100) == [slice(0, 1), slice(1, 2), slice(2, 3)], "one row at least"
    assert micro_batch_rows(5, 10, 10_000) == [slice(0, 5)]


@pytest.mark.parametrize("multi_label", [True, False])
def test_accumulated_micro_batches_give_the_whole_batchs_gradients(tiny_model, multi_label):
    """Gradient accumulation over token-budget micro-batches equals one step on the whole batch (no dropout)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model), num_labels=3, ignore_mismatched_sizes=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        problem_type="multi_label_classification" if multi_label else "single_label_classification")
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(5, 40, size=12))
    ids = torch.zeros((12, 40), dtype=torch.long)
    mask = torch.zeros((12, 40), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.from_numpy(rng.integers(5, 40, size=n))
        mask[i, :n] = 1
    target = (rng.random((12, 3)) < 0.4).astype(np.float32) if multi_label else rng.integers(0, 3, 12)
    batch = Batch(ids, mask, target)
    loss_fn = torch.nn.BCEWithLogitsLoss() if multi_label else torch.nn.CrossEntropyLoss()

    def grads(budget: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        step = StepContext(model=model, device=torch.device("cpu"), bf16=False, loss_fn=loss_fn,
                           max_tokens_per_batch=budget)
        loss = float(accumulate_gradients(step, batch))
        return loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole_loss, whole = grads(12 * 40)
    split_loss, split = grads(80)  # 2 rows of 40 tokens per micro-batch: 6 micro-batches
    assert len(micro_batch_rows(12, 40, 80)) == 6
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert len(whole) == len(split)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
