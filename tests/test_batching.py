"""Length-grouped training batches: every row once, similar lengths per batch, same order on every rank; the first
epoch's first batch fetched while the model loads."""

import threading

import numpy as np
import pytest

from bertclf.model.modeling import load_tokenizer
from bertclf.training.batching import length_grouped_batches
from bertclf.training.worker import WaitClock

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def pools(n_rows: int, pool_rows: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    texts = np.asarray([" ".join(rng.choice(WORDS, size=rng.integers(1, 30))) for _ in range(n_rows)], dtype=object)
    targets = np.arange(n_rows, dtype=np.float32)[:, None]  # a row's target is its own index
    return [{"text": texts[s:s + pool_rows], "target": targets[s:s + pool_rows]} for s in range(0, n_rows, pool_rows)]


def run(tokenizer, data, batch_size=8, seed=3, max_length=64):
    return list(length_grouped_batches(data, tokenizer, max_length=max_length, batch_size=batch_size, seed=seed))


def test_every_row_once_with_its_own_target_and_tokens(tokenizer):
    data = pools(100, 32)
    batches = run(tokenizer, data)
    seen = np.concatenate([b.target[:, 0] for b in batches]).astype(int)
    assert sorted(seen.tolist()) == list(range(100))
    texts = np.concatenate([p["text"] for p in data])
    for b in batches:
        for row, ids, mask in zip(b.target[:, 0].astype(int), b.input_ids, b.attention_mask, strict=True):
            expected = tokenizer(texts[row], truncation=True, max_length=64)["input_ids"]
            assert ids[mask.bool()].tolist() == expected


def test_batch_count_is_ceil_per_pool(tokenizer):
    batches = run(tokenizer, pools(100, 32), batch_size=8)
    assert len(batches) == 4 + 4 + 4 + 1  # pools of 32, 32, 32, 4 rows
    assert [len(b.target) for b in batches].count(8) == 12


def test_batches_are_length_grouped(tokenizer):
    grouped = run(tokenizer, pools(256, 256), batch_size=16)
    plain = run(tokenizer, pools(256, 16), batch_size=16)  # pools of one batch: plain dynamic padding

    def padding(batches):
        real = sum(int(b.attention_mask.sum()) for b in batches)
        return sum(b.input_ids.numel() for b in batches) / real - 1

    assert padding(grouped) < 0.1 < padding(plain)
    for b in grouped:
        lengths = b.attention_mask.sum(dim=1)
        assert int(lengths.max() - lengths.min()) <= 3


def test_batch_order_depends_on_seed_and_pool_only(tokenizer):
    """Two ranks with different rows but the same seed walk their pools' length quantiles in the same order."""

    def pool(seed: int) -> list[dict]:  # 64 rows of 1..64 words, shuffled: chunk k holds the k-th shortest 8
        order = np.random.default_rng(seed).permutation(64)
        texts = np.asarray([" ".join(["alpha"] * (int(i) + 1)) for i in order], dtype=object)
        return [{"text": texts, "target": order[:, None].astype(np.float32)}]

    def chunk_order(batches):  # which length chunk each step holds
        return [int(b.attention_mask.sum(dim=1).min()) for b in batches]

    rank0 = run(tokenizer, pool(1), batch_size=8, seed=7, max_length=128)
    rank1 = run(tokenizer, pool(2), batch_size=8, seed=7, max_length=128)
    other = run(tokenizer, pool(1), batch_size=8, seed=8, max_length=128)
    assert chunk_order(rank0) == chunk_order(rank1)
    assert sorted(chunk_order(rank0)) != chunk_order(rank0)  # shuffled, not shortest first
    assert chunk_order(rank0) != chunk_order(other)


def test_truncates_to_max_length(tokenizer):
    batches = run(tokenizer, pools(40, 40), max_length=6)
    assert max(b.input_ids.shape[1] for b in batches) == 6


def test_wait_clock_fetches_the_first_batch_before_it_is_asked_for():
    started = threading.Event()

    def batches():
        started.set()
        yield from [1, 2, 3]

    clock = WaitClock(batches(), fetch_first=True)
    assert started.wait(10)  # the data pipeline starts while the caller loads its model
    assert list(clock) == [1, 2, 3] and clock.first_seconds is not None and clock.wait_seconds >= clock.first_seconds
    assert list(WaitClock(iter([]), fetch_first=True)) == []  # an empty shard ends the epoch, no error

    def broken():
        raise OSError("shard unreadable")
        yield

    with pytest.raises(OSError, match="shard unreadable"):  # what fetching raised reaches the training loop
        next(WaitClock(broken(), fetch_first=True))
