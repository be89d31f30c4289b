"""Synthetic labelled texts whose words predict their labels, so a tiny model learns something in seconds."""

from __future__ import annotations

import random
from pathlib import Path

LABEL_WORDS = {
    "joy": ["happy", "glad", "smile", "great", "love"],
    "anger": ["angry", "mad", "hate", "furious", "rage"],
    "fear": ["scared", "afraid", "panic", "worry", "dread"],
}
FILLER = ["the", "a", "day", "was", "it", "and", "so", "very", "today", "my", "friend", "work", "home"]
WORDS = sorted({w for ws in LABEL_WORDS.values() for w in ws} | set(FILLER))  # every word make_rows writes


def make_rows(n: int, seed: int, multi_label: bool) -> list[dict]:
    """`n` rows (id, text, and `labels` or `label`) over the labels of LABEL_WORDS, the same for the same seed."""
    rng = random.Random(seed)
    names = list(LABEL_WORDS)
    rows = []
    for i in range(n):
        labels = rng.sample(names, rng.choice([1, 1, 2])) if multi_label else [rng.choice(names)]
        words = [rng.choice(LABEL_WORDS[lab]) for lab in labels for _ in range(2)] + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append({"id": f"r{seed}-{i}", "text": " ".join(words),
                     **({"labels": sorted(labels)} if multi_label else {"label": labels[0]})})
    return rows


def write_rows(path: Path | str, rows: list[dict], row_group_size: int | None = None) -> None:
    """Rows as one Parquet file (row groups of `row_group_size` rows: work units are cut from them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)


__all__ = ["FILLER", "LABEL_WORDS", "WORDS", "make_rows", "write_rows"]
