"""Reference probabilities: a checkpoint read with plain transformers, one text at a time, and a scoring output
checked against them. The tiny models of every architecture are built by bertclf.dev.tiny_architectures."""

from __future__ import annotations

from pathlib import Path

from bertclf.dev.synthetic import LABEL_WORDS


def reference_probabilities(checkpoint: Path | str, texts: list[str], max_length: int = 32):
    """The checkpoint's multi-label probabilities read with plain transformers, one text at a time: no padding, no
    bertclf batching, sorting or graph; what every bertclf path must reproduce."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with torch.inference_mode():
        return np.stack([torch.sigmoid(model(**tokenizer(t, truncation=True, max_length=max_length,
                                                          return_tensors="pt", return_token_type_ids=False)
                                             ).logits[0]).numpy() for t in texts])


def assert_scores_match_reference(scores, checkpoint: Path | str, rows: list[dict]) -> None:
    """A scoring output's probabilities (a table of `id` and `prob_<label>` columns; it carries no texts) equal
    reference_probabilities of the input rows' texts, matched by id."""
    import numpy as np

    text_of = {r["id"]: r["text"] for r in rows}
    ids = scores["id"].to_pylist()
    got = np.stack([scores[f"prob_{n}"].to_numpy() for n in sorted(LABEL_WORDS)], axis=1)
    np.testing.assert_allclose(got, reference_probabilities(checkpoint, [text_of[i] for i in ids]), atol=1e-5)
