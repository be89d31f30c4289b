"""`bertclf predict`: labels and probabilities for a few texts, in-process, from any checkpoint URI."""

from __future__ import annotations

import json

from bertclf import checkpoint
from bertclf.inference import logits_for_texts
from bertclf.labels import probabilities
from bertclf.modeling import load_for_inference


def predict_texts(checkpoint_uri: str, texts: list[str]) -> list[dict]:
    """One dict per text: its predicted labels and every label's probability (highest first)."""
    ckpt = checkpoint.load(checkpoint_uri)
    model, tokenizer = load_for_inference(ckpt.local_dir)
    space = ckpt.space
    probs = probabilities(space.task, logits_for_texts(model, tokenizer, texts, max_length=ckpt.max_length))
    predicted = space.predict(probs)
    return [{"text": t, "predicted": predicted[i],
             "probabilities": dict(sorted(zip(space.names, map(float, probs[i]), strict=True), key=lambda kv: -kv[1]))}
            for i, t in enumerate(texts)]


def render(rows: list[dict], as_json: bool = False, top: int = 5) -> str:
    if as_json:
        return "\n".join(json.dumps(r) for r in rows)
    lines = []
    for r in rows:
        lines.append(f"{r['text']!r}\n  predicted: {', '.join(r['predicted']) or '(none)'}")
        lines.extend(f"  {name:<24} {p:.3f}" for name, p in list(r["probabilities"].items())[:top])
    return "\n".join(lines)
