"""Micro-batch planning, padding and order-preserving forward passes (with a stand-in model)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from bertclf.model.inference import logits_for_token_ids, pad_batch, plan_microbatches


def _check_plan(lengths, max_tokens, max_rows):
    plan = plan_microbatches(lengths, max_tokens, max_rows)
    flat = np.concatenate(plan) if plan else np.array([], dtype=int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every index exactly once
    for batch in plan:
        assert 1 <= len(batch) <= max_rows
        longest = max(lengths[i] for i in batch)
        if len(batch) > 1:
            assert len(batch) * longest <= max_tokens
    ordered = [lengths[i] for i in flat]
    assert ordered == sorted(ordered)  # lengths ascend across the whole plan
    return plan


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_tokens,max_rows", [(64, 8), (200, 3), (1000, 1000), (10, 4)])
def test_plan_microbatches_invariants(seed, max_tokens, max_rows):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=int(rng.integers(1, 120))).tolist()
    _check_plan(lengths, max_tokens, max_rows)


def test_plan_microbatches_is_greedy_not_trivial():
    # 10 rows of length 4 with a budget of 16 tokens: 4 rows fit a batch, not just one
    plan = _check_plan([4] * 10, max_tokens=16, max_rows=100)
    assert [len(b) for b in plan] == [4, 4, 2]
    plan = _check_plan([4] * 10, max_tokens=1000, max_rows=3)
    assert [len(b) for b in plan] == [3, 3, 3, 1]


def test_plan_microbatches_long_row_gets_own_batch():
    lengths = [3, 500, 2, 2]
    plan = _check_plan(lengths, max_tokens=20, max_rows=10)
    assert any(b.tolist() == [1] for b in plan)


def test_plan_microbatches_empty_and_numpy_input():
    assert plan_microbatches([], 100, 10) == []
    _check_plan(np.array([5, 1, 3, 3, 9]), 12, 4)


def test_pad_batch_shapes_and_mask():
    rows = [[5, 6, 7], [8], [9, 10]]
    ids, mask = pad_batch(rows, pad_id=0)
    assert ids.shape == mask.shape == (3, 3)
    assert ids.dtype == mask.dtype == torch.int64
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    ids, _ = pad_batch(rows, pad_id=99)
    assert ids[1].tolist() == [8, 99, 99]


class SumModel(torch.nn.Module):
    """Stand-in classifier: logits = [sum of real token ids, number of real tokens, first id]."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(num_labels=3)
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask):
        self.calls.append(tuple(input_ids.shape))
        real = input_ids * attention_mask
        logits = torch.stack([real.sum(1), attention_mask.sum(1), input_ids[:, 0]], dim=1).float()
        return types.SimpleNamespace(logits=logits)


def _expected(token_ids):
    return np.array([[sum(t), len(t), t[0]] for t in token_ids], dtype=np.float32)


@pytest.mark.parametrize("max_tokens,max_rows", [(16, 4), (1000, 1000), (1, 1), (30, 2)])
def test_logits_for_token_ids_keeps_input_order(max_tokens, max_rows):
    rng = np.random.default_rng(7)
    token_ids = [rng.integers(1, 1000, size=int(rng.integers(1, 12))).tolist() for _ in range(37)]
    model = SumModel()
    got = logits_for_token_ids(model, token_ids, pad_id=3, max_tokens=max_tokens, max_rows=max_rows,
                               bf16=False, device=torch.device("cpu"))
    assert got.dtype == np.float32 and got.shape == (37, 3)
    np.testing.assert_array_equal(got, _expected(token_ids))
    # batches respect the budget (a single row may exceed it) and are padded to their own longest row only
    for rows, width in model.calls:
        assert rows <= max_rows
        assert rows == 1 or rows * width <= max_tokens
    assert sum(rows for rows, _ in model.calls) == 37


def test_logits_for_token_ids_empty_input():
    got = logits_for_token_ids(SumModel(), [], pad_id=0, max_tokens=10, max_rows=10, bf16=False,
                               device=torch.device("cpu"))
    assert got.shape == (0, 3) and got.dtype == np.float32


def test_logits_for_token_ids_runs_without_grad():
    class GradCheck(SumModel):
        def forward(self, input_ids, attention_mask):
            assert not torch.is_grad_enabled()
            return super().forward(input_ids, attention_mask)

    token_ids = [[1, 2], [3]]
    got = logits_for_token_ids(GradCheck(), token_ids, pad_id=0, max_tokens=10, max_rows=10, bf16=False,
                               device=torch.device("cpu"))
    np.testing.assert_array_equal(got, _expected(token_ids))


def test_keep_head_in_fp32_under_bf16_autocast(tiny_model):
    """Pooler and classifier compute in fp32 inside a bf16 autocast region; the encoder stays bf16; keys unchanged."""
    from bertclf.labels import LabelSpace
    from bertclf.model.modeling import build_classifier, keep_head_in_fp32

    model = build_classifier(str(tiny_model), LabelSpace("multi_label", ["a", "b"], [0.5, 0.5])).eval()
    keys = set(model.state_dict())
    ids = torch.tensor([[2, 5, 6, 3]])

    def logits_dtype():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids).logits.dtype

    assert logits_dtype() == torch.bfloat16
    keep_head_in_fp32(model)
    assert logits_dtype() == torch.float32
    assert set(model.state_dict()) == keys
    linear = next(m for m in model.base_model.encoder.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    logits_dtype()
    assert seen == [torch.bfloat16]  # the per-token work keeps its bf16 speed
